"""Loading the pretrained parts of SD-FSMIS from files the user has, fully offline.

Stable Diffusion 1.5 comes from a diffusers folder (``unet/``, ``vae/`` with ``config.json``
and weights) or from one original single file such as ``v1-5-pruned-emaonly.safetensors``
(converted with diffusers' own LDM converters). DINOv2 comes from a Hugging Face folder
(``config.json`` and ``model.safetensors``). Nothing is downloaded here; see
:mod:`SDFSMISLib.weights.download` for the explicit download.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
from safetensors import SafetensorError
from transformers import Dinov2Config, Dinov2Model

from ..errors import WeightsError
from ..model.config import DINOV2_ARCHITECTURE_KEYS, SD15_UNET_CONFIG, SD15_VAE_CONFIG, SDFSMISConfig
from ..model.network import SDFSMISNet
from .download import OFFLINE_INSTRUCTIONS
from .files import first_existing, load_strict, read_tensors
from .model_files import DINO_WEIGHT_NAMES, TORCH_SUFFIXES

_DIFFUSERS_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                           "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin")
_LDM_UNET_PREFIX = "model.diffusion_model."
_SD2_PROBE = _LDM_UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
_SD_FIX = ("Give the Stable Diffusion 1.5 weights: a diffusers folder with unet/ and vae/, or the single "
           "file v1-5-pruned-emaonly.safetensors.")
_DINO_FIX = "Give a DINOv2 folder (facebook/dinov2-small or -base) holding config.json and model.safetensors."


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise WeightsError(f"{path} is not a readable JSON config ({error})") from error


def _weight_file(folder: Path, names: tuple[str, ...], what: str) -> Path:
    found = first_existing(folder, names)
    if found is not None:
        return found
    raise WeightsError(f"{folder} has no {what} weights: expected one of {', '.join(names)}.\n{OFFLINE_INSTRUCTIONS}")


def _reject_sd2(unet_config: dict[str, Any], source: Path) -> None:
    if unet_config.get("cross_attention_dim") == 1024 or isinstance(unet_config.get("attention_head_dim"), list):
        raise WeightsError(f"{source} holds Stable Diffusion 2.x (cross-attention width 1024), but SD-FSMIS "
                           f"is built on Stable Diffusion 1.5 (width 768). {_SD_FIX}")
    if unet_config.get("addition_embed_type") is not None:
        raise WeightsError(f"{source} holds an SDXL-type UNet, not Stable Diffusion 1.5. {_SD_FIX}")


def stable_diffusion_configs(base_model: Path | str) -> tuple[dict[str, Any], dict[str, Any]]:
    """UNet and VAE configs of a base model: the folder's own, or SD-1.5's for a single file."""
    base_model = Path(base_model)
    if base_model.is_dir():
        unet_config = _read_json(base_model / "unet" / "config.json")
        _reject_sd2(unet_config, base_model)
        return unet_config, _read_json(base_model / "vae" / "config.json")
    if base_model.is_file():
        return dict(SD15_UNET_CONFIG), dict(SD15_VAE_CONFIG)
    raise WeightsError(f"base model not found: {base_model}.\n{OFFLINE_INSTRUCTIONS}")


def _clean_config(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _single_file_state(path: Path, part: str, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    checkpoint = read_tensors(path)
    if not any(k.startswith(_LDM_UNET_PREFIX) for k in checkpoint):
        raise WeightsError(f"{path} is not an original Stable Diffusion checkpoint (no "
                           f"'{_LDM_UNET_PREFIX}*' tensors). {_SD_FIX}")
    probe = checkpoint.get(_SD2_PROBE)
    if probe is not None and probe.shape[1] == 1024:
        raise WeightsError(f"{path} holds Stable Diffusion 2.x (cross-attention width 1024), but SD-FSMIS "
                           f"is built on Stable Diffusion 1.5 (width 768). {_SD_FIX}")
    if part == "unet":
        return convert_ldm_unet_checkpoint(checkpoint, config)
    return convert_ldm_vae_checkpoint(checkpoint, config)


def _part_state(base_model: Path, part: str, config: dict[str, Any]) -> tuple[dict[str, torch.Tensor], Path]:
    if base_model.is_dir():
        file = _weight_file(base_model / part, _DIFFUSERS_WEIGHT_NAMES, f"{part}")
        return read_tensors(file), file
    if base_model.suffix not in (".safetensors", *TORCH_SUFFIXES):
        raise WeightsError(f"{base_model}: a base model is a diffusers folder or a .safetensors/.ckpt file")
    return _single_file_state(base_model, part, config), base_model


def load_vae(base_model: Path | str, config: dict[str, Any]) -> AutoencoderKL:
    """The frozen VAE of a Stable Diffusion base model (folder or single file)."""
    state, source = _part_state(Path(base_model), "vae", config)
    vae = AutoencoderKL.from_config(_clean_config(config))
    load_strict(vae, state, source, "the Stable Diffusion VAE", _SD_FIX)
    return vae


def load_unet(base_model: Path | str, config: dict[str, Any]) -> UNet2DConditionModel:
    """The pretrained 4-channel UNet of a Stable Diffusion base model (folder or single file)."""
    state, source = _part_state(Path(base_model), "unet", config)
    unet = UNet2DConditionModel.from_config(_clean_config(config))
    load_strict(unet, state, source, "the Stable Diffusion 1.5 UNet", _SD_FIX)
    return unet


def dinov2_config(dino: Path | str) -> dict[str, Any]:
    """The architecture fields of a DINOv2 folder's ``config.json``."""
    dino = Path(dino)
    if not dino.is_dir():
        raise WeightsError(f"DINOv2 folder not found: {dino}.\n{OFFLINE_INSTRUCTIONS}")
    config = _read_json(dino / "config.json")
    if config.get("model_type") != "dinov2":
        raise WeightsError(f"{dino}/config.json describes a {config.get('model_type')!r} model, not DINOv2. "
                           f"{_DINO_FIX}")
    return {k: config[k] for k in DINOV2_ARCHITECTURE_KEYS if k in config}


