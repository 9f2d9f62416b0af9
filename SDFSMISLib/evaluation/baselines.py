"""Two training-free baselines, scored on the same folds and slices as the model.

They tell how much of a score the model earns: a number that does not beat them says the task or the
protocol is easy, not that the network works.

* :func:`copy_nearest_support` pastes the assigned support slice's mask onto each query slice. Organs sit at
  similar places in similar patients, so this "atlas of one slice" is the floor any few-shot method must
  clear.
* :func:`prototype_matcher` is PANet (Wang et al., ICCV 2019) without training: foreground and background
  prototypes pooled from a frozen network's features of the support, each query position labelled by the
  nearer prototype in cosine similarity. It measures what a frozen feature extractor alone already gives.

Both take the support assignment from :mod:`SDFSMISLib.evaluation.protocol` and images/masks on the model's
grid (``[N, H, W]``, images in [-1, 1]), and return boolean numpy masks ``[N, H, W]`` for
:mod:`SDFSMISLib.evaluation.metrics`.
Without an assignment (``None``, the released code's k-shot variant) all supports act as one set: the copy
baseline takes their pixel-wise majority vote and the matcher averages their prototypes over the shots, as
PANet does for k shots.

Frozen features for the matcher come from the model under evaluation, so the baseline shows what its frozen
parts alone give: :func:`vae_features` (the VAE posterior mean the UNet sees, the default) and
:func:`dino_features` (the DINOv2 patch tokens the VTCT pools).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..model.config import DINO_INPUT_SIZE
from ..model.visual_condition import IMAGENET_MEAN, IMAGENET_STD
from .contour_interpolation import interpolate, require_itk

if TYPE_CHECKING:
    from ..model.network import SDFSMISNet

#: PANet multiplies cosine similarities by 20 before the softmax, so the class logits are not confined to
#: [-1, 1] (``models/fewshot.py`` ``calDist``, ``scaler=20``).
PANET_SCALE = 20.0

FeaturesFn = Callable[[torch.Tensor], torch.Tensor]


def _check_assignment(assignment: np.ndarray, query_count: int, support_count: int) -> np.ndarray:
    """The assignment as an integer array with one valid support index per query slice."""
    assignment = np.asarray(assignment)
    if assignment.shape != (query_count,):
        raise InputError(f"assignment has shape {assignment.shape} for {query_count} query slices; "
                         "give one support index per query slice")
    if query_count and (assignment.min() < 0 or assignment.max() >= support_count):
        raise InputError(f"assignment refers to supports {assignment.min()}..{assignment.max()} but only "
                         f"{support_count} were given; use indices 0..{support_count - 1}")
    return assignment.astype(np.int64)


def copy_nearest_support(query_count: int, assignment: np.ndarray | None, support_masks: np.ndarray) -> np.ndarray:
    """Each query slice's prediction is a copy of its assigned support mask: ``[query_count, H, W]`` booleans.

    The support masks must already be on the query's grid (the 256 x 256 model grid in the protocol). Without
    an assignment every query slice gets the supports' majority vote (pixels in more than half of the masks).
    """
    support_masks = np.asarray(support_masks).astype(bool)
    if assignment is None:
        vote = support_masks.mean(axis=0) > 0.5
        return np.repeat(vote[None], query_count, axis=0)
    assignment = _check_assignment(assignment, query_count, len(support_masks))
    return support_masks[assignment]


def _masked_average(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Masked average pooling: ``[N, C, h, w]`` features weighted by ``[N, 1, h, w]`` -> ``[N, C]`` prototypes."""
    return (features * weights).sum(dim=(2, 3)) / weights.sum(dim=(2, 3)).clamp_min(1e-5)


def _prototypes(features_fn: FeaturesFn, support_images: torch.Tensor, support_masks: torch.Tensor) -> torch.Tensor:
    """Background and foreground prototype of every support slice: ``[S, 2, C]``.

    The masks are averaged down to the feature grid (area interpolation), so a feature cell straddling the
    organ boundary counts in proportion to the foreground it covers. PANet upsamples the features to the
    mask instead; pooling on the feature grid costs far less and differs only in how the edge is interpolated.
    """
    features = features_fn(support_images)
    weights = F.interpolate(support_masks[:, None].to(features), size=features.shape[-2:], mode="area")
    return torch.stack([_masked_average(features, 1 - weights), _masked_average(features, weights)], dim=1)


