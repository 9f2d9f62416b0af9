"""The few-shot test protocol over the folds of a dataset folder: plan, run every method, write the reports.

Per fold (:func:`SDFSMISLib.data.datasets.fold_split`) the patient at ``support_index`` of the test patients is
the support and the others are queries (:func:`SDFSMISLib.evaluation.protocol.test_support_and_queries`); every
method segments the same slices (:mod:`SDFSMISLib.evaluation.runner`). Methods:

* ``sdfsmis``: the model (a ``{fold}`` in the checkpoint path loads one model per fold).
* ``copy``: each query slice gets its assigned support mask
  (:func:`SDFSMISLib.evaluation.baselines.copy_nearest_support`).
* ``prototype``: training-free PANet on the frozen VAE latent mean of the same model (``vae``, the default) or on
  its DINOv2 patch tokens (``dino``), see :mod:`SDFSMISLib.evaluation.baselines`.

:func:`plan_folds` checks everything before any work; :func:`evaluate_folds` runs; :func:`write_reports` writes
``results.json`` (per case, summary, command, versions, timing), ``table.md`` (the paper's layout),
``dice.png`` and ``overlays/`` (the middle query slice of each organ of the first query patient, per fold and
method), each atomically, so a failed run writes nothing.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from ..progress import ProgressCallback, report

if TYPE_CHECKING:
    from ..data.datasets import Patient
    from ..model.network import SDFSMISNet
    from .runner import OrganCase, PatientData, Predictor, Results

METHODS = ("sdfsmis", "copy", "prototype")
#: Methods that need the model: SD-FSMIS itself, and the matcher on its frozen encoders.
MODEL_METHODS = {"sdfsmis", "prototype"}
FOLD_FIELD = "{fold}"
PACKAGES = ("torch", "diffusers", "transformers", "numpy", "scipy", "SimpleITK")


@dataclass(frozen=True)
class EvaluationSettings:
    """How every case is scored (the ``sdfsmis evaluate`` options that are not about files)."""

    dataset: str = "auto"
    recipe: str = "none"
    size: int = 256
    shots: int = 3
    support_index: int = 2
    k_shot: bool = False
    query_range: str = "ground-truth"
    prototype_features: str = "vae"
    batch_size: int = 8
    device: str = "auto"
    label: str = "SD-FSMIS"
    setting: int = 1


@dataclass(frozen=True)
class FoldPlan:
    """One test fold: its support and query patients and the checkpoint of the model tested on it."""

    fold: int
    support: Patient
    queries: list[Patient]
    checkpoint: Path | None


@dataclass(frozen=True)
class Overlay:
    """The 2-D slices of one overlay figure, kept in memory until the run has succeeded."""

    name: str
    support_image: np.ndarray
    support_mask: np.ndarray
    query_image: np.ndarray
    prediction: np.ndarray
    truth: np.ndarray


@dataclass
class Timer:
    """Seconds spent predicting, and the query slices predicted, by one method."""

    seconds: float = 0.0
    slices: int = 0


@dataclass
class Run:
    """What the evaluation gathers for the reports."""

    results: Results = field(default_factory=dict)
    overlays: list[Overlay] = field(default_factory=list)
    timers: dict[str, Timer] = field(default_factory=dict)
    organs: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def fold_checkpoint(pattern: str | None, fold: int) -> Path | None:
    """The checkpoint of ``fold``: ``{fold}`` in the pattern replaced by the fold number; it must exist."""
    if pattern is None:
        return None
    path = Path(pattern.replace(FOLD_FIELD, str(fold)))
    if not path.is_file():
        raise InputError(f"checkpoint {path} (fold {fold}) does not exist; train it or fix --checkpoint")
    return path


def plan_folds(data: Path, folds: Sequence[int], settings: EvaluationSettings, pattern: str | None) -> list[FoldPlan]:
    """Support, queries and checkpoint of every requested fold, after checking the folder has what they need."""
    from ..data.datasets import fold_split, scan_folder
    from .protocol import test_support_and_queries

    if settings.shots < 1:
        raise InputError(f"--shots {settings.shots} must be at least 1")
    patients = scan_folder(data)
    plans = []
    for fold in dict.fromkeys(folds):
        test = fold_split(patients, fold, settings.dataset)[1]
        unlabelled = [patient.id for patient in test if patient.label is None]
        if unlabelled:
            raise InputError(f"{data}: patients {unlabelled} of fold {fold} have no label_<id> file; "
                             "evaluation needs the ground truth of every test patient")
        support, queries = test_support_and_queries(test, settings.support_index)
        plans.append(FoldPlan(fold, support, queries, fold_checkpoint(pattern, fold)))
    return plans


def _timed(predictor: Predictor, timer: Timer) -> Predictor:
    """``predictor`` that adds its wall time and query slice count to ``timer``."""

    def predict(query: np.ndarray, images: np.ndarray, masks: np.ndarray, assignment: np.ndarray | None) -> np.ndarray:
        start = time.perf_counter()
        predicted = predictor(query, images, masks, assignment)
        timer.seconds += time.perf_counter() - start
        timer.slices += len(query)
        return predicted

    return predict


def _predictors(settings: EvaluationSettings, methods: list[str], model: SDFSMISNet | None,
                timers: dict[str, Timer]) -> dict[str, Predictor]:
    """The requested methods as timed protocol predictors (the baselines on ``model``'s frozen encoders)."""
    from .baselines import dino_features, vae_features
    from .runner import copy_predictor, model_predictor, prototype_predictor

    features = {"vae": vae_features, "dino": dino_features}[settings.prototype_features]
    build: dict[str, Callable[[], Predictor]] = {
        "sdfsmis": lambda: model_predictor(model, batch_size=settings.batch_size),
        "copy": copy_predictor,
        "prototype": lambda: prototype_predictor(features(model), batch_size=settings.batch_size),
    }
    return {method: _timed(build[method](), timers.setdefault(method, Timer())) for method in methods}


def _overlay(name: str, support: PatientData, query: PatientData, organ: int, case: OrganCase,
             shots: int) -> Overlay | None:
    """The figure slices of ``case``: its middle query slice and the support slice it was predicted from."""
    if case.query_slices.size == 0:
        return None
    middle = case.query_slices.size // 2
    shot = shots // 2 if case.assignment is None else int(case.assignment[middle])
    support_slice, query_slice = case.support_slices[shot], case.query_slices[middle]
    return Overlay(name, support.image[support_slice], support.labels[support_slice] == organ,
                   query.image[query_slice], case.prediction[query_slice], query.labels[query_slice] == organ)


def evaluate_folds(plans: list[FoldPlan], methods: list[str], organ_names: list[str], settings: EvaluationSettings,
                   base_model: Path | None = None, dino: Path | None = None,
                   progress: ProgressCallback | None = None) -> Run:
    """Every method on every fold, organ and query patient; the model is reloaded only when the file changes."""
    from ..weights.loading import load_model
    from ..weights.model_files import ModelFiles
    from .runner import dataset_organs, evaluate_fold, patient_data

    if MODEL_METHODS & set(methods) and (base_model is None or dino is None):
        raise InputError(f"methods {sorted(MODEL_METHODS & set(methods))} need the model's base model and DINOv2")
    run, model, loaded, done = Run(), None, None, 0
    total = sum(len(plan.queries) for plan in plans) * len(methods) * len(organ_names)
    start = time.perf_counter()
    for plan in plans:
        support = patient_data(plan.support, settings.recipe, settings.size)
        queries = [patient_data(patient, settings.recipe, settings.size) for patient in plan.queries]
        if not run.organs:  # 'auto' reads the label layout off the first support patient
            table = dataset_organs(settings.dataset, support.labels)
            run.organs = {name: table[name] for name in organ_names}
        if MODEL_METHODS & set(methods) and plan.checkpoint != loaded:
            # float32 on every device, as the paper evaluates; the device's layout comes with load_model.
            model = load_model(ModelFiles(plan.checkpoint, base_model, dino), settings.device, "float32")
            loaded = plan.checkpoint

        def on_case(method: str, name: str, query: PatientData, case: OrganCase) -> None:
            nonlocal done
            done += 1
            report(progress, done, total)
            if query.id == plan.queries[0].id:
                overlay = _overlay(f"fold{plan.fold}_{method}_{name}.png", support, query, run.organs[name],
                                   case, settings.shots)
                run.overlays += [] if overlay is None else [overlay]

        evaluate_fold(_predictors(settings, methods, model, run.timers), support, queries, run.organs, plan.fold,
                      settings.shots, settings.k_shot, settings.query_range, on_case, run.results)
    run.seconds = time.perf_counter() - start
    return run


def versions() -> dict[str, str]:
    """The versions a result depends on, recorded beside it."""
    from .. import __version__

    return {"sdfsmis": __version__, "python": platform.python_version(),
            **{package: version(package) for package in PACKAGES}}


def json_ready(value: Any) -> Any:
    """``value`` with NaN/inf as null (strict JSON) and numpy scalars and paths as plain values."""
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return str(value) if isinstance(value, Path) else value


def _write_text(path: Path, text: str) -> None:
    from ..io.atomic import atomic_output

    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def row_labels(settings: EvaluationSettings, methods: list[str]) -> dict[str, str]:
    """Table row of each method: the settings' label for the model, descriptive names for the baselines."""
    features = {"vae": "VAE latents", "dino": "DINOv2 tokens"}[settings.prototype_features]
    names = {"sdfsmis": settings.label, "copy": "Copy nearest support",
             "prototype": f"Prototype (PANet, frozen {features})"}
    return {method: names[method] for method in methods}


def write_reports(out: Path, plans: list[FoldPlan], methods: list[str], run: Run, settings: EvaluationSettings,
                  command: str) -> None:
    """results.json, table.md, dice.png and the overlays in ``out``, each written atomically."""
    from .reporting import bar_chart, markdown_table, overlay_png
    from .runner import summarize

    labels = row_labels(settings, methods)
    by_label = {labels[method]: run.results[method] for method in methods}
    record = {
        "command": command, "versions": versions(), "setting": settings.setting, "k_shot": settings.k_shot,
        "query_range": settings.query_range,
        "dataset": settings.dataset, "organs": run.organs, "methods": labels,
        "folds": [{"fold": plan.fold, "support": plan.support.id, "queries": [q.id for q in plan.queries],
                   "checkpoint": plan.checkpoint} for plan in plans],
        "runtime": {"total_s": run.seconds, **{method: {"predict_s": timer.seconds, "slices": timer.slices}
                                               for method, timer in run.timers.items()}},
        "summary": summarize(run.results), "cases": run.results,
    }
    _write_text(out / "results.json", json.dumps(json_ready(record), indent=2) + "\n")
    _write_text(out / "table.md", markdown_table(by_label))
    bar_chart(by_label, out / "dice.png")
    for overlay in run.overlays:
        overlay_png(out / "overlays" / overlay.name, overlay.support_image, overlay.support_mask,
                    overlay.query_image, overlay.prediction, overlay.truth)
