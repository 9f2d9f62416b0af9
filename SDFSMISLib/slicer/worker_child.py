"""The propagation worker process: what 3D Slicer runs beside itself (``PythonSlicer -m ...worker_child``).

Why a process: Slicer's main thread keeps Python's GIL while it waits in the Qt event loop, so a Python thread
inside Slicer advances only while the GUI runs Python; a CUDA fault or a segfault in a thread takes Slicer
down; and model loading cannot be interrupted in a thread. A child process runs at full speed, can be killed,
and its crash is a message, not a lost session (SlicerNNUnet, MONAIAuto3DSeg and TotalSegmentator do the
same). It keeps the model between runs.

The protocol is lines of text. The parent writes ``RUN <folder>`` (the folder holds the job: volumes as
``.nrrd``, ``job.json``) and ``CANCEL``; the child answers ``STAGE <name>``, ``PROGRESS <done> <total>``,
``REUSED``, ``FINISHED`` (the result is in the folder: ``labelmap.nrrd``, ``result.json``), ``CANCELLED`` or
``FAILED <json>``. A thread reads the parent's lines, so a cancel lands at the next network layer. Nothing
here imports torch before a job asks for it.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from ..errors import InputError
from ..inference.postprocess import Threshold
from ..io.volumes import read_volume, write_volume
from ..progress import Cancelled, CancelToken
from ..weights.model_files import ModelFiles

VOLUMES = ("query", "support_mask", "support", "query_mask")


def options_to_json(options: Mapping[str, Any]) -> dict[str, Any]:
    """PropagationOptions fields as JSON (a range request and a threshold become plain objects)."""
    encoded = dict(options)
    if isinstance(encoded.get("threshold"), Threshold):
        encoded["threshold"] = {"mode": encoded["threshold"].mode, "value": encoded["threshold"].value}
    if encoded.get("query_range") is not None:
        request = encoded["query_range"]
        encoded["query_range"] = {"low": request.low, "high": request.high, "unit": request.unit}
    if "query_slices" in encoded:
        encoded["query_slices"] = {str(label): [int(s) for s in slices]
                                   for label, slices in encoded["query_slices"].items()}
    return encoded


def options_from_json(encoded: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`options_to_json`."""
    from ..inference.query_range import RangeRequest

    options = dict(encoded)
    if isinstance(options.get("threshold"), dict):
        options["threshold"] = Threshold(**options["threshold"])
    if isinstance(options.get("query_range"), dict):
        options["query_range"] = RangeRequest(**options["query_range"])
    if "query_slices" in options:
        options["query_slices"] = {int(label): slices for label, slices in options["query_slices"].items()}
    return options


class Child:
    """The worker's state: the model it keeps, and the token of the run in progress."""

    def __init__(self, out: TextIO) -> None:
        self.out, self.model, self.model_key, self.token = out, None, None, CancelToken()
        self.lock = threading.Lock()

    def say(self, line: str) -> None:
        with self.lock:
            self.out.write(line + "\n")
            self.out.flush()

    def run(self, folder: Path) -> None:
        self.token = CancelToken()
        try:
            self.say(f"RESULT {json.dumps(self._propagate(folder))}")
            self.say("FINISHED")
        except Cancelled:
            self.say("CANCELLED")
        except Exception as error:  # noqa: BLE001 - every failure goes to the parent, which shows it
            self.say(f"FAILED {json.dumps(self._failure(error))}")

    def _propagate(self, folder: Path) -> dict[str, Any]:
        job = json.loads((folder / "job.json").read_text())
        volumes = {name: read_volume(folder / f"{name}.nrrd") if (folder / f"{name}.nrrd").is_file() else None
                   for name in VOLUMES}
        from ..inference.cancellation import cancel_inside
        from ..inference.options import PropagationOptions
        from ..inference.propagation import check_inputs, propagate

        options = PropagationOptions(**options_from_json(job["options"]))
        check_inputs(volumes["query"], volumes["support_mask"], volumes["support"], volumes["query_mask"],
                     options.labels)  # bad input fails before the (slow) model loading
        model = self._model(job["model"])
        self.token.check()
        self.say("STAGE propagating")
        progress = self.token.progress(lambda done, total: self.say(f"PROGRESS {done} {total}"))
        with cancel_inside(model, self.token):
            result = propagate(model, volumes["query"], volumes["support_mask"], volumes["support"], options,
                               progress=progress, query_mask=volumes["query_mask"])
        write_volume(folder / "labelmap.nrrd", result.labelmap)
        return {"query_slices": {str(label): [int(s) for s in slices] for label, slices in result.query_slices.items()},
                "seconds": result.seconds, "predicted_slice_count": result.predicted_slice_count}

    def _model(self, request: Mapping[str, Any]) -> Any:
        key = json.dumps(request, sort_keys=True)
        if key == self.model_key:
            self.say("REUSED")
            return self.model
        self.say("STAGE loading model")
        self.model = self.model_key = None  # the old model goes before the new one comes
        from ..weights.loading import load_model

        files = ModelFiles(*(Path(request[part]) for part in ("checkpoint", "base_model", "dino")))
        self.model = load_model(files, request["device"], request["dtype"])
        self.model_key = key
        return self.model

    @staticmethod
    def _failure(error: BaseException) -> dict[str, Any]:
        out_of_memory = False
        if "torch" in sys.modules:
            from ..devices import is_out_of_memory

            out_of_memory = is_out_of_memory(error)
        return {"type": type(error).__name__, "message": str(error), "input_error": isinstance(error, InputError),
                "out_of_memory": out_of_memory,
                "details": "".join(traceback.format_exception(type(error), error, error.__traceback__))}


def main() -> None:
    """Serve ``RUN`` lines until the parent closes the pipe; ``CANCEL`` stops the run in progress."""
    child = Child(sys.stdout)
    runs: list[threading.Thread] = []
    child.say("READY")
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "RUN":
            runs = [thread for thread in runs if thread.is_alive()]
            if runs:
                child.say(f"FAILED {json.dumps({'type': 'RuntimeError', 'message': 'a run is in progress'})}")
                continue
            runs.append(threading.Thread(target=child.run, args=(Path(argument),), daemon=True))
            runs[-1].start()
        elif command == "CANCEL":
            child.token.cancel()
    child.token.cancel()
    deadline = time.monotonic() + 5
    for thread in runs:
        thread.join(max(0.0, deadline - time.monotonic()))


if __name__ == "__main__":
    main()
