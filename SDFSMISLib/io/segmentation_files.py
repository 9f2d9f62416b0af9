"""Segmentation files other tools open with names and colours: Slicer ``.seg.nrrd`` and labelmaps + label tables.

Why: a labelmap alone says "voxel = 3", not "left kidney, this colour, SNOMED 64033007 + left". Every file
written here carries the label descriptions (:class:`SDFSMISLib.io.labels.Structure`: name, colour, coded
category/type/modifier) in the form the target tool reads:

* ``.seg.nrrd``: 3D Slicer's segmentation file (what ``vtkMRMLSegmentationStorageNode`` writes): a labelmap
  NRRD in LPS with one ``Segment<N>_*`` field group per label: ID ``Segment_<label>``, Name, Color (RGB in
  [0, 1]), LabelValue, Layer 0 (one shared layer), Extent (``i_min i_max j_min j_max k_min k_max``) and the
  ``TerminologyEntry`` tag; plus the reference image geometry (the full grid), so Slicer edits on that grid.
  ``slicerio.read_segmentation`` reads it too.
* ``.nrrd``, ``.nii.gz``, ``.nii``, ``.mha``: a plain labelmap, with three label tables beside it (same stem):
  ``<stem>.ctbl`` (3D Slicer colour table, ``id name R G B A``; spaces in names become ``_`` as Slicer does),
  ``<stem>.itksnap.txt`` (ITK-SNAP label description file: Segmentation > Import Label Descriptions) and
  ``<stem>.labels.json`` (dcmqi's segmentation metadata, with the codes: ``itkimage2segimage --inputMetadata``
  accepts it, and :func:`read_segmentation` reads names, colours and codes back from it).

Every file is written atomically. Reading accepts Slicer's own ``.seg.nrrd`` files too: cropped to the
segments' extent (the grid is kept as stored: see :mod:`SDFSMISLib.io.grid_placement`) and with several layers,
which are merged into one labelmap when no two segments overlap.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .atomic import atomic_output, full_suffix
from .labels import DEFAULT_DATASET, STRUCTURES, TISSUE, Code, Structure, check_dataset, structure
from .volumes import Volume, read_volume, write_volume

SEGMENTATION_SUFFIX = ".seg.nrrd"
LABELMAP_SUFFIXES = (".nrrd", ".nii.gz", ".nii", ".mha")
OUTPUT_SUFFIXES = (SEGMENTATION_SUFFIX, *LABELMAP_SUFFIXES)
#: Label table files written beside a plain labelmap ``<stem><suffix>``: kind -> file name suffix.
LABEL_TABLES = {"slicer": ".ctbl", "itksnap": ".itksnap.txt", "dcmqi": ".labels.json"}
_EMPTY_EXTENT = "0 -1 0 -1 0 -1"
_GEOMETRY_HELP = ("Image geometry description string determining the geometry of the labelmap that is created in "
                  "course of conversion. Can be copied from a volume, using the button.")
_RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Segmentation:
    """A labelmap and the description of each of its labels (label value -> structure), in segment order."""

    labelmap: Volume
    structures: dict[int, Structure]


def check_output_path(path: Path) -> None:
    """Refuse an output format we cannot write, before any work is done."""
    if full_suffix(path).lower() not in OUTPUT_SUFFIXES:
        raise InputError(f"{path}: unknown output format {full_suffix(path)!r}; use one of "
                         f"{', '.join(OUTPUT_SUFFIXES)} (.seg.nrrd opens in 3D Slicer as a segmentation)")


def as_labels(labelmap: Volume) -> Volume:
    """``labelmap`` with an unsigned integer voxel type; non-integer or negative values are refused.

    Labelmaps saved as floats (common in NIfTI) are accepted when every value is a whole number.
    """
    array = labelmap.array
    if array.dtype == bool:
        return labelmap.with_array(array.astype(np.uint8))
    if not np.issubdtype(array.dtype, np.integer):
        if not np.isfinite(array).all() or not np.array_equal(array, np.rint(array)):
            raise InputError("the labelmap has non-integer values; a labelmap holds whole label numbers "
                             "(0 = background): is it an image or a probability map?")
    if array.size and array.min() < 0:
        raise InputError(f"the labelmap has negative values (down to {array.min():g}); labels are 0 (background) "
                         "or positive whole numbers")
    top = int(array.max()) if array.size else 0
    dtype = np.uint8 if top <= 255 else np.uint16 if top <= 65535 else np.uint32
    return labelmap if array.dtype == dtype else labelmap.with_array(array.astype(dtype))


def present_labels(labelmap: Volume | np.ndarray) -> list[int]:
    """The non-zero label values in a labelmap, ascending."""
    array = labelmap.array if isinstance(labelmap, Volume) else labelmap
    return [int(value) for value in np.unique(array) if value != 0]


def describe(labels: Iterable[int] | Mapping[int, Structure], known: Mapping[int, Structure] | None = None,
             dataset: str = DEFAULT_DATASET) -> dict[int, Structure]:
    """Label value -> structure: from ``labels`` when it is a mapping, else ``known``, else the catalogue."""
    if isinstance(labels, Mapping):
        return {int(label): style for label, style in labels.items()}
    check_dataset(dataset)
    known = known or {}
    return {int(label): known.get(int(label)) or structure(int(label), dataset) for label in labels}


def segmentation_metadata(labels: np.ndarray, structures: Iterable[int] | Mapping[int, Structure],
                          geometry: Volume | None = None) -> dict[str, str]:
    """3D Slicer's ``.seg.nrrd`` fields for a ``[K, J, I]`` labelmap: one segment per label, all in layer 0.

    ``structures`` is label value -> structure, or label values described from the catalogue. With
    ``geometry``, the full grid is recorded as the segmentation's reference image geometry.
    """
    metadata = {"Segmentation_MasterRepresentation": "Binary labelmap",
                "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
                "Segmentation_ReferenceImageExtentOffset": "0 0 0"}
    if geometry is not None:
        metadata["Segmentation_ConversionParameters"] = (f"Reference image geometry|{_slicer_geometry(geometry)}|"
                                                         f"{_GEOMETRY_HELP}&")
    for index, (label, style) in enumerate(describe(structures).items()):
        fields = {"ID": f"Segment_{label}", "Name": style.name, "NameAutoGenerated": "0",
                  "Color": " ".join(f"{channel:.6g}" for channel in style.colour_fraction), "ColorAutoGenerated": "0",
                  "LabelValue": str(label), "Layer": "0", "Extent": _extent(labels == label),
                  "Tags": f"Segmentation.Status:inprogress|TerminologyEntry:{style.terminology_tag()}|"}
        metadata.update({f"Segment{index}_{key}": value for key, value in fields.items()})
    return metadata


def _extent(mask: np.ndarray) -> str:
    """The segment's bounding box as Slicer stores it: ``i_min i_max j_min j_max k_min k_max``."""
    if not mask.any():
        return _EMPTY_EXTENT
    bounds = [np.flatnonzero(mask.any(axis=others)) for others in ((0, 1), (0, 2), (1, 2))]  # i, j, k
    return " ".join(f"{indices[0]} {indices[-1]}" for indices in bounds)


