"""Visual-to-Textual Condition Translator (VTCT).

A frozen DINOv2 encodes the support image; its patch tokens (CLS dropped) are averaged
under the support mask, averaged over shots, and a learnable MLP maps that prototype to one
token of the UNet's cross-attention width, used as ``encoder_hidden_states`` in place of a
text embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Dinov2Model

from .config import DINO_INPUT_SIZE, DINO_RESIZE_SIZE, MaskAlignment

#: DINOv2's image normalisation (ImageNet statistics, as in its preprocessor config).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConditionMLP(nn.Module):
    """``Linear(d, 2D) + LN + GELU``, 2 x ``[Linear(2D, 2D) + LN + GELU]``, ``Linear(2D, D)``.

    The released ``FeatureToConditioningMLP`` with D the UNet's cross-attention width
    (1536 hidden for SD-1.5). The layout of :attr:`mlp` matches its state dict keys.
    """

    def __init__(self, input_dim: int, output_dim: int, hidden_layers: int = 2) -> None:
        super().__init__()
        hidden_dim = 2 * output_dim
        layers: list[nn.Module] = [nn.Linear(input_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU()]
        for _ in range(hidden_layers):
            layers += [nn.Linear(hidden_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU()]
        layers.append(nn.Linear(hidden_dim, output_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, prototype: torch.Tensor) -> torch.Tensor:
        """``[G, d]`` prototypes -> ``[G, 1, D]`` condition tokens."""
        return self.mlp(prototype)[:, None]


def _resize_and_crop(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Resize the shortest edge to 256 and centre-crop 224, as DINOv2's image processor does."""
    height, width = x.shape[-2:]
    scale = DINO_RESIZE_SIZE / min(height, width)
    size = (round(height * scale), round(width * scale))
    if size != (height, width):
        x = F.interpolate(x, size=size, mode=mode, antialias=mode == "bicubic", align_corners=False)
    top = (size[0] - DINO_INPUT_SIZE) // 2
    left = (size[1] - DINO_INPUT_SIZE) // 2
    return x[..., top:top + DINO_INPUT_SIZE, left:left + DINO_INPUT_SIZE]


def dino_pixels(images: torch.Tensor) -> torch.Tensor:
    """``[N, H, W]`` images in [-1, 1] -> ``[N, 3, 224, 224]`` normalised DINOv2 input."""
    rgb = ((images[:, None] + 1) / 2).expand(-1, 3, -1, -1)
    pixels = _resize_and_crop(rgb, "bicubic")
    mean = pixels.new_tensor(IMAGENET_MEAN)[:, None, None]
    std = pixels.new_tensor(IMAGENET_STD)[:, None, None]
    return (pixels - mean) / std


def patch_grid_masks(masks: torch.Tensor, grid: int, alignment: MaskAlignment) -> torch.Tensor:
    """``[N, H, W]`` binary masks -> ``[N, 1, grid, grid]`` binary masks on the patch grid.

    ``crop`` crops the mask like the image so both cover the same pixels; ``full`` resizes the
    whole mask as the released code does. Both use bilinear resizing and ``> 0.5``.
    """
    masks = masks[:, None].float()
    if alignment == "crop":
        masks = _resize_and_crop(masks, "bilinear")
    return (F.interpolate(masks, size=(grid, grid), mode="bilinear", align_corners=False) > 0.5).float()


def masked_patch_prototype(encoder: Dinov2Model, images: torch.Tensor, masks: torch.Tensor,
                           alignment: MaskAlignment) -> torch.Tensor:
    """Masked average of DINOv2 patch tokens per image: ``[N, H, W]`` -> ``[N, d]``."""
    pixels = dino_pixels(images).to(encoder.dtype)
    tokens = encoder(pixel_values=pixels).last_hidden_state[:, 1:]  # CLS dropped
    grid = DINO_INPUT_SIZE // encoder.config.patch_size
    weights = patch_grid_masks(masks, grid, alignment).flatten(1).to(tokens.dtype)  # [N, grid*grid]
    return (tokens * weights[..., None]).sum(1) / (weights.sum(1, keepdim=True) + 1e-6)
