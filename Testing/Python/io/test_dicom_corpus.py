"""DICOM as hospitals write it, on files nobody here wrote: the DICOM test files that ship inside pydicom
(compressed and uncompressed MR and CT, non-image objects, files without file meta, truncated files), and
series derived from them (several slices, anonymised UIDs, mixed folders, DICOMDIR, one file cut short).

Each case is a test with its expected outcome: segmented, or refused with exit 2 and a named cause.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from test_dicom_export import assert_dciodvfy_passes_if_installed, dcmqi_tool

from SDFSMISLib.cli.main import main
from SDFSMISLib.errors import InputError
from SDFSMISLib.io.dicom_series import read_series
from SDFSMISLib.io.grid_placement import place_on_grid
from SDFSMISLib.io.volumes import read_volume, write_volume

SLICES = 6
#: pydicom's 64 x 64 MR slice in the transfer syntaxes scanners write, and the JPEG-extended and deflated images.
MR_SYNTAXES = ["MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm",
               "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"]
OTHER_CODECS = ["JPGExtended.dcm", "JPEG-lossy.dcm", "image_dfl.dcm", "693_J2KI.dcm"]
NON_IMAGES = ["rtstruct.dcm", "reportsi.dcm", "test-SR.dcm", "rtplan.dcm", "no_meta.dcm", "README.txt"]

Edit = Callable[[Dataset, int], None]


def derived_series(folder: Path, source: str, slices: int = SLICES, edit: Edit | None = None,
                   name: Callable[[int], str] = "{:03d}.dcm".format) -> list[Path]:
    """``slices`` copies of a pydicom test file as one series: new UIDs, positions 3 mm apart along the normal,
    pixel data untouched (still in its transfer syntax); ``edit`` changes each dataset before it is written."""
    original = pydicom.dcmread(get_testdata_file(source))
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index in range(slices):
        dataset = copy.deepcopy(original)
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.FrameOfReferenceUID = study, series, frame
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dataset.Modality = dataset.get("Modality") or "OT"
        dataset.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        dataset.ImagePositionPatient = [-20.0, -30.0, 3.0 * index]
        dataset.PixelSpacing = dataset.get("PixelSpacing") or [0.5, 0.5]
        dataset.SliceThickness, dataset.InstanceNumber = 3.0, index + 1
        if edit is not None:
            edit(dataset, index)
        path = folder / name(index)
        dataset.save_as(path, enforce_file_format=dataset.get("file_meta") is not None)
        written.append(path)
    return written


@pytest.mark.parametrize("source", MR_SYNTAXES)
def test_every_transfer_syntax_reads_as_the_same_volume(source: str, tmp_path: Path) -> None:
    derived_series(tmp_path / "series", source)
    volume = read_volume(tmp_path / "series")
    reference = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    assert volume.array.shape == (SLICES, 64, 64)
    assert all(np.array_equal(volume.array[index], reference) for index in range(SLICES))  # lossless: exact
    assert volume.spacing == pytest.approx((0.3125, 0.3125, 3.0))


@pytest.mark.parametrize("source", OTHER_CODECS)
def test_jpeg_extended_deflate_and_lossy_jpeg_2000_decode(source: str, tmp_path: Path) -> None:
    derived_series(tmp_path / "series", source, slices=3)
    volume = read_volume(tmp_path / "series")
    header = pydicom.dcmread(get_testdata_file(source), stop_before_pixels=True)
    assert volume.array.shape == (3, header.Rows, header.Columns) and volume.array.std() > 0


def test_non_image_objects_beside_the_images_are_skipped_with_a_note(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    derived_series(folder / "IMAGES" / "SE1", "CT_small.dcm", name=lambda index: f"IM{index}")  # no extension
    for name in NON_IMAGES:
        shutil.copy(get_testdata_file(name), folder / name)
    series = read_series(folder)
    assert len(series.files) == SLICES and all(path.parent.name == "SE1" for path in series.files)
    notes = " ".join(series.notes)
    assert "RT Structure Set Storage" in notes and "Basic Text SR Storage" in notes and "RT Plan Storage" in notes
    assert read_volume(folder).array.shape == (SLICES, 128, 128)


def test_files_without_preamble_or_file_meta_are_read(tmp_path: Path) -> None:
    def raw(dataset: Dataset, _index: int) -> None:
        del dataset.file_meta
        dataset.preamble = None

    derived_series(tmp_path / "raw", "MR_small_implicit.dcm", edit=raw, name=lambda index: f"slice{index}")
    assert not (tmp_path / "raw" / "slice0").read_bytes()[128:132] == b"DICM"
    assert read_volume(tmp_path / "raw").array.shape == (SLICES, 64, 64)


def test_a_dicomdir_names_the_files_to_read(tmp_path: Path) -> None:
    from pydicom.fileset import FileSet

    files = derived_series(tmp_path / "staging", "MR_small.dcm")
    disc = tmp_path / "disc"
    file_set = FileSet()
    for path in files:
        file_set.add(path)
    file_set.write(disc)
    derived_series(disc / "NOT_IN_DICOMDIR", "CT_small.dcm")  # read without the DICOMDIR: a second series
    series = read_series(disc)
    assert len(series.files) == SLICES and series.datasets[0].Modality == "MR"


def test_several_series_are_listed_so_the_user_can_pick_one(tmp_path: Path) -> None:
    derived_series(tmp_path / "mr", "MR_small.dcm", edit=lambda dataset, _: setattr(dataset, "SeriesDescription",
                                                                                      "T2 axial"))
    ct = derived_series(tmp_path / "ct", "CT_small.dcm")
    with pytest.raises(InputError, match="2 DICOM series") as refused:
        read_series(tmp_path)
    assert "'T2 axial' (MR, 6 x 64 x 64" in str(refused.value) and "(CT, 6 x 128 x 128" in str(refused.value)
    uid = pydicom.dcmread(ct[0]).SeriesInstanceUID
    assert read_series(tmp_path, uid).shape == (SLICES, 128, 128)


def test_empty_sop_uids_come_from_the_file_meta_and_disagreeing_ones_are_refused(tmp_path: Path) -> None:
    def anonymised(dataset: Dataset, _index: int) -> None:
        dataset.SOPClassUID, dataset.SOPInstanceUID = "", ""

    files = derived_series(tmp_path / "anon", "MR_small.dcm", edit=anonymised)
    series = read_series(tmp_path / "anon")
    meta = [pydicom.dcmread(path).file_meta.MediaStorageSOPInstanceUID for path in series.files]
    assert [dataset.SOPInstanceUID for dataset in series.datasets] == meta
    assert any("file meta" in note for note in series.notes)
    dataset = pydicom.dcmread(files[2])
    dataset.SOPInstanceUID = generate_uid()  # set, and different from the file meta's
    dataset.save_as(files[2])
    with pytest.raises(InputError, match="disagree"):
        read_series(tmp_path / "anon")


# --- the cases, through the command line ------------------------------------------------------------


def annotated_query(tmp_path: Path, edit: Edit | None = None, source: str = "MR_small_jp2klossless.dcm") -> Path:
    """A derived compressed MR series and a mask annotating a bright region on 3 of its slices."""
    folder = tmp_path / "query"
    derived_series(folder, source, slices=9, edit=edit)
    volume = read_volume(folder)
    mask = np.zeros(volume.array.shape, np.uint8)
    mask[[1, 4, 7], 20:40, 20:40] = 1
    write_volume(tmp_path / "mask.nii.gz", volume.with_array(mask))
    return folder


def segment(query: Path, tmp_path: Path, model_args: list[str], *outputs: str) -> int:
    return main(["segment", "--query", str(query), "--support-mask", str(tmp_path / "mask.nii.gz"), "--labels", "1",
                 *outputs, *model_args])


def assert_dcmqi_reads_back(seg: Path, labelmap: Path, series_folder: Path, tmp_path: Path) -> None:
    """dcmqi's segimage2itkimage turns the SEG back into the labelmap's mask of label 1 on the series grid."""
    folder = tmp_path / "dcmqi"
    folder.mkdir()
    subprocess.run([dcmqi_tool("segimage2itkimage"), "--inputDICOM", str(seg), "--outputDirectory", str(folder),
                    "--prefix", "seg", "--outputType", "nrrd"], check=True, capture_output=True)
    grid = read_series(series_folder).grid()
    mask = place_on_grid(read_volume(folder / "seg-1.nrrd"), grid, "dcmqi output").array
    assert np.array_equal(mask > 0, place_on_grid(read_volume(labelmap), grid).array == 1)


def test_a_seg_of_a_compressed_series_with_empty_sop_uids_is_valid(model_args: list[str], tmp_path: Path) -> None:
    query = annotated_query(tmp_path, edit=lambda dataset, _: setattr(dataset, "SOPInstanceUID", ""))
    seg, labelmap = tmp_path / "out" / "seg.dcm", tmp_path / "out" / "labels.nii.gz"
    assert segment(query, tmp_path, model_args, "--out-dicom-seg", str(seg), "--out", str(labelmap)) == 0
    assert_dciodvfy_passes_if_installed(seg)
    assert_dcmqi_reads_back(seg, labelmap, query, tmp_path)
    referenced = {item.ReferencedSOPInstanceUID
                  for item in hd.seg.segread(seg).ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {pydicom.dcmread(path).file_meta.MediaStorageSOPInstanceUID for path in query.iterdir()}


def test_an_empty_study_uid_refuses_the_seg_before_any_work(model_args: list[str], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def anonymised(dataset: Dataset, _index: int) -> None:
        dataset.StudyInstanceUID, dataset.SOPClassUID, dataset.SOPInstanceUID = "", "", ""

    query = annotated_query(tmp_path, edit=anonymised)
    for name in ("rtstruct.dcm", "reportsi.dcm"):  # an RT Struct and an SR beside the images
        shutil.copy(get_testdata_file(name), query / name)
    from SDFSMISLib.weights import loading

    def no_model(*_arguments: object) -> None:
        raise AssertionError("the model was loaded although the input was refused")

    monkeypatch.setattr(loading, "load_model", no_model)
    out = tmp_path / "out"
    assert segment(query, tmp_path, model_args, "--out-dicom-seg", str(out / "seg.dcm"),
                   "--out", str(out / "result.seg.nrrd")) == 2
    message = capsys.readouterr().err
    assert "StudyInstanceUID" in message and "--out result.seg.nrrd" in message and "Traceback" not in message
    assert not out.exists()
    monkeypatch.undo()
    assert segment(query, tmp_path, model_args, "--out", str(out / "result.seg.nrrd")) == 0
    assert "skipped 1 RT Structure Set Storage" in capsys.readouterr().out
    assert (out / "result.seg.nrrd").is_file()


@pytest.mark.parametrize("problem", ["single 2-D image", "truncated pixel data", "truncated header"])
def test_unusable_series_exit_2_naming_the_cause_and_the_file(problem: str, model_args: list[str], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    query = annotated_query(tmp_path)
    files = sorted(query.iterdir())
    if problem == "single 2-D image":
        for path in files[1:]:
            path.unlink()
        expected = [files[0].name, "single 2-D image"]
    else:
        data = files[4].read_bytes()
        files[4].write_bytes(data[:len(data) - 500] if problem == "truncated pixel data" else data[:300])
        expected = [files[4].name, "truncated"]
    out = tmp_path / "out"
    assert segment(query, tmp_path, model_args, "--out", str(out / "result.seg.nrrd")) == 2
    message = capsys.readouterr().err
    assert all(part in message for part in expected) and "Traceback" not in message
    assert not out.exists()


def test_pydicoms_truncated_mr_is_named(tmp_path: Path) -> None:
    derived_series(tmp_path / "series", "MR_small.dcm", slices=3)
    truncated = pydicom.dcmread(get_testdata_file("MR_truncated.dcm"))
    reference = pydicom.dcmread(tmp_path / "series" / "001.dcm")
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "ImagePositionPatient",
                    "ImageOrientationPatient"):
        setattr(truncated, keyword, reference.get(keyword))
    truncated.ImagePositionPatient = [-20.0, -30.0, 9.0]
    truncated.save_as(tmp_path / "series" / "003.dcm")
    with pytest.raises(InputError, match="003.dcm"):
        read_volume(tmp_path / "series")


def test_an_internal_error_is_one_line_and_a_log_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from SDFSMISLib.cli import inference

    def broken(_args: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(inference, "_command_segment", broken)
    assert main(["segment", "--query", "q", "--support-mask", "m", "--out", str(tmp_path / "x.nrrd")]) == 1
    message = capsys.readouterr().err
    assert "internal error: ZeroDivisionError: a bug" in message and "Traceback" not in message
    log = Path(message.split("The details are in ")[1].split(";")[0])
    assert "Traceback" in log.read_text() and "a bug" in log.read_text()
    log.unlink()


# --- enhanced multi-frame images, derived from pydicom's single frames with highdicom's legacy converter -----


def enhanced(folder: Path, source: str, modality: str) -> Path:
    """A legacy-converted enhanced CT or MR image of a derived series, its frames in shuffled order."""
    datasets = [pydicom.dcmread(path) for path in derived_series(folder / "frames", source)]
    order = np.random.default_rng(3).permutation(len(datasets))
    convert = {"CT": hd.legacy.LegacyConvertedEnhancedCTImage, "MR": hd.legacy.LegacyConvertedEnhancedMRImage}
    image = convert[modality]([datasets[index] for index in order], series_instance_uid=hd.UID(), series_number=7,
                              sop_instance_uid=hd.UID(), instance_number=1)
    (folder / "enhanced").mkdir()
    image.save_as(folder / "enhanced" / "image.dcm")
    return folder / "enhanced"


@pytest.mark.parametrize(("source", "modality"), [("CT_small.dcm", "CT"), ("MR_small.dcm", "MR")])
def test_an_enhanced_multi_frame_image_reads_as_its_single_frames_do(source: str, modality: str,
                                                                     tmp_path: Path) -> None:
    folder = enhanced(tmp_path, source, modality)
    series = read_series(folder)
    assert len(series.files) == 1 and sorted(series.frames) == list(range(SLICES)) and series.frames != tuple(
        range(SLICES))  # the frames were stored out of order
    volume, reference = read_volume(folder), read_volume(tmp_path / "frames")
    assert volume.same_grid(reference, tolerance=1e-4) and np.array_equal(volume.array, reference.array)


def test_a_seg_of_an_enhanced_image_references_its_frames(model_args: list[str], tmp_path: Path) -> None:
    folder = enhanced(tmp_path, "MR_small.dcm", "MR")
    volume = read_volume(folder)
    mask = np.zeros(volume.array.shape, np.uint8)
    mask[[1, 4], 20:40, 20:40] = 1
    write_volume(tmp_path / "mask.nii.gz", volume.with_array(mask))
    seg, labelmap = tmp_path / "out" / "seg.dcm", tmp_path / "out" / "labels.nii.gz"
    assert segment(folder, tmp_path, model_args, "--out-dicom-seg", str(seg), "--out", str(labelmap)) == 0
    assert_dciodvfy_passes_if_installed(seg)
    series, labels = read_series(folder), read_volume(labelmap).array
    source = series.datasets[0].SOPInstanceUID
    stored = hd.seg.segread(seg).get_pixels_by_source_frame(
        source, source_frame_numbers=range(1, SLICES + 1), assert_missing_frames_are_empty=True)[..., 0]
    assert np.array_equal(stored > 0, series.in_source_order(labels == 1)) and labels.any()
    assert_dcmqi_reads_back(seg, labelmap, folder, tmp_path)
