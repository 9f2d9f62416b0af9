"""Synthetic abdominal phantoms: reproducible, anatomically placed in LPS space, realistic intensity order,
and written in the layout of the real CHAOS-T2 / SABS datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SDFSMISLib.data.phantom import (
    CHAOS_DIRECTION,
    LABEL_IDS,
    dataset_grid,
    generate_phantom,
    patient_seed,
    write_phantom_dataset,
)
from SDFSMISLib.data.phantom_anatomy import CT_WINDOW
from SDFSMISLib.errors import InputError
from SDFSMISLib.io.volumes import Volume

# A coarse grid with the field of view of the real data (about 336 x 336 x 256 mm): fast, same anatomy.
SMALL = {"shape": (16, 80, 80), "spacing": (4.2, 4.2, 16.0)}
FLIP_X = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def oblique(degrees: float) -> tuple[float, ...]:
    """The CHAOS direction turned about the superior axis: an oblique axial grid."""
    cos, sin = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    rotation = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
    return tuple(float(value) for value in (rotation @ np.reshape(CHAOS_DIRECTION, (3, 3))).ravel())


def centroid(labels: Volume, label: int) -> np.ndarray:
    """LPS centroid (mm) of one label, relative to the physical centre of the grid."""
    k, j, i = np.nonzero(labels.array == label)
    centre = (np.array(labels.array.shape[::-1]) - 1) / 2
    offsets = (np.stack([i, j, k]).mean(axis=1) - centre) * np.asarray(labels.spacing)
    return labels.direction_matrix() @ offsets


@pytest.mark.parametrize("modality", ["mr", "ct"])
def test_same_seed_same_phantom_and_other_seed_differs(modality: str) -> None:
    image, labels = generate_phantom(7, modality, **SMALL)
    again_image, again_labels = generate_phantom(7, modality, **SMALL)
    other_image, other_labels = generate_phantom(8, modality, **SMALL)
    np.testing.assert_array_equal(image.array, again_image.array)
    np.testing.assert_array_equal(labels.array, again_labels.array)
    assert not np.array_equal(labels.array, other_labels.array)
    assert not np.array_equal(image.array, other_image.array)
    assert image.array.dtype == np.int16 and labels.array.dtype == np.uint8
    assert image.same_grid(labels) and image.array.shape == SMALL["shape"]


@pytest.mark.parametrize("modality", ["mr", "ct"])
@pytest.mark.parametrize("seed", [0, 1])
def test_every_organ_on_at_least_five_slices_of_the_dataset_layout(modality: str, seed: int) -> None:
    shape, spacing, direction = dataset_grid(modality, seed)
    _, labels = generate_phantom(seed, modality, shape, spacing, direction)
    assert set(np.unique(labels.array)) == {0, *LABEL_IDS[modality].values()}
    for organ, label in LABEL_IDS[modality].items():
        slices = int(np.count_nonzero((labels.array == label).any(axis=(1, 2))))
        assert slices >= 5, f"{organ} is on only {slices} slices"


@pytest.mark.parametrize("direction", [None, CHAOS_DIRECTION, FLIP_X, oblique(25.0)],
                         ids=["identity", "chaos", "flip-x", "oblique"])
@pytest.mark.parametrize("seed", [3, 4])
def test_organs_sit_on_the_anatomical_side_in_lps_space(direction: tuple[float, ...] | None, seed: int) -> None:
    _, labels = generate_phantom(seed, "mr", direction=direction, origin=(-150.0, 120.0, -60.0), **SMALL)
    ids = LABEL_IDS["mr"]
    liver, spleen = centroid(labels, ids["liver"]), centroid(labels, ids["spleen"])
    right, left = centroid(labels, ids["right_kidney"]), centroid(labels, ids["left_kidney"])
    # LPS: +x is the patient's left, +y posterior, +z superior.
    assert right[0] < -20 < 20 < left[0], "right kidney on the patient's right (-x), left kidney on the left"
    assert liver[0] < 0 < spleen[0], "liver on the patient's right, spleen on the left"
    assert right[1] > liver[1] and left[1] > liver[1], "kidneys posterior to the liver centroid"
    assert spleen[1] > liver[1], "spleen posterior to the liver centroid"
    assert right[2] < liver[2] and left[2] < spleen[2], "kidneys lower than liver and spleen"


def test_flipping_the_grid_mirrors_the_array_but_not_the_anatomy() -> None:
    _, labels = generate_phantom(5, "ct", **SMALL)
    _, flipped = generate_phantom(5, "ct", direction=FLIP_X, **SMALL)
    mismatch = np.mean(flipped.array != labels.array[:, :, ::-1])
    assert mismatch < 1e-3
    assert not np.array_equal(flipped.array, labels.array)


def test_the_anatomy_does_not_depend_on_the_grid() -> None:
    _, coarse = generate_phantom(6, "mr", **SMALL)
    _, fine = generate_phantom(6, "mr", shape=(32, 112, 112), spacing=(3.0, 3.0, 8.0))
    for label in LABEL_IDS["mr"].values():
        assert np.linalg.norm(centroid(coarse, label) - centroid(fine, label)) < 6.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_organ_intensities_follow_the_modality(seed: int) -> None:
    mr_image, mr_labels = generate_phantom(seed, "mr", **SMALL)
    ct_image, ct_labels = generate_phantom(seed, "ct", **SMALL)

    def mean(image: Volume, labels: Volume, modality: str, organ: str) -> float:
        return float(image.array[labels.array == LABEL_IDS[modality][organ]].mean())

    mr = {organ: mean(mr_image, mr_labels, "mr", organ) for organ in LABEL_IDS["mr"]}
    ct = {organ: mean(ct_image, ct_labels, "ct", organ) for organ in LABEL_IDS["ct"]}
    # T2: liver darker than spleen and kidneys; portal-venous CT: liver < spleen < kidneys.
    assert mr["liver"] < mr["spleen"] and mr["liver"] < min(mr["right_kidney"], mr["left_kidney"])
    assert ct["liver"] < ct["spleen"] < min(ct["right_kidney"], ct["left_kidney"])
    assert 0 <= mr_image.array.min() and 500 < mr_image.array.max() < 1400
    assert (ct_image.array.min(), ct_image.array.max()) == CT_WINDOW


def test_write_phantom_dataset_matches_the_real_layouts(tmp_path: Path) -> None:
    mr = write_phantom_dataset(tmp_path / "mr", patients=1, modality="mr", seed=1, first_id=3)
    ct = write_phantom_dataset(tmp_path / "ct", patients=1, modality="ct", seed=1)
    assert [path.name for path in mr] == ["image_3.nii.gz", "label_3.nii.gz"]
    assert [path.name for path in ct] == ["image_1.nii.gz", "label_1.nii.gz"]
    image, labels = sitk.ReadImage(str(mr[0])), sitk.ReadImage(str(mr[1]))
    assert image.GetPixelID() == sitk.sitkInt16 and labels.GetPixelID() == sitk.sitkUInt8
    assert image.GetSize()[:2] == (256, 256) and 30 <= image.GetSize()[2] <= 46
    np.testing.assert_allclose(image.GetSpacing(), (1.25, 1.25, 7.7), atol=1e-5)
    np.testing.assert_allclose(image.GetDirection(), CHAOS_DIRECTION, atol=1e-6)
    for attribute in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(labels, attribute)(), getattr(image, attribute)(), atol=1e-5)
    assert set(np.unique(sitk.GetArrayFromImage(labels))) == {0, 1, 2, 3, 4}
    # The files hold exactly what generate_phantom makes for that patient.
    seed = patient_seed(1, "mr", 3)
    expected_image, expected_labels = generate_phantom(seed, "mr", *dataset_grid("mr", seed))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), expected_image.array)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), expected_labels.array)

    image, labels = sitk.ReadImage(str(ct[0])), sitk.ReadImage(str(ct[1]))
    assert image.GetSize()[:2] == (256, 256) and image.GetSpacing()[2] == pytest.approx(5.0)
    pixels = sitk.GetArrayFromImage(image)
    assert CT_WINDOW == (pixels.min(), pixels.max())
    assert set(np.unique(sitk.GetArrayFromImage(labels))) == {0, 1, 2, 3, 6}


@pytest.mark.parametrize("arguments", [
    {"seed": 0, "modality": "pet"},
    {"seed": -1},
    {"seed": 0, "direction": (1.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 1.0)},
    {"seed": 0, "shape": (0, 8, 8)},
    {"seed": 0, "spacing": (1.0, -1.0, 1.0)},
])
def test_bad_arguments_raise_input_errors(arguments: dict) -> None:
    with pytest.raises(InputError):
        generate_phantom(**arguments)


def test_bad_dataset_arguments_raise_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        write_phantom_dataset(tmp_path, patients=0)
    with pytest.raises(InputError):
        write_phantom_dataset(tmp_path, modality="us")
    assert not list(tmp_path.iterdir())
