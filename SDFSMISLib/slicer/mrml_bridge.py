"""Between 3D Slicer's MRML nodes and :class:`~SDFSMISLib.io.volumes.Volume`: geometry, segments and results.

Why a module of its own: the library works on ``Volume`` (ITK's LPS frame, ``[K, J, I]`` arrays), Slicer on
volume and segmentation nodes in RAS. Every crossing goes through here, so the LPS/RAS flip, the segment
styles and the reference geometry are handled once, and the module logic stays testable:

* it uses only MRML and VTK calls that exist both in the Slicer application and in ``slicer-core`` (Slicer's
  Qt-free libraries), never ``slicer.mrmlScene``, ``slicer.modules`` or ``slicer.app``: temporary nodes go
  into the scene of the node they serve. CI runs it against real MRML;
* a segment is read on the grid of a chosen volume through Slicer's own export
  (``vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode``), so any source representation (a
  painted labelmap, a closed surface imported from a model) and any parent transform between the
  segmentation and the volume give the voxels Slicer itself would show;
* results are written in the query volume's local frame into a segmentation under the query's parent
  transform, with the query as reference geometry, so they overlay the query exactly.

Geometry: a Slicer node's IJK-to-RAS matrix has the RAS directions of the index axes (times the spacing) in
its columns and the RAS position of voxel (0, 0, 0) in its last column. The same voxel in LPS has its x and y
negated, so ``direction_LPS = diag(-1, -1, 1) @ direction_RAS`` and likewise for the origin.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from ..errors import InputError
from ..io.labels import TISSUE, Code, Structure
from ..io.volumes import Volume

#: Multiplying an RAS vector by this gives the LPS vector and back.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
BINARY_LABELMAP = "Binary labelmap"
_SCALAR_NODE_CLASSES = ("vtkMRMLScalarVolumeNode", "vtkMRMLLabelMapVolumeNode")
_TERMINOLOGY_FIELDS = 7  # context ~ category ~ type ~ type modifier ~ region context ~ region ~ region modifier
#: Name of the nodes made for a moment while reading segments (removed again, with all Slicer adds to them).
TEMPORARY = "__SDFSMIS_temporary__"


@dataclass(frozen=True)
class SegmentStyle:
    """What a propagated segment inherits from its support segment: name, colour (RGB in [0, 1]) and Slicer's
    terminology tag (empty when the segment has none). Kept as floats and as the raw tag so a result looks
    exactly like the segment the user painted."""

    name: str
    colour: tuple[float, float, float]
    terminology: str = ""

    def matches(self, other: SegmentStyle, tolerance: float = 1e-5) -> bool:
        """Same name and terminology, and the same colour to the 6 digits a ``.seg.nrrd`` stores."""
        return (self.name, self.terminology) == (other.name, other.terminology) and bool(
            np.allclose(self.colour, other.colour, rtol=0, atol=tolerance))

    def structure(self) -> Structure:
        """The :class:`~SDFSMISLib.io.labels.Structure` the exporters (DICOM-SEG) take for this segment."""
        colour = tuple(int(round(channel * 255)) for channel in self.colour)
        category, kind, modifier = _terminology_codes(self.terminology)
        return Structure(self.name, self.name, colour, category, kind, modifier)


def _terminology_codes(tag: str) -> tuple[Code, Code, Code | None]:
    """Category, type and type modifier of a ``TerminologyEntry`` tag; Slicer's default Tissue when absent."""
    fields = tag.split("~") if tag else []
    if len(fields) != _TERMINOLOGY_FIELDS:
        return TISSUE, TISSUE, None
    category, kind, modifier = (_code(field) for field in fields[1:4])
    return category or TISSUE, kind or TISSUE, modifier


def _code(field: str) -> Code | None:
    """``scheme^value^meaning`` as a :class:`Code`; ``None`` for the empty code ``^^``."""
    parts = field.split("^")
    if len(parts) != 3 or not parts[1]:
        return None
    scheme, value, meaning = parts
    return Code(value, scheme, meaning)


