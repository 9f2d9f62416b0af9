"""The MRML bridge against real MRML (slicer-core): geometry, segments, styles and .seg.nrrd round trips."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from SDFSMISLib.io.labels import STRUCTURES, TISSUE
from SDFSMISLib.io.volumes import Volume, write_volume

bridge = pytest.importorskip("SDFSMISLib.slicer.mrml_bridge", reason="slicer-core is not installed",
                             exc_type=ImportError)
slicer = pytest.importorskip("slicer")


def oblique_flipped_volume(shape: tuple[int, int, int] = (9, 20, 24)) -> Volume:
    """A volume whose index axes are rotated about an oblique axis, with one axis flipped (det = -1)."""
    axis = np.array([1.0, 2.0, 0.5]) / np.linalg.norm([1.0, 2.0, 0.5])
    rotation = sitk.VersorTransform(tuple(axis), 0.4).GetMatrix()
    direction = np.reshape(rotation, (3, 3)) @ np.diag([1.0, -1.0, 1.0])
    array = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    return Volume(array, (0.7, 0.9, 2.5), (12.0, -30.0, 45.0), tuple(direction.ravel()))


def style(key: str) -> bridge.SegmentStyle:
    structure = STRUCTURES[key]
    return bridge.SegmentStyle(structure.name, structure.colour_fraction, structure.terminology_tag())


def box_labels(volume: Volume) -> Volume:
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    labels[2:6, 3:12, 4:15] = 1
    labels[4:8, 10:18, 12:20] = 2  # overlaps label 1: label 2 wins there
    return volume.with_array(labels)


def same_voxels_in_space(a: Volume, b: Volume) -> bool:
    """Whether every voxel of ``b`` lies on a voxel centre of ``a`` holding the same value (grids may differ by a
    flip or a permutation of the index axes)."""
    to_a = np.linalg.inv(bridge.ijk_to_ras(a)) @ bridge.ijk_to_ras(b)
    k, j, i = np.indices(b.array.shape).reshape(3, -1)
    index = (to_a @ np.stack([i, j, k, np.ones_like(i)]))[:3]
    rounded = np.rint(index).astype(int)
    inside = np.all((rounded >= 0) & (rounded < np.array(a.array.shape[::-1])[:, None]), axis=0)
    return bool(np.allclose(index, rounded, atol=1e-3) and inside.all()
                and np.array_equal(a.array[rounded[2], rounded[1], rounded[0]], b.array[k, j, i]))


def test_geometry_matches_slicer_reading_the_same_file(mrml_scene, tmp_path) -> None:
    """Slicer's own NRRD reader puts every voxel where our LPS -> RAS conversion says it is.

    (Slicer makes a left-handed grid right-handed on reading, flipping K, so the matrices differ by that flip.)
    """
    volume = oblique_flipped_volume()
    path = write_volume(tmp_path / "oblique.nrrd", volume)
    read = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    storage = mrml_scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(read)
    assert same_voxels_in_space(volume, bridge.volume_from_node(read))
    assert not same_voxels_in_space(volume, volume.with_array(volume.array[::-1]))  # the check can fail


def test_volume_node_round_trip_keeps_voxels_and_geometry(mrml_scene) -> None:
    volume = oblique_flipped_volume()
    node = bridge.add_volume_node(mrml_scene, volume, "query")
    ras = bridge.node_ijk_to_ras(node) @ [3, 5, 7, 1]  # voxel (i, j, k) = (3, 5, 7)
    lps = sitk.Image(list(volume.array.shape[::-1]), sitk.sitkUInt8)
    lps.SetSpacing(volume.spacing), lps.SetOrigin(volume.origin), lps.SetDirection(volume.direction)
    np.testing.assert_allclose(ras[:3], bridge.RAS_TO_LPS @ lps.TransformIndexToPhysicalPoint((3, 5, 7)), atol=1e-6)
    back = bridge.volume_from_node(node)
    assert back.same_grid(volume, tolerance=1e-9) and np.array_equal(back.array, volume.array)


def test_vector_volume_is_refused_with_a_fix(mrml_scene) -> None:
    node = mrml_scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    slicer.util.updateVolumeFromArray(node, np.zeros((2, 3, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="scalar"):
        bridge.volume_from_node(node)


def test_segments_written_and_read_back_on_an_oblique_grid(mrml_scene) -> None:
    query = oblique_flipped_volume()
    node = bridge.add_volume_node(mrml_scene, query, "query")
    segmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "result")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(node)
    labels = box_labels(query)
    styles = {1: style("liver"), 2: style("right_kidney")}
    ids = bridge.write_segments(segmentation, labels, styles)
    for label, segment_id in ids.items():
        np.testing.assert_array_equal(bridge.segment_mask(segmentation, segment_id, node), labels.array == label)
        assert bridge.segment_style(segmentation, segment_id) == styles[label]
    merged = bridge.labelmap_from_segments(segmentation, [ids[1], ids[2]], node)
    assert merged.same_grid(query) and np.array_equal(merged.array, labels.array)


def test_replacing_a_segment_keeps_its_id(mrml_scene) -> None:
    query = oblique_flipped_volume()
    node = bridge.add_volume_node(mrml_scene, query, "query")
    segmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    first = bridge.write_segments(segmentation, box_labels(query), {1: style("liver")})
    empty = query.with_array(np.zeros(query.array.shape, dtype=np.uint8))
    again = bridge.write_segments(segmentation, empty, {1: style("liver")}, segment_ids=first)
    assert again == first and segmentation.GetSegmentation().GetNumberOfSegments() == 1
    assert not bridge.segment_mask(segmentation, first[1], node).any()


def test_seg_nrrd_written_by_the_storage_node_reads_back_identically(mrml_scene, tmp_path) -> None:
    query = oblique_flipped_volume()
    node = bridge.add_volume_node(mrml_scene, query, "query")
    segmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "result")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(node)
    styles = {1: style("liver"), 2: style("left_kidney")}
    ids = bridge.write_segments(segmentation, box_labels(query), styles)
    path = tmp_path / "result.seg.nrrd"
    storage = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.WriteData(segmentation)
    read = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "read")
    reader = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    reader.SetFileName(str(path))
    assert reader.ReadData(read)
    for label, segment_id in ids.items():
        assert bridge.segment_style(read, segment_id).matches(styles[label])
        assert not read.GetSegmentation().GetSegment(segment_id).GetNameAutoGenerated()
        np.testing.assert_array_equal(bridge.segment_mask(read, segment_id, node),
                                      bridge.segment_mask(segmentation, segment_id, node))


def test_closed_surface_only_segmentation_is_read_without_changing_it(mrml_scene) -> None:
    vtk = pytest.importorskip("vtk")
    volume = Volume(np.zeros((20, 30, 30), np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3).ravel())
    node = bridge.add_volume_node(mrml_scene, volume, "grid")
    sphere = vtk.vtkSphereSource()
    sphere.SetCenter(-15.0, -15.0, 10.0)  # RAS of the grid's centre voxel (LPS (15, 15, 10))
    sphere.SetRadius(6.0)
    sphere.SetPhiResolution(40)
    sphere.SetThetaResolution(40)
    sphere.Update()
    segmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "model")
    segmentation.GetSegmentation().SetSourceRepresentationName("Closed surface")
    segment = slicer.vtkSegment()
    segment.SetName("ball")
    segment.AddRepresentation("Closed surface", sphere.GetOutput())
    segmentation.GetSegmentation().AddSegment(segment, "ball")
    mask = bridge.segment_mask(segmentation, "ball", node)
    assert mask.shape == volume.array.shape
    assert mask.sum() == pytest.approx(4 / 3 * np.pi * 6.0**3, rel=0.1)
    assert mask[10, 15, 15] and not mask[0, 0, 0]
    assert not segmentation.GetSegmentation().ContainsRepresentation(bridge.BINARY_LABELMAP)
    assert mrml_scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 1  # temporary copy gone


def test_mask_of_a_segment_painted_on_another_grid_is_resampled(mrml_scene) -> None:
    """A segment painted on a coarse volume comes back on the fine grid it covers."""
    fine = Volume(np.zeros((8, 16, 16), np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3).ravel())
    coarse = Volume(np.zeros((4, 8, 8), np.float32), (2.0, 2.0, 2.0), (0.5, 0.5, 0.5), np.eye(3).ravel())
    fine_node = bridge.add_volume_node(mrml_scene, fine, "fine")
    coarse_node = bridge.add_volume_node(mrml_scene, coarse, "coarse")
    segmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(coarse_node)
    painted = np.zeros(coarse.array.shape, np.uint8)
    painted[1, 2:4, 2:4] = 1
    ids = bridge.write_segments(segmentation, coarse.with_array(painted), {1: style("spleen")})
    mask = bridge.segment_mask(segmentation, ids[1], fine_node)
    expected = np.zeros(fine.array.shape, bool)
    expected[2:4, 4:8, 4:8] = True  # coarse voxel n covers fine voxels 2n, 2n + 1
    np.testing.assert_array_equal(mask, expected)


def test_missing_segment_names_the_fix(mrml_scene) -> None:
    node = bridge.add_volume_node(mrml_scene, oblique_flipped_volume(), "query")
    segmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    with pytest.raises(ValueError, match="no segment 'liver'"):
        bridge.segment_mask(segmentation, "liver", node)


def test_style_becomes_the_catalogue_structure_for_export() -> None:
    for key in ("liver", "right_kidney"):
        structure = STRUCTURES[key]
        exported = style(key).structure()
        assert (exported.category, exported.type, exported.modifier) == (
            structure.category, structure.type, structure.modifier)
        assert exported.terminology_tag() == structure.terminology_tag()
    assert not style("liver").matches(bridge.SegmentStyle("liver", (0.1, 0.2, 0.3), style("liver").terminology))
    plain = bridge.SegmentStyle("tumour", (1.0, 0.5, 0.0)).structure()
    assert (plain.category, plain.type, plain.modifier, plain.colour) == (TISSUE, TISSUE, None, (255, 128, 0))
