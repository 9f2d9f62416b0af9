"""Volume propagation: protocol assignment, corrections, query ranges, geometry, efficiency and safety."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from SDFSMISLib.data.phantom import CHAOS_DIRECTION, generate_phantom
from SDFSMISLib.data.preprocessing import preprocess
from SDFSMISLib.devices import auto_batch_size, describe_device, is_out_of_memory, resolve_device, resolve_dtype
from SDFSMISLib.errors import InputError
from SDFSMISLib.evaluation.metrics import dice
from SDFSMISLib.evaluation.protocol import labelled_slices, query_chunks, support_slice_indices
from SDFSMISLib.inference import propagation
from SDFSMISLib.inference.options import PropagationOptions, Supports
from SDFSMISLib.inference.propagation import MostProbableLabel, plan_propagation, propagate
from SDFSMISLib.inference.query_range import (
    RangeRequest,
    estimate_query_slices,
    map_extent,
    range_agreement,
    support_extent,
    trim_collapsed_ends,
)
from SDFSMISLib.inference.slice_prediction import run_in_batches
from SDFSMISLib.io.volumes import Volume, slice_axis_nearest_si
from SDFSMISLib.model.config import preset
from SDFSMISLib.model.network import SDFSMISNet
from SDFSMISLib.progress import Cancelled

SIZE = 64
LIVER, RIGHT_KIDNEY, LEFT_KIDNEY, SPLEEN = 1, 2, 3, 4


def _rotation_about_x(degrees: float) -> tuple[float, ...]:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return tuple(np.array([[1, 0, 0], [0, c, -s], [0, s, c]]).ravel())


#: name -> (shape [K, J, I], spacing (i, j, k), direction): grids the same anatomy is sampled on.
GRIDS = {
    "oblique": ((10, 64, 64), (5.5, 5.5, 15.0), _rotation_about_x(20)),
    "flipped": ((10, 64, 64), (5.5, 5.5, 15.0), (-1.0, 0, 0, 0, 1, 0, 0, 0, -1)),
    "anisotropic": ((9, 64, 48), (7.0, 5.0, 17.0), CHAOS_DIRECTION),
    "sagittal-stored": ((48, 64, 10), (15.0, 5.5, 7.0), (0.0, 0, 1, 0, -1, 0, 1, 0, 0)),  # array axis 2 is S-I
}


@pytest.fixture(scope="module")
def model() -> SDFSMISNet:
    torch.manual_seed(0)
    return SDFSMISNet.from_config(preset("tiny", image_size=SIZE)).eval()


def phantom(seed: int, grid: str | None = None, slices: int = 12, slice_mm: float = 13.0) -> tuple[Volume, Volume]:
    if grid is None:
        return generate_phantom(seed, "mr", shape=(slices, 64, 64), spacing=(5.5, 5.5, slice_mm),
                                direction=CHAOS_DIRECTION)
    shape, spacing, direction = GRIDS[grid]
    return generate_phantom(seed, "mr", shape=shape, spacing=spacing, direction=direction)


def along_si(volume: Volume) -> np.ndarray:
    """The array with its superior-inferior axis first."""
    return np.moveaxis(volume.array, slice_axis_nearest_si(volume), 0)


def annotate(truth: Volume, indices: list[int]) -> Volume:
    """The ground truth kept on whole slices ``indices`` (along the S-I axis), zero elsewhere."""
    axis = slice_axis_nearest_si(truth)
    kept = np.zeros_like(along_si(truth))
    kept[indices] = along_si(truth)[indices]
    return truth.with_array(np.moveaxis(kept, 0, axis))


def protocol_mask(truth: Volume, organs: tuple[int, ...]) -> Volume:
    """Each organ's ground truth on its 3 protocol support slices (axis 0 is the slice axis here)."""
    mask = np.zeros_like(truth.array)
    for organ in organs:
        for index in support_slice_indices(truth.array, organ, 3):
            mask[index][truth.array[index] == organ] = organ
    return truth.with_array(mask)


