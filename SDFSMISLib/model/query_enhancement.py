"""Query Enhancement (QE): a query prototype from the support's latent prototypes.

Follows the released ``diffews/models/proto.py``, batched: the support mask is resized
bilinearly (``align_corners=True``) to the latent grid, foreground and background
prototypes are masked averages of the support *image* latent, each query latent position
gets a softmax over its cosine similarity to (background, foreground) without temperature,
and positions with foreground probability above the threshold are averaged into the query
prototype. When none qualifies, the ``int(latent_width * topk_fraction)`` most probable
positions are used instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_EPS = 1e-6


def support_prototypes(latents: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground and background prototypes of support image latents.

    Args:
        latents: ``[N, C, h, w]`` support image latents.
        masks: ``[N, H, W]`` binary support masks at image resolution.

    Returns:
        ``(foreground, background)``, each ``[N, C]``.
    """
    weights = F.interpolate(masks[:, None].to(latents.dtype), size=latents.shape[-2:],
                            mode="bilinear", align_corners=True)
    fg = (latents * weights).sum((2, 3)) / (weights.sum((2, 3)) + _EPS)
    bg = (latents * (1 - weights)).sum((2, 3)) / ((1 - weights).sum((2, 3)) + _EPS)
    return fg, bg


def query_prototype(
    query_latents: torch.Tensor,
    fg_prototype: torch.Tensor,
    bg_prototype: torch.Tensor,
    threshold: float = 0.7,
    topk_fraction: float = 0.1875,
) -> torch.Tensor:
    """Query foreground prototype per query item.

    Args:
        query_latents: ``[B, C, h, w]``.
        fg_prototype, bg_prototype: ``[B, C]`` support prototypes (already averaged over shots)
            matching each query item.
        threshold: foreground probability a position needs to join the prototype.
        topk_fraction: fallback size as a fraction of the latent width.

    Returns:
        ``[B, C]`` query prototypes.
    """
    batch, channels = query_latents.shape[:2]
    flat = query_latents.flatten(2)  # [B, C, N]
    similarity = torch.stack([
        F.cosine_similarity(flat, bg_prototype[:, :, None], dim=1),
        F.cosine_similarity(flat, fg_prototype[:, :, None], dim=1),
    ], dim=1)  # [B, 2, N]
    p_fg = similarity.softmax(dim=1)[:, 1]  # [B, N]
    selected = (p_fg > threshold).to(flat.dtype)
    k = max(1, int(query_latents.shape[-1] * topk_fraction))
    fallback = torch.zeros_like(selected).scatter_(1, p_fg.topk(k, dim=1).indices, 1.0)
    none_selected = selected.sum(1, keepdim=True) == 0
    weights = torch.where(none_selected, fallback, selected)
    return (flat * weights[:, None]).sum(2) / weights.sum(1, keepdim=True)


def tile_prototype(prototype: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Expand ``[B, C]`` to the spatial size of ``like`` (``[B, C, h, w]``)."""
    return prototype[:, :, None, None].expand(-1, -1, *like.shape[-2:])
