"""``sdfsmis evaluate``: the few-shot test protocol over the folds of a dataset folder, and its reports.

Per fold (:func:`SDFSMISLib.datasets.fold_split`) the patient at ``--support-index`` of the test patients is
the support and the others are queries (:func:`SDFSMISLib.protocol.test_support_and_queries`); every method
segments the same slices (:mod:`SDFSMISLib.evaluation`). Methods:

* ``sdfsmis``: the model (``--checkpoint``; a ``{fold}`` in the path loads one model per fold).
* ``copy``: each query slice gets its assigned support mask (:func:`SDFSMISLib.baselines.copy_nearest_support`).
* ``prototype``: training-free PANet on the frozen VAE latent mean of the same model (``--prototype-features
  vae``, the default) or on its DINOv2 patch tokens (``dino``), see :mod:`SDFSMISLib.baselines`.

Everything the user gave is checked before any work, so bad input exits with status 2 and writes nothing.
All files are written at the end, atomically: ``results.json`` (per case, summary, command, versions,
timing), ``table.md`` (the paper's layout), ``dice.png`` and ``overlays/`` (the middle query slice of each
organ of the first query patient, per fold and method).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .cli_training import CommandFactory, int_list
from .errors import InputError
from .labels import PAPER_ORDER

if TYPE_CHECKING:
    from .datasets import Patient
    from .evaluation import OrganCase, PatientData, Predictor, Results
    from .network import SDFSMISNet

METHODS = ("sdfsmis", "copy", "prototype")
#: Methods that need the model: SD-FSMIS itself, and the matcher on its frozen encoders.
MODEL_METHODS = {"sdfsmis", "prototype"}
FOLD_FIELD = "{fold}"
PACKAGES = ("torch", "diffusers", "transformers", "numpy", "scipy", "SimpleITK")


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


def _choices(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    """A comma-separated selection from ``allowed``, in the given order; an InputError names unknown entries."""
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [part for part in chosen if part not in allowed]
    if unknown or not chosen:
        raise InputError(f"unknown or no {what} {unknown or text!r}; choose from {','.join(allowed)}")
    return list(dict.fromkeys(chosen))


def _model_files(args: argparse.Namespace) -> tuple[str, Path, Path]:
    """Checkpoint (possibly with ``{fold}``), base model and DINOv2: the user's, or the bundled model's."""
    from .bundled import chosen_model

    files = chosen_model(args.checkpoint, args.base_model, args.dino)
    return str(files.checkpoint), files.base_model, files.dino


def _fold_checkpoint(pattern: str | None, fold: int) -> Path | None:
    """The checkpoint of ``fold``: ``{fold}`` in the pattern replaced by the fold number; it must exist."""
    if pattern is None:
        return None
    path = Path(pattern.replace(FOLD_FIELD, str(fold)))
    if not path.is_file():
        raise InputError(f"checkpoint {path} (fold {fold}) does not exist; train it or fix --checkpoint")
    return path


def _plan(args: argparse.Namespace, pattern: str | None) -> list[FoldPlan]:
    """Support, queries and checkpoint of every requested fold, after checking the folder has what they need."""
    from .datasets import fold_split, scan_folder
    from .protocol import test_support_and_queries

    if args.shots < 1:
        raise InputError(f"--shots {args.shots} must be at least 1")
    patients = scan_folder(args.data)
    plans = []
    for fold in dict.fromkeys(args.folds):
        test = fold_split(patients, fold, args.dataset)[1]
        unlabelled = [patient.id for patient in test if patient.label is None]
        if unlabelled:
            raise InputError(f"{args.data}: patients {unlabelled} of fold {fold} have no label_<id> file; "
                             "evaluation needs the ground truth of every test patient")
        support, queries = test_support_and_queries(test, args.support_index)
        plans.append(FoldPlan(fold, support, queries, _fold_checkpoint(pattern, fold)))
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


def _predictors(args: argparse.Namespace, methods: list[str], model: SDFSMISNet | None,
                timers: dict[str, Timer]) -> dict[str, Predictor]:
    """The requested methods as timed protocol predictors (the baselines on ``model``'s frozen encoders)."""
    from .baselines import dino_features, vae_features
    from .evaluation import copy_predictor, model_predictor, prototype_predictor

    features = {"vae": vae_features, "dino": dino_features}[args.prototype_features]
    build: dict[str, Callable[[], Predictor]] = {
        "sdfsmis": lambda: model_predictor(model, batch_size=args.batch_size),
        "copy": copy_predictor,
        "prototype": lambda: prototype_predictor(features(model), batch_size=args.batch_size),
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


def _evaluate(args: argparse.Namespace, plans: list[FoldPlan], methods: list[str], organ_names: list[str],
              base_model: Path | None, dino: Path | None) -> Run:
    """Every method on every fold, organ and query patient; the model is reloaded only when the file changes."""
    from tqdm.auto import tqdm

    from .bundled import ModelFiles
    from .evaluation import dataset_organs, evaluate_fold, patient_data
    from .propagation import load_model

    run, model, loaded = Run(), None, None
    total = sum(len(plan.queries) for plan in plans) * len(methods) * len(organ_names)
    with tqdm(total=total, desc="evaluating", unit="case") as progress:
        for plan in plans:
            support = patient_data(plan.support, args.recipe, args.size)
            queries = [patient_data(patient, args.recipe, args.size) for patient in plan.queries]
            if not run.organs:  # 'auto' reads the label layout off the first support patient
                table = dataset_organs(args.dataset, support.labels)
                run.organs = {name: table[name] for name in organ_names}
            if MODEL_METHODS & set(methods) and plan.checkpoint != loaded:
                # float32 on every device, as the paper evaluates; the device's layout and convolution algorithm
                # (Winograd on the CPU, which rounds differently by about 1e-6) come with load_model.
                assert base_model is not None and dino is not None  # main() resolves them for model methods
                model = load_model(ModelFiles(plan.checkpoint, base_model, dino), args.device, "float32")
                loaded = plan.checkpoint

            def on_case(method: str, name: str, query: PatientData, case: OrganCase) -> None:
                progress.update()
                if query.id == plan.queries[0].id:
                    overlay = _overlay(f"fold{plan.fold}_{method}_{name}.png", support, query, run.organs[name],
                                       case, args.shots)
                    run.overlays += [] if overlay is None else [overlay]

            evaluate_fold(_predictors(args, methods, model, run.timers), support, queries, run.organs, plan.fold,
                          args.shots, args.k_shot, args.query_range, on_case, run.results)
    return run


def _command_line(args: argparse.Namespace) -> str:
    """The command that repeats this run, every option spelled out (defaults resolved)."""
    import shlex

    words = ["sdfsmis", "evaluate"]
    for key, value in vars(args).items():
        if key in ("command", "handler") or value is None or value is False:
            continue
        option = "--" + key.replace("_", "-")
        if value is True:
            words.append(option)
        else:
            words += [option, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return shlex.join(words)


def _versions() -> dict[str, str]:
    from . import __version__

    return {"sdfsmis": __version__, "python": platform.python_version(),
            **{package: version(package) for package in PACKAGES}}


def _json_ready(value: Any) -> Any:
    """``value`` with NaN/inf as null (strict JSON) and numpy scalars and paths as plain values."""
    if isinstance(value, dict):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return str(value) if isinstance(value, Path) else value


def _write_text(path: Path, text: str) -> None:
    from .atomic import atomic_output

    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def _row_labels(args: argparse.Namespace, methods: list[str]) -> dict[str, str]:
    """Table row of each method: ``--label`` for the model, descriptive names for the baselines."""
    features = {"vae": "VAE latents", "dino": "DINOv2 tokens"}[args.prototype_features]
    names = {"sdfsmis": args.label, "copy": "Copy nearest support",
             "prototype": f"Prototype (PANet, frozen {features})"}
    return {method: names[method] for method in methods}


def _write_reports(args: argparse.Namespace, plans: list[FoldPlan], methods: list[str], run: Run,
                   seconds: float) -> None:
    """results.json, table.md, dice.png and the overlays, each written atomically."""
    from .evaluation import summarize
    from .reporting import bar_chart, markdown_table, overlay_png

    labels = _row_labels(args, methods)
    by_label = {labels[method]: run.results[method] for method in methods}
    record = {
        "command": _command_line(args), "versions": _versions(), "setting": args.setting, "k_shot": args.k_shot,
        "query_range": args.query_range,
        "dataset": args.dataset, "organs": run.organs, "methods": labels,
        "folds": [{"fold": plan.fold, "support": plan.support.id, "queries": [q.id for q in plan.queries],
                   "checkpoint": plan.checkpoint} for plan in plans],
        "runtime": {"total_s": seconds, **{method: {"predict_s": timer.seconds, "slices": timer.slices}
                                           for method, timer in run.timers.items()}},
        "summary": summarize(run.results), "cases": run.results,
    }
    _write_text(args.out / "results.json", json.dumps(_json_ready(record), indent=2) + "\n")
    _write_text(args.out / "table.md", markdown_table(by_label))
    bar_chart(by_label, args.out / "dice.png")
    for overlay in run.overlays:
        overlay_png(args.out / "overlays" / overlay.name, overlay.support_image, overlay.support_mask,
                    overlay.query_image, overlay.prediction, overlay.truth)


def _command_evaluate(args: argparse.Namespace) -> None:
    methods = _choices(args.methods, METHODS, "methods")
    organ_names = _choices(args.organs, PAPER_ORDER, "organs")
    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out {args.out} is a file; give a folder for the reports")
    pattern, base_model, dino = _model_files(args) if MODEL_METHODS & set(methods) else (None, None, None)
    plans = _plan(args, pattern)
    start = time.perf_counter()
    run = _evaluate(args, plans, methods, organ_names, base_model, dino)
    _write_reports(args, plans, methods, run, time.perf_counter() - start)
    print((args.out / "table.md").read_text(encoding="utf-8"), end="")
    print(f"wrote {args.out}/results.json, table.md, dice.png and {len(run.overlays)} overlays")


def register_evaluation_commands(command: CommandFactory) -> None:
    """Add ``evaluate`` to the ``sdfsmis`` parser."""
    evaluate = command("evaluate", _command_evaluate,
                       "score SD-FSMIS and training-free baselines with the few-shot protocol (RPT) over the folds",
                       "sdfsmis evaluate --data ../shared/data/chaos-t2 --dataset chaos-t2 --methods copy,prototype "
                       "--out eval/chaos")
    evaluate.add_argument("--data", type=Path, required=True, help="dataset folder (image_<id>, label_<id>)")
    evaluate.add_argument("--out", type=Path, required=True,
                          help="report folder: results.json, table.md, dice.png, overlays/")
    evaluate.add_argument("--dataset", choices=("auto", "chaos-t2", "synapse-ct"), default="auto",
                          help="fold definition and organ ids (auto: CHAOS ids, Synapse ids for labels with 6 "
                          "and no 4)")
    evaluate.add_argument("--recipe", default="none", help="preprocessing recipe (default none: the folder is "
                          "already preprocessed like the SSL-ALPNet folders)")
    evaluate.add_argument("--size", type=int, default=256, help="in-plane size of the model space")
    evaluate.add_argument("--folds", type=int_list, default=[0, 1, 2, 3, 4], help="test folds, e.g. 0,1,2,3,4")
    evaluate.add_argument("--shots", type=int, default=3, help="support slices per organ")
    evaluate.add_argument("--support-index", type=int, default=2,
                          help="position of the support patient among a fold's test patients (RPT: 2)")
    evaluate.add_argument("--methods", default="sdfsmis,copy,prototype", help=f"any of {','.join(METHODS)}")
    evaluate.add_argument("--organs", default=",".join(PAPER_ORDER), help="organs to score")
    evaluate.add_argument("--checkpoint", help="SD-FSMIS checkpoint; {fold} in the path is replaced by the fold "
                          "(one model per fold). Default: the bundled model")
    evaluate.add_argument("--base-model", type=Path, help="SD-1.5 folder or file the checkpoint was trained on")
    evaluate.add_argument("--dino", type=Path, help="DINOv2 folder the checkpoint was trained with")
    evaluate.add_argument("--prototype-features", choices=("vae", "dino"), default="vae",
                          help="frozen features of the prototype baseline: VAE latent mean or DINOv2 patch tokens")
    evaluate.add_argument("--k-shot", action="store_true",
                          help="released-code variant: all supports as one set (compare the summary's pooled Dice)")
    evaluate.add_argument("--query-range", choices=("ground-truth", "estimated"), default="ground-truth",
                          help="ground-truth: the protocol's labelled query slices; estimated: the range SDFSMIS "
                          "estimates without the query's labels, as in real use")
    evaluate.add_argument("--setting", type=int, choices=(1, 2), default=1,
                          help="the models' training setting, recorded in results.json")
    evaluate.add_argument("--label", default="SD-FSMIS", help="table row of the model")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    evaluate.add_argument("--batch-size", type=int, default=8, help="query slices per network call")