def _slicer_geometry(volume: Volume) -> str:
    """Slicer's geometry string: the IJK-to-RAS matrix row by row, then the extent, ``;``-separated."""
    matrix = np.eye(4)
    matrix[:3, :3] = _RAS_FROM_LPS @ volume.direction_matrix() * np.asarray(volume.spacing)
    matrix[:3, 3] = _RAS_FROM_LPS @ np.asarray(volume.origin)
    sizes = volume.array.shape[::-1]
    values = [f"{value:.17g}" for value in matrix.ravel()] + [str(v) for size in sizes for v in (0, size - 1)]
    return ";".join(values) + ";"


def write_segmentation(path: Path | str, labelmap: Volume,
                       structures: Mapping[int, Structure] | Iterable[int] | None = None) -> Path:
    """Write ``labelmap`` as a 3D Slicer ``.seg.nrrd`` on its own grid; returns the path.

    ``structures`` (label value -> description) names the segments, in that order; labels it lacks, or all
    labels present when it is ``None``, are described from :func:`SDFSMISLib.io.labels.structure`. A described
    label absent from the labelmap becomes an empty segment.
    """
    path = Path(path)
    if full_suffix(path).lower() != SEGMENTATION_SUFFIX:
        raise InputError(f"{path}: a Slicer segmentation file must end in {SEGMENTATION_SUFFIX}")
    labelmap = as_labels(labelmap)
    described = _with_present(labelmap, structures)
    image = labelmap.to_image()
    for key, value in segmentation_metadata(labelmap.array, described, labelmap).items():
        image.SetMetaData(key, value)
    with atomic_output(path) as temporary:
        sitk.WriteImage(image, str(temporary), useCompression=True)
    return path


