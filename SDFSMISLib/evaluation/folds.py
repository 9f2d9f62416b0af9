"""The few-shot test protocol over the folds of a dataset folder: plan, run every method, write the reports.

Two modes, the two ways a user works:

* ``cross-patient`` (the paper's protocol): per fold (:func:`SDFSMISLib.data.datasets.fold_split`) the patient
  at ``support_index`` of the test patients is the support and the others are queries
  (:func:`SDFSMISLib.evaluation.protocol.test_support_and_queries`); every method segments the same slices
  (:mod:`SDFSMISLib.evaluation.runner`).
* ``same-patient``: every test patient of a fold is annotated on a few of its own slices per organ and the
  rest is predicted (:mod:`SDFSMISLib.evaluation.same_patient`).

Methods:

* ``sdfsmis``: the model (a ``{fold}`` in its paths loads one model per fold: checkpoint, base model, DINOv2).
* ``copy``: each query slice gets its assigned support mask
  (:func:`SDFSMISLib.evaluation.baselines.copy_nearest_support`).
* ``prototype``: training-free PANet on the frozen VAE latent mean of the same model (``vae``, the default) or on
  its DINOv2 patch tokens (``dino``), see :mod:`SDFSMISLib.evaluation.baselines`.
* ``fill-between`` (same-patient mode only): 3D Slicer's Fill between slices
  (:func:`SDFSMISLib.evaluation.baselines.fill_between_slices`).

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
from dataclasses import asdict, astuple, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ..errors import InputError
from ..progress import ProgressCallback, report
from ..weights.model_files import FOLD_FIELD, ModelFiles, chosen_model
from .contour_interpolation import require_itk

if TYPE_CHECKING:
    from ..data.datasets import Patient
    from ..model.network import SDFSMISNet
    from .runner import OrganCase, PatientData, Predictor, Results
    from .same_patient import SamePatientMethod

METHODS = ("sdfsmis", "copy", "prototype", "fill-between")
MODES = ("cross-patient", "same-patient")
#: Methods that need the slices' positions, so only the same-patient mode can score them.
SAME_PATIENT_ONLY = {"fill-between"}
#: Methods that need the model: SD-FSMIS itself, and the matcher on its frozen encoders.
MODEL_METHODS = {"sdfsmis", "prototype"}
PACKAGES = ("torch", "diffusers", "transformers", "numpy", "scipy", "SimpleITK")


@dataclass(frozen=True)
class EvaluationSettings:
    """How every case is scored (the ``sdfsmis evaluate`` options that are not about files)."""

    mode: str = "cross-patient"
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
    """One test fold: its support and query patients and the model files tested on it (in the
    same-patient mode every patient is its own support: ``support`` is just the first of them)."""

    fold: int
    support: Patient
    queries: list[Patient]
    model: ModelFiles | None


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


def fold_model(pattern: ModelFiles | None, fold: int) -> ModelFiles | None:
    """The model files of ``fold``: ``{fold}`` in each path replaced by the fold number; each must exist.

    A fold's model is held out from that fold whole, base model included when the base model was trained too
    (the tiny VAE of ``sdfsmis tiny-base --fold F``).
    """
    if pattern is None:
        return None
    try:
        return chosen_model(*(str(path).replace(FOLD_FIELD, str(fold)) for path in astuple(pattern)))
    except InputError as error:
        raise InputError(f"fold {fold}: {error}") from error


def plan_folds(data: Path, folds: Sequence[int], settings: EvaluationSettings,
               pattern: ModelFiles | None) -> list[FoldPlan]:
    """Support, queries and model of every requested fold, after checking the folder has what they need."""
    from ..data.datasets import fold_split, scan_folder
    from .protocol import test_support_and_queries

    if settings.shots < 1:
        raise InputError(f"--shots {settings.shots} must be at least 1")
    if settings.mode not in MODES:
        raise InputError(f"unknown evaluation mode {settings.mode!r}; use one of {', '.join(MODES)}")
    if settings.mode == "same-patient" and settings.k_shot:
        raise InputError("--k-shot feeds another patient's supports as one set; the same-patient mode predicts "
                         "each slice from its nearest annotated slice: leave out --k-shot")
    patients = scan_folder(data)
    plans, scored = [], set()
    for fold in dict.fromkeys(folds):
        test = fold_split(patients, fold, settings.dataset)[1]
        unlabelled = [patient.id for patient in test if patient.label is None]
        if unlabelled:
            raise InputError(f"{data}: patients {unlabelled} of fold {fold} have no label_<id> file; "
                             "evaluation needs the ground truth of every test patient")
        model = fold_model(pattern, fold)
        if settings.mode == "cross-patient":
            plans.append(FoldPlan(fold, *test_support_and_queries(test, settings.support_index), model))
            continue
        # neighbouring CHAOS folds share a patient: with the same model it is scored once
        test = [patient for patient in test if (patient.id, model) not in scored]
        scored |= {(patient.id, model) for patient in test}
        if test:
            plans.append(FoldPlan(fold, test[0], test[1:], model))
    return plans


Method = TypeVar("Method", bound=Callable[..., np.ndarray])


def _timed(method: Method, timer: Timer) -> Method:
    """``method`` that adds its wall time and the number of slices it predicted to ``timer``."""

    def predict(*arguments: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        predicted = method(*arguments)
        timer.seconds += time.perf_counter() - start
        timer.slices += len(predicted)
        return predicted

    return predict  # type: ignore[return-value]


def _predictors(settings: EvaluationSettings, methods: list[str], model: SDFSMISNet | None,
                timers: dict[str, Timer]) -> dict[str, Predictor | SamePatientMethod]:
    """The requested methods, timed: protocol predictors in the cross-patient mode (the baselines on ``model``'s
    frozen encoders), same-patient methods in the other."""
    from .baselines import dino_features, vae_features
    from .runner import copy_predictor, model_predictor, prototype_predictor
    from .same_patient import fill_between_method, from_predictor

    features = {"vae": vae_features, "dino": dino_features}[settings.prototype_features]
    build: dict[str, Callable[[], Predictor]] = {
        "sdfsmis": lambda: model_predictor(model, batch_size=settings.batch_size),
        "copy": copy_predictor,
        "prototype": lambda: prototype_predictor(features(model), batch_size=settings.batch_size),
    }
    if settings.mode == "cross-patient":
        return {method: _timed(build[method](), timers.setdefault(method, Timer())) for method in methods}
    built = {method: fill_between_method() if method in SAME_PATIENT_ONLY else from_predictor(build[method]())
             for method in methods}
    return {method: _timed(function, timers.setdefault(method, Timer())) for method, function in built.items()}


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


def check_methods(methods: Sequence[str], mode: str) -> None:
    """Refuse, before any work, a method the mode cannot score."""
    if mode == "cross-patient" and SAME_PATIENT_ONLY & set(methods):
        raise InputError(f"{', '.join(sorted(SAME_PATIENT_ONLY & set(methods)))} interpolates between a patient's "
                         "own annotated slices: use it with --mode same-patient")
    if SAME_PATIENT_ONLY & set(methods):
        require_itk()


def evaluate_folds(plans: list[FoldPlan], methods: list[str], organ_names: list[str], settings: EvaluationSettings,
                   progress: ProgressCallback | None = None) -> Run:
    """Every method on every fold, organ and query patient; the model is reloaded only when its files change."""
    from ..weights.loading import load_model
    from .runner import dataset_organs, evaluate_fold, patient_data
    from .same_patient import evaluate_own_fold

    if MODEL_METHODS & set(methods) and any(plan.model is None for plan in plans):
        raise InputError(f"methods {sorted(MODEL_METHODS & set(methods))} need a model: plan the folds with one")
    check_methods(methods, settings.mode)
    same_patient = settings.mode == "same-patient"
    run, model, loaded, done = Run(), None, None, 0
    total = sum(len(plan.queries) + same_patient for plan in plans) * len(methods) * len(organ_names)
    start = time.perf_counter()
    for plan in plans:
        support = patient_data(plan.support, settings.recipe, settings.size)
        queries = [patient_data(patient, settings.recipe, settings.size) for patient in plan.queries]
        if not run.organs:  # 'auto' reads the label layout off the first support patient
            table = dataset_organs(settings.dataset, support.labels)
            run.organs = {name: table[name] for name in organ_names}
        if MODEL_METHODS & set(methods) and plan.model != loaded:
            # float32 on every device, as the paper evaluates; the device's layout comes with load_model.
            model = load_model(plan.model, settings.device, "float32")
            loaded = plan.model

        def on_case(method: str, name: str, query: PatientData, case: OrganCase) -> None:
            nonlocal done
            done += 1
            report(progress, done, total)
            if query.id == (plan.support if same_patient else plan.queries[0]).id:
                overlay = _overlay(f"fold{plan.fold}_{method}_{name}.png", support, query, run.organs[name],
                                   case, settings.shots)
                run.overlays += [] if overlay is None else [overlay]

        predictors = _predictors(settings, methods, model, run.timers)
        if same_patient:
            evaluate_own_fold(predictors, [support, *queries], run.organs, plan.fold, settings.shots,
                              settings.query_range, on_case, run.results)
        else:
            evaluate_fold(predictors, support, queries, run.organs, plan.fold, settings.shots, settings.k_shot,
                          settings.query_range, on_case, run.results)
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
    names = {"sdfsmis": settings.label, "copy": "Copy nearest support" if settings.mode == "cross-patient"
             else "Copy nearest annotated slice", "prototype": f"Prototype (PANet, frozen {features})",
             "fill-between": "Fill between slices (3D Slicer)"}
    return {method: names[method] for method in methods}


def write_reports(out: Path, plans: list[FoldPlan], methods: list[str], run: Run, settings: EvaluationSettings,
                  command: str) -> None:
    """results.json, table.md, dice.png and the overlays in ``out``, each written atomically."""
    from .reporting import bar_chart, markdown_table, overlay_png
    from .runner import summarize

    labels = row_labels(settings, methods)
    by_label = {labels[method]: run.results[method] for method in methods}
    record = {
        "command": command, "versions": versions(), "mode": settings.mode, "setting": settings.setting,
        "k_shot": settings.k_shot,
        "query_range": settings.query_range,
        "dataset": settings.dataset, "organs": run.organs, "methods": labels,
        "folds": [{"fold": plan.fold, **({} if plan.model is None else {part: str(path) for part, path in
                                                                        asdict(plan.model).items()}),
                   **({"support": plan.support.id, "queries": [q.id for q in plan.queries]}
                      if settings.mode == "cross-patient" else
                      {"patients": [p.id for p in (plan.support, *plan.queries)]})} for plan in plans],
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
