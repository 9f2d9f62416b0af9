"""Base weights, SD-FSMIS checkpoints and released-code import: round trips and clear errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from conftest import random_images, square_mask
from safetensors.torch import load_file, save_file

import SDFSMISLib.weights.checkpoint as checkpoint_module
from SDFSMISLib import load_base_model, load_checkpoint, load_released_checkpoint, save_checkpoint
from SDFSMISLib.cli.main import main as cli_main
from SDFSMISLib.errors import InputError, WeightsError
from SDFSMISLib.model.network import SDFSMISNet
from SDFSMISLib.weights.files import read_tensors
from SDFSMISLib.weights.model_files import WEIGHT_SUFFIXES, bundled_model, chosen_model, layout_problem


@pytest.fixture(scope="module")
def base_model(tiny_base: tuple[Path, Path]) -> SDFSMISNet:
    torch.manual_seed(2)
    model = load_base_model(*tiny_base)
    with torch.no_grad():  # make the checkpoint differ from a fresh initialisation everywhere
        for module in model.trainable_modules().values():
            for parameter in module.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.01)
    return model.eval()


@pytest.fixture(scope="module")
def saved(base_model: SDFSMISNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    return save_checkpoint(base_model, path, training={"steps": 3})


def _trainable_state(model: SDFSMISNet) -> dict[str, torch.Tensor]:
    return {f"{p}.{k}": v for p, m in model.trainable_modules().items() for k, v in m.state_dict().items()}


def _rewrite(source: Path, target: Path, change) -> Path:  # noqa: ANN001 - a callable editing tensors
    from safetensors import safe_open

    with safe_open(source, framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(source)
    change(tensors)
    save_file(tensors, target, metadata=metadata)
    return target


def test_base_model_loads_the_folder_weights(tiny_base: tuple[Path, Path]) -> None:
    fresh = load_base_model(*tiny_base)
    stored = load_file(tiny_base[0] / "vae" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(tensor, stored[name]) for name, tensor in fresh.vae.state_dict().items())
    conv_in = load_file(tiny_base[0] / "unet" / "diffusion_pytorch_model.safetensors")["conv_in.weight"]
    for stem in (fresh.query_stem, fresh.support_stem):  # both stems: the Marigold rule on SD's conv_in
        torch.testing.assert_close(stem.weight.detach(), conv_in.repeat(1, 2, 1, 1) / 2)


def test_checkpoint_round_trip_is_bit_exact(base_model: SDFSMISNet, saved: Path,
                                            tiny_base: tuple[Path, Path]) -> None:
    loaded = load_checkpoint(saved, *tiny_base).eval()
    original, restored = _trainable_state(base_model), _trainable_state(loaded)
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    query, support, mask = random_images(1, 20), random_images(1, 21), square_mask()[None]
    with torch.no_grad():
        expected = base_model.predict_latents(query, base_model.encode_support(support, mask))
        actual = loaded.predict_latents(query, loaded.encode_support(support, mask))
    assert torch.equal(expected, actual)


def test_spatial_prior_checkpoint_rebuilds_its_wider_stem(tiny_base: tuple[Path, Path], tmp_path: Path) -> None:
    model = load_base_model(*tiny_base, spatial_prior=True).eval()
    assert model.query_stem.in_channels == 12 and not model.query_stem.weight[:, 8:].any()
    with torch.no_grad():
        model.query_stem.weight[:, 8:].normal_(0, 0.1)
    path = save_checkpoint(model, tmp_path / "prior.safetensors")
    loaded = load_checkpoint(path, *tiny_base).eval()
    assert loaded.config.spatial_prior
    query, support, mask = random_images(1, 22), random_images(1, 23), square_mask()[None]
    with torch.no_grad():
        expected = model.predict_latents(query, model.encode_support(support, mask))
        actual = loaded.predict_latents(query, loaded.encode_support(support, mask))
    assert torch.equal(expected, actual)


def test_checkpoint_stores_only_trainable_parts_and_metadata(saved: Path) -> None:
    prefixes = {name.split(".", 1)[0] for name in load_file(saved)}
    assert prefixes == {"unet", "query_stem", "support_stem", "condition_mlp"}
    metadata = checkpoint_module.read_checkpoint_metadata(saved)
    assert metadata["training"] == {"steps": 3}
    assert metadata["config"]["injection"] == "kv-bank"
    assert len(metadata["base_model"]["weights_fingerprint"]) == 64


def test_checkpoint_dtype_is_selectable(base_model: SDFSMISNet, tmp_path: Path,
                                        tiny_base: tuple[Path, Path]) -> None:
    path = save_checkpoint(base_model, tmp_path / "half.safetensors", dtype=torch.float16)
    assert all(t.dtype == torch.float16 for t in load_file(path).values())
    loaded = load_checkpoint(path, *tiny_base)
    torch.testing.assert_close(loaded.query_stem.weight, base_model.query_stem.weight.half().float())


def test_half_precision_load_of_the_right_base_does_not_warn(saved: Path, tiny_base: tuple[Path, Path]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the base-model mismatch warning would fail this
        loaded = load_checkpoint(saved, *tiny_base, dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16 and loaded.vae.dtype == torch.bfloat16


def test_truncated_checkpoint_is_named(saved: Path, tmp_path: Path, tiny_base: tuple[Path, Path]) -> None:
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    with pytest.raises(WeightsError, match=r"broken\.safetensors.*(truncated or corrupt)"):
        load_checkpoint(broken, *tiny_base)


def test_foreign_safetensors_is_not_taken_for_a_checkpoint(tmp_path: Path, tiny_base: tuple[Path, Path]) -> None:
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2)}, foreign)
    with pytest.raises(WeightsError, match="not an SD-FSMIS checkpoint"):
        load_checkpoint(foreign, *tiny_base)


def test_missing_and_unexpected_tensors_are_listed(saved: Path, tmp_path: Path,
                                                  tiny_base: tuple[Path, Path]) -> None:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        tensors.pop("condition_mlp.mlp.0.weight")
        tensors["unet.extra.weight"] = torch.zeros(1)

    edited = _rewrite(saved, tmp_path / "edited.safetensors", edit)
    with pytest.raises(WeightsError, match="unexpected tensors \\(extra.weight\\)") as error:
        load_checkpoint(edited, *tiny_base)
    assert "edited.safetensors" in str(error.value)


def test_shape_mismatch_is_reported(saved: Path, tmp_path: Path, tiny_base: tuple[Path, Path]) -> None:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        tensors["query_stem.weight"] = torch.zeros(32, 4, 3, 3)

    edited = _rewrite(saved, tmp_path / "shape.safetensors", edit)
    with pytest.raises(WeightsError, match=r"wrong shape \(weight \(32, 4, 3, 3\) \(expected \(32, 8, 3, 3\)\)"):
        load_checkpoint(edited, *tiny_base)


def test_other_architecture_option_is_refused(saved: Path, tiny_base: tuple[Path, Path]) -> None:
    with pytest.raises(WeightsError, match="injection='cross-attn' \\(checkpoint: 'kv-bank'\\)"):
        load_checkpoint(saved, *tiny_base, injection="cross-attn")


def test_inference_options_can_change(saved: Path, tiny_base: tuple[Path, Path]) -> None:
    model = load_checkpoint(saved, *tiny_base, timestep=999, query_enhancement=False)
    assert model.config.timestep == 999 and not model.config.query_enhancement


def test_dino_of_another_size_is_named(saved: Path, tmp_path: Path, tiny_base: tuple[Path, Path]) -> None:
    other = tmp_path / "dino-other"
    other.mkdir()
    config = json.loads((tiny_base[1] / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "hidden_size": 24}))
    with pytest.raises(WeightsError, match="48-d tokens.*holds 24-d tokens"):
        load_checkpoint(saved, tiny_base[0], other)


def test_other_base_weights_warn(saved: Path, tmp_path: Path, tiny_base: tuple[Path, Path]) -> None:
    torch.manual_seed(99)
    other = SDFSMISNet.from_config(checkpoint_module.SDFSMISConfig.from_dict(
        checkpoint_module.read_checkpoint_metadata(saved)["config"]))
    (tmp_path / "sd" / "unet").mkdir(parents=True)
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        (tmp_path / "sd" / "unet" / name).write_bytes((tiny_base[0] / "unet" / name).read_bytes())
    other.vae.save_pretrained(tmp_path / "sd" / "vae")
    with pytest.warns(UserWarning, match="other VAE/DINOv2 weights"):
        load_checkpoint(saved, tmp_path / "sd", tiny_base[1])


def test_base_fingerprint_ignores_parameter_names() -> None:
    """transformers renamed DINOv2's attention weights between versions: the same weights must match."""
    torch.manual_seed(0)
    old_names, vae = torch.nn.Module(), torch.nn.Conv2d(2, 2, 3)
    old_names.query = torch.nn.Linear(4, 4)
    new_names = torch.nn.Module()
    new_names.q_proj = torch.nn.Linear(4, 4)
    new_names.q_proj.load_state_dict(old_names.query.state_dict())
    fingerprint = checkpoint_module.base_fingerprint(vae, old_names)
    assert fingerprint == checkpoint_module.base_fingerprint(vae, new_names)
    assert checkpoint_module.named_base_fingerprint(vae, old_names) != \
        checkpoint_module.named_base_fingerprint(vae, new_names)  # what older checkpoints recorded
    with torch.no_grad():
        new_names.q_proj.bias[0] += 1e-3
    assert checkpoint_module.base_fingerprint(vae, new_names) != fingerprint


