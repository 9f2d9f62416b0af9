"""Training episodes and their augmentation on small synthetic volumes.

Each synthetic slice has its own mean intensity, so an un-augmented episode tells which slices
it was cut from; the labels are laid out so that only some (label, slice pair) choices qualify.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from SDFSMISLib.data.augmentation import (
    RPT,
    Affine,
    AugmentationRecipe,
    affine_matrix,
    augment_pair,
    elastic_displacement,
    gamma_transform,
    sampling_coordinates,
    warp,
)
from SDFSMISLib.data.episodes import EpisodeDataset, EpisodeOptions, TrainingVolume, label_pixel_counts
from SDFSMISLib.errors import InputError

SLICES, SIZE = 10, 64
STEP = 0.18  # mean intensity difference between consecutive slices


def slice_mean(number: int) -> float:
    return -0.85 + STEP * number


def slice_of(image: torch.Tensor) -> int:
    """Recover the slice an un-augmented image came from by its mean intensity."""
    return round((float(image.mean()) + 0.85) / STEP)


def synthetic_volume() -> TrainingVolume:
    """Label 1: 20x20 square on every slice, moving 2 px per slice. Label 2: 10x10 (too small)
    everywhere. Label 3: 15x15 on even slices, 10x10 on odd ones (no qualifying adjacent pair).
    Label 5: 16x16 on slices 6 and 7 only."""
    ramp = np.linspace(-0.05, 0.05, SIZE, dtype=np.float32)
    image = np.stack([np.full((SIZE, SIZE), slice_mean(s), np.float32) + ramp for s in range(SLICES)])
    labels = np.zeros((SLICES, SIZE, SIZE), np.int16)
    for s in range(SLICES):
        labels[s, 4:24, 4 + 2 * s:24 + 2 * s] = 1
        labels[s, 30:40, 30:40] = 2
        side = 15 if s % 2 == 0 else 10
        labels[s, 44:44 + side, 44:44 + side] = 3
    labels[6:8, 28:44, 2:18] = 5
    return TrainingVolume(image, labels)


def episode_label(mask: torch.Tensor, labels: np.ndarray) -> int:
    """The label whose region on this slice equals the mask (fails when none does)."""
    matches = [int(value) for value in np.unique(labels) if np.array_equal(labels == value, mask.numpy() == 1)]
    assert len(matches) == 1, "the mask is not exactly one label of the slice"
    return matches[0]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a * b).sum()) / float(a.sum() + b.sum())


def draw(dataset: EpisodeDataset, count: int) -> list[dict[str, torch.Tensor]]:
    return [dataset[i] for i in range(count)]


# ---------------------------------------------------------------- augmentation


def test_identity_parameters_give_an_exact_identity() -> None:
    shape = (SIZE, SIZE)
    matrix = affine_matrix(Affine(), shape, shape)
    np.testing.assert_array_equal(matrix, np.eye(3))
    coordinates = sampling_coordinates(matrix, shape, np.zeros((2, *shape)))
    np.testing.assert_array_equal(coordinates, np.indices(shape))
    volume = synthetic_volume()
    image, mask = volume.image[3], (volume.labels[3] == 1).astype(np.float32)
    warped_image, warped_mask = warp(image, mask, coordinates)
    np.testing.assert_array_equal(warped_image, image)
    np.testing.assert_array_equal(warped_mask, mask)
    np.testing.assert_allclose(gamma_transform(image, 1.0), image, atol=1e-6)
    off = AugmentationRecipe(gamma=(1, 1), rotation=0, shift=0, shear=0, scale=(1, 1), elastic_alpha=0)
    same_image, same_mask = augment_pair(image, mask, np.random.default_rng(0), recipe=off)
    np.testing.assert_allclose(same_image, image, atol=1e-6)
    np.testing.assert_array_equal(same_mask, mask)


def test_shift_and_scale_act_about_the_centre_in_output_pixels() -> None:
    shape = (SIZE, SIZE)
    mask = np.zeros(shape, np.float32)
    mask[22:42, 22:42] = 1  # centred square, 20 px
    image = mask * 2 - 1
    shifted = warp(image, mask, sampling_coordinates(affine_matrix(Affine(shift=(3, -2)), shape, shape), shape))[1]
    np.testing.assert_array_equal(shifted, np.roll(mask, (3, -2), axis=(0, 1)))
    magnified = warp(image, mask, sampling_coordinates(affine_matrix(Affine(scale=2), shape, shape), shape))[1]
    rows, cols = np.nonzero(magnified)
    assert abs(magnified.sum() - 4 * mask.sum()) <= 0.1 * 4 * mask.sum()
    assert abs(rows.mean() - 31.5) < 0.6 and abs(cols.mean() - 31.5) < 0.6


def test_resize_uses_pixel_centres() -> None:
    matrix = affine_matrix(Affine(), (64, 64), (32, 32))
    np.testing.assert_allclose(matrix, [[2, 0, 0.5], [0, 2, 0.5], [0, 0, 1]])


def test_augmentation_keeps_mask_binary_and_image_in_range() -> None:
    volume = synthetic_volume()
    image = np.clip(volume.image[5] + np.random.default_rng(0).normal(0, 0.5, (SIZE, SIZE)), -1, 1)
    mask = (volume.labels[5] == 1).astype(np.float32)
    strong = AugmentationRecipe(gamma=(0.2, 1.8), rotation=30, shift=10, shear=30, scale=(0.7, 1.4), elastic_alpha=40)
    for seed in range(6):
        for recipe in (RPT, strong):
            out_image, out_mask = augment_pair(image, mask, np.random.default_rng(seed), recipe=recipe)
            assert out_image.dtype == out_mask.dtype == np.float32
            assert out_image.min() >= -1 and out_image.max() <= 1
            assert set(np.unique(out_mask)) <= {0.0, 1.0}
            assert 0.2 < out_mask.sum() / mask.sum() < 3
    first = augment_pair(image, mask, np.random.default_rng(7))
    again = augment_pair(image, mask, np.random.default_rng(7))
    np.testing.assert_array_equal(first[0], again[0])
    assert not np.array_equal(first[0], image)


def test_rpt_elastic_field_is_a_sub_pixel_wobble() -> None:
    """alpha and sigma are in pixels: smoothed unit noise times 10 px has an RMS of about 0.3 px."""
    field = elastic_displacement((256, 256), np.random.default_rng(0))
    assert field.shape == (2, 256, 256)
    assert 0.15 < float(np.sqrt((field ** 2).mean())) < 0.6


# ---------------------------------------------------------------- episodes


def test_same_index_same_episode_and_other_indices_differ() -> None:
    volumes = [synthetic_volume()]
    first, second = EpisodeDataset(volumes, 50, seed=3), EpisodeDataset(volumes, 50, seed=3)
    for index in (0, 17, 49):
        a, b = first[index], second[index]
        assert a.keys() == {"support_image", "support_mask", "query_image", "query_mask"}
        for key in a:
            assert a[key].dtype == torch.float32 and a[key].shape == (SIZE, SIZE)
            assert torch.equal(a[key], b[key])
    assert not torch.equal(first[0]["support_image"], first[1]["support_image"])
    assert not torch.equal(first[0]["support_image"], EpisodeDataset(volumes, 50, seed=4)[0]["support_image"])
    with pytest.raises(IndexError):
        first[50]


def test_adjacent_pairs_share_a_qualifying_label_on_neighbouring_slices() -> None:
    volume = synthetic_volume()
    dataset = EpisodeDataset([volume], 80, options=EpisodeOptions(augment="none"))
    orders, labels = set(), set()
    for episode in draw(dataset, 80):
        support, query = slice_of(episode["support_image"]), slice_of(episode["query_image"])
        assert abs(support - query) == 1
        np.testing.assert_allclose(episode["support_image"].numpy(), volume.image[support])
        label = episode_label(episode["support_mask"], volume.labels[support])
        assert episode_label(episode["query_mask"], volume.labels[query]) == label
        assert episode["support_mask"].sum() >= 200 and episode["query_mask"].sum() >= 200
        orders.add(support < query)
        labels.add(label)
    assert orders == {True, False}
    assert labels == {1, 5}  # never 0 (background), 2 (too small) or 3 (large on one slice of each pair only)


def test_excluded_slices_are_never_used() -> None:
    volume = synthetic_volume()
    volume.keep_slices = np.ones(SLICES, bool)
    volume.keep_slices[[3, 6]] = False  # leaves label 5 without a pair and label 1 with pairs in 0-2, 4-5, 7-9
    dataset = EpisodeDataset([volume], 60, options=EpisodeOptions(augment="none"))
    used = set()
    for episode in draw(dataset, 60):
        support, query = slice_of(episode["support_image"]), slice_of(episode["query_image"])
        assert episode_label(episode["support_mask"], volume.labels[support]) == 1
        used |= {support, query}
    assert used == {0, 1, 2, 4, 5, 7, 8, 9}


def test_distance_pairs_reach_every_distance_up_to_the_maximum_and_may_lose_the_label() -> None:
    volume = synthetic_volume()
    dataset = EpisodeDataset([volume], 200, options=EpisodeOptions(pairing="distance", max_distance=3, augment="none"))
    distances, emptied = set(), 0
    for episode in draw(dataset, 200):
        support, query = slice_of(episode["support_image"]), slice_of(episode["query_image"])
        distances.add(abs(support - query))
        label = episode_label(episode["support_mask"], volume.labels[support])
        assert episode["support_mask"].sum() >= 200  # min_pixels holds on the support
        np.testing.assert_array_equal(episode["query_mask"].numpy() == 1, volume.labels[query] == label)
        emptied += int(episode["query_mask"].sum() == 0)
    assert distances == {1, 2, 3}
    assert emptied > 0  # label 5 spans two slices: a query 2 or 3 slices away shows none of it


def test_distance_pairs_never_query_an_excluded_slice() -> None:
    volume = synthetic_volume()
    volume.keep_slices = np.ones(SLICES, bool)
    volume.keep_slices[[2, 5]] = False
    dataset = EpisodeDataset([volume], 120, options=EpisodeOptions(pairing="distance", max_distance=2, augment="none"))
    used = {slice_of(episode[f"{side}_image"]) for episode in draw(dataset, 120) for side in ("support", "query")}
    assert used.isdisjoint({2, 5}) and len(used) >= 6


def test_same_slice_pairing_augments_one_slice_twice() -> None:
    volume = synthetic_volume()
    dataset = EpisodeDataset([volume], 30, options=EpisodeOptions(pairing="same-slice", augment="query"))
    labels = set()
    for episode in draw(dataset, 30):
        support = slice_of(episode["support_image"])
        np.testing.assert_allclose(episode["support_image"].numpy(), volume.image[support])
        labels.add(episode_label(episode["support_mask"], volume.labels[support]))
        assert not torch.equal(episode["query_image"], episode["support_image"])
    assert labels == {1, 3, 5}  # label 3 qualifies on single even slices


def test_same_slice_query_is_the_support_slice_transformed() -> None:
    """The label sits in a different corner on each slice: only the support's own slice overlaps the query."""
    image = np.zeros((4, SIZE, SIZE), np.float32)
    labels = np.zeros((4, SIZE, SIZE), np.int16)
    for s, (row, col) in enumerate([(4, 4), (4, 44), (44, 44), (44, 4)]):
        labels[s, row:row + 16, col:col + 16] = 1
    dataset = EpisodeDataset([TrainingVolume(image, labels)], 20, options=EpisodeOptions(pairing="same-slice"))
    for episode in draw(dataset, 20):
        support, query = episode["support_mask"].numpy(), episode["query_mask"].numpy()
        assert support.sum() and query.sum()
        assert dice(support, query) > 0.3
        assert not np.array_equal(support, query) or not torch.equal(episode["support_image"], episode["query_image"])


