"""Progress reports and cancellation, shared by every long job (prediction, training, pseudo-labels, evaluation).

One shape everywhere: a job calls ``progress(done, total)`` after each unit of work, and a callback that returns
``False`` asks it to stop, which it does by raising :class:`Cancelled`. The command line passes a
:func:`progress_bar`; the Slicer module passes a callback that feeds its progress bar and its Cancel button
(:class:`CancelToken`).

No torch at import: the Slicer module and its worker import this before PyTorch is installed, and catch
:class:`Cancelled` by type.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

#: ``(done, total)`` units of work; return ``False`` to cancel (the job then raises :class:`Cancelled`).
ProgressCallback = Callable[[int, int], "bool | None"]


class Cancelled(Exception):
    """The user cancelled a job, through its progress callback or a :class:`CancelToken`."""


def report(progress: ProgressCallback | None, done: int, total: int) -> None:
    """Tell ``progress`` (if any) how far a job is; raise :class:`Cancelled` when it answers ``False``."""
    if progress is not None and progress(done, total) is False:
        raise Cancelled("cancelled")


class CancelToken:
    """A thread-safe "stop now" flag: set by the GUI thread, checked by the worker."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if cancellation was asked for."""
        if self._event.is_set():
            raise Cancelled("cancelled by the user")

    def progress(self, callback: ProgressCallback | None = None) -> ProgressCallback:
        """A progress callback that reports to ``callback`` and returns ``False`` once cancelled."""
        def forward(done: int, total: int) -> bool:
            if callback is not None:
                callback(done, total)
            return not self.cancelled

        return forward


@contextlib.contextmanager
def progress_bar(description: str, unit: str, leave: bool = True) -> Iterator[ProgressCallback]:
    """A tqdm bar on the terminal as a progress callback (the command line's way of showing progress)."""
    from tqdm.auto import tqdm

    bar = tqdm(desc=description, unit=unit, leave=leave)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        bar.close()
