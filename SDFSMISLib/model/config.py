"""Architecture configurations of SD-FSMIS at two scales.

The same code builds the full Stable Diffusion 1.5 + DINOv2 network (the user's
weights) and a tiny network of the same block types (tests, CI, the bundled default model).
The SD-1.5 and DINOv2 configurations are embedded verbatim so that nothing is
fetched from a hub to build the architecture.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import InputError

InjectionVariant = Literal["kv-bank", "cross-attn"]
MaskAlignment = Literal["crop", "full"]

#: `unet/config.json` of runwayml/stable-diffusion-v1-5 (diffusers layout).
SD15_UNET_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
}

#: `vae/config.json` of runwayml/stable-diffusion-v1-5.
SD15_VAE_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

_DINOV2_COMMON: dict[str, Any] = {
    "model_type": "dinov2",
    "hidden_act": "gelu",
    "image_size": 518,
    "patch_size": 14,
    "num_channels": 3,
    "mlp_ratio": 4,
    "layer_norm_eps": 1e-06,
    "layerscale_value": 1.0,
    "qkv_bias": True,
    "use_swiglu_ffn": False,
    "num_hidden_layers": 12,
}

#: facebook/dinov2-small (the paper's encoder, 384-d tokens).
DINOV2_SMALL_CONFIG: dict[str, Any] = {**_DINOV2_COMMON, "hidden_size": 384, "num_attention_heads": 6}
#: facebook/dinov2-base (the released training script's encoder, 768-d tokens).
DINOV2_BASE_CONFIG: dict[str, Any] = {**_DINOV2_COMMON, "hidden_size": 768, "num_attention_heads": 12}

#: Same block types as SD-1.5 (4 levels, 8x VAE downsampling), small widths.
TINY_UNET_CONFIG: dict[str, Any] = {
    **SD15_UNET_CONFIG,
    "attention_head_dim": 4,
    "block_out_channels": [32, 32, 64, 64],
    "cross_attention_dim": 64,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 32,
}
TINY_VAE_CONFIG: dict[str, Any] = {
    **SD15_VAE_CONFIG,
    "block_out_channels": [16, 32, 64, 64],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 256,
}
TINY_DINOV2_CONFIG: dict[str, Any] = {
    **_DINOV2_COMMON,
    "hidden_size": 48,
    "num_attention_heads": 3,
    "num_hidden_layers": 2,
    "mlp_ratio": 2,
    "image_size": 224,
}

#: The DINOv2 config fields that define its architecture (what a checkpoint records).
DINOV2_ARCHITECTURE_KEYS = tuple(_DINOV2_COMMON) + ("hidden_size", "num_attention_heads")

DINOV2_CONFIGS = {"small": DINOV2_SMALL_CONFIG, "base": DINOV2_BASE_CONFIG, "tiny": TINY_DINOV2_CONFIG}

#: Spatial grid of DINOv2 patch tokens used by the VTCT (224 / 14).
DINO_INPUT_SIZE = 224
#: Shortest edge the support image is resized to before the 224 centre crop (DINOv2 processor).
DINO_RESIZE_SIZE = 256


@dataclass(frozen=True)
class SDFSMISConfig:
    """Everything needed to rebuild an SD-FSMIS network, stored inside every checkpoint.

    Attributes:
        unet: diffusers ``UNet2DConditionModel`` config of the base model (4-channel ``conv_in``).
        vae: diffusers ``AutoencoderKL`` config.
        dino: transformers ``Dinov2Config`` fields of the VTCT image encoder.
        injection: Support Information Injection variant. ``kv-bank`` is the authors'
            released code (support K/V appended to every self-attention); ``cross-attn`` is the
            paper's Eq. 1 (an added, zero-initialised attention from query to support tokens).
        query_enhancement: tile the query prototype of QE into the query stem; when off the
            query latent is duplicated instead, which the Marigold-initialised stem maps exactly
            to the pretrained ``conv_in``.
        vtct: condition the UNet on the Visual-to-Textual Condition Translator; when off a
            zero (null) embedding is used.
        timestep: the single UNet timestep. The released code uses 1; the paper text says 999.
        qe_threshold: foreground probability above which query latents form the prototype.
        qe_topk_fraction: fallback when no position qualifies: ``int(latent_width * f)`` top
            positions (the released rule uses the latent *width*, not the area).
        dino_mask_alignment: ``crop`` pools the support mask cropped exactly as the image fed to
            DINOv2 (our default: patch tokens and mask cover the same pixels); ``full`` resizes
            the uncropped mask to the patch grid as the released code does (use it for
            checkpoints trained with that code).
        image_size: in-plane size the network works at (256 for SD-FSMIS).
        spatial_prior: ours, not the paper's. The query stem also reads the mask latent of the
            support the query uses (the nearest annotated slice), through input channels that start
            at zero, so training begins from the paper's network. Attention alone is blind to where
            the support's organ lies, so a small UNet confuses the two kidneys; the support mask at
            its own position tells it where to look, and the network learns how the organ moves and
            changes shape from there.
    """

    unet: dict[str, Any] = field(default_factory=lambda: dict(SD15_UNET_CONFIG))
    vae: dict[str, Any] = field(default_factory=lambda: dict(SD15_VAE_CONFIG))
    dino: dict[str, Any] = field(default_factory=lambda: dict(DINOV2_SMALL_CONFIG))
    injection: InjectionVariant = "kv-bank"
    query_enhancement: bool = True
    vtct: bool = True
    timestep: int = 1
    qe_threshold: float = 0.7
    qe_topk_fraction: float = 0.1875
    dino_mask_alignment: MaskAlignment = "crop"
    image_size: int = 256
    spatial_prior: bool = False

    def __post_init__(self) -> None:
        if self.injection not in ("kv-bank", "cross-attn"):
            raise InputError(f"injection must be 'kv-bank' or 'cross-attn', got {self.injection!r}")
        if self.dino_mask_alignment not in ("crop", "full"):
            raise InputError(f"dino_mask_alignment must be 'crop' or 'full', got {self.dino_mask_alignment!r}")
        if not 0 <= self.timestep <= 999:
            raise InputError(f"timestep must lie in [0, 999], got {self.timestep}")

    @property
    def condition_dim(self) -> int:
        """Width of the text-like token the VTCT produces (the UNet's cross-attention dim)."""
        return int(self.unet["cross_attention_dim"])

    def replace(self, **changes: Any) -> "SDFSMISConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SDFSMISConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise InputError(f"unknown SD-FSMIS config fields {sorted(unknown)}: made by a newer version?")
        return cls(**data)


def preset(name: str, *, dino: str | None = None, **options: Any) -> SDFSMISConfig:
    """Named configurations.

    Args:
        name: ``sd15`` (Stable Diffusion 1.5 + DINOv2) or ``tiny`` (same block types, small
            widths, for tests and the bundled default model).
        dino: ``small`` (paper, default for ``sd15``), ``base`` (released script) or ``tiny``.
        **options: any other :class:`SDFSMISConfig` field, e.g. ``injection="cross-attn"``.
    """
    if name == "sd15":
        base = SDFSMISConfig(dino=dict(DINOV2_CONFIGS[dino or "small"]))
    elif name == "tiny":
        base = SDFSMISConfig(unet=dict(TINY_UNET_CONFIG), vae=dict(TINY_VAE_CONFIG),
                             dino=dict(DINOV2_CONFIGS[dino or "tiny"]))
    else:
        raise InputError(f"unknown preset {name!r}: use 'sd15' or 'tiny'")
    return base.replace(**options)
