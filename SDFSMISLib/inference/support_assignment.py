"""Which support slice each query slice uses: the nearest one in relative position within the organ.

The few-shot protocol (:mod:`SDFSMISLib.evaluation.protocol`) cuts the query organ into equal chunks, one per
support slice; a user in 3D Slicer annotates any slices, and corrects some after a run. Relative positions
put both on one scale, and the nearest support reproduces the protocol's chunks when the supports sit at
their centres.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def relative_positions(slice_indices: np.ndarray, labelled: np.ndarray) -> np.ndarray:
    """Position in [0, 1] of each of ``slice_indices`` within the sorted ``labelled`` slices: (rank + 0.5) / C.

    Each of the ``C`` labelled slices stands for an equal share of the organ's extent and sits at the centre
    of its share, so the query and the support patient are compared on the same scale whatever their slice
    counts.
    """
    labelled, slice_indices = np.sort(np.asarray(labelled)), np.asarray(slice_indices)
    if not np.isin(slice_indices, labelled).all():
        raise InputError("a slice index is not among the labelled slices; pass slices taken from `labelled`")
    return (np.searchsorted(labelled, slice_indices) + 0.5) / labelled.size


def nearest_support_assignment(query_positions: np.ndarray, support_positions: np.ndarray) -> np.ndarray:
    """For each query, the index of the support nearest in relative position (both given in [0, 1]).

    Positions come from :func:`relative_positions`. When the supports sit at the centres of the protocol's
    chunks this reproduces :func:`SDFSMISLib.evaluation.protocol.query_chunks` exactly (the tests check it for
    many slice counts). :func:`SDFSMISLib.evaluation.protocol.support_slice_indices` puts them exactly at
    (2i + 1) / (2 * shots) when the support has an odd multiple of ``shots`` labelled slices (9 with 3 shots),
    and those are the chunk centres whenever the query's slice count is a multiple of ``shots``. Otherwise the
    supports lie up to one slice off the
    centres and the chunk boundaries move to the midpoints between them: a few query slices near a boundary
    switch support, more when the support organ spans few slices. Ties go to the lower support index.
    """
    query_positions = np.asarray(query_positions, dtype=float)
    support_positions = np.asarray(support_positions, dtype=float)
    if support_positions.size == 0:
        raise InputError("no support positions given; annotate at least one support slice")
    return np.argmin(np.abs(query_positions[:, None] - support_positions[None, :]), axis=1)