def model_supports(query: Volume, support: Volume | None = None, support_mask: Volume | None = None,
                   query_mask: Volume | None = None) -> Supports:
    prepared_query = preprocess(query, "generic", SIZE)
    own = None if query_mask is None else prepared_query.labels_to_model(query_mask.array.astype(np.int32))
    if support is None:
        return Supports(prepared_query, query_labels=own)
    prepared = preprocess(support, "generic", SIZE)
    return Supports(prepared_query, prepared, prepared.labels_to_model(support_mask.array.astype(np.int32)), own)


# --- assignment ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("organ", [LIVER, RIGHT_KIDNEY, SPLEEN])
def test_protocol_supports_segment_chunk_i_with_support_i(organ: int) -> None:
    support, support_truth = phantom(5, slices=14, slice_mm=11.0)
    query, query_truth = phantom(6)
    supports = model_supports(query, support, protocol_mask(support_truth, (organ,)))
    truth_range = labelled_slices(supports.query.labels_to_model(query_truth.array), organ)
    plan = plan_propagation(supports, [organ], PropagationOptions(query_slices={organ: truth_range}))[organ]
    assert plan.support_slices.tolist() == support_slice_indices(support_truth.array, organ).tolist()
    assert plan.predicted_slices.tolist() == truth_range.tolist()
    assert plan.assignment.tolist() == query_chunks(truth_range, 3).tolist()


def test_a_corrected_slice_changes_only_its_neighbourhood(model: SDFSMISNet) -> None:
    support, support_truth = phantom(5, slices=14, slice_mm=11.0)
    query, query_truth = phantom(6, slices=9, slice_mm=17.0)
    mask = protocol_mask(support_truth, (LIVER,))
    first = propagate(model, query, mask, support, PropagationOptions(batch_size=1, refine_range=False))
    before = first.plans[LIVER]
    corrected_slice = int(before.query_slices[-2])  # the user fixes the second-to-last slice of the range
    kept = PropagationOptions(labels=[LIVER], batch_size=1, query_slices=first.query_slices)  # range kept
    second = propagate(model, query, mask, support, kept, query_mask=annotate(query_truth, [corrected_slice]))
    after = second.plans[LIVER]
    assert after.annotated_slices.tolist() == [corrected_slice] and corrected_slice not in after.predicted_slices
    # A slice changes support only to the corrected one (own slices come first: index 0), and only nearby.
    previous = dict(zip(before.predicted_slices.tolist(), before.assignment + 1))
    changed = [(s, a) for s, a in zip(after.predicted_slices.tolist(), after.assignment) if a != previous[s]]
    assert changed and all(a == 0 and abs(s - corrected_slice) <= 2 for s, a in changed)
    # Slices of a chunk that kept all its members are segmented exactly as before (deterministic, reused).
    untouched = [s for s in after.predicted_slices if previous[s] == 1]
    assert untouched and np.array_equal(second.model_labels[untouched], first.model_labels[untouched])
    liver = np.where(along_si(query_truth)[corrected_slice] == LIVER, LIVER, 0)
    assert np.array_equal(along_si(second.labelmap)[corrected_slice], liver)


def test_k_shot_uses_all_supports_as_one_set() -> None:
    support, support_truth = phantom(5, slices=14, slice_mm=11.0)
    supports = model_supports(phantom(6)[0], support, protocol_mask(support_truth, (LIVER,)))
    plan = plan_propagation(supports, [LIVER], PropagationOptions(k_shot=True))[LIVER]
    assert plan.assignment is None and len(plan.support_slices) == 3


# --- query range ----------------------------------------------------------------------------------------------


def test_range_requests_parse_indices_and_mm() -> None:
    assert RangeRequest.parse("25:10") == RangeRequest(10, 25, "index")
    assert RangeRequest.parse(" -40.5mm : 30 mm") == RangeRequest(-40.5, 30, "mm")
    for bad in ("10:", "a:b", "10mm:20", "1.5:3"):
        with pytest.raises(InputError, match="range"):
            RangeRequest.parse(bad)