def prototype_logits(features_fn: FeaturesFn, support_images: torch.Tensor, support_masks: torch.Tensor,
                     query_images: torch.Tensor, assignment: np.ndarray | None, batch_size: int = 16) -> torch.Tensor:
    """PANet class logits ``[Q, 2, H, W]`` (background, foreground) of the query slices, on the image grid.

    ``features_fn`` maps ``[N, H, W]`` images in [-1, 1] to ``[N, C, h, w]`` features and stays frozen. Each
    query slice is compared with the prototypes of its assigned support slice (with ``assignment=None``, with
    the prototypes averaged over all supports): cosine similarity times :data:`PANET_SCALE`, upsampled
    bilinearly to ``H x W`` (PANet upsamples the scores, then takes the argmax). Queries are processed
    ``batch_size`` at a time to bound memory.
    """
    support_images, query_images = torch.as_tensor(support_images), torch.as_tensor(query_images)
    pooled = assignment is None
    if pooled:
        assignment = np.zeros(len(query_images), dtype=np.int64)
    assignment = torch.from_numpy(_check_assignment(assignment, len(query_images), len(support_images)))
    logits = []
    with torch.inference_mode():
        prototypes = _prototypes(features_fn, support_images, torch.as_tensor(support_masks))
        if pooled:
            prototypes = prototypes.mean(dim=0, keepdim=True)
        for start in range(0, len(query_images), batch_size):
            features = features_fn(query_images[start:start + batch_size])
            chosen = prototypes[assignment[start:start + batch_size].to(prototypes.device)]
            similarity = F.cosine_similarity(features[:, None], chosen[..., None, None], dim=2) * PANET_SCALE
            logits.append(F.interpolate(similarity, size=query_images.shape[-2:], mode="bilinear",
                                        align_corners=False))
    return torch.cat(logits) if logits else torch.zeros(0, 2, *query_images.shape[-2:])


def prototype_matcher(features_fn: FeaturesFn, support_images: torch.Tensor, support_masks: torch.Tensor,
                      query_images: torch.Tensor, assignment: np.ndarray | None, batch_size: int = 16) -> np.ndarray:
    """Training-free PANet segmentation of the query slices: ``[Q, H, W]`` booleans (foreground beats background).

    See :func:`prototype_logits` for the arguments.
    """
    logits = prototype_logits(features_fn, support_images, support_masks, query_images, assignment, batch_size)
    return (logits.argmax(dim=1) == 1).cpu().numpy()


def _resized(images: torch.Tensor, size: int) -> torch.Tensor:
    """``[N, H, W]`` images resized (bilinear, antialiased) to ``[N, size, size]``; unchanged when already so."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images[:, None], size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)[:, 0]


def vae_features(model: "SDFSMISNet") -> FeaturesFn:
    """Frozen features: the VAE posterior mean ``[N, 4, h, w]`` of the images at the network's resolution.

    These are the latents the UNet receives and the features Query Enhancement pools its prototypes from, so
    the matcher shows how far the frozen encoder alone separates an organ. The model is put in eval mode
    (``encode_latents`` samples the posterior while training).
    """
    model.eval()

    def features(images: torch.Tensor) -> torch.Tensor:
        images = _resized(images.to(model.device, torch.float32), model.config.image_size)
        return model.encode_latents(images.to(model.dtype)).float()

    return features


def dino_features(model: "SDFSMISNet") -> FeaturesFn:
    """Frozen features: the DINOv2 patch tokens ``[N, d, g, g]`` (CLS dropped) of the VTCT's encoder.

    The whole slice is resized to DINOv2's 224 x 224 input (no centre crop, unlike the VTCT), so the patch
    grid covers the same field of view as the mask the prototypes are pooled under.
    """
    encoder = model.dino.eval()
    mean = torch.tensor(IMAGENET_MEAN, device=model.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=model.device)[:, None, None]
    grid = DINO_INPUT_SIZE // encoder.config.patch_size

    def features(images: torch.Tensor) -> torch.Tensor:
        unit = (_resized(images.to(model.device, torch.float32), DINO_INPUT_SIZE) + 1) / 2
        pixels = (unit[:, None].expand(-1, 3, -1, -1) - mean) / std
        tokens = encoder(pixel_values=pixels.to(encoder.dtype)).last_hidden_state[:, 1:]  # CLS dropped
        return tokens.float().unflatten(1, (grid, grid)).permute(0, 3, 1, 2)

    return features


def fill_between_slices(shape: tuple[int, ...], annotated_slices: np.ndarray,
                        annotated_masks: np.ndarray) -> np.ndarray:
    """3D Slicer's "Fill between slices": ITK's morphological contour interpolation of the annotated slices.

    ``[S, H, W]`` booleans: the annotated slices as given, the slices between them interpolated, none outside
    them (the effect does not extrapolate). This is the algorithm behind the Segment Editor effect (Albu et
    al., "A morphology-based approach for interslice interpolation of anatomical slices from volumetric
    images", 2008), with its defaults, from the ``itk-morphologicalcontourinterpolation`` package: an
    evaluation extra, not a dependency of the module.
    """
    require_itk()
    volume = np.zeros(shape, dtype=np.uint8)
    volume[np.asarray(annotated_slices)] = np.asarray(annotated_masks, dtype=bool)
    return interpolate(volume).astype(bool)
