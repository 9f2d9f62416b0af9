"""ITK's morphological contour interpolation, run in a worker process of its own.

The ``itk`` package and SimpleITK (which the rest of SDFSMIS reads volumes with) each bundle their own build of
the ITK libraries; loaded into one process, the two corrupted the heap (``malloc_consolidate(): unaligned
fastbin chunk``, an abort at exit). So the interpolation runs in one spawned process that imports ``itk`` and
nothing of ours besides this module, started on first use and reused for the rest of the run.
"""

from __future__ import annotations

import functools
import importlib.util
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from ..errors import InputError


def require_itk() -> None:
    """Refuse, before any work, when the evaluation extra is not installed."""
    if importlib.util.find_spec("itk") is None:
        raise InputError("the fill-between baseline needs ITK's contour interpolation: pip install "
                         "'SDFSMISLib[evaluation]' (itk-morphologicalcontourinterpolation), or leave out "
                         "fill-between")


def interpolate(volume: np.ndarray) -> np.ndarray:
    """``volume`` (``[S, H, W]`` uint8 labels on a few slices) with the slices between them interpolated."""
    return _worker().submit(_interpolate, volume).result()


@functools.cache
def _worker() -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))


def _interpolate(volume: np.ndarray) -> np.ndarray:
    import itk

    return itk.array_from_image(itk.morphological_contour_interpolator(itk.image_from_array(volume)))
