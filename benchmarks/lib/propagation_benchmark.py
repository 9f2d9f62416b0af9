"""Propagation speed at full scale: the released code's computation against ours, each optimisation alone.

**Workload.** One organ of one query volume as propagation sees it: ``N`` query slices at 256 x 256 cut
into three equal chunks, chunk ``i`` using support slice ``i`` of another patient (the evaluation
protocol, :mod:`SDFSMISLib.evaluation.protocol`). The slices come from synthetic phantoms
(:mod:`SDFSMISLib.data.phantom`) so the support masks are organ-shaped; the network is the full SD-1.5 +
DINOv2 architecture with random weights, since speed does not depend on the weights.

**Paths.** A path is a set of :class:`Switches` applied to one network object. The *naive* path computes
as the released code does for one query slice at a time: the support's VAE latents, DINOv2 condition
and UNet support pass again for every query slice, batch 1, float32, and the classic ``baddbmm``
attention of diffusers' ``AttnProcessor``. (The released evaluation script runs the support side once
per chunk of slices, which is the *support reuse* row.) The optimised path is the production code,
:func:`SDFSMISLib.inference.slice_prediction.predict_foreground_maps`, with the switches the caller gives
(:data:`OPTIMISED` by default). Each ablation row is the naive path with one switch changed, so every
optimisation is measured on its own; all paths share the one network, so their masks can be compared.

**Agreement.** Random weights make the decoded maps noise-like, so two comparisons with the naive path
are reported: the Dice of the masks made by the released rule (> 0.25 x the chunk maximum, largest
component per slice), trivially 1 when those masks are degenerate (their foreground fraction is reported
to show it), and the Dice of the maps cut at the median of the naive map, which halves every volume and
so reacts to any numerical difference.

**Measures.** Whole-volume seconds (support encoding included), seconds per query slice (the whole
volume minus the support encoding, over ``N``), query slices per second (``N`` over the whole volume),
the process's CPU seconds (which other load on a shared machine inflates much less than wall time),
the per-stage split (:func:`lib.profiling.stage_timer`) and peak memory
(:class:`lib.profiling.PeakMemory`). On the CPU, for the ablation block, also the FLOPs each path
computes (PyTorch's ``FlopCounterMode`` in an untimed second run of the same workload, see :func:`run_path`)
and the device's matrix-multiply throughput per type (:func:`lib.profiling.matmul_gflops`): a path's
GFLOP/s against that ceiling shows how much speed is left at the same arithmetic. Each path first runs once on its first
batch (warm-up, which includes compilation with ``compile``; its seconds are reported) and is then timed once.

**Precision only goes down.** Converting weights to a half type and back would round them, so the paths
run float32 ones first and the network is converted once for the rest; every other switch (memory
format, attention kernel, convolution algorithm, threads, compilation) is undone after its path.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from lib.profiling import PeakMemory, environment, matmul_gflops, silent, stage_timer, synchronize
from lib.winograd import set_winograd, winograd_applies
from SDFSMISLib.data.phantom import CHAOS_SPACING, LABEL_IDS, generate_phantom
from SDFSMISLib.devices import auto_batch_size, dtype_name, inference_memory_format, resolve_device, resolve_dtype
from SDFSMISLib.errors import InputError
from SDFSMISLib.evaluation.metrics import dice
from SDFSMISLib.evaluation.protocol import query_chunks, support_slice_indices
from SDFSMISLib.inference.slice_prediction import masks_by_chunk, predict_foreground_maps
from SDFSMISLib.model.config import preset
from SDFSMISLib.model.network import SDFSMISNet
from SDFSMISLib.model.support_injection import AttentionKernel, set_attention_kernel

#: Masks of two paths "agree" from this Dice on (the issue's acceptance level).
AGREEMENT_DICE = 0.999
#: The half type measured on each device when the optimised path itself runs in float32.
HALF_TYPES = {"cpu": "bfloat16", "cuda": "float16", "mps": "float16"}
STAGES = ("vae_encode", "dinov2", "unet_support_pass", "unet_query_pass", "vae_decode")
#: Slices of the support phantom (CHAOS-like spacing); the query slices span the same height whatever their number.
SUPPORT_SLICES = 36
QUERY_EXTENT_MM = SUPPORT_SLICES * CHAOS_SPACING[2]


@dataclass(frozen=True)
class Switches:
    """How a path runs; each field is one optimisation. The defaults are the production path.

    Attributes:
        support_reuse: encode each support once for all the query slices that use it, instead of
            again for every query slice.
        batch_size: query slices per network call; ``None`` sizes it for the device
            (:func:`SDFSMISLib.devices.auto_batch_size`).
        attention: ``sdpa`` (fused) or ``classic`` (``baddbmm`` + softmax, as the released code).
        channels_last: NHWC memory format for every convolution's weights and activations; ``None`` uses the
            device's inference layout (:func:`SDFSMISLib.devices.inference_memory_format`).
        dtype: the network's floating type (:data:`SDFSMISLib.devices.DTYPES`).
        winograd: 3x3 convolutions by Winograd F(4x4, 3x3) (:mod:`lib.winograd`, an experiment outside the
            product: off in the production path; on only where :func:`lib.winograd.winograd_applies`).
        compile: ``torch.compile`` the UNet and both halves of the VAE.
        threads: CPU threads; ``None`` keeps PyTorch's default (one per core).
    """

    support_reuse: bool = True
    batch_size: int | None = None
    attention: AttentionKernel = "sdpa"
    channels_last: bool | None = None
    dtype: str = "auto"
    winograd: bool = False
    compile: bool = False
    threads: int | None = None


NAIVE = Switches(support_reuse=False, batch_size=1, attention="classic", channels_last=False, dtype="float32")
OPTIMISED = Switches()


@dataclass(frozen=True)
class Workload:
    """Propagation's input for one organ: query slices, support slices and masks, and which support each uses."""

    query: np.ndarray  # [N, H, W] in [-1, 1]
    support_images: np.ndarray  # [K, H, W] in [-1, 1]
    support_masks: np.ndarray  # [K, H, W] bool
    assignment: np.ndarray  # [N] index of each query slice's support

    def head(self, count: int) -> "Workload":
        """The first ``count`` query slices, with all the supports (a warm-up of the same shapes)."""
        return replace(self, query=self.query[:count], assignment=self.assignment[:count])