def test_older_checkpoint_fingerprint_is_still_checked(saved: Path, base_model: SDFSMISNet, tmp_path: Path,
                                                       tiny_base: tuple[Path, Path]) -> None:
    from safetensors import safe_open

    with safe_open(saved, framework="pt") as handle:
        metadata = handle.metadata()
    named = checkpoint_module.named_base_fingerprint(base_model.vae, base_model.dino)
    for fingerprint, warns in ((named, False), ("0" * 64, True)):
        older = tmp_path / f"older-{warns}.safetensors"
        save_file(load_file(saved), older, metadata=metadata | {"base_model": json.dumps({"fingerprint": fingerprint})})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            load_checkpoint(older, *tiny_base)
        assert any("other VAE/DINOv2 weights" in str(w.message) for w in caught) == warns


def test_sd2_folder_is_named(tmp_path: Path, tiny_base: tuple[Path, Path]) -> None:
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps(
        {"cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20]}))
    with pytest.raises(WeightsError, match="Stable Diffusion 2.x"):
        load_base_model(tmp_path, tiny_base[1])


def test_sd2_single_file_is_named(tmp_path: Path, tiny_base: tuple[Path, Path]) -> None:
    single = tmp_path / "v2-1_768-ema-pruned.safetensors"
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    save_file({key: torch.zeros(320, 1024)}, single)
    with pytest.raises(WeightsError, match="Stable Diffusion 2.x"):
        load_base_model(single, tiny_base[1])


def test_single_file_that_is_not_stable_diffusion_is_named(tmp_path: Path, tiny_base: tuple[Path, Path]) -> None:
    single = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(3)}, single)
    with pytest.raises(WeightsError, match="not an original Stable Diffusion checkpoint"):
        load_base_model(single, tiny_base[1])


