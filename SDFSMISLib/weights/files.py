"""Reading tensors from weight files safely, and loading them with errors a user can act on.

Only safetensors and ``torch.load(weights_only=True)`` are used: a checkpoint never gets to
run code through pickle.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..errors import WeightsError
from .model_files import TORCH_SUFFIXES


def first_existing(folder: Path, names: tuple[str, ...]) -> Path | None:
    """The first of ``names`` that is a file in ``folder`` (weight files come under several names)."""
    return next((folder / name for name in names if (folder / name).is_file()), None)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` or weights-only torch file (an LDM ``state_dict`` is unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weight file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as error:
            raise WeightsError(f"{path} is not a readable safetensors file ({error}); it is probably "
                               "truncated or corrupt: download or copy it again") from error
    if path.suffix not in TORCH_SUFFIXES:
        raise WeightsError(f"{path}: unknown weight file type {path.suffix!r}; use .safetensors "
                           f"(preferred) or one of {', '.join(TORCH_SUFFIXES)}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise WeightsError(f"{path} holds Python objects besides tensors and was not loaded, because "
                           "unpickling them could run arbitrary code. Use the .safetensors release of "
                           "these weights, or convert the file to .safetensors with a tool you trust") from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise WeightsError(f"{path} could not be read ({error}); it is probably truncated or corrupt: "
                           "download or copy it again") from error
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise WeightsError(f"{path} does not hold a dictionary of tensors, so it is not a weight file")
    return data


def _listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: Path | str, what: str,
                fix: str, assign: bool = False) -> None:
    """``module.load_state_dict`` that names the file, the problem and the fix.

    Args:
        what: what the file should hold, e.g. ``"the Stable Diffusion 1.5 UNet"``.
        fix: the sentence telling the user what to do about a mismatch.
        assign: replace the module's tensors (used when the module was built on the meta device).
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
                  for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors ({_listing(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors ({_listing(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} tensors of the wrong shape ({_listing(mismatched, 3)})")
    if problems:
        raise WeightsError(f"{source} does not match {what}: {'; '.join(problems)}. {fix}")
    module.load_state_dict(state, strict=True, assign=assign)
