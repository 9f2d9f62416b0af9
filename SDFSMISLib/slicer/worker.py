"""One persistent background thread that keeps the model loaded and runs propagations one at a time.

Why a thread, and a persistent one: loading SD-1.5 + DINOv2 takes seconds to a minute and a propagation
minutes on a CPU, and 3D Slicer's GUI must stay responsive meanwhile; the second run on the same model must
not load the weights again; and CUDA keeps per-thread state (cuDNN autotuning) that a thread living as long
as the model reuses. So the GUI thread hands plain arrays (:class:`PropagationJob`) to the worker and polls a
:class:`JobHandle` (progress, result, error) from a timer; MRML is touched only on the GUI thread, before and
after (see :mod:`SDFSMISLib.slicer.logic`).

The model cache holds one model, keyed by its files, device and precision: asking for another releases the
first (one SD-1.5 fills a small GPU). Cancelling sets the handle's :class:`~SDFSMISLib.progress.CancelToken`;
the run stops at the next network layer (:func:`~SDFSMISLib.inference.cancellation.cancel_inside`).

Nothing here imports torch at module level: the Slicer module creates the worker before PyTorch is installed.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import devices
from ..io.volumes import Volume
from ..progress import Cancelled, CancelToken
from ..weights.model_files import ModelFiles

QUEUED, LOADING, RUNNING, FINISHED, FAILED, CANCELLED = (
    "queued", "loading model", "propagating", "finished", "failed", "cancelled")
ENDED = (FINISHED, FAILED, CANCELLED)


@dataclass(frozen=True)
class ModelRequest:
    """Which network to run: the cache key of the worker (same request = same loaded model)."""

    files: ModelFiles
    device: str = "auto"
    dtype: str = "auto"


@dataclass(frozen=True)
class PropagationJob:
    """Everything a propagation needs, as plain arrays (copied out of MRML on the GUI thread)."""

    model: ModelRequest
    query: Volume
    support_mask: Volume
    support: Volume | None = None
    options: Mapping[str, Any] = field(default_factory=dict)  # PropagationOptions fields (that class needs torch)
    query_mask: Volume | None = None


@dataclass(frozen=True)
class JobStatus:
    """A consistent snapshot of a job for the GUI: stage, progress in slices, seconds since it started."""

    stage: str
    done: int = 0
    total: int = 0
    seconds: float = 0.0


@dataclass
class JobHandle:
    """The GUI's view of one submitted job. Thread-safe: the worker writes, the GUI polls."""

    job: PropagationJob
    token: CancelToken = field(default_factory=CancelToken)
    result: Any = None  # PropagationResult once FINISHED
    error: BaseException | None = None  # once FAILED
    details: str = ""  # the error's traceback, for the dialog's details and the log
    out_of_memory: bool = False  # the error was the GPU running out of memory
    reused_model: bool = False  # the model was already loaded: no weights were read for this job
    _stage: str = QUEUED
    _progress: tuple[int, int] = (0, 0)
    _started: float = field(default_factory=time.perf_counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ended: threading.Event = field(default_factory=threading.Event)
    #: Reads what the worker process said so far (never blocks); ``None`` for the in-process thread worker.
    _pump: Callable[[], None] | None = None

    def status(self) -> JobStatus:
        if self._pump is not None:
            self._pump()
        with self._lock:
            return JobStatus(self._stage, *self._progress, time.perf_counter() - self._started)

    def cancel(self) -> None:
        """Ask the job to stop; it ends as CANCELLED at the next network layer (or before it starts)."""
        self.token.cancel()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has ended (for scripts and tests; the GUI polls :meth:`status`)."""
        if self._pump is None:
            return self._ended.wait(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.ended:
            self._pump()
            if deadline is not None and time.monotonic() >= deadline:
                break
            self._ended.wait(0.02)
        return self.ended

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def _set(self, stage: str | None = None, progress: tuple[int, int] | None = None) -> None:
        with self._lock:
            self._stage = stage or self._stage
            self._progress = progress or self._progress
        if stage in ENDED:
            self._ended.set()


Loader = Callable[[ModelFiles, str, str], Any]


class PropagationWorker:
    """A daemon thread started on the first job; it keeps the last model until another is asked for.

    Args:
        loader: ``(files, device, dtype) -> model``; :func:`SDFSMISLib.weights.loading.load_model` by default.
    """

    def __init__(self, loader: Loader | None = None) -> None:
        self._loader = loader
        self._jobs: queue.Queue[JobHandle | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._model: Any = None
        self._model_request: ModelRequest | None = None
        self._current: JobHandle | None = None
        self.loads = 0  # how many times weights were read (a second run on the same model must not add one)

    @property
    def loaded_model(self) -> ModelRequest | None:
        """The request of the model in memory, if any."""
        return self._model_request

    def submit(self, job: PropagationJob) -> JobHandle:
        """Queue ``job``; returns at once with the handle to poll."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._serve, name="SDFSMIS propagation", daemon=True)
            self._thread.start()
        handle = JobHandle(job)
        self._jobs.put(handle)
        return handle

    def shutdown(self, timeout: float | None = None) -> None:
        """Cancel the current job, stop the thread and free the model (module cleanup, application exit)."""
        if self._thread is not None and self._thread.is_alive():
            if self._current is not None:
                self._current.cancel()
            self._jobs.put(None)
            self._thread.join(timeout)
        self._release()

    def _serve(self) -> None:
        while (handle := self._jobs.get()) is not None:
            self._current = handle
            self._run(handle)
            self._current = None

    def _run(self, handle: JobHandle) -> None:
        """One job; whatever happens (even torch failing to import on this thread) the handle ends."""
        try:
            handle.token.check()
            self._check(handle.job)  # bad input fails before the (slow) model loading
            model = self._model_for(handle)
            handle.token.check()
            handle.result = self._propagate(model, handle)
            handle._set(FINISHED)
        except Exception as error:  # noqa: BLE001 - every failure goes to the GUI as a dialog, never lost here
            if isinstance(error, Cancelled):
                handle._set(CANCELLED)
                return
            handle.details = "".join(traceback.format_exception(error))
            traceback.clear_frames(error.__traceback__)  # frames would keep a half-loaded model's tensors alive
            torch_loaded = "torch" in sys.modules  # if torch never came up, there was no GPU error either
            handle.error, handle.out_of_memory = error, torch_loaded and devices.is_out_of_memory(error)
            if handle.out_of_memory:  # the model stays loaded: a retry with a smaller batch reuses it
                devices.release_cached_memory(devices.resolve_device(handle.job.model.device))
            handle._set(FAILED)

    def _model_for(self, handle: JobHandle) -> Any:
        request = handle.job.model
        if request == self._model_request:
            handle.reused_model = True
            return self._model
        self._release()
        handle._set(LOADING)
        loader = self._loader
        if loader is None:
            from ..weights.loading import load_model as loader
        self._model = loader(request.files, request.device, request.dtype)
        self._model_request = request
        self.loads += 1
        return self._model

    @staticmethod
    def _check(job: PropagationJob) -> None:
        from ..inference.propagation import check_inputs

        check_inputs(job.query, job.support_mask, job.support, job.query_mask, job.options.get("labels"))

    @staticmethod
    def _propagate(model: Any, handle: JobHandle) -> Any:
        from ..inference.cancellation import cancel_inside
        from ..inference.options import PropagationOptions
        from ..inference.propagation import propagate

        job = handle.job
        handle._set(RUNNING)
        progress = handle.token.progress(lambda done, total: handle._set(progress=(done, total)))
        with cancel_inside(model, handle.token):
            return propagate(model, job.query, job.support_mask, job.support, PropagationOptions(**job.options),
                             progress=progress, query_mask=job.query_mask)

    def _release(self) -> None:
        """Drop the cached model and give its GPU memory back."""
        if self._model is None:
            return
        device = self._model.device
        self._model, self._model_request = None, None
        devices.release_cached_memory(device)
