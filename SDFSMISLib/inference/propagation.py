"""Segment a whole query volume from annotated support slices: every label, on the query's own grid.

This is what the command line (``sdfsmis segment``), the demo and the Slicer module call. Supports come
from two places, alone or together:

* **a support patient**: a support volume with a mask in which any number of slices carry labels; the
  annotated slices are found automatically (per label: the slices holding it);
* **the query itself** (same-patient mode, or corrections after a first run): a mask on the query grid with
  a few slices annotated. These slices (those holding any propagated label) are ground truth for all the
  propagated labels: they come back exactly as annotated and are not predicted. So annotate every label
  present on a slice you annotate, or propagate labels annotated on different slices in separate runs.

**Assignment.** Each label is propagated from its own support slices. Every query slice of the label's
range gets a relative position ``(rank + 0.5) / C`` in the range of ``C`` slices, and each support slice a
position on the same scale: a slice of the query at its own rank (so same-patient positions compare
physically), a support-patient slice ``i`` of ``n`` at the centre of chunk ``i`` when the range is cut into
``n`` equal chunks (``placement="chunks"``, the paper's protocol: chunk ``i`` uses support slice ``i``), or
at its relative place in the support organ's estimated extent (``placement="extent"``, for supports
annotated at arbitrary heights). Each query slice then uses the nearest support
(:func:`SDFSMISLib.inference.support_assignment.nearest_support_assignment`; ties go to the query's own
slices, then to the lower one). With protocol supports this is exactly
:func:`SDFSMISLib.evaluation.protocol.query_chunks`; a slice the user corrects becomes one more support
and, with the range kept (``query_slices``), only the query slices nearer to it than to any other support
change. ``k_shot`` uses all support slices of a label as one set instead.

**Range.** Given (indices or mm, :class:`SDFSMISLib.inference.query_range.RangeRequest`), kept from an earlier result
(``query_slices``), or estimated per label by :mod:`SDFSMISLib.inference.query_range` (from the support patient's
annotated slices when it has the label, else from the query's own), then optionally trimmed where the
predicted area collapses at its ends.

**Geometry.** All volumes go through one preprocessing recipe (``generic`` by default: slices along the axis
nearest superior-inferior, square pixels, exact inverse); the work is done in that model space, and the
labels come back on exactly the query grid (:meth:`SDFSMISLib.data.preprocessing.Preprocessed.labels_to_original`).

**Cost.** The VAE encodes each query slice once for all labels; each support slice is encoded once per label
and reused by every query slice assigned to it; query slices run in batches sized for the device, halved on
a GPU out-of-memory error. Overlapping labels: a voxel goes to the label with the highest foreground
probability. The same input on the same device gives the same output (no sampling at inference).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from ..data.preprocessing import Preprocessed, preprocess
from ..errors import InputError
from ..io.grid_placement import place_on_grid
from ..io.volumes import Volume, slice_axis_nearest_si
from ..model.network import SDFSMISNet
from ..progress import ProgressCallback
from .options import LabelPlan, Placement, PropagationOptions, PropagationResult, Supports
from .query_range import estimate_query_slices, mask_widths_mm, support_extent, trim_collapsed_ends
from .slice_prediction import encode_queries, masks_by_chunk, predict_foreground_maps
from .support_assignment import nearest_support_assignment, relative_positions


def propagate(model: SDFSMISNet, query: Volume, support_mask: Volume, support: Volume | None = None,
              options: PropagationOptions = PropagationOptions(), progress: ProgressCallback | None = None,
              query_mask: Volume | None = None) -> PropagationResult:
    """Segment ``query`` from annotated slices (see the module docstring).

    Args:
        model: from :func:`load_model` or :func:`SDFSMISLib.load_checkpoint`.
        query: the volume to segment.
        support_mask: labelmap on the grid of ``support`` in which a few slices are annotated (0 = background);
            with ``support=None`` (or the query itself) it is on the query grid: same-patient mode.
        support: the support patient's volume.
        progress: ``(done, total)`` slices; returning ``False`` cancels
            (:class:`SDFSMISLib.inference.slice_prediction.Cancelled`).
        query_mask: with a support patient, slices of the query annotated (corrected) by the user.
    """
    started = time.perf_counter()
    inputs = check_inputs(query, support_mask, support, query_mask, options.labels)
    labels = inputs.labels
    prepared = preprocess(query, options.recipe, model.config.image_size)
    own_labels = None if inputs.query_mask is None else _model_labels(prepared, inputs.query_mask)
    supports = Supports(prepared, query_labels=own_labels)
    if inputs.support is not None:
        prepared_support = preprocess(inputs.support, options.recipe, model.config.image_size)
        supports = Supports(prepared, prepared_support, _model_labels(prepared_support, inputs.support_mask),
                            own_labels)
    plans = plan_propagation(supports, labels, options)
    model_labels, foreground = _predict(model, supports, plans, options, progress)
    labelmap = prepared.labels_to_original(model_labels.astype(_label_dtype(labels)))
    if inputs.query_mask is not None:
        labelmap = _restore_annotated(labelmap, inputs.query_mask, labels)
    probabilities = _probability_maps(prepared, foreground, model_labels, supports, plans) \
        if options.probabilities else {}
    return PropagationResult(labelmap, model_labels, supports, plans, time.perf_counter() - started, probabilities)


@dataclass(frozen=True)
class Inputs:
    """Checked inputs: each mask on exactly its volume's grid, and the labels to propagate."""

    query: Volume
    labels: list[int]
    query_mask: Volume | None = None  # the query's own annotations: ground truth slices
    support: Volume | None = None  # another patient
    support_mask: Volume | None = None


