"""Which query slices to segment for an organ: given by the user, or estimated without ground truth.

The paper's protocol (and every few-shot paper it compares with) segments exactly the query slices whose
*ground truth* holds the organ (:func:`SDFSMISLib.evaluation.protocol.labelled_slices`). A user has no ground truth, so
the range is either given or estimated here. Everything works on model slices (the preprocessed ``[S, H, W]``
stack, slices ordered inferior to superior) and their physical positions in mm along the slice normal
(:meth:`SDFSMISLib.data.preprocessing.Preprocessed.slice_positions`); a slice of thickness ``d`` at position ``p``
covers ``[p - d/2, p + d/2]``.

Given ranges (:class:`RangeRequest`, the command line's ``--range``):

* ``A:B`` -- slice indices, 0-based and inclusive, along the query's slice axis *as stored in the file* (the
  array axis nearest superior-inferior: array axis 0, Slicer's K index, for an axial volume), whatever the
  order the model sees them in.
* ``120mm:260mm`` -- the superior-inferior patient coordinate (LPS z, which is also RAS S: the ``S`` value
  Slicer shows), inclusive; a slice belongs to the range when its centre does.

Estimated ranges (:func:`estimate_query_slices`), the design:

1. **Support organ extent.** Protocol supports sit at the centres of ``n`` equal chunks of the organ, at
   ``(2i + 1) / 2n`` of its extent, so the organ reaches half a support gap beyond the outer ones:
   ``[s_1 - g/2, s_n + g/2]`` with ``g`` the mean gap ``(s_n - s_1) / (n - 1)``. A single support gives no
   gap; the organ is then taken to be as tall as its annotated cross-section is wide (its larger in-plane
   extent in mm), centred on the support slice.
2. **Body-normalised mapping.** Patients differ in height and scans in coverage, so a position is expressed
   as a fraction of the body's superior-inferior extent in its own volume (the body: voxels above a low
   intensity threshold, largest region per slice, as :func:`SDFSMISLib.data.supervoxels.foreground_mask`; a slice
   counts when the body covers at least :data:`BODY_MIN_FRACTION` of its largest cross-section). The support
   organ's extent maps to the query through these fractions. For an abdominal scan the body usually fills
   every slice, so this is "the same fraction of the scan". In same-patient mode positions compare directly.
3. **Query slices**: those whose centre lies in the mapped extent (always at least the nearest slice), widened
   by an optional margin (a fraction of the extent on each side) for step 4 to trim.
4. **Model evidence** (optional, applied by :mod:`SDFSMISLib.inference.propagation`, see :func:`trim_collapsed_ends`):
   end slices outside the span of the supports whose predicted area (foreground above 0.5) collapses below
   :data:`COLLAPSE_FRACTION` of the largest are dropped.

:func:`evaluation_query_slices` runs steps 1-3 on the model-space arrays of the evaluation, and
:func:`range_agreement` compares the result with the ground-truth range. Measured on the 20 CHAOS-T2
patients (all 380 ordered support/query pairs, protocol supports): slice-range IoU 0.78 for the liver and
0.61 for the kidneys and the spleen, with 3-4 slices missed and as many extra per organ. On 12 of them,
centring on the scan instead of scaling gave the same, and aligning 1-D profiles (mean intensity or body area
per slice) by a scale and shift did worse (IoU 0.42-0.71), so the simple mapping stays.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..data.preprocessing import Preprocessed
from ..errors import InputError
from ..io.volumes import slice_heights

#: A slice belongs to the body's extent when the body covers this share of its largest cross-section.
BODY_MIN_FRACTION = 0.1
#: Step 4: an end slice's predicted area "collapses" below this share of the largest predicted area.
COLLAPSE_FRACTION = 0.2
_NUMBER = r"-?\d+(?:\.\d*)?"
_RANGE = re.compile(rf"^\s*(?P<low>{_NUMBER})\s*(?P<unit>mm)?\s*:\s*(?P<high>{_NUMBER})\s*(?P<unit2>mm)?\s*$")
_RANGE_HELP = "write A:B with slice indices (e.g. 10:25) or A mm:B mm on the S axis (e.g. 120mm:260mm)"

Extent = tuple[float, float]


@dataclass(frozen=True)
class RangeRequest:
    """A query range the user gives: slice indices along the stored slice axis, or S coordinates in mm."""

    low: float
    high: float
    unit: Literal["index", "mm"]

    @classmethod
    def parse(cls, text: str) -> RangeRequest:
        """``"10:25"`` (indices) or ``"120mm:260mm"`` (S coordinate); the ends may come in either order."""
        match = _RANGE.match(text)
        if match is None or (match["unit"] is None) != (match["unit2"] is None):
            raise InputError(f"range {text!r} is not understood; {_RANGE_HELP}")
        low, high = sorted((float(match["low"]), float(match["high"])))
        unit = "index" if match["unit"] is None else "mm"
        if unit == "index" and not (low.is_integer() and high.is_integer()):
            raise InputError(f"range {text!r}: slice indices must be whole numbers; {_RANGE_HELP}")
        return cls(low, high, unit)

    def model_slices(self, prepared: Preprocessed) -> np.ndarray:
        """The model slices (ascending indices into ``prepared.image``) this range covers."""
        if self.unit == "index":  # a quarter slice of slack: model slices of a resampling recipe fall between
            low, high = _stored_index_extent(self.low, self.high, prepared)
            tolerance = 0.25 * prepared.model.spacing[2]
            positions = prepared.slice_positions()
            chosen = np.flatnonzero((positions >= low - tolerance) & (positions <= high + tolerance))
        else:
            centres = slice_heights(prepared.model)
            chosen = np.flatnonzero((centres >= self.low - 1e-3) & (centres <= self.high + 1e-3))
        if chosen.size == 0:
            centres = slice_heights(prepared.model)
            raise InputError(f"range {self.low:g}:{self.high:g}{'mm' if self.unit == 'mm' else ''} holds no slice "
                             f"of the query (its slice centres run from S = {centres.min():.1f} to "
                             f"{centres.max():.1f} mm); give a range that overlaps the volume")
        return chosen


def _stored_index_extent(low: float, high: float, prepared: Preprocessed) -> Extent:
    """Positions (along the model slice normal) of stored slice indices ``low`` and ``high``."""
    original = prepared.original
    normal = prepared.model.direction_matrix()[:, 2]
    source = int(np.argmax(np.abs(original.direction_matrix().T @ normal)))  # index axis (i, j, k) along the normal
    count = original.array.shape[2 - source]
    if low < 0 or high >= count:
        raise InputError(f"slice range {low:g}:{high:g} is outside the query's {count} slices along its slice axis "
                         f"(array axis {2 - source}); use indices 0..{count - 1}")
    step = original.direction_matrix()[:, source] * original.spacing[source]
    ends = [float(np.dot(np.asarray(original.origin) + index * step, normal)) for index in (low, high)]
    return min(ends), max(ends)


def support_extent(positions: np.ndarray, widths_mm: np.ndarray | None = None) -> Extent:
    """Step 1: the organ's extent (mm) from the positions of its annotated support slices.

    ``widths_mm`` (the larger in-plane extent of each support mask) is needed only for a single support.
    """
    positions = np.sort(np.asarray(positions, dtype=float))
    if positions.size == 0:
        raise InputError("no annotated support slice; annotate the organ on at least one slice")
    if positions.size == 1:
        if widths_mm is None:
            raise InputError("one support slice needs its mask's width to guess the organ's extent; "
                             "annotate a second slice, or give the range")
        half = 0.5 * float(np.max(widths_mm))
    else:
        half = 0.5 * (positions[-1] - positions[0]) / (positions.size - 1)
    return positions[0] - half, positions[-1] + half


def mask_widths_mm(masks: np.ndarray, pixel_spacing: tuple[float, float]) -> np.ndarray:
    """The larger in-plane extent (mm) of each ``[K, H, W]`` mask's bounding box (rows, columns spacing)."""
    def extent_mm(present: np.ndarray, spacing: float) -> float:
        indices = np.flatnonzero(present)
        return float(indices[-1] - indices[0] + 1) * spacing if indices.size else 0.0

    return np.asarray([max(extent_mm(mask.any(axis=1), pixel_spacing[0]), extent_mm(mask.any(axis=0), pixel_spacing[1]))
                       for mask in np.asarray(masks, dtype=bool)])


