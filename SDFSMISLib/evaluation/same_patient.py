"""Same-patient evaluation: an organ annotated on a few of its own slices, the rest of the volume predicted.

This is how a radiologist often works in 3D Slicer: paint the organ on one slice near its top, middle and
bottom, then fill the rest. Each organ is annotated on ``shots`` of its own slices at the protocol's positions
(1/6, 1/2, 5/6 of its labelled slices for three, :func:`~SDFSMISLib.evaluation.protocol.support_slice_indices`);
the annotated slices are kept as painted and the other slices of the range are predicted, each from the
annotated slice nearest in relative position (:mod:`SDFSMISLib.inference.support_assignment`, as propagation
assigns a volume's own supports). The range is the organ's true extent (``"ground-truth"``) or the range
estimated from the annotated slices alone (``"estimated"``, what a user gets). Dice and the surface distances
are over the whole volume, annotated slices included, for every method alike.

The methods a radiologist compares with come free in Slicer: copying the nearest painted slice (the cross-
patient predictors work unchanged, fed the patient's own slices) and the Segment Editor's Fill between slices
(:func:`~SDFSMISLib.evaluation.baselines.fill_between_slices`), which needs the slices' positions and so is a
:data:`SamePatientMethod` of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ..inference.query_range import evaluation_query_slices
from ..inference.support_assignment import nearest_support_assignment, relative_positions
from .baselines import fill_between_slices
from .protocol import labelled_slices, support_slice_indices
from .runner import OrganCase, PatientData, Predictor, QueryRange, Results, case_metrics

#: ``(image [S,H,W], annotated slices [K], their masks [K,H,W], predicted slices [N], assignment [N]) -> masks
#: [N,H,W]``: a method that may look at the whole volume and at where the slices are.
SamePatientMethod = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def from_predictor(predictor: Predictor) -> SamePatientMethod:
    """A cross-patient predictor (the model, copy, prototype) fed the patient's own annotated slices."""

    def predict(image: np.ndarray, annotated: np.ndarray, masks: np.ndarray, predicted: np.ndarray,
                assignment: np.ndarray) -> np.ndarray:
        return predictor(image[predicted], image[annotated], masks, assignment)

    return predict


def fill_between_method() -> SamePatientMethod:
    """3D Slicer's Fill between slices as a same-patient method (nothing outside the annotated slices)."""

    def predict(image: np.ndarray, annotated: np.ndarray, masks: np.ndarray, predicted: np.ndarray,
                assignment: np.ndarray) -> np.ndarray:
        return fill_between_slices(image.shape, annotated, masks)[predicted]

    return predict


def evaluate_own_organ(method: SamePatientMethod, patient: PatientData, organ: int, shots: int = 3,
                       query_range: QueryRange = "ground-truth") -> OrganCase:
    """One organ of one patient annotated on ``shots`` of its slices, the rest of its range predicted.

    The case's ``query_slices`` are the whole range (annotated slices included) and ``assignment`` gives, for
    each of them, the annotated slice it takes after (an annotated slice takes after itself).
    """
    truth = patient.labels == organ
    true_slices = labelled_slices(patient.labels, organ)
    annotated = np.unique(support_slice_indices(patient.labels, organ, shots))  # an organ on few slices repeats
    masks = truth[annotated]
    if query_range == "ground-truth":
        span = true_slices
    else:
        span = evaluation_query_slices(patient.image, annotated, patient.image, patient.spacing, patient.spacing,
                                       masks)
    span = np.union1d(span, annotated)
    assignment = nearest_support_assignment(relative_positions(span, span), relative_positions(annotated, span))
    predicted = ~np.isin(span, annotated)
    prediction = np.zeros(truth.shape, dtype=bool)
    prediction[annotated] = masks
    if predicted.any():
        prediction[span[predicted]] = method(patient.image, annotated, masks, span[predicted],
                                             assignment[predicted])
    return OrganCase(annotated, span, assignment, prediction,
                     case_metrics(prediction, truth, patient.spacing, span, true_slices))


def evaluate_own_fold(methods: Mapping[str, SamePatientMethod], patients: Sequence[PatientData],
                      organs: Mapping[str, int], fold: int, shots: int = 3, query_range: QueryRange = "ground-truth",
                      on_case: Callable[[str, str, PatientData, OrganCase], None] | None = None,
                      results: Results | None = None) -> Results:
    """Every method on every patient and organ of one fold, each patient its own support; appends to
    ``results`` (the layout of :func:`SDFSMISLib.evaluation.runner.evaluate_fold`)."""
    results = results if results is not None else {}
    for method_name, method in methods.items():
        for name, organ in organs.items():
            for patient in patients:
                case = evaluate_own_organ(method, patient, organ, shots, query_range)
                results.setdefault(method_name, {}).setdefault(name, []).append(
                    {"patient": patient.id, "fold": fold, **case.metrics})
                if on_case is not None:
                    on_case(method_name, name, patient, case)
    return results
