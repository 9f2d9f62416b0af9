"""One catalogue of the structures we segment: names, colours, label ids and coded concepts.

Every place that shows, scores or exports a label reads it from here, so a segment is called and
coloured the same in the command line's ``.seg.nrrd``, the evaluation tables, the Slicer panel and a
DICOM-SEG, and carries the same codes in Slicer's terminology tag and in DICOM.

Codes follow DICOM (CID 7150 categories, CID 7166 types) as 3D Slicer's "General Anatomy" terminology
uses them: a kidney is type *Kidney* with the laterality as a type modifier (as in Slicer and
TotalSegmentator), not the pre-coordinated *Right kidney* concept. A label we have no entry for becomes
*Tissue*/*Tissue*, Slicer's default for a new segment, named ``label N``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError


@dataclass(frozen=True)
class Code:
    """A coded concept: ``value`` in coding ``scheme`` (``SCT`` = SNOMED CT), with its human ``meaning``."""

    value: str
    scheme: str
    meaning: str

    def slicer(self) -> str:
        """Slicer's terminology field: ``scheme^value^meaning`` (empty code: ``^^``)."""
        return f"{self.scheme}^{self.value}^{self.meaning}"


ANATOMICAL_STRUCTURE = Code("123037004", "SCT", "Anatomical Structure")
TISSUE = Code("85756007", "SCT", "Tissue")
RIGHT = Code("24028007", "SCT", "Right")
LEFT = Code("7771000", "SCT", "Left")
SLICER_ANATOMY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
SLICER_REGION_CONTEXT = "Anatomic codes - DICOM master list"
_NO_CODE = "^^"


@dataclass(frozen=True)
class Structure:
    """A segmentable structure: its display name, short column name, colour and codes."""

    name: str
    short: str
    colour: tuple[int, int, int]
    category: Code
    type: Code
    modifier: Code | None = None

    @property
    def colour_fraction(self) -> tuple[float, float, float]:
        """The colour as Slicer and DICOM want it: RGB in [0, 1]."""
        r, g, b = self.colour
        return r / 255, g / 255, b / 255

    @property
    def file_stem(self) -> str:
        """The name as a file name part: ``right_kidney``."""
        return self.name.replace(" ", "_")

    def terminology_tag(self) -> str:
        """The value of Slicer's ``TerminologyEntry`` segment tag for this structure."""
        modifier = self.modifier.slicer() if self.modifier else _NO_CODE
        context = SLICER_ANATOMY_CONTEXT
        return "~".join((context, self.category.slicer(), self.type.slicer(), modifier,
                         SLICER_REGION_CONTEXT, _NO_CODE, _NO_CODE))


#: Colours are 3D Slicer's anatomy colours; the left kidney gets a second kidney colour so both show apart.
STRUCTURES = {
    "liver": Structure("liver", "Liver", (221, 130, 101), ANATOMICAL_STRUCTURE, Code("10200004", "SCT", "Liver")),
    "spleen": Structure("spleen", "Spleen", (157, 108, 162), ANATOMICAL_STRUCTURE, Code("78961009", "SCT", "Spleen")),
    "right_kidney": Structure("right kidney", "RK", (185, 102, 83), ANATOMICAL_STRUCTURE,
                              Code("64033007", "SCT", "Kidney"), RIGHT),
    "left_kidney": Structure("left kidney", "LK", (212, 126, 151), ANATOMICAL_STRUCTURE,
                             Code("64033007", "SCT", "Kidney"), LEFT),
}

#: Label id -> structure key of each benchmark's label files (method-notes: CHAOS-T2 = Abd-MRI, Synapse = Abd-CT).
DATASET_LABELS = {
    "chaos-t2": {1: "liver", 2: "right_kidney", 3: "left_kidney", 4: "spleen"},
    "synapse-ct": {1: "spleen", 2: "right_kidney", 3: "left_kidney", 6: "liver"},
}
DEFAULT_DATASET = "chaos-t2"

#: Column order of the paper's tables (Tab. 1, 7, 8), as short names.
PAPER_ORDER = tuple(STRUCTURES[key].short for key in ("spleen", "liver", "left_kidney", "right_kidney"))

_FALLBACK_COLOURS = ((128, 174, 128), (241, 214, 145), (177, 122, 101), (111, 184, 210), (216, 101, 79),
                     (183, 156, 220), (252, 220, 130), (144, 238, 144))


def check_dataset(dataset: str) -> str:
    """``dataset`` if it is in the catalogue, else an error naming the ones that are."""
    if dataset not in DATASET_LABELS:
        raise InputError(f"unknown dataset {dataset!r}; use {', '.join(DATASET_LABELS)}")
    return dataset


def structure(label: int, dataset: str = DEFAULT_DATASET) -> Structure:
    """The structure of label id ``label`` in ``dataset``'s numbering; unknown ids become ``label N`` tissue."""
    key = DATASET_LABELS[check_dataset(dataset)].get(int(label))
    if key is not None:
        return STRUCTURES[key]
    name = f"label {int(label)}"
    return Structure(name, name, _FALLBACK_COLOURS[int(label) % len(_FALLBACK_COLOURS)], TISSUE, TISSUE)


def label_ids(dataset: str) -> dict[str, int]:
    """Structure key -> label id in ``dataset``: ``{'liver': 1, ...}``."""
    return {key: label for label, key in DATASET_LABELS[check_dataset(dataset)].items()}


def organ_ids(dataset: str) -> dict[str, int]:
    """Short organ name -> label id in ``dataset``, the keys of evaluation results: ``{'Liver': 1, ...}``."""
    return {STRUCTURES[key].short: label for label, key in DATASET_LABELS[check_dataset(dataset)].items()}
