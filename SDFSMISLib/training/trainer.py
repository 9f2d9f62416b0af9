"""Train SD-FSMIS on episodes with Hugging Face Accelerate: one process, one GPU, or many.

The released recipe: AdamW (UNet and stems 1e-5, condition MLP 5e-5, weight decay 1e-2), linear
decay to zero without warm-up, gradient clipping at 1.0, gradient accumulation 4, seed 42, 15k
optimiser steps; VAE and DINOv2 frozen. Run several GPUs or nodes with
``accelerate launch -m SDFSMISLib.cli.main train ...``; one process needs no launcher.

Resuming is exact: Accelerate stores model, optimiser, scheduler and every RNG state, and
episode ``i`` is a pure function of ``(seed, i)`` (:class:`~SDFSMISLib.data.episodes.EpisodeDataset`),
so the data stream continues where it stopped. Everything Accelerate writes loads with
``weights_only=True``; the step counter is plain JSON.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..devices import torch_dtype
from ..errors import InputError
from ..model.network import SDFSMISNet
from ..progress import Cancelled, ProgressCallback, report
from ..weights.checkpoint import save_checkpoint

STATE_FOLDER = "state"
PROGRESS_FILE = "progress.json"
#: What ``PROGRESS_FILE`` holds at the start of a run (and fills in for states saved before it had more than the step).
_FRESH_PROGRESS = {"step": 0, "seconds": 0.0, "peak_rss_mib": 0.0}
FINAL_CHECKPOINT = "model.safetensors"
LOG_FILE = "log.csv"

#: ``model -> {organ name: Dice}``, run on the main process every ``validate_every`` steps.
Validator = Callable[[SDFSMISNet], dict[str, float]]


@dataclass(frozen=True)
class TrainingOptions:
    """Hyper-parameters; the defaults are the released SD-FSMIS recipe."""

    steps: int = 15_000
    batch_size: int = 1
    gradient_accumulation: int = 4
    unet_lr: float = 1e-5
    mlp_lr: float = 5e-5
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    seed: int = 42
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    save_every: int = 1000
    validate_every: int = 500
    log_every: int = 10
    workers: int = 0
    log_with: tuple[str, ...] = ("csv",)
    checkpoint_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "gradient_accumulation", "save_every", "validate_every", "log_every"):
            if getattr(self, name) < 1:
                raise InputError(f"training option {name} must be at least 1, got {getattr(self, name)}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise InputError(f"mixed precision must be 'no', 'fp16' or 'bf16', got {self.mixed_precision!r}")
        unknown = set(self.log_with) - {"csv", "tensorboard"}
        if unknown:
            raise InputError(f"unknown loggers {sorted(unknown)}: use csv and/or tensorboard")

    @property
    def episodes_per_process(self) -> int:
        """Micro-batches x batch size one process consumes over the whole run."""
        return self.steps * self.gradient_accumulation * self.batch_size


class EpisodeLoss(nn.Module):
    """The training objective as a ``forward``, so DDP (and Accelerate) can wrap it."""

    def __init__(self, network: SDFSMISNet) -> None:
        super().__init__()
        self.network = network

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.network.episode_loss(batch["support_image"], batch["support_mask"],
                                         batch["query_image"], batch["query_mask"])


def parameter_groups(network: SDFSMISNet, options: TrainingOptions) -> list[dict[str, Any]]:
    """UNet and both stems at ``unet_lr``, the VTCT MLP at ``mlp_lr`` (released recipe)."""
    trainable = network.trainable_modules()
    body = [p for name, module in trainable.items() if name != "condition_mlp" for p in module.parameters()]
    return [{"params": body, "lr": options.unet_lr},
            {"params": list(trainable["condition_mlp"].parameters()), "lr": options.mlp_lr}]


def fused_adamw(device: torch.device) -> bool | None:
    """The ``fused`` argument of training's AdamW on ``device``: ``True`` on CUDA (see :func:`build_optimizer`),
    else ``None``, PyTorch's default (``False`` would force the slow per-parameter loop)."""
    return True if device.type == "cuda" else None


