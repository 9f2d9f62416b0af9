"""The options that name a model and where it runs, shared by the commands that load one.

``segment``, ``demo`` and ``evaluate`` read the same three files; declaring them once keeps their names, types
and meaning the same everywhere. ``evaluate`` alone accepts ``{fold}`` in them (one model per fold).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..weights.model_files import FOLD_FIELD


def add_model_arguments(parser: argparse.ArgumentParser, per_fold: bool = False) -> None:
    """``--checkpoint``, ``--base-model``, ``--dino`` and ``--device``; with ``per_fold``, paths may hold {fold}."""
    fold_note = f"; {FOLD_FIELD} is replaced by the test fold (one model per fold)" if per_fold else ""
    parser.add_argument("--checkpoint", type=Path, help="SD-FSMIS checkpoint (.safetensors); default: the bundled "
                        "tiny default model" + fold_note)
    parser.add_argument("--base-model", type=Path, help="the SD-1.5 folder or file the checkpoint was trained on"
                        + fold_note)
    parser.add_argument("--dino", type=Path, help="the DINOv2 folder the checkpoint was trained with" + fold_note)
    parser.add_argument("--device", default="auto", help="auto (CUDA, then Apple MPS, then CPU), cuda, cuda:N, mps "
                        "or cpu")
