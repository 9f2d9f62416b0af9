"""The model and phantom patients that ship in ``Resources/``: the default when the user chose none.

The tiny SD-FSMIS model was trained here on synthetic phantoms only (reproducible with
``make demo-model``); it is small enough for a CPU and shows the whole workflow, but a clinical
result needs the full-size model (SD-1.5 + DINOv2 + an SD-FSMIS checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError

#: ``Resources/`` beside the package, as in the Slicer extension and an editable (``pip install -e``) install.
RESOURCES = Path(__file__).resolve().parents[1] / "Resources"
MODEL_FOLDER = RESOURCES / "Models" / "tiny"
PHANTOM_FOLDER = RESOURCES / "Data" / "phantoms"


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's three parts are: what :func:`SDFSMISLib.load_checkpoint` takes."""

    checkpoint: Path
    base_model: Path
    dino: Path


def bundled_model() -> ModelFiles:
    """The bundled tiny model's files; an :class:`InputError` says how to rebuild them when missing."""
    files = ModelFiles(MODEL_FOLDER / "model.safetensors", MODEL_FOLDER / "sd", MODEL_FOLDER / "dino")
    missing = [str(path) for path in (files.checkpoint, files.base_model, files.dino) if not path.exists()]
    if missing:
        raise InputError(f"the bundled demo model is missing ({', '.join(missing)}): this install has no "
                         "Resources/ folder. Use a source checkout (pip install -e .), run `make demo-model` to "
                         "rebuild it, or pass --checkpoint, --base-model and --dino")
    return files


def chosen_model(checkpoint: Any, base_model: Any, dino: Any) -> ModelFiles:
    """The model the user named on the command line, or the bundled one when none; a partial set is refused.

    The checkpoint holds only the trained parts, so it is useless without its base model and DINOv2.
    """
    given = [checkpoint, base_model, dino]
    if not any(given):
        return bundled_model()
    if not all(given):
        raise InputError("--checkpoint, --base-model and --dino go together (the checkpoint holds only the trained "
                         "parts); give all three, or none for the bundled demo model")
    return ModelFiles(Path(checkpoint), Path(base_model), Path(dino))


def bundled_phantoms() -> Path:
    """Folder of the bundled phantom patients (``image_<id>.nii.gz``, ``label_<id>.nii.gz``)."""
    if not any(PHANTOM_FOLDER.glob("image_*.nii.gz")):
        raise InputError(f"the bundled phantom patients are missing from {PHANTOM_FOLDER}: use a source checkout, "
                         "or write new ones with `sdfsmis phantom --out DIR`")
    return PHANTOM_FOLDER
