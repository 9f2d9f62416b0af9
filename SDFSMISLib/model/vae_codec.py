"""The frozen Stable Diffusion VAE as a codec for 1-channel images and binary masks."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL


def as_pseudo_rgb(x: torch.Tensor) -> torch.Tensor:
    """``[N, H, W]`` in [-1, 1] -> ``[N, 3, H, W]``: the channel replicated, as the paper does."""
    return x[:, None].expand(-1, 3, -1, -1)


def mask_to_signed(mask: torch.Tensor) -> torch.Tensor:
    """Binary ``{0, 1}`` mask -> ``{-1, 1}``, the VAE's input range."""
    return mask.float() * 2 - 1


def encode(vae: AutoencoderKL, x: torch.Tensor, generator: torch.Generator | None = None,
           sample: bool = False) -> torch.Tensor:
    """Scaled latents of ``[N, H, W]`` inputs in [-1, 1].

    The posterior mean at inference; ``sample=True`` draws from the posterior (training).
    """
    posterior = vae.encode(as_pseudo_rgb(x).to(vae.dtype)).latent_dist
    latents = posterior.sample(generator) if sample else posterior.mean
    return latents * vae.config.scaling_factor


def decode(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> ``[N, H, W]`` in [-1, 1]: decoded, clipped, channel mean."""
    pixels = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    return pixels.clamp(-1, 1).mean(dim=1)
