"""The tiny base model: what Stable Diffusion and DINOv2 are to the full-size SD-FSMIS.

SD-FSMIS starts from a pretrained Stable Diffusion (its VAE is frozen and its UNet fine-tuned)
and a pretrained DINOv2 (frozen). The tiny configuration has no such weights anywhere, so this
module makes them, here, on a CPU:

- the VAE is trained as an autoencoder on the same kind of inputs SD-FSMIS gives it: image
  slices and binary masks, each replicated to three channels in [-1, 1]; L1 reconstruction plus
  a small KL term (SD's VAE adds perceptual and adversarial terms, which a mask codec does not
  need). Its ``scaling_factor`` is then set to ``1 / std`` of the latents, as SD's 0.18215 was;
- the UNet and DINOv2 are seeded random initialisations (the UNet is trained by SD-FSMIS
  training itself; the frozen random DINOv2 still gives the VTCT a fixed nonlinear embedding).

The result is written in the layouts users have for the real models, a diffusers folder
(``sd/unet``, ``sd/vae``) and a Hugging Face DINOv2 folder (``dino/``), so every loading path is
the same at both scales.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch.utils.data import DataLoader, Dataset
from transformers import Dinov2Config, Dinov2Model

from ..io.atomic import atomic_folder
from ..model import vae_codec as codec
from ..model.config import SDFSMISConfig
from ..progress import ProgressCallback, report

KL_WEIGHT = 1e-6


def _vae_inputs(batch: dict[str, torch.Tensor], crop: int | None, generator: torch.Generator) -> torch.Tensor:
    """Images and masks of a batch of episodes as VAE inputs ``[N, H, W]`` in [-1, 1], randomly cropped.

    The VAE is convolutional, so training on crops teaches the same codec at a quarter of the cost.
    """
    masks = [codec.mask_to_signed(batch[key]) for key in ("support_mask", "query_mask")]
    inputs = torch.cat([batch["support_image"], batch["query_image"], *masks])
    if crop is None or crop >= min(inputs.shape[-2:]):
        return inputs
    top, left = (int(torch.randint(size - crop + 1, (1,), generator=generator)) for size in inputs.shape[-2:])
    return inputs[:, top:top + crop, left:left + crop]


def reconstruction_loss(vae: AutoencoderKL, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """L1 between ``[N, H, W]`` inputs and their reconstructions, plus ``KL_WEIGHT`` x KL."""
    rgb = codec.as_pseudo_rgb(x)
    posterior = vae.encode(rgb).latent_dist
    reconstruction = vae.decode(posterior.sample(generator)).sample
    return (reconstruction - rgb).abs().mean() + KL_WEIGHT * posterior.kl().mean()


@torch.no_grad()
def latent_scaling_factor(vae: AutoencoderKL, inputs: torch.Tensor) -> float:
    """``1 / std`` of the posterior means of ``inputs``: latents of unit variance for the UNet."""
    return float(1.0 / vae.encode(codec.as_pseudo_rgb(inputs)).latent_dist.mean.std())


def pretrain_vae(vae: AutoencoderKL, episodes: Dataset, steps: int, batch_size: int = 4, lr: float = 1e-3,
                 seed: int = 42, crop: int | None = 128,
                 progress: ProgressCallback | None = None) -> list[float]:
    """Train ``vae`` in place on the images and masks of ``episodes``; returns the loss per step.

    Each batch of ``batch_size`` episodes gives ``4 x batch_size`` inputs (two images, two masks),
    cropped to ``crop`` pixels. Sets ``vae.config.scaling_factor`` from the last, uncropped batch.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    loader = DataLoader(episodes, batch_size=batch_size, shuffle=False)
    vae.train()
    losses: list[float] = []
    for batch in loader:
        loss = reconstruction_loss(vae, _vae_inputs(batch, crop, generator), generator)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        report(progress, len(losses), steps)
        if len(losses) >= steps:
            break
    vae.eval()
    vae.register_to_config(scaling_factor=latent_scaling_factor(vae, _vae_inputs(batch, None, generator)))
    return losses


def write_tiny_base(folder: Path | str, vae: AutoencoderKL, config: SDFSMISConfig, seed: int = 0) -> tuple[Path, Path]:
    """Write ``folder/sd`` (seeded UNet + the given VAE, diffusers layout) and ``folder/dino``, all or nothing.

    Returns ``(base_model, dino)`` paths as :func:`SDFSMISLib.load_base_model` takes them.
    """
    folder = Path(folder)
    torch.manual_seed(seed)
    with atomic_folder(folder / "sd") as sd, atomic_folder(folder / "dino") as dino:
        UNet2DConditionModel.from_config(config.unet).save_pretrained(sd / "unet")
        vae.save_pretrained(sd / "vae")
        Dinov2Model(Dinov2Config(**config.dino)).save_pretrained(dino)
    return folder / "sd", folder / "dino"
