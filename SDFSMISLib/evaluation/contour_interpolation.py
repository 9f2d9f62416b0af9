"""ITK's morphological contour interpolation, run in a worker process of its own.

The ``itk`` package and SimpleITK (which the rest of SDFSMIS reads volumes with) each bundle their own build of
the ITK libraries; loaded into one process, the two corrupted the heap (``malloc_consolidate(): unaligned
fastbin chunk``, an abort at exit). So the interpolation runs in one child process that imports ``itk``, numpy
and nothing else of ours, started on first use and reused for the rest of the run. It is started as
``python -m`` this module rather than through :mod:`multiprocessing`, whose spawned children re-import the
parent's main script (the ``sdfsmis`` command, which imports SimpleITK). Volumes travel through the child's
standard input and output as length-prefixed ``.npy`` bytes.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import io
import os
import subprocess
import sys

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
    worker = _worker()
    try:
        _send(worker.stdin, volume)
        return _receive(worker.stdout)
    except (EOFError, BrokenPipeError) as error:
        raise RuntimeError(f"the contour interpolation process stopped (exit code {worker.poll()})") from error


def _send(stream: io.BufferedIOBase, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    stream.write(len(buffer.getvalue()).to_bytes(8, "little") + buffer.getvalue())
    stream.flush()


def _receive(stream: io.BufferedIOBase) -> np.ndarray:
    """The next array on ``stream``; ``EOFError`` when the stream ends before one."""
    header = stream.read(8)
    size = int.from_bytes(header, "little") if len(header) == 8 else -1
    data = stream.read(size) if size >= 0 else b""
    if size < 0 or len(data) < size:
        raise EOFError("the stream ended")
    return np.load(io.BytesIO(data), allow_pickle=False)


@functools.cache
def _worker() -> subprocess.Popen:
    worker = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    atexit.register(_stop, worker)
    return worker


def _stop(worker: subprocess.Popen) -> None:
    worker.stdin.close()  # the child's loop ends at end of input
    worker.wait()


def _serve() -> None:
    """The child: interpolate each volume read from standard input until it closes."""
    import itk

    while True:
        try:
            volume = _receive(sys.stdin.buffer)
        except EOFError:
            # Even alone, itk's libraries sometimes corrupt the heap while they are torn down (the same
            # malloc_consolidate abort, after the parent has its results); nothing is left to clean up.
            os._exit(0)
        _send(sys.stdout.buffer, itk.array_from_image(itk.morphological_contour_interpolator(
            itk.image_from_array(volume))))


if __name__ == "__main__":
    _serve()
