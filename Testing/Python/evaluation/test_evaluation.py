"""``sdfsmis evaluate`` end to end on tiny phantom patients, and the baselines' k-shot and feature variants."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SDFSMISLib.cli.main import main
from SDFSMISLib.data.phantom import generate_phantom
from SDFSMISLib.evaluation.baselines import copy_nearest_support, dino_features, prototype_matcher, vae_features
from SDFSMISLib.evaluation.runner import dataset_organs
from SDFSMISLib.io.labels import organ_ids
from SDFSMISLib.io.volumes import write_volume
from SDFSMISLib.model.network import SDFSMISNet
from SDFSMISLib.weights import loading
from SDFSMISLib.weights.base_model import load_base_model
from SDFSMISLib.weights.checkpoint import save_checkpoint
from SDFSMISLib.weights.model_files import ModelFiles

SIZE = 64
PATIENTS = range(1, 11)  # 10 patients: folds of 3, so the RPT support index 2 exists
HEADER = "| Method | Spleen | Liver | LK | RK | Mean Dice | HD95 | ASSD |"


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten small MR phantoms (6 slices of 64 x 64, a CHAOS-like 320 mm field of view) in the dataset layout."""
    folder = tmp_path_factory.mktemp("phantoms")
    for patient in PATIENTS:
        image, labels = generate_phantom(patient, "mr", shape=(6, SIZE, SIZE), spacing=(5.0, 5.0, 20.0))
        write_volume(folder / f"image_{patient}.nii.gz", image)
        write_volume(folder / f"label_{patient}.nii.gz", labels)
    return folder


