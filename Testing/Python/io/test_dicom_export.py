"""DICOM-SEG export on DICOM CT and MR series made from phantoms: validity, exact masks, refusals, the CLI.

Checks a SEG must pass to be accepted by other tools: ``dciodvfy`` (dicom3tools) finds no error, highdicom
reads every segment back equal to the labelmap voxel for voxel, and dcmqi's ``segimage2itkimage`` converts
it back to the same masks. dciodvfy tests skip when it is not installed, unless SDFSMIS_REQUIRE_DICOM3TOOLS=1
(CI), where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from scipy.spatial.transform import Rotation

from SDFSMISLib import __version__
from SDFSMISLib.cli.main import main
from SDFSMISLib.data.phantom import CHAOS_DIRECTION, generate_phantom
from SDFSMISLib.errors import InputError
from SDFSMISLib.evaluation.protocol import protocol_support_mask
from SDFSMISLib.io.dicom_seg import file_sha256, write_dicom_seg
from SDFSMISLib.io.dicom_series import DicomSeries, read_series
from SDFSMISLib.io.grid_placement import place_on_grid
from SDFSMISLib.io.labels import STRUCTURES, structure
from SDFSMISLib.io.segmentation_files import read_segmentation, write_labelmap
from SDFSMISLib.io.volumes import Volume, read_dicom_series, read_volume, write_volume
from Testing.dicom_writer import write_dicom_series

SHAPE = (12, 64, 64)
SPACING = (6.0, 6.0, 10.0)
#: An oblique, left-handed grid: DICOM readers order its slices the other way round (k reversed).
OBLIQUE = tuple((Rotation.from_euler("xyz", [14, -9, 22], degrees=True).as_matrix()
                 @ np.diag([1.0, -1.0, 1.0])).ravel())
CASES = {"ct-axial-shuffled": ("ct", "synapse-ct", None, 3), "mr-oblique": ("mr", "chaos-t2", OBLIQUE, None)}


def require_dciodvfy() -> str:
    tool = shutil.which("dciodvfy")
    if tool is None:
        message = "dciodvfy (Debian/Ubuntu package dicom3tools) is not on PATH"
        if os.environ.get("SDFSMIS_REQUIRE_DICOM3TOOLS") == "1":
            pytest.fail(f"{message}, and SDFSMIS_REQUIRE_DICOM3TOOLS=1 requires it")
        pytest.skip(message)
    return tool


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(error lines, warning lines) of dciodvfy on one file."""
    result = subprocess.run([require_dciodvfy(), str(path)], capture_output=True, text=True, check=False)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")], [line for line in lines if line.startswith("Warning")]


def assert_dciodvfy_passes_if_installed(path: Path) -> None:
    """dciodvfy's check inside a test whose other checks must run even where dciodvfy is missing."""
    if shutil.which("dciodvfy") or os.environ.get("SDFSMIS_REQUIRE_DICOM3TOOLS") == "1":
        errors, warnings = dciodvfy(path)
        assert not errors, "\n".join(errors + warnings)


def dcmqi_tool(name: str) -> str:
    tool = shutil.which(name) or str(Path(sys.prefix) / "bin" / name)
    if not Path(tool).is_file():
        pytest.skip(f"dcmqi's {name} is not installed (pip install dcmqi)")
    return tool


class Case:
    """A phantom patient written as a DICOM series, with its labelmap and label descriptions."""

    def __init__(self, folder: Path, modality: str, dataset: str, direction, shuffle: int | None) -> None:
        image, labels = generate_phantom(21, modality, SHAPE, SPACING, direction)
        self.image, self.labels, self.dataset = image, labels, dataset
        self.folder = folder
        self.files = write_dicom_series(image, folder, modality.upper(), shuffle_seed=shuffle)
        self.structures = {label: structure(label, dataset) for label in np.unique(labels.array) if label}

    def series(self) -> DicomSeries:
        return read_series(self.folder)


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    root = tmp_path_factory.mktemp("series")
    return {name: Case(root / name, *spec) for name, spec in CASES.items()}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("checkpoint") / "model.safetensors"
    path.write_bytes(b"a stand-in for a checkpoint file")
    return path


