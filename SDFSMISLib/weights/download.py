"""Explicit, opt-in download of the pretrained weights through ``huggingface_hub``.

Nothing in SDFSMIS downloads on its own: this runs only when the user asks for it
(``sdfsmis download-weights``). Offline, :data:`OFFLINE_INSTRUCTIONS` says which files to
place where.
"""

from __future__ import annotations

from pathlib import Path

SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD15_FILES = ("unet/config.json", "unet/diffusion_pytorch_model.safetensors",
              "vae/config.json", "vae/diffusion_pytorch_model.safetensors")
DINOV2_REPOS = {"small": "facebook/dinov2-small", "base": "facebook/dinov2-base"}
DINOV2_FILES = ("config.json", "model.safetensors")

OFFLINE_INSTRUCTIONS = f"""\
SD-FSMIS needs two pretrained models on disk (they are not shipped with SDFSMIS and keep their
own licenses: CreativeML Open RAIL-M for Stable Diffusion 1.5, Apache-2.0 for DINOv2):
  Stable Diffusion 1.5, either one file
      v1-5-pruned-emaonly.safetensors   (pass the file itself as --base-model)
  or a diffusers folder (pass the folder) from {SD15_REPO}:
      {chr(10).join('      ' + f for f in SD15_FILES).lstrip()}
  DINOv2 folder from {DINOV2_REPOS['small']} (paper) or {DINOV2_REPOS['base']}:
      {chr(10).join('      ' + f for f in DINOV2_FILES).lstrip()}
With internet access, `sdfsmis download-weights DIR` fetches exactly these files."""


def download_weights(target: Path | str, dino: str = "small") -> tuple[Path, Path]:
    """Download SD-1.5 (UNet and VAE only) and DINOv2 into ``target``; returns both folders."""
    from huggingface_hub import snapshot_download

    target = Path(target)
    sd_folder = Path(snapshot_download(SD15_REPO, allow_patterns=list(SD15_FILES),
                                       local_dir=target / "stable-diffusion-v1-5"))
    dino_folder = Path(snapshot_download(DINOV2_REPOS[dino], allow_patterns=list(DINOV2_FILES),
                                         local_dir=target / f"dinov2-{dino}"))
    return sd_folder, dino_folder
