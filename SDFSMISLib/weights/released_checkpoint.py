"""Import checkpoints saved by the authors' released training code (LeeX-Bruce/SD-FSMIS).

That code saves a folder (the final pipeline, or an accelerate ``checkpoint-N``) holding
``unet/`` (a diffusers UNet whose ``conv_in`` takes 8 channels, plus ``conv_in_ref``) and
``image_projector/`` (its ``FeatureToConditioningMLP``). The mapping to our checkpoint is:

=====================================  ===========================
released                               SDFSMIS
=====================================  ===========================
``unet/ conv_in.*``                    ``query_stem.*``
``unet/ conv_in_ref.*``                ``support_stem.*``
``unet/ <everything else>``            ``unet.<same name>``
``image_projector/ mlp.<i>.*``         ``condition_mlp.mlp.<i>.*``
=====================================  ===========================

Options implied by that code: ``injection="kv-bank"``, ``dino_mask_alignment="full"``,
timestep 1, and DINOv2-base (768-d) unless its MLP says otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import WeightsError
from ..model.config import SDFSMISConfig
from ..model.network import SDFSMISNet
from .base_model import dinov2_config, stable_diffusion_configs
from .checkpoint import assemble_network
from .files import first_existing, read_tensors

_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_STEM_NAMES = {"conv_in.": "query_stem.", "conv_in_ref.": "support_stem."}


def _weights(folder: Path, part: str) -> dict[str, torch.Tensor]:
    found = first_existing(folder / part, _WEIGHT_NAMES)
    if found is not None:
        return read_tensors(found)
    raise WeightsError(f"{folder} is not a checkpoint of the released SD-FSMIS code: {part}/ with one of "
                       f"{', '.join(_WEIGHT_NAMES)} is missing. Point at the folder that holds unet/ and "
                       "image_projector/ (the training output or one of its checkpoint-N folders)")


def released_tensors(folder: Path | str) -> dict[str, torch.Tensor]:
    """The released folder's tensors renamed to SDFSMIS checkpoint names (table above)."""
    folder = Path(folder)
    tensors = {}
    for name, tensor in _weights(folder, "unet").items():
        stem = next((new for old, new in _STEM_NAMES.items() if name.startswith(old)), None)
        tensors[stem + name.rsplit(".", 1)[1] if stem else f"unet.{name}"] = tensor
    for name, tensor in _weights(folder, "image_projector").items():
        tensors[f"condition_mlp.{name}"] = tensor
    return tensors


def released_config(tensors: dict[str, torch.Tensor], base_model: Path | str, dino: Path | str) -> SDFSMISConfig:
    """The architecture the released checkpoint implies, on the given base model files."""
    unet_config, vae_config = stable_diffusion_configs(base_model)
    dino_architecture = dinov2_config(dino)
    mlp_input = tensors["condition_mlp.mlp.0.weight"].shape[1] if "condition_mlp.mlp.0.weight" in tensors else None
    if mlp_input is not None and mlp_input != dino_architecture["hidden_size"]:
        raise WeightsError(f"the released checkpoint's MLP takes {mlp_input}-d DINOv2 tokens but {dino} holds "
                           f"{dino_architecture['hidden_size']}-d ones: the released script uses dinov2-base (768)")
    return SDFSMISConfig(unet=unet_config, vae=vae_config, dino=dino_architecture, injection="kv-bank",
                         dino_mask_alignment="full", timestep=1)


def load_released_checkpoint(folder: Path | str, base_model: Path | str, dino: Path | str,
                             dtype: torch.dtype = torch.float32, **options: Any) -> SDFSMISNet:
    """Load a released-code checkpoint folder as an :class:`SDFSMISNet` (then save it with
    :func:`SDFSMISLib.save_checkpoint` to get a single SDFSMIS file)."""
    tensors = released_tensors(folder)
    config = released_config(tensors, base_model, dino).replace(**options)
    return assemble_network(config, tensors, base_model, dino, Path(folder), dtype)
