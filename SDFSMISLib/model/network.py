"""The SD-FSMIS network: frozen VAE and DINOv2, a UNet with two input stems, SII, QE, VTCT.

Composed from unmodified diffusers / transformers models. The UNet's own ``conv_in`` is
replaced by an identity and the two 8-channel stems run in front of it, so the support and
query passes differ only in which stem they use and in the :class:`SupportContext` they
carry; the diffusers UNet file itself is untouched.

One-step prediction: the scheduler of SD-FSMIS has ``alpha_bar = 0`` with v-prediction, so
the clean mask latent is ``x0 = -UNet(query latent, t, E)``; it is computed directly rather
than through a DDIM step, which is NaN-prone at ``alpha_bar = 0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn
from transformers import Dinov2Config, Dinov2Model

from . import vae_codec as codec
from .config import SDFSMISConfig
from .query_enhancement import query_prototype, support_prototypes, tile_prototype
from .support_injection import CONTEXT_KEY, SupportContext, SupportMode, install_support_injection
from .visual_condition import ConditionMLP, masked_patch_prototype


def marigold_stem(base_conv: nn.Conv2d, copies: int = 2, zero_copies: int = 0) -> nn.Conv2d:
    """An input conv taking ``copies + zero_copies`` x the base channels, initialised by the Marigold rule.

    The base weight is repeated along the first ``copies`` groups of input channels and divided by
    ``copies``; the bias is copied. Fed the base input repeated ``copies`` times it reproduces the base
    conv. The ``zero_copies`` groups after them start at zero: inputs the base model never had, which
    change nothing until training gives them weight.
    """
    in_channels = base_conv.in_channels * (copies + zero_copies)
    stem = nn.Conv2d(in_channels, base_conv.out_channels, base_conv.kernel_size, base_conv.stride,
                     base_conv.padding, dtype=base_conv.weight.dtype, device=base_conv.weight.device)
    with torch.no_grad():
        stem.weight.zero_()
        stem.weight[:, :base_conv.in_channels * copies] = base_conv.weight.repeat(1, copies, 1, 1) / copies
        stem.bias.copy_(base_conv.bias)
    return stem


@dataclass
class SupportEncoding:
    """Everything the query pass needs from a set of support groups, computed once.

    ``groups`` support sets of ``shots`` slices each. Reuse it for every query slice that
    uses these supports: the VAE, DINOv2 and the UNet support pass are not run again.
    """

    context: SupportContext
    fg_prototype: torch.Tensor  # [G, C] averaged over shots
    bg_prototype: torch.Tensor  # [G, C]
    condition: torch.Tensor  # [G, 1, D]
    mask_latents: torch.Tensor  # [G, 4, h, w] averaged over shots: the spatial prior's input

    @property
    def groups(self) -> int:
        return self.condition.shape[0]


class SDFSMISNet(nn.Module):
    """SD-FSMIS: one-shot (or k-shot) segmentation with a one-step Stable Diffusion UNet.

    Build it with :meth:`from_config` (random weights), :func:`SDFSMISLib.load_base_model`
    (SD-1.5 and DINOv2 weights) or :func:`SDFSMISLib.load_checkpoint`.

    Images are ``[..., H, W]`` float tensors normalised to [-1, 1]; masks are binary.
    """

    def __init__(self, config: SDFSMISConfig, unet: UNet2DConditionModel, vae: AutoencoderKL,
                 dino: Dinov2Model) -> None:
        super().__init__()
        self.config = config
        self.query_stem = marigold_stem(unet.conv_in, zero_copies=int(config.spatial_prior))
        self.support_stem = marigold_stem(unet.conv_in)
        unet.conv_in = nn.Identity()
        self.injecting_layers = install_support_injection(unet, config.injection)
        self.unet = unet
        self.vae = vae.requires_grad_(False).eval()
        self.dino = dino.requires_grad_(False).eval()
        self.condition_mlp = ConditionMLP(dino.config.hidden_size, config.condition_dim)

    @classmethod
    def from_config(cls, config: SDFSMISConfig) -> "SDFSMISNet":
        """Random weights: tests, speed measurements, or the start of the tiny model's training."""
        unet = UNet2DConditionModel.from_config(config.unet)
        vae = AutoencoderKL.from_config(config.vae)
        dino = Dinov2Model(Dinov2Config(**config.dino))
        return cls(config, unet, vae, dino)

    # The frozen encoders stay in eval mode whatever mode the network is in.
    def train(self, mode: bool = True) -> "SDFSMISNet":
        super().train(mode)
        self.vae.eval()
        self.dino.eval()
        return self

    def trainable_modules(self) -> dict[str, nn.Module]:
        """What training changes, and what a checkpoint stores."""
        return {"unet": self.unet, "query_stem": self.query_stem, "support_stem": self.support_stem,
                "condition_mlp": self.condition_mlp}

    @property
    def device(self) -> torch.device:
        return self.query_stem.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.query_stem.weight.dtype

    def _timesteps(self, batch: int) -> torch.Tensor:
        return torch.full((batch,), self.config.timestep, device=self.device, dtype=torch.long)

    def _unet(self, stem_input: torch.Tensor, stem: nn.Conv2d, condition: torch.Tensor,
              context: SupportContext) -> torch.Tensor:
        return self.unet(stem(stem_input.to(self.dtype)), self._timesteps(stem_input.shape[0]),
                         encoder_hidden_states=condition.to(self.dtype),
                         cross_attention_kwargs={CONTEXT_KEY: context}).sample

    def encode_latents(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """VAE latents of ``[N, H, W]`` images in [-1, 1] (posterior samples while training)."""
        return codec.encode(self.vae, x, generator, sample=self.training)

    def encode_support(self, images: torch.Tensor, masks: torch.Tensor,
                       generator: torch.Generator | None = None) -> SupportEncoding:
        """Run the support side once: VAE, prototypes, VTCT and the UNet support pass.

        Args:
            images: ``[G, K, H, W]``: G support groups of K shots each (``[K, H, W]`` = one group).
            masks: binary masks of the same shape.
        """
        if images.ndim == 3:
            images, masks = images[None], masks[None]
        if images.shape != masks.shape or images.ndim != 4:
            raise ValueError(f"support images {tuple(images.shape)} and masks {tuple(masks.shape)} "
                             "must both be [groups, shots, H, W]")
        groups, shots = images.shape[:2]
        flat_images, flat_masks = images.flatten(0, 1), masks.flatten(0, 1).float()
        image_latents = self.encode_latents(flat_images, generator)
        mask_latents = self.encode_latents(codec.mask_to_signed(flat_masks), generator)
        fg, bg = (p.unflatten(0, (groups, shots)).mean(1) for p in support_prototypes(image_latents, flat_masks))
        condition = self._condition(flat_images, flat_masks, groups, shots)
        context = SupportContext(SupportMode.RECORD, shots=shots)
        self._unet(torch.cat([image_latents, mask_latents], dim=1), self.support_stem,
                   condition.repeat_interleave(shots, dim=0), context)
        return SupportEncoding(context, fg, bg, condition, mask_latents.unflatten(0, (groups, shots)).mean(1))

    def _condition(self, images: torch.Tensor, masks: torch.Tensor, groups: int, shots: int) -> torch.Tensor:
        if not self.config.vtct:
            return torch.zeros(groups, 1, self.config.condition_dim, device=self.device, dtype=self.dtype)
        prototype = masked_patch_prototype(self.dino, images, masks, self.config.dino_mask_alignment)
        prototype = prototype.unflatten(0, (groups, shots)).mean(1)
        return self.condition_mlp(prototype.to(self.condition_mlp.mlp[0].weight.dtype))

    def predict_latents(self, query_images: torch.Tensor, support: SupportEncoding,
                        support_index: torch.Tensor | None = None,
                        query_latents: torch.Tensor | None = None) -> torch.Tensor:
        """One-step prediction of the query mask latents ``x0 = -UNet(...)``.

        Args:
            query_images: ``[B, H, W]`` in [-1, 1].
            support: from :meth:`encode_support`.
            support_index: ``[B]`` support group of each query; ``None`` when there is one group.
            query_latents: precomputed VAE latents of ``query_images`` (skips the encoder).
        """
        if query_latents is None:
            query_latents = self.encode_latents(query_images)
        batch = query_latents.shape[0]
        if support_index is None:
            if support.groups != 1:
                raise ValueError(f"{support.groups} support groups: say which one each query uses")
            support_index = torch.zeros(batch, dtype=torch.long, device=self.device)
        if self.config.query_enhancement:
            prototype = query_prototype(query_latents, support.fg_prototype[support_index],
                                        support.bg_prototype[support_index],
                                        self.config.qe_threshold, self.config.qe_topk_fraction)
            stem_input = torch.cat([query_latents, tile_prototype(prototype, query_latents)], dim=1)
        else:
            stem_input = torch.cat([query_latents, query_latents], dim=1)
        if self.config.spatial_prior:
            stem_input = torch.cat([stem_input, support.mask_latents[support_index].to(stem_input.dtype)], dim=1)
        output = self._unet(stem_input, self.query_stem, support.condition[support_index],
                            support.context.reading(support_index))
        return -output

    def decode_foreground(self, mask_latents: torch.Tensor) -> torch.Tensor:
        """Mask latents -> foreground map in [0, 1] (decoded, clipped, channel mean)."""
        return (codec.decode(self.vae, mask_latents) + 1) / 2

    def episode_loss(self, support_images: torch.Tensor, support_masks: torch.Tensor,
                     query_images: torch.Tensor, query_masks: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """Training loss of a batch of 1-way 1-shot episodes: ``MSE(x0, query mask latent)``.

        Shapes ``[B, H, W]``: episode ``b`` pairs support ``b`` with query ``b``.
        """
        support = self.encode_support(support_images[:, None], support_masks[:, None], generator)
        index = torch.arange(query_images.shape[0], device=self.device)
        prediction = self.predict_latents(query_images, support, index)
        with torch.no_grad():
            target = self.encode_latents(codec.mask_to_signed(query_masks), generator)
        return F.mse_loss(prediction.float(), target.float())

