"""A cancel lands inside a batch, not at its end, and leaves the model as it was."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from conftest import random_images, square_mask

from SDFSMISLib.inference.cancellation import cancel_inside
from SDFSMISLib.inference.slice_prediction import predict_foreground_maps
from SDFSMISLib.progress import Cancelled, CancelToken

QUERIES = 6


def inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (random_images(QUERIES, 1).numpy(), random_images(1, 2).numpy(), square_mask()[None].numpy())


def test_cancel_lands_mid_batch(tiny_model) -> None:
    """All query slices in one batch: a cancel during the UNet stops before the batch's decoder runs."""
    token, decoded, batches = CancelToken(), [], []
    tiny_model.unet.register_forward_pre_hook(lambda *_: token.cancel())  # the user clicks during the UNet
    tiny_model.vae.decoder.register_forward_pre_hook(lambda *_: decoded.append(True))
    query, support, mask = inputs()
    with cancel_inside(tiny_model, token), pytest.raises(Cancelled):
        predict_foreground_maps(tiny_model, query, support, mask, np.zeros(QUERIES, int), batch_size=QUERIES,
                                progress=token.progress(lambda done, total: batches.append(done)))
    assert not decoded and not batches


def test_hooks_are_removed_after_the_run(tiny_model) -> None:
    token = CancelToken()
    before = sum(len(module._forward_pre_hooks) for module in tiny_model.modules())
    with cancel_inside(tiny_model, token):
        assert sum(len(module._forward_pre_hooks) for module in tiny_model.modules()) > before
    token.cancel()
    query, support, mask = inputs()
    maps = predict_foreground_maps(tiny_model, query[:1], support, mask, np.zeros(1, int))  # token ignored now
    assert maps.shape == (1, 64, 64)
    assert sum(len(module._forward_pre_hooks) for module in tiny_model.modules()) == before


def test_cancel_from_another_thread_stops_quickly(tiny_model) -> None:
    """A cancel from the GUI thread ends a long run within a fraction of a second."""
    token, stopped, started = CancelToken(), {}, threading.Event()
    tiny_model.unet.register_forward_pre_hook(lambda *_: started.set())
    query, support, mask = inputs()
    many = np.repeat(query, 40, axis=0)

    def run() -> None:
        try:
            with cancel_inside(tiny_model, token):
                predict_foreground_maps(tiny_model, many, support, mask, np.zeros(len(many), int),
                                        batch_size=len(many), progress=token.progress())
        except Cancelled:
            stopped["at"] = time.perf_counter()

    worker = threading.Thread(target=run)
    worker.start()
    assert started.wait(timeout=30)
    cancelled_at = time.perf_counter()
    token.cancel()
    worker.join(timeout=10)
    assert "at" in stopped and stopped["at"] - cancelled_at < 1.0


def test_progress_callback_reports_then_asks_to_stop() -> None:
    token, seen = CancelToken(), []
    report = token.progress(lambda done, total: seen.append((done, total)))
    assert report(1, 4) is True
    token.cancel()
    assert report(2, 4) is False and seen == [(1, 4), (2, 4)]
    with pytest.raises(Cancelled):
        token.check()


def test_torch_is_not_needed_to_create_a_token() -> None:
    """The Slicer module creates tokens before PyTorch is installed (the module imports no torch)."""
    import subprocess
    import sys

    code = ("import sys, SDFSMISLib.inference.cancellation, SDFSMISLib.progress as p; p.CancelToken().cancel(); "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"
