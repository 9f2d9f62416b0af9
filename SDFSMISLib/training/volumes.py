"""Training volumes and validation from dataset folders: pseudo-labels or ground truth, Setting 1 or 2.

The paper trains on supervoxel pseudo-labels (``labels="pseudo"``: no manual label is used, except
that Setting 2 reads the ground truth to drop the slices that show the test organs, as SSL-ALPNet
does). The released code trains on the ground truth with the test classes removed
(``labels="ground-truth"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from ..data.datasets import Patient, load_labelmap, load_patient, remove_classes, setting2_keep_slices
from ..data.episodes import TrainingVolume
from ..errors import InputError
from ..evaluation.runner import PatientData, evaluate_organ, model_predictor
from ..model.network import SDFSMISNet
from ..progress import ProgressCallback, report
from .trainer import Validator

LabelSource = Literal["pseudo", "ground-truth"]


def training_volume(patient: Patient, labels: LabelSource = "pseudo", recipe: str = "none",
                    test_classes: Sequence[int] = (), setting2_rule: str = "or") -> TrainingVolume:
    """One patient as episodes' source; ``test_classes`` non-empty means Setting 2."""
    prepared, truth = load_patient(patient, recipe)
    if test_classes and truth is None:
        raise InputError(f"Setting 2 needs patient {patient.id}'s ground truth to drop the slices that show the "
                         f"test organs, but label_{patient.id} is missing; add it, or train in Setting 1")
    if labels == "pseudo":
        if patient.supervoxel is None:
            raise InputError(f"patient {patient.id} has no supervoxel file; run `sdfsmis pseudolabels "
                             f"{patient.image.parent}` first")
        training_labels = load_labelmap(patient.supervoxel, prepared, np.int32)
    elif labels == "ground-truth":
        if truth is None:
            raise InputError(f"patient {patient.id} has no label file for ground-truth training; use pseudo-labels")
        training_labels = remove_classes(truth, test_classes)
    else:
        raise InputError(f"unknown label source {labels!r}; use 'pseudo' or 'ground-truth'")
    keep = setting2_keep_slices(truth, test_classes, setting2_rule) if test_classes else None
    return TrainingVolume(prepared.image, training_labels, keep)


def training_volumes(patients: Sequence[Patient], labels: LabelSource = "pseudo", recipe: str = "none",
                     test_classes: Sequence[int] = (), setting2_rule: str = "or",
                     progress: ProgressCallback | None = None) -> list[TrainingVolume]:
    """:func:`training_volume` for each patient."""
    volumes = []
    for patient in patients:
        volumes.append(training_volume(patient, labels, recipe, test_classes, setting2_rule))
        report(progress, len(volumes), len(patients))
    return volumes


def protocol_validator(support: PatientData, query: PatientData, organs: Mapping[str, int],
                       shots: int = 3) -> Validator:
    """Validation during training: the test protocol's Dice on one held-out support/query pair."""

    def validate(model: SDFSMISNet) -> dict[str, float]:
        predictor = model_predictor(model)
        return {name: evaluate_organ(predictor, support, query, organ, shots).metrics["dice"]
                for name, organ in organs.items()}

    return validate