def masks_by_label(seg_path: Path, series: DicomSeries) -> dict[int, np.ndarray]:
    """Each segment of a SEG read back by highdicom on the series grid, keyed by its label value."""
    seg = hd.seg.segread(seg_path)
    numbers = list(seg.get_segment_numbers())
    pixels = seg.get_pixels_by_source_instance([dataset.SOPInstanceUID for dataset in series.datasets],
                                               segment_numbers=numbers)
    return {int(seg.get_segment_description(number).SegmentDescription.split()[-1]): pixels[..., index]
            for index, number in enumerate(numbers)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_series_is_read_on_the_simpleitk_grid_in_any_file_order(cases: dict[str, Case], name: str) -> None:
    case = cases[name]
    series = case.series()
    reference = read_dicom_series(case.folder)
    assert series.grid().same_grid(reference, tolerance=1e-5)
    assert np.array_equal(series.read_volume().array, reference.array)
    # the phantom's own grid holds the same voxels (reversed k for the left-handed oblique one)
    assert np.array_equal(place_on_grid(case.image, series.grid()).array, reference.array)
    if name.startswith("ct"):
        assert [path.name for path in series.files] != sorted(path.name for path in series.files)


def test_series_from_a_file_list_or_picked_by_uid(cases: dict[str, Case], tmp_path: Path) -> None:
    mr, ct = cases["mr-oblique"].series(), cases["ct-axial-shuffled"].series()
    assert read_series(list(reversed(cases["mr-oblique"].files))).files == mr.files  # e.g. Slicer's filesForSeries
    for prefix, series in (("mr", mr), ("ct", ct)):
        for path in series.files:
            shutil.copy(path, tmp_path / f"{prefix}-{path.name}")
    (tmp_path / "notes.txt").write_text("not DICOM")
    with pytest.raises(InputError, match="holds 2 DICOM series"):
        read_series(tmp_path)
    picked = read_series(tmp_path, ct.series_instance_uid)
    assert picked.series_instance_uid == ct.series_instance_uid and picked.grid().same_grid(ct.grid())


@pytest.mark.parametrize("fractional", [False, True], ids=["binary", "fractional"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_seg_segments_equal_the_labelmap_and_are_valid(cases: dict[str, Case], checkpoint: Path, tmp_path: Path,
                                                       name: str, fractional: bool) -> None:
    case = cases[name]
    series = case.series()
    out = write_dicom_seg(case.labels, series, tmp_path / "seg.dcm", case.structures, fractional=fractional,
                          checkpoint=checkpoint)
    on_grid = place_on_grid(case.labels, series.grid()).array
    masks = masks_by_label(out, series)
    assert sorted(masks) == sorted(case.structures)
    for label, mask in masks.items():
        assert np.array_equal(mask > 0, on_grid == label), structure(label, case.dataset).name
        assert set(np.unique(mask)) <= {0, 1}
    seg = pydicom.dcmread(out)
    assert seg.SegmentationType == ("FRACTIONAL" if fractional else "BINARY")
    assert seg.FrameOfReferenceUID == series.frame_of_reference_uid
    assert seg.StudyInstanceUID == series.datasets[0].StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_instance_uid
    assert seg.NumberOfFrames == sum(int((on_grid == label).any(axis=(1, 2)).sum()) for label in masks)
    for frame in seg.PerFrameFunctionalGroupsSequence:  # each frame sits exactly where its source image is
        source = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        image = next(dataset for dataset in series.datasets if dataset.SOPInstanceUID == source)
        assert list(frame.PlanePositionSequence[0].ImagePositionPatient) == list(image.ImagePositionPatient)
    orientation = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    assert np.allclose(orientation, series.datasets[0].ImageOrientationPatient)


@pytest.mark.parametrize("fractional", [False, True], ids=["binary", "fractional"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_seg_passes_dciodvfy(cases: dict[str, Case], checkpoint: Path, tmp_path: Path, name: str,
                             fractional: bool) -> None:
    case = cases[name]
    out = write_dicom_seg(case.labels, case.series(), tmp_path / "seg.dcm", case.structures, fractional=fractional,
                          checkpoint=checkpoint)
    errors, warnings = dciodvfy(out)
    assert not errors, "\n".join(errors + warnings)
    assert not warnings, "\n".join(warnings)  # none today: a new one deserves a look


def test_segments_carry_snomed_codes_and_the_algorithm(cases: dict[str, Case], checkpoint: Path,
                                                       tmp_path: Path) -> None:
    case = cases["mr-oblique"]
    out = write_dicom_seg(case.labels, case.series(), tmp_path / "seg.dcm", checkpoint=checkpoint)
    items = {item.SegmentLabel: item for item in pydicom.dcmread(out).SegmentSequence}
    assert list(items) == ["liver", "right kidney", "left kidney", "spleen"]  # chaos-t2 numbering: 1, 2, 3, 4
    for key in ("liver", "spleen", "right_kidney", "left_kidney"):
        style, item = STRUCTURES[key], items[STRUCTURES[key].name]
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "123037004"
        code = item.SegmentedPropertyTypeCodeSequence[0]
        assert (code.CodeValue, code.CodingSchemeDesignator) == (style.type.value, "SCT")
        modifiers = code.get("SegmentedPropertyTypeModifierCodeSequence", [])
        assert [modifier.CodeValue for modifier in modifiers] == ([style.modifier.value] if style.modifier else [])
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("SDFSMIS", __version__)
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
        assert algorithm.AlgorithmParameters == (f"checkpoint=model.safetensors,"
                                                 f"checkpoint_sha256={file_sha256(checkpoint)}")
        colour = hd.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue).to_rgb()
        assert colour == pytest.approx(style.colour, abs=1)
    assert items["right kidney"].SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[
        0].CodeValue == "24028007"


def test_empty_segments_and_frames_are_left_out(cases: dict[str, Case], tmp_path: Path) -> None:
    case = cases["ct-axial-shuffled"]
    labels = np.zeros(SHAPE, np.uint8)
    labels[4:6, 10:20, 30:40] = 6  # liver on two of the 12 slices
    labels[5, 40:44, 8:12] = 9  # a label the catalogue does not know
    series = case.series()
    labelmap = series.grid().with_array(labels)
    out = write_dicom_seg(labelmap, series, tmp_path / "seg.dcm", {1: structure(1, "synapse-ct"),
                                                                    6: structure(6, "synapse-ct")})
    seg = pydicom.dcmread(out)
    assert seg.NumberOfFrames == 3
    assert [(item.SegmentNumber, item.SegmentLabel) for item in seg.SegmentSequence] == [(1, "liver"), (2, "label 9")]
    other = seg.SegmentSequence[1]
    assert other.SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"  # Tissue: the fallback
    assert masks_by_label(out, series)[9].sum() == 16
    assert_dciodvfy_passes_if_installed(out)


def test_fractional_probabilities_round_trip_to_within_one_level(cases: dict[str, Case], tmp_path: Path) -> None:
    case = cases["mr-oblique"]
    series = case.series()
    grid = series.grid()
    on_grid = place_on_grid(case.labels, grid).array
    probability = np.clip(np.random.default_rng(0).random(SHAPE, dtype=np.float32) * (on_grid == 1) + 0.2 * (
        on_grid == 1), 0, 1).astype(np.float32)
    out = write_dicom_seg(case.labels, series, tmp_path / "seg.dcm", fractional=True, probabilities={1: probability})
    back = masks_by_label(out, series)
    assert np.abs(back[1] - probability).max() <= 0.5 / 255 + 1e-6
    assert np.array_equal(back[4] > 0, on_grid == 4)  # labels without a map: the labelmap's 0/1
    with pytest.raises(InputError, match="outside"):
        write_dicom_seg(case.labels, series, tmp_path / "bad.dcm", fractional=True, probabilities={1: probability * 2})
    assert not (tmp_path / "bad.dcm").exists()


@pytest.mark.parametrize("name", sorted(CASES))
def test_source_images_pass_dciodvfy(cases: dict[str, Case], name: str) -> None:
    errors, warnings = dciodvfy(cases[name].files[0])
    assert not errors, "\n".join(errors + warnings)


@pytest.mark.parametrize("name", sorted(CASES))
def test_dcmqi_converts_the_seg_back_to_the_labelmap(cases: dict[str, Case], tmp_path: Path, name: str) -> None:
    case = cases[name]
    series = case.series()
    out = write_dicom_seg(case.labels, series, tmp_path / "seg.dcm", case.structures)
    folder = tmp_path / "dcmqi"
    folder.mkdir()
    subprocess.run([dcmqi_tool("segimage2itkimage"), "--inputDICOM", str(out), "--outputDirectory", str(folder),
                    "--prefix", "seg", "--outputType", "nrrd"], check=True, capture_output=True)
    meta = json.loads((folder / "seg-meta.json").read_text())
    on_grid = place_on_grid(case.labels, series.grid()).array
    labels = sorted(case.structures)
    assert [group[0]["SegmentLabel"] for group in meta["segmentAttributes"]] == [
        case.structures[label].name for label in labels]
    for number, label in enumerate(labels, start=1):
        mask = place_on_grid(read_volume(folder / f"seg-{number}.nrrd"), series.grid(), "dcmqi output")
        assert np.array_equal(mask.array > 0, on_grid == label)


def test_dcmqi_accepts_the_labels_json_beside_a_labelmap(cases: dict[str, Case], tmp_path: Path) -> None:
    """The .labels.json label table is dcmqi metadata: itkimage2segimage makes a valid SEG from it."""
    case = cases["ct-axial-shuffled"]
    labelmap = write_labelmap(tmp_path / "labels.nrrd", case.labels, case.structures)
    out = tmp_path / "dcmqi-seg.dcm"
    subprocess.run([dcmqi_tool("itkimage2segimage"), "--inputImageList", str(labelmap), "--inputMetadata",
                    str(tmp_path / "labels.labels.json"), "--inputDICOMDirectory", str(case.folder),
                    "--outputDICOM", str(out)], check=True, capture_output=True)
    labels = {item.SegmentLabel for item in pydicom.dcmread(out).SegmentSequence}
    assert labels == {style.name for style in case.structures.values()}
    assert_dciodvfy_passes_if_installed(out)


def _off_grid(case: Case, tmp_path: Path) -> tuple[Volume, Path]:
    shifted = Volume(case.labels.array, case.labels.spacing, np.add(case.labels.origin, (2.0, 0, 0)),
                     case.labels.direction)
    return shifted, case.folder


def _mixed_frames(case: Case, tmp_path: Path) -> tuple[Volume, Path]:
    folder = tmp_path / "mixed"
    shutil.copytree(case.folder, folder)
    path = sorted(folder.iterdir())[3]
    dataset = pydicom.dcmread(path)
    dataset.FrameOfReferenceUID = pydicom.uid.generate_uid()
    dataset.save_as(path)
    return case.labels, folder


def _missing_slice(case: Case, tmp_path: Path) -> tuple[Volume, Path]:
    folder = tmp_path / "gap"
    shutil.copytree(case.folder, folder)
    read_series(folder).files[5].unlink()  # a slice in the middle: one gap twice as wide
    return case.labels, folder


def _no_dicom(case: Case, tmp_path: Path) -> tuple[Volume, Path]:
    folder = tmp_path / "nifti-only"
    write_volume(folder / "image.nii.gz", case.image)
    return case.labels, folder


#: case -> (make(case, tmp) -> (labelmap, series folder), message)
REFUSED = {
    "labelmap not on the series grid": (_off_grid, "not on the grid"),
    "mixed frames of reference": (_mixed_frames, "frames of reference"),
    "inconsistent slice spacing": (_missing_slice, "inconsistent slice spacing"),
    "no DICOM source": (_no_dicom, "holds no DICOM images"),
}


@pytest.mark.parametrize("problem", sorted(REFUSED))
def test_refused_inputs_raise_exit_2_and_write_nothing(cases: dict[str, Case], tmp_path: Path, problem: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    make, message = REFUSED[problem]
    labelmap, folder = make(cases["ct-axial-shuffled"], tmp_path)
    out = tmp_path / "out" / "seg.dcm"
    with pytest.raises(InputError, match=message):
        write_dicom_seg(labelmap, folder, out)
    source = write_volume(tmp_path / "labels.nrrd", labelmap)
    assert main(["export", str(source), "--dicom", str(folder), "--out-dicom-seg", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_export_without_dicom_offers_a_seg_nrrd(cases: dict[str, Case], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    source = write_volume(tmp_path / "labels.nrrd", cases["ct-axial-shuffled"].labels)
    assert main(["export", str(source), "--out-dicom-seg", str(tmp_path / "out" / "seg.dcm")]) == 2
    assert ".seg.nrrd" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_export_cli_uses_the_names_of_a_seg_nrrd(cases: dict[str, Case], tmp_path: Path) -> None:
    case = cases["ct-axial-shuffled"]
    source = write_labelmap(tmp_path / "labels.seg.nrrd", case.labels, case.structures)
    out = tmp_path / "seg.dcm"
    assert main(["export", str(source), "--dicom", str(case.folder), "--out-dicom-seg", str(out),
                 "--algorithm-type", "semiautomatic"]) == 0
    items = pydicom.dcmread(out).SegmentSequence
    assert [item.SegmentLabel for item in items] == ["spleen", "right kidney", "left kidney", "liver"]
    assert {item.SegmentAlgorithmType for item in items} == {"SEMIAUTOMATIC"}
    assert "AlgorithmParameters" not in items[0].SegmentationAlgorithmIdentificationSequence[0]


# --- sdfsmis segment --query-dicom ... --out-dicom-seg, with a tiny model --------------------------------------

def test_segment_a_dicom_series_writes_a_seg_referencing_it(model_args: list[str], tmp_path: Path) -> None:
    query, _ = generate_phantom(3, "mr", (8, 64, 64), (5.5, 5.5, 16.0), CHAOS_DIRECTION)
    support, support_truth = generate_phantom(4, "mr", (10, 64, 64), (5.5, 5.5, 16.0), CHAOS_DIRECTION)
    write_dicom_series(query, tmp_path / "query", "MR", shuffle_seed=1)
    write_volume(tmp_path / "support.nii.gz", support)
    write_volume(tmp_path / "mask.nii.gz", protocol_support_mask(support_truth, (1, 4)))
    seg, labelmap = tmp_path / "out" / "query-seg.dcm", tmp_path / "out" / "query.nii.gz"
    common = ["segment", "--query-dicom", str(tmp_path / "query"), "--support", str(tmp_path / "support.nii.gz"),
              "--support-mask", str(tmp_path / "mask.nii.gz"), *model_args]
    assert main([*common, "--out-dicom-seg", str(seg), "--out", str(labelmap)]) == 0
    series = read_series(tmp_path / "query")
    result = read_segmentation(labelmap)
    assert result.labelmap.same_grid(series.grid(), tolerance=1e-4)
    assert {style.name for style in result.structures.values()} <= {"liver", "spleen"}
    masks = masks_by_label(seg, series)
    assert masks and set(masks) <= {1, 4}
    for label, mask in masks.items():
        assert np.array_equal(mask > 0, result.labelmap.array == label)
    algorithm = pydicom.dcmread(seg).SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert file_sha256(model_args[1]) in algorithm.AlgorithmParameters
    assert_dciodvfy_passes_if_installed(seg)
    fractional = tmp_path / "out" / "query-fractional.dcm"
    assert main([*common, "--out-dicom-seg", str(fractional), "--fractional"]) == 0
    assert pydicom.dcmread(fractional).SegmentationType == "FRACTIONAL"
    soft = masks_by_label(fractional, series)  # the network's probabilities, 0..1 after highdicom's rescaling
    assert set(soft) == set(masks)
    for label, probability in soft.items():
        inside, outside = probability[masks[label] > 0], probability[masks[label] == 0]
        assert inside.mean() > outside.mean(), label
        assert len(np.unique(probability)) > 2, f"label {label} holds only 0/1, not probabilities"


def test_segment_out_dicom_seg_needs_a_dicom_query(model_args: list[str], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    query, truth = generate_phantom(3, "mr", (8, 64, 64), (5.5, 5.5, 16.0), CHAOS_DIRECTION)
    write_volume(tmp_path / "query.nii.gz", query)
    write_volume(tmp_path / "mask.nii.gz", protocol_support_mask(truth, (1,)))
    out = tmp_path / "out"
    assert main(["segment", "--query", str(tmp_path / "query.nii.gz"), "--support-mask", str(tmp_path / "mask.nii.gz"),
                 "--out-dicom-seg", str(out / "seg.dcm"), *model_args]) == 2
    assert "needs the query as a DICOM series folder" in capsys.readouterr().err and not out.exists()
    assert main(["segment", "--query", str(tmp_path / "query.nii.gz"), "--support-mask", str(tmp_path / "mask.nii.gz"),
                 *model_args]) == 2
    assert "--out-dicom-seg" in capsys.readouterr().err
