"""The trainer: it lowers the loss, resumes exactly, and refuses to overwrite a run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from SDFSMISLib.data.episodes import EpisodeDataset, EpisodeOptions, TrainingVolume
from SDFSMISLib.errors import InputError
from SDFSMISLib.model.config import preset
from SDFSMISLib.model.network import SDFSMISNet
from SDFSMISLib.training import trainer
from SDFSMISLib.training.trainer import LOG_FILE, TrainingOptions, build_optimizer, keep_fused_choice, train
from SDFSMISLib.weights.checkpoint import read_checkpoint_metadata

SIZE = 64


def blob_volume(seed: int) -> TrainingVolume:
    """Slices with two bright discs whose radius changes slowly along the slice axis."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    image = np.full((6, SIZE, SIZE), -0.8, dtype=np.float32)
    labels = np.zeros((6, SIZE, SIZE), dtype=np.int32)
    for label, (cy, cx) in enumerate(rng.integers(18, 46, size=(2, 2)), start=1):
        for k in range(6):
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 < (9 + k) ** 2
            labels[k][disc] = label
            image[k][disc] = 0.3 * label
    noisy = image + rng.normal(0, 0.05, image.shape).astype(np.float32)
    return TrainingVolume(np.clip(noisy, -1, 1), labels)


def network() -> SDFSMISNet:
    torch.manual_seed(0)
    return SDFSMISNet.from_config(preset("tiny", image_size=SIZE))


def episodes(length: int) -> EpisodeDataset:
    return EpisodeDataset([blob_volume(0), blob_volume(1)], length, seed=3,
                          options=EpisodeOptions(min_pixels=50, augment="none"))


def options(steps: int, **changes: object) -> TrainingOptions:
    base = dict(steps=steps, batch_size=2, gradient_accumulation=2, unet_lr=1e-3, mlp_lr=1e-3, save_every=2,
                validate_every=1000, log_every=1)
    return TrainingOptions(**(base | changes))


def trained_state(model: SDFSMISNet) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{name}": tensor.clone() for prefix, module in model.trainable_modules().items()
            for name, tensor in module.state_dict().items()}


def test_training_lowers_the_loss_and_writes_a_checkpoint(tmp_path: Path) -> None:
    model = network()
    final = train(model, episodes(120), tmp_path / "run", options(30))
    losses = np.loadtxt(tmp_path / "run" / LOG_FILE, delimiter=",", skiprows=1, usecols=1)
    assert len(losses) == 30
    assert losses[-5:].mean() < 0.7 * losses[:5].mean()
    assert read_checkpoint_metadata(final)["training"]["steps"] == 30


def test_interrupted_run_resumes_exactly(tmp_path: Path) -> None:
    straight = network()
    train(straight, episodes(16), tmp_path / "straight", options(4))
    def ctrl_c(_model: SDFSMISNet) -> dict[str, float]:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # the user stops the run at step 2: its state is saved
        train(network(), episodes(16), tmp_path / "resumed", options(4, validate_every=2), validator=ctrl_c)
    resumed = network()  # a fresh process would start from new weights: all state comes from disk
    train(resumed, episodes(16), tmp_path / "resumed", options(4), resume=True)
    expected, actual = trained_state(straight), trained_state(resumed)
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)
    log = np.loadtxt(tmp_path / "resumed" / LOG_FILE, delimiter=",", skiprows=1, usecols=0)
    assert log.tolist() == [1, 2, 3, 4]


def test_a_resumed_run_records_the_time_and_peak_memory_of_all_its_processes(tmp_path: Path) -> None:
    def ctrl_c(_model: SDFSMISNet) -> dict[str, float]:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(network(), episodes(16), tmp_path / "run", options(4, validate_every=2), validator=ctrl_c)
    progress = tmp_path / "run" / trainer.STATE_FOLDER / trainer.PROGRESS_FILE
    saved = json.loads(progress.read_text())
    assert saved["step"] == 2 and saved["seconds"] > 0 and saved["peak_rss_mib"] > 0
    # As if the first process had trained for an hour and peaked far above this one.
    progress.write_text(json.dumps(saved | {"seconds": 3600.0, "peak_rss_mib": 1e6}))
    final = train(network(), episodes(16), tmp_path / "run", options(4), resume=True)
    record = read_checkpoint_metadata(final)["training"]
    assert 3600 < record["seconds"] < 3600 + 600
    assert record["peak_rss_mib"] == 1e6


