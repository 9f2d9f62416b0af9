"""The SSL-ALPNet / ADNet / RPT test protocol's slice choices, and the two training-free baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CHAOS

from SDFSMISLib.errors import InputError
from SDFSMISLib.evaluation import protocol
from SDFSMISLib.evaluation.baselines import copy_nearest_support, prototype_matcher
from SDFSMISLib.evaluation.metrics import dice
from SDFSMISLib.inference import support_assignment


def organ_on(slices: range, depth: int = 50, organ: int = 4) -> np.ndarray:
    labels = np.zeros((depth, 6, 6), dtype=np.float64)  # CHAOS stores labels as float
    labels[list(slices), 2:4, 2:4] = organ
    labels[:, 0, 0] = 1  # another organ everywhere, which must not count
    return labels


def test_labelled_slices_are_those_holding_the_organ() -> None:
    labels = organ_on(range(10, 40))
    labels[25] = 0
    assert protocol.labelled_slices(labels, 4).tolist() == [*range(10, 25), *range(26, 40)]


def test_three_supports_sit_at_one_sixth_half_and_five_sixths() -> None:
    assert protocol.support_slice_indices(organ_on(range(10, 40)), 4).tolist() == [15, 25, 35]
    assert protocol.support_slice_indices(organ_on(range(10, 40)), 4, shots=1).tolist() == [25]


def test_support_positions_equal_the_released_float_formula() -> None:
    """SSL-ALPNet/RPT compute int(pct * C) with pct = 1/2n + i * (1 - 1/n) / (n - 1) in floating point."""
    for shots in range(1, 6):
        pcts = [0.5] if shots == 1 else [1 / (2 * shots) + i * (1 - 1 / shots) / (shots - 1) for i in range(shots)]
        for count in range(shots, 80):
            expected = 3 + (np.array(pcts) * count).astype(int)
            assert protocol.support_slice_indices(organ_on(range(3, 3 + count), 90), 4, shots).tolist() == \
                expected.tolist()


def test_chunks_split_uneven_counts_like_rpt() -> None:
    """RPT test.py: bounds int(linspace(0, C, n + 1)); 32 slices -> 10, 11, 11."""
    chunks = protocol.query_chunks(np.arange(100, 132), 3)
    assert np.bincount(chunks).tolist() == [10, 11, 11]
    assert chunks[9] == 0 and chunks[10] == 1 and chunks[20] == 1 and chunks[21] == 2
    # 5 slices: bounds 0, 1, 3, 5 over the sorted ranks (3 -> 0; 5, 7 -> 1; 8, 9 -> 2), returned in input order
    assert protocol.query_chunks(np.array([7, 3, 5, 9, 8]), 3).tolist() == [1, 0, 1, 2, 2]


def test_nearest_support_equals_chunk_rule_with_supports_at_chunk_centres() -> None:
    for parts in range(1, 6):
        for count in range(1, 90):
            slices = np.arange(count)
            bounds = np.linspace(0, count, parts + 1).astype(int)
            centres = (bounds[:-1] + bounds[1:]) / (2 * count)
            positions = support_assignment.relative_positions(slices, slices)
            assignment = support_assignment.nearest_support_assignment(positions, centres)
            assert assignment.tolist() == protocol.query_chunks(slices, parts).tolist()


def test_nearest_support_equals_chunk_rule_in_the_protocol_case() -> None:
    """Support organ on 9 slices, query organ on 30: the protocol's supports are at the query's chunk centres."""
    support_labels, query_labels = organ_on(range(10, 19)), organ_on(range(5, 35))
    support_slices = protocol.support_slice_indices(support_labels, 4)
    support_positions = support_assignment.relative_positions(support_slices,
                                                              protocol.labelled_slices(support_labels, 4))
    query_slices = protocol.labelled_slices(query_labels, 4)
    query_positions = support_assignment.relative_positions(query_slices, query_slices)
    assignment = support_assignment.nearest_support_assignment(query_positions, support_positions)
    assert support_positions == pytest.approx([1 / 6, 1 / 2, 5 / 6])
    assert assignment.tolist() == protocol.query_chunks(query_slices, 3).tolist()


def test_fold_support_is_the_third_patient() -> None:
    support, queries = protocol.test_support_and_queries([1, 2, 3, 5, 8])
    assert support == 3 and queries == [1, 2, 5, 8]
    with pytest.raises(InputError, match="outside the fold"):
        protocol.test_support_and_queries([1, 2])


def test_bad_protocol_input_raises_input_error() -> None:
    with pytest.raises(InputError, match="not in the support"):
        protocol.support_slice_indices(organ_on(range(10, 20)), 2)
    with pytest.raises(InputError, match="not among the labelled"):
        support_assignment.relative_positions(np.array([3]), np.array([1, 2]))


@pytest.mark.skipif(not CHAOS.is_dir(), reason="CHAOS-T2 data not available")
def test_protocol_on_a_chaos_patient() -> None:
    import SimpleITK as sitk

    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(CHAOS / "label_1.nii.gz")))
    for organ in (1, 2, 3, 4):
        slices = protocol.labelled_slices(labels, organ)
        supports = protocol.support_slice_indices(labels, organ)
        assert set(supports) <= set(slices) and np.all(np.diff(supports) > 0)
        assert np.bincount(protocol.query_chunks(slices, 3)).max() - np.bincount(
            protocol.query_chunks(slices, 3)).min() <= 1


def test_copy_baseline_reproduces_the_assigned_support_masks() -> None:
    rng = np.random.default_rng(0)
    supports = rng.random((3, 16, 16)) > 0.5
    assignment = np.array([0, 0, 1, 2, 2])
    copied = copy_nearest_support(5, assignment, supports.astype(np.uint8))
    assert copied.dtype == bool and np.array_equal(copied, supports[assignment])
    with pytest.raises(InputError, match="one support index per query"):
        copy_nearest_support(4, assignment, supports)
    with pytest.raises(InputError, match="only 3 were given"):
        copy_nearest_support(2, np.array([0, 3]), supports)


def two_intensity_slices(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Slices with an ellipse at +0.6 on a background at -0.6, plus noise; the ellipse moves per slice."""
    generator = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij"))
    centres = 20 + 24 * torch.rand(count, 2, generator=generator)
    masks = ((grid[None] - centres[..., None, None]) / torch.tensor([12.0, 8.0])[:, None, None]).pow(2).sum(1) < 1
    images = torch.where(masks, 0.6, -0.6) + 0.15 * torch.randn(count, 64, 64, generator=generator)
    return images.clamp(-1, 1), masks


