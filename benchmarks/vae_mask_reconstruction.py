"""How well a model's VAE reconstructs organ masks: the ceiling it puts on every Dice the model can reach.

SD-FSMIS predicts a mask latent and decodes it with the frozen VAE, so a mask the VAE cannot reconstruct
cannot be predicted either. Each labelled slice of each organ of the given CHAOS patients (default: fold 0's
test patients, which the bundled model never saw) is encoded, decoded and cut at 0.5 on the model grid;
Dice is over each patient's organ volume, averaged over patients:

    python benchmarks/vae_mask_reconstruction.py --json benchmarks/results/vae-mask-reconstruction.json \\
        --markdown benchmarks/results/vae-mask-reconstruction.md

``--checkpoint/--base-model/--dino`` measure another model (its base model's VAE); ``--base-model`` alone
measures that base model's VAE before any SD-FSMIS training.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from SDFSMISLib.data.datasets import scan_folder
from SDFSMISLib.evaluation.metrics import dice
from SDFSMISLib.evaluation.runner import dataset_organs, patient_data
from SDFSMISLib.model import vae_codec as codec
from SDFSMISLib.model.config import SDFSMISConfig
from SDFSMISLib.weights.base_model import load_vae, stable_diffusion_configs
from SDFSMISLib.weights.model_files import chosen_model

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chaos-t2"


@torch.no_grad()
def reconstructed(vae, masks: np.ndarray, batch: int = 8) -> np.ndarray:  # noqa: ANN001 - AutoencoderKL
    """``[N, H, W]`` booleans through the VAE and back, cut at 0.5 (as SD-FSMIS decodes a predicted mask)."""
    out = []
    for start in range(0, len(masks), batch):
        signed = codec.mask_to_signed(torch.as_tensor(masks[start:start + batch], device=vae.device))
        out.append((codec.decode(vae, codec.encode(vae, signed)) > 0).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, *masks.shape[1:]), bool)


def chosen_vae(args: argparse.Namespace):  # noqa: ANN201 - AutoencoderKL
    """The VAE of ``--base-model`` alone, or of the chosen model's base model (the rest is not loaded)."""
    alone = args.base_model and not args.checkpoint and not args.dino
    base_model = args.base_model if alone else chosen_model(args.checkpoint, args.base_model, args.dino).base_model
    return load_vae(base_model, stable_diffusion_configs(base_model)[1]).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--patients", default="1,2,3,5,8", help="patient ids (default: CHAOS fold 0's tests)")
    parser.add_argument("--checkpoint")
    parser.add_argument("--base-model", type=Path)
    parser.add_argument("--dino", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    vae = chosen_vae(args)
    wanted = {int(part) for part in args.patients.split(",")}
    organs = dataset_organs("chaos-t2")
    scores: dict[str, list[float]] = {name: [] for name in organs}
    for patient in [patient for patient in scan_folder(args.data) if patient.id in wanted]:
        data = patient_data(patient, size=SDFSMISConfig().image_size)
        for name, organ in organs.items():
            truth = data.labels == organ
            slices = np.flatnonzero(truth.any(axis=(1, 2)))
            scores[name].append(dice(reconstructed(vae, truth[slices]), truth[slices]))
    summary = {name: float(np.mean(values)) for name, values in scores.items()}
    result = {"model": str(args.checkpoint or args.base_model or "bundled"), "patients": sorted(wanted),
              "dice": summary, "per_patient": scores}
    table = ("| organ | " + " | ".join(summary) + " |\n|---|" + "---|" * len(summary) + "\n"
             "| mask reconstruction Dice | " + " | ".join(f"{value:.4f}" for value in summary.values()) + " |\n")
    print(table)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