def _with_present(labelmap: Volume, structures: Mapping[int, Structure] | Iterable[int] | None) -> dict[int, Structure]:
    """The described labels, then every other label present in the labelmap (from the catalogue)."""
    described = describe(structures if structures is not None else [])
    return {**described, **describe([label for label in present_labels(labelmap) if label not in described])}


def write_labelmap(path: Path | str, labelmap: Volume,
                   structures: Mapping[int, Structure] | Iterable[int] | None = None) -> Path:
    """Write ``labelmap`` as a ``.seg.nrrd`` or as a plain labelmap with its label tables (see the module doc)."""
    path = Path(path)
    check_output_path(path)
    if full_suffix(path).lower() == SEGMENTATION_SUFFIX:
        return write_segmentation(path, labelmap, structures)
    labelmap = as_labels(labelmap)
    described = _with_present(labelmap, structures)
    write_label_tables(path, described)
    return write_volume(path, labelmap)


def label_table_paths(labelmap_path: Path | str) -> dict[str, Path]:
    """The label table files beside a plain labelmap: kind (``slicer``, ``itksnap``, ``dcmqi``) -> path."""
    path = Path(labelmap_path)
    stem = path.name[: -len(full_suffix(path))] if full_suffix(path) else path.name
    return {kind: path.with_name(stem + suffix) for kind, suffix in LABEL_TABLES.items()}


def write_label_tables(labelmap_path: Path | str, structures: Mapping[int, Structure]) -> dict[str, Path]:
    """Write the Slicer, ITK-SNAP and dcmqi label tables of ``structures`` beside ``labelmap_path``."""
    paths = label_table_paths(labelmap_path)
    texts = {"slicer": slicer_colour_table(structures), "itksnap": itksnap_label_descriptions(structures),
             "dcmqi": json.dumps(dcmqi_metadata(structures), indent=2) + "\n"}
    for kind, path in paths.items():
        with atomic_output(path) as temporary:
            temporary.write_text(texts[kind], encoding="utf-8")
    return paths


def slicer_colour_table(structures: Mapping[int, Structure]) -> str:
    """A 3D Slicer colour table (``.ctbl``): ``id name R G B A`` per label, 0 = transparent background."""
    lines = ["# Color table file written by SDFSMIS (3D Slicer format: id name R G B A)",
             f"# {len(structures) + 1} values", "0 background 0 0 0 0"]
    lines += [f"{label} {style.name.replace(' ', '_')} {' '.join(map(str, style.colour))} 255"
              for label, style in sorted(structures.items())]
    return "\n".join(lines) + "\n"


def itksnap_label_descriptions(structures: Mapping[int, Structure]) -> str:
    """An ITK-SNAP label description file: ``IDX R G B A VIS MSH "LABEL"`` per label."""
    lines = ["################################################", "# ITK-SnAP Label Description File",
             "# written by SDFSMIS", "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
             "################################################",
             '    0     0    0    0        0  0  0    "Clear Label"']
    for label, style in sorted(structures.items()):
        red, green, blue = style.colour
        name = style.name.replace('"', "'")
        lines.append(f'{label:5d} {red:5d} {green:4d} {blue:4d}        1  1  1    "{name}"')
    return "\n".join(lines) + "\n"


def _dcmqi_code(code: Code) -> dict[str, str]:
    return {"CodeValue": code.value, "CodingSchemeDesignator": code.scheme, "CodeMeaning": code.meaning}


