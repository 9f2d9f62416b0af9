"""The same-patient evaluation (``sdfsmis evaluate --mode same-patient``) and 3D Slicer's Fill between slices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from SDFSMISLib.cli.main import main
from SDFSMISLib.data.phantom import generate_phantom
from SDFSMISLib.evaluation.baselines import fill_between_slices
from SDFSMISLib.evaluation.runner import PatientData, copy_predictor
from SDFSMISLib.evaluation.same_patient import evaluate_own_organ, fill_between_method, from_predictor
from SDFSMISLib.io.volumes import write_volume

SIZE = 64


def test_fill_between_interpolates_between_the_annotated_slices_and_not_beyond() -> None:
    masks = np.zeros((2, 32, 32), bool)
    masks[0, 8:16, 8:16] = True  # a 8 x 8 square on slice 3
    masks[1, 8:24, 8:24] = True  # a 16 x 16 square on slice 9
    filled = fill_between_slices((14, 32, 32), np.array([3, 9]), masks)
    areas = filled.sum(axis=(1, 2))
    assert not areas[:3].any() and not areas[10:].any()  # no extrapolation
    assert np.array_equal(filled[[3, 9]], masks)  # the painted slices stay as painted
    assert (np.diff(areas[3:10]) >= 0).all() and 64 < areas[6] < 256  # grows from one square to the other
    assert filled[4:9, 8:16, 8:16].all()  # the small square lies inside the large one: kept on every slice between


def patient(seed: int = 3) -> PatientData:
    image, labels = generate_phantom(seed, "mr", shape=(16, SIZE, SIZE), spacing=(5.0, 5.0, 10.0))
    return PatientData(seed, (image.array / 500.0 - 1).astype(np.float32), labels.array.astype(int), (10.0, 5.0, 5.0))


def test_annotated_slices_are_kept_and_the_rest_of_the_true_extent_predicted() -> None:
    case = patient()
    liver = 1
    truth = case.labels == liver
    copied = evaluate_own_organ(from_predictor(copy_predictor()), case, liver)
    extent = np.flatnonzero(truth.any(axis=(1, 2)))
    assert np.array_equal(copied.query_slices, extent)
    assert len(copied.support_slices) == 3 and np.array_equal(copied.prediction[copied.support_slices],
                                                               truth[copied.support_slices])
    # copy by hand: every slice of the extent takes the mask of the annotated slice nearest in rank
    ranks = {int(s): i for i, s in enumerate(extent)}
    expected = np.zeros_like(truth)
    for index in extent:
        nearest = min(copied.support_slices, key=lambda s: (abs(ranks[int(s)] - ranks[int(index)]), s))
        expected[index] = truth[nearest]
    assert np.array_equal(copied.prediction, expected)
    dice = 2 * (expected & truth).sum() / (expected.sum() + truth.sum())
    assert copied.metrics["dice"] == pytest.approx(dice) and dice < 1
    filled = evaluate_own_organ(fill_between_method(), case, liver)
    first, last = copied.support_slices.min(), copied.support_slices.max()
    assert not filled.prediction[:first].any() and not filled.prediction[last + 1:].any()
    assert filled.prediction[first:last + 1].any(axis=(1, 2)).all()


def test_same_patient_mode_end_to_end(tmp_path: Path, tiny_base: tuple[Path, Path]) -> None:
    data = tmp_path / "data"
    for seed in range(1, 11):
        image, labels = generate_phantom(seed, "mr", shape=(8, SIZE, SIZE), spacing=(5.0, 5.0, 15.0))
        write_volume(data / f"image_{seed}.nii.gz", image)
        write_volume(data / f"label_{seed}.nii.gz", labels)
    out = tmp_path / "report"
    assert main(["evaluate", "--data", str(data), "--out", str(out), "--size", str(SIZE), "--mode", "same-patient",
                 "--folds", "0", "--organs", "Liver,Spleen", "--query-range", "estimated"]) == 0
    record = json.loads((out / "results.json").read_text())
    assert record["mode"] == "same-patient" and record["query_range"] == "estimated"
    assert set(record["methods"]) == {"sdfsmis", "copy", "fill-between"}  # the mode's default methods
    assert {case["patient"] for case in record["cases"]["fill-between"]["Liver"]} == {1, 2, 3}  # every fold patient
    assert record["folds"][0]["patients"] == [1, 2, 3]
    everyone = tmp_path / "all-folds"
    assert main(["evaluate", "--data", str(data), "--out", str(everyone), "--size", str(SIZE), "--mode",
                 "same-patient", "--methods", "copy", "--organs", "Liver"]) == 0
    cases = json.loads((everyone / "results.json").read_text())["cases"]["copy"]["Liver"]
    assert sorted(case["patient"] for case in cases) == list(range(1, 11))  # shared fold patients scored once
    assert "Fill between slices (3D Slicer)" in (out / "table.md").read_text()


def test_fill_between_is_refused_in_the_cross_patient_mode(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    assert main(["evaluate", "--data", str(tmp_path), "--out", str(out), "--methods", "copy,fill-between"]) == 2
    assert "--mode same-patient" in capsys.readouterr().err and not out.exists()
