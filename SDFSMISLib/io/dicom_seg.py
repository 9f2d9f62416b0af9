"""DICOM Segmentation (DICOM-SEG) export with highdicom, referencing the DICOM series that was segmented.

Why: PACS viewers, OHIF, 3D Slicer's DICOM module and dcmqi read segmentations as DICOM-SEG objects that
point at their source images, in the patient's study, with coded anatomy; a NIfTI labelmap fits none of that.

What a SEG written here holds:

* one segment per label present, numbered 1..n in increasing label value; SegmentLabel is the structure's
  name, SegmentDescription ``"<name>, label value <L>"`` keeps the labelmap value, the coded concepts are
  those of :mod:`SDFSMISLib.io.labels` (SNOMED CT: category Anatomical Structure 123037004; type Liver 10200004,
  Spleen 78961009, Kidney 64033007 with type modifier Right 24028007 or Left 7771000; any other label:
  Tissue 85756007 / Tissue), and the recommended display colour is the catalogue colour (CIELab);
* algorithm identification on every segment: AlgorithmName ``SDFSMIS``, AlgorithmVersion
  ``SDFSMISLib.__version__``, family DCM 123110 "Artificial Intelligence", AlgorithmSource ``SDFSMISLib``
  and, when the checkpoint is known, AlgorithmParameters ``checkpoint=<file name>,checkpoint_sha256=<hex>``
  (AlgorithmVersion is 64 characters at most, too short for the hash);
* BINARY segments by default; FRACTIONAL (PROBABILITY, 0..255) on request, from per-label probability maps
  when given, else the labelmap's 0/1 (then it carries no more than BINARY does);
* per-frame geometry, the frame of reference, patient and study copied from the source images: each frame
  is one source slice, referenced by its SOP Instance UID; frames that are empty are left out.

The labelmap must be on the series' grid (:func:`SDFSMISLib.io.dicom_series.read_series`); a labelmap that holds
the same voxels on a differently described grid (flipped, permuted, cropped) is placed onto it exactly.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import InputError
from .atomic import atomic_output
from .dicom_series import DicomSeries, read_series, seg_identity_problem
from .grid_placement import place_on_grid
from .labels import DEFAULT_DATASET, Structure
from .segmentation_files import as_labels, describe, present_labels
from .volumes import Volume

ALGORITHM_NAME = "SDFSMIS"
ALGORITHM_TYPES = ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL")
MAX_FRACTIONAL_VALUE = 255
#: Attributes highdicom copies from the source images; absent ones (type 2 in the image IODs) become empty.
_COPIED_TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                  "StudyDate", "StudyTime", "ReferringPhysicianName")
_OFF_GRID_FIX = ("export the labelmap on the series' own grid (in Slicer: the segmentation's reference geometry "
                 "is the volume loaded from this series), or resample it onto the series with nearest neighbour")


def file_sha256(path: Path | str) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks (a checkpoint can be several GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def algorithm_parameters(checkpoint: Path | str | None) -> dict[str, str] | None:
    """AlgorithmParameters of the SEG: the checkpoint's file name and SHA-256, or ``None`` without one."""
    if checkpoint is None:
        return None
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise InputError(f"checkpoint {checkpoint} does not exist; give the file the segmentation was made with")
    return {"checkpoint": checkpoint.name, "checkpoint_sha256": file_sha256(checkpoint)}


