"""Winograd F(4x4, 3x3): the same convolution as PyTorch's, switched on and off without a trace, and only where
it applies."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.resnet import ResnetBlock2D
from lib import winograd
from lib.winograd import WinogradForward, is_eligible, set_winograd, transform_weight, winograd_conv2d, winograd_enabled
from torch import nn

#: float32 Winograd against a float64 reference; oneDNN's direct convolution is about 1e-6 here.
RELATIVE_ERROR = 2e-5


def relative_error(result: torch.Tensor, reference: torch.Tensor) -> float:
    result, reference = result.detach().double(), reference.detach()
    return float((result - reference).norm() / reference.norm())


@pytest.mark.parametrize("batch, c_in, c_out, height, width, channels_last, chunk_bytes", [
    (2, 8, 8, 16, 16, True, None),  # whole tiles, one chunk
    (3, 12, 5, 13, 18, False, None),  # partial last tiles in both directions, contiguous in and out
    (1, 6, 10, 9, 4, True, 2**10),  # chunks of a few tile rows
    (5, 4, 4, 8, 8, True, 2**30),  # several images per chunk
    (3, 4, 4, 8, 8, True, 2**12),  # one image per chunk
])
def test_matches_the_direct_convolution(batch: int, c_in: int, c_out: int, height: int, width: int,
                                        channels_last: bool, chunk_bytes: int | None) -> None:
    """(With ``chunk_bytes`` the chunks are sized by bytes alone, so these small layers are split too.)"""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, c_in, height, width, generator=generator)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(c_out, c_in, 3, 3, generator=generator), torch.randn(c_out, generator=generator)
    reference = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    min_tiles = None if chunk_bytes is None else 1
    result = winograd_conv2d(x, transform_weight(weight), bias, chunk_bytes, min_tiles)
    assert result.shape == reference.shape
    assert result.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert relative_error(result, reference) < RELATIVE_ERROR
    unbiased = winograd_conv2d(x, transform_weight(weight), None, chunk_bytes, min_tiles)
    assert relative_error(unbiased, F.conv2d(x.double(), weight.double(), padding=1)) < RELATIVE_ERROR


def test_chunks_hold_enough_tiles_for_fast_products() -> None:
    assert winograd.chunk_tiles(512, 4) == winograd.MIN_CHUNK_TILES  # 4 MB would hold only 56 tiles
    assert winograd.chunk_tiles(128, 4) == winograd.CHUNK_BYTES // (36 * 128 * 4)  # bytes decide: 227 tiles
    assert winograd.chunk_tiles(512, 4, chunk_bytes=2**10, min_tiles=1) == 1


def test_only_same_size_dense_3x3_convolutions_are_eligible() -> None:
    wide = winograd.MIN_CHANNELS
    assert is_eligible(nn.Conv2d(wide, 2 * wide, 3, padding=1))
    assert not is_eligible(nn.Conv2d(wide, wide, 3, stride=2, padding=1))  # a VAE downsampler
    assert not is_eligible(nn.Conv2d(wide, wide, 3, padding=0))
    assert not is_eligible(nn.Conv2d(wide, wide, 3, padding=1, groups=2))
    assert not is_eligible(nn.Conv2d(wide, wide, 1))
    assert not is_eligible(nn.Conv2d(wide, wide, 3, padding=1, padding_mode="reflect"))
    assert not is_eligible(nn.Conv2d(3, wide, 3, padding=1))  # too few channels to pay for the transforms
    assert not is_eligible(nn.Conv2d(wide, wide // 2, 3, padding=1))

    class Doubled(nn.Conv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    assert not is_eligible(Doubled(wide, wide, 3, padding=1))  # its own forward must run


@pytest.fixture
def small_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let Winograd apply to test-sized layers."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 4)
    monkeypatch.setattr(winograd, "MIN_PIXELS", 16)


def resnet_block() -> ResnetBlock2D:
    torch.manual_seed(0)
    return ResnetBlock2D(in_channels=16, out_channels=8, temb_channels=None, groups=4).eval()


@pytest.mark.usefixtures("small_thresholds")
def test_a_diffusers_block_computes_the_same_and_switches_back() -> None:
    block = resnet_block()
    x = torch.randn(2, 16, 12, 12)
    with torch.inference_mode():
        reference = block(x, None)
        assert set_winograd(block, True) == 2  # conv1 and conv2; the 1x1 shortcut is not eligible
        assert winograd_enabled(block) and isinstance(block.conv1.forward, WinogradForward)
        with torch.autograd.profiler.profile() as calls:
            result = block(x, None)
        assert not any(event.name == "aten::convolution" and event.input_shapes and
                       event.input_shapes[1][2:] == [3, 3] for event in calls.function_events)
        set_winograd(block, False)
        assert not winograd_enabled(block) and "forward" not in block.conv1.__dict__
        assert torch.equal(block(x, None), reference)
    assert (result - reference).abs().max() < 1e-4 and not torch.equal(result, reference)
    assert set(block.state_dict()) == set(resnet_block().state_dict())


@pytest.mark.usefixtures("small_thresholds")
def test_falls_back_where_it_does_not_apply() -> None:
    conv = nn.Conv2d(8, 8, 3, padding=1)
    set_winograd(conv, True)
    forward = conv.__dict__["forward"]
    with torch.no_grad():
        assert forward.applies(torch.randn(1, 8, 8, 8))
        assert not forward.applies(torch.randn(1, 8, 3, 3))  # fewer pixels than MIN_PIXELS
        assert not forward.applies(torch.randn(1, 8, 8, 8, dtype=torch.float64))
        assert not forward.applies(torch.randn(1, 8, 8, 8).bfloat16())
    assert not forward.applies(torch.randn(1, 8, 8, 8))  # gradients wanted for the weights: training
    conv.weight.requires_grad_(False)
    assert not forward.applies(torch.randn(1, 8, 8, 8))  # a trainable bias alone still wants its gradient
    conv.weight.requires_grad_(True)
    x = torch.randn(1, 8, 8, 8, requires_grad=True)
    conv(x).sum().backward()  # training runs the module's own convolution and its gradient
    assert conv.weight.grad is not None and x.grad is not None
    assert forward._transformed is None  # nothing was transformed for it


@pytest.mark.usefixtures("small_thresholds")
def test_transformed_weights_follow_weight_changes() -> None:
    conv = nn.Conv2d(8, 8, 3, padding=1).eval()
    set_winograd(conv, True)
    x = torch.randn(1, 8, 8, 8)

    def matches_the_weights() -> bool:
        with torch.no_grad():
            result = conv(x)
        return relative_error(result, F.conv2d(x.double(), conv.weight.double(), conv.bias.double(),
                                               padding=1)) < RELATIVE_ERROR

    assert matches_the_weights()
    conv.load_state_dict({"weight": torch.randn(8, 8, 3, 3), "bias": torch.zeros(8)})  # in place
    assert matches_the_weights()
    conv.half().float()  # new tensors, possibly at the old address: rounded weights must be seen
    assert matches_the_weights()
    with torch.inference_mode():  # parameters made here are inference tensors, without a version
        made_in_inference = nn.Conv2d(8, 8, 3, padding=1)
        set_winograd(made_in_inference, True)
        made_in_inference(x)


@pytest.mark.usefixtures("small_thresholds")
def test_a_copy_of_a_switched_network_has_its_own_switch_and_no_cache() -> None:
    block = resnet_block()
    set_winograd(block, True)
    with torch.no_grad():
        block(torch.randn(1, 16, 8, 8), None)
    twin = copy.deepcopy(block)
    assert twin.conv1.__dict__["forward"].conv is twin.conv1
    assert twin.conv1.__dict__["forward"]._transformed is None
    set_winograd(twin, False)
    assert winograd_enabled(block) and not winograd_enabled(twin)
