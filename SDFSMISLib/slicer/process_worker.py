"""Propagations in a worker process beside 3D Slicer (:mod:`SDFSMISLib.slicer.worker_child`), polled from the GUI.

The GUI thread never waits on the child: :meth:`ProcessWorker.submit` writes the job to a temporary folder
(volumes as ``.nrrd``, options as JSON) and one line to the child; each poll of the handle takes the lines
the child printed since (a reader thread queues them) and updates stage and progress. Cancel asks the child
first (it stops at the next network layer and keeps its model) and kills it when it has not answered within
:data:`CANCEL_GRACE_SECONDS` (model loading, a stuck GPU). A child that dies (a segfault, the system killing
it for memory) fails the job with the exit status and the end of its log; the next job starts a new child.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..errors import InputError
from ..io.volumes import Volume, read_volume, write_volume
from .worker import CANCELLED, FAILED, FINISHED, LOADING, RUNNING, JobHandle, ModelRequest, PropagationJob
from .worker_child import VOLUMES, options_to_json

#: How long a cancelled child may take to stop by itself before it is killed.
CANCEL_GRACE_SECONDS = 1.0
#: The package's parent folder: the child imports SDFSMISLib from where this module was imported.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class WorkerStopped(RuntimeError):
    """The worker process ended in the middle of a run (a crash, or the system killing it for memory)."""


@dataclass(frozen=True)
class WorkerResult:
    """What the child returns: the labelmap on the query grid and the plan's summary (as PropagationResult)."""

    labelmap: Volume
    query_slices: dict[int, list[int]]
    seconds: float
    predicted_slice_count: int


