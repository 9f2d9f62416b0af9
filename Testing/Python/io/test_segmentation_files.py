"""``.seg.nrrd`` and labelmap + label table files: read by 3D Slicer's own storage node (slicer-core), slicerio,
and back by us, with the same geometry, names, colours and codes; and exact placement on a reference grid."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from SDFSMISLib.cli.main import main
from SDFSMISLib.data.phantom import generate_phantom
from SDFSMISLib.errors import InputError
from SDFSMISLib.io.grid_placement import place_on_grid
from SDFSMISLib.io.labels import STRUCTURES, structure
from SDFSMISLib.io.segmentation_files import (
    label_table_paths,
    read_segmentation,
    segmentation_metadata,
    write_labelmap,
    write_segmentation,
)
from SDFSMISLib.io.volumes import Volume, read_volume

OBLIQUE = tuple(Rotation.from_euler("xyz", [10, 20, -30], degrees=True).as_matrix().ravel())
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@pytest.fixture(scope="module")
def phantom() -> tuple[Volume, dict]:
    """A CT phantom's labels on an oblique grid (Synapse numbering: 1 spleen, 2/3 kidneys, 6 liver)."""
    _, labels = generate_phantom(8, "ct", (10, 48, 56), (5.0, 6.0, 9.0), OBLIQUE)
    return labels, {label: structure(label, "synapse-ct") for label in (1, 2, 3, 6)}


def slicer_segments(path: Path) -> list[dict]:
    """What 3D Slicer's vtkMRMLSegmentationStorageNode reads from ``path``: per segment, its fields and mask (LPS)."""
    slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core, Python 3.11) is not installed")
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)  # registers the labelmap converters
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node), f"Slicer could not read {path}"
    segmentation = node.GetSegmentation()
    found = []
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segment_id)
        tag = vtk.mutable("")
        segment.GetTag("TerminologyEntry", tag)
        image = segmentation.GetSegmentRepresentation(segment_id, "Binary labelmap")
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        ijk_to_ras = np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])
        extent = image.GetExtent()
        sizes = [extent[2 * axis + 1] - extent[2 * axis] + 1 for axis in range(3)]
        axes = LPS_TO_RAS @ ijk_to_ras[:3, :3]
        spacing = np.linalg.norm(axes, axis=0)
        start = LPS_TO_RAS @ (ijk_to_ras[:3, 3] + ijk_to_ras[:3, :3] @ np.asarray(extent[::2], float))
        mask = None
        if min(sizes) > 0:
            voxels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(sizes[::-1])
            mask = Volume((voxels == segment.GetLabelValue()).astype(np.uint8), spacing, start,
                          (axes / spacing).ravel())
        found.append({"id": segment_id, "name": segment.GetName(), "colour": segment.GetColor(),
                      "terminology": str(tag), "mask": mask, "ijk_to_ras": ijk_to_ras,
                      "reference": segmentation.GetConversionParameter("Reference image geometry")})
    return found


def test_slicer_reads_our_seg_nrrd_with_the_same_geometry_names_colours_and_codes(
        phantom: tuple[Volume, dict], tmp_path: Path) -> None:
    labels, structures = phantom
    path = write_segmentation(tmp_path / "ct.seg.nrrd", labels, structures)
    segments = slicer_segments(path)
    assert [segment["name"] for segment in segments] == ["spleen", "right kidney", "left kidney", "liver"]
    expected_ijk_to_ras = LPS_TO_RAS @ labels.direction_matrix() * np.asarray(labels.spacing)
    for segment, (label, style) in zip(segments, structures.items()):
        assert segment["id"] == f"Segment_{label}"
        assert segment["colour"] == pytest.approx(style.colour_fraction, abs=1e-5)
        assert segment["terminology"] == style.terminology_tag()
        assert np.allclose(segment["ijk_to_ras"][:3, :3], expected_ijk_to_ras, atol=1e-6)
        assert np.allclose(segment["ijk_to_ras"][:3, 3], LPS_TO_RAS @ np.asarray(labels.origin), atol=1e-5)
        assert np.array_equal(place_on_grid(segment["mask"], labels).array, (labels.array == label).astype(np.uint8))
    reference = [float(value) for value in segments[0]["reference"].split(";")[:12]]
    assert np.allclose(np.reshape(reference, (3, 4))[:, :3], expected_ijk_to_ras, atol=1e-6)