def dcmqi_metadata(structures: Mapping[int, Structure], algorithm: str = "SDFSMIS") -> dict:
    """dcmqi's segmentation metadata (``itkimage2segimage --inputMetadata``) for a labelmap with these labels."""
    attributes = []
    for label, style in sorted(structures.items()):
        item = {"labelID": label, "SegmentLabel": style.name, "SegmentDescription": style.name,
                "SegmentAlgorithmType": "AUTOMATIC", "SegmentAlgorithmName": algorithm,
                "SegmentedPropertyCategoryCodeSequence": _dcmqi_code(style.category),
                "SegmentedPropertyTypeCodeSequence": _dcmqi_code(style.type),
                "recommendedDisplayRGBValue": list(style.colour)}
        if style.modifier is not None:
            item["SegmentedPropertyTypeModifierCodeSequence"] = _dcmqi_code(style.modifier)
        attributes.append(item)
    # ContentCreatorName is a person name (PN): "family^given", else dciodvfy warns of the retired form.
    return {"ContentCreatorName": f"{algorithm}^Algorithm", "ClinicalTrialSeriesID": "1",
            "ClinicalTrialTimePointID": "1", "ClinicalTrialCoordinatingCenterName": algorithm,
            "SeriesDescription": f"{algorithm} segmentation", "SeriesNumber": "300", "InstanceNumber": "1",
            "ContentLabel": algorithm, "ContentDescription": "SD-FSMIS few-shot segmentation",
            "segmentAttributes": [attributes]}


def read_labelmap(path: Path | str) -> Volume:
    """A mask file: any volume format, or a 3D Slicer ``.seg.nrrd`` (its segments merged into one labelmap)."""
    return read_segmentation(path).labelmap


