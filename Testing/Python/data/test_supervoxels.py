"""Supervoxel pseudo-labels: the 3-D Felzenszwalb on hand cases and against scikit-image, the body mask,
the whole recipe, and the cached folder generation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from skimage.segmentation import felzenszwalb

from SDFSMISLib.data import supervoxels as supervoxels_module
from SDFSMISLib.data.supervoxels import felzenszwalb_3d, foreground_mask, generate_pseudolabels, supervoxels
from SDFSMISLib.errors import InputError
from SDFSMISLib.io.volumes import Volume, read_volume, write_volume


def test_two_constant_blocks_separated_by_a_large_step_are_two_segments() -> None:
    volume = np.zeros((4, 6, 8))
    volume[:, :, 4:] = 200
    labels = felzenszwalb_3d(volume, scale=100, min_size=10)
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, volume > 0)


def test_a_constant_volume_is_one_segment() -> None:
    np.testing.assert_array_equal(felzenszwalb_3d(np.full((3, 5, 7), 42.0)), 0)


@pytest.mark.parametrize(("min_size", "segments"), [(5, 3), (20, 2)])
def test_a_segment_smaller_than_min_size_joins_the_neighbour_across_its_cheapest_edge(
        min_size: int, segments: int) -> None:
    volume = np.zeros((10, 12, 12))
    volume[:, :, 6:] = 150
    volume[4:6, 4:6, 5:7] = 200  # an 8-voxel bright cube straddling the 0 | 150 boundary
    labels = felzenszwalb_3d(volume, scale=1, min_size=min_size)
    assert labels.max() + 1 == segments
    if segments == 2:  # the cube went to the 150 side: |200 - 150| < |200 - 0|
        np.testing.assert_array_equal(labels, volume > 0)


def test_tau_is_scale_over_component_size() -> None:
    # scale 510 -> threshold (510 / 255) / size = 2 / size. Two voxels 1 apart merge (1 < 2 / 1), two
    # 4-voxel plateaus 1 apart do not (1 > 2 / 4) until scale 1275 (1 < 5 / 4).
    pair = np.array([0.0, 1.0]).reshape(1, 1, 2)
    plateaus = np.repeat([0.0, 1.0], 4).reshape(1, 1, 8)
    assert felzenszwalb_3d(pair, scale=510, min_size=1).max() == 0
    np.testing.assert_array_equal(felzenszwalb_3d(plateaus, scale=510, min_size=1), plateaus)
    assert felzenszwalb_3d(plateaus, scale=1275, min_size=1).max() == 0


@pytest.mark.parametrize(("spacing", "segments"), [((1, 1, 1), 1), ((4, 1, 1), 2), ((4, 4, 4), 1)])
def test_a_step_across_slices_costs_slice_over_in_plane_spacing_times_the_difference(
        spacing: tuple[float, float, float], segments: int) -> None:
    # threshold 2 for single voxels; the through-slice weight is 1 x (spacing k / spacing j,i).
    two_slices = np.array([0.0, 1.0]).reshape(2, 1, 1)
    assert felzenszwalb_3d(two_slices, scale=510, min_size=1, spacing=spacing).max() + 1 == segments


@pytest.mark.parametrize(("connectivity", "segments"), [(26, 2), (6, 4)])
def test_diagonal_neighbours_are_joined_only_with_full_connectivity(connectivity: int, segments: int) -> None:
    checkerboard = np.array([[[0.0, 100.0], [100.0, 0.0]]])
    labels = felzenszwalb_3d(checkerboard, scale=100, min_size=1, connectivity=connectivity)
    assert labels.max() + 1 == segments


def test_sigma_smooths_by_sigma_over_spacing_voxels() -> None:
    volume = np.random.default_rng(3).random((4, 10, 10)) * 255
    smoothed = ndimage.gaussian_filter(volume, sigma=(0.25, 1.0, 1.0))
    np.testing.assert_array_equal(felzenszwalb_3d(volume, scale=200, sigma=1.0, min_size=3, spacing=(4, 1, 1)),
                                  felzenszwalb_3d(smoothed, scale=200, sigma=0.0, min_size=3, spacing=(4, 1, 1)))


@pytest.mark.parametrize(("scale", "min_size"), [(100, 1), (100, 20), (1000, 1), (1000, 30), (1, 50)])
def test_one_slice_is_segmented_exactly_as_scikit_image_does(scale: float, min_size: int) -> None:
    # Same 8-connected in-plane edges, weights, thresholds and passes. Labels match exactly because both
    # number segments by their first voxel. Only tied edge weights could be visited in another order
    # (scikit-image's argsort is not stable), so the image is smooth, continuous-valued and tie-free.
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.random((40, 50)), 2) * 2000 + rng.random((40, 50)) * 5
    expected = felzenszwalb(image, scale=scale, sigma=0, min_size=min_size)
    labels = felzenszwalb_3d(image[None], scale=scale, sigma=0, min_size=min_size)[0]
    assert expected.max() > 3  # a real partition, not a trivial one
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize("volume", [np.zeros((5, 5)), np.full((2, 3, 3), np.nan)])
def test_felzenszwalb_3d_refuses_volumes_it_cannot_segment(volume: np.ndarray) -> None:
    with pytest.raises(InputError):
        felzenszwalb_3d(volume)


def test_felzenszwalb_3d_refuses_bad_spacing() -> None:
    with pytest.raises(InputError, match="spacing"):
        felzenszwalb_3d(np.zeros((2, 3, 3)), spacing=(1, 0, 1))


def test_foreground_is_the_largest_component_above_the_threshold_with_holes_filled() -> None:
    volume = np.zeros((2, 20, 20))
    volume[0, 4:16, 4:16] = 100
    volume[0, 8:12, 8:12] = 0  # a hole
    volume[0, 3, 3] = 100  # touches the square only diagonally: 8-connected, kept
    volume[0, 18:20, 18:20] = 100  # a separate smaller blob: dropped
    volume[0, 0:2, 10:20] = 10  # at the threshold, not above it
    volume[1] = 5  # nothing above the threshold: empty
    expected = np.zeros_like(volume, dtype=bool)
    expected[0, 4:16, 4:16] = True
    expected[0, 3, 3] = True
    np.testing.assert_array_equal(foreground_mask(volume), expected)


def _two_tissue_phantom() -> np.ndarray:
    """Zero background around a 16 x 16 body whose left half is 500 and right half 1000, on 3 slices."""
    volume = np.zeros((3, 24, 24))
    volume[:, 4:20, 4:12] = 500
    volume[:, 4:20, 12:20] = 1000
    return volume


def test_supervoxels_drop_the_background_and_number_the_rest_from_one() -> None:
    volume = _two_tissue_phantom()
    labels = supervoxels(volume, spacing=(3.0, 1.0, 1.0), min_size=50)
    expected = np.zeros(volume.shape, dtype=np.int32)
    expected[volume == 500] = 1
    expected[volume == 1000] = 2
    np.testing.assert_array_equal(labels, expected)


def test_a_constant_volume_has_no_supervoxels() -> None:
    np.testing.assert_array_equal(supervoxels(np.full((2, 8, 8), 7.0), spacing=(1, 1, 1)), 0)


def _write_phantoms(root: Path) -> list[Path]:
    """image_2 and image_10 on an anisotropic grid with an origin, as a prepared dataset folder would hold."""
    paths = []
    for identifier, shift in ((10, 0.0), (2, 250.0)):
        volume = Volume(_two_tissue_phantom() + shift, spacing=(1.0, 1.5, 3.0), origin=(-5.0, 7.0, 2.5),
                        direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
        paths.append(write_volume(root / f"image_{identifier}.nii.gz", volume))
    return paths[::-1]


def test_generate_pseudolabels_writes_labels_on_the_image_grid_and_caches_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = _write_phantoms(tmp_path)
    spacings = []
    real_supervoxels = supervoxels_module.supervoxels

    def recorded(array: np.ndarray, spacing: tuple[float, float, float], **recipe: int) -> np.ndarray:
        spacings.append(tuple(spacing))
        return real_supervoxels(array, spacing, **recipe)

    monkeypatch.setattr(supervoxels_module, "supervoxels", recorded)
    written = generate_pseudolabels(tmp_path, min_size=50)
    assert written == [tmp_path / "supervoxel_2.nii.gz", tmp_path / "supervoxel_10.nii.gz"]
    assert spacings == [(3.0, 1.5, 1.0)] * 2  # array order (k, j, i): the image's spacing reversed
    for image_path, label_path in zip(images, written):
        image, labels = read_volume(image_path), read_volume(label_path)
        assert labels.same_grid(image)
        np.testing.assert_array_equal(labels.array, real_supervoxels(image.array, (3.0, 1.5, 1.0), min_size=50))

    assert generate_pseudolabels(tmp_path, min_size=50) == written
    assert len(spacings) == 2  # both kept
    later = written[0].stat().st_mtime_ns + 10**9
    os.utime(images[0], ns=(later, later))
    generate_pseudolabels(tmp_path, min_size=50)
    assert len(spacings) == 3  # only the changed image is redone
    generate_pseudolabels(tmp_path, overwrite=True, min_size=50)
    assert len(spacings) == 5


def test_generate_pseudolabels_writes_into_another_folder(tmp_path: Path) -> None:
    _write_phantoms(tmp_path / "images")
    written = generate_pseudolabels(tmp_path / "images", out=tmp_path / "labels", min_size=50)
    assert [path.parent for path in written] == [tmp_path / "labels"] * 2
    assert all(path.is_file() for path in written)


def test_generate_pseudolabels_needs_images(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="image_<id>"):
        generate_pseudolabels(tmp_path)
