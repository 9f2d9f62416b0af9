"""Where the time and memory of SD-FSMIS go: per-stage timing, peak memory, one training step.

Stages are timed with forward hooks on the sub-models (VAE encoder, DINOv2, UNet, VAE decoder), so
what is measured is exactly the code that runs in a prediction. A UNet call is a support pass when it
records support tokens and a query pass when it reads them (the :class:`SupportContext` it carries
says which), so the split stays right however often supports are encoded. The time spent in
:meth:`SDFSMISNet.encode_support` as a whole (VAE, DINOv2 and the UNet support pass of the supports)
is reported as ``support_encoding``.

Speed does not depend on the weights, so everything here runs on random weights and needs no weight
files (:mod:`lib.propagation_benchmark` builds the propagation benchmark on these tools).
"""

from __future__ import annotations

import os
import platform
import resource
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import psutil
import torch

from SDFSMISLib.cli.main import HUGE_PAGES_VARIABLE
from SDFSMISLib.devices import dtype_name
from SDFSMISLib.inference.slice_prediction import predict_foreground_maps
from SDFSMISLib.model.config import preset
from SDFSMISLib.model.network import SDFSMISNet
from SDFSMISLib.model.support_injection import CONTEXT_KEY, SupportMode

from . import TORCH_LOADED_FIRST

GIB = 2**30


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a wall-clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _unet_stage(kwargs: dict[str, Any]) -> str:
    context = (kwargs.get("cross_attention_kwargs") or {}).get(CONTEXT_KEY)
    return "unet_support_pass" if context is not None and context.mode is SupportMode.RECORD else "unet_query_pass"