def build_optimizer(network: SDFSMISNet, options: TrainingOptions, device: torch.device) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups`, fused into one kernel per step on CUDA.

    PyTorch's default (``foreach``) AdamW builds temporaries the size of all trainable parameters during
    the update; the fused kernel needs none. Measured for one training step of the full model (bf16,
    gradient checkpointing, batch 1, H100, ``benchmarks/training_memory.py``): CUDA peak 16.67 GiB with
    ``foreach`` (``benchmarks/results/training-memory-cuda-foreach.json``), 13.54 GiB fused
    (``training-memory-cuda.json``), the difference being the 0.86 B UNet parameters in float32 once more.
    Elsewhere PyTorch's default stays.
    """
    return torch.optim.AdamW(parameter_groups(network, options), weight_decay=options.weight_decay,
                             fused=fused_adamw(device))


def keep_fused_choice(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Re-apply :func:`fused_adamw` after a resume.

    Loading an optimiser's state takes each parameter group's settings from the file, so a run saved by an
    unfused AdamW would resume unfused (and with the larger peak). Loading the state again with the setting
    corrected also moves AdamW's step counters where the fused kernel needs them.
    """
    state = optimizer.state_dict()
    for group in state["param_groups"]:
        group["fused"] = fused_adamw(device)
    optimizer.load_state_dict(state)


class CsvLog:
    """Append-only CSV of the logged scalars; continues the same file on resume."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path, self.columns = path, columns
        if not path.exists():
            with path.open("w", newline="") as handle:
                csv.writer(handle).writerow(columns)

    def write(self, values: dict[str, float]) -> None:
        with self.path.open("a", newline="") as handle:
            csv.writer(handle).writerow([values.get(column, "") for column in self.columns])


def _save_state(accelerator: Accelerator, output: Path, progress: dict[str, float]) -> None:
    """Replace the resumable state folder only once the new one is complete."""
    partial = output / f"{STATE_FOLDER}.part"
    accelerator.save_state(str(partial))
    if accelerator.is_main_process:
        (partial / PROGRESS_FILE).write_text(json.dumps(progress))
        shutil.rmtree(output / STATE_FOLDER, ignore_errors=True)
        partial.rename(output / STATE_FOLDER)
    accelerator.wait_for_everyone()


def _resume_progress(output: Path) -> dict[str, float]:
    """The saved step, and the training seconds and peak memory of the processes before this one."""
    progress = output / STATE_FOLDER / PROGRESS_FILE
    if not progress.exists():
        raise InputError(f"nothing to resume in {output}: no {STATE_FOLDER}/{PROGRESS_FILE}. "
                         "Train without --resume to start, or point --out at a run that saved state")
    return _FRESH_PROGRESS | json.loads(progress.read_text())


def train(network: SDFSMISNet, episodes: Dataset, output: Path | str, options: TrainingOptions = TrainingOptions(),
          validator: Validator | None = None, resume: bool = False, progress: ProgressCallback | None = None,
          summary: dict[str, Any] | None = None) -> Path:
    """Train ``network`` in place on ``episodes`` and write ``output/model.safetensors``.

    ``episodes`` must hold at least ``options.episodes_per_process x processes`` items (they are
    consumed in order; randomness lives in the dataset). State for exact resumption is saved to
    ``output/state`` every ``save_every`` steps, at the end, and when interrupted (Ctrl-C).

    Returns the path of the final checkpoint.
    """
    output = Path(output)
    if output.exists() and (output / STATE_FOLDER).exists() and not resume:
        raise InputError(f"{output} already holds a training run: pass --resume to continue it, "
                         "or choose another --out")
    output.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(gradient_accumulation_steps=options.gradient_accumulation,
                              mixed_precision=options.mixed_precision,
                              log_with="tensorboard" if "tensorboard" in options.log_with else None,
                              project_config=ProjectConfiguration(project_dir=str(output), logging_dir=str(output)))
    set_seed(options.seed)
    needed = options.episodes_per_process * accelerator.num_processes
    if len(episodes) < needed:
        raise InputError(f"{len(episodes)} episodes for {needed} needed ({options.steps} steps x "
                         f"{options.gradient_accumulation} accumulation x {options.batch_size} batch x "
                         f"{accelerator.num_processes} processes): build the dataset with that length")
    if options.gradient_checkpointing:
        network.unet.enable_gradient_checkpointing()
    network.train()
    objective = EpisodeLoss(network)
    optimizer = build_optimizer(network, options, accelerator.device)
    # Accelerate steps a prepared scheduler once per process at every optimiser step.
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0,
                              num_training_steps=options.steps * accelerator.num_processes)
    # A private generator: iterating a DataLoader draws a seed from its generator, and drawing it from the
    # global RNG after a resume would shift every later random number.
    loader = DataLoader(episodes, batch_size=options.batch_size, shuffle=False, num_workers=options.workers,
                        drop_last=True, generator=torch.Generator().manual_seed(options.seed))
    objective, optimizer, loader, scheduler = accelerator.prepare(objective, optimizer, loader, scheduler)
    earlier = _FRESH_PROGRESS
    if resume:
        earlier = _resume_progress(output)
        accelerator.load_state(str(output / STATE_FOLDER))
        keep_fused_choice(optimizer, accelerator.device)
    step = int(earlier["step"])
    if "tensorboard" in options.log_with:
        accelerator.init_trackers("sdfsmis", config={k: v for k, v in asdict(options).items()
                                                     if isinstance(v, (int, float, str, bool))})
    log = CsvLog(output / LOG_FILE, ["step", "loss", "lr_unet", "lr_mlp", "seconds"]) \
        if accelerator.is_main_process else None
    batches = accelerator.skip_first_batches(loader, step * options.gradient_accumulation)
    if not accelerator.is_main_process:
        progress = None
    # A resumed run's time and peak memory count every process of the run, not only this one.
    started, running = time.perf_counter() - earlier["seconds"], []

    def progress_so_far() -> dict[str, float]:
        return {"step": step, "seconds": round(time.perf_counter() - started, 1),
                "peak_rss_mib": round(max(earlier["peak_rss_mib"], peak_memory_mib()), 1)}

    try:
        for batch in batches:
            with accelerator.accumulate(objective):
                loss = objective(batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(objective.parameters(), options.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            running.append(loss.detach().float())
            if not accelerator.sync_gradients:
                continue
            step += 1
            report(progress, step, options.steps)
            if step % options.log_every == 0 or step == options.steps:
                mean_loss = accelerator.gather(torch.stack(running).mean()[None]).mean().item()
                running.clear()
                values = {"step": step, "loss": mean_loss, "lr_unet": scheduler.get_last_lr()[0],
                          "lr_mlp": scheduler.get_last_lr()[1], "seconds": time.perf_counter() - started}
                accelerator.log({"loss": mean_loss, "lr_unet": values["lr_unet"]}, step=step)
                if log:
                    log.write(values)
            if validator and (step % options.validate_every == 0 or step == options.steps):
                _validate(accelerator, objective, validator, step, output)
            if step % options.save_every == 0 and step < options.steps:
                _save_state(accelerator, output, progress_so_far())
            if step >= options.steps:
                break
    except (KeyboardInterrupt, Cancelled):
        _save_state(accelerator, output, progress_so_far())
        raise
    _save_state(accelerator, output, progress_so_far())
    accelerator.end_training()
    final = output / FINAL_CHECKPOINT
    if accelerator.is_main_process:
        finished = progress_so_far()
        record = {"steps": step, "options": {k: v for k, v in asdict(options).items() if k != "extra"},
                  "seconds": finished["seconds"], "peak_rss_mib": finished["peak_rss_mib"],
                  **options.extra, **(summary or {})}
        if torch.cuda.is_available():
            record["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        save_checkpoint(accelerator.unwrap_model(objective).network, final,
                        dtype=torch_dtype(options.checkpoint_dtype), training=record)
    accelerator.wait_for_everyone()
    return final


def peak_memory_mib() -> float:
    """Peak resident memory of this process so far, on every platform a Slicer user has."""
    if sys.platform == "win32":
        import psutil

        return psutil.Process().memory_info().peak_wset / 2**20
    import resource  # Unix only

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _validate(accelerator: Accelerator, objective: nn.Module, validator: Validator, step: int, output: Path) -> None:
    """Validation Dice on the main process, logged to the trackers and ``validation.csv``."""
    if accelerator.is_main_process:
        network = accelerator.unwrap_model(objective).network
        network.eval()
        scores = validator(network)
        network.train()
        mean = sum(scores.values()) / max(len(scores), 1)
        accelerator.log({f"dice/{name}": value for name, value in scores.items()} | {"dice/mean": mean}, step=step)
        CsvLog(output / "validation.csv", ["step", *scores, "mean"]).write({"step": step, **scores, "mean": mean})
        tqdm.write(f"step {step}: validation Dice " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
                   + f", mean {mean:.3f}")
    accelerator.wait_for_everyone()

