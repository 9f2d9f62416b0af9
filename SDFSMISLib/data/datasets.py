"""Datasets in the SSL-ALPNet / ADNet / RPT folder layout: patients, cross-validation folds and Setting 2.

Layout (one folder per dataset, as the SSL-ALPNet preprocessing writes it)::

    image_<id>.nii.gz           the volume
    label_<id>.nii.gz           its ground truth (optional; labels may be stored as floats)
    supervoxel_<id>.nii.gz      supervoxel pseudo-labels (ours), or SSL-ALPNet's superpix-<SIZE>_<id>.nii.gz

Patients are ordered by numeric id; folds index that order, so ``CHAOS-T2`` patient index 0 is id 1.

Folds (SSL-ALPNet ``get_folds``, reused unchanged by ADNet, RPT and SD-FSMIS; method-notes "Data and
protocol"): five blocks of ``N/5 + 1`` consecutive patients, each block sharing its last patient with
the next, the last block wrapping round to patient 0. For CHAOS-T2 (N = 20): {0-4}, {4-8}, {8-12},
{12-16}, {16-19, 0}; for Synapse/SABS (N = 30): {0-6}, {6-12}, {12-18}, {18-24}, {24-29, 0}. The
published sets are :data:`FOLDS`; :func:`fold_indices` applies the same rule to folders of any size.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.volumes import read_volume
from .preprocessing import Preprocessed, preprocess

FOLD_COUNT = 5
SETTING2_RULES = ("or", "and")
FILE_PATTERN = re.compile(r"^(image|label|supervoxel|superpix-[^_]+)_(\d+)\.nii(\.gz)?$")
LAYOUT = "image_<id>.nii.gz, label_<id>.nii.gz and supervoxel_<id>.nii.gz (or superpix-MIDDLE_<id>.nii.gz)"


@dataclass(frozen=True)
class Patient:
    """One patient's files; ``label`` and ``supervoxel`` are None where the folder has none."""

    id: int
    image: Path
    label: Path | None = None
    supervoxel: Path | None = None


def fold_indices(count: int, fold: int) -> set[int]:
    """Patient indices tested in ``fold`` for a dataset of ``count`` patients (the SSL-ALPNet rule)."""
    if not 0 <= fold < FOLD_COUNT:
        raise InputError(f"fold {fold} does not exist; folds are numbered 0 to {FOLD_COUNT - 1}")
    step = count // FOLD_COUNT
    if step < 1:
        raise InputError(f"{count} patients are too few for {FOLD_COUNT}-fold cross-validation; "
                         f"at least {FOLD_COUNT} are needed")
    if fold < FOLD_COUNT - 1:
        return set(range(step * fold, step * (fold + 1) + 1))
    return set(range(step * fold, count)) | {0}


FOLDS: dict[str, tuple[frozenset[int], ...]] = {
    dataset: tuple(frozenset(fold_indices(count, fold)) for fold in range(FOLD_COUNT))
    for dataset, count in (("chaos-t2", 20), ("synapse-ct", 30))
}