def _signed(volume: np.ndarray) -> np.ndarray:
    """Min-max to [-1, 1], SD-FSMIS's intensity normalisation."""
    low, high = float(volume.min()), float(volume.max())
    return ((volume - low) / max(high - low, 1e-6) * 2 - 1).astype(np.float32)


def phantom_workload(slices: int, shots: int = 3, size: int = 256, seed: int = 0) -> Workload:
    """``slices`` query slices of one phantom patient and the liver on ``shots`` slices of another.

    The query slices span the same body height whatever their number; the supports sit at the protocol's
    positions (1/6, 1/2, 5/6 of the organ for three shots) and the query is cut into ``shots`` chunks.
    """
    if slices < 1 or shots < 1:
        raise InputError(f"need at least one query slice and one shot, got {slices} and {shots}")
    liver = LABEL_IDS["mr"]["liver"]
    support, support_labels = generate_phantom(seed + 1, shape=(SUPPORT_SLICES, size, size))
    chosen = support_slice_indices(support_labels.array, liver, shots)
    query, _ = generate_phantom(seed, shape=(slices, size, size),
                                spacing=(*CHAOS_SPACING[:2], QUERY_EXTENT_MM / slices))
    return Workload(_signed(query.array), _signed(support.array)[chosen], support_labels.array[chosen] == liver,
                    query_chunks(np.arange(slices), shots))


def foreground_maps(model: SDFSMISNet, workload: Workload, support_reuse: bool, batch_size: int) -> np.ndarray:
    """Foreground maps ``[N, H, W]`` of the workload, through the production prediction code.

    Without support reuse every batch of query slices is predicted with its own copies of its supports, so
    each query slice pays for encoding its support (batch 1: the released code's per-slice computation).
    """
    if support_reuse:
        return predict_foreground_maps(model, workload.query, workload.support_images, workload.support_masks,
                                       workload.assignment, batch_size)
    maps = []
    for start in range(0, len(workload.query), batch_size):
        rows = slice(start, start + batch_size)
        chosen = workload.assignment[rows]
        maps.append(predict_foreground_maps(model, workload.query[rows], workload.support_images[chosen],
                                            workload.support_masks[chosen], np.arange(len(chosen)), batch_size))
    return np.concatenate(maps)


def _compile(model: SDFSMISNet) -> list[torch.nn.Module]:
    """Compile the forward of the heavy sub-models in place (an instance attribute, removed to undo)."""
    modules = [model.unet, model.vae.encoder, model.vae.decoder]
    for module in modules:
        module.forward = torch.compile(module.forward)
    return modules


