"""The benchmark scripts' command line: ``propagate.py``, ``stages.py`` and ``training_memory.py`` share it."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Literal

from SDFSMISLib.devices import DTYPES, resolve_device, resolve_dtype
from SDFSMISLib.errors import InputError

Mode = Literal["propagate", "stages", "training-step"]


def build_parser(mode: Mode, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", choices=("sd15", "tiny"), default="sd15")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--device", default="cuda" if mode == "training-step" else "cpu",
                        help="cpu, cuda, mps or auto")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="precision of the optimised path (auto: float16 on a GPU, float32 on the CPU)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--batch-size", type=int, help="query slices per network call (default: sized for the "
                        "device; training-step mode: episodes per step, default 1)")
    if mode == "propagate":
        parser.add_argument("--slices", type=int, default=60, help="query slices of the headline rows")
        parser.add_argument("--ablation-slices", type=int, default=8,
                            help="query slices of the one-optimisation-at-a-time rows (0: none)")
        parser.add_argument("--shots", type=int, default=3, help="support slices")
        parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                            help="NHWC memory format in the optimised path (default: the device's inference layout)")
        parser.add_argument("--compile", action="store_true",
                            help="also measure torch.compile of the UNet and VAE, alone and on top of the "
                            "optimised path (ablation rows; compiling takes minutes)")
        parser.add_argument("--markdown", type=Path, help="write the table here")
    if mode == "stages":
        parser.add_argument("--shots", type=int, default=1, help="support slices")
        parser.add_argument("--repeats", type=int, default=3, help="timed repetitions")
    if mode == "training-step":
        parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="bf16",
                            help="as sdfsmis train")
        parser.add_argument("--no-gradient-checkpointing", action="store_true")
    return parser


def run(mode: Mode, description: str, argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the benchmark, print and write its result; exit status 2 on bad input."""
    from .propagation_benchmark import write_report

    args = build_parser(mode, description).parse_args(argv)
    try:
        if mode == "stages":
            from .profiling import benchmark_prediction

            dtype = resolve_dtype(args.dtype, resolve_device(args.device))
            result = benchmark_prediction(args.config, args.image_size, args.shots, args.device, dtype, args.repeats)
        elif mode == "training-step":
            from .profiling import training_step_memory

            result = training_step_memory(args.config, args.image_size, args.device, args.mixed_precision,
                                          not args.no_gradient_checkpointing, args.batch_size or 1)
        else:
            result = _propagation(args)
    except InputError as error:
        print(f"benchmark: error: {error}", file=sys.stderr)
        return 2
    result["command"] = shlex.join(["python", *sys.argv])
    if mode != "propagate":
        print(json.dumps(result, indent=2))
    write_report(result, args.json, args.markdown if mode == "propagate" else None)
    return 0


def _propagation(args: argparse.Namespace) -> dict[str, Any]:
    from .propagation_benchmark import Switches, benchmark_propagation, markdown_table

    optimised = Switches(batch_size=args.batch_size, channels_last=args.channels_last, dtype=args.dtype)
    result = benchmark_propagation(args.config, args.slices, args.ablation_slices, args.shots, args.image_size,
                                   args.device, optimised, measure_compile=args.compile,
                                   report=lambda line: print(line, file=sys.stderr, flush=True))
    print(markdown_table(result))
    return result
