"""``sdfsmis segment`` and ``sdfsmis demo``: propagate annotated slices through a volume from the command line.

Outputs are labelmaps on exactly the query grid, written by :mod:`SDFSMISLib.io.segmentation_files`: a
``.seg.nrrd`` opens in 3D Slicer as a segmentation with named, coloured, coded segments; ``.nrrd``,
``.nii.gz``, ``.nii`` and ``.mha`` are plain labelmaps with label tables beside them. When the query is a
DICOM series folder, ``--out-dicom-seg`` also (or instead) writes a DICOM-SEG that references it
(:mod:`SDFSMISLib.io.dicom_seg`). Every file is written atomically: a failed or cancelled run leaves no
partial output.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ..devices import DTYPES
from ..errors import InputError
from ..io.labels import DATASET_LABELS, DEFAULT_DATASET, Structure, structure
from ..io.segmentation_files import OUTPUT_SUFFIXES, check_output_path, describe, read_segmentation, write_labelmap
from ..io.volumes import Volume, read_volume
from ..progress import progress_bar
from .model_options import add_model_arguments
from .training import CommandFactory, int_list

DEMO_OUT = Path("sdfsmis-demo")
DEMO_SHOTS = 3


def _load(args: argparse.Namespace):  # noqa: ANN202 - SDFSMISNet, imported lazily with torch
    from ..devices import describe_device
    from ..weights.loading import load_model
    from ..weights.model_files import chosen_model

    model = load_model(chosen_model(args.checkpoint, args.base_model, args.dino), args.device, args.dtype)
    print(f"model: {model.config.image_size} px network on {describe_device(model.device)}, "
          f"{str(model.dtype).removeprefix('torch.')}")
    return model


def _run(model, query: Volume, mask: Volume, support: Volume | None, options,  # noqa: ANN001, ANN202
         query_mask: Volume | None = None):
    from ..inference.propagation import propagate

    with progress_bar("propagating", "slice", leave=False) as progress:
        return propagate(model, query, mask, support, options, progress=progress, query_mask=query_mask)


def _report(result, structures: dict[int, Structure] | None = None) -> None:  # noqa: ANN001 - PropagationResult
    """Per label: where its supports are, which range was segmented, how many voxels it got."""
    from ..io.volumes import slice_heights

    structures = structures or {}
    heights = slice_heights(result.supports.query.model)
    origins = (("support_slices", "from the support patient"), ("annotated_slices", "from the query"))
    for label, plan in result.plans.items():
        sources = " + ".join(f"{len(getattr(plan, field))} {where}" for field, where in origins
                             if getattr(plan, field).size)
        span = heights[plan.query_slices]
        name = (structures.get(label) or structure(label)).name
        print(f"  {name:14s} support slices: {sources}; {len(plan.query_slices)} query slices at "
              f"S {span.min():.0f}..{span.max():.0f} mm ({plan.range_source} range); "
              f"{int((result.labelmap.array == label).sum())} voxels")
    count = max(result.predicted_slice_count, 1)
    print(f"{result.predicted_slice_count} slice predictions in {result.seconds:.1f} s "
          f"({result.seconds / count:.2f} s per slice)")


def _check_outputs(args: argparse.Namespace):  # noqa: ANN202 - DicomSeries or None
    """Refuse a missing or unwritable output before any work; the query's DICOM series when a SEG is asked for."""
    if args.out is None and args.out_dicom_seg is None:
        raise InputError("give --out (a .seg.nrrd or labelmap file), --out-dicom-seg (a DICOM-SEG of a DICOM "
                         "query), or both")
    if args.out is not None:
        check_output_path(args.out)
    if args.out_dicom_seg is None:
        if args.fractional:
            raise InputError("--fractional chooses the DICOM-SEG segment type; add --out-dicom-seg FILE")
        return None
    from ..io.dicom_series import read_series, seg_identity_problem

    if args.out_dicom_seg.is_dir():
        raise InputError(f"--out-dicom-seg {args.out_dicom_seg} is a folder; give a file name such as seg.dcm")
    if not Path(args.query).is_dir():
        raise InputError(f"--out-dicom-seg needs the query as a DICOM series folder (--query DIR), but {args.query} "
                         "is a volume file, so there are no DICOM images for the SEG to reference. Write --out "
                         "result.seg.nrrd instead (3D Slicer opens it), or, if you have the DICOM series the volume "
                         "was converted from, run `sdfsmis export result.seg.nrrd --dicom DIR --out-dicom-seg seg.dcm`")
    series = read_series(args.query, args.series_uid)
    problem = seg_identity_problem(series)
    if problem:
        raise InputError(problem)
    return series


