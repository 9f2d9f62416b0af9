"""Supervoxel pseudo-labels for self-supervised episodes (the ADNet / RPT recipe, paper section 3.1).

Training without annotations draws its "classes" from supervoxels: each volume is rescaled to 0-255,
over-segmented by a 3-D Felzenszwalb graph segmentation (``min_size`` 5000, ``sigma`` 0, voxel
spacing), and supervoxels outside the patient's body (per-slice threshold > 10, largest component,
holes filled) are dropped. The remaining supervoxels are renumbered ``1..N``; 0 is background.

scikit-image's ``felzenszwalb`` is 2-D only, so :func:`felzenszwalb_3d` re-implements it on the
``[K, J, I]`` grid with numba. It follows ADNet's 3-D variant of scikit-image's algorithm step by step:

* intensities are converted like scikit-image (``img_as_float64``: integers are rescaled to [0, 1],
  floats are kept), and ``scale`` is divided by 255, so ``scale`` means what it means in
  ``skimage.segmentation.felzenszwalb``;
* ``sigma`` > 0 smooths with a Gaussian of ``sigma / spacing`` voxels per axis (as ADNet); 0 skips it;
* edges join each voxel to its 26 neighbours (``connectivity`` 6 or 18 keep fewer); the in-plane edges
  are scikit-image's 8-connected ones, so a one-slice volume is segmented exactly as scikit-image does;
* an edge's weight is ``|intensity difference| * (physical length of the step) / (its length in voxels x
  the in-plane spacing)``. With equal in-plane spacings (ADNet's assumption) in-plane edges keep weight
  ``|difference|``, a step across slices costs ``(slice spacing / in-plane spacing) x |difference|`` and a
  diagonal step through slices the ratio of its physical to its isotropic length: ADNet's weights exactly;
* edges are visited in ascending weight (stable sort: ties in raster order, so the result is
  deterministic), merging two components when the weight is below both ``internal + tau`` with
  ``tau = (scale / 255) / size``; a second pass over the same order merges every component still smaller
  than ``min_size`` into its neighbour.

With ADNet's ``scale`` of 1 on a 0-255 volume ``tau`` is below 1/255, so the first pass joins only
near-identical neighbours and the ``min_size`` pass shapes the supervoxels.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit
from scipy import ndimage
from skimage.util import img_as_float64

from ..errors import InputError
from ..inference.postprocess import largest_component_per_slice
from ..io.volumes import read_volume, write_volume
from ..progress import ProgressCallback, report

ADNET_SCALE = 1.0
ADNET_MIN_SIZE = 5000
FOREGROUND_THRESHOLD = 10.0

# Half of the 26-neighbourhood as [dk, dj, di]: scikit-image's four in-plane directions first, in its order.
_OFFSETS = np.array([(0, 0, 1), (0, 1, 0), (0, 1, 1), (0, 1, -1),
                     *((1, dj, di) for dj, di in itertools.product((0, 1, -1), repeat=2))], dtype=np.int64)
_CONNECTIVITY_ORDER = {6: 1, 18: 2, 26: 3}  # connectivity -> most axes one step may move along
_IMAGE_NAME = re.compile(r"image_(?P<id>.+)\.nii\.gz")


def felzenszwalb_3d(volume: np.ndarray, scale: float = ADNET_SCALE, sigma: float = 0.0,
                    min_size: int = ADNET_MIN_SIZE, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                    connectivity: int = 26) -> np.ndarray:
    """Felzenszwalb-Huttenlocher graph segmentation of a ``[K, J, I]`` volume (see the module docstring).

    ``spacing`` is in array order ``(k, j, i)``: reverse a :class:`~SDFSMISLib.io.volumes.Volume`'s spacing.
    Returns int32 labels ``0..N-1``, numbered in raster order of each segment's first voxel.
    """
    image, spacing = _checked_volume(volume, spacing)
    if scale <= 0 or sigma < 0 or min_size < 1:
        raise InputError(f"scale {scale}, sigma {sigma}, min_size {min_size}: scale must be > 0, sigma >= 0 "
                         "and min_size >= 1")
    if connectivity not in _CONNECTIVITY_ORDER:
        raise InputError(f"connectivity {connectivity} is not supported; use 6, 18 or 26")
    if sigma > 0:
        image = ndimage.gaussian_filter(image, sigma=sigma / spacing)
    offsets = _OFFSETS[np.abs(_OFFSETS).sum(axis=1) <= _CONNECTIVITY_ORDER[connectivity]]
    factors = _edge_factors(offsets, spacing)
    weights = _edge_weights(image, offsets, factors)
    order = np.argsort(weights, axis=None, kind="stable")[:np.count_nonzero(np.isfinite(weights))]
    flat_steps = offsets @ np.array([image.shape[1] * image.shape[2], image.shape[2], 1])
    labels = _segment(image.ravel(), order, flat_steps, factors, float(scale) / 255.0, int(min_size))
    return labels.reshape(image.shape)


def foreground_mask(volume255: np.ndarray, threshold: float = FOREGROUND_THRESHOLD) -> np.ndarray:
    """The patient's body, slice by slice: voxels > ``threshold``, largest 8-connected component, holes filled.

    A slice with nothing above the threshold stays empty. Per slice (not in 3-D) as ADNet does, so a body
    that leaves the field of view between slices keeps each slice's own largest region.
    """
    volume255 = np.asarray(volume255)
    if volume255.ndim != 3:
        raise InputError(f"the volume is {volume255.ndim}-D; a 3-D [slices, rows, columns] array is needed")
    body = largest_component_per_slice(volume255 > threshold)
    return np.stack([ndimage.binary_fill_holes(region) for region in body])


def supervoxels(volume: np.ndarray, spacing: Sequence[float], min_size: int = ADNET_MIN_SIZE,
                sigma: float = 0.0) -> np.ndarray:
    """The whole recipe: int32 labels ``[K, J, I]``, 0 outside the body, supervoxels numbered ``1..N``.

    ``spacing`` is in array order ``(k, j, i)``. Supervoxels are numbered in the order of
    :func:`felzenszwalb_3d`; one that straddles the body outline keeps only its part inside.
    """
    volume255 = _rescaled_to_255(np.asarray(volume, dtype=np.float64))
    segments = felzenszwalb_3d(volume255, sigma=sigma, min_size=min_size, spacing=spacing)
    body = foreground_mask(volume255)
    labels = np.zeros(segments.shape, dtype=np.int32)
    labels[body] = np.unique(segments[body], return_inverse=True)[1] + 1
    return labels


def generate_pseudolabels(root: Path, out: Path | None = None, overwrite: bool = False,
                          progress: ProgressCallback | None = None,
                          **recipe: Any) -> list[Path]:
    """Write ``supervoxel_<id>.nii.gz`` for every ``image_<id>.nii.gz`` in ``root`` (into ``out``, default ``root``).

    The labels share the image's grid. A label file newer than its image is kept (supervoxels take a
    while) unless ``overwrite``. ``recipe`` goes to :func:`supervoxels` (``min_size``, ``sigma``).
    Returns the label files, written or kept, in image-id order.
    """
    root = Path(root)
    out = root if out is None else Path(out)
    images = sorted((path for path in root.glob("image_*.nii.gz") if _IMAGE_NAME.fullmatch(path.name)),
                    key=_image_sort_key)
    if not images:
        raise InputError(f"{root} holds no image_<id>.nii.gz files; give the folder of the prepared volumes")
    written = []
    for done, image_path in enumerate(images):
        target = out / f"supervoxel_{_IMAGE_NAME.fullmatch(image_path.name)['id']}.nii.gz"
        if overwrite or not _is_newer(target, image_path):
            image = read_volume(image_path)
            labels = supervoxels(image.array, spacing=image.spacing[::-1], **recipe)
            write_volume(target, image.with_array(labels))
        written.append(target)
        report(progress, done + 1, len(images))
    return written


def _checked_volume(volume: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """A float64 copy of a finite 3-D volume and its spacing as an array, or an error saying what is wrong."""
    volume = np.asarray(volume)
    if volume.ndim != 3 or volume.size == 0:
        raise InputError(f"the volume has shape {volume.shape}; a non-empty 3-D [slices, rows, columns] array "
                         "is needed (give a 2-D image as shape [1, rows, columns])")
    spacing = np.asarray(spacing, dtype=np.float64)
    if spacing.shape != (3,) or not np.all(spacing > 0):
        raise InputError(f"spacing {tuple(spacing.ravel())} must be 3 positive numbers in array order (k, j, i)")
    image = np.ascontiguousarray(img_as_float64(volume))
    if not np.all(np.isfinite(image)):
        raise InputError("the volume holds NaN or infinite values; replace them (e.g. with the minimum) first")
    return image, spacing


def _edge_factors(offsets: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Per direction: physical step length over (voxel step length x in-plane spacing); ADNet's weights."""
    in_plane = spacing[1:].mean()
    return np.linalg.norm(offsets * spacing, axis=1) / (np.linalg.norm(offsets, axis=1) * in_plane)


