"""SDFSMIS: few-shot medical image segmentation with SD-FSMIS, for 3D Slicer and the command line.

The public API is importable from the package; torch and diffusers load only when first used, so the Slicer
module can import the package before its dependencies are installed, and importing it changes nothing in the
process (no environment variable, no global setting).

The sub-packages, from the network outwards: ``model`` (the network), ``weights`` (files on disk and the one
model-loading entry point), ``inference`` (slices and volumes), ``io`` (volumes, segmentations, DICOM),
``data`` (datasets, pseudo-labels, episodes, phantoms), ``training``, ``evaluation``, ``slicer`` (the 3D
Slicer module) and ``cli`` (the ``sdfsmis`` command).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "SDFSMISConfig": "model.config",
    "preset": "model.config",
    "SDFSMISNet": "model.network",
    "SupportEncoding": "model.network",
    "load_base_model": "weights.base_model",
    "save_checkpoint": "weights.checkpoint",
    "load_checkpoint": "weights.checkpoint",
    "read_checkpoint_metadata": "weights.checkpoint",
    "load_released_checkpoint": "weights.released_checkpoint",
    "load_model": "weights.loading",
    "ModelFiles": "weights.model_files",
    "predict_foreground_maps": "inference.slice_prediction",
    "segment_slices": "inference.slice_prediction",
    "Threshold": "inference.postprocess",
    "propagate": "inference.propagation",
    "PropagationOptions": "inference.options",
    "read_volume": "io.volumes",
    "write_volume": "io.volumes",
    "Volume": "io.volumes",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
