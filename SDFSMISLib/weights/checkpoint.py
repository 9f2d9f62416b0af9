"""SD-FSMIS checkpoints: one ``.safetensors`` file holding only what training changes.

Tensors are prefixed by module: ``unet.*`` (the whole UNet body, which training updates),
``query_stem.*`` and ``support_stem.*`` (the two 8-channel input convs), ``condition_mlp.*``
(the VTCT MLP) and, for the ``cross-attn`` variant, the added attention modules inside
``unet.*``. The frozen VAE and DINOv2 come from the base model files. The safetensors header
carries JSON metadata: the full architecture and options, the base model's identity, a
training summary and the package version.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import Dinov2Model

from .. import __version__
from ..errors import WeightsError
from ..io.atomic import atomic_output
from ..model.config import SDFSMISConfig
from ..model.network import SDFSMISNet
from .base_model import dinov2_config, load_dinov2, load_vae, stable_diffusion_configs
from .files import load_strict, read_tensors

FORMAT = "sdfsmis-checkpoint"
FORMAT_VERSION = 1
#: Options a user may change at inference without retraining (ablations, the paper's t=999).
INFERENCE_OPTIONS = ("timestep", "query_enhancement", "vtct", "qe_threshold", "qe_topk_fraction",
                     "dino_mask_alignment")


def _float32_bytes(tensor: torch.Tensor) -> bytes:
    """The tensor's values as float32 bytes: what a fingerprint hashes, whatever the tensor's type and device."""
    return tensor.detach().float().cpu().contiguous().numpy().tobytes()


def base_fingerprint(vae: AutoencoderKL, dino: Dinov2Model) -> str:
    """SHA-256 identifying the frozen VAE and DINOv2 by their weights' values (float32) alone.

    Each tensor is hashed with its shape and the sorted digests are hashed together, so parameter names and
    their order do not matter: transformers renamed DINOv2's attention weights between 5.17 and 5.23
    (``attention.attention.query`` became ``attention.q_proj``), and the fingerprint of names and values
    written before (:func:`named_base_fingerprint`) made every checkpoint warn of a foreign base model under
    the other version, the same weights notwithstanding. The price: two tensors of the same shape swapped
    give the same fingerprint, which a different base model (other weight files) never does by chance.
    """
    digests = sorted(hashlib.sha256(str(tuple(tensor.shape)).encode() + _float32_bytes(tensor)).hexdigest()
                     for module in (vae, dino) for tensor in module.state_dict().values())
    return hashlib.sha256("".join(digests).encode()).hexdigest()


def named_base_fingerprint(vae: AutoencoderKL, dino: Dinov2Model) -> str:
    """The fingerprint older checkpoints recorded (key ``fingerprint``): SHA-256 of names and values in order.

    Still checked for those checkpoints, though it depends on the installed transformers' parameter names.
    """
    digest = hashlib.sha256()
    for module in (vae, dino):
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(_float32_bytes(tensor))
    return digest.hexdigest()


def base_matches(recorded: dict[str, Any], vae: AutoencoderKL, dino: Dinov2Model) -> bool:
    """Whether ``vae`` and ``dino`` are the base a checkpoint recorded (``True`` when it recorded none)."""
    if recorded.get("weights_fingerprint"):
        return recorded["weights_fingerprint"] == base_fingerprint(vae, dino)
    if recorded.get("fingerprint"):
        return recorded["fingerprint"] == named_base_fingerprint(vae, dino)
    return True


def save_checkpoint(model: SDFSMISNet, path: Path | str, dtype: torch.dtype | None = None,
                    training: dict[str, Any] | None = None, base_source: str | None = None) -> Path:
    """Write the trainable weights and metadata atomically (a temporary file renamed into place).

    Args:
        dtype: store floating tensors in this dtype (e.g. ``torch.float16`` halves the file).
        training: summary to record (steps, data, loss, ...).
        base_source: where the base weights came from, recorded for the user.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise WeightsError(f"{path}: SD-FSMIS checkpoints are .safetensors files; rename the output")
    tensors = {}
    for prefix, module in model.trainable_modules().items():
        for name, tensor in module.state_dict().items():
            tensor = tensor.detach().cpu()
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            tensors[f"{prefix}.{name}"] = tensor.contiguous()
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": model.config.to_json(),
        "base_model": json.dumps({"weights_fingerprint": base_fingerprint(model.vae, model.dino),
                                  "source": base_source}),
        "training": json.dumps(training or {}),
        "package_version": __version__,
    }
    with atomic_output(path) as temporary:
        save_file(tensors, temporary, metadata=metadata)
    return path