def test_resize_to_network_size() -> None:
    dataset = EpisodeDataset([synthetic_volume()], 5, options=EpisodeOptions(size=32))
    for episode in draw(dataset, 5):
        for key, tensor in episode.items():
            assert tensor.shape == (32, 32), key
        for key in ("support_mask", "query_mask"):
            assert set(episode[key].unique().tolist()) <= {0.0, 1.0}
            assert episode[key].sum() >= 200 / 4 * 0.6


def test_dataloader_workers_give_the_same_batches() -> None:
    empty = TrainingVolume(np.zeros((2, SIZE, SIZE), np.float32), np.zeros((2, SIZE, SIZE), np.uint8))
    dataset = EpisodeDataset([synthetic_volume(), empty, synthetic_volume()], 12, seed=5)
    assert dataset.skipped == [1]
    serial = list(torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=0))
    parallel = list(torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2))
    assert len(serial) == len(parallel) == 3
    for a, b in zip(serial, parallel):
        for key in a:
            assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize(("change", "message"), [
    (lambda v: setattr(v, "labels", np.where(v.labels == 2, 2, 0)), "min_pixels"),
    (lambda v: setattr(v, "keep_slices", np.zeros(SLICES, bool)), "keep_slices"),
    (lambda v: setattr(v, "labels", np.zeros_like(v.labels)), "background"),
    (lambda v: setattr(v, "labels", np.where((v.labels == 1) | (v.labels == 5), 0, v.labels)), "adjacent"),
])
def test_impossible_dataset_explains_why(change, message: str) -> None:
    volume = synthetic_volume()
    change(volume)
    with pytest.raises(InputError, match=message):
        EpisodeDataset([volume], 10)


