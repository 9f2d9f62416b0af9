"""The few-shot evaluation protocol run end to end: supports, queries, predictors, metrics.

One test fold: the support patient gives ``shots`` annotated slices per organ (at 1/6, 1/2, 5/6
of its labelled slices for three), every other patient of the fold is a query. A query is
predicted on the slices whose ground truth holds the organ (the protocol's range; see
:mod:`SDFSMISLib.evaluation.protocol`), chunk ``i`` from support slice ``i``, and scored by 3-D Dice (and
HD95 / ASSD in mm) over the volume. The released SD-FSMIS test instead feeds all supports as one
k-shot set and pools TP/FP/FN over patients: ``k_shot=True`` and the ``pooled_dice`` summary.

Methods are *predictors*, so the model and the training-free baselines (:mod:`SDFSMISLib.evaluation.baselines`)
are scored on exactly the same slices. The command ``sdfsmis evaluate`` (:mod:`SDFSMISLib.cli.evaluation`)
runs all of it over the folds and writes the reports.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..data.datasets import Patient, load_patient
from ..errors import InputError
from ..inference.postprocess import Threshold
from ..inference.query_range import evaluation_query_slices, range_agreement
from ..inference.slice_prediction import segment_slices
from ..io.labels import organ_ids
from ..model.network import SDFSMISNet
from .baselines import FeaturesFn, copy_nearest_support, prototype_matcher
from .metrics import organ_metrics
from .protocol import labelled_slices, query_chunks, support_slice_indices

#: ``(query_images [N,H,W], support_images [K,H,W], support_masks [K,H,W], assignment [N] or None) -> masks``
Predictor = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]

QueryRange = Literal["ground-truth", "estimated"]



def dataset_organs(dataset: str, labels: np.ndarray | None = None) -> dict[str, int]:
    """Organ names and label ids of ``dataset``: 'chaos-t2', 'synapse-ct' or 'auto'.

    'auto' (phantom folders, other data in the SSL-ALPNet layout) uses the CHAOS ids, which the MR phantoms
    share, unless ``labels`` hold id 6 but not 4: that is the Synapse layout (CT phantoms), whose liver is 6.
    """
    if dataset == "auto":
        synapse = labels is not None and bool(np.any(labels == 6)) and not np.any(labels == 4)
        dataset = "synapse-ct" if synapse else "chaos-t2"
    return organ_ids(dataset)


@dataclass(frozen=True)
class PatientData:
    """One preprocessed patient in model space."""

    id: int
    image: np.ndarray  # [S, H, W] float32 in [-1, 1]
    labels: np.ndarray  # [S, H, W] int
    spacing: tuple[float, float, float]  # mm along (k, j, i), the array axes


def model_predictor(model: SDFSMISNet, threshold: Threshold = Threshold(), largest_component: bool = True,
                    batch_size: int = 8) -> Predictor:
    """SD-FSMIS as a protocol predictor (the released post-processing by default)."""

    def predict(query: np.ndarray, images: np.ndarray, masks: np.ndarray, assignment: np.ndarray | None) -> np.ndarray:
        return segment_slices(model, query, images, masks, assignment, threshold, largest_component, batch_size)

    return predict


def copy_predictor() -> Predictor:
    """The copy-nearest-support baseline as a protocol predictor (majority vote of the supports in k-shot)."""

    def predict(query: np.ndarray, images: np.ndarray, masks: np.ndarray, assignment: np.ndarray | None) -> np.ndarray:
        return copy_nearest_support(len(query), assignment, masks)

    return predict


def prototype_predictor(features_fn: FeaturesFn, batch_size: int = 16) -> Predictor:
    """The training-free PANet matcher on frozen ``features_fn`` as a protocol predictor.

    Use :func:`SDFSMISLib.evaluation.baselines.vae_features` or
    :func:`~SDFSMISLib.evaluation.baselines.dino_features` of the evaluated model, so the baseline shows what
    its frozen encoders give without the trained UNet.
    """

    def predict(query: np.ndarray, images: np.ndarray, masks: np.ndarray, assignment: np.ndarray | None) -> np.ndarray:
        def tensor(x: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.asarray(x, dtype=np.float32))

        return prototype_matcher(features_fn, tensor(images), tensor(masks), tensor(query), assignment, batch_size)

    return predict


@dataclass(frozen=True)
class OrganCase:
    """What one query patient and organ needs and gives: for metrics and overlays."""

    support_slices: np.ndarray
    query_slices: np.ndarray
    assignment: np.ndarray | None
    prediction: np.ndarray  # [S, H, W] bool over the whole query volume
    metrics: dict[str, float]


def evaluate_organ(predictor: Predictor, support: PatientData, query: PatientData, organ: int, shots: int = 3,
                   k_shot: bool = False, query_range: QueryRange = "ground-truth") -> OrganCase:
    """Protocol prediction and metrics of one organ in one query patient.

    ``query_range="ground-truth"`` is the protocol (the query's labelled slices); ``"estimated"``
    predicts on the range :mod:`SDFSMISLib.inference.query_range` estimates without the query's labels, as
    a user would get, and records its agreement with the true range (``range_iou``).
    A query without the organ has no protocol range: nothing is predicted and both masks are empty.
    """
    support_slices = support_slice_indices(support.labels, organ, shots)
    true_slices = labelled_slices(query.labels, organ)
    if query_range == "ground-truth":
        query_slices = true_slices
    elif query_range == "estimated":
        query_slices = evaluation_query_slices(support.image, support_slices, query.image, support.spacing,
                                               query.spacing, support.labels[support_slices] == organ)
    else:
        raise InputError(f"query range must be 'ground-truth' or 'estimated', got {query_range!r}")
    assignment = None if k_shot else query_chunks(query_slices, shots)
    prediction = np.zeros(query.labels.shape, dtype=bool)
    if query_slices.size:
        prediction[query_slices] = predictor(query.image[query_slices], support.image[support_slices],
                                             support.labels[support_slices] == organ, assignment)
    metrics = case_metrics(prediction, query.labels == organ, query.spacing, query_slices, true_slices)
    return OrganCase(support_slices, query_slices, assignment, prediction, metrics)


def case_metrics(prediction: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float],
                 predicted_range: np.ndarray, true_range: np.ndarray) -> dict[str, float]:
    """Dice, HD95 and ASSD of one case, its voxel counts (for the pooled Dice) and the range's IoU."""
    metrics = organ_metrics(prediction, truth, spacing)
    metrics.update(tp=int((prediction & truth).sum()), fp=int((prediction & ~truth).sum()),
                   fn=int((~prediction & truth).sum()), range_iou=range_agreement(predicted_range, true_range)["iou"])
    return metrics


#: ``method -> organ name -> [per-query-patient metrics, with "patient" and "fold"]``
Results = dict[str, dict[str, list[dict[str, float]]]]


def evaluate_fold(predictors: Mapping[str, Predictor], support: PatientData, queries: Sequence[PatientData],
                  organs: Mapping[str, int], fold: int, shots: int = 3, k_shot: bool = False,
                  query_range: QueryRange = "ground-truth",
                  on_case: Callable[[str, str, PatientData, OrganCase], None] | None = None,
                  results: Results | None = None) -> Results:
    """Score every predictor on every query patient and organ of one fold; appends to ``results``."""
    results = results if results is not None else {}
    for method, predictor in predictors.items():
        for name, organ in organs.items():
            for query in queries:
                case = evaluate_organ(predictor, support, query, organ, shots, k_shot, query_range)
                results.setdefault(method, {}).setdefault(name, []).append(
                    {"patient": query.id, "fold": fold, **case.metrics})
                if on_case is not None:
                    on_case(method, name, query, case)
    return results


def summarize(results: Results) -> dict[str, dict[str, dict[str, float]]]:
    """Per method and organ: mean Dice over patients (the protocol), pooled Dice (released code), HD95, ASSD."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for method, organs in results.items():
        for organ, cases in organs.items():
            tp, fp, fn = (sum(case[key] for case in cases) for key in ("tp", "fp", "fn"))
            summary.setdefault(method, {})[organ] = {
                "dice": float(np.mean([case["dice"] for case in cases])),
                "pooled_dice": 2 * tp / max(2 * tp + fp + fn, 1),
                "hd95": float(np.nanmean([case["hd95"] for case in cases])),
                "assd": float(np.nanmean([case["assd"] for case in cases])),
                "range_iou": float(np.mean([case.get("range_iou", 1.0) for case in cases])),
                "patients": len(cases),
            }
    return summary


def patient_data(patient: Patient, recipe: str = "none", size: int = 256) -> PatientData:
    """A patient with ground truth, preprocessed to model space, ready for :func:`evaluate_organ`."""
    prepared, labels = load_patient(patient, recipe, size)
    if labels is None:
        raise InputError(f"patient {patient.id} has no label_{patient.id} file; evaluation needs ground truth")
    spacing = prepared.model.spacing
    return PatientData(patient.id, prepared.image, labels, (spacing[2], spacing[1], spacing[0]))
