"""Where the network runs: device and precision choice, a description for the user, batch sizes.

Propagation must work unchanged on a laptop CPU, an Apple GPU and a CUDA workstation, so the caller says
``"auto"`` and gets the fastest device present (CUDA, then MPS, then the CPU), half precision where the
hardware computes it natively, and a first batch size that fits the free memory. The batch size is only a
first guess: :func:`is_out_of_memory` lets the prediction loop halve it and retry
(:func:`SDFSMISLib.inference.slice_prediction.run_in_batches`), so a wrong guess costs time, never the result.

No torch at import: the command line and the Slicer panel offer :data:`DEVICES` and :data:`DTYPES` before
PyTorch is loaded (or, in Slicer, installed); each function imports it when called.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cuda", "mps", "cpu")
#: The floating types the network runs and stores weights in; ``"auto"`` adds the device's choice.
PRECISIONS = ("float32", "float16", "bfloat16")
DTYPES = ("auto", *PRECISIONS)
#: Most query slices per batch: beyond this a GPU is saturated and a failure would cost more work.
MAX_BATCH = 32
CPU_BATCH = 4
MPS_BATCH = 8
#: Conservative peak memory of one query slice at 256 px in half precision (UNet + VAE decoder activations
#: of the SD-1.5 network); it scales with the pixel count and the element size.
BYTES_PER_SLICE_256 = 512 * 2**20
#: Share of the free GPU memory the first batch may plan to use (the rest absorbs fragmentation).
MEMORY_SHARE = 0.5


def _mps_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or ``"cpu"`` as a usable ``torch.device``.

    ``"auto"`` picks CUDA, then MPS, then the CPU. Asking for a device that is absent is an
    :class:`~SDFSMISLib.errors.InputError` rather than a late crash inside torch.
    """
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise InputError(f"unknown device {name!r}; use one of {', '.join(DEVICES)} (or cuda:N)") from error
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index is not None and device.index >= count):
            raise InputError(f"device {name!r} is not available here ({count} CUDA GPU(s) found); "
                             "use --device auto or cpu")
    elif device.type == "mps" and not _mps_available():
        raise InputError("device 'mps' (Apple GPU) is not available here; use --device auto or cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"device {name!r} is not supported; use one of {', '.join(DEVICES)}")
    return device


def torch_dtype(name: str) -> torch.dtype:
    """``"float16"`` -> ``torch.float16``: one of :data:`PRECISIONS` as a torch type."""
    import torch

    if name not in PRECISIONS:
        raise InputError(f"unknown precision {name!r}; use one of {', '.join(PRECISIONS)}")
    return getattr(torch, name)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``"float16"``: the spelling of :data:`DTYPES`, for reports and options."""
    return str(dtype).removeprefix("torch.")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The network's floating type: ``"auto"`` is float16 on a GPU and float32 on the CPU.

    Half precision halves memory and is faster on GPUs: on an H100, float16 took a 100-slice volume in
    0.75 s at 5.9 GiB against 1.14 s at 11.3 GiB for float32, and moved the bundled trained model's masks
    by Dice 0.9865-0.9998 (``benchmarks/results/precision-agreement-cuda.md``); ``"float32"`` opts out.
    On the CPU float32 stays the default even where the processor computes bfloat16 natively (AVX-512 BF16
    / AMX, 2-4x faster at full size): measured on the trained demo model, bfloat16 moves the masks (Dice
    with the float32 masks down to about 0.9 on small organs, ``benchmarks/precision_agreement.py``), and
    a user must get the same masks on every CPU. ``"bfloat16"`` opts in.
    """
    import torch

    if name not in DTYPES:
        raise InputError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    if name == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if name == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError(f"{torch.cuda.get_device_name(device)} has no bfloat16 support; use float16 or float32")
    return torch_dtype(name)


def inference_memory_format(device: torch.device) -> torch.memory_format:
    """The weight layout prediction runs fastest in on ``device``: ``model.to(memory_format=...)`` once after loading.

    channels_last (NHWC) on the CPU, where oneDNN convolutions then skip a layout reorder on every call: in a
    per-stage measurement at full size on 2 cores the VAE encoder and decoder ran 10-15 % faster and the UNet
    about the same (the whole-volume row of ``benchmarks/results/propagate-cpu.md`` ran under other load and
    is not conclusive). Elsewhere the default layout: on an H100 channels_last was slower, 0.94x for the
    naive path (``benchmarks/results/propagate-cuda.md``) and 0.82 against 0.73 s for a 100-slice volume of
    the float16 path at batch 32 (``benchmarks/gpu_settings.py``), since GroupNorm copies NHWC tensors back.
    Not for training: a layout change under a running optimiser or DDP is not worth its risk.
    """
    import torch

    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def describe_device(device: torch.device) -> str:
    """One line for the user (the Slicer panel, the command line): which hardware, how much memory is free."""
    import torch

    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return (f"{torch.cuda.get_device_name(device)} (CUDA, {free / 2**30:.1f} GiB free of "
                f"{total / 2**30:.1f} GiB)")
    if device.type == "mps":
        return "Apple GPU (MPS)"
    return f"CPU ({torch.get_num_threads()} threads of {os.cpu_count()} cores)"


def auto_batch_size(device: torch.device, image_size: int, dtype: torch.dtype) -> int:
    """A first number of query slices per network call (see the module docstring)."""
    import torch

    if device.type == "cpu":
        return CPU_BATCH
    if device.type == "mps":
        return MPS_BATCH
    free, _total = torch.cuda.mem_get_info(device)
    per_slice = BYTES_PER_SLICE_256 * (image_size / 256) ** 2 * torch.finfo(dtype).bits / 16
    return int(max(1, min(MAX_BATCH, MEMORY_SHARE * free // per_slice)))


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a GPU running out of memory (CUDA's own type, or MPS's RuntimeError)."""
    import torch

    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def release_cached_memory(device: torch.device) -> None:
    """Give the allocator's cached blocks back after an out-of-memory error, before a smaller retry."""
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