def test_slicerio_reads_our_seg_nrrd(phantom: tuple[Volume, dict], tmp_path: Path) -> None:
    slicerio = pytest.importorskip("slicerio")
    labels, structures = phantom
    path = write_segmentation(tmp_path / "ct.seg.nrrd", labels, structures)
    segmentation = slicerio.read_segmentation(str(path))
    ijk_to_lps = labels.direction_matrix() * np.asarray(labels.spacing)
    assert np.allclose(segmentation["ijkToLPS"][:3, :3], ijk_to_lps, atol=1e-6)
    assert np.allclose(segmentation["ijkToLPS"][:3, 3], labels.origin, atol=1e-6)
    assert np.array_equal(segmentation["voxels"], labels.array.transpose(2, 1, 0))  # slicerio indexes [i, j, k]
    for segment, (label, style) in zip(segmentation["segments"], structures.items()):
        assert (segment["name"], segment["labelValue"]) == (style.name, label)
        assert segment["terminology"]["type"] == ["SCT", style.type.value, style.type.meaning]
        assert segment["terminology"].get("typeModifier") == (
            ["SCT", style.modifier.value, style.modifier.meaning] if style.modifier else None)


def test_seg_nrrd_round_trip_keeps_labels_and_descriptions(phantom: tuple[Volume, dict], tmp_path: Path) -> None:
    labels, structures = phantom
    back = read_segmentation(write_segmentation(tmp_path / "ct.seg.nrrd", labels, {**structures, 9: structure(9)}))
    assert back.labelmap.same_grid(labels, tolerance=1e-6) and np.array_equal(back.labelmap.array, labels.array)
    assert back.structures == {**structures, 9: structure(9)}  # 9: an empty segment, kept


def test_a_seg_nrrd_saved_by_slicer_reads_back_cropped_and_places_exactly(phantom: tuple[Volume, dict],
                                                                          tmp_path: Path) -> None:
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
    labels, structures = phantom
    scene = slicer.vtkMRMLScene()
    slicer.vtkSlicerSegmentationsModuleLogic().SetMRMLScene(scene)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    reader, writer = slicer.vtkMRMLSegmentationStorageNode(), slicer.vtkMRMLSegmentationStorageNode()
    for storage, path in ((reader, write_segmentation(tmp_path / "ours.seg.nrrd", labels, structures)),
                          (writer, tmp_path / "slicer.seg.nrrd")):
        scene.AddNode(storage)
        storage.SetFileName(str(path))
    assert reader.ReadData(node) and writer.WriteData(node)
    saved = read_segmentation(tmp_path / "slicer.seg.nrrd")  # our reference geometry keeps the whole grid
    assert saved.labelmap.same_grid(labels, tolerance=1e-5) and np.array_equal(saved.labelmap.array, labels.array)
    assert saved.structures == structures
    node.GetSegmentation().SetConversionParameter("Reference image geometry", "")
    assert writer.WriteData(node)
    cropped = read_segmentation(tmp_path / "slicer.seg.nrrd")  # without it Slicer crops to the segments' extent
    assert cropped.labelmap.array.shape != labels.array.shape
    assert np.array_equal(place_on_grid(cropped.labelmap, labels).array, labels.array)
    assert cropped.structures == structures


def test_plain_labelmaps_get_label_tables_that_name_them_again(phantom: tuple[Volume, dict], tmp_path: Path) -> None:
    labels, structures = phantom
    path = write_labelmap(tmp_path / "ct.nii.gz", labels, structures)
    tables = label_table_paths(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ct.nii.gz", "ct.ctbl", "ct.itksnap.txt",
                                                                 "ct.labels.json"])
    assert "2 right_kidney 185 102 83 255" in tables["slicer"].read_text().splitlines()
    assert '    6   221  130  101        1  1  1    "liver"' in tables["itksnap"].read_text().splitlines()
    assert read_segmentation(path).structures == structures  # from the .labels.json, codes included
    tables["dcmqi"].unlink()
    assert read_segmentation(path).structures == structures  # from the .ctbl (codes from the catalogue by name)
    tables["slicer"].unlink()
    assert read_segmentation(path).structures[6].name == "label 6"  # chaos-t2 numbering has no 6
    assert read_segmentation(path, "synapse-ct").structures == structures


def test_slicer_reads_our_colour_table(phantom: tuple[Volume, dict], tmp_path: Path) -> None:
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
    labels, structures = phantom
    tables = label_table_paths(write_labelmap(tmp_path / "ct.nrrd", labels, structures))
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode")
    storage = slicer.vtkMRMLColorTableStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(tables["slicer"]))
    assert storage.ReadData(node)
    colour = [0.0] * 4
    for label, style in structures.items():
        assert node.GetColorName(label) == style.name  # Slicer turns the file's "_" back into spaces
        node.GetColor(label, colour)
        assert colour[:3] == pytest.approx(style.colour_fraction, abs=1e-3)