def scan_folder(root: str | Path, supervoxel_dir: str | Path | None = None) -> list[Patient]:
    """The patients in ``root``, by numeric id; supervoxels are looked for in ``supervoxel_dir`` (default ``root``).

    RPT keeps its supervoxels in a subfolder (``supervoxels_<n>/``): pass that as ``supervoxel_dir``.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"dataset folder {root} does not exist; give a folder holding {LAYOUT}")
    files = _numbered_files(root)
    if supervoxel_dir is not None:
        files.update({key: path for key, path in _numbered_files(Path(supervoxel_dir)).items()
                      if key[0] == "supervoxel"})
    ids = sorted(number for kind, number in files if kind == "image")
    if not ids:
        raise InputError(f"{root} holds no image_<id>.nii.gz files; a dataset folder holds {LAYOUT}")
    orphans = sorted(path.name for (_, number), path in files.items() if number not in ids)
    if orphans:
        raise InputError(f"{root}: {', '.join(orphans)} have no matching image_<id> file; add the images "
                         "or remove these files")
    return [Patient(number, files["image", number], files.get(("label", number)), files.get(("supervoxel", number)))
            for number in ids]


def _numbered_files(folder: Path) -> dict[tuple[str, int], Path]:
    """``{(kind, id): path}`` for the dataset files in ``folder``; a kind given twice for one id is refused."""
    if not folder.is_dir():
        raise InputError(f"folder {folder} does not exist")
    found: dict[tuple[str, int], Path] = {}
    for path in sorted(folder.iterdir()):
        match = FILE_PATTERN.match(path.name)
        if not match or not path.is_file():
            continue
        kind = "supervoxel" if match[1].startswith("superpix-") else match[1]
        key = (kind, int(match[2]))
        if key in found:
            raise InputError(f"{folder}: both {found[key].name} and {path.name} are the {kind} of patient {key[1]}; "
                             "keep one")
        found[key] = path
    return found


def fold_split(patients: Sequence[Patient], fold: int, dataset: str = "auto") -> tuple[list[Patient], list[Patient]]:
    """``(train, test)`` patients of ``fold``; ``dataset`` 'chaos-t2' or 'synapse-ct' uses the published sets.

    'auto' applies the same rule to however many patients there are (it reproduces both published
    sets at 20 and 30 patients). The order of ``patients`` (numeric id) is kept in both lists.
    """
    if dataset == "auto":
        test = fold_indices(len(patients), fold)
    elif dataset in FOLDS:
        if not 0 <= fold < FOLD_COUNT:
            raise InputError(f"fold {fold} does not exist; folds are numbered 0 to {FOLD_COUNT - 1}")
        test = FOLDS[dataset][fold]
        if max(test) >= len(patients):
            raise InputError(f"{dataset} fold {fold} tests patients {sorted(test)} (by position in id order), but "
                             f"the folder holds {len(patients)}; use the full dataset or dataset 'auto'")
    else:
        raise InputError(f"unknown dataset {dataset!r} for folds; use 'auto', {', '.join(FOLDS)}")
    return ([patient for index, patient in enumerate(patients) if index not in test],
            [patient for index, patient in enumerate(patients) if index in test])


def setting2_keep_slices(labels: np.ndarray, test_classes: Sequence[int], rule: str = "or") -> np.ndarray:
    """Which training slices ``[S]`` Setting 2 keeps, so no training slice shows the test organs.

    ``"or"`` (SSL-ALPNet, the intended, stricter rule) drops a slice holding ANY test class; ``"and"``
    (the released RPT / SD-FSMIS code) drops only slices holding ALL of them.
    """
    if rule not in SETTING2_RULES:
        raise InputError(f"unknown Setting 2 rule {rule!r}; use 'or' (SSL-ALPNet) or 'and' (released RPT code)")
    labels = np.asarray(labels)
    present = np.stack([np.any(labels == label, axis=(1, 2)) for label in test_classes], axis=1)
    holds_test = present.any(axis=1) if rule == "or" else present.all(axis=1)
    return ~holds_test


def remove_classes(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """``labels`` with ``classes`` set to background: ground-truth training without the test classes."""
    return np.where(np.isin(labels, list(classes)), 0, labels).astype(np.asarray(labels).dtype)


def load_patient(patient: Patient, recipe: str = "none", size: int = 256) -> tuple[Preprocessed, np.ndarray | None]:
    """The patient's image in model space and its labels ``[S, size, size]`` int16 (None without a label file)."""
    prepared = preprocess(read_volume(patient.image), recipe, size)
    labels = None if patient.label is None else load_labelmap(patient.label, prepared, np.int16)
    return prepared, labels


def load_labelmap(path: Path, prepared: Preprocessed, dtype: type = np.int16) -> np.ndarray:
    """A labelmap (labels, supervoxels) stored on the image's grid, on the model grid as integers.

    Labels are often stored as floats; they must still hold whole numbers.
    """
    volume = read_volume(path)
    if not volume.same_grid(prepared.original, tolerance=1e-3):
        raise InputError(f"{path} is not on the grid of its image (shape {volume.array.shape} vs "
                         f"{prepared.original.array.shape}, or different spacing/origin/direction); "
                         "resample it onto the image first")
    rounded = np.rint(volume.array)
    if not np.array_equal(rounded, volume.array) or rounded.min() < np.iinfo(dtype).min \
            or rounded.max() > np.iinfo(dtype).max:
        raise InputError(f"{path} holds values that are not {np.dtype(dtype).name} label ids; "
                         "give a labelmap of whole numbers")
    return prepared.labels_to_model(rounded.astype(dtype))
