"""Preprocessing recipes put volumes in model space and bring labels back onto the exact input grid."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from SDFSMISLib.data.preprocessing import preprocess
from SDFSMISLib.errors import InputError
from SDFSMISLib.io.volumes import Volume

SHAPE = (18, 40, 50)  # [K, J, I]
SPACING = (0.8, 1.1, 3.0)  # (i, j, k) mm
OBLIQUE_FLIPPED = tuple((Rotation.from_euler("xyz", [15, -10, 25], degrees=True).as_matrix()
                         @ np.diag([-1, 1, -1])).ravel())


def ellipsoid_labels(shape: tuple[int, int, int] = SHAPE, spacing: tuple[float, ...] = SPACING) -> np.ndarray:
    """Two organs (labels 1 and 2) as ellipsoids given in mm, so they keep their shape on anisotropic grids."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    labels = np.zeros(shape, np.int16)
    for label, centre, radii in ((1, (22, 18, 8), (12, 10, 14)), (2, (35, 25, 12), (5, 6, 8))):
        distance = sum(((index - c) * s / r) ** 2 for index, c, s, r in zip((i, j, k), centre, spacing, radii))
        labels[distance < 1] = label
    return labels


def oblique_volume(labels: np.ndarray) -> Volume:
    noise = np.random.default_rng(0).normal(size=labels.shape)
    return Volume((labels * 100 + noise * 5).astype(np.float32), SPACING, (10.0, -20.0, 30.5), OBLIQUE_FLIPPED)


def physical_centre(volume: Volume, mask: np.ndarray) -> np.ndarray:
    """Centre of mass of ``mask`` in LPS mm."""
    index_kji = np.asarray(ndimage.center_of_mass(mask))
    return volume.origin + volume.direction_matrix() @ (np.asarray(volume.spacing) * index_kji[::-1])


@pytest.mark.parametrize(("recipe", "size", "min_dice"), [("generic", 32, 0.9), ("chaos-t2", 128, 0.7),
                                                          ("synapse-ct", 40, 0.9)])
def test_labels_round_trip_on_oblique_flipped_anisotropic_grid(recipe: str, size: int, min_dice: float) -> None:
    labels = ellipsoid_labels()
    volume = oblique_volume(labels)
    prepared = preprocess(volume, recipe, size)
    assert prepared.image.dtype == np.float32 and prepared.image.shape[1:] == (size, size)
    assert prepared.image.min() == -1 and prepared.image.max() == pytest.approx(1)
    back = prepared.labels_to_original(prepared.labels_to_model(labels))
    assert back.same_grid(volume) and back.array.dtype == labels.dtype
    model_axes = prepared.model.direction_matrix()
    for label in (1, 2):
        original, returned = labels == label, back.array == label
        assert 2 * (original & returned).sum() / (original.sum() + returned.sum()) > min_dice
        shift = model_axes.T @ (physical_centre(volume, original) - physical_centre(volume, returned))
        assert np.all(np.abs(shift) <= np.asarray(prepared.model.spacing) / 2), shift


def test_grid_needing_no_resampling_maps_exactly() -> None:
    """Equal in-plane spacing and the longer side at ``size``: a pure flip/permutation plus a whole-voxel pad."""
    shape = (6, 24, 32)
    labels = np.random.default_rng(2).integers(0, 5, size=shape).astype(np.int16)
    volume = Volume(labels.astype(np.float32), (1.5, 1.5, 4.0), (5.0, 6.0, 7.0), OBLIQUE_FLIPPED)
    prepared = preprocess(volume, "generic", 32)
    model = prepared.labels_to_model(labels)
    assert model.shape == (6, 32, 32)
    assert np.array_equal(np.bincount(model.ravel()) - np.bincount(labels.ravel()), [6 * 32 * 8, 0, 0, 0, 0])
    assert np.array_equal(prepared.labels_to_original(model).array, labels)


