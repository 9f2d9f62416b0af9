"""Bringing a volume into the network's space ``[S, size, size]`` and labels back, exactly, onto the user's grid.

The network sees axial slices in one anatomical frame, the frame of the SSL-ALPNet preprocessed CHAOS-T2
volumes it is trained on: array axis 0 (slices) runs inferior -> superior (LPS +z), axis 1 (rows) runs
posterior -> anterior (-y), axis 2 (columns) runs patient right -> left (+x). Every recipe except ``none``
picks, for each model axis, the volume's index axis nearest that direction (the slice axis is the one
nearest superior-inferior, :func:`~SDFSMISLib.io.volumes.slice_axis_nearest_si`) and flips it where needed;
voxels are never rotated, so a volume already in that frame keeps its array order.

The model grid is a physical grid (origin, spacing, direction), so both directions of the mapping are
SimpleITK resamplings between physical grids: orientation, flips, oblique directions, crops and pads are
all handled by the geometry, and labels go back with nearest-neighbour interpolation without shifting
boundaries. Crops and pads are whole voxels of the input, so a grid that needs no resampling maps exactly.

Recipes (method-notes, "Data and protocol"):

* ``generic`` (any user volume): keep the slices; in-plane, the longer physical side becomes ``size``
  voxels (square voxels, aspect ratio kept), the other side is centred and padded with the volume minimum;
  intensities clipped to the 0.5 and 99.5 percentiles.
* ``chaos-t2`` (SSL-ALPNet Abd-MRI): top 0.5 % of the histogram clipped, resampled to 1.25 x 1.25 x 7.70 mm
  (in-plane spacing scaled by 256 / size for other sizes, keeping the field of view), centre crop/pad.
* ``synapse-ct`` (SSL-ALPNet Abd-CT): HU window [-125, 275], a border of 32/512 of each in-plane side
  cropped (the central 448 of a 512 grid), the rest resampled to ``size``; slices kept.
* ``none``: the volume is already in model space (the SSL-ALPNet/RPT preprocessed folders): identity geometry.

All recipes then min-max normalise each volume to [-1, 1] (SD-FSMIS).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..io.volumes import Volume, slice_axis_nearest_si

RECIPES = ("chaos-t2", "synapse-ct", "generic", "none")
TRAINING_SIZE = 256
# LPS directions of the model index axes: columns (i), rows (j), slices (k).
MODEL_FRAME = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]).T
CHAOS_SPACING = (1.25, 1.25, 7.70)
GENERIC_PERCENTILES = (0.5, 99.5)
CHAOS_TOP_PERCENTILE = 99.5
SYNAPSE_HU_WINDOW = (-125.0, 275.0)
SYNAPSE_BORDER = 32 / 512


@dataclass(frozen=True)
class AxisPlan:
    """How one model index axis is laid out along one index axis of the input volume."""

    source: int  # input index axis: 0 = i (columns), 1 = j (rows), 2 = k (slices)
    sign: int  # +1 runs the same way as the source axis, -1 the opposite way
    size: int  # model voxels
    spacing: float  # model spacing, mm


@dataclass(frozen=True)
class Preprocessed:
    """A volume in model space with the geometry that maps its labels back onto the input grid."""

    model: Volume  # the normalised image [S, size, size] on the model's physical grid
    original: Volume  # the input volume; its grid is where labels go back to
    recipe: str

    @property
    def image(self) -> np.ndarray:
        """The network input: float32 ``[S, size, size]`` in [-1, 1]."""
        return self.model.array

    def labels_to_model(self, labels: np.ndarray) -> np.ndarray:
        """An input-grid labelmap ``[K, J, I]`` on the model grid ``[S, size, size]`` (nearest neighbour)."""
        return _resample(_checked(labels, self.original.array.shape, "input"), self.original, self.model,
                         sitk.sitkNearestNeighbor, 0)

    def labels_to_original(self, labels: np.ndarray) -> Volume:
        """A model-grid labelmap ``[S, size, size]`` on exactly the input grid (nearest neighbour)."""
        labels = _checked(labels, self.model.array.shape, "model")
        return self.original.with_array(_resample(labels, self.model, self.original, sitk.sitkNearestNeighbor, 0))

    def values_to_original(self, values: np.ndarray) -> Volume:
        """A model-grid float map ``[S, size, size]`` (e.g. probabilities) on the input grid, linearly."""
        values = _checked(values, self.model.array.shape, "model").astype(np.float32)
        return self.original.with_array(_resample(values, self.model, self.original, sitk.sitkLinear, 0.0))

    def slice_positions(self) -> np.ndarray:
        """Physical position (mm along the slice normal, increasing superiorly) of each model slice.

        Positions, unlike slice indices, compare across volumes: they place support and query slices.
        """
        normal = self.model.direction_matrix()[:, 2]
        start = float(np.dot(self.model.origin, normal))
        return start + self.model.spacing[2] * np.arange(self.model.array.shape[0])


def preprocess(volume: Volume, recipe: str = "generic", size: int = TRAINING_SIZE) -> Preprocessed:
    """``volume`` in the network's space by ``recipe`` (see the module docstring)."""
    if recipe not in RECIPES:
        raise InputError(f"unknown preprocessing recipe {recipe!r}; use one of {', '.join(RECIPES)}")
    if size < 1:
        raise InputError(f"model image size {size} must be a positive number of pixels")
    low, high = _intensity_window(volume.array, recipe)
    clipped = Volume(np.clip(volume.array.astype(np.float32), low, high), volume.spacing, volume.origin,
                     volume.direction)
    grid = model_grid(volume, _plans(volume, recipe, size))
    resampled = _resample(clipped.array, clipped, grid, sitk.sitkLinear, low)
    return Preprocessed(grid.with_array(_min_max(resampled)), volume, recipe)