def read_segmentation(path: Path | str, dataset: str = DEFAULT_DATASET) -> Segmentation:
    """A labelmap and its label descriptions, from a ``.seg.nrrd`` or a plain labelmap (+ label tables).

    Descriptions come from the file's segments (``.seg.nrrd``), else from the ``.labels.json`` or ``.ctbl``
    beside the labelmap, else from the catalogue in ``dataset``'s numbering.
    """
    path = Path(path)
    if full_suffix(path).lower() != SEGMENTATION_SUFFIX:
        labelmap = read_volume(path)
        return Segmentation(labelmap, describe(present_labels(labelmap), _label_tables(path), dataset))
    if not path.is_file():
        raise InputError(f"{path} does not exist; give the segmentation file saved by 3D Slicer")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"{path} could not be read as a segmentation ({error}); save it again from Slicer") from error
    segments = _segment_fields(image)
    layers = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() == 1:
        layers = layers[..., np.newaxis]
    geometry = Volume(np.zeros((1, 1, 1), np.uint8), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    if not segments:  # a plain labelmap NRRD with a .seg.nrrd name
        if layers.shape[-1] != 1:
            raise InputError(f"{path} has {layers.shape[-1]} layers but no segment descriptions; save it again "
                             "from Slicer")
        labelmap = Volume(layers[..., 0], geometry.spacing, geometry.origin, geometry.direction)
        return Segmentation(labelmap, describe(present_labels(labelmap), dataset=dataset))
    labelmap, structures = _merge_layers(path, layers, segments, dataset)
    return Segmentation(Volume(labelmap, geometry.spacing, geometry.origin, geometry.direction), structures)


def _segment_fields(image: sitk.Image) -> list[dict[str, str]]:
    """The ``Segment<N>_<field>`` values of a ``.seg.nrrd`` header, one dict per segment, in N order."""
    fields: dict[int, dict[str, str]] = {}
    for key in image.GetMetaDataKeys():
        match = re.fullmatch(r"Segment(\d+)_(\w+)", key)
        if match:
            fields.setdefault(int(match.group(1)), {})[match.group(2)] = image.GetMetaData(key)
    return [fields[index] for index in sorted(fields)]


def _merge_layers(path: Path, layers: np.ndarray, segments: list[dict[str, str]],
                  dataset: str) -> tuple[np.ndarray, dict[int, Structure]]:
    """One labelmap of all segments (each keeps its label value unless another segment took it)."""
    single_layer = layers.shape[-1] == 1 and all(int(fields.get("Layer", 0)) == 0 for fields in segments)
    values = [int(fields.get("LabelValue", index + 1)) for index, fields in enumerate(segments)]
    if single_layer and len(set(values)) == len(values):
        return layers[..., 0], {value: _structure_of(fields, value, dataset) for value, fields in zip(values, segments)}
    labelmap = np.zeros(layers.shape[:-1], dtype=np.uint16 if len(segments) > 255 else np.uint8)
    owner: dict[int, str] = {}
    structures = {}
    for fields, value in zip(segments, values):
        layer = int(fields.get("Layer", 0))
        if layer >= layers.shape[-1]:
            raise InputError(f"{path}: segment {fields.get('Name', value)!r} is in layer {layer}, but the file has "
                             f"{layers.shape[-1]}; save it again from Slicer")
        mask = layers[..., layer] == value
        label = value if value not in structures and value > 0 else max([*structures, *values]) + 1
        taken = np.unique(labelmap[mask])
        if taken.size and taken.max() > 0:
            other = owner[int(taken[taken > 0][0])]
            raise InputError(f"{path}: segments {other!r} and {fields.get('Name', label)!r} overlap, and a labelmap "
                             "holds one label per voxel; remove the overlap (Slicer Segment Editor: Logical "
                             "operators, or masking 'Overwrite all segments') and save again")
        labelmap[mask] = label
        structures[label] = _structure_of(fields, label, dataset)
        owner[label] = structures[label].name
    return labelmap, structures


def _structure_of(fields: Mapping[str, str], label: int, dataset: str) -> Structure:
    """The structure a Slicer segment describes: its name and colour, codes from its terminology tag."""
    fallback = structure(label, dataset)
    name = fields.get("Name") or fallback.name
    colour = fallback.colour
    if "Color" in fields:
        try:
            colour = tuple(int(round(float(value) * 255)) for value in fields["Color"].split()[:3])
        except ValueError:
            pass
    codes = _terminology_codes(fields.get("Tags", "")) or _catalogue_codes(name)
    category, kind, modifier = codes if codes else (TISSUE, TISSUE, None)
    return Structure(name, _short(name), colour, category, kind, modifier)


def _short(name: str) -> str:
    """The catalogue's short (column) name of a structure called ``name``, else the name itself."""
    return next((style.short for style in STRUCTURES.values() if style.name == name), name)


def _terminology_codes(tags: str) -> tuple[Code, Code, Code | None] | None:
    """Category, type and type modifier from a Slicer ``TerminologyEntry`` tag, when it has them."""
    for tag in tags.split("|"):
        key, _, value = tag.partition(":")
        if key.strip() != "TerminologyEntry":
            continue
        parts = value.split("~")
        codes = [_code(part) for part in parts[1:4]] if len(parts) >= 4 else []
        if len(codes) == 3 and codes[0] and codes[1]:
            return codes[0], codes[1], codes[2]
    return None


def _code(text: str) -> Code | None:
    scheme, value, meaning = ([*text.split("^"), "", ""])[:3]
    return Code(value, scheme, meaning) if value and scheme else None


def _catalogue_codes(name: str) -> tuple[Code, Code, Code | None] | None:
    for style in STRUCTURES.values():
        if style.name == name:
            return style.category, style.type, style.modifier
    return None


def _label_tables(path: Path) -> dict[int, Structure]:
    """Descriptions from the ``.labels.json`` (dcmqi) or ``.ctbl`` (Slicer) beside a labelmap; empty if none."""
    tables = label_table_paths(path)
    try:
        if tables["dcmqi"].is_file():
            return _from_dcmqi(json.loads(tables["dcmqi"].read_text(encoding="utf-8")))
        if tables["slicer"].is_file():
            return _from_colour_table(tables["slicer"].read_text(encoding="utf-8"))
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise InputError(f"the label table beside {path} could not be read ({error}); fix or delete it") from error
    return {}


def _from_dcmqi(metadata: dict) -> dict[int, Structure]:
    structures = {}
    for item in (entry for group in metadata["segmentAttributes"] for entry in group):
        codes = [item.get(key) for key in ("SegmentedPropertyCategoryCodeSequence",
                                           "SegmentedPropertyTypeCodeSequence",
                                           "SegmentedPropertyTypeModifierCodeSequence")]
        category, kind, modifier = (None if code is None else Code(code["CodeValue"], code["CodingSchemeDesignator"],
                                                                   code["CodeMeaning"]) for code in codes)
        name = item.get("SegmentLabel") or item.get("SegmentDescription") or f"label {item['labelID']}"
        colour = tuple(int(value) for value in item.get("recommendedDisplayRGBValue", (128, 174, 128)))
        structures[int(item["labelID"])] = Structure(name, _short(name), colour, category or TISSUE, kind or TISSUE,
                                                     modifier)
    return structures


def _from_colour_table(text: str) -> dict[int, Structure]:
    structures = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0].startswith("#") or int(parts[0]) == 0:
            continue
        label, name = int(parts[0]), parts[1].replace("_", " ")
        codes = _catalogue_codes(name) or (TISSUE, TISSUE, None)
        structures[label] = Structure(name, _short(name), tuple(int(value) for value in parts[2:5]), *codes)
    return structures
