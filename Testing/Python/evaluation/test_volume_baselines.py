"""The whole-volume baselines the demo prints next to SDFSMIS: copy along propagation's plan, Fill between slices."""

from __future__ import annotations

import numpy as np

from SDFSMISLib.data.phantom import generate_phantom
from SDFSMISLib.evaluation.baselines import fill_between_slices
from SDFSMISLib.evaluation.protocol import protocol_support_mask
from SDFSMISLib.evaluation.volume_baselines import copy_along_plan, fill_between_labelmap
from SDFSMISLib.inference.options import PropagationOptions
from SDFSMISLib.inference.propagation import propagate
from SDFSMISLib.model.network import SDFSMISNet


def test_copy_follows_the_plan_of_propagation(tiny_model: SDFSMISNet) -> None:
    image, labels = generate_phantom(4, "mr", shape=(12, 64, 64), spacing=(5.0, 5.0, 12.0))
    annotation = protocol_support_mask(labels, [1, 4])
    result = propagate(tiny_model, image, annotation, options=PropagationOptions(recipe="none"))
    copied = copy_along_plan(result)
    assert copied.same_grid(result.labelmap)
    model = result.supports.query.labels_to_model(copied.array)
    own = result.supports.query_labels
    for label, plan in result.plans.items():
        assert plan.support_slices.size == 0 and len(plan.annotated_slices) == 3  # same patient
        for index in plan.annotated_slices:  # painted slices as painted
            assert np.array_equal(model[index] == label, own[index] == label)
        for index, source in zip(plan.predicted_slices, plan.assignment):
            assert np.array_equal(model[index] == label, own[plan.annotated_slices[source]] == label)
        outside = np.setdiff1d(np.arange(len(model)), plan.query_slices)
        assert not (model[outside] == label).any()


def test_fill_between_labelmap_fills_each_label_along_the_slice_axis() -> None:
    _, labels = generate_phantom(5, "mr", shape=(12, 48, 48), spacing=(6.0, 6.0, 12.0))
    annotation = protocol_support_mask(labels, [1, 4])
    filled = fill_between_labelmap(annotation, [1, 4]).array
    for label in (1, 4):
        slices = np.flatnonzero((annotation.array == label).any(axis=(1, 2)))
        expected = fill_between_slices(annotation.array.shape, slices, annotation.array[slices] == label)
        assert np.array_equal(filled == label, expected)  # liver and spleen do not meet
        assert (filled == label).sum() > (annotation.array == label).sum()  # slices between were filled