def _read_query(args: argparse.Namespace, series) -> Volume:  # noqa: ANN001 - DicomSeries or None
    if series is None and Path(args.query).is_dir():
        from ..io.dicom_series import read_series

        series = read_series(args.query, args.series_uid)
    if series is None:
        return read_volume(args.query)
    for note in series.notes:
        print(f"DICOM: {note}")
    return series.read_volume()


def _command_segment(args: argparse.Namespace) -> None:
    from ..inference.options import PropagationOptions
    from ..inference.propagation import check_inputs
    from ..inference.query_range import RangeRequest

    series = _check_outputs(args)
    query_range = RangeRequest.parse(args.range) if args.range else None
    query = _read_query(args, series)
    same_patient = args.support is None or Path(args.support).resolve() == Path(args.query).resolve()
    support = None if same_patient else read_volume(args.support)
    support_mask = read_segmentation(args.support_mask, args.label_names)
    query_mask = None if args.query_mask is None else read_segmentation(args.query_mask, args.label_names)
    known = {**(query_mask.structures if query_mask else {}), **support_mask.structures}
    check_inputs(query, support_mask.labelmap, support, query_mask and query_mask.labelmap,
                 args.labels)  # fail before the (slow) model loading
    options = PropagationOptions(labels=args.labels, k_shot=args.k_shot, placement=args.placement,
                                 query_range=query_range, refine_range=not args.no_refine, recipe=args.recipe,
                                 batch_size=args.batch_size, probabilities=args.fractional)
    model = _load(args)
    result = _run(model, query, support_mask.labelmap, support, options, query_mask and query_mask.labelmap)
    structures = describe(sorted(result.plans), known, args.label_names)
    _report(result, structures)
    if series is not None:  # first: when the SEG is refused (an empty result), nothing is written
        from ..io.dicom_seg import write_dicom_seg
        from ..weights.model_files import chosen_model

        checkpoint = chosen_model(args.checkpoint, args.base_model, args.dino).checkpoint
        written = write_dicom_seg(result.labelmap, series, args.out_dicom_seg, structures,
                                  fractional=args.fractional,
                                  probabilities=result.probabilities, checkpoint=checkpoint)
        print(f"wrote {written} (DICOM-SEG of series {series.series_instance_uid})")
    if args.out is not None:
        print(f"wrote {write_labelmap(args.out, result.labelmap, structures)}")


def _demo_patients(folder: Path | None):  # noqa: ANN202 - tuple of Patient
    from ..data.datasets import scan_folder
    from ..data.phantom import bundled_phantoms

    patients = [patient for patient in scan_folder(folder or bundled_phantoms()) if patient.label is not None]
    if len(patients) < 2:
        raise InputError(f"the demo needs two patients with image_<id> and label_<id> files, found {len(patients)}; "
                         "write some with `sdfsmis phantom --out DIR --patients 2` and pass --phantoms DIR")
    return patients[0], patients[1]