def check_inputs(query: Volume, support_mask: Volume, support: Volume | None = None, query_mask: Volume | None = None,
                 labels: Sequence[int] | None = None) -> Inputs:
    """Check everything :func:`propagate` takes before any heavy work (the command line calls it before loading
    the model); an :class:`~SDFSMISLib.errors.InputError` names the problem and the fix."""
    same_patient = support is None or support is query or (
        support.same_grid(query) and np.array_equal(support.array, query.array))
    if same_patient and query_mask is not None:
        raise InputError("a query mask goes with a support patient; in same-patient mode put every annotation "
                         "in the support mask")
    own_mask, other_mask = (support_mask, None) if same_patient else (query_mask, support_mask)
    own_mask = None if own_mask is None else _mask_on_grid(own_mask, query, "query")
    other_mask = None if other_mask is None else _mask_on_grid(other_mask, support, "support")
    _check_finite(query, "query")
    if not same_patient:
        _check_finite(support, "support")
    chosen = _labels_to_propagate(own_mask, other_mask, labels)
    return Inputs(query, chosen, own_mask, None if same_patient else support, other_mask)


def plan_propagation(supports: Supports, labels: Sequence[int],
                     options: PropagationOptions = PropagationOptions()) -> dict[int, LabelPlan]:
    """For each label: its supports, its query range, the slices to predict and the support each one uses.

    Cheap (no network): the Slicer module can show the plan, and tests check the assignment rules on it.
    """
    ground_truth = supports.ground_truth_slices(labels)
    return {label: _plan(label, supports, ground_truth, options) for label in labels}


def _plan(label: int, supports: Supports, ground_truth: np.ndarray, options: PropagationOptions) -> LabelPlan:
    own, other = supports.annotated(label)
    if own.size == 0 and other.size == 0:
        raise InputError(f"label {label} is lost when the annotations are brought to the model grid (too small, "
                         "or outside the image); annotate a larger region")
    source, slices = _range(label, supports, own, other, options)
    slices = np.union1d(slices, own)
    predicted = np.setdiff1d(slices, ground_truth)
    positions = relative_positions(slices, slices)
    own_positions = positions[np.searchsorted(slices, own)]
    predicted_positions = positions[np.searchsorted(slices, predicted)]
    support_positions = np.concatenate([own_positions, _placed(supports, other, label, slices, options.placement)])
    assignment = None if options.k_shot or predicted.size == 0 else nearest_support_assignment(
        predicted_positions, support_positions)
    return LabelPlan(own, other, slices, predicted, assignment, support_positions, predicted_positions, source)


def _range(label: int, supports: Supports, own: np.ndarray, other: np.ndarray,
           options: PropagationOptions) -> tuple[str, np.ndarray]:
    """The label's query range and where it came from."""
    query = supports.query
    if label in options.query_slices:
        return "slices", _checked_slices(options.query_slices[label], len(query.image), label)
    if options.query_range is not None:
        return "given", options.query_range.model_slices(query)
    source, labels, annotated = (supports.support, supports.support_labels, other) if other.size else (
        query, supports.query_labels, own)
    slices = estimate_query_slices(query.image, query.slice_positions(), source.image if other.size else None,
                                   source.slice_positions(), annotated, _widths(source, labels, annotated, label),
                                   options.margin)
    return "estimated", slices


def _widths(source: Preprocessed, labels: np.ndarray, slices: np.ndarray, label: int) -> np.ndarray:
    """In-plane size (mm) of the label's masks on ``slices``: a single support's height guess."""
    return mask_widths_mm(labels[slices] == label, (source.model.spacing[1], source.model.spacing[0]))