def test_none_recipe_is_identity() -> None:
    array = np.random.default_rng(3).normal(size=(4, 16, 16)) * 300
    volume = Volume(array, (1.25, 1.25, 7.7), (1.0, 2.0, 3.0), OBLIQUE_FLIPPED)
    prepared = preprocess(volume, "none", 16)
    expected = (array - array.min()) / (array.max() - array.min()) * 2 - 1
    np.testing.assert_allclose(prepared.image, expected, atol=1e-6)
    assert prepared.model.same_grid(volume, tolerance=0)
    labels = (array > 100).astype(np.uint8)
    assert np.array_equal(prepared.labels_to_model(labels), labels)
    assert np.array_equal(prepared.labels_to_original(labels).array, labels)
    with pytest.raises(InputError, match="already at 32 x 32"):
        preprocess(volume, "none", 32)


def landing_ids(shape: tuple[int, int, int], direction: tuple[float, ...],
              size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(model, ids)``: voxel ids on the input grid and where they land in model space (no resampling needed)."""
    ids = np.arange(np.prod(shape), dtype=np.int32).reshape(shape)
    prepared = preprocess(Volume(ids.astype(np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), direction), "generic", size)
    assert np.all(np.diff(prepared.slice_positions()) > 0), "model slices must run inferior -> superior"
    return prepared.labels_to_model(ids), ids


def test_slices_run_inferior_to_superior() -> None:
    model, ids = landing_ids((5, 8, 8), (1, 0, 0, 0, -1, 0, 0, 0, -1), 8)  # slices stored superior-first
    assert np.array_equal(model, ids[::-1])


def test_coronal_volume_is_resliced_axially_in_the_model_frame() -> None:
    # Index i -> patient left (+x), j -> inferior (-z), k -> posterior (+y): a coronal series.
    model, ids = landing_ids((8, 5, 8), (1, 0, 0, 0, 0, 1, 0, -1, 0), 8)
    assert np.array_equal(model, ids.transpose(1, 0, 2)[::-1, ::-1])


def test_axial_volume_in_the_training_frame_keeps_its_array_order() -> None:
    model, ids = landing_ids((3, 8, 8), (1, 0, 0, 0, -1, 0, 0, 0, 1), 8)  # like the CHAOS-T2 files
    assert np.array_equal(model, ids)


def test_synapse_ct_window_and_central_crop() -> None:
    hu = np.full((3, 64, 64), 0.0, np.float32)
    hu[:, :4, :] = hu[:, :, :4] = 3000  # inside the cropped border: must not appear
    hu[:, 30:34, 30:34] = -1000
    hu[:, 10:14, 10:14] = 1000
    volume = Volume(hu, (0.5, 0.5, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, -1, 0, 0, 0, 1))
    prepared = preprocess(volume, "synapse-ct", 28)
    image = volume.to_image()
    np.testing.assert_allclose(prepared.model.origin, image.TransformContinuousIndexToPhysicalPoint((4.5, 4.5, 0)))
    assert prepared.model.spacing == pytest.approx((1.0, 1.0, 2.0))
    assert prepared.image[:, 0, 0] == pytest.approx(-0.375)  # 0 HU in the window [-125, 275]
    assert prepared.image.min() == -1 and prepared.image.max() == 1


def test_chaos_t2_spacing_and_top_clip() -> None:
    array = np.random.default_rng(4).uniform(0, 500, size=(10, 60, 60)).astype(np.float32)
    array.flat[:50] = 1e6  # a few hot voxels (under 0.5 %) must not squash the histogram
    volume = Volume(array, (2.0, 2.0, 5.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, -1, 0, 0, 0, 1))
    prepared = preprocess(volume, "chaos-t2", 64)
    assert prepared.model.spacing == pytest.approx((5.0, 5.0, 7.7))
    assert prepared.image.shape == (round(50 / 7.7), 64, 64)
    assert np.median(prepared.image[:, 20:44, 20:44]) > -0.2


def test_bad_arguments() -> None:
    volume = oblique_volume(ellipsoid_labels())
    with pytest.raises(InputError, match="unknown preprocessing recipe"):
        preprocess(volume, "ct")
    prepared = preprocess(volume, "generic", 16)
    with pytest.raises(InputError, match="does not match the model grid"):
        prepared.labels_to_original(np.zeros(SHAPE))
    with pytest.raises(InputError, match="does not match the input grid"):
        prepared.labels_to_model(np.zeros((18, 16, 16)))
