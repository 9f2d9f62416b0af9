"""Finding the DICOM images in what users give: folders as PACS exports and CD/DVD copies have them.

A DICOMDIR is followed when present, otherwise every file below the folder is looked at, with or without
extension, with or without preamble and file meta (pydicom's ``force``). Files that are not DICOM are ignored;
DICOM objects that hold no image (RT structure sets, structured reports, presentation states, key objects,
segmentations) are counted by kind so the user is told what was skipped. A file that starts as DICOM but
ends early is named, never skipped. An anonymiser's empty SOP Class/Instance UIDs are taken from the file's
own meta, as the standard allows; nothing else is recovered or invented.
"""

from __future__ import annotations

import copy
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ..errors import InputError

#: Where an anonymiser's empty dataset UIDs can be taken from: the file meta of the same file.
_FILE_META_IDENTITY = {"SOPClassUID": "MediaStorageSOPClassUID", "SOPInstanceUID": "MediaStorageSOPInstanceUID"}


def dicom_files(folder: Path) -> list[Path]:
    """The files of a DICOM folder: those its DICOMDIR names, else every file below it."""
    dicomdir = next((path for path in (folder / "DICOMDIR", folder / "dicomdir") if path.is_file()), None)
    if dicomdir is not None:
        try:
            from pydicom.fileset import FileSet

            files = [Path(instance.path) for instance in FileSet(pydicom.dcmread(dicomdir))]
        except (InvalidDicomError, OSError, ValueError, AttributeError, KeyError) as error:
            raise InputError(f"{dicomdir} could not be read ({error}); remove the DICOMDIR to read every file of "
                             f"{folder}, or copy the disc again") from error
        missing = [str(path) for path in files if not path.is_file()]
        if missing:
            raise InputError(f"{dicomdir} names {len(missing)} file(s) that are not there (e.g. {missing[0]}); "
                             "copy the whole disc or export, or remove the DICOMDIR to read the files present")
        return files
    return sorted(path for path in folder.rglob("*") if path.is_file())


def _header(path: Path) -> Dataset | None:
    """The header of a DICOM file (also one without preamble or file meta), or ``None`` for other files.

    A file that starts as DICOM but cannot be read to its end is an error naming it, not a skipped file.
    """
    damaged = (f"{path} is a DICOM file that could not be read to its end; it is probably truncated or damaged: "
               "copy or export it again, or move it out of the folder")
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        pass  # no "DICM" preamble: maybe a raw dataset without file meta (pydicom's force)
    except (OSError, ValueError, EOFError, KeyError) as error:
        raise InputError(f"{damaged} ({error})") from error
    else:  # pydicom stops quietly where a file ends: a DICOM object without its SOP class was cut short
        if "SOPClassUID" not in dataset and "SeriesInstanceUID" not in dataset:
            raise InputError(damaged)
        return dataset
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # noqa: BLE001 - any file at all may be in a folder; what pydicom cannot parse is not DICOM
        return None
    return dataset if "SOPClassUID" in dataset or "SeriesInstanceUID" in dataset else None


def _kind(dataset: Dataset) -> str:
    """What a DICOM object is, for the notes: its SOP class name, or its modality."""
    sop_class = dataset.get("SOPClassUID") or getattr(getattr(dataset, "file_meta", None),
                                                      "MediaStorageSOPClassUID", "")
    return getattr(sop_class, "name", "") or str(dataset.get("Modality", "unknown"))


def series_listing(groups: dict[str, list[tuple[Path, Dataset]]]) -> str:
    """Each series with what a user recognises it by: description, modality, size, UID."""
    def line(uid: str, items: list[tuple[Path, Dataset]]) -> str:
        first = items[0][1]
        return (f"'{first.get('SeriesDescription', '') or 'no description'}' ({first.get('Modality', '?')}, "
                f"{len(items)} x {first.get('Rows', '?')} x {first.get('Columns', '?')}, UID {uid})")

    return "; ".join(line(uid, items) for uid, items in groups.items())


def with_file_meta_identity(path: Path, dataset: Dataset) -> Dataset:
    """``dataset`` with empty SOP Class/Instance UIDs taken from its file meta (a copy; the same object when
    nothing was missing); an InputError when the two disagree."""
    meta = getattr(dataset, "file_meta", None)
    missing = {}
    for keyword, meta_keyword in _FILE_META_IDENTITY.items():
        own, stored = str(dataset.get(keyword, "") or ""), str(getattr(meta, meta_keyword, "") or "")
        if own and stored and own != stored:
            raise InputError(f"{path}: {keyword} {own} and the file meta's {meta_keyword} {stored} disagree, so the "
                             "file's identity is unknown; export the series again")
        if not own and stored:
            missing[keyword] = stored
    if not missing:
        return dataset
    dataset = copy.deepcopy(dataset)
    for keyword, value in missing.items():
        setattr(dataset, keyword, value)
    return dataset


def check_pixel_data(path: Path) -> None:
    """Refuse a file whose pixel data is cut short: the file ends inside it, or (uncompressed) it holds fewer
    bytes than its rows, columns and bits need. Reads the header only; the pixel data stays on disk."""
    dataset = pydicom.dcmread(path, defer_size=1024, force=True)
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and (syntax.is_compressed or syntax.is_deflated):  # the decoder tells
        return
    element = dataset.get_item("PixelData", keep_deferred=True) if "PixelData" in dataset else None
    if element is None:
        raise InputError(f"{path} holds no pixel data; export the series again, or move the file out of the folder")
    length = getattr(element, "length", None)
    if length is None or length == 0xFFFFFFFF:
        return
    tell = getattr(element, "value_tell", None)
    expected = (int(dataset.Rows) * int(dataset.Columns) * int(dataset.get("SamplesPerPixel", 1))
                * int(dataset.BitsAllocated) // 8 * int(dataset.get("NumberOfFrames", 1) or 1))
    if (tell is not None and tell + length > path.stat().st_size) or length < expected:
        raise InputError(f"{path} is truncated: its pixel data holds {min(length, path.stat().st_size - (tell or 0))} "
                         f"of the {expected} bytes its image needs; copy or export it again, or move it out of the "
                         "folder")


def unreadable_file(files: Sequence[Path]) -> str:
    """Which file of a series stopped SimpleITK, and why (read one by one only once the series failed)."""
    for path in files:
        try:
            sitk.ReadImage(str(path))
        except RuntimeError as error:
            reason = str(error).strip().splitlines()[-1]
            return (f"{path} cannot be decoded ({reason}); it is probably truncated or damaged: copy or export it "
                    "again, or move it out of the folder")
    return "SimpleITK could not assemble the images into one volume; export the series again"


def image_series_in(paths: Iterable[Path]) -> tuple[dict[str, list[tuple[Path, Dataset]]], Counter[str]]:
    """SeriesInstanceUID -> (file, header) of every DICOM image among ``paths``, and how many DICOM objects
    without an image were skipped, by kind (files that are not DICOM are ignored)."""
    groups: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    skipped: Counter[str] = Counter()
    for path in paths:
        if path.name.upper() == "DICOMDIR":
            continue
        dataset = _header(path)
        if dataset is None:
            continue
        if "Rows" not in dataset or "Columns" not in dataset or dataset.get("Modality") == "SEG":
            skipped[_kind(dataset)] += 1
        else:
            groups[str(dataset.get("SeriesInstanceUID", ""))].append((path, dataset))
    return dict(groups), skipped