def uses_channels_last(switches: Switches, device: torch.device) -> bool:
    """Whether a path with ``switches`` runs in channels_last on ``device``."""
    if switches.channels_last is None:
        return inference_memory_format(device) == torch.channels_last
    return switches.channels_last


def uses_winograd_switch(switches: Switches, model: SDFSMISNet) -> bool:
    """Whether a path with ``switches`` computes its convolutions with Winograd (in ``model``'s dtype).

    Never under ``torch.compile``: the weight cache's identity checks would break the graph at every
    convolution, and a compiled graph fuses the convolutions its own way.
    """
    if switches.compile:
        return False
    return switches.winograd and winograd_applies(model.device, resolve_dtype(switches.dtype, model.device))


@contextmanager
def switched(model: SDFSMISNet, switches: Switches) -> Iterator[None]:
    """``model`` set up for ``switches`` while the context is open (see "Precision only goes down").

    The network is built in the default (contiguous) layout and left in it afterwards.
    """
    dtype = resolve_dtype(switches.dtype, model.device)
    if dtype != model.dtype:
        if model.dtype != torch.float32:
            raise RuntimeError(f"the network is already {model.dtype}; run the float32 paths first")
        model.to(dtype)
    threads = torch.get_num_threads()
    compiled: list[torch.nn.Module] = []
    try:
        if uses_channels_last(switches, model.device):
            model.to(memory_format=torch.channels_last)
        set_attention_kernel(model.unet, switches.attention)
        set_winograd(model, uses_winograd_switch(switches, model))
        if switches.threads is not None:
            torch.set_num_threads(switches.threads)
        if switches.compile:
            compiled = _compile(model)
        yield
    finally:
        for module in compiled:
            del module.forward
        if compiled:  # a compiled graph assumes its weights' strides: it must not meet the next path's layout
            torch.compiler.reset()
        torch.set_num_threads(threads)
        set_attention_kernel(model.unet, OPTIMISED.attention)
        set_winograd(model, False)
        model.to(memory_format=torch.contiguous_format)


@dataclass
class PathRun:
    """One timed path: what it ran, how long each part took, its memory and its output."""

    block: str
    name: str
    switches: Switches
    slices: int
    batch_size: int
    dtype: str
    channels_last: bool
    winograd: bool
    threads: int
    seconds: float
    cpu_seconds: float  # CPU time of this process over the timed run: less sensitive to other load than wall time
    warmup_seconds: float
    support_seconds: float
    stages: dict[str, float]
    memory: dict[str, float]
    flops: float | None  # counted in a pass of its own (see run_path), else None
    foreground: np.ndarray = field(repr=False)
    masks: np.ndarray = field(repr=False)
    comparison: dict[str, float | bool] = field(default_factory=dict)  # with the naive path of its block

    @property
    def query_seconds_per_slice(self) -> float:
        return (self.seconds - self.support_seconds) / self.slices

    @property
    def slices_per_second(self) -> float:
        return self.slices / self.seconds

    def to_json(self) -> dict[str, Any]:
        return {"block": self.block, "name": self.name, "slices": self.slices, "switches": asdict(self.switches),
                "batch_size": self.batch_size, "dtype": self.dtype, "channels_last": self.channels_last,
                "winograd": self.winograd, "threads": self.threads,
                "seconds": round(self.seconds, 3), "cpu_seconds": round(self.cpu_seconds, 3),
                "seconds_per_slice": round(self.seconds / self.slices, 4),
                "query_seconds_per_slice": round(self.query_seconds_per_slice, 4),
                "slices_per_second": round(self.slices_per_second, 4),
                "support_seconds": round(self.support_seconds, 3), "warmup_seconds": round(self.warmup_seconds, 3),
                "stage_seconds": {stage: round(value, 3) for stage, value in self.stages.items()},
                "gflop_per_slice": None if self.flops is None else round(self.flops / self.slices / 1e9, 1),
                "gflops_per_second": None if self.flops is None else round(self.flops / self.seconds / 1e9, 1),
                **self.memory, **{key: value if isinstance(value, bool) else round(value, 5)
                                  for key, value in self.comparison.items()}}


def counts_flops(device: torch.device, switches: Switches) -> bool:
    """Whether a path's FLOPs are counted: on the CPU in eager mode (a compiled graph is opaque to the
    counter, and its FLOPs are those of the eager path anyway; on a GPU nobody waits for a CPU-side count)."""
    return device.type == "cpu" and not switches.compile


