"""Predict many query slices from a few support slices, each support encoded once.

The core of propagation, shared by the command line, the Slicer module, validation during
training and the evaluation. Each query slice names the support slice it uses (an
*assignment*); every support slice runs through the VAE, DINOv2 and the UNet support pass
once, whatever number of query slices use it, and the query slices run in batches. In k-shot
mode all support slices form one set instead.

Query slices are encoded by the VAE once (:func:`encode_queries`); a caller propagating several labels
passes those latents to :func:`predict_foreground_maps` for each label instead of encoding again.
Batches start at a size that fits the device (:func:`SDFSMISLib.devices.auto_batch_size`) and are
halved and retried when the GPU runs out of memory (:func:`run_in_batches`).

Slices may come at any in-plane size: they are resized to the network's resolution
(``config.image_size``) and the foreground maps resized back, so callers work at their own grid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from ..devices import auto_batch_size, is_out_of_memory, release_cached_memory
from ..errors import InputError
from ..model.network import SDFSMISNet, SupportEncoding
from ..progress import ProgressCallback, report
from .postprocess import Threshold, binarize

T = TypeVar("T")


def run_in_batches(step: Callable[[int, int], T], count: int, batch_size: int, device: torch.device,
                   progress: ProgressCallback | None = None) -> list[T]:
    """``step(start, stop)`` over ``range(count)`` in batches; the results in order.

    A GPU out-of-memory error halves the batch size and retries the same items, down to one item
    per batch (then the error propagates: nothing smaller can run). ``progress`` is called after
    each batch; returning ``False`` raises :class:`~SDFSMISLib.progress.Cancelled`.
    """
    results, start = [], 0
    while start < count:
        stop = min(start + batch_size, count)
        try:
            results.append(step(start, stop))
            out_of_memory = False
        except RuntimeError as error:  # torch.cuda.OutOfMemoryError is a RuntimeError, as is MPS's
            if not is_out_of_memory(error) or batch_size == 1:
                raise
            out_of_memory = True
        if out_of_memory:  # outside the handler, so the failed batch's tensors are already freed
            release_cached_memory(device)
            batch_size //= 2
            continue
        start = stop
        report(progress, start, count)
    return results


def _batch_size(model: SDFSMISNet, batch_size: int | None) -> int:
    if batch_size is None:
        return auto_batch_size(model.device, model.config.image_size, model.dtype)
    if batch_size < 1:
        raise InputError(f"batch size {batch_size} must be at least 1 (or None for automatic)")
    return batch_size


def _to_network_grid(x: torch.Tensor, size: int, mask: bool = False) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    mode = {"mode": "nearest-exact"} if mask else {"mode": "bilinear", "antialias": True, "align_corners": False}
    return F.interpolate(x[:, None].float(), size=(size, size), **mode)[:, 0]


def _from_network_grid(maps: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    if maps.shape[-2:] == shape:
        return maps
    return F.interpolate(maps[:, None], size=shape, mode="bilinear", align_corners=False)[:, 0]


def encode_supports(model: SDFSMISNet, images: torch.Tensor, masks: torch.Tensor, k_shot: bool) -> SupportEncoding:
    """One support group per slice (``k_shot=False``) or one group of all slices."""
    images = _to_network_grid(images, model.config.image_size)
    masks = _to_network_grid(masks.float(), model.config.image_size, mask=True) > 0.5
    return model.encode_support(images[None] if k_shot else images[:, None],
                                masks[None] if k_shot else masks[:, None])


@torch.inference_mode()
def encode_queries(model: SDFSMISNet, query_images: np.ndarray, batch_size: int | None = None,
                   progress: ProgressCallback | None = None) -> torch.Tensor:
    """VAE latents ``[N, 4, h, w]`` (on the model's device) of ``[N, H, W]`` query slices in [-1, 1].

    Compute them once per query slice and pass them to :func:`predict_foreground_maps` for every
    label: the query encoding does not depend on the support.
    """
    model.eval()
    queries = torch.as_tensor(np.asarray(query_images), dtype=torch.float32, device=model.device)

    def step(start: int, stop: int) -> torch.Tensor:
        return model.encode_latents(_to_network_grid(queries[start:stop], model.config.image_size))

    return torch.cat(run_in_batches(step, len(queries), _batch_size(model, batch_size), model.device, progress))


@torch.inference_mode()
def predict_foreground_maps(model: SDFSMISNet, query_images: np.ndarray, support_images: np.ndarray,
                            support_masks: np.ndarray, assignment: np.ndarray | None = None,
                            batch_size: int | None = None, progress: ProgressCallback | None = None,
                            query_latents: torch.Tensor | None = None) -> np.ndarray:
    """Foreground maps in [0, 1], ``[N, H, W]``, for ``N`` query slices.

    Args:
        query_images: ``[N, H, W]`` normalised to [-1, 1].
        support_images, support_masks: ``[K, H', W']`` annotated support slices.
        assignment: ``[N]`` index of the support slice each query uses; ``None`` = k-shot (all
            K supports as one set).
        batch_size: query slices per UNet call; ``None`` picks one for the device.
        progress: called after each batch; returning ``False`` cancels.
        query_latents: ``[N, 4, h, w]`` from :func:`encode_queries` (skips the VAE encoder).
    """
    if support_images.shape != support_masks.shape or support_images.ndim != 3:
        raise InputError(f"support images {support_images.shape} and masks {support_masks.shape} must both be "
                         "[K, H, W]")
    if not np.all(np.asarray(support_masks).reshape(len(support_masks), -1).any(axis=1)):
        raise InputError("a support slice has an empty mask: annotate the organ on it, or drop that slice")
    if assignment is not None and (len(assignment) != len(query_images) or
                                   np.any((assignment < 0) | (assignment >= len(support_images)))):
        raise InputError(f"assignment must give one support index in [0, {len(support_images)}) per query slice")
    if query_latents is not None and len(query_latents) != len(query_images):
        raise InputError(f"{len(query_latents)} query latents for {len(query_images)} query slices; "
                         "pass the latents of exactly these slices (encode_queries)")
    model.eval()
    device, size = model.device, model.config.image_size

    def tensor(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x), dtype=torch.float32, device=device)

    support = encode_supports(model, tensor(support_images), tensor(support_masks), k_shot=assignment is None)
    queries = tensor(query_images)
    index = None if assignment is None else torch.as_tensor(assignment, dtype=torch.long, device=device)

    def step(start: int, stop: int) -> torch.Tensor:
        batch = _to_network_grid(queries[start:stop], size)
        batch_index = None if index is None else index[start:stop]
        latents = None if query_latents is None else query_latents[start:stop].to(device)
        predicted = model.predict_latents(batch, support, batch_index, query_latents=latents)
        return _from_network_grid(model.decode_foreground(predicted).float(), tuple(queries.shape[-2:])).cpu()

    maps = run_in_batches(step, len(queries), _batch_size(model, batch_size), device, progress)
    return torch.cat(maps).clamp(0, 1).numpy()


def masks_by_chunk(foreground: np.ndarray, assignment: np.ndarray | None, threshold: Threshold = Threshold(),
                   largest_component: bool = True) -> np.ndarray:
    """Binary masks from foreground maps, thresholded per chunk of slices sharing a support.

    The released code thresholds at 0.25 x the maximum over the chunk predicted together; a
    chunk here is the set of query slices that use the same support slice.
    """
    if assignment is None:
        return binarize(foreground, threshold, largest_component)
    masks = np.zeros(foreground.shape, dtype=bool)
    for chunk in np.unique(assignment):
        members = assignment == chunk
        masks[members] = binarize(foreground[members], threshold, largest_component)
    return masks


def segment_slices(model: SDFSMISNet, query_images: np.ndarray, support_images: np.ndarray,
                   support_masks: np.ndarray, assignment: np.ndarray | None = None,
                   threshold: Threshold = Threshold(), largest_component: bool = True,
                   batch_size: int | None = None) -> np.ndarray:
    """Boolean masks ``[N, H, W]`` for query slices from annotated support slices.

    Example::

        from SDFSMISLib import load_checkpoint, segment_slices
        model = load_checkpoint("model.safetensors", base_model="sd15/", dino="dinov2-small/")
        masks = segment_slices(model, query[None], support_image[None], support_mask[None])
    """
    foreground = predict_foreground_maps(model, query_images, support_images, support_masks, assignment, batch_size)
    return masks_by_chunk(foreground, assignment, threshold, largest_component)
