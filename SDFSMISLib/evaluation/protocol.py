"""Which slices are supports and which are queries: the SSL-ALPNet / ADNet / RPT test protocol.

Few-shot abdominal segmentation papers since SSL-ALPNet (Ouyang et al., ECCV 2020) share one test
protocol, and SD-FSMIS reports numbers under it, so our evaluation must pick exactly the same slices:

* One patient of each test fold is the support; the others are queries. RPT (``YazhouZhu19/RPT``
  ``dataloaders/datasets.py`` ``TestDataset.__init__``, inherited from ADNet ``sha168/ADNet``) sorts the
  fold's patients by id and takes the one at ``supp_idx`` (2 in the released test scripts).
* Only the slices whose ground truth contains the organ are evaluated (RPT ``TestDataset.__getitem__``:
  ``lbl.sum(axis=(1, 2)) > 0``).
* ``n`` support slices are taken from the support patient's labelled slices at the relative positions
  ``(2i + 1) / 2n`` -- 1/6, 1/2, 5/6 for three -- (SSL-ALPNet ``ManualAnnoDataset.get_support``, RPT
  ``TestDataset.get_support_index``).
* The query's labelled slices are cut into ``n`` equal chunks and chunk ``i`` is segmented with support
  slice ``i`` (RPT ``test.py``: ``np.linspace(0, C, n + 1).astype(int)`` chunk bounds).

SSL-ALPNet's ``validation.py`` assigns chunks slightly differently (``ValidationDataset.__getitem__``:
``(z - z_min) // ((z_max - z_min) / n)`` over every slice between the first and the last labelled one),
which can move a boundary slice into the neighbouring chunk. We follow RPT/ADNet, whose protocol and
numbers the SD-FSMIS paper compares with. For an organ on ``C`` contiguous slices the two rules agree when
``C`` leaves remainder 0 or 1 on division by ``n`` (30 or 31 slices with 3 parts, not 32).

:func:`SDFSMISLib.inference.support_assignment.nearest_support_assignment` generalises the chunk rule to
supports at arbitrary positions (a user annotating any slices in 3D Slicer): each query slice uses the support
nearest in relative position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from ..errors import InputError
from ..io.volumes import Volume, slice_axis_nearest_si

T = TypeVar("T")

#: RPT's released test scripts (``scripts/test_*.sh``) use the third patient of each fold as support.
RPT_SUPPORT_INDEX = 2


def labelled_slices(labels: np.ndarray, organ: int) -> np.ndarray:
    """Indices along axis 0 (the slice axis of a ``[K, J, I]`` array) of the slices that contain ``organ``.

    These are the query slices the protocol evaluates, and the slices the support is drawn from.
    Labels stored as float (as in the preprocessed CHAOS files) are compared exactly, so ids must be whole.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise InputError(f"labels must be a 3-D [K, J, I] array, got shape {labels.shape}; pass one label volume")
    return np.flatnonzero((labels == organ).any(axis=(1, 2)))


def support_slice_indices(labels: np.ndarray, organ: int, shots: int = 3) -> np.ndarray:
    """Slice indices of the ``shots`` support slices of ``organ``: at (2i + 1) / (2 * shots) of its labelled slices.

    With ``C`` labelled slices, shot ``i`` is labelled slice number ``floor((2i + 1) * C / (2 * shots))``, the
    integer form of SSL-ALPNet's ``int(pcts[i] * len(zlist))`` (``pcts = 1/2n + i * (1 - 1/n) / (n - 1)``);
    the two agree for every ``C`` (checked up to 400 slices and 7 shots). For 3 shots and an organ on slices
    10..39 this gives slices 15, 25 and 35.
    """
    if shots < 1:
        raise InputError(f"shots must be at least 1, got {shots}; use 1 or more support slices")
    slices = labelled_slices(labels, organ)
    if slices.size == 0:
        raise InputError(f"organ {organ} is not in the support labels; pick a support patient that contains it")
    positions = (2 * np.arange(shots) + 1) * slices.size // (2 * shots)
    return slices[positions]


def query_chunks(slice_indices: np.ndarray, parts: int) -> np.ndarray:
    """Chunk id (0 .. parts-1) of each query slice: the sorted slices are cut into ``parts`` near-equal runs.

    Chunk bounds are ``int(linspace(0, C, parts + 1))`` over the ``C`` query slices, as in RPT/ADNet
    ``test.py``, so with 32 slices and 3 parts the chunks hold 10, 11 and 11 slices. The ids follow the order
    of ``slice_indices`` after sorting and are returned in the input order.
    """
    if parts < 1:
        raise InputError(f"parts must be at least 1, got {parts}; use the number of support slices")
    slice_indices = np.asarray(slice_indices)
    bounds = np.linspace(0, slice_indices.size, parts + 1).astype(int)
    ranks = np.argsort(np.argsort(slice_indices, kind="stable"), kind="stable")
    return np.searchsorted(bounds, ranks, side="right") - 1


def test_support_and_queries(test_patients: Sequence[T], support_index: int = RPT_SUPPORT_INDEX) -> tuple[T, list[T]]:
    """Split one test fold into its support patient and its query patients, as RPT/ADNet do.

    ``test_patients`` is the fold in ascending patient-id order: RPT sorts the files by id and keeps those
    whose position is in the fold, so the wrap-around CHAOS fold {16..19, 0} is ordered 0, 16, 17, 18, 19
    and its support is position 17. The support is ``test_patients[support_index]``; the queries are the
    others in their order. (SSL-ALPNet picks its support by a separate ``support_idx`` setting.)
    """
    if not 0 <= support_index < len(test_patients):
        raise InputError(f"support index {support_index} is outside the fold of {len(test_patients)} patients; "
                         f"pick 0..{len(test_patients) - 1}")
    queries = [patient for index, patient in enumerate(test_patients) if index != support_index]
    return test_patients[support_index], queries


test_support_and_queries.__test__ = False  # a protocol function, not a pytest test


def protocol_support_mask(truth: Volume, organs: Sequence[int], shots: int = 3) -> Volume:
    """The support annotation the protocol gives: each organ's ground truth on its ``shots`` support slices."""
    axis = slice_axis_nearest_si(truth)
    labels = np.moveaxis(np.rint(truth.array).astype(np.int32), axis, 0)
    mask = np.zeros_like(labels)
    for organ in organs:
        for index in support_slice_indices(labels, organ, shots):
            mask[index][labels[index] == organ] = organ
    return truth.with_array(np.moveaxis(mask, 0, axis).astype(np.uint8))
