"""Per-stage time and peak memory of one support + one query prediction.

Stages are timed with forward hooks on the sub-models (VAE encoder, DINOv2, UNet, VAE
decoder), so what is measured is exactly the code that runs in a prediction; the first UNet
call of a prediction is the support pass, every later one a query pass.
"""

from __future__ import annotations

import platform
import resource
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from .config import preset
from .network import SDFSMISNet
from .slice_prediction import predict_foreground_maps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def stage_timer(model: SDFSMISNet) -> Iterator[dict[str, list[float]]]:
    """Collect the wall time of every call of each stage while the context is open."""
    device = model.device
    times: dict[str, list[float]] = defaultdict(list)
    started: dict[str, float] = {}
    unet_calls = [0]

    def stage_name(name: str) -> str:
        if name != "unet":
            return name
        unet_calls[0] += 1
        return "unet_support_pass" if unet_calls[0] == 1 else "unet_query_pass"

    handles = []
    for name, module in {"vae_encode": model.vae.encoder, "dinov2": model.dino, "unet": model.unet,
                         "vae_decode": model.vae.decoder}.items():
        def before(_module: Any, _args: Any, name: str = name) -> None:
            _sync(device)
            started[name] = time.perf_counter()

        def after(_module: Any, _args: Any, _output: Any, name: str = name) -> None:
            _sync(device)
            times[stage_name(name)].append(time.perf_counter() - started[name])

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        yield times
    finally:
        for handle in handles:
            handle.remove()


def benchmark_prediction(config_name: str = "sd15", image_size: int = 256, shots: int = 1,
                         device: str = "cpu", dtype: torch.dtype = torch.float32, repeats: int = 3,
                         seed: int = 0) -> dict[str, Any]:
    """Time one support + one query prediction with random weights (speed does not depend on them).

    Returns a JSON-ready dict: per-stage median seconds, total, and peak memory.
    """
    torch.manual_seed(seed)
    target = torch.device(device)
    build_start = time.perf_counter()
    model = SDFSMISNet.from_config(preset(config_name, image_size=image_size)).to(target, dtype).eval()
    build_seconds = time.perf_counter() - build_start
    images = torch.rand(shots + 1, image_size, image_size) * 2 - 1
    masks = torch.zeros(shots, image_size, image_size)
    masks[:, image_size // 4: 3 * image_size // 4, image_size // 4: 3 * image_size // 4] = 1
    predict_foreground_maps(model, images[:1], images[1:], masks)  # warm-up
    if target.type == "cuda":
        torch.cuda.reset_peak_memory_stats(target)
    runs = []
    for _ in range(repeats):
        with stage_timer(model) as times:
            start = time.perf_counter()
            predict_foreground_maps(model, images[:1], images[1:], masks)
            total = time.perf_counter() - start
        runs.append({"total": total, **{stage: sum(values) for stage, values in times.items()}})
    median = {key: sorted(run[key] for run in runs)[len(runs) // 2] for key in runs[0]}
    result = {
        "config": config_name, "image_size": image_size, "shots": shots, "device": str(target),
        "dtype": str(dtype).removeprefix("torch."), "repeats": repeats, "threads": torch.get_num_threads(),
        "build_seconds": round(build_seconds, 3),
        "seconds": {key: round(value, 4) for key, value in median.items()},
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
    }
    if target.type == "cuda":
        result["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated(target) / 2**20, 1)
        result["gpu"] = torch.cuda.get_device_name(target)
    return result
