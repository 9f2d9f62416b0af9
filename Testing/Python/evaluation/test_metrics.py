"""Metrics against SimpleITK and hand-computed cases; the report writers on a small results set."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from SDFSMISLib.errors import InputError
from SDFSMISLib.evaluation.metrics import organ_metrics, surface, symmetric_surface_distances
from SDFSMISLib.evaluation.reporting import ORGANS, bar_chart, markdown_table, overlay_png

SPACING = (3.0, 1.25, 0.8)  # (k, j, i) mm: anisotropic on every axis so a swapped axis changes the numbers
SHAPE = (20, 40, 50)


def box(low: tuple[int, int, int], high: tuple[int, int, int]) -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[low[0]:high[0], low[1]:high[1], low[2]:high[2]] = True
    return mask


def ball(centre: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    grid = np.indices(SHAPE, dtype=float)
    squared = sum(((axis - c) * s) ** 2 for axis, c, s in zip(grid, centre, SPACING))
    return squared < radius_mm ** 2


def sitk_image(mask: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(SPACING[::-1])  # SimpleITK spacing is (i, j, k)
    return image


def sitk_hausdorff(pred: np.ndarray, truth: np.ndarray) -> float:
    measure = sitk.HausdorffDistanceImageFilter()
    measure.Execute(sitk_image(pred), sitk_image(truth))
    return measure.GetHausdorffDistance()


def sitk_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    measure = sitk.LabelOverlapMeasuresImageFilter()
    measure.Execute(sitk_image(truth), sitk_image(pred))
    return measure.GetDiceCoefficient()


# SimpleITK's Hausdorff distance is between the voxel sets; ours is between their surfaces. They agree where
# the farthest points are outside the other mask and the nearest points are reached across the surfaces:
# shifted boxes, nested boxes, separate balls.
HAUSDORFF_CASES = {
    "shifted along k": (box((4, 5, 10), (10, 20, 30)), box((6, 5, 10), (12, 20, 30))),
    "shifted along i": (box((4, 5, 10), (10, 20, 30)), box((4, 5, 13), (10, 20, 33))),
    "nested": (box((8, 10, 18), (12, 14, 22)), box((2, 3, 5), (18, 35, 45))),
    "separate balls": (ball((6, 12, 15), 8.0), ball((12, 28, 35), 6.0)),
}


@pytest.mark.parametrize("name", HAUSDORFF_CASES)
def test_hundredth_percentile_is_the_simpleitk_hausdorff_distance(name: str) -> None:
    pred, truth = HAUSDORFF_CASES[name]
    assert symmetric_surface_distances(pred, truth, SPACING).max() == pytest.approx(sitk_hausdorff(pred, truth))


@pytest.mark.parametrize("name", HAUSDORFF_CASES)
def test_dice_is_the_simpleitk_dice(name: str) -> None:
    pred, truth = HAUSDORFF_CASES[name]
    assert organ_metrics(pred, truth, SPACING)["dice"] == pytest.approx(sitk_dice(pred, truth))


def test_random_overlap_dice_matches_simpleitk() -> None:
    rng = np.random.default_rng(0)
    pred, truth = rng.random(SHAPE) > 0.6, rng.random(SHAPE) > 0.5
    assert organ_metrics(pred, truth, SPACING)["dice"] == pytest.approx(sitk_dice(pred, truth))


def shifted_pair(low: list[int], high: list[int], axis: int, shift: int) -> tuple[np.ndarray, np.ndarray]:
    moved_low, moved_high = list(low), list(high)
    moved_low[axis] += shift
    moved_high[axis] += shift
    return box(tuple(low), tuple(high)), box(tuple(moved_low), tuple(moved_high))


@pytest.mark.parametrize(("axis", "shift"), [(0, 2), (1, 3), (2, 1)])
def test_parallel_slabs_are_shift_times_spacing_apart_everywhere(axis: int, shift: int) -> None:
    """Two one-voxel-thick slabs ``shift`` voxels apart along ``axis``: every distance is ``shift * spacing``."""
    low, high = [4, 8, 10], [12, 18, 22]
    high[axis] = low[axis] + 1
    metrics = organ_metrics(*shifted_pair(low, high, axis, shift), SPACING)
    assert metrics == pytest.approx({"dice": 0.0, "hd95": shift * SPACING[axis], "assd": shift * SPACING[axis]})


@pytest.mark.parametrize(("axis", "shift"), [(0, 2), (1, 3), (2, 1)])
def test_box_shifted_along_one_axis_is_shift_times_spacing_apart_at_most(axis: int, shift: int) -> None:
    """The end faces of two shifted 8x10x12 boxes are ``shift * spacing`` apart; the shared side walls touch."""
    distances = symmetric_surface_distances(*shifted_pair([4, 8, 10], [12, 18, 22], axis, shift), SPACING)
    assert distances.max() == pytest.approx(shift * SPACING[axis])
    assert distances.min() == 0


def test_percentile_and_mean_follow_the_pooled_distances() -> None:
    pred, truth = HAUSDORFF_CASES["separate balls"]
    pooled = symmetric_surface_distances(pred, truth, SPACING)
    metrics = organ_metrics(pred, truth, SPACING)
    assert metrics["hd95"] == pytest.approx(np.percentile(pooled, 95))
    assert metrics["assd"] == pytest.approx(pooled.mean())
    assert pooled.size == surface(pred).sum() + surface(truth).sum()


def test_identical_masks_and_empty_masks() -> None:
    mask = box((4, 5, 10), (10, 20, 30))
    empty = np.zeros(SHAPE, dtype=bool)
    assert organ_metrics(mask, mask, SPACING) == {"dice": 1.0, "hd95": 0.0, "assd": 0.0}
    assert organ_metrics(empty, empty, SPACING) == {"dice": 1.0, "hd95": 0.0, "assd": 0.0}
    for pred, truth in ((mask, empty), (empty, mask)):
        metrics = organ_metrics(pred, truth, SPACING)
        assert metrics["dice"] == 0.0 and math.isnan(metrics["hd95"]) and math.isnan(metrics["assd"])


def test_mask_touching_the_array_border_is_measured_like_an_uncropped_one() -> None:
    pred, truth = box((0, 0, 0), (6, 10, 12)), box((1, 0, 0), (7, 12, 12))
    padded = [np.pad(mask, 3) for mask in (pred, truth)]
    distances = np.sort(symmetric_surface_distances(pred, truth, SPACING))
    assert np.allclose(distances, np.sort(_uncropped_distances(*padded)))


def _uncropped_distances(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The same definition computed on the whole array: a check on the bounding-box crop."""
    from scipy import ndimage

    pred_surface = pred & ~ndimage.binary_erosion(pred, np.ones((3, 3, 3)))
    truth_surface = truth & ~ndimage.binary_erosion(truth, np.ones((3, 3, 3)))
    return np.concatenate([ndimage.distance_transform_edt(~truth_surface, sampling=SPACING)[pred_surface],
                           ndimage.distance_transform_edt(~pred_surface, sampling=SPACING)[truth_surface]])


