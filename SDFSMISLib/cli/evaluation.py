"""``sdfsmis evaluate``: the few-shot test protocol over the folds of a dataset folder, and its reports.

The work is :mod:`SDFSMISLib.evaluation.folds`; this module turns the options into its settings. Everything
the user gave is checked before any work, so bad input exits with status 2 and writes nothing.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import fields
from pathlib import Path

from ..errors import InputError
from ..evaluation.folds import (
    METHODS,
    MODEL_METHODS,
    MODES,
    EvaluationSettings,
    check_methods,
    evaluate_folds,
    plan_folds,
    write_reports,
)
from ..io.labels import PAPER_ORDER
from ..progress import progress_bar
from .model_options import add_model_arguments
from .training import CommandFactory, int_list

DEFAULT_METHODS = {"cross-patient": "sdfsmis,copy,prototype", "same-patient": "sdfsmis,copy,fill-between"}


def _choices(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    """A comma-separated selection from ``allowed``, in the given order; an InputError names unknown entries."""
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [part for part in chosen if part not in allowed]
    if unknown or not chosen:
        raise InputError(f"unknown or no {what} {unknown or text!r}; choose from {','.join(allowed)}")
    return list(dict.fromkeys(chosen))


def _model_files(args: argparse.Namespace):  # noqa: ANN202 - ModelFiles, imported here
    """Checkpoint, base model and DINOv2 (any of them with ``{fold}``): the user's, or the bundled model's."""
    from ..weights.model_files import chosen_model

    return chosen_model(args.checkpoint, args.base_model, args.dino, fold_pattern=True)


def _command_line(args: argparse.Namespace) -> str:
    """The command that repeats this run, every option spelled out (defaults resolved)."""
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


def _settings(args: argparse.Namespace) -> EvaluationSettings:
    return EvaluationSettings(**{option.name: getattr(args, option.name) for option in fields(EvaluationSettings)})


def _command_evaluate(args: argparse.Namespace) -> None:
    if args.methods is None:
        args.methods = DEFAULT_METHODS[args.mode]
    methods = _choices(args.methods, METHODS, "methods")
    check_methods(methods, args.mode)
    organ_names = _choices(args.organs, PAPER_ORDER, "organs")
    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out {args.out} is a file; give a folder for the reports")
    pattern = _model_files(args) if MODEL_METHODS & set(methods) else None
    settings = _settings(args)
    plans = plan_folds(args.data, args.folds, settings, pattern)
    with progress_bar("evaluating", "case") as progress:
        run = evaluate_folds(plans, methods, organ_names, settings, progress)
    write_reports(args.out, plans, methods, run, settings, _command_line(args))
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
    evaluate.add_argument("--mode", choices=MODES, default="cross-patient",
                          help="cross-patient: the paper's protocol (one support patient per fold); same-patient: "
                          "each organ annotated on 3 of its own slices (1/6, 1/2, 5/6), the rest predicted")
    evaluate.add_argument("--methods", help=f"any of {','.join(METHODS)} (fill-between: same-patient only; "
                          "default: " + "; ".join(f"{mode}: {methods}" for mode, methods in DEFAULT_METHODS.items())
                          + ")")
    evaluate.add_argument("--organs", default=",".join(PAPER_ORDER), help="organs to score")
    add_model_arguments(evaluate, per_fold=True)
    evaluate.add_argument("--prototype-features", choices=("vae", "dino"), default="vae",
                          help="frozen features of the prototype baseline: VAE latent mean or DINOv2 patch tokens")
    evaluate.add_argument("--k-shot", action="store_true",
                          help="released-code variant: all supports as one set (compare the summary's pooled Dice)")
    evaluate.add_argument("--query-range", choices=("ground-truth", "estimated"), default="ground-truth",
                          help="ground-truth: the organ's true extent (the protocol's labelled slices); estimated: "
                          "the range SDFSMIS estimates from the annotated slices alone, as in real use")
    evaluate.add_argument("--setting", type=int, choices=(1, 2), default=1,
                          help="the models' training setting, recorded in results.json")
    evaluate.add_argument("--label", default="SD-FSMIS", help="table row of the model")
    evaluate.add_argument("--batch-size", type=int, default=8, help="query slices per network call")