class ProcessWorker:
    """One worker process, started on the first job and kept with its model; jobs run one after the other."""

    def __init__(self, python: str | None = None) -> None:
        self.python = python or shutil.which("PythonSlicer") or sys.executable
        self._process: subprocess.Popen | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._log: IO[str] | None = None
        self._pending: list[JobHandle] = []
        self._current: JobHandle | None = None
        self._folder: Path | None = None
        self._cancel_sent: float | None = None
        self._model_request: ModelRequest | None = None
        self.loads = 0  # how many times the child read weights

    @property
    def loaded_model(self) -> ModelRequest | None:
        """The request of the model the child holds, if any."""
        return self._model_request

    def submit(self, job: PropagationJob) -> JobHandle:
        """Queue ``job``; returns at once with the handle to poll (polling it drives the worker)."""
        handle = JobHandle(job, _pump=self.pump)
        self._pending.append(handle)
        self.pump()
        return handle

    def pump(self) -> None:
        """Take the child's lines, start the next job, and enforce a cancel; never blocks."""
        current = self._current
        if current is not None and current.token.cancelled:
            self._cancel(current)
        while self._current is not None:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            self._handle_line(line)
        if self._current is None and self._pending:
            self._start(self._pending.pop(0))

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop the child and free its model (module cleanup, application exit)."""
        for handle in self._pending:
            handle._set(CANCELLED)
        self._pending.clear()
        if self._current is not None:
            self._current._set(CANCELLED)
            self._finish_job()
        if self._process is not None:
            try:
                self._process.stdin.close()
                self._process.wait(timeout)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
        self._stop_process()

    # ------------------------------------------------------------------------------------------------ the job

    def _start(self, handle: JobHandle) -> None:
        if handle.token.cancelled:
            handle._set(CANCELLED)
            return
        self._current, self._cancel_sent = handle, None
        try:
            self._folder = Path(tempfile.mkdtemp(prefix="sdfsmis-job-"))
            self._write_job(handle.job, self._folder)
            self._ensure_process()
            self._process.stdin.write(f"RUN {self._folder}\n")
            self._process.stdin.flush()
        except (OSError, InputError) as error:
            self._fail(handle, error)

    @staticmethod
    def _write_job(job: PropagationJob, folder: Path) -> None:
        for name in VOLUMES:
            volume = getattr(job, name)
            if volume is not None:
                write_volume(folder / f"{name}.nrrd", volume)
        files = job.model.files
        model = {"checkpoint": str(files.checkpoint), "base_model": str(files.base_model), "dino": str(files.dino),
                 "device": job.model.device, "dtype": job.model.dtype}
        (folder / "job.json").write_text(json.dumps({"model": model, "options": options_to_json(job.options)}))

    def _handle_line(self, line: str | None) -> None:
        handle = self._current
        if line is None:  # the child's output ended: it died
            self._fail(handle, WorkerStopped(self._death()))
            self._stop_process()
            return
        word, _, rest = line.strip().partition(" ")
        if word == "STAGE":
            handle._set(LOADING if rest == LOADING else RUNNING)
            if rest == LOADING:
                self._model_request, self.loads = None, self.loads + 1
        elif word == "REUSED":
            handle.reused_model = True
        elif word == "PROGRESS":
            done, total = (int(value) for value in rest.split())
            handle._set(progress=(done, total))
        elif word == "RESULT":
            record = json.loads(rest)
            handle.result = WorkerResult(read_volume(self._folder / "labelmap.nrrd"),
                                         {int(label): slices for label, slices in record["query_slices"].items()},
                                         record["seconds"], record["predicted_slice_count"])
        elif word == "FINISHED":
            self._model_request = handle.job.model
            handle._set(FINISHED)
            self._finish_job()
        elif word == "CANCELLED":
            handle._set(CANCELLED)
            self._finish_job()
        elif word == "FAILED":
            record = json.loads(rest)
            error_type = InputError if record.get("input_error") else RuntimeError
            message = record["message"] if record.get("input_error") else f"{record['type']}: {record['message']}"
            handle.details, handle.out_of_memory = record.get("details", ""), bool(record.get("out_of_memory"))
            self._fail(handle, error_type(message))
        # other lines (a library printing to stdout) are not the protocol's: ignored

    def _cancel(self, handle: JobHandle) -> None:
        """Ask the child to stop; kill it when it has not stopped within the grace time."""
        if self._cancel_sent is None:
            self._cancel_sent = time.monotonic()
            try:
                self._process.stdin.write("CANCEL\n")
                self._process.stdin.flush()
            except (OSError, AttributeError):
                pass
        elif time.monotonic() - self._cancel_sent > CANCEL_GRACE_SECONDS and not handle.ended:
            self._process.kill()
            self._stop_process()
            handle._set(CANCELLED)
            self._finish_job()

    def _fail(self, handle: JobHandle, error: BaseException) -> None:
        handle.error = error
        handle._set(FAILED)
        self._finish_job()

    def _finish_job(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
        self._current, self._folder, self._cancel_sent = None, None, None

    # -------------------------------------------------------------------------------------------- the process

    def _ensure_process(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        self._stop_process()
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), environment.get("PYTHONPATH")]))
        self._log = tempfile.NamedTemporaryFile("w+", prefix="sdfsmis-worker-", suffix=".log", delete=False)
        self._process = subprocess.Popen(
            [self.python, "-m", "SDFSMISLib.slicer.worker_child"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._log, text=True, bufsize=1, env=environment)
        lines: queue.Queue[str | None] = queue.Queue()
        self._lines = lines
        threading.Thread(target=_read_lines, args=(self._process.stdout, lines), daemon=True,
                         name="SDFSMIS worker output").start()

    def _death(self) -> str:
        code = self._process.wait() if self._process is not None else None
        log = ""
        if self._log is not None:
            self._log.flush()
            log = Path(self._log.name).read_text(errors="replace").strip().splitlines()[-5:]
            log = " | ".join(log)
        return (f"the SDFSMIS worker process stopped (exit status {code}); 3D Slicer is unaffected. If the system ran "
                "out of memory, close other programs or choose a smaller batch or the CPU; the worker's log ends: "
                f"{log or '(empty)'}")

    def _stop_process(self) -> None:
        self._process, self._model_request = None, None


def _read_lines(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    """Queue every line the child prints, then ``None`` when its output ends."""
    for line in stream:
        lines.put(line)
    lines.put(None)
