"""``sdfsmis segment`` and ``sdfsmis demo`` end to end, through ``SDFSMISLib.cli.main.main``, with a tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SDFSMISLib.cli.main import main
from SDFSMISLib.data.phantom import CHAOS_DIRECTION, generate_phantom
from SDFSMISLib.evaluation.protocol import protocol_support_mask
from SDFSMISLib.io.segmentation_files import read_labelmap, segmentation_metadata
from SDFSMISLib.io.volumes import Volume, read_volume, write_volume

SIZE = 64


def patient(seed: int, slices: int) -> tuple[Volume, Volume]:
    return generate_phantom(seed, "mr", shape=(slices, SIZE, SIZE), spacing=(5.5, 5.5, 16.0),
                            direction=CHAOS_DIRECTION)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A query (NRRD) and a support patient (NIfTI) with the protocol's 3 annotated slices per organ."""
    folder = tmp_path_factory.mktemp("volumes")
    query, query_truth = patient(3, 8)
    support, support_truth = patient(4, 10)
    return {"query": write_volume(folder / "query.nrrd", query),
            "query_truth": write_volume(folder / "query_truth.nrrd", query_truth),
            "support": write_volume(folder / "support.nii.gz", support),
            "mask": write_volume(folder / "mask.nii.gz", protocol_support_mask(support_truth, (1, 2, 3, 4)))}


def segment(files: dict[str, Path], model_args: list[str], out: Path, *extra: str) -> int:
    return main(["segment", "--query", str(files["query"]), "--support", str(files["support"]),
                 "--support-mask", str(files["mask"]), "--out", str(out), *model_args, *extra])


def test_segment_writes_a_slicer_segmentation_on_the_query_grid(files: dict[str, Path], model_args: list[str],
                                                                tmp_path: Path) -> None:
    out = tmp_path / "query.seg.nrrd"
    assert segment(files, model_args, out) == 0
    query, result = read_volume(files["query"]), read_labelmap(out)
    assert result.same_grid(query) and set(np.unique(result.array)) <= {0, 1, 2, 3, 4}
    image = sitk.ReadImage(str(out))
    assert image.GetMetaData("Segmentation_MasterRepresentation") == "Binary labelmap"
    names = {image.GetMetaData(f"Segment{i}_Name"): int(image.GetMetaData(f"Segment{i}_LabelValue"))
             for i in range(4)}
    assert names == {"liver": 1, "right kidney": 2, "left kidney": 3, "spleen": 4}
    assert image.GetMetaData("Segment0_Extent") == segmentation_metadata(result.array, [1])["Segment0_Extent"]
    again = tmp_path / "again.seg.nrrd"
    assert segment(files, model_args, again) == 0  # the same input gives the same output
    assert np.array_equal(read_labelmap(again).array, result.array)


def test_segmentation_extent_is_the_segment_bounding_box() -> None:
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[1:3, 2, 3:5] = 7
    metadata = segmentation_metadata(labels, [7, 9])
    assert metadata["Segment0_Extent"] == "3 4 2 2 1 2"  # i, j, k
    assert metadata["Segment1_Extent"] == "0 -1 0 -1 0 -1" and metadata["Segment1_Name"] == "label 9"


def test_segment_same_patient_keeps_the_annotated_slices(files: dict[str, Path], model_args: list[str],
                                                         tmp_path: Path) -> None:
    truth = read_volume(files["query_truth"])
    annotated = [3, 6]  # slices holding the liver (1); the phantom's liver spans slices 3..7
    annotation = np.zeros_like(truth.array)
    annotation[annotated] = np.where(truth.array[annotated] == 1, 1, 0)
    assert annotation[annotated].any(axis=(1, 2)).all()
    mask = write_volume(tmp_path / "annotated.nrrd", truth.with_array(annotation))
    out = tmp_path / "filled.nii.gz"
    assert main(["segment", "--query", str(files["query"]), "--support-mask", str(mask), "--labels", "1",
                 "--range", "2:7", "--out", str(out), *model_args]) == 0
    result = read_volume(out)
    assert np.array_equal(result.array[annotated], annotation[annotated])
    assert not result.array[[0, 1]].any()  # outside --range 2:7
    assert result.array[[2, 4, 5, 7]].any(axis=(1, 2)).all()