def body_extent(image: np.ndarray, positions: np.ndarray) -> Extent:
    """Step 2: the body's superior-inferior extent (mm) in a ``[S, H, W]`` model image in [-1, 1]."""
    from ..data.supervoxels import foreground_mask  # numba: not at import, the Slicer panel lists slices with this

    body = foreground_mask((np.asarray(image, dtype=np.float32) + 1) * 127.5)
    areas = body.reshape(len(body), -1).sum(axis=1)
    inside = np.flatnonzero(areas >= BODY_MIN_FRACTION * max(int(areas.max()), 1))
    if inside.size == 0:  # a blank volume: fall back to the whole stack
        inside = np.arange(len(positions))
    thickness = _thickness(positions)
    return float(positions[inside].min()) - thickness / 2, float(positions[inside].max()) + thickness / 2


def map_extent(extent: Extent, source_body: Extent, target_body: Extent) -> Extent:
    """Step 2: ``extent`` in the source volume -> the same fractions of the body in the target volume."""
    scale = (target_body[1] - target_body[0]) / max(source_body[1] - source_body[0], 1e-6)
    return tuple(target_body[0] + (end - source_body[0]) * scale for end in extent)


def slices_in_extent(positions: np.ndarray, extent: Extent, margin: float = 0.0) -> np.ndarray:
    """Step 3: ascending indices of the slices whose centre lies in ``extent`` widened by ``margin`` x its length.

    An extent that falls between slice centres, or outside the stack, still gives the nearest slice.
    """
    positions = np.asarray(positions, dtype=float)
    widen = margin * (extent[1] - extent[0])
    low, high = extent[0] - widen, extent[1] + widen
    chosen = np.flatnonzero((positions >= low) & (positions <= high))
    if chosen.size == 0:
        chosen = np.array([int(np.argmin(np.abs(positions - (low + high) / 2)))])
    return chosen