def _overlay(path: Path, result, truth_model: np.ndarray, organ: int) -> Path:  # noqa: ANN001
    """Middle support slice and middle query slice of ``organ`` (anterior up, patient right on the left)."""
    from ..evaluation.reporting import overlay_png

    plan, supports = result.plans[organ], result.supports
    support_slice = plan.support_slices[len(plan.support_slices) // 2]
    query_slice = plan.query_slices[len(plan.query_slices) // 2]
    up = np.flipud  # model rows run posterior -> anterior
    return overlay_png(path, up(supports.support.image[support_slice]),
                       up(supports.support_labels[support_slice] == organ), up(supports.query.image[query_slice]),
                       up(result.model_labels[query_slice] == organ), up(truth_model[query_slice] == organ))


def _command_demo(args: argparse.Namespace) -> None:
    from ..evaluation.protocol import protocol_support_mask
    from ..inference.options import PropagationOptions

    started = time.perf_counter()
    support_patient, query_patient = _demo_patients(args.phantoms)
    support, support_truth = read_volume(support_patient.image), read_volume(support_patient.label)
    query, query_truth = read_volume(query_patient.image), read_volume(query_patient.label)
    organs = sorted({int(v) for v in np.unique(support_truth.array)} & {int(v) for v in np.unique(query_truth.array)}
                    - {0})
    print(f"support: patient {support_patient.id} with its ground truth on {DEMO_SHOTS} slices per organ; "
          f"query: patient {query_patient.id}")
    model = _load(args)
    result = _run(model, query, protocol_support_mask(support_truth, organs, DEMO_SHOTS), support,
                  PropagationOptions())
    _report(result)
    truth = np.rint(query_truth.array).astype(np.int32)
    _compare("atlas patient to new patient", result, truth, organs)
    own = protocol_support_mask(query_truth, organs, DEMO_SHOTS)
    print(f"same patient: patient {query_patient.id} with its ground truth on {DEMO_SHOTS} slices per organ")
    _compare("same patient", _run(model, query, own, None, PropagationOptions()), truth, organs, own)
    segmentation = write_labelmap(args.out / f"query_{query_patient.id}.seg.nrrd", result.labelmap, organs)
    truth_model = result.supports.query.labels_to_model(truth)
    overlays = [_overlay(args.out / f"overlay_{structure(organ).file_stem}.png", result,
                         truth_model, organ) for organ in organs]
    print(f"wrote {segmentation} (atlas to new patient) and {len(overlays)} overlays in {args.out} "
          f"({time.perf_counter() - started:.0f} s in all)")


def _compare(mode: str, result, truth: np.ndarray, organs: list[int],  # noqa: ANN001 - PropagationResult
             annotation: Volume | None = None) -> None:
    """Dice of SDFSMIS next to what 3D Slicer gives for free: copying the nearest annotated slice on the same
    slices, and (same patient, with the evaluation extra installed) Fill between slices."""
    import importlib.util

    from ..evaluation.metrics import dice
    from ..evaluation.volume_baselines import copy_along_plan, fill_between_labelmap

    methods = {"SDFSMIS": result.labelmap.array, "copy": copy_along_plan(result).array}
    if annotation is not None and importlib.util.find_spec("itk") is not None:
        methods["fill between"] = fill_between_labelmap(annotation, organs).array
    print(f"Dice against the phantom truth ({mode}, whole volume, estimated query range):")
    print(f"  {'':14s} " + " ".join(f"{name:>12s}" for name in methods))
    scores = {name: [dice(labels == organ, truth == organ) for organ in organs] for name, labels in methods.items()}
    for row, organ in enumerate(organs):
        print(f"  {structure(organ).name:14s} " + " ".join(f"{values[row]:12.3f}" for values in scores.values()))
    print(f"  {'mean':14s} " + " ".join(f"{np.mean(values):12.3f}" for values in scores.values()))
    if annotation is not None and "fill between" not in methods:
        print("  (pip install 'SDFSMISLib[evaluation]' to compare with 3D Slicer's Fill between slices)")


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="network precision; auto = float16 on a GPU, float32 on the CPU")


def _segment_epilog() -> str:
    return """examples:
  # propagate every label of a support patient's annotated slices to another patient
  sdfsmis segment --query patient2.nii.gz --support patient1.nii.gz --support-mask patient1-3slices.nrrd \\
      --out patient2.seg.nrrd
  # same patient: fill the volume from a few of its own annotated slices (they come back unchanged)
  sdfsmis segment --query ct.nrrd --support-mask ct-annotated.seg.nrrd --out ct-full.seg.nrrd
  # liver and spleen only, on stored slices 10 to 30, with a full-size model on the GPU in half precision
  sdfsmis segment --query q.nii.gz --support s.nii.gz --support-mask m.nii.gz --labels 1,4 --range 10:30 \\
      --checkpoint sdfsmis.safetensors --base-model sd15/ --dino dinov2-small/ --device cuda --dtype float16 \\
      --out q-seg.nii.gz
  # after a first run, correct a few query slices and rerun: they are kept and become extra supports
  sdfsmis segment --query patient2.nii.gz --support patient1.nii.gz --support-mask patient1-3slices.nrrd \\
      --query-mask patient2-corrected-slices.seg.nrrd --range 12:40 --out patient2-v2.seg.nrrd
  # a DICOM series: write a DICOM-SEG referencing it (and a .seg.nrrd); --query-dicom is an alias of --query
  sdfsmis segment --query-dicom ct-series/ --support-mask ct-annotated.seg.nrrd --out-dicom-seg ct-seg.dcm \\
      --out ct.seg.nrrd
  # a range in mm along the superior-inferior axis (Slicer's S coordinate)
  sdfsmis segment --query q.nrrd --support s.nrrd --support-mask m.nrrd --range 120mm:260mm --out q.seg.nrrd

--range A:B: slice indices, 0-based and inclusive, along the query's stored slice axis (array axis 0 /
Slicer's K for an axial volume; for other volumes the axis nearest superior-inferior), or A mm:B mm on the
S axis (a slice is in when its centre is). Without --range the range of each label is estimated from the
support (see SDFSMISLib/inference/query_range.py); --no-refine keeps every slice of the estimate."""


def register_inference_commands(command: CommandFactory) -> None:
    """Add ``segment`` and ``demo`` to the ``sdfsmis`` parser."""
    segment = command("segment", _command_segment,
                      "segment a volume from annotated slices of a support volume (or of itself)",
                      "sdfsmis segment --query q.nii.gz --support s.nii.gz --support-mask m.nii.gz --out q.seg.nrrd")
    segment.epilog = _segment_epilog()
    segment.add_argument("--query", "--query-dicom", dest="query", type=Path, required=True,
                         help="volume to segment: a file, or a folder holding a DICOM series (alias: --query-dicom)")
    segment.add_argument("--series-uid", help="with a DICOM folder holding several series: the SeriesInstanceUID of "
                         "the one to segment")
    segment.add_argument("--support", type=Path, help="support volume; default: the query itself (same-patient mode)")
    segment.add_argument("--support-mask", type=Path, required=True,
                         help="labelmap on the support's grid with a few annotated slices (0 = background)")
    segment.add_argument("--query-mask", type=Path, help="with --support: slices of the query you annotated or "
                         "corrected (labelmap on the query grid); they are kept as annotated and used as supports")
    segment.add_argument("--labels", type=int_list, help="label ids to propagate, e.g. 1,4 (default: all present)")
    segment.add_argument("--range", help="query slices: A:B (stored slice indices) or A mm:B mm (S coordinate)")
    segment.add_argument("--no-refine", action="store_true",
                         help="keep every slice of an estimated range (no trimming of collapsed ends)")
    segment.add_argument("--k-shot", action="store_true",
                         help="use all support slices of a label as one set (default: nearest support per slice)")
    segment.add_argument("--placement", choices=("chunks", "extent"), default="chunks",
                         help="where support-patient slices sit in the query range: chunks (the paper's protocol: "
                         "support i segments chunk i) or extent (their relative height in the support organ)")
    segment.add_argument("--recipe", choices=("generic", "chaos-t2", "synapse-ct", "none"), default="generic",
                         help="preprocessing recipe of both volumes (default generic: any volume)")
    segment.add_argument("--batch-size", type=int, help="query slices per network call (default: sized for the "
                         "device, halved on out-of-memory)")
    segment.add_argument("--out", type=Path, help=f"output: {', '.join(OUTPUT_SUFFIXES)} (a plain labelmap gets "
                         "label tables beside it: .ctbl, .itksnap.txt, .labels.json)")
    segment.add_argument("--out-dicom-seg", type=Path, help="with a DICOM query: also (or only) write a DICOM-SEG "
                         "referencing the query series (e.g. seg.dcm)")
    segment.add_argument("--fractional", action="store_true", help="with --out-dicom-seg: FRACTIONAL segments "
                         "(0..255) instead of BINARY, holding the network's foreground probability around "
                         "each organ (see PropagationResult.probabilities)")
    segment.add_argument("--label-names", choices=sorted(DATASET_LABELS), default=DEFAULT_DATASET,
                         help="whose label numbering names the segments when the support mask does not (a "
                         ".seg.nrrd or a labelmap with its .labels.json/.ctbl does): chaos-t2 (1 liver, 2 right "
                         "kidney, 3 left kidney, 4 spleen) or synapse-ct (1 spleen, 2 right kidney, 3 left "
                         "kidney, 6 liver); default %(default)s")
    _add_model_arguments(segment)

    demo = command("demo", _command_demo,
                   "offline demo: propagate a phantom patient's 3 annotated slices per organ to another phantom",
                   "sdfsmis demo --out sdfsmis-demo")
    demo.add_argument("--out", type=Path, default=DEMO_OUT, help=f"output folder (default ./{DEMO_OUT})")
    demo.add_argument("--phantoms", type=Path, help="folder with image_<id>/label_<id> patients (default: the "
                      "bundled phantoms)")
    _add_model_arguments(demo)
