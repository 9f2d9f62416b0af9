"""The one way to load a model for prediction: the command line, the evaluation, the benchmarks and the Slicer
worker all call :func:`load_model`.

The path a checkpoint takes: :func:`~SDFSMISLib.weights.model_files.chosen_model` (which files) ->
:func:`load_model` (device and precision, :mod:`SDFSMISLib.devices`) ->
:func:`~SDFSMISLib.weights.checkpoint.load_checkpoint` (base model from
:mod:`~SDFSMISLib.weights.base_model`, then the trained tensors) -> the network in the device's fastest layout.
"""

from __future__ import annotations

from ..devices import inference_memory_format, resolve_device, resolve_dtype
from ..model.network import SDFSMISNet
from .checkpoint import load_checkpoint
from .model_files import ModelFiles, bundled_model


def load_model(files: ModelFiles | None = None, device: str = "auto", dtype: str = "auto") -> SDFSMISNet:
    """The network on ``device`` in ``dtype`` (``"auto"``: see :mod:`SDFSMISLib.devices`), in evaluation mode and
    the device's fastest memory layout; the bundled model by default."""
    files = files or bundled_model()
    target = resolve_device(device)
    model = load_checkpoint(files.checkpoint, files.base_model, files.dino, dtype=resolve_dtype(dtype, target))
    return model.to(target, memory_format=inference_memory_format(target)).eval()
