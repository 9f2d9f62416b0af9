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

VAE pretraining is the longest stage of the default recipe after SD-FSMIS training, so it resumes
exactly like it: the weights (safetensors), the optimiser and scheduler (``weights_only``), the
crop/sampling generator and the losses so far are saved in a state folder every ``save_every``
steps, and batch ``i`` is always episodes ``i * batch_size ...`` of the same pure-function dataset.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset, Subset
from transformers import Dinov2Config, Dinov2Model

from ..errors import InputError
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


@dataclass(frozen=True)
class VaePretraining:
    """What a VAE pretraining run is; a resumed run must be the same one."""

    steps: int
    batch_size: int = 4
    lr: float = 1e-3
    seed: int = 42
    crop: int | None = 128


#: The state folder inside a tiny-base output folder; removed once the base model is written.
VAE_STATE_FOLDER = "vae-state"
_WEIGHTS, _OPTIMISER, _PROGRESS = "vae.safetensors", "optimizer.pt", "progress.json"


def _save_vae_state(folder: Path, run: VaePretraining, vae: AutoencoderKL, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, generator: torch.Generator,
                    losses: list[float]) -> None:
    with atomic_folder(folder) as partial:
        save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, partial / _WEIGHTS)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "generator": generator.get_state()}, partial / _OPTIMISER)
        (partial / _PROGRESS).write_text(json.dumps({"run": asdict(run), "losses": losses}))


def _load_vae_state(folder: Path, run: VaePretraining, vae: AutoencoderKL, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, generator: torch.Generator) -> list[float]:
    missing = [name for name in (_WEIGHTS, _OPTIMISER, _PROGRESS) if not (folder / name).exists()]
    if missing:
        raise InputError(f"nothing to resume in {folder}: {', '.join(missing)} missing. "
                         "Pretrain without --resume to start over")
    saved = json.loads((folder / _PROGRESS).read_text())
    if saved["run"] != asdict(run):
        raise InputError(f"{folder} holds a different VAE pretraining ({saved['run']}, this one is {asdict(run)}). "
                         "Resume with the same settings, or delete the folder to start over")
    vae.load_state_dict(load_file(folder / _WEIGHTS))
    state = torch.load(folder / _OPTIMISER, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    return saved["losses"]


def pretrain_vae(vae: AutoencoderKL, episodes: Dataset, run: VaePretraining, state: Path | None = None,
                 resume: bool = False, save_every: int = 100,
                 progress: ProgressCallback | None = None) -> list[float]:
    """Train ``vae`` in place on the images and masks of ``episodes``; returns the loss per step.

    Each batch of ``run.batch_size`` episodes gives ``4 x batch_size`` inputs (two images, two masks),
    cropped to ``run.crop`` pixels. Sets ``vae.config.scaling_factor`` from the last, uncropped batch.
    With a ``state`` folder the run is saved there every ``save_every`` steps, and ``resume`` continues
    it bit for bit.
    """
    if resume and state is None:
        raise ValueError("resume needs the state folder")
    if not resume and state is not None and state.exists():
        raise InputError(f"{state} holds an unfinished VAE pretraining. "
                         "Pass --resume to continue it, or delete the folder to start over")
    if len(episodes) < run.steps * run.batch_size:
        raise InputError(f"{run.steps} steps of {run.batch_size} need {run.steps * run.batch_size} episodes, "
                         f"the dataset has {len(episodes)}")
    generator = torch.Generator().manual_seed(run.seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=run.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, run.steps)
    losses: list[float] = []
    if resume:
        losses = _load_vae_state(state, run, vae, optimizer, scheduler, generator)
    remaining = Subset(episodes, range(len(losses) * run.batch_size, run.steps * run.batch_size))
    vae.train()
    for batch in DataLoader(remaining, batch_size=run.batch_size, shuffle=False):
        loss = reconstruction_loss(vae, _vae_inputs(batch, run.crop, generator), generator)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if state is not None and len(losses) % save_every == 0 and len(losses) < run.steps:
            _save_vae_state(state, run, vae, optimizer, scheduler, generator, losses)
        report(progress, len(losses), run.steps)
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