def ijk_to_ras(volume: Volume) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix of a volume's grid (what Slicer's volume nodes store)."""
    matrix = np.eye(4)
    matrix[:3, :3] = RAS_TO_LPS @ volume.direction_matrix() * np.asarray(volume.spacing)
    matrix[:3, 3] = RAS_TO_LPS @ np.asarray(volume.origin)
    return matrix


def grid_from_ijk_to_ras(matrix: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """Spacing, LPS origin and LPS direction (``Volume`` conventions) of a 4x4 IJK-to-RAS matrix."""
    axes = np.asarray(matrix, dtype=float)[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        raise InputError("the volume's IJK-to-RAS matrix has a zero-length axis; fix its spacing (Volumes module)")
    direction = RAS_TO_LPS @ (axes / spacing)
    origin = RAS_TO_LPS @ np.asarray(matrix, dtype=float)[:3, 3]
    return tuple(spacing), tuple(origin), tuple(direction.ravel())


def node_ijk_to_ras(node: vtk.vtkObject) -> np.ndarray:
    """A volume node's IJK-to-RAS matrix (in its own, local frame) as a numpy array."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def volume_from_node(node: vtk.vtkObject) -> Volume:
    """A copy of a scalar volume node's voxels with its geometry (local frame, LPS)."""
    if node is None or node.GetImageData() is None:
        raise InputError("the volume has no image data; load or select a volume")
    if node.GetClassName() not in _SCALAR_NODE_CLASSES or node.GetImageData().GetNumberOfScalarComponents() != 1:
        raise InputError(f"{node.GetName()} is not a scalar (grey-level) volume; pick a scalar volume, or extract "
                         "one component (Vector to Scalar Volume module)")
    spacing, origin, direction = grid_from_ijk_to_ras(node_ijk_to_ras(node))
    return Volume(np.array(slicer.util.arrayFromVolume(node)), spacing, origin, direction)


def update_node_from_volume(node: vtk.vtkObject, volume: Volume) -> vtk.vtkObject:
    """Give a volume node ``volume``'s voxels and geometry; returns the node."""
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras(volume)))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(volume.array))
    return node


def add_volume_node(scene: vtk.vtkObject, volume: Volume, name: str,
                    class_name: str = "vtkMRMLScalarVolumeNode") -> vtk.vtkObject:
    """A new volume node in ``scene`` holding ``volume`` (with default display nodes)."""
    node = scene.AddNewNodeByClass(class_name, name)
    update_node_from_volume(node, volume)
    node.CreateDefaultDisplayNodes()
    return node


def segment_style(segmentation_node: vtk.vtkObject, segment_id: str) -> SegmentStyle:
    """Name, colour and terminology tag of a segment."""
    segment = _segment(segmentation_node, segment_id)
    tag = vtk.reference("")
    has_tag = segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), tag)
    return SegmentStyle(segment.GetName(), tuple(float(c) for c in segment.GetColor()), str(tag) if has_tag else "")


def segment_mask(segmentation_node: vtk.vtkObject, segment_id: str, reference_node: vtk.vtkObject) -> np.ndarray:
    """A segment's voxels on the grid of ``reference_node`` (a volume node): boolean ``[K, J, I]``.

    A segmentation without a binary labelmap (e.g. closed surfaces imported from models) is converted on a
    temporary copy at the reference volume's resolution, so the user's node is left as it is.
    """
    _segment(segmentation_node, segment_id)
    scene = _scene_of(segmentation_node)
    existing = _node_ids(scene)
    try:
        source = segmentation_node
        if not segmentation_node.GetSegmentation().ContainsRepresentation(BINARY_LABELMAP):
            source = _labelmap_copy(segmentation_node, reference_node)
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", TEMPORARY)
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        exported = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            source, ids, labelmap, reference_node, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
        if not exported:
            raise InputError(f"segment {segment_id!r} of {segmentation_node.GetName()} could not be brought to the "
                             f"grid of {reference_node.GetName()}; check that both are loaded and not transformed "
                             "by a non-linear transform")
        return np.array(slicer.util.arrayFromVolume(labelmap)) > 0
    finally:  # the export also adds a colour table and display nodes: everything new goes, the scene stays
        for node in [scene.GetNodeByID(node_id) for node_id in _node_ids(scene) - existing]:
            scene.RemoveNode(node)


def _node_ids(scene: vtk.vtkObject) -> set[str]:
    return {scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())}