def test_bad_input_names_the_fix() -> None:
    mask = box((4, 5, 10), (10, 20, 30))
    with pytest.raises(InputError, match="same shape|one shape"):
        organ_metrics(mask, mask[:, :, :-1], SPACING)
    with pytest.raises(InputError, match="spacing"):
        organ_metrics(mask, mask, (1.0, 1.0))
    with pytest.raises(InputError, match="non-empty"):
        symmetric_surface_distances(mask, np.zeros_like(mask), SPACING)


def results_fixture() -> dict:
    return {
        "model": {organ: [{"dice": 0.8, "hd95": 10.0, "assd": 2.0}, {"dice": 0.6, "hd95": 20.0, "assd": 4.0}]
                  for organ in ORGANS},
        "copy support": {"Spleen": [{"dice": 0.5, "hd95": 30.0, "assd": 6.0},
                                    {"dice": 0.0, "hd95": math.nan, "assd": math.nan}],
                         "Liver": [{"dice": 0.7, "hd95": 10.0, "assd": 2.0}]},
    }


def test_markdown_table_has_the_papers_columns_and_values() -> None:
    lines = markdown_table(results_fixture()).splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["Method", "Spleen", "Liver", "LK", "RK", "Mean Dice", "HD95", "ASSD"]
    model = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert model == ["model", "70.00", "70.00", "70.00", "70.00", "70.00", "15.00", "3.00"]
    copy = [cell.strip() for cell in lines[3].strip("|").split("|")]
    assert copy == ["copy support", "25.00", "70.00", "–", "–", "47.50", "20.00", "4.00"]
    assert any("copy support: 1 case" in line for line in lines)


def test_markdown_table_adds_one_row_per_fold_and_method_over_several_folds() -> None:
    cases = {"model": {"Spleen": [{"dice": 0.9, "hd95": 1.0, "assd": 1.0, "fold": 0},
                                  {"dice": 0.3, "hd95": 3.0, "assd": 3.0, "fold": 1}]},
             "copy": {"Spleen": [{"dice": 0.5, "hd95": 2.0, "assd": 2.0, "fold": 0},
                                 {"dice": 0.5, "hd95": 2.0, "assd": 2.0, "fold": 1}]}}
    lines = markdown_table(cases).splitlines()
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.strip("|").split("|")][1:]
            for line in lines if line.startswith("| ") and "Method" not in line}
    assert rows["model"][0] == "60.00"  # pooled over both folds
    assert rows["fold 0: model"][0] == "90.00" and rows["fold 1: model"][0] == "30.00"
    assert rows["fold 1: copy"][0] == "50.00"  # the fold where the pooled mean hides a loss to copy
    assert list(rows).index("fold 0: copy") < list(rows).index("fold 1: model")
    assert "Per fold" not in markdown_table(results_fixture())  # one fold (no fold key): one table


def test_figures_are_written_as_png(tmp_path) -> None:  # noqa: ANN001
    chart = bar_chart(results_fixture(), tmp_path / "dice.png")
    mask = box((4, 5, 10), (10, 20, 30))[6]
    image = np.linspace(-1, 1, mask.size).reshape(mask.shape)
    overlay = overlay_png(tmp_path / "case.png", image, mask, image, np.roll(mask, 2, axis=0), mask)
    for path in (chart, overlay):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.png", "dice.png"]  # no temporary left behind