def test_bad_inputs_are_refused() -> None:
    volume = synthetic_volume()
    with pytest.raises(InputError, match=r"\[-1, 1\]"):
        EpisodeDataset([TrainingVolume(volume.image * 3, volume.labels)], 10)
    with pytest.raises(InputError, match="same"):
        EpisodeDataset([TrainingVolume(volume.image, volume.labels[:-1])], 10)
    with pytest.raises(InputError, match="copy of the support"):
        EpisodeOptions(pairing="same-slice", augment="none")
    with pytest.raises(InputError, match="augment"):
        EpisodeOptions(augment="sometimes")
    with pytest.raises(InputError, match="max_distance"):
        EpisodeOptions(pairing="distance", max_distance=0)


def test_pixel_counts_per_slice_and_label() -> None:
    labels = np.zeros((2, 4, 4), np.int64)
    labels[0, :2] = 7
    labels[1, 0, 0] = 10 ** 12  # a sparse id takes the renumbering path
    ids, counts = label_pixel_counts(labels)
    np.testing.assert_array_equal(ids, [0, 7, 10 ** 12])
    np.testing.assert_array_equal(counts, [[8, 8, 0], [15, 0, 1]])
    ids, counts = label_pixel_counts(labels[:1])
    np.testing.assert_array_equal(ids, [0, 7])
    np.testing.assert_array_equal(counts, [[8, 8]])