def load_dinov2(dino: Path | str) -> Dinov2Model:
    """The frozen DINOv2 image encoder of the VTCT from a Hugging Face folder.

    transformers does the loading (it maps the hub's tensor names onto its current ones);
    anything it could not fill is reported as an error instead of left randomly initialised.
    """
    dino = Path(dino)
    config = Dinov2Config(**dinov2_config(dino))
    file = _weight_file(dino, DINO_WEIGHT_NAMES, "DINOv2")
    try:
        model, info = Dinov2Model.from_pretrained(dino, config=config, local_files_only=True,
                                                  output_loading_info=True)
    except (OSError, RuntimeError, ValueError, SafetensorError) as error:
        raise WeightsError(f"{file} could not be loaded as the DINOv2 of {dino}/config.json ({error}). "
                           f"{_DINO_FIX}") from error
    problems = {kind: sorted(info.get(kind) or []) for kind in ("missing_keys", "mismatched_keys")}
    problems = {kind: names for kind, names in problems.items() if names}
    if problems:
        detail = "; ".join(f"{kind.replace('_', ' ')}: {', '.join(map(str, names[:5]))}"
                           for kind, names in problems.items())
        raise WeightsError(f"{file} does not match the DINOv2 in {dino}/config.json ({detail}). {_DINO_FIX}")
    return model


def load_base_model(base_model: Path | str, dino: Path | str, **options: Any) -> SDFSMISNet:
    """An SD-FSMIS network initialised from Stable Diffusion and DINOv2: the start of training.

    Both stems are initialised from the pretrained ``conv_in`` by the Marigold rule; the VTCT
    MLP (and the ``cross-attn`` modules) start fresh.

    Args:
        base_model: diffusers SD-1.5 folder or single ``.safetensors`` / ``.ckpt`` file.
        dino: DINOv2 Hugging Face folder (small: the paper; base: the released script).
        **options: :class:`SDFSMISConfig` options, e.g. ``injection="cross-attn"``.
    """
    unet_config, vae_config = stable_diffusion_configs(base_model)
    dino_config = dinov2_config(dino)
    config = SDFSMISConfig(unet=_clean_config(unet_config), vae=_clean_config(vae_config),
                           dino=dino_config, **options)
    return SDFSMISNet(config, load_unet(base_model, config.unet), load_vae(base_model, config.vae),
                      load_dinov2(dino))