class _Payload:
    """Any class: ``weights_only`` loading refuses to unpickle it."""


def test_pickle_with_objects_is_never_unpickled(tmp_path: Path, tiny_base: tuple[Path, Path]) -> None:
    unsafe = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}, "callback": _Payload()}, unsafe)
    with pytest.raises(WeightsError, match="arbitrary code"):
        load_base_model(unsafe, tiny_base[1])


def test_missing_base_model_says_which_files_to_place(tmp_path: Path, tiny_base: tuple[Path, Path]) -> None:
    with pytest.raises(WeightsError, match="v1-5-pruned-emaonly.safetensors") as error:
        load_base_model(tmp_path / "nowhere", tiny_base[1])
    assert "vae/diffusion_pytorch_model.safetensors" in str(error.value)


def test_failed_save_leaves_no_file(base_model: SDFSMISNet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_args, **_kwargs) -> None:  # noqa: ANN002, ANN003
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module, "save_file", fail)
    with pytest.raises(OSError):
        save_checkpoint(base_model, tmp_path / "model.safetensors")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(WeightsError, match="safetensors"):
        save_checkpoint(base_model, tmp_path / "model.pt")


def test_released_checkpoint_imports_with_the_documented_mapping(base_model: SDFSMISNet, tmp_path: Path,
                                                                 tiny_base: tuple[Path, Path]) -> None:
    unet = {k: v.clone() for k, v in base_model.unet.state_dict().items()}
    unet["conv_in.weight"], unet["conv_in.bias"] = base_model.query_stem.weight, base_model.query_stem.bias
    unet["conv_in_ref.weight"] = base_model.support_stem.weight
    unet["conv_in_ref.bias"] = base_model.support_stem.bias
    (tmp_path / "released" / "unet").mkdir(parents=True)
    (tmp_path / "released" / "image_projector").mkdir()
    save_file({k: v.contiguous() for k, v in unet.items()},
              tmp_path / "released" / "unet" / "diffusion_pytorch_model.safetensors")
    save_file(dict(base_model.condition_mlp.state_dict()),
              tmp_path / "released" / "image_projector" / "diffusion_pytorch_model.safetensors")
    imported = load_released_checkpoint(tmp_path / "released", *tiny_base)
    assert imported.config.dino_mask_alignment == "full" and imported.config.injection == "kv-bank"
    original, restored = _trainable_state(base_model), _trainable_state(imported)
    assert all(torch.equal(original[k], restored[k]) for k in original)
    code = cli_main(["import-released", str(tmp_path / "released"), "--base-model", str(tiny_base[0]),
                     "--dino", str(tiny_base[1]), "--out", str(tmp_path / "imported.safetensors")])
    assert code == 0 and (tmp_path / "imported.safetensors").is_file()


