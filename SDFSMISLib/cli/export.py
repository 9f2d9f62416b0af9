"""``sdfsmis export``: turn a labelmap or a ``.seg.nrrd`` into a DICOM-SEG of its DICOM series, or into another
segmentation file with names, colours and codes.

Why a separate command: a segmentation is often made, checked or corrected first (in 3D Slicer, or by
``sdfsmis segment`` on a NIfTI converted from DICOM) and only then sent to a PACS; this step needs the source
DICOM series but no model. The input's label names come from its segments (``.seg.nrrd``) or label tables
(``.labels.json``/``.ctbl`` beside a labelmap), else from ``--label-names``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from ..io.labels import DATASET_LABELS, DEFAULT_DATASET
from ..io.segmentation_files import OUTPUT_SUFFIXES, check_output_path, read_segmentation, write_labelmap
from .training import CommandFactory


def _command_export(args: argparse.Namespace) -> None:
    if args.out is None and args.out_dicom_seg is None:
        raise InputError("give --out-dicom-seg FILE (with --dicom DIR) and/or --out FILE "
                         f"({', '.join(OUTPUT_SUFFIXES)})")
    if args.out is not None:
        check_output_path(args.out)
    series = None
    if args.out_dicom_seg is not None:
        from ..io.dicom_series import read_series

        if args.dicom is None:
            raise InputError("--out-dicom-seg needs --dicom DIR, the DICOM series the labelmap was made on: a "
                             "DICOM-SEG references its source images and takes their patient, study and geometry. "
                             "Without a DICOM source, write a 3D Slicer segmentation instead: --out result.seg.nrrd")
        if args.out_dicom_seg.is_dir():
            raise InputError(f"--out-dicom-seg {args.out_dicom_seg} is a folder; give a file name such as seg.dcm")
        series = read_series(args.dicom, args.series_uid)
    elif args.dicom is not None or args.fractional:
        raise InputError(f"{'--dicom' if args.dicom is not None else '--fractional'} is for a DICOM-SEG; "
                         "add --out-dicom-seg FILE")
    segmentation = read_segmentation(args.labelmap, args.label_names)
    if series is not None:
        from ..io.dicom_seg import write_dicom_seg

        written = write_dicom_seg(segmentation.labelmap, series, args.out_dicom_seg, segmentation.structures,
                                  fractional=args.fractional, checkpoint=args.checkpoint,
                                  algorithm_type=args.algorithm_type, dataset=args.label_names)
        print(f"wrote {written} (DICOM-SEG of series {series.series_instance_uid}, "
              f"{len(series.datasets)} source images)")
    if args.out is not None:
        print(f"wrote {write_labelmap(args.out, segmentation.labelmap, segmentation.structures)}")


def _export_epilog() -> str:
    return """examples:
  # DICOM-SEG of the series the segmentation was made on (any labelmap or .seg.nrrd on that series' grid)
  sdfsmis export liver.seg.nrrd --dicom ct-series/ --out-dicom-seg liver-seg.dcm
  # record the model: AlgorithmParameters gets the checkpoint's SHA-256
  sdfsmis export result.nii.gz --dicom mr-series/ --out-dicom-seg result.dcm --checkpoint sdfsmis.safetensors
  # a labelmap to a 3D Slicer segmentation with names, colours and codes (CT numbering: 1 spleen ... 6 liver)
  sdfsmis export synapse-label.nii.gz --label-names synapse-ct --out synapse.seg.nrrd
  # a Slicer segmentation to a NIfTI labelmap with .ctbl, .itksnap.txt and .labels.json label tables
  sdfsmis export corrected.seg.nrrd --out corrected.nii.gz

The labelmap must hold the series' voxels: the same grid, or the same voxels stored flipped, with axes
permuted, or cropped (as Slicer saves .seg.nrrd); anything else must be resampled onto the series first."""


def register_export_commands(command: CommandFactory) -> None:
    """Add ``export`` to the ``sdfsmis`` parser."""
    export = command("export", _command_export,
                     "write a labelmap or .seg.nrrd as a DICOM-SEG of its DICOM series, or as another "
                     "segmentation file with names",
                     "sdfsmis export result.seg.nrrd --dicom series/ --out-dicom-seg result.dcm")
    export.epilog = _export_epilog()
    export.add_argument("labelmap", type=Path, help="the segmentation: .seg.nrrd, or a labelmap (.nrrd, .nii.gz, "
                        ".nii, .mha) with optional .labels.json/.ctbl beside it")
    export.add_argument("--dicom", type=Path, help="folder holding the DICOM series the segmentation was made on")
    export.add_argument("--series-uid", help="with several series in --dicom: the SeriesInstanceUID to reference")
    export.add_argument("--out-dicom-seg", type=Path, help="DICOM-SEG file to write (needs --dicom)")
    export.add_argument("--out", type=Path, help=f"segmentation file to write: {', '.join(OUTPUT_SUFFIXES)}")
    export.add_argument("--fractional", action="store_true", help="FRACTIONAL segments (0..255, holding the "
                        "labelmap's 0/1) instead of BINARY")
    export.add_argument("--checkpoint", type=Path, help="the model checkpoint the segmentation came from: its "
                        "SHA-256 goes into the SEG's AlgorithmParameters")
    export.add_argument("--algorithm-type", choices=("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL"), default="AUTOMATIC",
                        type=str.upper, help="SegmentAlgorithmType: SEMIAUTOMATIC for a propagated result you "
                        "corrected; default %(default)s")
    export.add_argument("--label-names", choices=sorted(DATASET_LABELS), default=DEFAULT_DATASET,
                        help="label numbering that names labels the input does not describe; default %(default)s")
