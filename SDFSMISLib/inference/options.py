"""What propagation takes and gives, without torch: the Slicer module builds options and reads results before
PyTorch is installed, and the worker process passes them across.

:class:`PropagationOptions` says how to propagate; :class:`PropagationResult` is the labelmap on the query grid
with the model-space plan behind it (per label: its supports, range and assignment), so a caller can draw
overlays, report ranges and rerun with the same range after a correction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from ..io.volumes import Volume
from .postprocess import Threshold

if TYPE_CHECKING:  # query_range needs numba and preprocessing SimpleITK's resampling: types only here
    from ..data.preprocessing import Preprocessed
    from .query_range import RangeRequest

Placement = Literal["chunks", "extent"]


@dataclass(frozen=True)
class PropagationOptions:
    """How to propagate; the defaults are the paper's protocol with an estimated query range.

    Attributes:
        labels: label ids to propagate; ``None`` = every label annotated.
        k_shot: all support slices of a label as one k-shot set instead of the nearest one per query slice.
        placement: where support-patient slices sit in the query range (see the module docstring).
        query_range: one range for every label (slice indices or S mm); ``None`` = estimated per label.
        query_slices: model slice indices per label (e.g. a previous result's ``query_slices``, to keep the
            range while the user corrects slices); wins over ``query_range`` for the labels it names.
        margin: widen an estimated range by this fraction of its length on each side.
        refine_range: drop end slices of an estimated range whose predicted area collapses.
        recipe: preprocessing recipe of all volumes (:data:`SDFSMISLib.data.preprocessing.RECIPES`).
        threshold, largest_component: post-processing of the foreground maps (the released rule).
        batch_size: query slices per network call; ``None`` sizes it for the device.
        probabilities: also return each label's foreground probability on the query grid
            (:attr:`PropagationResult.probabilities`, for a FRACTIONAL DICOM-SEG).
    """

    labels: Sequence[int] | None = None
    k_shot: bool = False
    placement: Placement = "chunks"
    query_range: RangeRequest | None = None
    query_slices: Mapping[int, Sequence[int]] = field(default_factory=dict)
    margin: float = 0.0
    refine_range: bool = True
    recipe: str = "generic"
    threshold: Threshold = Threshold()
    largest_component: bool = True
    batch_size: int | None = None
    probabilities: bool = False


@dataclass(frozen=True)
class Supports:
    """All annotations in model space: the support patient's and the query's own (either may be absent)."""

    query: Preprocessed
    support: Preprocessed | None = None  # another patient
    support_labels: np.ndarray | None = None  # [S', size, size] on support.model
    query_labels: np.ndarray | None = None  # [S, size, size] the query's own annotations (ground truth)

    def annotated(self, label: int) -> tuple[np.ndarray, np.ndarray]:
        """Model slices holding ``label``: (in the query's own annotations, in the support patient's)."""
        return tuple(np.empty(0, dtype=int) if labels is None else np.flatnonzero((labels == label).any(axis=(1, 2)))
                     for labels in (self.query_labels, self.support_labels))

    def ground_truth_slices(self, labels: Sequence[int]) -> np.ndarray:
        """Query slices annotated with any of ``labels``: returned as annotated, never predicted."""
        if self.query_labels is None:
            return np.empty(0, dtype=int)
        return np.flatnonzero(np.isin(self.query_labels, labels).any(axis=(1, 2)))


@dataclass(frozen=True)
class LabelPlan:
    """What propagation does for one label, in model slice indices.

    ``assignment[j]`` is the support of predicted slice ``j``: an index into ``annotated_slices`` (the
    query's own) followed by ``support_slices`` (the support patient's); ``None`` in k-shot mode.
    """

    annotated_slices: np.ndarray  # query slices annotated with this label (own supports)
    support_slices: np.ndarray  # support-patient slices annotated with this label
    query_slices: np.ndarray  # the query range (including the annotated slices)
    predicted_slices: np.ndarray  # the range minus every ground-truth slice
    assignment: np.ndarray | None
    support_positions: np.ndarray  # relative positions in the range, own then support-patient slices
    predicted_positions: np.ndarray
    range_source: str  # "given", "slices" (the query_slices option) or "estimated"


@dataclass(frozen=True)
class PropagationResult:
    """The labelmap on the query grid, plus the model-space data behind it (for overlays and reruns)."""

    labelmap: Volume  # on exactly the query grid; 0 = background
    model_labels: np.ndarray  # [S, size, size] labels in model space
    supports: Supports
    plans: dict[int, LabelPlan]
    seconds: float
    #: With ``PropagationOptions.probabilities``: label -> float32 map in [0, 1] on the query grid (see
    #: :func:`_probability_maps`); otherwise empty.
    probabilities: dict[int, Volume] = field(default_factory=dict)

    @property
    def predicted_slice_count(self) -> int:
        """Query slices the network segmented, summed over labels (for seconds per slice)."""
        return sum(len(plan.predicted_slices) for plan in self.plans.values())

    @property
    def query_slices(self) -> dict[int, np.ndarray]:
        """Each label's range: pass it as ``PropagationOptions.query_slices`` to keep it in a rerun."""
        return {label: plan.query_slices for label, plan in self.plans.items()}
