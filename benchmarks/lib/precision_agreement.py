"""Does a half-precision network give a trained model's masks? Propagation at float32 against a half type.

The speed benchmark (:mod:`lib.propagation_benchmark`) runs random weights, whose maps say little
about how rounding moves a *trained* model's masks. This runs a trained checkpoint (the bundled demo model
by default) the way a user does, :func:`SDFSMISLib.inference.propagation.propagate` with the protocol's support
annotation, on every ordered pair of patients of a labelled folder, once in float32 and once in the half
type, and reports per organ the Dice between the two label maps (and each one's Dice against the truth).
A half type becomes a device's default only where these masks agree (the issue's level: Dice >= 0.999).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lib.profiling import silent
from lib.propagation_benchmark import AGREEMENT_DICE
from SDFSMISLib.data.datasets import scan_folder
from SDFSMISLib.errors import InputError
from SDFSMISLib.evaluation.metrics import dice
from SDFSMISLib.evaluation.protocol import protocol_support_mask
from SDFSMISLib.inference.options import PropagationOptions
from SDFSMISLib.inference.propagation import propagate
from SDFSMISLib.io.labels import structure
from SDFSMISLib.io.volumes import read_volume
from SDFSMISLib.weights.loading import load_model
from SDFSMISLib.weights.model_files import ModelFiles


def precision_agreement(folder: Path, files: ModelFiles | None = None, half: str = "bfloat16", device: str = "cpu",
                        pairs: int | None = None, report: Callable[[str], None] = silent) -> dict[str, Any]:
    """Propagate every ordered patient pair of ``folder`` at float32 and at ``half``; a JSON-ready result.

    ``pairs`` keeps only the first pairs (a quick check). Organs are those both patients of a pair have.
    """
    patients = [patient for patient in scan_folder(folder) if patient.label is not None]
    if len(patients) < 2:
        raise InputError(f"{folder} has {len(patients)} labelled patients; the agreement needs two or more "
                         "(image_<id> with label_<id>)")
    models = {dtype: load_model(files, device, dtype) for dtype in ("float32", half)}
    rows = []
    for support_patient, query_patient in list(itertools.permutations(patients, 2))[:pairs]:
        support, support_truth = read_volume(support_patient.image), read_volume(support_patient.label)
        query, query_truth = read_volume(query_patient.image), read_volume(query_patient.label)
        truth = np.rint(query_truth.array).astype(np.int32)
        organs = sorted(set(np.unique(np.rint(support_truth.array)).astype(int)) & set(np.unique(truth)) - {0})
        annotation = protocol_support_mask(support_truth, organs)
        labelmaps = {dtype: propagate(model, query, annotation, support, PropagationOptions()).labelmap.array
                     for dtype, model in models.items()}
        reference, rounded = labelmaps["float32"], labelmaps[half]
        for organ in organs:
            rows.append({"support": support_patient.id, "query": query_patient.id, "organ": structure(organ).name,
                         "dice_between": dice(rounded == organ, reference == organ),
                         "dice_float32_truth": dice(reference == organ, truth == organ),
                         f"dice_{half}_truth": dice(rounded == organ, truth == organ)})
            report(f"{support_patient.id} -> {query_patient.id} {structure(organ).name}: "
                   f"Dice between {rows[-1]['dice_between']:.4f}")
    between = [row["dice_between"] for row in rows]
    return {"folder": str(folder), "half": half, "device": device, "agreement_dice": AGREEMENT_DICE,
            "min_dice_between": min(between), "mean_dice_between": float(np.mean(between)),
            "masks_agree": min(between) >= AGREEMENT_DICE, "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    """The result as a Markdown table, one row per pair and organ."""
    half = result["half"]
    lines = [f"| support -> query | organ | Dice float32 vs {half} | Dice float32 vs truth | Dice {half} vs truth |",
             "|---|---|---|---|---|"]
    lines += [f"| {row['support']} -> {row['query']} | {row['organ']} | {row['dice_between']:.4f} | "
              f"{row['dice_float32_truth']:.3f} | {row[f'dice_{half}_truth']:.3f} |" for row in result["rows"]]
    lines.append(f"\nmin Dice between {result['min_dice_between']:.4f}, mean {result['mean_dice_between']:.4f}; "
                 f"same masks (>= {result['agreement_dice']}): {'yes' if result['masks_agree'] else 'no'}")
    return "\n".join(lines) + "\n"