def intensity_features(images: torch.Tensor) -> torch.Tensor:
    """An 'identity-ish' frozen feature extractor: positive and negative parts, pooled to a 16 x 16 grid."""
    return F.avg_pool2d(torch.stack([images.clamp_min(0), (-images).clamp_min(0)], dim=1), 4) + 0.01


def test_prototype_matcher_segments_distinct_intensities() -> None:
    support_images, support_masks = two_intensity_slices(2, seed=0)
    query_images, query_masks = two_intensity_slices(5, seed=1)
    predicted = prototype_matcher(intensity_features, support_images, support_masks, query_images,
                                  np.array([0, 1, 0, 1, 1]), batch_size=2)
    assert predicted.shape == (5, 64, 64) and predicted.dtype == bool
    assert dice(predicted, query_masks.numpy()) > 0.9


def test_prototype_matcher_follows_the_assignment() -> None:
    """A support whose mask covers the background instead flips the answer for the queries assigned to it."""
    support_images, support_masks = two_intensity_slices(1, seed=0)
    query_images, query_masks = two_intensity_slices(2, seed=1)
    supports = torch.cat([support_images, support_images])
    masks = torch.cat([support_masks, ~support_masks])
    predicted = prototype_matcher(intensity_features, supports, masks, query_images, np.array([0, 1]))
    assert dice(predicted[0], query_masks[0].numpy()) > 0.9
    assert dice(predicted[1], ~query_masks[1].numpy()) > 0.9