def _edge_weights(image: np.ndarray, offsets: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """``[directions, K, J, I]`` weight of the edge from each voxel along each direction; inf past the border."""
    weights = np.full((len(offsets), *image.shape), np.inf)
    for weight, offset, factor in zip(weights, offsets, factors):
        start = tuple(slice(max(0, -step), size - max(0, step)) for step, size in zip(offset, image.shape))
        stop = tuple(slice(axis.start + step, axis.stop + step) for axis, step in zip(start, offset))
        weight[start] = np.abs(image[stop] - image[start]) * factor
    return weights


@njit(cache=True)
def _find(parent: np.ndarray, node: int) -> int:
    """Root of ``node``'s tree, halving the path on the way."""
    while parent[node] != node:
        parent[node] = parent[parent[node]]
        node = parent[node]
    return node


@njit(cache=True)
def _union(parent: np.ndarray, size: np.ndarray, root_a: int, root_b: int) -> int:
    """Hang the smaller tree under the larger; returns the new root with the summed size."""
    if size[root_a] < size[root_b]:
        root_a, root_b = root_b, root_a
    parent[root_b] = root_a
    size[root_a] += size[root_b]
    return root_a


@njit(cache=True)
def _segment(image: np.ndarray, order: np.ndarray, flat_steps: np.ndarray, factors: np.ndarray,
             tau_scale: float, min_size: int) -> np.ndarray:
    """Both passes over the edges in ``order`` (ids ``direction * voxels + voxel``), then labels by first voxel."""
    voxels = image.size
    parent = np.arange(voxels)
    size = np.ones(voxels, dtype=np.int64)
    internal = np.zeros(voxels)
    for edge in order:
        direction = edge // voxels
        voxel = edge - direction * voxels
        root_a = _find(parent, voxel)
        root_b = _find(parent, voxel + flat_steps[direction])
        if root_a == root_b:
            continue
        weight = abs(image[voxel + flat_steps[direction]] - image[voxel]) * factors[direction]
        # scikit-image (and ADNet) hold the thresholds in single precision; do the same to match them.
        threshold_a = np.float32(internal[root_a] + tau_scale / size[root_a])
        threshold_b = np.float32(internal[root_b] + tau_scale / size[root_b])
        if weight < min(threshold_a, threshold_b):
            internal[_union(parent, size, root_a, root_b)] = weight
    for edge in order:
        direction = edge // voxels
        voxel = edge - direction * voxels
        root_a = _find(parent, voxel)
        root_b = _find(parent, voxel + flat_steps[direction])
        if root_a != root_b and (size[root_a] < min_size or size[root_b] < min_size):
            _union(parent, size, root_a, root_b)
    label_of_root = np.full(voxels, -1, dtype=np.int32)
    labels = np.empty(voxels, dtype=np.int32)
    count = 0
    for voxel in range(voxels):
        root = _find(parent, voxel)
        if label_of_root[root] < 0:
            label_of_root[root] = count
            count += 1
        labels[voxel] = label_of_root[root]
    return labels


def _rescaled_to_255(volume: np.ndarray) -> np.ndarray:
    """Min-max rescale to [0, 255] (ADNet); a constant volume becomes all zeros (no body, no supervoxels)."""
    low, span = volume.min(), np.ptp(volume)
    return np.zeros_like(volume) if span == 0 else 255.0 * (volume - low) / span


def _image_sort_key(path: Path) -> tuple[int, int | str]:
    """Numeric ids in numeric order (2 before 10), then any others by name."""
    identifier = _IMAGE_NAME.fullmatch(path.name)["id"]
    return (0, int(identifier)) if identifier.isdigit() else (1, identifier)


def _is_newer(target: Path, source: Path) -> bool:
    """Whether ``target`` exists and was written after ``source`` was last changed."""
    return target.is_file() and target.stat().st_mtime_ns > source.stat().st_mtime_ns