def warmup_counts(slices: int, batch_size: int) -> list[int]:
    """Query slice counts whose prediction meets every batch shape of a ``slices``-slice run once.

    A shape's first call pays one-off costs (on a GPU: the convolution library's algorithm choice and loading
    its kernels; without this warm-up a 100-slice run on an H100 took 1.3 s instead of 0.8 s). A session pays
    them once per batch shape: the full batch once, and a remainder again whenever a volume's last batch has
    a size not met before. The timed run measures the steady state; the README states the first-call cost.
    """
    return sorted({min(slices, batch_size), slices % batch_size} - {0}, reverse=True)


def run_path(model: SDFSMISNet, workload: Workload, switches: Switches, block: str = "", name: str = "",
             count_flops: bool = True) -> PathRun:
    """Warm up on every batch shape (:func:`warmup_counts`), then time ``switches`` on ``workload`` once; masks
    by the released rule.

    With ``count_flops`` (and :func:`counts_flops`) the workload then runs once more, untimed, under
    PyTorch's ``FlopCounterMode``: its per-operation Python dispatch would slow the timed run, by 3-10 % for
    oneDNN's convolutions and by 40-60 % for the many small products of Winograd's (both measured).
    """
    with switched(model, switches):
        batch_size = switches.batch_size or auto_batch_size(model.device, model.config.image_size, model.dtype)
        warmup_start = time.perf_counter()
        for count in warmup_counts(len(workload.query), batch_size):
            foreground_maps(model, workload.head(count), switches.support_reuse, batch_size)
        synchronize(model.device)
        warmup_seconds = time.perf_counter() - warmup_start
        with stage_timer(model) as times, PeakMemory(model.device) as memory:
            start, cpu_start = time.perf_counter(), time.process_time()
            foreground = foreground_maps(model, workload, switches.support_reuse, batch_size)
            synchronize(model.device)
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        threads = torch.get_num_threads()
        flops = None
        if count_flops and counts_flops(model.device, switches):
            with FlopCounterMode(display=False) as counter:
                foreground_maps(model, workload, switches.support_reuse, batch_size)
            flops = float(counter.get_total_flops())
    return PathRun(block=block, name=name, switches=switches, slices=len(workload.query), batch_size=batch_size,
                   dtype=dtype_name(model.dtype),
                   channels_last=uses_channels_last(switches, model.device),
                   winograd=uses_winograd_switch(switches, model), threads=threads, seconds=seconds,
                   cpu_seconds=cpu_seconds, warmup_seconds=warmup_seconds,
                   support_seconds=sum(times["support_encoding"]),
                   stages={stage: sum(times[stage]) for stage in STAGES}, memory=memory.summary(),
                   flops=flops,
                   foreground=foreground, masks=masks_by_chunk(foreground, workload.assignment))


def compare(run: PathRun, naive: PathRun) -> dict[str, float | bool]:
    """Speed-up over the naive path, and how closely ``run`` reproduces it ("Agreement" in the module docstring)."""
    cut = float(np.median(naive.foreground))
    rule, median_cut = dice(run.masks, naive.masks), dice(run.foreground > cut, naive.foreground > cut)
    return {"speedup": run.slices_per_second / naive.slices_per_second,
            "dice_released_rule": rule, "dice_median_cut": median_cut,
            "masks_agree": min(rule, median_cut) >= AGREEMENT_DICE,
            "max_abs_difference": float(np.abs(run.foreground - naive.foreground).max()),
            "naive_foreground_fraction": float(naive.masks.mean())}


@dataclass(frozen=True)
class PlannedPath:
    block: str
    name: str
    switches: Switches
    slices: int


