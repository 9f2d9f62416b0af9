"""SDFSMIS: few-shot medical image segmentation with SD-FSMIS, for 3D Slicer and the command line.

The public API is importable from the package; torch and diffusers load only when first used,
so the Slicer module can import the package before its dependencies are installed.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "SDFSMISConfig": "config",
    "preset": "config",
    "SDFSMISNet": "network",
    "SupportEncoding": "network",
    "load_base_model": "base_model",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "read_checkpoint_metadata": "checkpoint",
    "load_released_checkpoint": "released",
    "predict_foreground_maps": "slice_prediction",
    "segment_slices": "slice_prediction",
    "Threshold": "postprocess",
    "propagate": "propagation",
    "PropagationOptions": "propagation",
    "load_model": "propagation",
    "read_volume": "volume_io",
    "write_volume": "volume_io",
    "Volume": "volume_io",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