def test_segment_help_shows_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "120mm:260mm" in text and "--support-mask" in text


def _two_d(tmp_path: Path, files: dict[str, Path]) -> dict[str, Path]:
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((SIZE, SIZE), np.int16)), str(path))
    return {**files, "query": path}


def _with_nan(tmp_path: Path, files: dict[str, Path]) -> dict[str, Path]:
    query = read_volume(files["query"])
    array = query.array.astype(np.float32)
    array[3, 10, 10] = np.nan
    return {**files, "query": write_volume(tmp_path / "nan.nrrd", query.with_array(array))}


def _mask(tmp_path: Path, files: dict[str, Path], array_of: str) -> dict[str, Path]:
    support = read_volume(files["support"])
    volume = support.with_array(np.zeros_like(support.array)) if array_of == "empty" else patient(4, 9)[1]
    return {**files, "mask": write_volume(tmp_path / f"{array_of}.nii.gz", volume)}


def _corrupt(tmp_path: Path, model_args: list[str]) -> list[str]:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    return ["--checkpoint", str(path), *model_args[2:]]


OUT = "result.seg.nrrd"
#: case -> (make(tmp_path, files, model_args) -> (files, model_args, extra options, output name), message)
BAD_INPUTS = {
    "empty support mask": (lambda tmp, f, m: (_mask(tmp, f, "empty"), m, [], OUT), "empty"),
    "mask not on the support grid": (lambda tmp, f, m: (_mask(tmp, f, "other-grid"), m, [], OUT), "grid"),
    "2-D query": (lambda tmp, f, m: (_two_d(tmp, f), m, [], OUT), "2-D"),
    "NaN voxels": (lambda tmp, f, m: (_with_nan(tmp, f), m, [], OUT), "NaN"),
    "unknown output format": (lambda tmp, f, m: (f, m, [], "seg.png"), "unknown output format"),
    "corrupt checkpoint": (lambda tmp, f, m: (f, _corrupt(tmp, m), [], OUT), "safetensors"),
    "checkpoint without its base model": (lambda tmp, f, m: (f, m[:2], [], OUT), "go together"),
    "labels not annotated": (lambda tmp, f, m: (f, m, ["--labels", "1,7"], OUT), "7 are not annotated"),
    "unreadable range": (lambda tmp, f, m: (f, m, ["--range", "10-20"], OUT), "not understood"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_a_message_and_writes_nothing(case: str, files: dict[str, Path],
                                                              model_args: list[str], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    make, message = BAD_INPUTS[case]
    case_files, case_model, extra, name = make(tmp_path, files, model_args)
    out_dir = tmp_path / "out"
    assert segment(case_files, case_model, out_dir / name, *extra) == 2
    assert message in capsys.readouterr().err
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_demo_reports_dice_and_writes_a_segmentation_and_overlays(model_args: list[str], tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    phantoms = tmp_path / "phantoms"
    for number, seed in ((1, 11), (2, 12)):
        image, labels = patient(seed, 9)
        write_volume(phantoms / f"image_{number}.nii.gz", image)
        write_volume(phantoms / f"label_{number}.nii.gz", labels)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--phantoms", str(phantoms), *model_args]) == 0
    text = capsys.readouterr().out
    assert "Dice" in text and all(organ in text for organ in ("liver", "right kidney", "left kidney", "spleen"))
    # next to what 3D Slicer gives for free, in both ways of working
    assert "atlas patient to new patient" in text and "same patient" in text
    assert text.count("SDFSMIS         copy") == 2 and "fill between" in text and text.count("  mean ") == 2
    assert read_labelmap(out / "query_2.seg.nrrd").same_grid(read_volume(phantoms / "image_2.nii.gz"))
    assert sorted(path.name for path in out.glob("*.png")) == [
        "overlay_left_kidney.png", "overlay_liver.png", "overlay_right_kidney.png", "overlay_spleen.png"]