def test_index_and_mm_ranges_select_stored_slices_on_a_flipped_grid() -> None:
    query = preprocess(phantom(1, "flipped")[0], "generic", SIZE)  # stored slice 0 is the most superior
    assert RangeRequest.parse("2:4").model_slices(query).tolist() == [5, 6, 7]
    centres = query.model.origin[2] + query.model.spacing[2] * np.arange(10)  # model slices run upwards
    chosen = RangeRequest(centres[3] - 1, centres[5] + 1, "mm").model_slices(query)
    assert chosen.tolist() == [3, 4, 5]
    with pytest.raises(InputError, match="0..9"):
        RangeRequest.parse("3:10").model_slices(query)
    with pytest.raises(InputError, match="holds no slice"):
        RangeRequest(900, 950, "mm").model_slices(query)


def test_support_extent_reaches_half_a_gap_beyond_the_outer_supports() -> None:
    assert support_extent(np.array([25.0, 15.0, 35.0])) == (10.0, 40.0)
    assert support_extent(np.array([50.0]), widths_mm=np.array([30.0, 0.0])) == (35.0, 65.0)
    assert map_extent((10.0, 40.0), (0.0, 100.0), (100.0, 300.0)) == (120.0, 180.0)


def test_estimated_range_finds_the_organ_in_another_scan_of_the_same_extent() -> None:
    support, support_truth = phantom(7, slices=12, slice_mm=12.0)
    query, query_truth = phantom(7, slices=16, slice_mm=9.0)  # same anatomy, thinner slices, same coverage
    prepared_support, prepared_query = preprocess(support, "generic", SIZE), preprocess(query, "generic", SIZE)
    for organ in (LIVER, SPLEEN):
        annotated = support_slice_indices(prepared_support.labels_to_model(support_truth.array), organ)
        estimate = estimate_query_slices(prepared_query.image, prepared_query.slice_positions(), prepared_support.image,
                                         prepared_support.slice_positions(), annotated)
        truth = labelled_slices(prepared_query.labels_to_model(query_truth.array), organ)
        assert range_agreement(estimate, truth)["iou"] >= 0.7, organ


def test_trimming_drops_only_collapsed_ends_outside_the_supports() -> None:
    slices, areas = np.arange(7), np.array([0, 1, 10, 12, 11, 1, 0])
    assert trim_collapsed_ends(slices, areas, (2, 4)).tolist() == [2, 3, 4]
    assert trim_collapsed_ends(slices, areas, (0, 6)).tolist() == slices.tolist()
    assert trim_collapsed_ends(slices, np.array([9, 0, 0, 9, 0, 0, 9]), (3, 3)).tolist() == slices.tolist()


# --- geometry ---------------------------------------------------------------------------------------------------


@pytest.fixture
def copy_oracle(monkeypatch: pytest.MonkeyPatch) -> SDFSMISNet:
    """A network whose prediction is the assigned support mask: registration-perfect, and instant."""

    def copy_support(_model, _images, _support_images, support_masks, assignment, *_args, **_kwargs):  # noqa: ANN001
        return support_masks[assignment].astype(np.float32)

    monkeypatch.setattr(propagation, "predict_foreground_maps", copy_support)
    torch.manual_seed(0)
    return SDFSMISNet.from_config(preset("tiny", image_size=SIZE)).eval()  # only its VAE encoder runs


