"""The full-size SD-1.5 architecture, built with random weights (no weight files needed)."""

from __future__ import annotations

import torch
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel

from SDFSMISLib.cli.main import main as cli_main
from SDFSMISLib.model.config import SD15_UNET_CONFIG, preset
from SDFSMISLib.model.network import SDFSMISNet

SD15_UNET_PARAMETERS = 859_520_964  # runwayml/stable-diffusion-v1-5 unet, 4-channel conv_in
STEM_PARAMETERS = 320 * 8 * 3 * 3 + 320


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_embedded_config_is_sd15() -> None:
    with init_empty_weights():
        assert _count(UNet2DConditionModel.from_config(SD15_UNET_CONFIG)) == SD15_UNET_PARAMETERS


def test_sd15_builds_with_random_weights_and_predicts() -> None:
    torch.manual_seed(0)
    model = SDFSMISNet.from_config(preset("sd15")).eval()
    base_conv_in = 320 * 4 * 3 * 3 + 320
    assert _count(model.unet) == SD15_UNET_PARAMETERS - base_conv_in
    assert _count(model.query_stem) == _count(model.support_stem) == STEM_PARAMETERS
    assert _count(model.condition_mlp) == 384 * 1536 + 1536 + 2 * (1536 * 1536 + 1536) + 3 * 2 * 1536 \
        + 1536 * 768 + 768
    assert len(model.injecting_layers) == 16
    images, masks = torch.rand(2, 64, 64) * 2 - 1, torch.zeros(1, 64, 64)
    masks[:, 16:48, 16:48] = 1
    with torch.no_grad():
        support = model.encode_support(images[1:], masks)
        prediction = model.predict_latents(images[:1], support)
    assert prediction.shape == (1, 4, 8, 8) and torch.isfinite(prediction).all()
    assert support.condition.shape == (1, 1, 768)


def test_cli_help_and_info(capsys) -> None:  # noqa: ANN001
    assert cli_main(["info", "--config", "sd15"]) == 0
    out = capsys.readouterr().out
    assert "859,509,124" in out and "23,360" in out