def model_grid(volume: Volume, plans: tuple[AxisPlan, AxisPlan, AxisPlan]) -> Volume:
    """An empty model-space volume (columns, rows, slices plans) laid out in ``volume``'s physical space.

    Each model axis is centred on the input field of view, then shifted to the nearest whole input
    voxel, so a model axis with the input spacing lands exactly on input voxel centres.
    """
    axes = volume.direction_matrix()
    sizes = volume.array.shape[::-1]
    origin = np.asarray(volume.origin, dtype=float)
    for plan in plans:
        source_size, source_spacing = sizes[plan.source], volume.spacing[plan.source]
        crop = np.floor((source_size * source_spacing - plan.size * plan.spacing) / (2 * source_spacing) + 0.5)
        lowest = (crop - 0.5) * source_spacing + plan.spacing / 2
        first = lowest if plan.sign > 0 else lowest + (plan.size - 1) * plan.spacing
        origin = origin + first * axes[:, plan.source]
    direction = np.stack([plan.sign * axes[:, plan.source] for plan in plans], axis=1)
    shape = tuple(plan.size for plan in reversed(plans))
    return Volume(np.zeros(shape, np.float32), tuple(plan.spacing for plan in plans), tuple(origin),
                  tuple(direction.ravel()))


def anatomical_axes(volume: Volume) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """``(source index axis, sign)`` for the model columns, rows and slices (see the module docstring)."""
    axes = volume.direction_matrix()
    slices = 2 - slice_axis_nearest_si(volume)
    in_plane = [axis for axis in range(3) if axis != slices]
    columns = max(in_plane, key=lambda axis: (abs(axes[0, axis]), -axis))
    rows = next(axis for axis in in_plane if axis != columns)
    return tuple((axis, 1 if np.dot(axes[:, axis], target) >= 0 else -1)
                 for axis, target in zip((columns, rows, slices), MODEL_FRAME.T))


def _plans(volume: Volume, recipe: str, size: int) -> tuple[AxisPlan, AxisPlan, AxisPlan]:
    """The model axes for ``recipe``: which input axis each follows, how many voxels, which spacing."""
    sizes, spacing = volume.array.shape[::-1], volume.spacing
    if recipe == "none":
        if sizes[:2] != (size, size):
            raise InputError(f"recipe 'none' needs a volume already at {size} x {size} in-plane, but this one is "
                             f"{sizes[1]} x {sizes[0]}; use recipe 'generic' (or the dataset's recipe)")
        return tuple(AxisPlan(axis, 1, sizes[axis], spacing[axis]) for axis in range(3))
    (columns, column_sign), (rows, row_sign), (slices, slice_sign) = anatomical_axes(volume)
    if recipe == "generic":
        side = max(sizes[columns] * spacing[columns], sizes[rows] * spacing[rows]) / size
        in_plane = (side, side)
        slice_plan = AxisPlan(slices, slice_sign, sizes[slices], spacing[slices])
    elif recipe == "chaos-t2":
        in_plane = (CHAOS_SPACING[0] * TRAINING_SIZE / size,) * 2
        extent = sizes[slices] * spacing[slices]
        slice_plan = AxisPlan(slices, slice_sign, max(1, round(extent / CHAOS_SPACING[2])), CHAOS_SPACING[2])
    else:  # synapse-ct
        in_plane = tuple((sizes[axis] - 2 * round(sizes[axis] * SYNAPSE_BORDER)) * spacing[axis] / size
                         for axis in (columns, rows))
        slice_plan = AxisPlan(slices, slice_sign, sizes[slices], spacing[slices])
    return (AxisPlan(columns, column_sign, size, in_plane[0]), AxisPlan(rows, row_sign, size, in_plane[1]),
            slice_plan)


def _intensity_window(array: np.ndarray, recipe: str) -> tuple[float, float]:
    """The intensity range a recipe keeps; values outside are clipped before resampling."""
    if recipe == "generic":
        low, high = np.percentile(array, GENERIC_PERCENTILES)
    elif recipe == "chaos-t2":
        low, high = array.min(), np.percentile(array, CHAOS_TOP_PERCENTILE)
    elif recipe == "synapse-ct":
        low, high = SYNAPSE_HU_WINDOW
    else:
        low, high = array.min(), array.max()
    return float(low), float(high)


def _min_max(array: np.ndarray) -> np.ndarray:
    """Per-volume min-max to [-1, 1] (a constant volume becomes all -1)."""
    low, high = float(array.min()), float(array.max())
    scale = 2.0 / (high - low) if high > low else 0.0
    return ((array - low) * scale - 1.0).astype(np.float32)


def _resample(array: np.ndarray, source: Volume, target: Volume, interpolator: int, default: float) -> np.ndarray:
    """``array`` (on ``source``'s grid) sampled at ``target``'s voxel centres; identical grids are copied."""
    if source.same_grid(target, tolerance=1e-9):
        return array.copy()
    dtype = array.dtype
    image = source.with_array(array.astype(np.uint8) if dtype.kind == "b" else array).to_image()
    reference = target.to_image()
    resampled = sitk.Resample(image, reference, sitk.Transform(), interpolator, default, image.GetPixelID())
    return sitk.GetArrayFromImage(resampled).astype(dtype)


def _checked(labels: np.ndarray, shape: tuple[int, ...], grid: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != shape:
        raise InputError(f"labelmap shape {labels.shape} does not match the {grid} grid {shape}")
    return labels
