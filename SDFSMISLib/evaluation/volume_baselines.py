"""What 3D Slicer gives for free, on a whole volume: the baselines a propagation result is compared with.

:func:`copy_along_plan` copies, for every slice a propagation predicted, the mask of the support slice that
propagation assigned to it (same range, same assignment), so the two differ only in what the network adds.
:func:`fill_between_labelmap` is the Segment Editor's Fill between slices on a volume's own annotated slices.
Both return labelmaps on the query's own grid, as :func:`~SDFSMISLib.inference.propagation.propagate` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..inference.options import PropagationResult
from ..io.volumes import Volume, slice_axis_nearest_si
from .baselines import copy_nearest_support, fill_between_slices


def copy_along_plan(result: PropagationResult) -> Volume:
    """Copy-nearest on exactly the slices and assignment of ``result``: the query's own annotated slices stay
    as painted, every predicted slice takes its assigned support mask (their majority vote in k-shot)."""
    supports = result.supports
    labels = np.zeros_like(result.model_labels)
    for label, plan in result.plans.items():
        sources = [supports.query_labels[s] == label for s in plan.annotated_slices] + \
            [supports.support_labels[s] == label for s in plan.support_slices]
        copied = copy_nearest_support(len(plan.predicted_slices), plan.assignment, np.stack(sources))
        for index, mask in zip(plan.predicted_slices, copied):
            labels[index][mask] = label
        for index in plan.annotated_slices:
            labels[index][supports.query_labels[index] == label] = label
    return supports.query.labels_to_original(labels.astype(result.labelmap.array.dtype))


def fill_between_labelmap(annotation: Volume, labels: Sequence[int]) -> Volume:
    """Fill between slices for each of ``labels`` of ``annotation`` (a few slices painted, along the axis
    nearest superior-inferior); a voxel claimed by two labels goes to the later one."""
    axis = slice_axis_nearest_si(annotation)
    painted = np.moveaxis(np.rint(annotation.array).astype(np.int32), axis, 0)
    filled = np.zeros_like(painted)
    for label in labels:
        slices = np.flatnonzero((painted == label).any(axis=(1, 2)))
        filled[fill_between_slices(painted.shape, slices, painted[slices] == label)] = label
    return annotation.with_array(np.moveaxis(filled, 0, axis).astype(np.uint8))