def _placed(supports: Supports, other: np.ndarray, label: int, slices: np.ndarray, placement: Placement) -> np.ndarray:
    """Relative positions in the query range of the support patient's slices ``other`` of ``label``."""
    if other.size == 0:
        return np.empty(0)
    if placement == "chunks":
        bounds = np.linspace(0, len(slices), len(other) + 1).astype(int)
        return (bounds[:-1] + bounds[1:]) / (2 * len(slices))
    if placement != "extent":
        raise InputError(f"unknown support placement {placement!r}; use 'chunks' or 'extent'")
    positions = supports.support.slice_positions()[other]
    low, high = support_extent(positions, _widths(supports.support, supports.support_labels, other, label))
    return (positions - low) / (high - low)


def _predict(model: SDFSMISNet, supports: Supports, plans: dict[int, LabelPlan], options: PropagationOptions,
             progress: ProgressCallback | None) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Model-space labelmap (every label predicted on its slices, overlaps to the most probable label) and
    each label's foreground maps on its predicted slices."""
    query = supports.query
    merged = MostProbableLabel(query.image.shape)
    foregrounds: dict[int, np.ndarray] = {}
    union = np.unique(np.concatenate([plan.predicted_slices for plan in plans.values()]))
    if union.size == 0:  # every slice of every range is annotated: nothing to predict
        return merged.labels, foregrounds
    counter = _ProgressCounter(progress, len(union) + sum(len(plan.predicted_slices) for plan in plans.values()))
    latents = encode_queries(model, query.image[union], options.batch_size, counter.stage())
    for label, plan in plans.items():
        if plan.predicted_slices.size == 0:
            continue
        images, masks = _support_stack(supports, plan, label)
        rows = torch.as_tensor(np.searchsorted(union, plan.predicted_slices), device=latents.device)
        foreground = predict_foreground_maps(model, query.image[plan.predicted_slices], images, masks,
                                             plan.assignment, options.batch_size, counter.stage(),
                                             query_latents=latents[rows])
        predicted = masks_by_chunk(foreground, plan.assignment, options.threshold, options.largest_component)
        if plan.range_source == "estimated" and options.refine_range:
            predicted = _trim_range(predicted, foreground, plan)
        merged.add(label, plan.predicted_slices, predicted, foreground)
        foregrounds[label] = foreground
    return merged.labels, foregrounds


#: A voxel keeps its foreground probability within this many model pixels (in-plane) of its label's mask.
PROBABILITY_RIM = 2


def _probability_maps(prepared: Preprocessed, foregrounds: dict[int, np.ndarray], model_labels: np.ndarray,
                      supports: Supports, plans: dict[int, LabelPlan]) -> dict[int, Volume]:
    """Each label's foreground probability on the query grid, consistent with the labelmap.

    The value is the network's foreground map (the decoded mask latent, in [0, 1]) within
    :data:`PROBABILITY_RIM` pixels of the label's final mask, so the soft rim around the boundary is kept
    while what post-processing dropped (other components, trimmed end slices, voxels another label won)
    reads 0. Annotated query slices read 1 inside the annotation and 0 elsewhere. The binary labelmap is
    not this map thresholded at 0.5: the released rule thresholds at a fraction of each chunk's maximum.
    Maps go to the query grid with linear interpolation.
    """
    rim = ndimage.generate_binary_structure(3, 1)
    rim[0] = rim[2] = False  # in-plane only: slices are predicted independently
    maps = {}
    for label, plan in plans.items():
        mask = model_labels == label
        probability = np.zeros(model_labels.shape, dtype=np.float32)
        if label in foregrounds:
            probability[plan.predicted_slices] = foregrounds[label]
        probability *= ndimage.binary_dilation(mask, rim, iterations=PROBABILITY_RIM)
        if plan.annotated_slices.size:
            probability[plan.annotated_slices] = supports.query_labels[plan.annotated_slices] == label
        maps[label] = prepared.values_to_original(np.clip(probability, 0.0, 1.0))
    return maps


class MostProbableLabel:
    """A labelmap built one label at a time: a voxel claimed by several labels goes to the most probable one.

    Ties keep the label added first.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.labels = np.zeros(shape, dtype=np.int32)
        self.probability = np.zeros(shape, dtype=np.float32)

    def add(self, label: int, slices: np.ndarray, masks: np.ndarray, foreground: np.ndarray) -> None:
        """Claim ``masks`` (``[N, H, W]`` on ``slices``) for ``label`` where its foreground beats the current one."""
        wins = masks & (foreground > self.probability[slices])
        self.probability[slices] = np.where(wins, foreground, self.probability[slices])
        self.labels[slices] = np.where(wins, label, self.labels[slices])


def _support_stack(supports: Supports, plan: LabelPlan, label: int) -> tuple[np.ndarray, np.ndarray]:
    """Images and masks ``[K, H, W]`` of the label's supports, in the order the assignment indexes."""
    own = (supports.query.image[plan.annotated_slices], supports.query_labels[plan.annotated_slices] == label) \
        if plan.annotated_slices.size else None
    other = (supports.support.image[plan.support_slices], supports.support_labels[plan.support_slices] == label) \
        if plan.support_slices.size else None
    parts = [part for part in (own, other) if part is not None]
    return np.concatenate([part[0] for part in parts]), np.concatenate([part[1] for part in parts])


