"""Predict query slices from k annotated support slices: the library's one-call entry point."""

from __future__ import annotations

import numpy as np
import torch

from .network import SDFSMISNet
from .postprocess import Threshold, binarize


def _as_tensor(x: np.ndarray | torch.Tensor, model: SDFSMISNet) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x,
                           dtype=torch.float32).to(model.device)


@torch.inference_mode()
def predict_foreground(model: SDFSMISNet, query_images: np.ndarray | torch.Tensor,
                       support_images: np.ndarray | torch.Tensor,
                       support_masks: np.ndarray | torch.Tensor, batch_size: int = 8) -> np.ndarray:
    """Foreground maps in [0, 1] of ``[B, H, W]`` query slices given ``[K, H, W]`` support slices.

    The K support slices form one k-shot set, encoded once; queries run in batches.
    Images are normalised to [-1, 1]; masks are binary.
    """
    model.eval()
    queries = _as_tensor(query_images, model)
    support = model.encode_support(_as_tensor(support_images, model), _as_tensor(support_masks, model) > 0)
    maps = [model.decode_foreground(model.predict_latents(chunk, support))
            for chunk in queries.split(batch_size)]
    return torch.cat(maps).float().cpu().numpy()


def segment_slices(model: SDFSMISNet, query_images: np.ndarray | torch.Tensor,
                   support_images: np.ndarray | torch.Tensor, support_masks: np.ndarray | torch.Tensor,
                   threshold: Threshold = Threshold(), largest_component: bool = True,
                   batch_size: int = 8) -> np.ndarray:
    """Boolean masks ``[B, H, W]`` for query slices from k annotated support slices.

    Example::

        from SDFSMISLib import load_checkpoint, segment_slices
        model = load_checkpoint("model.safetensors", base_model="sd15/", dino="dinov2-small/")
        masks = segment_slices(model, query[None], support_image[None], support_mask[None])
    """
    foreground = predict_foreground(model, query_images, support_images, support_masks, batch_size)
    return binarize(foreground, threshold, largest_component)
