"""Per-organ 3-D segmentation metrics in millimetres: Dice, HD95 and ASSD.

The SD-FSMIS paper reports Dice per organ (the few-shot protocol's headline number) and, in its
supplementary comparison with universal models, HD95 and ASSD in mm. These functions compute all three for
one organ of one patient, on masks in the project's array order.

Conventions, chosen so the numbers are comparable with the common open implementations:

* Masks are 3-D ``[K, J, I]`` arrays (SimpleITK ``GetArrayFromImage`` order, axis 0 = slices) and
  ``spacing`` is given **in array-axis order (k, j, i)** in mm. ``Volume.spacing`` is SimpleITK's
  ``(i, j, k)``, so pass ``volume.spacing[::-1]``.
* A mask's surface is its voxels that have a background voxel among their 26 neighbours (the mask minus its
  erosion by the full 3x3x3 structuring element); voxels on the array border count as surface. Full
  connectivity also counts voxels that touch the background only across an edge or a corner, a slightly
  thicker surface than MedPy's default 6-neighbour erosion. Either way the voxel of a mask nearest to any
  voxel outside it is a surface voxel, so outside the overlap surface distances equal distances to the mask.
* Distances run from each surface voxel of one mask to the nearest surface voxel of the other
  (``scipy.ndimage.distance_transform_edt`` with ``sampling=spacing``), in both directions, and the two
  directions are pooled into one set. HD95 is the 95th percentile of the pooled set (MedPy's ``hd95``;
  MONAI instead takes the larger of the two directed 95th percentiles). ASSD is the mean of the pooled set,
  i.e. every surface voxel weighted equally (the symmetric ``compute_average_surface_distance`` of current
  MONAI, and Heimann et al. 2009; MedPy's ``assd`` and early MONAI average the two directed means).
* Empty masks: both empty -> Dice 1, HD95 = ASSD = 0 (nothing to find, nothing found); exactly one empty ->
  Dice 0 and HD95 = ASSD = NaN, because no surface distance exists. Reports average distances over the
  cases where both masks are non-empty and say how many were left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ..errors import InputError

_FULL_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)


def _check_pair(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as boolean 3-D arrays of one shape, with a usable spacing; otherwise an InputError."""
    pred, truth = np.asarray(pred).astype(bool), np.asarray(truth).astype(bool)
    if pred.shape != truth.shape or pred.ndim != 3:
        raise InputError(f"prediction {pred.shape} and ground truth {truth.shape} must be 3-D arrays of one shape; "
                         "resample the prediction onto the ground-truth grid")
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"spacing {tuple(spacing)} must be 3 positive mm values in (k, j, i) order; "
                         "pass volume.spacing[::-1]")
    return pred, truth


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice overlap 2|P∩T| / (|P| + |T|) of two boolean masks; 1.0 when both are empty."""
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(pred, truth).sum()) / total


def surface(mask: np.ndarray) -> np.ndarray:
    """The voxels of ``mask`` with a background voxel among their 26 neighbours (array borders count as background)."""
    return mask & ~ndimage.binary_erosion(mask, structure=_FULL_CONNECTIVITY, border_value=0)


def _union_box(pred: np.ndarray, truth: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of both masks grown by one voxel: all surface distances live inside it.

    Cropping to it makes the distance transforms cost the size of the organ, not of the volume, and changes
    nothing: every surface voxel of both masks lies inside, and the one-voxel margin keeps the erosion from
    treating the crop's edge as the array border.
    """
    ends = np.argwhere(pred | truth)
    low, high = ends.min(axis=0) - 1, ends.max(axis=0) + 2
    return tuple(slice(max(int(a), 0), int(b)) for a, b in zip(low, high))


def _pooled_distances(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Surface-to-surface distances of two checked, non-empty boolean masks, both directions concatenated."""
    box = _union_box(pred, truth)
    pred_surface, truth_surface = surface(pred[box]), surface(truth[box])
    to_truth = ndimage.distance_transform_edt(~truth_surface, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)
    return np.concatenate([to_truth[pred_surface], to_pred[truth_surface]])


def symmetric_surface_distances(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distances (mm) from each surface voxel of either mask to the other mask's surface, both directions pooled.

    Both masks must be non-empty. ``spacing`` is in array-axis order (k, j, i). The maximum of the result is
    the surface Hausdorff distance; HD95 and ASSD are its 95th percentile and its mean.
    """
    pred, truth = _check_pair(pred, truth, spacing)
    if not pred.any() or not truth.any():
        raise InputError("surface distances need two non-empty masks; use organ_metrics, which handles empty ones")
    return _pooled_distances(pred, truth, spacing)


def organ_metrics(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Dice, HD95 (mm) and ASSD (mm) of one organ: ``{"dice": ..., "hd95": ..., "assd": ...}``.

    ``pred`` and ``truth`` are ``[K, J, I]`` masks (any dtype; non-zero is foreground) and ``spacing`` is the
    voxel size in **array-axis order (k, j, i)**, i.e. ``volume.spacing[::-1]``. Empty masks follow the
    module's convention: both empty gives (1, 0, 0), one empty gives (0, NaN, NaN).
    """
    pred, truth = _check_pair(pred, truth, spacing)
    score = dice(pred, truth)
    if not pred.any() and not truth.any():
        return {"dice": score, "hd95": 0.0, "assd": 0.0}
    if not pred.any() or not truth.any():
        return {"dice": score, "hd95": float("nan"), "assd": float("nan")}
    distances = _pooled_distances(pred, truth, spacing)
    return {"dice": score, "hd95": float(np.percentile(distances, 95)), "assd": float(distances.mean())}