def plan_paths(optimised: Switches, device: torch.device, slices: int, ablation_slices: int,
               image_size: int = 256, measure_compile: bool = False) -> list[PlannedPath]:
    """The benchmark's rows: the ablation block (naive, naive + each switch, all) and the headline block
    (naive, all).

    The ablation block runs at ``ablation_slices`` (none when 0), the headline at ``slices``; when both counts
    are equal the ablation block is the headline. The optimised path is followed by its variant in the other
    precision (half after float32, float32 after half), which separates what rounding buys and costs from
    what the other switches do. ``measure_compile`` adds ``torch.compile`` alone and on top of all the rest,
    to the ablation block only (compiling takes minutes).
    """
    optimised_dtype = resolve_dtype(optimised.dtype, device)
    half = dtype_name(optimised_dtype) if optimised_dtype != torch.float32 else HALF_TYPES[device.type]
    batch = optimised.batch_size or auto_batch_size(device, image_size, optimised_dtype)
    changes = [("support reuse", {"support_reuse": True}),
               (f"batching ({batch})", {"batch_size": batch}),
               ("SDPA attention", {"attention": "sdpa"}),
               ("channels_last", {"channels_last": True}),
               *([("Winograd convolutions", {"winograd": True})] if winograd_applies(device, torch.float32) else []),
               (half, {"dtype": half})]
    finals = [("all optimisations", optimised)]
    if winograd_applies(device, optimised_dtype):
        finals.append(("all optimisations + Winograd (experiment)", replace(optimised, winograd=True)))
    if optimised_dtype == torch.float32:
        finals.append((f"all optimisations + {half}", replace(optimised, dtype=half)))
    else:
        finals.append(("all optimisations in float32", replace(optimised, dtype="float32")))
    ablation = [("naive", NAIVE), *((f"naive + {label}", replace(NAIVE, **change)) for label, change in changes)]
    if device.type == "cpu" and torch.get_num_threads() > 1:
        ablation.append(("naive, 1 thread", replace(NAIVE, threads=1)))
    ablation += finals
    headline = [("naive", NAIVE), *finals]
    if measure_compile:
        compiled = [("naive + torch.compile", replace(NAIVE, compile=True)),
                    ("all optimisations + torch.compile", replace(optimised, compile=True))]
        (ablation if ablation_slices > 0 else headline).extend(compiled)
    plans = [PlannedPath("ablation", name, switches, ablation_slices) for name, switches in ablation
             if ablation_slices > 0]
    if ablation_slices != slices:
        plans += [PlannedPath("headline", name, switches, slices) for name, switches in headline]
    return plans


def _precision_order(plans: list[PlannedPath], device: torch.device) -> list[PlannedPath]:
    """float32 paths first: the network is converted to a half type only once (stable otherwise)."""
    return sorted(plans, key=lambda plan: resolve_dtype(plan.switches.dtype, device) != torch.float32)


def benchmark_propagation(config_name: str = "sd15", slices: int = 60, ablation_slices: int = 8, shots: int = 3,
                          image_size: int = 256, device: str = "cpu", optimised: Switches = OPTIMISED, seed: int = 0,
                          measure_compile: bool = False, report: Callable[[str], None] = silent) -> dict[str, Any]:
    """Run every planned path (:func:`plan_paths`) on one random-weight network; a JSON-ready result.

    ``report`` receives a line as each path starts and ends (progress of a run that takes an hour). A path that
    fails (``torch.compile`` on an unusual platform, say) becomes a row holding its error, and the rest still runs.
    """
    if ablation_slices < 0:
        raise InputError(f"ablation slices must be 0 (no ablation rows) or more, got {ablation_slices}")
    started = time.perf_counter()
    target = resolve_device(device)
    torch.manual_seed(seed)
    model = SDFSMISNet.from_config(preset(config_name, image_size=image_size)).to(target).eval()
    plans = plan_paths(optimised, target, slices, ablation_slices, image_size, measure_compile)
    ceiling = {name: round(matmul_gflops(target, resolve_dtype(name, target)), 1)
               for name in dict.fromkeys(("float32", HALF_TYPES[target.type]))}
    workloads = {count: phantom_workload(count, shots, image_size, seed) for count in {plan.slices for plan in plans}}
    runs: dict[tuple[str, str], PathRun | str] = {}
    for number, plan in enumerate(_precision_order(plans, target), start=1):
        progress = f"[{number}/{len(plans)}] {plan.block}: {plan.name}, {plan.slices} slices"
        report(f"{progress} ...")
        try:
            run = run_path(model, workloads[plan.slices], plan.switches, plan.block, plan.name,
                           count_flops=plan.block == "ablation")
        except Exception as error:  # noqa: BLE001 - one failing path must not lose an hour of others
            runs[plan.block, plan.name] = f"{type(error).__name__}: {error}"
            report(f"{progress}: failed: {runs[plan.block, plan.name]}")
            continue
        runs[plan.block, plan.name] = run
        report(f"{progress}: {run.seconds:.1f} s ({run.slices_per_second:.3f} slices/s)")
    rows = []
    for plan in plans:
        run, naive = runs[plan.block, plan.name], runs[plan.block, "naive"]
        if isinstance(run, str) or isinstance(naive, str):
            rows.append({"block": plan.block, "name": plan.name, "slices": plan.slices,
                         "error": run if isinstance(run, str) else f"naive path failed: {naive}"})
            continue
        run.comparison = compare(run, naive)
        rows.append(run.to_json())
    return {"mode": "propagate", "config": config_name, "image_size": image_size, "shots": shots,
            "device": str(target), "slices": slices, "ablation_slices": ablation_slices, "seed": seed,
            "optimised": asdict(optimised), "agreement_dice": AGREEMENT_DICE, "matmul_gflops": ceiling,
            "optimised_masks_agree": all(row.get("masks_agree", False) for row in rows
                                         if row["name"] == "all optimisations"),
            "wall_seconds": round(time.perf_counter() - started, 1), **environment(target), "rows": rows}


