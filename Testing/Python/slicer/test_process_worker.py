"""The worker process that runs propagations beside 3D Slicer: model kept, bad input first, cancel within a
second (also while the model loads), a dying child reported (its speed under Slicer's GIL: test_slicer_logic)."""

from __future__ import annotations

import time

import numpy as np

from SDFSMISLib.errors import InputError
from SDFSMISLib.inference.query_range import RangeRequest
from SDFSMISLib.io.volumes import Volume
from SDFSMISLib.slicer.process_worker import ProcessWorker
from SDFSMISLib.slicer.worker import ModelRequest, PropagationJob
from SDFSMISLib.weights.model_files import bundled_model

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def job(mask_slices: tuple[int, ...] = (2, 4), slices: int = 6) -> PropagationJob:
    volume = Volume(np.random.default_rng(1).normal(size=(slices, 32, 32)).astype(np.float32), (2.0, 2.0, 4.0),
                    (0.0, 0.0, 0.0), AXIAL)
    mask = np.zeros(volume.array.shape, np.uint8)
    mask[list(mask_slices), 10:20, 10:20] = 1
    return PropagationJob(ModelRequest(bundled_model(), "cpu"), volume, volume.with_array(mask),
                          options={"query_range": RangeRequest(1, 4, "index")})


def test_the_child_keeps_the_model_and_returns_the_result_on_the_query_grid() -> None:
    worker = ProcessWorker()
    first, second = worker.submit(job()), worker.submit(job())
    assert first.wait(120) and second.wait(120)
    assert [handle.status().stage for handle in (first, second)] == ["finished", "finished"]
    assert worker.loads == 1 and not first.reused_model and second.reused_model
    assert first.status().done == first.status().total > 0
    assert first.result.labelmap.same_grid(first.job.query) and set(first.result.query_slices) == {1}
    assert worker.loaded_model == ModelRequest(bundled_model(), "cpu")
    worker.shutdown(10)
    assert worker.loaded_model is None


def test_bad_input_fails_before_the_model_loads() -> None:
    worker = ProcessWorker()
    handle = worker.submit(job(mask_slices=()))
    assert handle.wait(120) and handle.status().stage == "failed" and isinstance(handle.error, InputError)
    assert worker.loads == 0 and "Traceback" in handle.details
    worker.shutdown(10)


def test_cancel_lands_within_a_second_even_while_the_model_loads() -> None:
    worker = ProcessWorker()
    handle = worker.submit(job())
    while handle.status().stage != "loading model":
        assert not handle.wait(0.05) or handle.status().stage != "finished", "finished before it could be cancelled"
    handle.cancel()
    asked = time.monotonic()
    assert handle.wait(5) and handle.status().stage == "cancelled"
    assert time.monotonic() - asked < 1.5
    after = worker.submit(job())  # the next run starts a new child if the old one had to be killed
    assert after.wait(120) and after.status().stage == "finished"
    worker.shutdown(10)


def test_a_dying_child_fails_the_run_with_the_cause_and_the_next_run_works() -> None:
    worker = ProcessWorker()
    handle = worker.submit(job())
    while handle.status().stage == "queued":
        handle.wait(0.05)
    worker._process.kill()  # as the system's out-of-memory killer would
    assert handle.wait(10) and handle.status().stage == "failed"
    assert "worker process stopped" in str(handle.error) and "3D Slicer is unaffected" in str(handle.error)
    from SDFSMISLib.slicer.process_worker import WorkerStopped

    assert isinstance(handle.error, WorkerStopped)
    after = worker.submit(job())
    assert after.wait(120) and after.status().stage == "finished"
    worker.shutdown(10)
