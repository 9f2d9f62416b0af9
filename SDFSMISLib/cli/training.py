"""``sdfsmis`` commands that make data and models: phantom, pseudolabels, tiny-base, train."""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable
from pathlib import Path

from ..devices import PRECISIONS
from ..errors import InputError
from ..progress import progress_bar

CommandFactory = Callable[[str, Callable[[argparse.Namespace], None], str, str], argparse.ArgumentParser]


def int_list(text: str) -> list[int]:
    """``"1,4"`` -> ``[1, 4]`` (argparse type)."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers, e.g. 1,4") from error


def _command_phantom(args: argparse.Namespace) -> None:
    from ..data.phantom import write_phantom_dataset

    with progress_bar(f"{args.modality} phantoms", "patient") as progress:
        paths = write_phantom_dataset(args.out, patients=args.patients, modality=args.modality, seed=args.seed,
                                      first_id=args.first_id, progress=progress)
    print(f"wrote {len(paths)} files to {args.out}")


def _command_pseudolabels(args: argparse.Namespace) -> None:
    from ..data.supervoxels import generate_pseudolabels

    with progress_bar("supervoxels", "volume") as progress:
        paths = generate_pseudolabels(args.folder, out=args.out, overwrite=args.overwrite, progress=progress,
                                      min_size=args.min_size)
    print(f"{len(paths)} supervoxel files in {args.out or args.folder}")


def _split_patients(args: argparse.Namespace) -> tuple[list, list]:
    """``(training, held out)`` patients of ``--data``: other folds' and ``--fold``'s, or all but ``--validation``."""
    from ..data.datasets import fold_split, scan_folder

    patients = scan_folder(args.data, args.supervoxels)
    if args.fold is not None:
        return fold_split(patients, args.fold, args.dataset)
    validation = getattr(args, "validation", None) or ()
    held_out = [p for p in patients if p.id in validation]
    return [p for p in patients if p not in held_out], held_out


def _episode_dataset(args: argparse.Namespace, patients: list, length: int, seed: int):  # noqa: ANN202
    """Episodes over ``patients`` and every patient of the ``--extra-data`` folders."""
    from ..data.datasets import scan_folder
    from ..data.episodes import EpisodeDataset, EpisodeOptions
    from ..training.volumes import training_volumes

    patients = list(patients) + [p for folder in args.extra_data or () for p in scan_folder(folder)]
    with progress_bar("loading volumes", "patient") as progress:
        volumes = training_volumes(patients, args.labels, args.recipe, args.test_classes or (), args.setting2_rule,
                                   progress)
    options = EpisodeOptions(pairing=args.pairing, min_pixels=args.min_pixels, augment=args.augment,
                             max_distance=args.max_distance)
    return EpisodeDataset(volumes, length, seed=seed, options=options)


def _command_tiny_base(args: argparse.Namespace) -> None:
    import torch
    from diffusers import AutoencoderKL

    from ..model.config import preset
    from ..training.tiny_base import VAE_STATE_FOLDER, VaePretraining, pretrain_vae, write_tiny_base

    config = preset("tiny")
    torch.manual_seed(args.seed)
    vae = AutoencoderKL.from_config(config.vae)
    episodes = _episode_dataset(args, _split_patients(args)[0], args.steps * args.batch_size, args.seed)
    run = VaePretraining(args.steps, args.batch_size, args.lr, args.seed, args.crop)
    state = args.out / VAE_STATE_FOLDER
    with progress_bar("VAE pretraining", "step") as progress:
        losses = pretrain_vae(vae, episodes, run, state, args.resume, args.save_every, progress)
    base, dino = write_tiny_base(args.out, vae, config, args.seed)
    shutil.rmtree(state, ignore_errors=True)
    print(f"VAE loss {losses[0]:.4f} -> {sum(losses[-20:]) / len(losses[-20:]):.4f}; "
          f"scaling factor {vae.config.scaling_factor:.4f}\nbase model: {base}\nDINOv2: {dino}")


def _validation_patients(args: argparse.Namespace, test: list) -> tuple:  # noqa: ANN202
    from ..evaluation.protocol import test_support_and_queries

    if args.validation:
        by_id = {patient.id: patient for patient in test}
        missing = [pid for pid in args.validation if pid not in by_id]
        if len(args.validation) != 2 or missing:
            raise InputError(f"--validation takes two patient ids (support,query) of the data folder; "
                             f"{missing or args.validation} not usable")
        return by_id[args.validation[0]], by_id[args.validation[1]]
    if test:
        support, queries = test_support_and_queries(test)
        return support, queries[0]
    return None


def _command_train(args: argparse.Namespace) -> None:
    from accelerate import PartialState

    from ..evaluation.runner import patient_data
    from ..io.labels import DATASET_LABELS, DEFAULT_DATASET, structure
    from ..training.trainer import TrainingOptions, train
    from ..training.volumes import protocol_validator
    from ..weights.base_model import load_base_model
    from ..weights.checkpoint import load_checkpoint

    train_patients, held_out = _split_patients(args)
    options = TrainingOptions(
        steps=args.steps, batch_size=args.batch_size, gradient_accumulation=args.gradient_accumulation,
        unet_lr=args.unet_lr, mlp_lr=args.mlp_lr, weight_decay=args.weight_decay, seed=args.seed,
        mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
        save_every=args.save_every, validate_every=args.validate_every, workers=args.workers,
        log_with=tuple(args.log_with.split(",")), checkpoint_dtype=args.checkpoint_dtype,
        extra={"data": str(args.data), "labels": args.labels, "fold": args.fold,
               "train_patients": [p.id for p in train_patients], "test_classes": args.test_classes,
               "extra_data": [str(folder) for folder in args.extra_data or ()], "pairing": args.pairing,
               "max_distance": args.max_distance,
               "setting2_rule": args.setting2_rule if args.test_classes else None})
    length = options.episodes_per_process * PartialState().num_processes
    episodes = _episode_dataset(args, train_patients, length, args.seed)
    validator = None
    pair = _validation_patients(args, held_out)
    if pair:
        support, query = (patient_data(p, args.recipe) for p in pair)
        dataset = args.dataset if args.dataset in DATASET_LABELS else DEFAULT_DATASET
        organs = {structure(i, dataset).name: int(i)
                  for i in sorted(set(support.labels.ravel().tolist()) & set(query.labels.ravel().tolist())) if i}
        validator = protocol_validator(support, query, organs)
    if args.checkpoint:
        network = load_checkpoint(args.checkpoint, args.base_model, args.dino)
    else:
        network = load_base_model(args.base_model, args.dino, injection=args.injection,
                                  image_size=args.image_size, spatial_prior=args.spatial_prior)
    with progress_bar("training", "step") as progress:
        final = train(network, episodes, args.out, options, validator, resume=args.resume, progress=progress)
    print(f"wrote {final}")


def _add_episode_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--supervoxels", type=Path, help="folder of supervoxel_<id> files (default: the data folder)")
    parser.add_argument("--extra-data", type=Path, action="append",
                        help="another dataset folder whose every patient is used (repeatable), e.g. CT phantoms")
    parser.add_argument("--fold", type=int, help="use the other folds' patients of --data; hold this fold out")
    parser.add_argument("--dataset", choices=("auto", "chaos-t2", "synapse-ct"), default="auto",
                        help="fold definition and organ names")
    parser.add_argument("--labels", choices=("pseudo", "ground-truth"), default="pseudo",
                        help="supervoxel pseudo-labels (paper) or ground truth minus --test-classes (released code)")
    parser.add_argument("--recipe", default="none", help="preprocessing recipe of the data folder (default none: "
                        "already preprocessed like the SSL-ALPNet folders)")
    parser.add_argument("--test-classes", type=int_list, help="Setting 2: drop training slices showing these "
                        "label ids (e.g. 2,3 when testing the kidneys)")
    parser.add_argument("--setting2-rule", choices=("or", "and"), default="or",
                        help="or: drop slices holding any test class (SSL-ALPNet, default); and: only all of them "
                        "(released RPT/SD-FSMIS code)")
    parser.add_argument("--pairing", choices=("adjacent", "same-slice", "distance"), default="adjacent",
                        help="adjacent slices (paper), one slice twice (SSL-ALPNet), or up to --max-distance apart "
                        "(ours: as propagation asks)")
    parser.add_argument("--max-distance", type=int, default=1, help="largest support-query distance of "
                        "--pairing distance, in slices")
    parser.add_argument("--augment", choices=("support-or-query", "support", "query", "both", "none"),
                        default="support-or-query")
    parser.add_argument("--min-pixels", type=int, default=200)


def register_training_commands(command: CommandFactory) -> None:
    """Add phantom, pseudolabels, tiny-base and train to the ``sdfsmis`` parser."""
    phantom = command("phantom", _command_phantom, "write seeded synthetic abdominal phantoms in the dataset layout",
                      "sdfsmis phantom --out phantoms --patients 12 --modality mr")
    phantom.add_argument("--out", type=Path, required=True)
    phantom.add_argument("--patients", type=int, default=10)
    phantom.add_argument("--modality", choices=("mr", "ct"), default="mr")
    phantom.add_argument("--seed", type=int, default=0)
    phantom.add_argument("--first-id", type=int, default=1)

    pseudo = command("pseudolabels", _command_pseudolabels,
                     "supervoxel pseudo-labels (3-D Felzenszwalb, ADNet/RPT recipe) for every image_<id> of a folder",
                     "sdfsmis pseudolabels ../shared/data/chaos-t2 --out work/chaos-supervoxels")
    pseudo.add_argument("folder", type=Path)
    pseudo.add_argument("--out", type=Path, help="write supervoxel_<id>.nii.gz here (default: beside the images)")
    pseudo.add_argument("--min-size", type=int, default=5000)
    pseudo.add_argument("--overwrite", action="store_true", help="recompute even when a cached file is newer")

    tiny = command("tiny-base", _command_tiny_base,
                   "make the tiny base model: pretrain the tiny VAE on images and masks, seed the UNet and DINOv2",
                   "sdfsmis tiny-base --data phantoms --out tiny-base --steps 1500")
    tiny.add_argument("--data", type=Path, required=True, help="dataset folder with supervoxel files")
    tiny.add_argument("--out", type=Path, required=True)
    tiny.add_argument("--steps", type=int, default=1500)
    tiny.add_argument("--batch-size", type=int, default=4)
    tiny.add_argument("--lr", type=float, default=1e-3)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--crop", type=int, default=128, help="train on random crops of this size (pixels)")
    tiny.add_argument("--save-every", type=int, default=100,
                      help="save the resumable state in --out/vae-state every this many steps")
    tiny.add_argument("--resume", action="store_true", help="continue the pretraining in --out where it stopped")
    _add_episode_arguments(tiny)

    train = command("train", _command_train,
                    "train SD-FSMIS on episodes (Accelerate: CPU, one GPU, or `accelerate launch` for many)",
                    "sdfsmis train --data chaos-t2 --base-model sd15/ --dino dinov2-small/ --fold 0 --out runs/f0")
    train.add_argument("--data", type=Path, required=True,
                       help="dataset folder (image_<id>, label_<id>, supervoxel_<id>)")
    train.add_argument("--out", type=Path, required=True, help="run folder: model.safetensors, state/, log.csv")
    train.add_argument("--base-model", type=Path, required=True, help="SD-1.5 folder or single file")
    train.add_argument("--dino", type=Path, required=True, help="DINOv2 folder")
    train.add_argument("--checkpoint", type=Path, help="start from this SD-FSMIS checkpoint (adapt a trained model)")
    train.add_argument("--injection", choices=("kv-bank", "cross-attn"), default="kv-bank")
    train.add_argument("--image-size", type=int, default=256, help="network resolution")
    train.add_argument("--spatial-prior", action="store_true",
                       help="ours: the query stem also reads the nearest support's mask latent (zero-initialised)")
    train.add_argument("--validation", type=int_list, help="support,query patient ids held out for validation Dice")
    _add_episode_arguments(train)
    train.add_argument("--steps", type=int, default=15_000)
    train.add_argument("--batch-size", type=int, default=1)
    train.add_argument("--gradient-accumulation", type=int, default=4)
    train.add_argument("--unet-lr", type=float, default=1e-5)
    train.add_argument("--mlp-lr", type=float, default=5e-5)
    train.add_argument("--weight-decay", type=float, default=1e-2)
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    train.add_argument("--gradient-checkpointing", action="store_true")
    train.add_argument("--save-every", type=int, default=1000)
    train.add_argument("--validate-every", type=int, default=500)
    train.add_argument("--workers", type=int, default=0, help="data loader processes")
    train.add_argument("--log-with", default="csv", help="csv and/or tensorboard, comma-separated")
    train.add_argument("--checkpoint-dtype", choices=PRECISIONS, default="float32",
                       help="dtype of the final model.safetensors (float16 halves it)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
