"""The propagation benchmark on the tiny configuration: paths, switches, agreement, report, command line.

Nothing here asserts a timing: only that every path computes the same masks and the report holds them.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IMAGE_SIZE
from lib import propagation_benchmark, winograd
from lib.command import run
from lib.profiling import matmul_gflops, stage_timer
from lib.propagation_benchmark import (
    AGREEMENT_DICE,
    NAIVE,
    OPTIMISED,
    PathRun,
    Workload,
    benchmark_propagation,
    compare,
    counts_flops,
    foreground_maps,
    markdown_table,
    phantom_workload,
    plan_paths,
    run_path,
    warmup_counts,
    write_report,
)
from lib.winograd import winograd_enabled

from SDFSMISLib.inference.slice_prediction import predict_foreground_maps
from SDFSMISLib.model.config import preset
from SDFSMISLib.model.network import SDFSMISNet
from SDFSMISLib.model.support_injection import SupportInjectionProcessor

SLICES = 4


@pytest.fixture(scope="module")
def model() -> SDFSMISNet:
    torch.manual_seed(0)
    return SDFSMISNet.from_config(preset("tiny", image_size=IMAGE_SIZE)).eval()


@pytest.fixture(scope="module")
def workload() -> Workload:
    return phantom_workload(SLICES, shots=3, size=IMAGE_SIZE)


@pytest.fixture(scope="module")
def naive(model: SDFSMISNet, workload: Workload) -> PathRun:
    return run_path(model, workload, NAIVE, "test", "naive")


def test_workload_follows_the_protocol(workload: Workload) -> None:
    assert workload.query.shape == (SLICES, IMAGE_SIZE, IMAGE_SIZE)
    assert workload.support_images.shape == workload.support_masks.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert workload.support_masks.reshape(3, -1).any(axis=1).all()  # every support shows the organ
    assert workload.query.min() >= -1 and workload.query.max() <= 1
    assert workload.assignment.tolist() == [0, 1, 2, 2]  # three chunks, as protocol.query_chunks cuts 4 slices


def test_naive_path_encodes_the_support_for_every_query_slice(model: SDFSMISNet, workload: Workload) -> None:
    with stage_timer(model) as naive_times:
        foreground_maps(model, workload, support_reuse=False, batch_size=1)
    assert len(naive_times["unet_support_pass"]) == len(naive_times["support_encoding"]) == SLICES
    assert len(naive_times["unet_query_pass"]) == SLICES
    with stage_timer(model) as reused_times:
        predict_foreground_maps(model, workload.query, workload.support_images, workload.support_masks,
                                workload.assignment, batch_size=SLICES)
    assert len(reused_times["unet_support_pass"]) == len(reused_times["support_encoding"]) == 1
    assert len(reused_times["unet_query_pass"]) == 1


@pytest.mark.parametrize("change", [{"support_reuse": True}, {"batch_size": 3}, {"attention": "sdpa"},
                                    {"channels_last": True}, {"threads": 1}, {}],
                         ids=["support-reuse", "batching", "sdpa", "channels-last", "one-thread", "naive-again"])
def test_each_switch_gives_the_naive_masks(model: SDFSMISNet, workload: Workload, naive: PathRun,
                                           change: dict) -> None:
    run = run_path(model, workload, replace(NAIVE, **change))
    comparison = compare(run, naive)
    assert comparison["dice_released_rule"] >= AGREEMENT_DICE
    assert comparison["dice_median_cut"] >= AGREEMENT_DICE
    assert comparison["max_abs_difference"] < 1e-4


def test_optimised_path_gives_the_naive_masks_and_restores_the_network(model: SDFSMISNet, workload: Workload,
                                                                       naive: PathRun) -> None:
    threads = torch.get_num_threads()
    run = run_path(model, workload, replace(OPTIMISED, channels_last=True, threads=1))
    assert compare(run, naive)["dice_median_cut"] >= AGREEMENT_DICE
    assert run.threads == 1 and run.batch_size > 1 and run.dtype == "float32"
    assert torch.get_num_threads() == threads
    assert all(p.is_contiguous() for p in model.parameters())
    processors = [p for p in model.unet.attn_processors.values() if isinstance(p, SupportInjectionProcessor)]
    assert processors and all(p.kernel == "sdpa" for p in processors)


def test_flops_are_counted_on_the_cpu_and_support_reuse_saves_them(model: SDFSMISNet, workload: Workload,
                                                                    naive: PathRun) -> None:
    reused = run_path(model, workload, replace(NAIVE, support_reuse=True))
    assert naive.flops is not None and reused.flops is not None
    # the naive path encodes its support (two VAE encodes and a UNet pass) again for every slice
    assert 1.05 < naive.flops / reused.flops < 3
    batched = run_path(model, workload, replace(NAIVE, batch_size=SLICES))
    assert batched.flops == pytest.approx(naive.flops, rel=1e-6)  # batching moves no arithmetic
    row = naive.to_json()
    assert row["gflop_per_slice"] == pytest.approx(naive.flops / SLICES / 1e9, abs=0.06)
    assert run_path(model, workload.head(1), replace(NAIVE, compile=False)).flops < naive.flops


def test_winograd_path_agrees_with_the_naive_one(model: SDFSMISNet, workload: Workload, naive: PathRun,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 16)  # the tiny network's widths and sizes
    monkeypatch.setattr(winograd, "MIN_PIXELS", 64)
    run = run_path(model, workload, replace(NAIVE, winograd=True))
    comparison = compare(run, naive)
    assert run.winograd and 0 < comparison["max_abs_difference"] < 1e-3 and comparison["masks_agree"]
    assert run.flops < naive.flops  # 36 products per 4x4 tile instead of 144
    assert not winograd_enabled(model)  # switched off after its path


def test_flops_are_counted_only_where_asked(model: SDFSMISNet, workload: Workload) -> None:
    assert run_path(model, workload.head(1), NAIVE, count_flops=False).flops is None
    assert counts_flops(torch.device("cpu"), NAIVE)
    assert not counts_flops(torch.device("cpu"), replace(NAIVE, compile=True))  # a graph is opaque to the counter


def test_matmul_ceiling_is_a_throughput() -> None:
    cpu = torch.device("cpu")
    assert 0 < matmul_gflops(cpu, torch.float32, size=256, repeats=2) < 1e5


def test_plan_has_one_row_per_switch_and_a_headline() -> None:
    cpu = torch.device("cpu")
    names = [plan.name for plan in plan_paths(OPTIMISED, cpu, slices=60, ablation_slices=8)
             if plan.block == "ablation"]
    assert names[0] == "naive" and names[-3:] == ["all optimisations", "all optimisations + Winograd (experiment)",
                                                  "all optimisations + bfloat16"]
    assert {"naive + support reuse", "naive + SDPA attention", "naive + channels_last",
            "naive + Winograd convolutions", "naive + bfloat16"} <= set(names)
    assert [plan.name for plan in plan_paths(OPTIMISED, cpu, 60, 8) if plan.block == "headline"] == \
        ["naive", "all optimisations", "all optimisations + Winograd (experiment)", "all optimisations + bfloat16"]
    half = replace(OPTIMISED, dtype="bfloat16")
    assert [plan.name for plan in plan_paths(half, cpu, 60, 0)] == ["naive", "all optimisations",
                                                                   "all optimisations in float32"]
    # on a GPU "auto" is float16: its rows are named after the type, and float32 follows as the variant
    gpu = [plan.name for plan in plan_paths(replace(OPTIMISED, batch_size=16), torch.device("cuda"), 8, 8)]
    assert "naive + float16" in gpu and gpu[-2:] == ["all optimisations", "all optimisations in float32"]
    assert {plan.block for plan in plan_paths(OPTIMISED, cpu, 8, 8)} == {"ablation"}
    assert {plan.block for plan in plan_paths(OPTIMISED, cpu, 8, 0)} == {"headline"}
    compiled = [plan for plan in plan_paths(OPTIMISED, cpu, 60, 8, measure_compile=True) if plan.switches.compile]
    assert [(plan.block, plan.name) for plan in compiled] == [("ablation", "naive + torch.compile"),
                                                              ("ablation", "all optimisations + torch.compile")]


def test_warm_up_meets_every_batch_shape(model: SDFSMISNet, workload: Workload,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    assert warmup_counts(100, 32) == [32, 4]  # three full batches and a remainder of 4
    assert warmup_counts(60, 4) == [4]
    assert warmup_counts(3, 32) == [3]
    calls = []
    real = propagation_benchmark.foreground_maps
    monkeypatch.setattr(propagation_benchmark, "foreground_maps",
                        lambda model, work, *rest: calls.append(len(work.query)) or real(model, work, *rest))
    run_path(model, workload, replace(NAIVE, batch_size=3), count_flops=False)
    assert calls == [3, 1, SLICES]  # a full batch and the remainder untimed, then the timed run


def test_report_has_every_row(naive: PathRun, tmp_path: Path) -> None:
    naive.comparison = compare(naive, naive)
    result = {"config": "tiny", "device": "cpu", "command": "sdfsmis benchmark", "rows": [naive.to_json()]}
    write_report(result, tmp_path / "r.json", tmp_path / "r.md")
    row = json.loads((tmp_path / "r.json").read_text())["rows"][0]
    assert row["speedup"] == 1 and row["dice_median_cut"] == 1 and row["masks_agree"] is True
    assert row["slices"] == SLICES
    assert row["switches"] == {"support_reuse": False, "batch_size": 1, "attention": "classic",
                               "channels_last": False, "dtype": "float32", "winograd": False, "compile": False,
                               "threads": None}
    text = (tmp_path / "r.md").read_text()
    assert text.startswith("`sdfsmis benchmark`") and "| naive | 4 | 1 | float32 |" in text
    assert "GFLOP/s" not in text.splitlines()[2]  # no ceiling measured: none claimed
    result["matmul_gflops"] = {"float32": 1e-6}
    header, _, naive_row = [line for line in markdown_table(result).splitlines() if line.startswith("|")][:3]
    share = dict(zip(header.split(" | "), naive_row.split(" | ")))["of matmul peak"]
    assert share.endswith("%") and int(share[:-1].replace(",", "")) > 100
    assert markdown_table(result).count("\n| naive ") == 1


def test_benchmark_command_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "propagate.json"
    assert run("propagate", "benchmark", ["--config", "tiny", "--image-size", str(IMAGE_SIZE), "--slices", "2",
                                          "--ablation-slices", "0", "--json", str(out),
                                          "--markdown", str(tmp_path / "p.md")]) == 0
    result = json.loads(out.read_text())
    assert [row["name"] for row in result["rows"]] == ["naive", "all optimisations",
                                                       "all optimisations + Winograd (experiment)",
                                                       "all optimisations + bfloat16"]
    assert not result["rows"][1]["winograd"] and result["rows"][2]["winograd"]  # Winograd is no longer default
    assert result["optimised_masks_agree"] and result["rows"][1]["slices"] == 2
    assert "| all optimisations | 2 |" in capsys.readouterr().out


def test_stage_and_training_step_modes(tmp_path: Path) -> None:
    common = ["--config", "tiny", "--image-size", str(IMAGE_SIZE), "--device", "cpu"]
    assert run("stages", "benchmark", [*common, "--repeats", "1", "--json", str(tmp_path / "s.json")]) == 0
    stages = json.loads((tmp_path / "s.json").read_text())["seconds"]
    assert stages["unet_support_pass"] > 0 and stages["unet_query_pass"] > 0
    assert run("training-step", "benchmark", [*common, "--json", str(tmp_path / "t.json")]) == 0
    step = json.loads((tmp_path / "t.json").read_text())
    assert step["mixed_precision"] == "bf16" and step["gradient_checkpointing"] and np.isfinite(step["loss"])


def test_a_failing_path_becomes_a_row_and_the_rest_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    def run_unless_half(model, workload, switches, block, name, count_flops):  # noqa: ANN001, ANN202
        if switches.dtype == "bfloat16":
            raise RuntimeError("no bfloat16 kernels here")
        return run_path(model, workload, switches, block, name, count_flops)

    monkeypatch.setattr(propagation_benchmark, "run_path", run_unless_half)
    result = benchmark_propagation("tiny", slices=2, ablation_slices=0, image_size=IMAGE_SIZE)
    failed = result["rows"][-1]
    assert failed["name"] == "all optimisations + bfloat16" and "no bfloat16 kernels" in failed["error"]
    assert result["optimised_masks_agree"]
    table = markdown_table(result)
    assert "| all optimisations + bfloat16 | 2 | failed: RuntimeError: no bfloat16 kernels here |" in table
