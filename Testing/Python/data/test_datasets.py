"""Dataset folders, the published cross-validation folds and the Setting 2 slice rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import CHAOS

from SDFSMISLib.data.datasets import (
    FOLDS,
    Patient,
    fold_indices,
    fold_split,
    load_patient,
    remove_classes,
    scan_folder,
    setting2_keep_slices,
)
from SDFSMISLib.errors import InputError
from SDFSMISLib.evaluation.protocol import test_support_and_queries
from SDFSMISLib.io.volumes import Volume, write_volume

# The published sets, written out as in method-notes ("Data and protocol").
CHAOS_FOLDS = [{0, 1, 2, 3, 4}, {4, 5, 6, 7, 8}, {8, 9, 10, 11, 12}, {12, 13, 14, 15, 16}, {16, 17, 18, 19, 0}]
SABS_FOLDS = [set(range(0, 7)), set(range(6, 13)), set(range(12, 19)), set(range(18, 25)), set(range(24, 30)) | {0}]


def test_published_folds() -> None:
    assert [set(fold) for fold in FOLDS["chaos-t2"]] == CHAOS_FOLDS
    assert [set(fold) for fold in FOLDS["synapse-ct"]] == SABS_FOLDS
    assert [fold_indices(20, fold) for fold in range(5)] == CHAOS_FOLDS
    assert [fold_indices(30, fold) for fold in range(5)] == SABS_FOLDS


def fake_patients(count: int) -> list[Patient]:
    return [Patient(number, Path(f"image_{number}.nii.gz")) for number in range(100, 100 + count)]


@pytest.mark.parametrize("count", [5, 8, 20, 23])
def test_folds_of_any_size_cover_every_patient(count: int) -> None:
    patients = fake_patients(count)
    tested = set()
    for fold in range(5):
        train, test = fold_split(patients, fold)
        assert len(train) + len(test) == count and not set(train) & set(test)
        assert len(test) >= 2 and train
        tested.update(patient.id for patient in test)
    assert tested == {patient.id for patient in patients}


def test_fold_split_keeps_order_and_refuses_small_folders() -> None:
    patients = fake_patients(20)
    train, test = fold_split(patients, 4, "chaos-t2")
    assert [patient.id for patient in test] == [100, 116, 117, 118, 119]
    assert [patient.id for patient in train] == list(range(101, 116))
    with pytest.raises(InputError, match="holds 12"):
        fold_split(patients[:12], 3, "chaos-t2")
    with pytest.raises(InputError, match="too few"):
        fold_split(patients[:4], 0)
    with pytest.raises(InputError, match="fold 5 does not exist"):
        fold_split(patients, 5, "synapse-ct")
    with pytest.raises(InputError, match="unknown dataset"):
        fold_split(patients, 0, "brats")
    support, queries = test_support_and_queries(test)
    assert support.id == 117 and [patient.id for patient in queries] == [100, 116, 118, 119]


def test_setting2_or_and_rules() -> None:
    labels = np.zeros((5, 4, 4), np.int16)
    labels[0, 0, 0] = 1  # test class 1 only
    labels[1, 0, 0], labels[1, 3, 3] = 1, 4  # both test classes
    labels[2, 1, 1] = 2  # a training class only
    labels[3, 2, 2], labels[3, 0, 0] = 4, 2  # test class 4 beside a training class
    # slice 4 is empty
    assert setting2_keep_slices(labels, [1, 4]).tolist() == [False, False, True, False, True]
    assert setting2_keep_slices(labels, [1, 4], rule="and").tolist() == [True, False, True, True, True]
    with pytest.raises(InputError, match="unknown Setting 2 rule"):
        setting2_keep_slices(labels, [1], rule="xor")
    removed = remove_classes(labels, [1, 4])
    assert removed.dtype == labels.dtype and set(np.unique(removed)) == {0, 2}
    assert np.array_equal(removed == 2, labels == 2)


def write(path: Path, array: np.ndarray) -> None:
    write_volume(path, Volume(array, (1.25, 1.25, 7.7), (0, 0, 0), (1, 0, 0, 0, -1, 0, 0, 0, 1)))


def test_scan_folder(tmp_path: Path) -> None:
    array = np.zeros((2, 8, 8), np.float32)
    for name in ("image_10.nii.gz", "image_2.nii.gz", "label_2.nii.gz", "image_1.nii", "label_10.nii.gz",
                 "supervoxel_1.nii.gz", "superpix-MIDDLE_10.nii.gz", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    patients = scan_folder(tmp_path)
    assert [(p.id, p.image.name, p.label and p.label.name, p.supervoxel and p.supervoxel.name) for p in patients] == [
        (1, "image_1.nii", None, "supervoxel_1.nii.gz"), (2, "image_2.nii.gz", "label_2.nii.gz", None),
        (10, "image_10.nii.gz", "label_10.nii.gz", "superpix-MIDDLE_10.nii.gz")]
    (tmp_path / "supervoxels_5000").mkdir()
    write(tmp_path / "supervoxels_5000" / "supervoxel_2.nii.gz", array)
    assert scan_folder(tmp_path, tmp_path / "supervoxels_5000")[1].supervoxel.parent.name == "supervoxels_5000"
    (tmp_path / "supervoxel_10.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="keep one"):
        scan_folder(tmp_path)
    (tmp_path / "supervoxel_10.nii.gz").unlink()
    (tmp_path / "label_7.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="label_7.nii.gz have no matching image"):
        scan_folder(tmp_path)
    with pytest.raises(InputError, match="holds no image"):
        scan_folder(tmp_path / "supervoxels_5000")


def test_load_patient_converts_float_labels_and_checks_grid(tmp_path: Path) -> None:
    image = np.random.default_rng(0).uniform(0, 1200, size=(3, 16, 16))
    labels = np.zeros((3, 16, 16))
    labels[1, 4:9, 5:12] = 4.0
    write(tmp_path / "image_3.nii.gz", image)
    write(tmp_path / "label_3.nii.gz", labels)
    prepared, model_labels = load_patient(scan_folder(tmp_path)[0], "none", 16)
    assert model_labels.dtype == np.int16 and np.array_equal(model_labels, labels.astype(np.int16))
    assert prepared.image.min() == -1 and prepared.image.max() == 1
    write(tmp_path / "label_3.nii.gz", labels + 0.5)
    with pytest.raises(InputError, match="not int16 label ids"):
        load_patient(scan_folder(tmp_path)[0], "none", 16)
    write(tmp_path / "label_3.nii.gz", labels[:2])
    with pytest.raises(InputError, match="not on the grid"):
        load_patient(scan_folder(tmp_path)[0], "none", 16)


def test_load_real_chaos_patient() -> None:
    if not (CHAOS / "image_1.nii.gz").is_file():
        pytest.skip("the CHAOS-T2 folder is not on this machine")
    patients = scan_folder(CHAOS)
    assert [patient.id for patient in patients][:5] == [1, 2, 3, 5, 8] and len(patients) == 20
    prepared, labels = load_patient(patients[0])
    assert prepared.image.shape == labels.shape and prepared.image.shape[1:] == (256, 256)
    assert prepared.image.dtype == np.float32 and prepared.image.min() == -1 and prepared.image.max() == 1
    assert set(np.unique(labels)) == {0, 1, 2, 3, 4}