@contextmanager
def _timed_method(owner: Any, name: str, seconds: list[float], device: torch.device) -> Iterator[None]:
    """Record the wall time of every call of ``owner.name`` (an instance attribute shadows the method)."""
    method, shadowed = getattr(owner, name), owner.__dict__.get(name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        synchronize(device)
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            synchronize(device)
            seconds.append(time.perf_counter() - start)

    setattr(owner, name, timed)
    try:
        yield
    finally:
        if shadowed is None:
            delattr(owner, name)
        else:
            setattr(owner, name, shadowed)


@contextmanager
def stage_timer(model: SDFSMISNet) -> Iterator[dict[str, list[float]]]:
    """Collect the wall time of every call of each stage while the context is open (see the module docstring)."""
    device = model.device
    times: dict[str, list[float]] = defaultdict(list)
    started: dict[str, tuple[str, float]] = {}

    def hook(name: str, stage: Callable[[dict[str, Any]], str]) -> tuple[Callable[..., None], Callable[..., None]]:
        def before(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
            synchronize(device)
            started[name] = (stage(kwargs), time.perf_counter())

        def after(_module: Any, _args: Any, _kwargs: Any, _output: Any) -> None:
            synchronize(device)
            label, start = started.pop(name)
            times[label].append(time.perf_counter() - start)

        return before, after

    stages = {"vae_encode": (model.vae.encoder, lambda _kwargs: "vae_encode"),
              "dinov2": (model.dino, lambda _kwargs: "dinov2"),
              "unet": (model.unet, _unet_stage),
              "vae_decode": (model.vae.decoder, lambda _kwargs: "vae_decode")}
    handles = []
    for name, (module, stage) in stages.items():
        before, after = hook(name, stage)
        handles += [module.register_forward_pre_hook(before, with_kwargs=True),
                    module.register_forward_hook(after, with_kwargs=True)]
    try:
        with _timed_method(model, "encode_support", times["support_encoding"], device):
            yield times
    finally:
        for handle in handles:
            handle.remove()


class PeakMemory:
    """Peak resident memory of this process (sampled) and peak CUDA allocation while the context is open.

    RSS is read every ``interval`` seconds by a background thread, so a peak shorter than that can be
    missed; ``ru_maxrss`` cannot serve, since it only ever grows over the life of the process.
    """

    def __init__(self, device: torch.device, interval: float = 0.005) -> None:
        self.device, self.interval = device, interval
        self.process = psutil.Process()
        self.peak_rss = self.start_rss = 0
        self.cuda_max_allocated: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)

    def __enter__(self) -> "PeakMemory":
        self.start_rss = self.peak_rss = self.process.memory_info().rss
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
        if self.device.type == "cuda":
            self.cuda_max_allocated = torch.cuda.max_memory_allocated(self.device)

    def summary(self) -> dict[str, float]:
        """GiB figures for a JSON report."""
        result = {"peak_rss_gib": round(self.peak_rss / GIB, 3),
                  "rss_increase_gib": round((self.peak_rss - self.start_rss) / GIB, 3)}
        if self.cuda_max_allocated is not None:
            result["cuda_max_allocated_gib"] = round(self.cuda_max_allocated / GIB, 3)
        return result


def silent(_line: str) -> None:
    """The default progress report of the benchmarks: none."""


def matmul_gflops(device: torch.device, dtype: torch.dtype, size: int = 4096, repeats: int = 3) -> float:
    """The device's dense matrix-multiply throughput in GFLOP/s at ``dtype``: the ceiling for convolutions.

    A square ``size`` product is as close to the hardware's peak as a library gets; a network whose FLOPs are
    mostly convolutions cannot run faster than this at the same precision, so a path's GFLOP/s over this
    number says how much speed is left to find without changing the arithmetic.
    """
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.matmul(a, b)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.matmul(a, b)
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def environment(device: torch.device) -> dict[str, Any]:
    """What a timing depends on besides the code: library versions, processor, threads, GPU."""
    info = {"torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "cores": psutil.cpu_count(logical=False),
            "huge_pages_requested": os.environ.get(HUGE_PAGES_VARIABLE, "0") not in ("", "0"),
            "torch_loaded_before_huge_pages_request": TORCH_LOADED_FIRST}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


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
        "dtype": dtype_name(dtype), "repeats": repeats, "build_seconds": round(build_seconds, 3),
        "seconds": {key: round(value, 4) for key, value in median.items()},
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        **environment(target),
    }
    if target.type == "cuda":
        result["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated(target) / 2**20, 1)
    return result


def training_step_memory(config_name: str = "sd15", image_size: int = 256, device: str = "auto",
                         mixed_precision: str = "bf16", gradient_checkpointing: bool = True, batch_size: int = 1,
                         steps: int = 2, seed: int = 0) -> dict[str, Any]:
    """Peak memory and time of full training steps (forward, backward, clipping, AdamW update), random weights.

    Precision as ``sdfsmis train --mixed-precision`` runs it through Accelerate: float32 weights, gradients and
    AdamW states, forward and backward under autocast. Two steps by default, since AdamW allocates its states
    during the first. The question it answers: does one step of the full model fit a 16 GB GPU?
    """
    from SDFSMISLib.devices import resolve_device
    from SDFSMISLib.training.trainer import TrainingOptions, build_optimizer

    if mixed_precision not in ("no", "fp16", "bf16"):
        raise ValueError(f"mixed precision must be 'no', 'fp16' or 'bf16', got {mixed_precision!r}")
    torch.manual_seed(seed)
    target = resolve_device(device)
    network = SDFSMISNet.from_config(preset(config_name, image_size=image_size)).to(target)
    if gradient_checkpointing:
        network.unet.enable_gradient_checkpointing()
    network.train()
    options = TrainingOptions(batch_size=batch_size)
    optimizer = build_optimizer(network, options, target)
    images = torch.rand(2, batch_size, image_size, image_size, device=target) * 2 - 1
    masks = torch.zeros(images.shape, dtype=torch.bool, device=target)
    masks[..., image_size // 4: 3 * image_size // 4, image_size // 4: 3 * image_size // 4] = True
    autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision)
    with PeakMemory(target) as memory:
        start = time.perf_counter()
        for _ in range(steps):
            with torch.autocast(target.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss = network.episode_loss(images[0], masks[0], images[1], masks[1])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), options.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        synchronize(target)
        seconds = time.perf_counter() - start
    return {"mode": "training-step", "config": config_name, "image_size": image_size, "device": str(target),
            "mixed_precision": mixed_precision, "gradient_checkpointing": gradient_checkpointing,
            "batch_size": batch_size, "fused_adamw": bool(optimizer.defaults["fused"]), "steps": steps,
            "seconds_per_step": round(seconds / steps, 3),
            "loss": round(loss.item(), 5), **memory.summary(), **environment(target)}