def _labelmap_copy(segmentation_node: vtk.vtkObject, reference_node: vtk.vtkObject) -> vtk.vtkObject:
    """A temporary copy of a segmentation with a binary labelmap made on the reference volume's grid."""
    copy = _scene_of(segmentation_node).AddNewNodeByClass("vtkMRMLSegmentationNode", TEMPORARY)
    copy.GetSegmentation().DeepCopy(segmentation_node.GetSegmentation())
    copy.SetAndObserveTransformNodeID(segmentation_node.GetTransformNodeID())
    copy.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    if not copy.GetSegmentation().CreateRepresentation(BINARY_LABELMAP):
        _scene_of(segmentation_node).RemoveNode(copy)
        raise InputError(f"{segmentation_node.GetName()} cannot be converted to a binary labelmap; paint the "
                         "segments with the Segment Editor, or import them as a labelmap")
    return copy


def labelmap_from_segments(segmentation_node: vtk.vtkObject, segment_ids: Sequence[str],
                           reference_node: vtk.vtkObject) -> Volume:
    """The segments as one labelmap on the reference volume's grid: segment ``n`` of the list gets label
    ``n + 1``; where segments overlap, the later one in the list wins."""
    reference = volume_from_node(reference_node)
    labels = np.zeros(reference.array.shape, dtype=np.uint8 if len(segment_ids) < 256 else np.uint16)
    for label, segment_id in enumerate(segment_ids, start=1):
        labels[segment_mask(segmentation_node, segment_id, reference_node)] = label
    return reference.with_array(labels)


def write_segments(segmentation_node: vtk.vtkObject, labelmap: Volume, styles: Mapping[int, SegmentStyle],
                   segment_ids: Mapping[int, str] | None = None) -> dict[int, str]:
    """Write each label of ``labelmap`` (on the reference volume's grid, local frame) as a segment.

    Args:
        styles: label -> the segment's name, colour and terminology.
        segment_ids: label -> an existing segment to replace (keeping its ID, so a Segment Editor selection
            stays valid); other labels get new segments.

    Returns label -> segment ID. The caller decides whether replacing is allowed (see
    :mod:`SDFSMISLib.slicer.logic`); this function does what it is told.
    """
    segment_ids = dict(segment_ids or {})
    segmentation = segmentation_node.GetSegmentation()
    written = {}
    for label, style in styles.items():
        segment_id = segment_ids.get(label)
        if segment_id is None or segmentation.GetSegment(segment_id) is None:
            segment_id = segmentation.AddEmptySegment("", style.name, list(style.colour))
        _apply_style(segmentation.GetSegment(segment_id), style)
        image = _oriented_image(labelmap.with_array((labelmap.array == label).astype(np.uint8)))
        mode = slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE
        if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(image, segmentation_node,
                                                                                    segment_id, mode):
            raise InputError(f"segment {style.name!r} could not be written to {segmentation_node.GetName()}")
        written[label] = segment_id
    return written


def _apply_style(segment: vtk.vtkObject, style: SegmentStyle) -> None:
    """Name, colour and terminology as given, marked as chosen (not auto-generated), so Slicer does not rename
    or recolour the segment when a terminology is picked later."""
    segment.SetName(style.name)
    segment.SetNameAutoGenerated(False)
    segment.SetColor(*style.colour)
    segment.SetColorAutoGenerated(False)
    if style.terminology:
        segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), style.terminology)


def _oriented_image(volume: Volume) -> vtk.vtkObject:
    """A ``vtkOrientedImageData`` holding ``volume`` (its IJK-to-RAS as the image-to-world matrix)."""
    image = slicer.vtkOrientedImageData()
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras(volume)))
    image.SetDimensions(*volume.array.shape[::-1])
    array = np.ascontiguousarray(volume.array)
    image.AllocateScalars(numpy_support.get_vtk_array_type(array.dtype), 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = array.ravel()
    return image


def _segment(segmentation_node: vtk.vtkObject, segment_id: str) -> vtk.vtkObject:
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise InputError(f"{segmentation_node.GetName()} has no segment {segment_id!r}; pick one of its segments")
    return segment


def _scene_of(node: vtk.vtkObject) -> vtk.vtkObject:
    scene = node.GetScene()
    if scene is None:
        raise InputError(f"{node.GetName()} is not in a scene; add it to the scene first")
    return scene
