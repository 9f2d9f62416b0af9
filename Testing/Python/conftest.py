"""Shared fixtures: a seeded tiny network and tiny base-model folders on disk."""

from __future__ import annotations

import os
from pathlib import Path

# Before torch loads: idle OpenMP threads must not spin, or a busy CPU slows every test many times over.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch
from diffusers import UNet2DConditionModel

from SDFSMISLib.model.config import preset
from SDFSMISLib.model.network import SDFSMISNet

IMAGE_SIZE = 64


def square_mask(size: int = IMAGE_SIZE, start: int = 16, stop: int = 40) -> torch.Tensor:
    mask = torch.zeros(size, size)
    mask[start:stop, start:stop] = 1
    return mask


def random_images(count: int, seed: int, size: int = IMAGE_SIZE) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, size, size, generator=generator) * 2 - 1


@pytest.fixture
def tiny_model() -> SDFSMISNet:
    torch.manual_seed(0)
    return SDFSMISNet.from_config(preset("tiny", image_size=IMAGE_SIZE)).eval()


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny 'Stable Diffusion' diffusers folder and a tiny DINOv2 folder, as a user would have."""
    root = tmp_path_factory.mktemp("tiny-base")
    torch.manual_seed(1)
    reference = SDFSMISNet.from_config(preset("tiny"))
    UNet2DConditionModel.from_config(reference.config.unet).save_pretrained(root / "sd" / "unet")
    reference.vae.save_pretrained(root / "sd" / "vae")
    reference.dino.save_pretrained(root / "dino")
    return root / "sd", root / "dino"

@pytest.fixture(scope="session")
def model_args(tiny_base: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A random-weight tiny SD-FSMIS checkpoint (64 px) on the tiny base model, as the CLI options that name it."""
    from SDFSMISLib.weights.base_model import load_base_model
    from SDFSMISLib.weights.checkpoint import save_checkpoint

    sd, dino = tiny_base
    torch.manual_seed(0)
    checkpoint = save_checkpoint(load_base_model(sd, dino, image_size=64),
                                 tmp_path_factory.mktemp("model") / "model.safetensors")
    return ["--checkpoint", str(checkpoint), "--base-model", str(sd), "--dino", str(dino), "--device", "cpu"]


#: The real CHAOS-T2 volumes, beside the project (never inside it: CC BY-NC-SA).
CHAOS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "chaos-t2"


@pytest.fixture
def mrml_scene():  # noqa: ANN201 - slicer.vtkMRMLScene; slicer-core is only installed on Python 3.11
    """A headless MRML scene from ``slicer-core`` (see slicer_scene.py); skips where slicer-core is absent."""
    pytest.importorskip("slicer", reason="slicer-core (Slicer's Qt-free libraries) is not installed")
    from slicer_scene import headless_scene

    with headless_scene() as scene:
        yield scene