def read_checkpoint_metadata(path: Path | str) -> dict[str, Any]:
    """The decoded metadata of an SD-FSMIS checkpoint (no tensors are read)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    try:
        with safe_open(path, framework="pt") as handle:
            raw = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"{path} is not a readable safetensors file ({error}); it is probably truncated "
                           "or corrupt: copy it again") from error
    if raw.get("format") != FORMAT:
        raise WeightsError(f"{path} is a safetensors file but not an SD-FSMIS checkpoint (no '{FORMAT}' "
                           "metadata). A checkpoint of the authors' released code is a folder: import it "
                           "with `sdfsmis import-released`")
    if int(raw["format_version"]) > FORMAT_VERSION:
        raise WeightsError(f"{path} uses checkpoint format {raw['format_version']}, newer than this "
                           f"SDFSMIS ({__version__}) reads: update SDFSMIS")
    return {"config": json.loads(raw["config"]), "base_model": json.loads(raw["base_model"]),
            "training": json.loads(raw["training"]), "package_version": raw["package_version"]}


def _resolve_config(stored: SDFSMISConfig, overrides: dict[str, Any], source: Path) -> SDFSMISConfig:
    changed = {k: v for k, v in overrides.items() if v is not None and getattr(stored, k) != v}
    fixed = sorted(set(changed) - set(INFERENCE_OPTIONS))
    if fixed:
        asked = ", ".join(f"{k}={changed[k]!r} (checkpoint: {getattr(stored, k)!r})" for k in fixed)
        raise WeightsError(f"{source} was trained with a different architecture than asked for: {asked}. "
                           "Drop these options, or use a checkpoint trained with them")
    return stored.replace(**changed)


def _check_base(config: SDFSMISConfig, base_model: Path | str, dino: Path | str, source: Path) -> None:
    vae_config = stable_diffusion_configs(base_model)[1]
    if list(vae_config["block_out_channels"]) != list(config.vae["block_out_channels"]):
        raise WeightsError(f"{source} was trained on a base model whose VAE has widths "
                           f"{config.vae['block_out_channels']}, but {base_model} has "
                           f"{vae_config['block_out_channels']}: give the base model it was trained on")
    hidden = dinov2_config(dino)["hidden_size"]
    if hidden != config.dino["hidden_size"]:
        raise WeightsError(f"{source} was trained with a DINOv2 of {config.dino['hidden_size']}-d tokens, "
                           f"but {dino} holds {hidden}-d tokens: give the matching DINOv2 folder "
                           "(384 = dinov2-small, 768 = dinov2-base)")


def assemble_network(config: SDFSMISConfig, tensors: dict[str, torch.Tensor], base_model: Path | str,
                     dino: Path | str, source: Path, dtype: torch.dtype = torch.float32) -> SDFSMISNet:
    """Network from trained tensors (prefixed as in a checkpoint) plus the base VAE and DINOv2.

    The UNet is built on the meta device and takes the checkpoint's tensors directly, so the
    860M-parameter body is never randomly initialised only to be overwritten. ``tensors`` is emptied.
    """
    _check_base(config, base_model, dino, source)
    vae = load_vae(base_model, config.vae)
    encoder = load_dinov2(dino)
    if dtype != torch.float32:
        vae, encoder = vae.to(dtype), encoder.to(dtype)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config.unet)
    model = SDFSMISNet(config, unet, vae, encoder)
    fix = ("The checkpoint was made for another architecture or option set; use the base model, DINOv2 "
           "and options it was trained with (see `sdfsmis inspect`)")
    known = set(model.trainable_modules())
    stray = sorted({k.split(".", 1)[0] for k in tensors} - known)
    if stray:
        raise WeightsError(f"{source} holds tensors of unknown parts {stray}. {fix}")
    for prefix, module in model.trainable_modules().items():
        # Fresh copies: tensors read from the file sit at its byte offsets, and CPU kernels round differently on
        # unaligned memory, so the loaded model would not reproduce the saved one bit for bit. Each file tensor is
        # dropped once copied, so the copies add one tensor, not one model, to the peak.
        names = [k for k in tensors if k.startswith(prefix + ".")]
        part = {k[len(prefix) + 1:]: tensors.pop(k).to(dtype, copy=True) for k in names}
        load_strict(module, part, source, f"the SD-FSMIS {prefix} of this architecture", fix, assign=True)
    return model


def load_checkpoint(path: Path | str, base_model: Path | str, dino: Path | str,
                    dtype: torch.dtype = torch.float32, **options: Any) -> SDFSMISNet:
    """Load an SD-FSMIS checkpoint onto its base model.

    Args:
        path: the checkpoint ``.safetensors`` written by :func:`save_checkpoint`.
        base_model: SD-1.5 folder or single file it was trained on (only its VAE is used).
        dino: the DINOv2 folder it was trained with.
        dtype: dtype of the returned network.
        **options: inference options to change (see :data:`INFERENCE_OPTIONS`); architecture
            options must equal the stored ones or a :class:`WeightsError` says so.
    """
    path = Path(path)
    metadata = read_checkpoint_metadata(path)
    config = _resolve_config(SDFSMISConfig.from_dict(metadata["config"]), options, path)
    # Assembled in float32 and cast after the check: the fingerprint is of the float32 base weights, which a
    # half-precision copy no longer reproduces (every float16/bfloat16 load would warn).
    model = assemble_network(config, read_tensors(path), base_model, dino, path)
    if not base_matches(metadata["base_model"], model.vae, model.dino):
        warnings.warn(f"{path} was trained on other VAE/DINOv2 weights than {base_model} and {dino} "
                      f"(recorded source: {metadata['base_model'].get('source')}); results may degrade. "
                      "Use the base model files it was trained with", stacklevel=2)
    return model.to(dtype)