@pytest.fixture(scope="module")
def model_files(tiny_base: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A random-weight tiny checkpoint on the tiny base, saved once per fold: runs/fold{0,1}.safetensors."""
    folder = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    model = load_base_model(*tiny_base, image_size=SIZE)
    paths = [save_checkpoint(model, folder / f"fold{fold}.safetensors") for fold in (0, 1)]
    return [str(folder / "fold{fold}.safetensors"), *map(str, tiny_base), *map(str, paths)]


def evaluate(data: Path, out: Path, *options: str) -> int:
    return main(["evaluate", "--data", str(data), "--out", str(out), "--size", str(SIZE), *options])


def test_evaluate_writes_every_report(phantoms: Path, model_files: list[str], tmp_path: Path) -> None:
    pattern, base, dino = model_files[:3]
    out = tmp_path / "report"
    assert evaluate(phantoms, out, "--folds", "0", "--organs", "Liver", "--checkpoint", pattern, "--base-model",
                    base, "--dino", dino, "--label", "tiny", "--setting", "2") == 0
    record = json.loads((out / "results.json").read_text())
    assert record["methods"] == {"sdfsmis": "tiny", "copy": "Copy nearest support",
                                 "prototype": "Prototype (PANet, frozen VAE latents)"}
    assert record["folds"] == [{"fold": 0, "support": 3, "queries": [1, 2], "checkpoint": pattern.format(fold=0),
                                "base_model": base, "dino": dino}]
    assert record["setting"] == 2 and record["organs"] == {"Liver": 1} and "torch" in record["versions"]
    assert "--folds 0" in record["command"] and "--setting 2" in record["command"]
    for method in ("sdfsmis", "copy", "prototype"):
        cases = record["cases"][method]["Liver"]
        assert [case["patient"] for case in cases] == [1, 2]
        assert all(0 <= case["dice"] <= 1 for case in cases)
        assert record["summary"][method]["Liver"]["patients"] == 2
        assert record["runtime"][method]["slices"] == 8  # liver on slices 2-5 of both queries
    lines = (out / "table.md").read_text().splitlines()
    assert lines[0] == HEADER and [line.split(" | ")[0] for line in lines[2:5]] == [
        "| tiny", "| Copy nearest support", "| Prototype (PANet, frozen VAE latents)"]
    assert (out / "dice.png").read_bytes()[:4] == b"\x89PNG"
    overlays = sorted(path.name for path in (out / "overlays").iterdir())
    assert overlays == ["fold0_copy_Liver.png", "fold0_prototype_Liver.png", "fold0_sdfsmis_Liver.png"]


def test_each_fold_can_bring_its_own_base_model(phantoms: Path, model_files: list[str], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A fold's model is held out whole: ``{fold}`` in the base model and DINOv2 paths too."""
    pattern, base, dino = model_files[:3]
    shutil.copytree(base, tmp_path / "base0")
    per_fold = ["--checkpoint", pattern, "--base-model", str(tmp_path / "base{fold}"), "--dino", dino,
                "--methods", "sdfsmis", "--organs", "Liver"]
    assert evaluate(phantoms, tmp_path / "one", "--folds", "0", *per_fold) == 0
    record = json.loads((tmp_path / "one" / "results.json").read_text())
    assert record["folds"][0]["base_model"] == str(tmp_path / "base0")
    assert evaluate(phantoms, tmp_path / "two", "--folds", "0,1", *per_fold) == 2
    assert f"fold 1: {tmp_path / 'base1'} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "two").exists()  # refused before any work


def read_array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_copy_baseline_equals_an_independent_computation(phantoms: Path, tmp_path: Path) -> None:
    assert evaluate(phantoms, tmp_path, "--methods", "copy") == 0
    record = json.loads((tmp_path / "results.json").read_text())
    assert [fold["support"] for fold in record["folds"]] == [3, 5, 7, 9, 10]
    # Fold 1 (patients 3, 4, 5): support patient 5, query patient 4, right kidney (label 2), by hand.
    support, query = read_array(phantoms / "label_5.nii.gz") == 2, read_array(phantoms / "label_4.nii.gz") == 2
    support_slices = np.flatnonzero(support.any(axis=(1, 2)))
    shots = support_slices[[len(support_slices) // 6, len(support_slices) // 2, 5 * len(support_slices) // 6]]
    query_slices = np.flatnonzero(query.any(axis=(1, 2)))
    bounds = np.linspace(0, len(query_slices), 4).astype(int)
    prediction = np.zeros_like(query)
    for chunk in range(3):
        prediction[query_slices[bounds[chunk]:bounds[chunk + 1]]] = support[shots[chunk]]
    expected = 2 * (prediction & query).sum() / (prediction.sum() + query.sum())
    case = next(case for case in record["cases"]["copy"]["RK"] if case["fold"] == 1 and case["patient"] == 4)
    assert case["dice"] == pytest.approx(expected) and 0 < expected < 1


def test_k_shot_records_pooled_dice(phantoms: Path, tmp_path: Path) -> None:
    assert evaluate(phantoms, tmp_path, "--methods", "copy", "--folds", "0", "--k-shot") == 0
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["k_shot"] is True and "--k-shot" in record["command"]
    cases = record["cases"]["copy"]["Liver"]
    tp, fp, fn = (sum(case[key] for case in cases) for key in ("tp", "fp", "fn"))
    assert record["summary"]["copy"]["Liver"]["pooled_dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))


def test_estimated_query_range_is_scored_against_the_true_range(phantoms: Path, tmp_path: Path) -> None:
    assert evaluate(phantoms, tmp_path / "truth", "--methods", "copy", "--folds", "0") == 0
    assert evaluate(phantoms, tmp_path / "estimated", "--methods", "copy", "--folds", "0",
                    "--query-range", "estimated") == 0
    truth, estimated = (json.loads((tmp_path / run / "results.json").read_text())["cases"]["copy"]["Liver"]
                        for run in ("truth", "estimated"))
    assert all(case["range_iou"] == 1.0 for case in truth)
    assert all(0.0 <= case["range_iou"] <= 1.0 for case in estimated)
    assert np.mean([case["range_iou"] for case in estimated]) > 0.5
    assert json.loads((tmp_path / "estimated" / "results.json").read_text())["query_range"] == "estimated"


def test_checkpoint_with_fold_loads_one_model_per_fold(phantoms: Path, model_files: list[str], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    pattern, base, dino, *paths = model_files
    loaded = []
    real_load = loading.load_model

    def load_model(files: ModelFiles, device: str, dtype: str) -> SDFSMISNet:
        loaded.append((str(files.checkpoint), dtype))
        return real_load(files, device, dtype)

    # through load_model: the device's inference layout, in float32 everywhere
    monkeypatch.setattr(loading, "load_model", load_model)
    assert evaluate(phantoms, tmp_path, "--methods", "sdfsmis", "--folds", "0,1", "--organs", "Spleen",
                    "--checkpoint", pattern, "--base-model", base, "--dino", dino) == 0
    assert loaded == [(path, "float32") for path in paths]
    record = json.loads((tmp_path / "results.json").read_text())
    assert [fold["checkpoint"] for fold in record["folds"]] == paths


@pytest.fixture
def unlabelled(phantoms: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for patient in PATIENTS:
        (folder / f"image_{patient}.nii.gz").write_bytes((phantoms / f"image_{patient}.nii.gz").read_bytes())
    return folder


@pytest.mark.parametrize("problem", ["missing folder", "no labels", "unknown method", "missing fold model"])
def test_bad_input_exits_2_and_writes_nothing(problem: str, phantoms: Path, unlabelled: Path,
                                              model_files: list[str], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    pattern, base, dino = model_files[:3]
    out = tmp_path / "report"
    arguments = {
        "missing folder": (tmp_path / "nowhere", "--methods", "copy"),
        "no labels": (unlabelled, "--methods", "copy"),
        "unknown method": (phantoms, "--methods", "copy,unet"),
        "missing fold model": (phantoms, "--folds", "0,2", "--checkpoint", pattern, "--base-model", base,
                               "--dino", dino),
    }[problem]
    assert evaluate(arguments[0], out, *arguments[1:]) == 2
    message = capsys.readouterr().err
    assert message.startswith("sdfsmis: error:")
    assert {"missing folder": "does not exist", "no labels": "no label_<id>", "unknown method": "'unet'",
            "missing fold model": "fold2.safetensors"}[problem] in message
    assert not out.exists()


def test_auto_dataset_reads_the_label_layout() -> None:
    chaos = np.array([[[0, 1, 2, 3, 4]]])
    assert dataset_organs("auto", chaos) == organ_ids("chaos-t2") == dataset_organs("chaos-t2")
    assert dataset_organs("auto", np.array([[[0, 1, 2, 3, 6]]])) == organ_ids("synapse-ct")


def test_copy_without_assignment_is_the_majority_vote() -> None:
    masks = np.zeros((3, 4, 4), dtype=bool)
    masks[0, :2], masks[1, :3], masks[2, 3] = True, True, True
    copied = copy_nearest_support(2, None, masks)
    assert copied.shape == (2, 4, 4) and np.array_equal(copied[1], masks[0])  # rows 0-1: in two of three masks


def test_k_shot_prototypes_average_the_shots() -> None:
    """Features affine in the image and one mask for both shots: averaging the two shots' prototypes equals
    one shot on the average image, and differs from either shot alone."""
    generator = torch.Generator().manual_seed(0)
    images, query = torch.rand(2, 8, 8, generator=generator), torch.rand(3, 8, 8, generator=generator)
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[:, 2:6, 1:5] = True

    def features(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x, 1 - x], dim=1)

    pooled = prototype_matcher(features, images, mask.repeat(2, 1, 1), query, None)
    averaged = prototype_matcher(features, images.mean(0, keepdim=True), mask, query, np.zeros(3, dtype=int))
    assert np.array_equal(pooled, averaged)
    for shot in range(2):
        assert not np.array_equal(pooled, prototype_matcher(features, images[shot:shot + 1], mask, query,
                                                            np.zeros(3, dtype=int)))


def test_frozen_feature_extractors(tiny_model) -> None:  # noqa: ANN001 - conftest fixture
    images = torch.rand(2, 96, 96) * 2 - 1
    latents = vae_features(tiny_model)(images)
    assert latents.shape == (2, 4, SIZE // 8, SIZE // 8)
    assert torch.allclose(latents, tiny_model.encode_latents(torch.nn.functional.interpolate(
        images[:, None], size=(SIZE, SIZE), mode="bilinear", antialias=True)[:, 0]))
    tokens = dino_features(tiny_model)(images)
    assert tokens.shape == (2, tiny_model.dino.config.hidden_size, 16, 16)
