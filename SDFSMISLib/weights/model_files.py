"""Which model files to load: the user's three (checkpoint, base model, DINOv2) or the bundled model.

A checkpoint holds only what training changes, so it is useless without its base model and DINOv2: the rule
"all three, or none for the bundled model" and the folder layouts each part must have are checked here, before
anything is loaded, for the command line, the evaluation and the Slicer panel alike. No torch at import: the
panel checks a path as the user picks it, before PyTorch is installed.

The bundled model in ``Resources/Models/tiny`` is small enough for a CPU and shows the whole workflow
(reproducible with ``make default-model``); its measured quality is in the README's "Evaluation".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import InputError
from ..resources import RESOURCES

MODEL_FOLDER = RESOURCES / "Models" / "tiny"
#: Weight files other than safetensors that the loaders read (with ``torch.load(weights_only=True)``).
TORCH_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")
WEIGHT_SUFFIXES = (".safetensors", *TORCH_SUFFIXES)
#: What a diffusers Stable Diffusion folder and a Hugging Face DINOv2 folder hold.
DIFFUSERS_PARTS = ("unet", "vae")
DINO_WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")

Part = Literal["checkpoint", "base_model", "dino"]


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's three parts are: what :func:`SDFSMISLib.weights.loading.load_model` takes."""

    checkpoint: Path
    base_model: Path
    dino: Path


def bundled_model() -> ModelFiles:
    """The bundled tiny model's files; an :class:`InputError` says how to rebuild them when missing."""
    files = ModelFiles(MODEL_FOLDER / "model.safetensors", MODEL_FOLDER / "sd", MODEL_FOLDER / "dino")
    missing = [str(path) for path in (files.checkpoint, files.base_model, files.dino) if not path.exists()]
    if missing:
        raise InputError(f"the bundled default model is missing ({', '.join(missing)}): this install has no "
                         "Resources/ folder. Use a source checkout (pip install -e .), run `make default-model` to "
                         "rebuild it, or give the checkpoint, the base model and DINOv2")
    return files


#: Stands for the fold number in the model paths of a cross-validated evaluation (one model per fold).
FOLD_FIELD = "{fold}"


def chosen_model(checkpoint: str | Path | None, base_model: str | Path | None, dino: str | Path | None,
                 fold_pattern: bool = False) -> ModelFiles:
    """The model the user named, or the bundled one when none; a partial set or a wrong layout is refused.

    ``fold_pattern``: a path holding :data:`FOLD_FIELD` names one file or folder per fold, checked where it is used.
    """
    given = [str(path).strip() if path else "" for path in (checkpoint, base_model, dino)]
    if not any(given):
        return bundled_model()
    if not all(given):
        raise InputError("the SD-FSMIS checkpoint, the base model (SD-1.5) and DINOv2 go together (the checkpoint "
                         "holds only the trained parts): give all three (--checkpoint, --base-model, --dino), or "
                         "none for the bundled default model")
    files = ModelFiles(*(Path(path) for path in given))
    for part in ("checkpoint", "base_model", "dino"):
        if fold_pattern and FOLD_FIELD in str(getattr(files, part)):
            continue
        problem = layout_problem(part, getattr(files, part))
        if problem:
            raise InputError(problem)
    return files


def layout_problem(part: Part, path: str | Path) -> str:
    """An empty string when ``path`` has the layout of that part of a model, else the problem and the fix.

    Structure only: the weights themselves are checked when they are loaded.
    """
    path = Path(path)
    if not str(path).strip() or not path.exists():
        return f"{path} does not exist; choose the file or folder again"
    if part == "checkpoint":
        if not path.is_file() or path.suffix not in WEIGHT_SUFFIXES:
            return f"{path} is not an SD-FSMIS checkpoint file: choose the .safetensors written by `sdfsmis train`"
        return ""
    if part == "base_model":
        if path.is_file():
            return "" if path.suffix in WEIGHT_SUFFIXES else (
                f"{path} is not a Stable Diffusion 1.5 weight file; choose v1-5-pruned-emaonly.safetensors or a "
                "diffusers folder")
        missing = [f"{name}/config.json" for name in DIFFUSERS_PARTS if not (path / name / "config.json").is_file()]
        return "" if not missing else (f"{path} is not a Stable Diffusion 1.5 diffusers folder (no "
                                       f"{', '.join(missing)}); choose the folder holding unet/ and vae/, or the "
                                       "single file v1-5-pruned-emaonly.safetensors")
    if part == "dino":
        if path.is_dir() and (path / "config.json").is_file() and any(
                (path / name).is_file() for name in DINO_WEIGHT_NAMES):
            return ""
        return (f"{path} is not a DINOv2 folder; choose the folder of facebook/dinov2-small (or -base) holding "
                "config.json and model.safetensors")
    raise ValueError(f"unknown model part {part!r}")
