"""SDFSMIS: few-shot medical image segmentation with SD-FSMIS, for 3D Slicer and the command line.

The public API is importable from the package; torch and diffusers load only when first used,
so the Slicer module can import the package before its dependencies are installed.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

__version__ = "0.1.0"

#: PyTorch backs CPU tensors of 2 MB and more with transparent huge pages when this is set before its first
#: CPU allocation (it reads the variable once). Prediction at full size allocates hundreds of megabytes per
#: layer, and with 4 kB pages the page faults of each new activation cost as much as the normalisations and
#: activations themselves: measured on a 2-core CPU, SiLU on a 134 MB tensor ran 2-3x faster. Set here,
#: before the package imports torch, and only as a default: ``THP_MEM_ALLOC_ENABLE=0`` in the environment
#: switches it off. It has no effect where torch was loaded first (another Slicer extension, say), and like
#: any variable set here it is inherited by child processes.
HUGE_PAGES_VARIABLE = "THP_MEM_ALLOC_ENABLE"
#: Whether torch was loaded before this package could set the variable (then it only applies if set earlier).
TORCH_LOADED_FIRST = "torch" in sys.modules
os.environ.setdefault(HUGE_PAGES_VARIABLE, "1")

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