def test_cli_reports_bad_checkpoint_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a tensor file")
    assert cli_main(["inspect", str(bad)]) == 2
    assert "bad.safetensors" in capsys.readouterr().err


def test_model_paths_are_checked_before_loading(tiny_base: tuple[Path, Path], tmp_path: Path) -> None:
    sd, dino = tiny_base
    check = layout_problem
    assert check("base_model", sd) == check("dino", dino) == check("checkpoint", bundled_model().checkpoint) == ""
    assert "unet/config.json, vae/config.json" in check("base_model", tmp_path)
    assert "does not exist" in check("checkpoint", tmp_path / "missing.safetensors")
    (tmp_path / "notes.txt").write_text("x")
    assert "not an SD-FSMIS checkpoint" in check("checkpoint", tmp_path / "notes.txt")
    assert "single file" in check("base_model", tmp_path) and check("base_model", bundled_model().checkpoint) == ""
    with pytest.raises(InputError, match="not a DINOv2 folder"):
        chosen_model(bundled_model().checkpoint, sd, sd)


@pytest.mark.parametrize("suffix", WEIGHT_SUFFIXES)
def test_every_weight_suffix_a_path_check_accepts_is_read(suffix: str, tmp_path: Path) -> None:
    """The panel and chosen_model accept a file by its suffix before torch is loaded; the loader must read it."""
    from safetensors.torch import save_file

    path = tmp_path / f"weights{suffix}"
    tensors = {"w": torch.arange(3.0)}
    save_file(tensors, path) if suffix == ".safetensors" else torch.save(tensors, path)
    assert layout_problem("checkpoint", path) == ""
    assert torch.equal(read_tensors(path)["w"], tensors["w"])
