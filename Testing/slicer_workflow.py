"""The module's whole workflow on the bundled phantom patients, without the GUI, checking each step.

Why here and not in the test class: the same code runs inside 3D Slicer (``SDFSMISTest``, which a user can run
from the module's "Reload and Test" button) and in CI against ``slicer-core`` (``test_slicer_logic.py``), so
what CI checks is what Slicer runs. It plays a user: load a support patient with three annotated slices per
organ (the paper's protocol) and a query patient, run, refuse to overwrite, correct a slice and run again
(only the neighbourhood changes, the model is not loaded again), cancel a run, export ``.seg.nrrd``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import slicer

from SDFSMISLib.cli.inference import DEMO_SHOTS
from SDFSMISLib.data.phantom import bundled_phantoms
from SDFSMISLib.evaluation.metrics import dice
from SDFSMISLib.evaluation.protocol import protocol_support_mask
from SDFSMISLib.io.labels import structure
from SDFSMISLib.io.volumes import Volume, read_volume, slice_axis_nearest_si
from SDFSMISLib.slicer import mrml_bridge as bridge
from SDFSMISLib.slicer.logic import QUERY_SLICES_ATTRIBUTE, OverwriteRequired, RunRequest, SDFSMISLogic

SUPPORT_ID, QUERY_ID = 101, 102
#: Right kidney: the smallest organ of the phantoms (fewest slices), so the check is quick on a CPU.
DEFAULT_ORGANS = (2,)
MIN_DICE = 0.4  # the bundled tiny model on the phantoms; the README's demo reports what it reaches


@dataclass
class DemoScene:
    """The nodes a user would have after loading the data and painting the support slices."""

    support: Any
    supportSegmentation: Any
    query: Any
    queryTruth: Volume  # the phantom's ground truth, to score the result
    segmentIds: dict[int, str]  # organ label -> support segment ID


@dataclass
class DemoReport:
    """What the workflow measured (the checks have already passed when it is returned)."""

    dice: dict[str, float] = field(default_factory=dict)
    dice_after_correction: dict[str, float] = field(default_factory=dict)
    corrected_slices: tuple[int, ...] = ()
    changed_slices: list[int] = field(default_factory=list)
    output: Any = None


def load_demo_scene(scene: Any, organs: Sequence[int] = DEFAULT_ORGANS) -> DemoScene:
    """Support patient 101 with its truth on three slices per organ as segments, query patient 102 in a study."""
    folder = bundled_phantoms()
    support = read_volume(folder / f"image_{SUPPORT_ID}.nii.gz")
    annotated = protocol_support_mask(read_volume(folder / f"label_{SUPPORT_ID}.nii.gz"), organs, DEMO_SHOTS)
    support_node = bridge.add_volume_node(scene, support, f"Phantom {SUPPORT_ID}")
    query_node = bridge.add_volume_node(scene, read_volume(folder / f"image_{QUERY_ID}.nii.gz"), f"Phantom {QUERY_ID}")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"Phantom {SUPPORT_ID} annotations")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(support_node)
    styles = {organ: bridge.SegmentStyle(structure(organ).name, structure(organ).colour_fraction,
                                         structure(organ).terminology_tag()) for organ in organs}
    ids = bridge.write_segments(segmentation, annotated, styles)
    _put_in_study(query_node, f"Phantom {QUERY_ID}")
    truth = read_volume(folder / f"label_{QUERY_ID}.nii.gz")
    return DemoScene(support_node, segmentation, query_node, truth.with_array(np.rint(truth.array)), ids)


def run_demo_workflow(scene: Any, logic: SDFSMISLogic | None = None, organs: Sequence[int] = DEFAULT_ORGANS,
                      log: Any = print) -> DemoReport:
    """Every step of the module on the phantoms; an AssertionError names the first step that misbehaves."""
    logic = logic or SDFSMISLogic()
    demo = load_demo_scene(scene, organs)
    report = DemoReport()
    _check_annotations(logic, demo)
    request = RunRequest(demo.support, demo.supportSegmentation, list(demo.segmentIds.values()), demo.query,
                         logic.modelRequest(device="cpu"))
    loads = logic.worker.loads
    summary = logic.run(request)
    report.output = output = summary.segmentation
    report.dice = _scores(demo, output)
    log(f"first run: {summary.text()}; Dice {report.dice}")
    _check_result(demo, output, report.dice)
    _expect(logic.worker.loads == loads + 1, "the first run loads the model once")

    try:
        logic.run(RunRequest(**{**request.__dict__, "outputSegmentation": output}))
        raise AssertionError("a second run into the same output must ask before replacing its segments")
    except OverwriteRequired as error:
        _expect(sorted(error.names) == sorted(structure(o).name for o in organs), "the refusal names the segments")

    report.corrected_slices, before = _correct_slices(logic, demo, output)
    ranges = output.GetAttribute(QUERY_SLICES_ATTRIBUTE)
    summary = logic.run(RunRequest(**{**request.__dict__, "outputSegmentation": output, "overwrite": True}))
    _expect(summary.reusedModel and logic.worker.loads == loads + 1, "a second run reuses the loaded model")
    _expect(output.GetAttribute(QUERY_SLICES_ATTRIBUTE) == ranges, "a correction run keeps the query ranges")
    after = _labels(demo, output)
    axis = slice_axis_nearest_si(demo.queryTruth)
    corrected = list(report.corrected_slices)
    _expect(np.array_equal(np.take(after, corrected, axis), np.take(_truth_labels(demo, organs), corrected, axis)),
            "the corrected slices come back exactly as corrected (also one corrected to empty)")
    changed = np.any(np.moveaxis(after != before, axis, 0).reshape(after.shape[axis], -1), axis=1)
    report.changed_slices = [int(s) for s in np.flatnonzero(changed)]
    runs = np.split(np.flatnonzero(changed), np.flatnonzero(np.diff(np.flatnonzero(changed)) > 1) + 1)
    _expect(all(set(run.tolist()) & set(corrected) for run in runs if run.size),
            f"only the neighbourhood of the corrected slices changes (changed: {report.changed_slices})")
    report.dice_after_correction = _scores(demo, output)
    log(f"correction of slices {corrected}: {summary.text()}; slices changed {report.changed_slices}; "
        f"Dice {report.dice_after_correction}")

    _check_cancel(logic, request, output)
    _check_export(logic, scene, output, demo.query)
    return report


def _check_annotations(logic: SDFSMISLogic, demo: DemoScene) -> None:
    for annotation in logic.segmentAnnotations(demo.supportSegmentation, demo.support):
        _expect(len(annotation.slices) == DEMO_SHOTS, f"{annotation.name} is annotated on {DEMO_SHOTS} slices")
        _expect(set(annotation.suggested) == {"top", "middle", "bottom"}, "top, middle and bottom are suggested")


def _check_result(demo: DemoScene, output: Any, scores: dict[str, float]) -> None:
    for organ, segment_id in demo.segmentIds.items():
        support_style = bridge.segment_style(demo.supportSegmentation, segment_id)
        result_id = output.GetSegmentation().GetSegmentIdBySegmentName(support_style.name)
        _expect(bool(result_id), f"the result has a segment {support_style.name}")
        _expect(bridge.segment_style(output, result_id) == support_style,
                "the result's segment has the support's name, colour and terminology")
        _expect(scores[support_style.name] >= MIN_DICE, f"{support_style.name} Dice {scores[support_style.name]:.2f}"
                f" >= {MIN_DICE}")
    reference = output.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())
    _expect(reference is demo.query, "the result's reference geometry is the query volume")
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(output.GetScene())
    _expect(hierarchy.GetItemParent(hierarchy.GetItemByDataNode(output))
            == hierarchy.GetItemParent(hierarchy.GetItemByDataNode(demo.query)), "the result is in the query's study")


def _correct_slices(logic: SDFSMISLogic, demo: DemoScene, output: Any) -> tuple[tuple[int, ...], np.ndarray]:
    """Play the user fixing, with the Segment Editor, the worst slice holding the organ and the worst slice
    wrongly holding it (erased), then registering both as corrected."""
    before = _labels(demo, output)
    truth = _truth_labels(demo, demo.segmentIds)
    axis = slice_axis_nearest_si(demo.queryTruth)
    wrong = np.moveaxis(before != truth, axis, 0).reshape(before.shape[axis], -1).sum(axis=1)
    holds_organ = np.moveaxis(truth > 0, axis, 0).reshape(len(wrong), -1).any(axis=1)
    worst = [int(np.argmax(np.where(where, wrong, -1))) for where in (holds_organ, ~holds_organ)]
    worst = sorted({index for index in worst if wrong[index] > 0})
    _expect(bool(worst), "the first run has a slice to correct")
    fixed = np.moveaxis(before.copy(), axis, 0)
    fixed[worst] = np.moveaxis(truth, axis, 0)[worst]
    names = {organ: structure(organ).name for organ in demo.segmentIds}
    ids = {organ: output.GetSegmentation().GetSegmentIdBySegmentName(name) for organ, name in names.items()}
    styles = {organ: bridge.segment_style(output, segment_id) for organ, segment_id in ids.items()}
    bridge.write_segments(output, demo.queryTruth.with_array(np.moveaxis(fixed, 0, axis).astype(np.uint8)), styles,
                          ids)
    for index in worst:
        registered = logic.addCorrectedSlice(output, demo.query, index)
    _expect(registered == tuple(worst), "the corrected slices are registered")
    return tuple(worst), before


def _check_cancel(logic: SDFSMISLogic, request: RunRequest, output: Any) -> None:
    before = output.GetSegmentation().GetNumberOfSegments()
    prepared = logic.prepareRun(RunRequest(**{**request.__dict__, "outputSegmentation": None}))
    handle = logic.startRun(prepared)
    handle.cancel()
    _expect(handle.wait(timeout=60), "a cancelled run ends")
    _expect(handle.status().stage == "cancelled", "a cancelled run ends as cancelled")
    try:
        logic.finishRun(prepared, handle)
        raise AssertionError("finishing a cancelled run must raise")
    except Exception as error:  # noqa: BLE001 - Cancelled lives in a torch module; its name is what matters
        _expect(type(error).__name__ == "Cancelled", f"a cancelled run reports Cancelled, not {error!r}")
    _expect(output.GetSegmentation().GetNumberOfSegments() == before, "a cancelled run writes nothing")


def _check_export(logic: SDFSMISLogic, scene: Any, output: Any, query: Any) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = logic.exportSegNrrd(output, Path(folder) / "result.seg.nrrd")
        read = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "exported")
        storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
        storage.SetFileName(str(path))
        _expect(bool(storage.ReadData(read)), "the exported .seg.nrrd reads back")
        ids = _segment_ids(output)
        _expect(_segment_ids(read) == ids, "the export keeps every segment")
        for segment_id in ids:
            _expect(bridge.segment_style(read, segment_id).matches(bridge.segment_style(output, segment_id)),
                    "the export keeps names, colours and terminology")
            _expect(np.array_equal(bridge.segment_mask(read, segment_id, query),
                                   bridge.segment_mask(output, segment_id, query)), "the export keeps the voxels")
        scene.RemoveNode(read)
        scene.RemoveNode(storage)


def _labels(demo: DemoScene, output: Any) -> np.ndarray:
    """The result as organ labels on the query grid."""
    labels = np.zeros(demo.queryTruth.array.shape, dtype=np.int32)
    for organ in demo.segmentIds:
        segment_id = output.GetSegmentation().GetSegmentIdBySegmentName(structure(organ).name)
        labels[bridge.segment_mask(output, segment_id, demo.query)] = organ
    return labels


def _truth_labels(demo: DemoScene, organs: Any) -> np.ndarray:
    truth = demo.queryTruth.array.astype(np.int32)
    return np.where(np.isin(truth, list(organs)), truth, 0)


def _scores(demo: DemoScene, output: Any) -> dict[str, float]:
    labels = _labels(demo, output)
    return {structure(organ).name: round(dice(labels == organ, demo.queryTruth.array == organ), 3)
            for organ in demo.segmentIds}


def _segment_ids(node: Any) -> list[str]:
    segmentation = node.GetSegmentation()
    return [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]


def _put_in_study(node: Any, patient: str) -> None:
    """Give the volume a patient and a study in the subject hierarchy, as a DICOM import does."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(node.GetScene())
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), patient), "Demo study")
    item = hierarchy.GetItemByDataNode(node) or hierarchy.CreateItem(study, node)
    hierarchy.SetItemParent(item, study)


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(f"workflow check failed: {what}")