def write_dicom_seg(labelmap: Volume, series: DicomSeries | Path | str | Sequence[Path | str], out: Path | str,
                    structures: Mapping[int, Structure] | None = None, *, fractional: bool = False,
                    probabilities: Mapping[int, np.ndarray | Volume] | None = None,
                    checkpoint: Path | str | None = None, algorithm_type: str = "AUTOMATIC",
                    series_uid: str | None = None, series_description: str = "SDFSMIS segmentation",
                    dataset: str = DEFAULT_DATASET) -> Path:
    """Write ``labelmap`` as a DICOM-SEG of ``series`` (a :class:`DicomSeries` or its folder) to ``out``.

    Args:
        labelmap: label values on the series grid (0 = background); see the module docstring for the grid rule.
        series: the source images: a :class:`DicomSeries`, a folder or a list of files (see
            :func:`SDFSMISLib.io.dicom_series.read_series`); ``series_uid`` picks one when they hold several.
        structures: label value -> description; labels it lacks are described from the catalogue
            (:func:`SDFSMISLib.io.labels.structure` in ``dataset``'s numbering).
        fractional: FRACTIONAL (probability) segments instead of BINARY.
        probabilities: with ``fractional``, label -> probability map in [0, 1] on the series grid; labels
            without one use the labelmap's 0/1.
        checkpoint: the model file; its SHA-256 goes into AlgorithmParameters.
        algorithm_type: AUTOMATIC (the model's output), SEMIAUTOMATIC (edited by a person) or MANUAL.

    Returns ``out``. Nothing is written when an input is refused (:class:`InputError`).
    """
    import highdicom as hd

    algorithm_type = algorithm_type.upper()
    if algorithm_type not in ALGORITHM_TYPES:
        raise InputError(f"unknown algorithm type {algorithm_type!r}; use one of {', '.join(ALGORITHM_TYPES)}")
    if probabilities and not fractional:
        raise InputError("probability maps are stored only in a FRACTIONAL SEG; pass fractional=True (--fractional)")
    if not isinstance(series, DicomSeries):
        series = read_series(series, series_uid)
    problem = seg_identity_problem(series)
    if problem:
        raise InputError(problem)
    grid = series.grid()
    labels = place_on_grid(as_labels(labelmap), grid, "labelmap", _OFF_GRID_FIX).array
    maps = {int(label): _probability_on_grid(label, values, grid) for label, values in (probabilities or {}).items()}
    segments = sorted(set(present_labels(labels)) | {label for label, values in maps.items()
                                                     if np.rint(values * MAX_FRACTIONAL_VALUE).any()})
    if not segments:
        raise InputError("the labelmap is empty (no non-zero voxel), so the DICOM-SEG would have no segment; "
                         "check the labels were propagated (--labels) before exporting")
    described = describe(segments, dict(structures or {}), dataset)
    parameters = algorithm_parameters(checkpoint)
    descriptions = [_segment_description(hd, number, label, described[label], algorithm_type, parameters)
                    for number, label in enumerate(segments, start=1)]
    if fractional:
        pixels = np.stack([maps[label] if label in maps else (labels == label).astype(np.float32)
                           for label in segments], axis=-1)
    else:
        lookup = np.zeros(int(labels.max()) + 1, dtype=np.uint8 if len(segments) < 256 else np.uint16)
        lookup[segments] = np.arange(1, len(segments) + 1)
        pixels = lookup[labels]
    pixels = series.in_source_order(pixels)  # an enhanced source's frames keep their own order
    kind = hd.seg.SegmentationTypeValues.FRACTIONAL if fractional else hd.seg.SegmentationTypeValues.BINARY
    try:
        seg = _segmentation(hd, series, pixels, kind, descriptions, series_description)
    except (ValueError, KeyError, AttributeError) as error:  # highdicom's answers to what a source lacks
        raise InputError(f"highdicom could not build a DICOM-SEG on series {series.series_instance_uid} "
                         f"({series.files[0].parent}): {type(error).__name__}: {error}. Write --out result.seg.nrrd "
                         "instead, or export the series again") from error
    with atomic_output(out) as temporary:
        seg.save_as(temporary)
    return Path(out)


def _segmentation(hd, series: DicomSeries, pixels: np.ndarray, kind, descriptions: list,  # noqa: ANN001
                  series_description: str):  # noqa: ANN202 - highdicom is imported lazily
    return hd.seg.Segmentation(
        source_images=_complete_headers(series), pixel_array=pixels, segmentation_type=kind,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(),
        series_number=_series_number(series), sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="SDFSMIS", manufacturer_model_name="SDFSMISLib", software_versions=__version__,
        device_serial_number="1", fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=MAX_FRACTIONAL_VALUE, content_description="SD-FSMIS few-shot segmentation",
        content_label="SDFSMIS", series_description=series_description, omit_empty_frames=True)


def _probability_on_grid(label: int, values: np.ndarray | Volume, grid: Volume) -> np.ndarray:
    """A probability map as float32 on the series grid, checked to lie in [0, 1]."""
    volume = values if isinstance(values, Volume) else grid.with_array(np.asarray(values))
    array = place_on_grid(volume, grid, f"probability map of label {label}", _OFF_GRID_FIX).array.astype(np.float32)
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        raise InputError(f"the probability map of label {label} has values outside [0, 1]; give probabilities")
    return array


def _segment_description(hd, number: int, label: int, style: Structure, algorithm_type: str,  # noqa: ANN001
                         parameters: dict[str, str] | None):  # noqa: ANN202 - highdicom is imported lazily
    """One SegmentSequence item: name, codes (with the laterality modifier), colour and the algorithm."""
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    def coded(code):  # noqa: ANN001, ANN202
        return CodedConcept(code.value, code.scheme, code.meaning)

    algorithm = None if algorithm_type == "MANUAL" else hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME, family=codes.cid7162.ArtificialIntelligence, version=__version__,
        source="SDFSMISLib", parameters=parameters)
    description = hd.seg.SegmentDescription(
        segment_number=number, segment_label=style.name[:64], segmented_property_category=coded(style.category),
        segmented_property_type=coded(style.type), algorithm_type=algorithm_type,
        algorithm_identification=algorithm, display_color=hd.color.CIELabColor.from_rgb(*style.colour))
    description.SegmentDescription = f"{style.name}, label value {label}"[:64]
    if style.modifier is not None:
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            coded(style.modifier)]
    return description


def _complete_headers(series: DicomSeries) -> list:
    """The source headers, with absent type-2 patient/study attributes added empty (highdicom copies them)."""
    headers = []
    for dataset in series.datasets:
        missing = [keyword for keyword in _COPIED_TYPE_2 if keyword not in dataset]
        if missing:
            dataset = copy.deepcopy(dataset)
            for keyword in missing:
                setattr(dataset, keyword, "")
        headers.append(dataset)
    return headers


def _series_number(series: DicomSeries) -> int:
    """The SEG's SeriesNumber: the source's plus 1000 (a common convention for derived series)."""
    try:
        return int(series.datasets[0].get("SeriesNumber") or 0) + 1000
    except (TypeError, ValueError):
        return 1000
