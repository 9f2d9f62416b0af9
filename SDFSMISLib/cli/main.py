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

from .. import __version__
from ..devices import PRECISIONS, torch_dtype
from ..errors import InputError
from .evaluation import register_evaluation_commands
from .export import register_export_commands
from .inference import register_inference_commands
from .training import register_training_commands

#: PyTorch backs CPU tensors of 2 MB and more with transparent huge pages when this is set before its first CPU
#: allocation (it reads the variable once): prediction at full size allocates hundreds of megabytes per layer,
#: and with 4 kB pages the page faults of each new activation cost as much as the normalisations and activations
#: themselves (``benchmarks/results``). Requested by the command's entry point only, never at import: inside 3D
#: Slicer the variable would reach every extension and child process.
HUGE_PAGES_VARIABLE = "THP_MEM_ALLOC_ENABLE"

def request_huge_pages() -> bool:
    """Ask PyTorch for huge pages, as a default the environment can refuse (``THP_MEM_ALLOC_ENABLE=0``).

    Returns whether torch was already loaded, in which case the request comes too late to take effect.
    """
    os.environ.setdefault(HUGE_PAGES_VARIABLE, "1")
    return "torch" in sys.modules


def _command_info(args: argparse.Namespace) -> None:
    from accelerate import init_empty_weights

    from ..model.config import preset
    from ..model.network import SDFSMISNet

    with init_empty_weights():
        model = SDFSMISNet.from_config(preset(args.config, injection=args.injection))
    parts = {"unet (body)": model.unet, "query_stem": model.query_stem, "support_stem": model.support_stem,
             "condition_mlp": model.condition_mlp, "vae (frozen)": model.vae, "dinov2 (frozen)": model.dino}
    print(f"SD-FSMIS '{args.config}' architecture, injection={args.injection}")
    for name, module in parts.items():
        print(f"  {name:16s} {sum(p.numel() for p in module.parameters()):>13,d} parameters")
    print(f"  injecting self-attention layers: {len(model.injecting_layers)}")


def _command_inspect(args: argparse.Namespace) -> None:
    from ..weights.checkpoint import read_checkpoint_metadata

    print(json.dumps(read_checkpoint_metadata(args.checkpoint), indent=2))


def _command_import_released(args: argparse.Namespace) -> None:
    from ..weights.checkpoint import save_checkpoint
    from ..weights.released_checkpoint import load_released_checkpoint

    model = load_released_checkpoint(args.folder, args.base_model, args.dino)
    save_checkpoint(model, args.out, dtype=torch_dtype(args.dtype),
                    training={"imported_from": str(args.folder), "code": "LeeX-Bruce/SD-FSMIS"},
                    base_source=str(args.base_model))
    print(f"wrote {args.out}")


def _command_download_weights(args: argparse.Namespace) -> None:
    from ..weights.download import download_weights

    sd_folder, dino_folder = download_weights(args.target, args.dino)
    print(f"Stable Diffusion 1.5: {sd_folder}\nDINOv2: {dino_folder}")


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
        epilog="examples:\n  sdfsmis info --config sd15\n  sdfsmis demo\n"
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
    released.add_argument("--dtype", choices=PRECISIONS, default="float16")

    download = command("download-weights", _command_download_weights,
                       "download SD-1.5 (UNet, VAE) and DINOv2 from the Hugging Face hub (needs internet)",
                       "sdfsmis download-weights ~/sdfsmis-weights --dino small")
    download.add_argument("target", type=Path)
    download.add_argument("--dino", choices=("small", "base"), default="small")

    register_training_commands(command)
    register_evaluation_commands(command)
    register_inference_commands(command)
    register_export_commands(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Idle OpenMP threads must not spin: on a shared CPU they slow PyTorch down many times over.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    request_huge_pages()
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except InputError as error:
        print(f"sdfsmis: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sdfsmis: cancelled", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - a bug of ours: a short message and where the details are
        log = _crash_log()
        print(f"sdfsmis: internal error: {type(error).__name__}: {error}\nThe details are in {log}; please report "
              "this with that file.", file=sys.stderr)
        return 1
    return 0


def _crash_log() -> Path:
    """Write the traceback of the exception being handled to a new file in the temporary folder."""
    import tempfile
    import traceback

    handle, name = tempfile.mkstemp(prefix="sdfsmis-error-", suffix=".log")
    with os.fdopen(handle, "w", encoding="utf-8") as log:
        log.write(f"sdfsmis {__version__}: {shlex.join(sys.argv)}\n{traceback.format_exc()}")
    return Path(name)


if __name__ == "__main__":
    sys.exit(main())