def _trim_range(masks: np.ndarray, foreground: np.ndarray, plan: LabelPlan) -> np.ndarray:
    """Empty the end slices whose predicted area collapses, outside the span of the supports."""
    order = np.arange(len(masks))
    span = plan.support_positions.min(), plan.support_positions.max()
    inside = np.flatnonzero((plan.predicted_positions >= span[0]) & (plan.predicted_positions <= span[1]))
    protected = (int(inside.min()), int(inside.max())) if inside.size else (len(masks), -1)
    kept = trim_collapsed_ends(order, (foreground > 0.5).reshape(len(masks), -1).sum(axis=1), protected)
    trimmed = masks.copy()
    trimmed[np.setdiff1d(order, kept)] = False
    return trimmed


class _ProgressCounter:
    """One ``(done, total)`` progress over several stages that each count from zero."""

    def __init__(self, callback: ProgressCallback | None, total: int) -> None:
        self.callback, self.total, self.done = callback, total, 0

    def stage(self) -> ProgressCallback | None:
        """A callback for the next stage, which reports its own ``(done, total)``."""
        if self.callback is None:
            return None
        last = [0]

        def report(done: int, _total: int) -> bool | None:
            self.done += done - last[0]
            last[0] = done
            return self.callback(self.done, self.total)

        return report


def _restore_annotated(labelmap: Volume, own_mask: Volume, labels: Sequence[int]) -> Volume:
    """Each query slice holding a propagated label is exactly its annotation (of those labels)."""
    axis = slice_axis_nearest_si(labelmap)
    result = np.moveaxis(labelmap.array.copy(), axis, 0)
    annotation = np.moveaxis(np.rint(own_mask.array), axis, 0)
    kept = np.isin(annotation, labels)
    annotated = kept.any(axis=(1, 2))
    result[annotated] = np.where(kept[annotated], annotation[annotated], 0).astype(result.dtype)
    return labelmap.with_array(np.moveaxis(result, 0, axis))


def _model_labels(prepared: Preprocessed, mask: Volume) -> np.ndarray:
    return prepared.labels_to_model(np.rint(mask.array).astype(np.int32))


def _mask_on_grid(mask: Volume, volume: Volume, name: str) -> Volume:
    """``mask`` on exactly ``volume``'s grid, voxel for voxel (3D Slicer saves segmentations cropped to their
    extent, converters flip axes); a grid whose voxel centres differ is refused."""
    return place_on_grid(mask, volume, f"{name} mask", "save the mask with that volume as reference geometry, or "
                         "resample it onto it", f"the {name} volume")


def _labels_to_propagate(own_mask: Volume | None, other_mask: Volume | None,
                         requested: Sequence[int] | None) -> list[int]:
    """The label ids to propagate, after checking the masks' values."""
    present: set[int] = set()
    for mask, name in ((own_mask, "query"), (other_mask, "support")):
        if mask is not None:
            present |= _mask_labels(mask, name)
    if not present:
        raise InputError("the support mask is empty: annotate the organ(s) on a few slices of the support volume")
    if requested is None:
        return sorted(present)
    missing = sorted(set(requested) - present)
    if missing:
        raise InputError(f"label(s) {', '.join(map(str, missing))} are not annotated (the masks hold "
                         f"{', '.join(map(str, sorted(present)))}); annotate them, or choose among those")
    return sorted(set(requested))


def _mask_labels(mask: Volume, name: str) -> set[int]:
    """The label ids in ``mask``, which must hold whole numbers >= 0."""
    values = np.asarray(mask.array)
    if not np.all(np.isfinite(values)) or not np.array_equal(np.rint(values), values) or values.min() < 0:
        raise InputError(f"the {name} mask holds values that are not label ids (whole numbers >= 0); "
                         "give a labelmap, 0 for background")
    return {int(value) for value in np.unique(values) if value != 0}


def _check_finite(volume: Volume, name: str) -> None:
    if not np.all(np.isfinite(volume.array)):
        raise InputError(f"the {name} volume contains NaN or infinite voxels; replace them (e.g. with the volume's "
                         "minimum) before segmenting")


def _checked_slices(slices: Sequence[int], count: int, label: int) -> np.ndarray:
    slices = np.unique(np.asarray(slices, dtype=int))
    if slices.size == 0 or slices.min() < 0 or slices.max() >= count:
        raise InputError(f"query slices for label {label} must be model slice indices in 0..{count - 1}")
    return slices


def _label_dtype(labels: Sequence[int]) -> type:
    return np.uint8 if max(labels) <= np.iinfo(np.uint8).max else np.uint16
