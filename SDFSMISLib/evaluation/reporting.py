"""Evaluation results as the paper shows them: a Markdown table, a Dice bar chart, overlay figures.

Results structure (the one :mod:`SDFSMISLib.evaluation.runner` fills)::

    results: dict[str, dict[str, list[dict[str, float]]]]
    results[method][organ] = [{"dice": 0.83, "hd95": 12.1, "assd": 3.4, ...}, ...]   # one dict per query patient

``method`` is a row label ("SD-FSMIS, setting 2", "copy nearest support", ...), ``organ`` one of
:data:`ORGANS`, ``dice`` a fraction in [0, 1], ``hd95`` and ``assd`` in mm (NaN when the prediction or the
truth is empty, see :mod:`SDFSMISLib.evaluation.metrics`); ``fold``, where the cases carry it, splits the
table per fold; other keys (patient id) ride along unused.

Every file goes through :func:`SDFSMISLib.io.atomic.atomic_output`, so an interrupted run never leaves a
half-written figure, and figures are drawn on a private Agg canvas, never through pyplot's global state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from ..io.atomic import atomic_output
from ..io.labels import PAPER_ORDER

Results = Mapping[str, Mapping[str, Sequence[Mapping[str, float]]]]

ORGANS = PAPER_ORDER

_MASK_COLOURS = {"support": "#ffd400", "prediction": "#ff3b30", "truth": "#30d158"}


def _mean_defined(values: Sequence[float]) -> float:
    """Mean over the values that are not NaN; NaN when none is (no warning, unlike ``np.nanmean``)."""
    values = np.asarray(values, dtype=float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan


def _format(value: float, scale: float = 1.0) -> str:
    """A table cell: two decimals, or a dash where there is no value."""
    return "–" if math.isnan(value) else f"{value * scale:.2f}"


def _table_row(method: str, organs: Mapping[str, Sequence[Mapping[str, float]]]) -> tuple[str, int]:
    """One Markdown row and the number of cases whose distances are undefined (empty masks)."""
    present = [organ for organ in ORGANS if organs.get(organ)]
    means = {key: {organ: _mean_defined([case[key] for case in organs[organ]]) for organ in present}
             for key in ("dice", "hd95", "assd")}
    cells = [_format(means["dice"].get(organ, math.nan), 100) for organ in ORGANS]
    cells.append(_format(_mean_defined(list(means["dice"].values())), 100))
    cells += [_format(_mean_defined(list(means[key].values()))) for key in ("hd95", "assd")]
    undefined = sum(math.isnan(case["hd95"]) for organ in present for case in organs[organ])
    return f"| {method} | " + " | ".join(cells) + " |", undefined


def _header() -> list[str]:
    return ["| Method | " + " | ".join(ORGANS) + " | Mean Dice | HD95 | ASSD |", "|---" * (len(ORGANS) + 4) + "|"]


def _folds(results: Results) -> list[int]:
    return sorted({case["fold"] for organs in results.values() for cases in organs.values() for case in cases
                   if "fold" in case})


def _of_fold(organs: Mapping[str, Sequence[Mapping[str, float]]], fold: int) -> dict[str, list]:
    return {organ: [case for case in cases if case.get("fold") == fold] for organ, cases in organs.items()}


def markdown_table(results: Results) -> str:
    """The paper's results table: Dice (%) per organ, mean Dice (%), HD95 (mm), ASSD (mm); one row per method.

    An organ's Dice is the mean over its query patients (the SSL-ALPNet/RPT protocol); Mean Dice, HD95 and
    ASSD are means over the organs present in the row. Cases with an empty prediction have no surface
    distance: they count as Dice 0 but are left out of HD95/ASSD, and a note under the table says how many.
    Over several folds a second table gives each fold alone, because a pooled mean can hide a fold (a
    support patient) where a method falls below a baseline.
    """
    lines = _header()
    notes = []
    for method, organs in results.items():
        row, undefined = _table_row(method, organs)
        lines.append(row)
        if undefined:
            notes.append(f"{method}: {undefined} case(s) with an empty mask left out of HD95/ASSD.")
    lines.append("")
    lines.append("Dice in %, HD95 and ASSD in mm; per-organ values are means over query patients.")
    lines += notes
    folds = _folds(results)
    if len(folds) > 1:
        lines += ["", "Per fold:", "", *_header()]
        lines += [_table_row(f"fold {fold}: {method}", _of_fold(organs, fold))[0]
                  for fold in folds for method, organs in results.items()]
    return "\n".join(lines) + "\n"


def _save(figure: Figure, path: Path | str) -> Path:
    """Render ``figure`` with Agg into ``path`` atomically (format from the suffix) and return the path."""
    FigureCanvasAgg(figure)
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=figure.dpi, bbox_inches="tight")
    return Path(path)


def bar_chart(results: Results, path: Path | str) -> Path:
    """Grouped bars of mean Dice (%) per organ, one colour per method, with the patients' standard deviation."""
    methods = list(results)
    figure = Figure(figsize=(1.6 + 1.6 * len(ORGANS), 3.6), dpi=120)
    axes = figure.add_subplot()
    width = 0.8 / max(len(methods), 1)
    positions = np.arange(len(ORGANS))
    for index, method in enumerate(methods):
        scores = [[100 * case["dice"] for case in results[method].get(organ, [])] for organ in ORGANS]
        means = [np.mean(values) if values else 0.0 for values in scores]
        spreads = [np.std(values) if values else 0.0 for values in scores]
        axes.bar(positions + (index - (len(methods) - 1) / 2) * width, means, width, yerr=spreads, capsize=2,
                 label=method)
    axes.set_xticks(positions, ORGANS)
    axes.set_ylabel("Dice (%)")
    axes.set_ylim(0, 100)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize="small", loc="lower right")
    return _save(figure, path)


def _panel(axes, image: np.ndarray, masks: Mapping[str, np.ndarray], title: str) -> None:  # noqa: ANN001
    """One grey-scale slice with each mask drawn as a translucent fill and a solid contour."""
    axes.imshow(image, cmap="gray")
    for name, mask in masks.items():
        mask = np.asarray(mask, dtype=bool)
        colour = _MASK_COLOURS[name]
        axes.imshow(np.ma.masked_where(~mask, mask), cmap=ListedColormap([colour]), alpha=0.3, vmin=0, vmax=1)
        if 0 < mask.sum() < mask.size:  # a contour needs both sides of the boundary
            axes.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=1.0)
    axes.set_title(title, fontsize="small")
    axes.set_axis_off()


def overlay_png(path: Path | str, support_image: np.ndarray, support_mask: np.ndarray, query_image: np.ndarray,
                prediction: np.ndarray, truth: np.ndarray | None = None) -> Path:
    """A 1 x 3 figure: support with its mask, query with the prediction, query with the ground truth.

    Without ``truth`` (a user's own volume) the third panel is left out. Images are 2-D slices on any
    intensity scale; masks are 2-D boolean or {0, 1} arrays of the same shape.
    """
    panels = [(support_image, {"support": support_mask}, "support + annotation"),
              (query_image, {"prediction": prediction}, "query + prediction")]
    if truth is not None:
        panels.append((query_image, {"truth": truth}, "query + ground truth"))
    figure = Figure(figsize=(3.2 * len(panels), 3.4), dpi=100)
    for index, (image, masks, title) in enumerate(panels, start=1):
        _panel(figure.add_subplot(1, len(panels), index), image, masks, title)
    return _save(figure, path)