def test_overlapping_layers_are_refused_and_separate_layers_merged(tmp_path: Path) -> None:
    slicerio = pytest.importorskip("slicerio")
    ijk_to_lps = np.diag([2.0, 2.0, 3.0, 1.0])
    segmentation = slicerio.create_segmentation((6, 5, 4), ijk_to_lps)
    first, second = np.zeros((6, 5, 4), bool), np.zeros((6, 5, 4), bool)
    first[1:3, 1:3, 1:3], second[2:4, 2:4, 2:4] = True, True
    slicerio.add_segment(segmentation, first, {"name": "liver"})
    slicerio.add_segment(segmentation, second, {"name": "tumour"})
    assert segmentation["voxels"].ndim == 4  # overlapping: two layers, both label value 1
    slicerio.write_segmentation(str(tmp_path / "overlap.seg.nrrd"), segmentation)
    with pytest.raises(InputError, match="'liver' and 'tumour' overlap"):
        read_segmentation(tmp_path / "overlap.seg.nrrd")
    segmentation["voxels"][1][second & first] = 0  # no overlap any more, still two layers
    slicerio.write_segmentation(str(tmp_path / "layers.seg.nrrd"), segmentation)
    merged = read_segmentation(tmp_path / "layers.seg.nrrd")
    assert merged.structures[1].name == "liver" and merged.structures[2].name == "tumour"
    assert merged.structures[1].type == STRUCTURES["liver"].type  # codes from the catalogue by name
    assert np.array_equal(merged.labelmap.array == 2, (second & ~first).transpose(2, 1, 0))


def test_place_on_grid_undoes_flips_permutations_and_crops() -> None:
    array = np.random.default_rng(0).integers(0, 5, (6, 7, 8)).astype(np.uint8)
    reference = Volume(array, (1.1, 1.3, 2.0), (5.0, -3.0, 7.0), OBLIQUE)
    image = reference.to_image()
    for order, flips in itertools.product(itertools.permutations(range(3)), itertools.product([False, True], repeat=3)):
        other = Volume.from_image(sitk.Flip(sitk.PermuteAxes(image, list(order)), list(flips)))
        assert np.array_equal(place_on_grid(other, reference).array, array), (order, flips)
    crop = Volume.from_image(sitk.Flip(image[1:4, 2:6, 3:5], [True, False, True]))
    expected = np.zeros_like(array)
    expected[3:5, 2:6, 1:4] = array[3:5, 2:6, 1:4]
    assert np.array_equal(place_on_grid(crop, reference).array, expected)
    padded = Volume.from_image(sitk.ConstantPad(image, [1, 2, 0], [0, 1, 3]))
    assert np.array_equal(place_on_grid(padded, reference).array, array)
    with pytest.raises(InputError, match="outside the reference grid"):
        place_on_grid(Volume.from_image(sitk.ConstantPad(image, [1, 0, 0], [0, 0, 0], 1)), reference)
    with pytest.raises(InputError, match="not on the grid"):
        place_on_grid(Volume(array, reference.spacing, (5.4, -3.0, 7.0), OBLIQUE), reference)


def test_export_cli_converts_between_labelmaps_and_seg_nrrd(phantom: tuple[Volume, dict], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    labels, structures = phantom
    plain = write_labelmap(tmp_path / "plain.nrrd", labels, [1, 2, 3, 6])  # chaos-t2 names: wrong for CT
    for name in ("plain.ctbl", "plain.itksnap.txt", "plain.labels.json"):
        (tmp_path / name).unlink()
    assert main(["export", str(plain), "--label-names", "synapse-ct", "--out", str(tmp_path / "ct.seg.nrrd")]) == 0
    assert read_segmentation(tmp_path / "ct.seg.nrrd").structures == structures
    assert main(["export", str(tmp_path / "ct.seg.nrrd"), "--out", str(tmp_path / "back.nii.gz")]) == 0
    assert np.array_equal(read_volume(tmp_path / "back.nii.gz").array, labels.array)
    assert read_segmentation(tmp_path / "back.nii.gz").structures == structures
    assert main(["export", str(plain), "--out", str(tmp_path / "x.png")]) == 2
    assert "unknown output format" in capsys.readouterr().err


def test_segmentation_metadata_accepts_label_values_or_structures() -> None:
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[1:3, 2, 3:5] = 2
    by_values = segmentation_metadata(labels, [2])
    by_structures = segmentation_metadata(labels, {2: STRUCTURES["spleen"]})
    assert by_values["Segment0_Name"] == "right kidney" and by_structures["Segment0_Name"] == "spleen"
    assert by_values["Segment0_Extent"] == by_structures["Segment0_Extent"] == "3 4 2 2 1 2"


def test_float_labelmaps_are_written_as_integer_labels_and_images_refused(phantom: tuple[Volume, dict],
                                                                          tmp_path: Path) -> None:
    labels, structures = phantom
    as_float = labels.with_array(labels.array.astype(np.float32))
    back = read_segmentation(write_segmentation(tmp_path / "float.seg.nrrd", as_float, structures))
    assert back.labelmap.array.dtype == np.uint8 and np.array_equal(back.labelmap.array, labels.array)
    for bad, message in ((as_float.array + 0.5, "non-integer"), (labels.array.astype(np.int16) - 1, "negative")):
        with pytest.raises(InputError, match=message):
            write_labelmap(tmp_path / "bad.nii.gz", labels.with_array(bad))
    assert not list(tmp_path.glob("bad*"))