def _throughput(row: dict[str, Any], ceiling: dict[str, float]) -> list[str]:
    """GFLOP per slice, GFLOP/s and their share of the matrix-multiply ceiling of the row's type."""
    if row.get("gflops_per_second") is None:
        return ["–", "–", "–"]
    peak = ceiling.get(row["dtype"])
    share = f"{row['gflops_per_second'] / peak:.0%}" if peak else "–"
    return [f"{row['gflop_per_slice']:.0f}", f"{row['gflops_per_second']:.0f}", share]


def _cells(row: dict[str, Any], columns: int, ceiling: dict[str, float]) -> list[str]:
    if "error" in row:
        return [row["name"], str(row["slices"]), f"failed: {row['error']}"] + [""] * (columns - 3)
    stages = row["stage_seconds"]
    memory = row.get("cuda_max_allocated_gib", row["peak_rss_gib"])
    return [row["name"], str(row["slices"]), str(row["batch_size"]), row["dtype"],
            "yes" if row["channels_last"] else "no", "yes" if row.get("winograd") else "no", str(row["threads"]),
            f"{row['seconds_per_slice']:.3f}", f"{row['cpu_seconds'] / row['slices']:.3f}",
            f"{row['query_seconds_per_slice']:.3f}", f"{row['slices_per_second']:.3f}",
            f"{row['speedup']:.2f}x", f"{row['seconds']:.1f}", f"{row['support_seconds']:.1f}",
            f"{row['warmup_seconds']:.1f}", f"{memory:.2f}", f"{row['dice_released_rule']:.4f}",
            f"{row['dice_median_cut']:.4f}", "yes" if row["masks_agree"] else "no",
            *_throughput(row, ceiling), *(f"{stages[stage] / row['slices']:.3f}" for stage in STAGES)]


def markdown_table(result: dict[str, Any]) -> str:
    """The result as a Markdown table, one row per path, grouped by block."""
    memory = "CUDA max alloc GiB" if str(result["device"]).startswith("cuda") else "peak RSS GiB"
    header = ["path", "N", "batch", "dtype", "NHWC", "Winograd", "threads", "s / slice", "CPU s / slice",
              "query s / slice", "slices / s", "speed-up", "volume s", "support s", "warm-up s", memory, "Dice (rule)",
              "Dice (median cut)", "same masks", "GFLOP / slice", "GFLOP/s", "of matmul peak",
              *(f"{stage} s / slice" for stage in STAGES)]
    ceiling = result.get("matmul_gflops", {})
    lines = []
    for block in dict.fromkeys(row["block"] for row in result["rows"]):
        lines += [f"**{block}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(_cells(row, len(header), ceiling)).replace("\n", " ") + " |"
                  for row in result["rows"] if row["block"] == block]
        lines.append("")
    return "\n".join(lines)


def write_report(result: dict[str, Any], json_path: Path | None, markdown_path: Path | None) -> None:
    """The JSON result and its Markdown table (with the command and environment) where asked."""
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")
    if markdown_path:
        markdown_path.parent.mkdir(parents=True, exist_ok=True)
        facts = ", ".join(f"{key} {result[key]}" for key in ("config", "device", "torch", "cpu", "threads", "gpu",
                                                                  "wall_seconds") if key in result)
        if "matmul_gflops" in result:
            facts += ", matmul GFLOP/s " + ", ".join(f"{name} {gflops}"
                                                     for name, gflops in result["matmul_gflops"].items())
        command = f"`{result['command']}`\n\n" if "command" in result else ""
        markdown_path.write_text(f"{command}{facts}\n\n{markdown_table(result)}")