def test_fused_adamw_takes_the_same_step_as_the_default() -> None:
    """The fused AdamW chosen on CUDA (less memory) is the released recipe: one step lands where the default's does.

    Both run on the CPU here (PyTorch has a fused CPU kernel too); only the device argument differs.
    """
    results = []
    for device in ("cpu", "cuda"):
        model = network()
        optimizer = build_optimizer(model, options(1), torch.device(device))
        assert bool(optimizer.defaults["fused"]) == (device == "cuda")
        for parameter in (p for group in optimizer.param_groups for p in group["params"]):
            parameter.grad = torch.ones_like(parameter)
        optimizer.step()
        results.append(trained_state(model))
    default, fused = results
    assert all(torch.allclose(default[name], fused[name], atol=1e-6) for name in default)
    assert any(not torch.equal(default[name], trained_state(network())[name]) for name in default)  # it moved


def test_resume_keeps_the_fused_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run saved by an unfused AdamW resumes fused where fused is chosen (its state file says otherwise)."""
    model, cpu = network(), torch.device("cpu")
    unfused = build_optimizer(model, options(1), cpu)
    for parameter in model.parameters():
        parameter.grad = torch.ones_like(parameter)
    unfused.step()
    monkeypatch.setattr(trainer, "fused_adamw", lambda _device: True)  # as on CUDA
    resumed = build_optimizer(model, options(1), cpu)
    resumed.load_state_dict(unfused.state_dict())
    assert not any(group["fused"] for group in resumed.param_groups)  # what loading alone does
    keep_fused_choice(resumed, cpu)
    assert all(group["fused"] for group in resumed.param_groups)
    moments = [resumed.state[p]["exp_avg"].clone() for p in resumed.param_groups[0]["params"][:2]]
    assert all(torch.count_nonzero(moment) for moment in moments)  # the saved moments came along
    resumed.step()


def test_refuses_to_overwrite_a_run_and_to_train_past_its_episodes(tmp_path: Path) -> None:
    train(network(), episodes(8), tmp_path / "run", options(2))
    with pytest.raises(InputError, match="--resume"):
        train(network(), episodes(8), tmp_path / "run", options(2))
    with pytest.raises(InputError, match="episodes"):
        train(network(), episodes(4), tmp_path / "other", options(2))


def test_tiny_base_pretraining_lowers_reconstruction_loss_and_loads(tmp_path: Path) -> None:
    from diffusers import AutoencoderKL

    from SDFSMISLib.training.tiny_base import VaePretraining, pretrain_vae, write_tiny_base
    from SDFSMISLib.weights.base_model import load_base_model

    config = preset("tiny", image_size=SIZE)
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(config.vae)
    losses = pretrain_vae(vae, episodes(40), VaePretraining(steps=20, batch_size=2, lr=2e-3, crop=32))
    assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4])
    assert vae.config.scaling_factor != config.vae["scaling_factor"]
    base, dino = write_tiny_base(tmp_path / "tiny-base", vae, config)
    model = load_base_model(base, dino, image_size=SIZE)
    assert model.vae.config.scaling_factor == pytest.approx(vae.config.scaling_factor)
    torch.testing.assert_close(model.vae.encoder.conv_in.weight, vae.encoder.conv_in.weight)


def test_vae_pretraining_resumes_bit_for_bit_and_refuses_another_run(tmp_path: Path) -> None:
    from diffusers import AutoencoderKL

    from SDFSMISLib.progress import Cancelled
    from SDFSMISLib.training.tiny_base import VaePretraining, pretrain_vae

    config = preset("tiny", image_size=SIZE)
    run = VaePretraining(steps=6, batch_size=2, lr=2e-3, crop=32)

    def fresh_vae() -> AutoencoderKL:
        torch.manual_seed(0)
        return AutoencoderKL.from_config(config.vae)

    straight = fresh_vae()
    straight_losses = pretrain_vae(straight, episodes(12), run)
    state = tmp_path / "vae-state"
    with pytest.raises(Cancelled):
        pretrain_vae(fresh_vae(), episodes(12), run, state, save_every=2, progress=lambda done, total: done < 5)
    with pytest.raises(InputError, match="--resume"):
        pretrain_vae(fresh_vae(), episodes(12), run, state, save_every=2)
    with pytest.raises(InputError, match="same settings"):
        pretrain_vae(fresh_vae(), episodes(12), VaePretraining(steps=6, batch_size=2, lr=1e-3, crop=32), state,
                     resume=True)
    resumed = fresh_vae()
    resumed_losses = pretrain_vae(resumed, episodes(12), run, state, resume=True, save_every=2)
    assert resumed_losses == straight_losses
    for (name, expected), actual in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0, msg=name)
    assert resumed.config.scaling_factor == straight.config.scaling_factor


def test_atomic_folder_replaces_whole_or_keeps_old(tmp_path: Path) -> None:
    from SDFSMISLib.io.atomic import atomic_folder

    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_folder(target) as folder:
        (folder / "new.txt").write_text("half")
        raise RuntimeError("writer failed")
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    with atomic_folder(target) as folder:
        (folder / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary folders left beside it
