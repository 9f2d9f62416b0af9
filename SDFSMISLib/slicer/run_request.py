"""What the panel asks the logic for and what it gets back: plain values, no MRML access of their own.

:class:`RunRequest` is the panel's choice of nodes and options; :class:`PreparedRun` a run between
``prepareRun`` and ``finishRun`` (:mod:`SDFSMISLib.slicer.logic`); :class:`RunSummary` what a finished run wrote.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from ..inference.postprocess import Threshold
from ..io.volumes import Volume
from . import mrml_bridge as bridge
from .worker import ModelRequest, PropagationJob

RANGE_MODES = ("automatic", "slices", "roi")


class OverwriteRequired(InputError):
    """The output segmentation already holds segments of these names; run again with ``overwrite=True``."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        super().__init__(f"the output segmentation already has segment(s) {', '.join(self.names)}; replace them, "
                         "or choose a new output segmentation")


@dataclass(frozen=True)
class SegmentAnnotation:
    """Where a support segment is annotated, and which slices the protocol would annotate next."""

    segmentId: str
    name: str
    slices: tuple[int, ...]  # stored slice indices holding the segment
    suggested: dict[str, int] = field(default_factory=dict)  # "top" / "middle" / "bottom" -> stored slice index

    @property
    def missing(self) -> dict[str, int]:
        """Suggested slices not annotated yet."""
        return {where: index for where, index in self.suggested.items() if index not in self.slices}

    def summary(self) -> str:
        """One line for the panel's segment list."""
        if not self.slices:
            return f"{self.name}: no annotated slice - paint it on one slice near the organ's middle"
        text = f"{self.name}: slice{'s' if len(self.slices) > 1 else ''} {compact_ranges(self.slices)}"
        if self.missing:
            text += "; suggested next: " + ", ".join(f"{where} {index}" for where, index in self.missing.items())
        return text


@dataclass(frozen=True)
class RunRequest:
    """What the panel chose. ``supportVolume`` may be the query (same-patient mode); ``outputSegmentation``
    ``None`` creates a new segmentation. ``rangeMode``: automatic, slices (``firstSlice``..``lastSlice``,
    stored indices of the query) or roi (the S extent of ``queryRoi``, a markups ROI node)."""

    supportVolume: Any
    supportSegmentation: Any
    segmentIds: Sequence[str]
    queryVolume: Any
    model: ModelRequest
    outputSegmentation: Any = None
    rangeMode: str = "automatic"
    firstSlice: int = 0
    lastSlice: int = 0
    queryRoi: Any = None
    kShot: bool = False
    threshold: float = Threshold().value
    largestComponent: bool = True
    batchSize: int = 0  # 0 = sized for the device
    overwrite: bool = False


@dataclass(frozen=True)
class PreparedRun:
    """A run between :meth:`SDFSMISLogic.prepareRun` and :meth:`SDFSMISLogic.finishRun`."""

    request: RunRequest
    job: PropagationJob
    styles: dict[int, bridge.SegmentStyle]  # label -> the support segment's look
    replaced: dict[int, str]  # label -> segment ID in the output that the result replaces
    correctedSlices: tuple[int, ...] = ()
    previous: Volume | None = None  # a correction run: the output's labels (query grid) when it started


@dataclass(frozen=True)
class RunSummary:
    """What a finished run wrote, for the status line."""

    segmentation: Any
    segmentIds: dict[str, str]  # segment name -> ID in the output
    voxels: dict[str, int]  # segment name -> voxels in the result
    seconds: float
    predictedSlices: int
    reusedModel: bool

    def text(self) -> str:
        empty = [name for name, count in self.voxels.items() if count == 0]
        text = (f"{len(self.voxels)} segment(s) propagated in {self.seconds:.1f} s ({self.predictedSlices} slice "
                f"predictions{', model already loaded' if self.reusedModel else ''})")
        return text + (f"; empty: {', '.join(empty)} - check the range and the supports" if empty else "")


def compact_ranges(indices: Sequence[int]) -> str:
    """``1, 3-6, 9`` for ``[1, 3, 4, 5, 6, 9]``."""
    parts, indices = [], sorted(indices)
    start = previous = indices[0]
    for index in [*indices[1:], None]:
        if index is not None and index == previous + 1:
            previous = index
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if index is not None:
            start = previous = index
    return ", ".join(parts)
