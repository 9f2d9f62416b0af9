"""GPU settings of the optimised path: memory layout, cuDNN autotuning and batch size, and a kernel profile.

Why the GPU runs in the default NCHW layout with ``torch.backends.cudnn.benchmark`` off
(:func:`SDFSMISLib.devices.inference_memory_format`): each combination is timed on the same random-weight
full-size network, float16, one organ of 100 query slices, after a warm-up over every batch shape; the
median of three volumes is reported with the CUDA peak. ``--profile`` also writes the GPU kernels of one
volume in the default settings, by GPU time. Needs a CUDA GPU:

    python benchmarks/gpu_settings.py --json benchmarks/results/gpu-settings-cuda.json \
        --profile benchmarks/results/gpu-profile-cuda.txt
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from lib.profiling import environment
from lib.propagation_benchmark import Switches, Workload, foreground_maps, phantom_workload, switched

from SDFSMISLib.model.config import preset
from SDFSMISLib.model.network import SDFSMISNet


def time_volume(model: SDFSMISNet, workload: Workload, switches: Switches, repeats: int = 3) -> dict[str, Any]:
    """Median seconds of the workload under ``switches`` after a warm-up run, and the CUDA peak."""
    with switched(model, switches):
        foreground_maps(model, workload, True, switches.batch_size)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            foreground_maps(model, workload, True, switches.batch_size)
            torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
    return {"volume_seconds": round(statistics.median(seconds), 4), "all_seconds": [round(s, 4) for s in seconds],
            "cuda_max_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)}


def kernel_profile(model: SDFSMISNet, workload: Workload, switches: Switches) -> str:
    """The GPU kernels of one volume, by total GPU time."""
    from torch.profiler import ProfilerActivity, profile

    with switched(model, switches):
        foreground_maps(model, workload, True, switches.batch_size)
        with profile(activities=[ProfilerActivity.CUDA]) as profiler:
            foreground_maps(model, workload, True, switches.batch_size)
            torch.cuda.synchronize()
    return profiler.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile", type=Path, help="write the kernel table of the default settings here")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = SDFSMISNet.from_config(preset("sd15")).to("cuda").eval().to(torch.float16)
    workload = phantom_workload(args.slices)
    rows = []
    for autotune, channels_last, batch in itertools.product((False, True), (False, True), (16, 32)):
        torch.backends.cudnn.benchmark = autotune
        row = {"cudnn_benchmark": autotune, "channels_last": channels_last, "batch_size": batch,
               **time_volume(model, workload, Switches(batch_size=batch, channels_last=channels_last))}
        rows.append(row)
        print(row, flush=True)
    torch.backends.cudnn.benchmark = False
    if args.profile:
        args.profile.write_text(kernel_profile(model, workload, Switches(batch_size=32, channels_last=False)))
    if args.json:
        args.json.write_text(json.dumps({"slices": args.slices, "dtype": "float16", **environment(model.device),
                                         "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
