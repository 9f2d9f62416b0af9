"""The 3D Slicer module's logic: everything the panel does, usable without the panel (scripts, tests, batch).

A run has three steps, so MRML is only ever touched on the thread that owns it (Slicer's GUI thread):

1. :meth:`SDFSMISLogic.prepareRun` copies the chosen volumes and segments out of MRML into plain arrays
   (:mod:`SDFSMISLib.slicer.mrml_bridge`), checks the output policy and builds a
   :class:`~SDFSMISLib.slicer.worker.PropagationJob`;
2. :meth:`SDFSMISLogic.startRun` hands the job to the persistent worker process
   (:mod:`SDFSMISLib.slicer.process_worker`), which loads the model once and keeps it, runs
   :func:`~SDFSMISLib.inference.propagation.propagate` and can be cancelled within a network layer;
3. :meth:`SDFSMISLogic.finishRun` writes the result as segments: one per propagated segment, named, coloured
   and tagged as in the support, reference geometry = the query volume, placed in the query's study.

Output policy: a segment that already exists in the output segmentation (same name) is never replaced unless
the caller says so (``overwrite=True``, after asking the user): :class:`OverwriteRequired` lists them.

Corrections: after a run the user fixes a query slice in the result, registers it with
:meth:`SDFSMISLogic.addCorrectedSlice` and runs again. The corrected slices become supports of the query
itself (ground truth, kept exactly), and each segment's query range of the previous run is kept, so only the
query slices nearer to a corrected slice than to any other support change (:mod:`SDFSMISLib.inference.propagation`);
a segment never grows beyond the slices it spanned (see :func:`_corrected_result`).

Slices are counted along the volume's stored axis nearest superior-inferior (K for an axial scan), as
:class:`~SDFSMISLib.inference.query_range.RangeRequest` counts them; "S" is Slicer's superior coordinate in mm.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import vtk

from ..errors import InputError
from ..inference.postprocess import Threshold
from ..io.atomic import atomic_output
from ..io.volumes import Volume, slice_axis_nearest_si, slice_centres, slice_heights
from ..progress import Cancelled
from ..weights.model_files import chosen_model
from . import mrml_bridge as bridge
from .run_request import RANGE_MODES, OverwriteRequired, PreparedRun, RunRequest, RunSummary, SegmentAnnotation
from .scene import dicom_source_files, local_to_world, place_in_study
from .process_worker import ProcessWorker, WorkerStopped
from .worker import CANCELLED, FAILED, FINISHED, JobHandle, ModelRequest, PropagationJob, PropagationWorker

if TYPE_CHECKING:  # query_range needs numba (via supervoxels), which Slicer installs only on first use
    from ..inference.query_range import RangeRequest

#: Output segmentation attributes: each segment's query range of the last run (model slices, by segment name)
#: and the query slices the user corrected (stored indices along the slice axis).
QUERY_SLICES_ATTRIBUTE = "SDFSMIS.QuerySlices"
CORRECTED_SLICES_ATTRIBUTE = "SDFSMIS.CorrectedSlices"
#: Suggested support slices: the centres of the top, middle and bottom thirds of the organ (the paper's protocol).
SUGGESTION_FRACTIONS = {"top": 5 / 6, "middle": 1 / 2, "bottom": 1 / 6}


class SDFSMISLogic:
    """All the module's work; Slicer-facing methods are camelCase as in Slicer's module template.

    Args:
        worker: what runs propagations and keeps the model: a worker process by default (as in Slicer); a
            :class:`~SDFSMISLib.slicer.worker.PropagationWorker` thread runs them in-process (scripts).
    """

    def __init__(self, worker: ProcessWorker | PropagationWorker | None = None) -> None:
        self.worker = worker or ProcessWorker()

    # ----------------------------------------------------------------------------------------------- annotations

    def segmentAnnotation(self, segmentationNode: Any, segmentId: str, volumeNode: Any,
                          volume: Volume | None = None) -> SegmentAnnotation:
        """The stored slices of ``volumeNode`` holding the segment, and the top / middle / bottom suggestion
        (``volume``: the node's voxels when the caller already copied them)."""
        volume = volume or bridge.volume_from_node(volumeNode)
        mask = bridge.segment_mask(segmentationNode, segmentId, volumeNode)
        mask = np.moveaxis(mask, slice_axis_nearest_si(volume), 0)
        slices = np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1))
        name = bridge.segment_style(segmentationNode, segmentId).name
        return SegmentAnnotation(segmentId, name, tuple(int(s) for s in slices),
                                 self._suggestions(volume, mask, slices))

    def segmentAnnotations(self, segmentationNode: Any, volumeNode: Any) -> list[SegmentAnnotation]:
        """:meth:`segmentAnnotation` of every segment, in the segmentation's order."""
        ids = vtk.vtkStringArray()
        segmentationNode.GetSegmentation().GetSegmentIDs(ids)
        volume = bridge.volume_from_node(volumeNode)  # once for every segment
        return [self.segmentAnnotation(segmentationNode, ids.GetValue(n), volumeNode, volume)
                for n in range(ids.GetNumberOfValues())]

    @staticmethod
    def _suggestions(volume: Volume, mask: np.ndarray, slices: np.ndarray) -> dict[str, int]:
        """The slices nearest the centres of the organ's thirds, its extent estimated from the annotated slices
        as the propagation estimates it (:func:`~SDFSMISLib.inference.query_range.support_extent`)."""
        from ..inference.query_range import mask_widths_mm, support_extent

        if slices.size == 0:
            return {}
        heights = slice_heights(volume)
        widths = mask_widths_mm(mask[slices], _in_plane_spacing(volume)) if slices.size == 1 else None
        low, high = support_extent(heights[slices], widths)
        return {where: int(np.argmin(np.abs(heights - (low + fraction * (high - low)))))
                for where, fraction in SUGGESTION_FRACTIONS.items()}

    @staticmethod
    def sliceCentreRas(volumeNode: Any, sliceIndex: int) -> tuple[float, float, float]:
        """World RAS of the centre of stored slice ``sliceIndex``: where to jump the slice views."""
        volume = bridge.volume_from_node(volumeNode)
        local = slice_centres(volume) @ bridge.RAS_TO_LPS.T  # LPS -> local RAS (the same flip both ways)
        if not 0 <= sliceIndex < len(local):
            raise InputError(f"slice {sliceIndex} is outside {volumeNode.GetName()}'s {len(local)} slices")
        return tuple(float(v) for v in (local_to_world(volumeNode) @ [*local[sliceIndex], 1.0])[:3])

    @staticmethod
    def sliceIndexAt(volumeNode: Any, worldRas: Sequence[float]) -> int:
        """The stored slice of ``volumeNode`` whose centre is nearest the world point (e.g. the Red view's)."""
        volume = bridge.volume_from_node(volumeNode)
        to_ijk = np.linalg.inv(local_to_world(volumeNode) @ bridge.ijk_to_ras(volume))
        index = (to_ijk @ [*worldRas, 1.0])[:3]
        axis = slice_axis_nearest_si(volume)
        count = volume.array.shape[axis]
        return int(np.clip(np.rint(index[2 - axis]), 0, count - 1))

    # ------------------------------------------------------------------------------------------------- the model

    @staticmethod
    def modelRequest(checkpoint: str = "", baseModel: str = "", dino: str = "", device: str = "auto",
                     dtype: str = "auto") -> ModelRequest:
        """The model the panel names; none of the three paths = the bundled default model."""
        return ModelRequest(chosen_model(checkpoint, baseModel, dino), device, dtype)

    @staticmethod
    def describeDevices() -> dict[str, str]:
        """device choice -> what it means here (GPU name and free memory). Imports torch: call it only after the
        dependencies are installed."""
        from ..devices import describe_device, resolve_device

        described = {}
        for choice in ("auto", "cuda", "cpu"):
            try:
                described[choice] = describe_device(resolve_device(choice))
            except InputError:
                described[choice] = "not available here"
        return described

    # ------------------------------------------------------------------------------------------------- the run

    def prepareRun(self, request: RunRequest) -> PreparedRun:
        """Step 1 (GUI thread): the chosen nodes as arrays, the output policy checked."""
        for node, what in ((request.queryVolume, "a query volume"), (request.supportSegmentation,
                                                                    "a support segmentation")):
            if node is None:
                raise InputError(f"select {what}")
        if not request.segmentIds:
            raise InputError("select at least one annotated segment to propagate")
        same_patient = request.supportVolume is None or request.supportVolume is request.queryVolume
        support_node = request.queryVolume if same_patient else request.supportVolume
        query = bridge.volume_from_node(request.queryVolume)
        support_mask = bridge.labelmap_from_segments(request.supportSegmentation, request.segmentIds, support_node)
        styles = {label: bridge.segment_style(request.supportSegmentation, segment_id)
                  for label, segment_id in enumerate(request.segmentIds, start=1)}
        self._check_annotated(support_mask, styles)
        replaced = self._replaced_segments(request, styles)
        corrected = self.correctedSlices(request.outputSegmentation) if replaced else ()
        previous = self._previous_result(request, styles, replaced) if corrected else None
        options = self._options(request, query, styles, corrected)
        query_mask = None if previous is None else previous.with_array(
            np.where(_slice_mask(previous, corrected), previous.array, 0).astype(previous.array.dtype))
        if query_mask is not None and same_patient:  # the query's own annotations all go in one mask
            support_mask = support_mask.with_array(np.where(_slice_mask(support_mask, corrected), query_mask.array,
                                                            support_mask.array))
            query_mask = None
        job = PropagationJob(request.model, query, support_mask, None if same_patient else bridge.volume_from_node(
            support_node), options, query_mask)
        return PreparedRun(request, job, styles, replaced, corrected, previous)

    def startRun(self, prepared: PreparedRun) -> JobHandle:
        """Step 2: queue the job on the worker; poll the handle (its status, then :meth:`finishRun`)."""
        return self.worker.submit(prepared.job)

    def finishRun(self, prepared: PreparedRun, handle: JobHandle) -> RunSummary:
        """Step 3 (GUI thread): write a finished job's result; a failed or cancelled one raises."""
        if handle.status().stage == CANCELLED:
            raise Cancelled("cancelled by the user; nothing was written")
        if handle.status().stage == FAILED:
            raise handle.error
        if handle.status().stage != FINISHED:
            raise InputError("the run has not finished yet; wait for it (or cancel it)")
        request, result = prepared.request, handle.result
        gone = [what for what, node in (("query volume", request.queryVolume),
                                         ("output segmentation", request.outputSegmentation))
                if node is not None and node.GetScene() is None]
        if gone:
            raise InputError(f"the {' and the '.join(gone)} were removed (or the scene was closed) while the run "
                             "finished; nothing was written: select them again and press Run")
        output = request.outputSegmentation or self._new_output(request.queryVolume)
        self._attach_to_query(output, request.queryVolume)
        labelmap = result.labelmap
        if prepared.previous is not None:
            labelmap = _corrected_result(labelmap, prepared.previous, prepared.correctedSlices)
        ids = bridge.write_segments(output, labelmap, prepared.styles, prepared.replaced)
        names = {label: style.name for label, style in prepared.styles.items()}
        ranges = {names[label]: [int(s) for s in slices] for label, slices in result.query_slices.items()}
        output.SetAttribute(QUERY_SLICES_ATTRIBUTE, json.dumps(ranges))
        output.SetAttribute(CORRECTED_SLICES_ATTRIBUTE, json.dumps(list(prepared.correctedSlices)))
        return RunSummary(output, {names[label]: segment_id for label, segment_id in ids.items()},
                          {names[label]: int((labelmap.array == label).sum()) for label in names},
                          result.seconds, result.predicted_slice_count, handle.reused_model)

    def run(self, request: RunRequest, progress: Callable[[Any], None] | None = None,
            poll_seconds: float = 0.05) -> RunSummary:
        """All three steps, blocking (scripts, tests): ``progress`` gets each :class:`JobStatus` polled."""
        prepared = self.prepareRun(request)
        handle = self.startRun(prepared)
        while not handle.wait(poll_seconds):
            if progress is not None:
                progress(handle.status())
        return self.finishRun(prepared, handle)

    @staticmethod
    def describeError(error: BaseException, outOfMemory: bool = False) -> tuple[str, str]:
        """(title, message) of the dialog for a failed run: the cause and what to do about it."""
        if isinstance(error, Cancelled):
            return "Cancelled", "The propagation was cancelled; nothing was written."
        if outOfMemory:
            return "GPU out of memory", (
                f"The GPU ran out of memory ({error}). Run on the CPU (slower, same result), or with a batch size "
                "of 1 and float16 precision; closing other programs that use the GPU also helps.")
        if isinstance(error, OverwriteRequired):
            return "Segments already exist", str(error)
        if isinstance(error, WorkerStopped):
            return "SD-FSMIS worker stopped", f"The propagation stopped: {error}."
        if isinstance(error, InputError):
            text = str(error).strip()
            return "Cannot run SD-FSMIS", text[:1].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")
        if isinstance(error, ImportError):
            return "Missing Python package", (f"{error}. Press Install dependencies (Model section), or restart "
                                              "Slicer if they were just installed.")
        if isinstance(error, OSError):
            return "File error", (f"{error}. Check that the file or folder exists, that you may write there, and "
                                  "that the disk has space.")
        return "SD-FSMIS failed", (f"Unexpected error: {type(error).__name__}: {error}. The details below and the "
                                   "Python console have the traceback; please report it with them.")

    # ------------------------------------------------------------------------------------------------ corrections

    @staticmethod
    def correctedSlices(outputSegmentation: Any) -> tuple[int, ...]:
        """The query slices the user registered as corrected in this output."""
        if outputSegmentation is None:
            return ()
        return tuple(json.loads(outputSegmentation.GetAttribute(CORRECTED_SLICES_ATTRIBUTE) or "[]"))

    def addCorrectedSlice(self, outputSegmentation: Any, queryVolume: Any, sliceIndex: int) -> tuple[int, ...]:
        """Register stored query slice ``sliceIndex``, corrected in the output, as a support of the next run."""
        if outputSegmentation is None or not outputSegmentation.GetAttribute(QUERY_SLICES_ATTRIBUTE):
            raise InputError("corrections apply to a propagated result: run first, fix a slice of the output "
                             "segmentation with the Segment Editor, then add it")
        query = bridge.volume_from_node(queryVolume)
        count = query.array.shape[slice_axis_nearest_si(query)]
        if not 0 <= sliceIndex < count:
            raise InputError(f"slice {sliceIndex} is outside the query's {count} slices")
        corrected = tuple(sorted({*self.correctedSlices(outputSegmentation), int(sliceIndex)}))
        outputSegmentation.SetAttribute(CORRECTED_SLICES_ATTRIBUTE, json.dumps(list(corrected)))
        return corrected

    # ---------------------------------------------------------------------------------------------------- export

    @staticmethod
    def exportSegNrrd(segmentationNode: Any, path: str | Path) -> Path:
        """Write the segmentation as Slicer does (``.seg.nrrd``: segments, colours, terminology), atomically."""
        path = Path(path)
        if not path.name.endswith(".seg.nrrd"):
            raise InputError(f"{path}: a segmentation file name ends with .seg.nrrd")
        scene = segmentationNode.GetScene()
        storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
        try:
            with atomic_output(path) as temporary:
                storage.SetFileName(str(temporary))
                if not storage.WriteData(segmentationNode):
                    raise InputError(f"{path} could not be written; check the folder exists and is writable")
        finally:
            scene.RemoveNode(storage)
        return path

    def exportDicomSeg(self, segmentationNode: Any, referenceVolume: Any, path: str | Path,
                       fileForInstance: Callable[[str], str] | None = None) -> Path:
        """Write a DICOM-SEG referencing the DICOM series ``referenceVolume`` was loaded from
        (:func:`SDFSMISLib.io.dicom_seg.write_dicom_seg`): SEMIAUTOMATIC when the user corrected slices, with the
        loaded model's checkpoint recorded.

        ``fileForInstance`` maps an SOP instance UID to its file (``slicer.dicomDatabase.fileForInstance`` in
        the application).
        """
        from ..io.dicom_seg import write_dicom_seg

        sources = dicom_source_files(referenceVolume, fileForInstance)
        ids = vtk.vtkStringArray()
        segmentationNode.GetSegmentation().GetSegmentIDs(ids)
        segment_ids = [ids.GetValue(n) for n in range(ids.GetNumberOfValues())]
        if not segment_ids:
            raise InputError(f"{segmentationNode.GetName()} has no segment to export")
        labelmap = bridge.labelmap_from_segments(segmentationNode, segment_ids, referenceVolume)
        structures = {label: bridge.segment_style(segmentationNode, segment_id).structure()
                      for label, segment_id in enumerate(segment_ids, start=1)}
        model = self.worker.loaded_model
        return write_dicom_seg(labelmap, sources, Path(path), structures,
                               checkpoint=model.files.checkpoint if model else None,
                               algorithm_type="SEMIAUTOMATIC" if self.correctedSlices(segmentationNode) else
                               "AUTOMATIC")

    # ------------------------------------------------------------------------------------------------- internals

    @staticmethod
    def _check_annotated(support_mask: Volume, styles: Mapping[int, bridge.SegmentStyle]) -> None:
        present = set(np.unique(support_mask.array).tolist())
        missing = [style.name for label, style in styles.items() if label not in present]
        if missing:
            raise InputError(f"segment(s) {', '.join(missing)} are not annotated on the support volume (or are "
                             "hidden by another selected segment); paint them on a few slices, or untick them")

    @staticmethod
    def _replaced_segments(request: RunRequest, styles: Mapping[int, bridge.SegmentStyle]) -> dict[int, str]:
        """label -> existing output segment of the same name; refused unless ``request.overwrite``."""
        output = request.outputSegmentation
        if output is None:
            return {}
        segmentation = output.GetSegmentation()
        existing = {label: segmentation.GetSegmentIdBySegmentName(style.name) for label, style in styles.items()}
        existing = {label: segment_id for label, segment_id in existing.items() if segment_id}
        if existing and not request.overwrite:
            raise OverwriteRequired([styles[label].name for label in existing])
        return existing

    @staticmethod
    def _previous_result(request: RunRequest, styles: Mapping[int, bridge.SegmentStyle],
                         replaced: Mapping[int, str]) -> Volume:
        """The output's segments (with the user's corrections) as a labelmap, labels as in the support."""
        if not all(label in replaced for label in styles):
            raise InputError("the output has corrected slices but not all the selected segments; select the same "
                             "segments as in the first run, or choose a new output segmentation")
        return bridge.labelmap_from_segments(request.outputSegmentation, [replaced[label] for label in styles],
                                             request.queryVolume)

    def _options(self, request: RunRequest, query: Volume, styles: Mapping[int, bridge.SegmentStyle],
                 corrected: Sequence[int]) -> dict[str, Any]:
        """PropagationOptions fields; a correction run keeps the previous ranges unless a range is given."""
        from ..inference.query_range import RangeRequest

        if request.rangeMode not in RANGE_MODES:
            raise InputError(f"unknown range mode {request.rangeMode!r}; use one of {', '.join(RANGE_MODES)}")
        options: dict[str, Any] = {
            "labels": sorted(styles), "k_shot": request.kShot, "threshold": Threshold("relative", request.threshold),
            "largest_component": request.largestComponent, "batch_size": request.batchSize or None}
        if request.rangeMode == "slices":
            options["query_range"] = RangeRequest(min(request.firstSlice, request.lastSlice),
                                                  max(request.firstSlice, request.lastSlice), "index")
        elif request.rangeMode == "roi":
            options["query_range"] = self._roi_range(request.queryRoi, request.queryVolume, query)
        elif corrected:
            previous = json.loads(request.outputSegmentation.GetAttribute(QUERY_SLICES_ATTRIBUTE) or "{}")
            options["query_slices"] = {label: previous[style.name] for label, style in styles.items()
                                       if style.name in previous}
        return options

    @staticmethod
    def _roi_range(roi: Any, queryNode: Any, query: Volume) -> RangeRequest:
        """The stored query slices a markups ROI spans along the slice axis (its corners, in the query's frame)."""
        from ..inference.query_range import RangeRequest

        if roi is None:
            raise InputError("the range mode is ROI but no ROI is selected; place a markups ROI over the organ")
        bounds = np.zeros(6)
        roi.GetRASBounds(bounds)
        corners = np.array([[x, y, z, 1.0] for x in bounds[0:2] for y in bounds[2:4] for z in bounds[4:6]])
        to_ijk = np.linalg.inv(local_to_world(queryNode) @ bridge.ijk_to_ras(query))
        axis = slice_axis_nearest_si(query)
        along = (to_ijk @ corners.T)[2 - axis]
        count = query.array.shape[axis]
        if along.max() < -0.5 or along.min() > count - 0.5:
            raise InputError(f"the ROI {roi.GetName()} does not overlap the query volume; move it over the organ")
        low, high = np.ceil(along.min()), np.floor(along.max())  # the slices whose centre is inside
        if low > high:  # a ROI thinner than a slice: the slice it is in
            low = high = np.rint(along.mean())
        return RangeRequest(float(np.clip(low, 0, count - 1)), float(np.clip(high, 0, count - 1)), "index")

    @staticmethod
    def _new_output(queryVolume: Any) -> Any:
        scene = queryVolume.GetScene()
        name = scene.GenerateUniqueName(f"{queryVolume.GetName()} SD-FSMIS")
        output = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        output.CreateDefaultDisplayNodes()
        return output

    @staticmethod
    def _attach_to_query(output: Any, queryVolume: Any) -> None:
        """Reference geometry = the query; same parent transform; same subject-hierarchy study (DICOM export
        needs the segmentation in the study of the series it references)."""
        if output.GetTransformNodeID() != queryVolume.GetTransformNodeID():
            if output.GetSegmentation().GetNumberOfSegments():
                raise InputError(f"{output.GetName()} is under a different transform than the query volume; "
                                 "choose a new output segmentation, or harden both transforms")
            output.SetAndObserveTransformNodeID(queryVolume.GetTransformNodeID())
        output.SetReferenceImageGeometryParameterFromVolumeNode(queryVolume)
        place_in_study(output, queryVolume)