@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_same_patient_returns_its_annotated_slices_in_place(model: SDFSMISNet, grid: str) -> None:
    image, truth = phantom(3, grid)
    count = along_si(truth).shape[0]
    liver = np.flatnonzero((along_si(truth) == LIVER).any(axis=(1, 2)))
    annotated = [int(liver[0]), int(liver[len(liver) // 2]), int(liver[-1])]
    result = propagate(model, image, annotate(truth, annotated))
    assert result.labelmap.same_grid(image, tolerance=0) and result.labelmap.array.shape == image.array.shape
    for index in annotated:
        assert np.array_equal(along_si(result.labelmap)[index], along_si(truth)[index]), index
    # The slices found annotated in model space are the stored ones, wherever the S-I axis is.
    stored = {int(RangeRequest(index, index, "index").model_slices(result.supports.query)[0]) for index in annotated}
    assert set(result.supports.ground_truth_slices(sorted(result.plans)).tolist()) == stored
    predicted = [s for s in range(count) if s not in annotated and along_si(result.labelmap)[s].any()]
    assert predicted, "nothing was propagated to the other slices"


@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_supports_land_on_the_right_anatomy_across_grids(copy_oracle: SDFSMISNet, grid: str) -> None:
    """Support masks copied from a standard grid must cover the organs of the same anatomy on any grid."""
    support, support_truth = phantom(9, slices=12, slice_mm=13.0)
    query, query_truth = phantom(9, grid)  # the same anatomy, sampled on another grid
    truth_model = preprocess(query, "generic", SIZE).labels_to_model(query_truth.array)
    organs = (LIVER, RIGHT_KIDNEY, LEFT_KIDNEY)  # left and right: a mirrored grid would swap the kidneys
    ranges = {organ: labelled_slices(truth_model, organ) for organ in organs}
    result = propagate(copy_oracle, query, protocol_mask(support_truth, organs), support,
                       PropagationOptions(query_slices=ranges))
    for organ in organs:
        assert dice(result.labelmap.array == organ, query_truth.array == organ) > 0.6, organ


def test_a_mask_cropped_to_its_extent_is_placed_on_the_volume_grid(copy_oracle: SDFSMISNet) -> None:
    query, truth = phantom(3, "flipped")
    mask = annotate(truth, [3, 6])
    full = propagate(copy_oracle, query, mask).labelmap.array
    box = [np.flatnonzero(mask.array.any(axis=others)) for others in ((1, 2), (0, 2), (0, 1))]  # k, j, i
    low = np.array([axis[0] for axis in box])
    crop = mask.array[tuple(slice(axis[0], axis[-1] + 1) for axis in box)]
    origin = np.asarray(mask.origin) + mask.direction_matrix() @ (np.asarray(mask.spacing) * low[::-1])
    cropped = Volume(crop, mask.spacing, tuple(origin), mask.direction)  # as 3D Slicer saves a segmentation
    assert np.array_equal(propagate(copy_oracle, query, cropped).labelmap.array, full)
    with pytest.raises(InputError, match="not on the grid of the query volume"):
        propagate(copy_oracle, query, Volume(crop, mask.spacing, tuple(origin + 1.3), mask.direction))



def test_probabilities_follow_the_labelmap_and_keep_annotations(copy_oracle: SDFSMISNet) -> None:
    query, truth = phantom(3, "flipped")
    liver = np.flatnonzero((along_si(truth) == LIVER).any(axis=(1, 2)))
    annotated = [int(liver[0]), int(liver[len(liver) // 2]), int(liver[-1])]
    assert propagate(copy_oracle, query, annotate(truth, annotated)).probabilities == {}
    result = propagate(copy_oracle, query, annotate(truth, annotated), options=PropagationOptions(probabilities=True))
    assert set(result.probabilities) == set(result.plans)
    for label, probability in result.probabilities.items():
        assert probability.same_grid(query, tolerance=0) and probability.array.dtype == np.float32
        assert 0 <= probability.array.min() and probability.array.max() <= 1
        assert dice(probability.array > 0.5, result.labelmap.array == label) > 0.95, label
    liver_probability = along_si(result.probabilities[LIVER])
    for index in annotated:  # an annotated slice is certain: exactly its annotation
        assert np.array_equal(liver_probability[index], (along_si(truth)[index] == LIVER).astype(np.float32))


# --- efficiency, overlaps, devices ------------------------------------------------------------------------------


def test_query_slices_are_encoded_once_for_all_labels(model: SDFSMISNet) -> None:
    query, truth = phantom(4, slices=8)
    both = np.flatnonzero((truth.array == LIVER).any(axis=(1, 2)) & (truth.array == SPLEEN).any(axis=(1, 2)))
    encoded: list[int] = []
    handle = model.vae.encoder.register_forward_hook(lambda _m, inputs, _o: encoded.append(inputs[0].shape[0]))
    try:
        result = propagate(model, query, annotate(truth, [both[0], both[-1]]),
                           options=PropagationOptions(labels=[LIVER, SPLEEN]))
    finally:
        handle.remove()
    predicted = np.unique(np.concatenate([plan.predicted_slices for plan in result.plans.values()]))
    support_inputs = sum(2 * len(plan.annotated_slices) for plan in result.plans.values())  # image + mask
    assert sum(encoded) == len(predicted) + support_inputs


def test_overlaps_go_to_the_most_probable_label() -> None:
    merged = MostProbableLabel((3, 2, 2))
    merged.add(1, np.array([0, 1]), np.ones((2, 2, 2), bool), np.full((2, 2, 2), 0.6, np.float32))
    foreground = np.array([[[0.9, 0.5], [0.6, 0.7]]], np.float32)
    merged.add(2, np.array([1]), np.array([[[True, True], [True, False]]]), foreground)
    assert merged.labels.tolist() == [[[1, 1], [1, 1]], [[2, 1], [1, 1]], [[0, 0], [0, 0]]]


def test_out_of_memory_halves_the_batch_and_retries() -> None:
    sizes: list[int] = []

    def step(start: int, stop: int) -> list[int]:
        sizes.append(stop - start)
        if stop - start > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return list(range(start, stop))

    results = run_in_batches(step, 7, 8, torch.device("cpu"))
    assert sum(results, []) == list(range(7)) and sizes == [7, 4, 2, 2, 2, 1]

    def fails(error: RuntimeError):  # noqa: ANN202
        def step(_start: int, _stop: int) -> None:
            raise error
        return step

    with pytest.raises(torch.cuda.OutOfMemoryError):  # one slice per batch cannot shrink further
        run_in_batches(fails(torch.cuda.OutOfMemoryError("CUDA out of memory")), 3, 1, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="shape"):  # other errors are not retried
        run_in_batches(fails(RuntimeError("shape mismatch")), 3, 4, torch.device("cpu"))


def test_progress_reports_and_cancels(model: SDFSMISNet) -> None:
    query, truth = phantom(4, slices=8)
    with pytest.raises(Cancelled):
        propagate(model, query, annotate(truth, [3]), options=PropagationOptions(labels=[LIVER], batch_size=2),
                  progress=lambda done, total: False)


def test_devices_resolve_on_this_machine() -> None:
    device = resolve_device("auto")
    assert device.type in ("cuda", "mps", "cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert "CPU" in describe_device(torch.device("cpu")) and auto_batch_size(torch.device("cpu"), 256, torch.float32)
    assert is_out_of_memory(RuntimeError("MPS backend out of memory")) and not is_out_of_memory(RuntimeError("x"))
    with pytest.raises(InputError, match="unknown dtype"):
        resolve_dtype("float8", device)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="not available"):
            resolve_device("cuda")


# --- bad input ----------------------------------------------------------------------------------------------------


def test_bad_annotations_raise_input_errors(model: SDFSMISNet) -> None:
    query, truth = phantom(4, slices=8)
    with pytest.raises(InputError, match="empty"):
        propagate(model, query, truth.with_array(np.zeros_like(truth.array)))
    with pytest.raises(InputError, match="not annotated"):
        propagate(model, query, annotate(truth, [3]), options=PropagationOptions(labels=[LIVER, 9]))
    with pytest.raises(InputError, match="grid"):
        propagate(model, query, phantom(4, slices=9)[1])
    nan = query.with_array(query.array.astype(np.float32))
    nan.array[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        propagate(model, nan, annotate(truth, [3]))
