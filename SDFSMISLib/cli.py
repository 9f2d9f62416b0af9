"""The ``sdfsmis`` command line.

Exit status: 0 on success, 2 on bad input (the message names the problem and the fix),
1 on an internal error.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Callable

from . import __version__
from .cli_evaluation import register_evaluation_commands
from .cli_export import register_export_commands
from .cli_inference import register_inference_commands
from .cli_training import register_training_commands
from .errors import InputError

_DTYPES = ("float32", "float16", "bfloat16")


def _torch_dtype(name: str):  # noqa: ANN202 - torch is imported lazily
    import torch

    return getattr(torch, name)


def _command_info(args: argparse.Namespace) -> None:
    from accelerate import init_empty_weights

    from .config import preset
    from .network import SDFSMISNet

    with init_empty_weights():
        model = SDFSMISNet.from_config(preset(args.config, injection=args.injection))
    parts = {"unet (body)": model.unet, "query_stem": model.query_stem, "support_stem": model.support_stem,
             "condition_mlp": model.condition_mlp, "vae (frozen)": model.vae, "dinov2 (frozen)": model.dino}
    print(f"SD-FSMIS '{args.config}' architecture, injection={args.injection}")
    for name, module in parts.items():
        print(f"  {name:16s} {sum(p.numel() for p in module.parameters()):>13,d} parameters")
    print(f"  injecting self-attention layers: {len(model.injecting_layers)}")


def _command_inspect(args: argparse.Namespace) -> None:
    from .checkpoint import read_checkpoint_metadata

    print(json.dumps(read_checkpoint_metadata(args.checkpoint), indent=2))


def _command_import_released(args: argparse.Namespace) -> None:
    from .checkpoint import save_checkpoint
    from .released import load_released_checkpoint

    model = load_released_checkpoint(args.folder, args.base_model, args.dino)
    save_checkpoint(model, args.out, dtype=_torch_dtype(args.dtype),
                    training={"imported_from": str(args.folder), "code": "LeeX-Bruce/SD-FSMIS"},
                    base_source=str(args.base_model))
    print(f"wrote {args.out}")


def _command_download_weights(args: argparse.Namespace) -> None:
    from .download import download_weights

    sd_folder, dino_folder = download_weights(args.target, args.dino)
    print(f"Stable Diffusion 1.5: {sd_folder}\nDINOv2: {dino_folder}")


def _command_benchmark(args: argparse.Namespace) -> None:
    from .devices import resolve_device, resolve_dtype
    from .inference_benchmark import write_report

    if args.mode == "stages":
        from .profiling import benchmark_prediction

        dtype = resolve_dtype(args.dtype, resolve_device(args.device))
        result = benchmark_prediction(args.config, args.image_size, args.shots, args.device, dtype, args.repeats)
    elif args.mode == "training-step":
        from .profiling import training_step_memory

        result = training_step_memory(args.config, args.image_size, args.device, args.mixed_precision,
                                      not args.no_gradient_checkpointing, args.batch_size or 1)
    else:
        result = _benchmark_propagation(args)
    result["command"] = shlex.join(["python", *sys.argv] if sys.argv[0].endswith(".py") else sys.argv)
    if args.mode != "propagate":
        print(json.dumps(result, indent=2))
    write_report(result, args.json, args.markdown if args.mode == "propagate" else None)


def _benchmark_propagation(args: argparse.Namespace) -> dict:
    from .inference_benchmark import Switches, benchmark_propagation, markdown_table

    optimised = Switches(batch_size=args.batch_size, channels_last=args.channels_last, dtype=args.dtype)
    result = benchmark_propagation(args.config, args.slices, args.ablation_slices, args.shots, args.image_size,
                                   args.device, optimised, measure_compile=args.compile,
                                   report=lambda line: print(line, file=sys.stderr, flush=True))
    print(markdown_table(result))
    return result


def add_command(commands: argparse._SubParsersAction, name: str, handler: Callable[[argparse.Namespace], None],
                help_text: str, example: str) -> argparse.ArgumentParser:
    """A sub-command whose ``--help`` shows its description and an example."""
    sub = commands.add_parser(name, help=help_text, description=help_text, epilog=f"example:\n  {example}",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub.set_defaults(handler=handler)
    return sub


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdfsmis", description="Few-shot medical image segmentation with SD-FSMIS.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  sdfsmis info --config sd15\n  sdfsmis benchmark --config sd15 --json propagate.json\n"
               "  sdfsmis import-released run/checkpoint-15000 --base-model sd15/ --dino dinov2-base/ "
               "--out model.safetensors")
    parser.add_argument("--version", action="version", version=f"sdfsmis {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler: Callable[[argparse.Namespace], None], help_text: str,
                example: str) -> argparse.ArgumentParser:
        return add_command(commands, name, handler, help_text, example)

    info = command("info", _command_info, "parameter counts of an architecture (nothing is allocated)",
                   "sdfsmis info --config sd15 --injection cross-attn")
    info.add_argument("--config", choices=("sd15", "tiny"), default="sd15")
    info.add_argument("--injection", choices=("kv-bank", "cross-attn"), default="kv-bank")

    inspect = command("inspect", _command_inspect, "print an SD-FSMIS checkpoint's metadata",
                      "sdfsmis inspect model.safetensors")
    inspect.add_argument("checkpoint", type=Path)

    released = command("import-released", _command_import_released,
                       "convert a checkpoint folder of the authors' released code to one SDFSMIS file",
                       "sdfsmis import-released out/checkpoint-15000 --base-model sd15/ --dino dinov2-base/ "
                       "--out model.safetensors")
    released.add_argument("folder", type=Path, help="folder holding unet/ and image_projector/")
    released.add_argument("--base-model", type=Path, required=True, help="SD-1.5 folder or single file")
    released.add_argument("--dino", type=Path, required=True, help="DINOv2 folder (dinov2-base for that code)")
    released.add_argument("--out", type=Path, required=True, help="output .safetensors")
    released.add_argument("--dtype", choices=_DTYPES, default="float16")

    download = command("download-weights", _command_download_weights,
                       "download SD-1.5 (UNet, VAE) and DINOv2 from the Hugging Face hub (needs internet)",
                       "sdfsmis download-weights ~/sdfsmis-weights --dino small")
    download.add_argument("target", type=Path)
    download.add_argument("--dino", choices=("small", "base"), default="small")

    bench = command("benchmark", _command_benchmark,
                    "propagation speed with random weights: the released code's naive path against the optimised "
                    "one, each optimisation on its own (--mode stages: one prediction per stage; --mode "
                    "training-step: memory of one training step)",
                    "sdfsmis benchmark --config sd15 --device cpu --json propagate.json --markdown propagate.md")
    bench.add_argument("--mode", choices=("propagate", "stages", "training-step"), default="propagate")
    bench.add_argument("--config", choices=("sd15", "tiny"), default="sd15")
    bench.add_argument("--image-size", type=int, default=256)
    bench.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    bench.add_argument("--dtype", choices=("auto", *_DTYPES), default="auto",
                       help="precision of the optimised path (auto: float16 on a GPU, float32 on the CPU)")
    bench.add_argument("--json", type=Path, help="also write the result here")
    propagation = bench.add_argument_group("propagate mode")
    propagation.add_argument("--slices", type=int, default=60, help="query slices of the headline rows")
    propagation.add_argument("--ablation-slices", type=int, default=8,
                             help="query slices of the one-optimisation-at-a-time rows (0: none)")
    propagation.add_argument("--shots", type=int, default=3, help="support slices (stages mode: shots)")
    propagation.add_argument("--batch-size", type=int, help="query slices per network call (default: sized for "
                             "the device; training-step mode: episodes per step, default 1)")
    propagation.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                             help="NHWC memory format in the optimised path (default: the device's inference layout)")
    propagation.add_argument("--compile", action="store_true",
                             help="also measure torch.compile of the UNet and VAE, alone and on top of the "
                             "optimised path (ablation rows; compiling takes minutes)")
    propagation.add_argument("--markdown", type=Path, help="write the table here")
    bench.add_argument("--repeats", type=int, default=3, help="stages mode: timed repetitions")
    bench.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="bf16",
                       help="training-step mode (as sdfsmis train)")
    bench.add_argument("--no-gradient-checkpointing", action="store_true", help="training-step mode")

    register_training_commands(command)
    register_evaluation_commands(command)
    register_inference_commands(command)
    register_export_commands(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Idle OpenMP threads must not spin: on a shared CPU they slow PyTorch down many times over.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except InputError as error:
        print(f"sdfsmis: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sdfsmis: cancelled", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