def _in_plane_spacing(volume: Volume) -> tuple[float, float]:
    """Spacing (mm) of the two array axes other than the slice axis, in array order (rows, columns)."""
    axis = slice_axis_nearest_si(volume)
    rows, columns = (a for a in range(3) if a != axis)
    return volume.spacing[2 - rows], volume.spacing[2 - columns]


def _corrected_result(labelmap: Volume, previous: Volume, corrected: Sequence[int]) -> Volume:
    """A correction run's result as written: each label changes only within the slices it spanned before the run
    (first to last), and the corrected slices are exactly as corrected.

    Why: the run keeps each label's planned range, so every query slice keeps its support unless a corrected
    slice is nearer, but propagation trims collapsed end slices only in an estimated range; the ends the first
    run trimmed must not come back. A slice corrected to empty is not a support (it has no mask), so it is
    restored here.
    """
    axis = slice_axis_nearest_si(labelmap)
    new, old = np.moveaxis(labelmap.array.copy(), axis, 0), np.moveaxis(previous.array, axis, 0)
    for label in np.unique(new[new > 0]):
        held = np.flatnonzero((old == label).reshape(len(old), -1).any(axis=1))
        outside = np.ones(len(new), dtype=bool)
        if held.size:
            outside[held.min():held.max() + 1] = False
        new[outside[:, None, None] & (new == label)] = 0
    new[list(corrected)] = old[list(corrected)]
    return labelmap.with_array(np.moveaxis(new, 0, axis).astype(labelmap.array.dtype))


def _slice_mask(volume: Volume, slices: Sequence[int]) -> np.ndarray:
    """Boolean, broadcastable to ``volume.array``: true on the given stored slices."""
    axis = slice_axis_nearest_si(volume)
    chosen = np.zeros(volume.array.shape[axis], dtype=bool)
    chosen[list(slices)] = True
    shape = [1, 1, 1]
    shape[axis] = len(chosen)
    return chosen.reshape(shape)