def estimate_query_slices(query_image: np.ndarray, query_positions: np.ndarray, support_image: np.ndarray | None,
                          support_positions: np.ndarray, annotated: np.ndarray, widths_mm: np.ndarray | None = None,
                          margin: float = 0.0) -> np.ndarray:
    """Steps 1-3: the query slices estimated to hold the organ annotated on support slices ``annotated``.

    Args:
        query_image, support_image: ``[S, H, W]`` model images in [-1, 1]; ``support_image=None`` is
            same-patient mode (the support is the query volume: positions compare directly).
        query_positions, support_positions: each model slice's position (mm, increasing superiorly).
        annotated: indices of the support's annotated slices for this organ.
        widths_mm: each annotated mask's larger in-plane extent (mm), needed for a single support.
        margin: widen the estimate by this fraction of its length on each side (for evidence trimming).
    """
    extent = support_extent(np.asarray(support_positions)[annotated], widths_mm)
    if support_image is not None:
        extent = map_extent(extent, body_extent(support_image, support_positions),
                            body_extent(query_image, query_positions))
    return slices_in_extent(query_positions, extent, margin)


def trim_collapsed_ends(slices: np.ndarray, areas: np.ndarray, protected: tuple[int, int],
                        fraction: float = COLLAPSE_FRACTION) -> np.ndarray:
    """Step 4: drop end slices whose area is below ``fraction`` x the largest, never inside ``protected``.

    ``slices`` are ascending query slice indices and ``areas`` their predicted areas; ``protected`` is the
    inclusive span (slice indices) between the outermost supports, where the organ is known to be. Only a
    run at an end is dropped, so no hole opens in the organ.
    """
    slices, areas = np.asarray(slices), np.asarray(areas, dtype=float)
    keep = np.ones(len(slices), dtype=bool)
    small = (areas < fraction * areas.max(initial=0.0)) & ((slices < protected[0]) | (slices > protected[1]))
    for order in (np.arange(len(slices)), np.arange(len(slices))[::-1]):
        for index in order:
            if not small[index]:
                break
            keep[index] = False
    return slices[keep]


def evaluation_query_slices(support_image: np.ndarray, support_slices: np.ndarray, query_image: np.ndarray,
                            support_spacing: tuple[float, float, float],
                            query_spacing: tuple[float, float, float],
                            support_masks: np.ndarray | None = None, margin: float = 0.0) -> np.ndarray:
    """The realistic query range for the evaluation, from model-space arrays (no query ground truth used).

    Args:
        support_image, query_image: ``[S, H, W]`` model images (``PatientData.image``), slice 0 inferior.
        support_slices: the support's annotated slice indices for the organ (the protocol's support slices).
        support_spacing, query_spacing: model spacing in array order ``(k, j, i)`` (``PatientData.spacing``).
        support_masks: ``[K, H, W]`` masks of those slices; needed only for a single support slice.

    Compare the result with :func:`SDFSMISLib.evaluation.protocol.labelled_slices` of the query through
    :func:`range_agreement`, or predict on it to see what a realistic range costs in Dice.
    """
    support_positions = np.arange(len(support_image)) * support_spacing[0]
    query_positions = np.arange(len(query_image)) * query_spacing[0]
    widths = None if support_masks is None else mask_widths_mm(support_masks, support_spacing[1:])
    return estimate_query_slices(query_image, query_positions, support_image, support_positions,
                                 np.asarray(support_slices), widths, margin)


def range_agreement(estimated: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """How well an estimated range matches the ground-truth one: IoU of the slice sets, slices missed and extra."""
    estimated, truth = set(np.asarray(estimated).tolist()), set(np.asarray(truth).tolist())
    union = estimated | truth
    return {"iou": len(estimated & truth) / len(union) if union else 1.0,
            "missed": float(len(truth - estimated)), "extra": float(len(estimated - truth))}


def _thickness(positions: np.ndarray) -> float:
    """Slice spacing of an evenly spaced stack (1 mm for a single slice, whose thickness is unknown)."""
    return float(abs(positions[1] - positions[0])) if len(positions) > 1 else 1.0
