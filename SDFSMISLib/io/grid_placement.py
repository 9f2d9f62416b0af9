"""Put a labelmap onto a reference grid without resampling, when its voxels are the reference's voxels.

Why: the same voxels reach us on differently described grids. 3D Slicer saves a ``.seg.nrrd`` cropped to
the segments' extent; NIfTI converters store a DICOM series with ``k`` (or ``j``) reversed and the origin at
the other end; other tools permute axes. None of these moves a voxel centre, so the labels can be copied
exactly (an index permutation, flips and an integer offset) instead of interpolated. Any other grid (other
spacing, rotation, half-voxel shift) is refused: resampling labels is a decision for the user to make.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .volumes import Volume

#: Largest distance (in voxels) between a voxel centre and the reference lattice point it is matched to.
LATTICE_TOLERANCE = 1e-3


def place_on_grid(labels: Volume, reference: Volume, name: str = "labelmap",
                  fix: str = "resample it onto the reference grid (nearest neighbour) first",
                  reference_name: str = "the reference") -> Volume:
    """``labels`` on exactly ``reference``'s grid, voxel for voxel; zeros where ``labels`` does not reach.

    Raises :class:`InputError` naming ``name`` and ``fix`` when the voxel centres do not coincide, or when
    non-zero voxels fall outside the reference grid.
    """
    if labels.same_grid(reference, tolerance=1e-4):
        return reference.with_array(labels.array)
    reference_axes = reference.direction_matrix() * np.asarray(reference.spacing)
    label_axes = labels.direction_matrix() * np.asarray(labels.spacing)
    mapping = np.linalg.solve(reference_axes, label_axes)  # label index step -> reference index step
    offset = np.linalg.solve(reference_axes, np.subtract(labels.origin, reference.origin))
    permutation = np.argmax(np.abs(mapping), axis=0)  # reference index axis of each label index axis
    signs = np.sign(mapping[permutation, range(3)])
    expected = np.zeros((3, 3))
    expected[permutation, range(3)] = signs
    if (sorted(permutation) != [0, 1, 2] or not np.allclose(mapping, expected, atol=LATTICE_TOLERANCE)
            or not np.allclose(offset, np.rint(offset), atol=LATTICE_TOLERANCE)):
        raise InputError(f"the {name} (shape {labels.array.shape}, spacing {_round(labels.spacing)}, origin "
                         f"{_round(labels.origin)}) is not on the grid of {reference_name} (shape "
                         f"{reference.array.shape}, spacing {_round(reference.spacing)}, origin "
                         f"{_round(reference.origin)}): its voxel centres are not on that grid; {fix}")
    return reference.with_array(_copy(labels.array, permutation, signs, np.rint(offset).astype(int), reference, name,
                                      fix))


def _copy(array: np.ndarray, permutation: np.ndarray, signs: np.ndarray, offset: np.ndarray, reference: Volume,
          name: str, fix: str) -> np.ndarray:
    """Flip, transpose and paste ``array`` ([K, J, I] of the labels) into a zero array of the reference shape."""
    sizes = array.shape[::-1]  # index order (i, j, k)
    start = offset.copy()
    for axis in range(3):
        if signs[axis] < 0:
            array = np.flip(array, axis=2 - axis)
            start[permutation[axis]] -= sizes[axis] - 1
    # output array axis a is reference index axis 2 - a, which is label index axis c with permutation[c] == 2 - a
    source_index_axis = {int(permutation[c]): c for c in range(3)}
    array = np.transpose(array, [2 - source_index_axis[2 - a] for a in range(3)])
    target_shape = reference.array.shape
    low = start[::-1]  # array order (k, j, i)
    result = np.zeros(target_shape, dtype=array.dtype)
    inside_target = tuple(slice(max(lo, 0), min(lo + size, limit)) for lo, size, limit in
                          zip(low, array.shape, target_shape))
    inside_source = tuple(slice(max(-lo, 0), max(-lo, 0) + (part.stop - part.start)) for lo, part in
                          zip(low, inside_target))
    if any(part.stop <= part.start for part in inside_target):
        kept = np.zeros(0, dtype=array.dtype)
    else:
        kept = array[inside_source]
        result[inside_target] = kept
    if np.count_nonzero(kept) != np.count_nonzero(array):
        raise InputError(f"the {name} has labelled voxels outside the reference grid; it was made on another "
                         f"(larger or shifted) grid: {fix}")
    return result


def _round(values: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(round(float(value), 3) for value in values)
