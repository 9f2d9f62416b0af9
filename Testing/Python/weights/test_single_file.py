"""Loading an original (LDM-layout) Stable Diffusion single file, on the tiny configuration.

The test writes a tiny model in the original CompVis key layout (the inverse of diffusers'
conversion, written out here from the layout itself) and checks that the loader recovers
every tensor.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file

from SDFSMISLib.model.config import TINY_UNET_CONFIG, TINY_VAE_CONFIG
from SDFSMISLib.weights.base_model import load_unet, load_vae

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
_VAE_TOP = {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out"}


def _unet_prefixes(levels: int, layers: int) -> dict[str, str]:
    """diffusers block prefixes -> original ``input_blocks`` / ``output_blocks`` prefixes."""
    prefixes = dict(_UNET_TOP)
    for i in range(levels):
        for j in range(layers):
            prefixes[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{(layers + 1) * i + j + 1}.0"
            prefixes[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{(layers + 1) * i + j + 1}.1"
        prefixes[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{(layers + 1) * (i + 1)}.0.op"
        for j in range(layers + 1):
            prefixes[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{(layers + 1) * i + j}.0"
            prefixes[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{(layers + 1) * i + j}.1"
        prefixes[f"up_blocks.{i}.upsamplers.0"] = f"output_blocks.{(layers + 1) * i + layers}.{1 if i == 0 else 2}"
    prefixes["mid_block.attentions.0"] = "middle_block.1"
    for j in range(2):
        prefixes[f"mid_block.resnets.{j}"] = f"middle_block.{2 * j}"
    return prefixes


def _rename(name: str, prefixes: dict[str, str], inner: dict[str, str]) -> str:
    for old in sorted(prefixes, key=len, reverse=True):
        if name.startswith(old + "."):
            rest = name[len(old) + 1:]
            for old_inner, new_inner in inner.items():
                if rest.startswith(old_inner + "."):
                    rest = new_inner + rest[len(old_inner):]
            return f"{prefixes[old]}.{rest}"
    return name


def ldm_unet(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    prefixes = _unet_prefixes(len(unet.config.block_out_channels), unet.config.layers_per_block)
    return {"model.diffusion_model." + _rename(k, prefixes, _RESNET): v for k, v in unet.state_dict().items()}


def ldm_vae(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    levels = len(vae.config.block_out_channels)
    prefixes = dict(_VAE_TOP)
    for i in range(levels):
        for j in range(vae.config.layers_per_block + 1):
            prefixes[f"encoder.down_blocks.{i}.resnets.{j}"] = f"encoder.down.{i}.block.{j}"
            prefixes[f"decoder.up_blocks.{i}.resnets.{j}"] = f"decoder.up.{levels - 1 - i}.block.{j}"
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0"] = f"encoder.down.{i}.downsample"
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0"] = f"decoder.up.{levels - 1 - i}.upsample"
    for part in ("encoder", "decoder"):
        prefixes[f"{part}.mid_block.attentions.0"] = f"{part}.mid.attn_1"
        for j in range(2):
            prefixes[f"{part}.mid_block.resnets.{j}"] = f"{part}.mid.block_{j + 1}"
    state = {}
    for name, tensor in vae.state_dict().items():
        ldm = _rename(name, prefixes, {"conv_shortcut": "nin_shortcut", **_VAE_ATTENTION})
        if ".mid.attn_1." in ldm and tensor.ndim == 2:  # original attention uses 1x1 convolutions
            tensor = tensor[:, :, None, None]
        state["first_stage_model." + ldm] = tensor
    return state


def test_single_file_in_original_layout_loads_every_tensor(tmp_path: Path) -> None:
    torch.manual_seed(3)
    unet = UNet2DConditionModel.from_config(TINY_UNET_CONFIG)
    vae = AutoencoderKL.from_config(TINY_VAE_CONFIG)
    single = tmp_path / "tiny-v1-5-pruned.safetensors"
    save_file({k: v.contiguous() for k, v in {**ldm_unet(unet), **ldm_vae(vae)}.items()}, single)
    loaded_unet, loaded_vae = load_unet(single, TINY_UNET_CONFIG), load_vae(single, TINY_VAE_CONFIG)
    for original, loaded in ((unet, loaded_unet), (vae, loaded_vae)):
        reference = original.state_dict()
        assert all(torch.equal(tensor, reference[name]) for name, tensor in loaded.state_dict().items())
