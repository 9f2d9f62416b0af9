"""Read one DICOM image series as pydicom headers in grid order, with the checks a DICOM-SEG depends on.

This is the one DICOM reader: volumes (:func:`SDFSMISLib.io.volumes.read_volume` of a folder), the command
line and the DICOM-SEG writer all go through :func:`read_series`. Folders come as PACS exports and CD/DVD
copies have them: a DICOMDIR is followed when present, otherwise every file below the folder is looked at
(with or without extension, with or without file meta, ``force``-read); files that are not DICOM are
ignored, and DICOM objects that hold no image (RT structure sets, structured reports, presentation states,
key objects, segmentations) are skipped with a note in :attr:`DicomSeries.notes`. Pixel data of every
transfer syntax a scanner writes (JPEG baseline, extended and lossless, JPEG-LS, JPEG 2000, RLE, deflate,
big endian) is decoded by the GDCM inside SimpleITK; a file that cannot be decoded is named.

Identity is kept as the standard says: a dataset whose SOPClassUID or SOPInstanceUID an anonymiser emptied
takes them from its file meta (MediaStorageSOPClassUID / MediaStorageSOPInstanceUID), which must agree where
both are set; identity that no file holds is never invented (:func:`seg_identity_problem`).

Why: a DICOM-SEG references each source image and gives each frame that image's position, so the exporter
needs the source datasets *and* the voxel grid a segmentation was made on, and must know which file is slice
``k`` of that grid. :func:`read_series` sorts the images along the slice normal (``row x column`` direction of
ImageOrientationPatient), as SimpleITK/GDCM do, so ``series.datasets[k]`` is ``array[k]`` of
:func:`DicomSeries.read_volume`, whatever the file names or InstanceNumbers.

A series a voxel grid cannot describe is refused with an :class:`~SDFSMISLib.errors.InputError` that names
the problem and the fix: several series in the folder (pick one by SeriesInstanceUID), several frames of
reference, images of different size, spacing or orientation, two images at one position (echoes, phases),
unequal gaps between slices (a missing slice) and a sheared stack (gantry tilt).
"""

from __future__ import annotations

import copy
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ..errors import InputError
from .volumes import Volume

#: Largest deviation of a slice gap from the mean gap, as a fraction of the mean gap (and at least 0.01 mm).
SPACING_TOLERANCE = 0.01
#: Largest difference between direction cosines, or between pixel spacings (mm), of images of one series.
GEOMETRY_TOLERANCE = 1e-4
_NEEDED = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
#: Attributes a DICOM-SEG copies from its source or references it by: empty in the source, they cannot be
#: recovered, and a SEG made with invented ones would not belong to the patient's study.
SEG_IDENTITY = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPClassUID", "SOPInstanceUID")
#: Where an anonymiser's empty dataset UIDs can be taken from: the file meta of the same file.
_FILE_META_IDENTITY = {"SOPClassUID": "MediaStorageSOPClassUID", "SOPInstanceUID": "MediaStorageSOPInstanceUID"}


@dataclass(frozen=True)
class DicomSeries:
    """One image series: headers (no pixel data) sorted along the slice normal, and the grid they form.

    ``datasets[k]`` and ``files[k]`` are slice ``k`` of :meth:`grid` (array axis 0).
    """

    datasets: tuple[Dataset, ...]
    files: tuple[Path, ...]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    #: What was skipped or recovered on the way (non-image objects, UIDs taken from the file meta), for the user.
    notes: tuple[str, ...] = ()

    @property
    def shape(self) -> tuple[int, int, int]:
        """The grid shape ``[K, J, I]``: slices, rows, columns."""
        return len(self.datasets), int(self.datasets[0].Rows), int(self.datasets[0].Columns)

    @property
    def series_instance_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.datasets[0].FrameOfReferenceUID)

    def grid(self) -> Volume:
        """The series' grid as a volume of zeros (a read-only view: it takes no memory)."""
        return Volume(np.broadcast_to(np.zeros((), np.uint8), self.shape), self.spacing, self.origin, self.direction)

    def read_volume(self) -> Volume:
        """The voxels (rescaled to real values), read by SimpleITK in this order, on exactly :meth:`grid`."""
        for path in self.files:
            _check_pixel_data(path)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(path) for path in self.files])
        try:
            volume = Volume.from_image(reader.Execute())
        except RuntimeError as error:
            raise InputError(f"the DICOM series {self.series_instance_uid} could not be read: "
                             f"{_unreadable_file(self.files)}") from error
        if not volume.same_grid(self.grid(), tolerance=1e-3):
            raise InputError(f"the DICOM series {self.series_instance_uid} reads as a grid (origin {volume.origin}, "
                             f"direction {volume.direction}) that differs from its image positions; check its "
                             "ImagePositionPatient and ImageOrientationPatient values")
        return volume


def read_series(source: Path | str | Sequence[Path | str], series_uid: str | None = None) -> DicomSeries:
    """The one image series in ``source`` (or the one with ``series_uid``), checked and sorted into a grid.

    ``source`` is a folder (its files, not subfolders) or a list of files, such as 3D Slicer's
    ``slicer.dicomDatabase.filesForSeries(uid)``.
    """
    if isinstance(source, (str, Path)):
        folder = Path(source)
        if not folder.is_dir():
            raise InputError(f"{folder} is not a folder; give the folder holding the DICOM series' files "
                             "(without a DICOM source, save a .seg.nrrd instead of a DICOM-SEG)")
        paths, where = _dicom_files(folder), str(folder)
    else:
        paths, where = [Path(path) for path in source], f"the {len(source)} files given"
        missing = [str(path) for path in paths if not path.is_file()]
        if missing:
            raise InputError(f"DICOM file {missing[0]} does not exist ({len(missing)} of {where} are missing)")
    groups, skipped = _series_in(paths)
    notes = tuple(f"skipped {count} {kind} object(s) that hold no image" for kind, count in sorted(skipped.items()))
    if not groups:
        found = f" (only {', '.join(sorted(skipped))})" if skipped else ""
        raise InputError(f"{where} holds no DICOM series: it holds no DICOM images{found}; give the folder of the "
                         "image series (CT, MR, ...) the segmentation is made on, or a volume file")
    if series_uid is None and len(groups) > 1:
        raise InputError(f"{where} holds {len(groups)} DICOM series: {_listing(groups)}. Pick one with "
                         "--series-uid UID, or move each series into its own folder")
    uid = series_uid if series_uid is not None else next(iter(groups))
    if uid not in groups:
        raise InputError(f"{where} has no DICOM series {uid!r}; it holds {_listing(groups)}")
    items = [(path, _with_file_meta_identity(path, dataset)) for path, dataset in groups[uid]]
    recovered = sum(dataset is not original for (_, dataset), (_, original) in zip(items, groups[uid]))
    if recovered:
        notes += (f"took SOPClassUID/SOPInstanceUID of {recovered} image(s) from their file meta (the datasets' "
                  "own were empty)",)
    if len(items) == 1 and int(items[0][1].get("NumberOfFrames", 1) or 1) == 1:
        raise InputError(f"{where}: series {uid} is a single 2-D image ({items[0][0].name}); SDFSMIS segments "
                         "volumes: give the folder of the whole series")
    series = _sorted_series(uid, items)
    return DicomSeries(series.datasets, series.files, series.spacing, series.origin, series.direction, notes)


def seg_identity_problem(series: DicomSeries) -> str:
    """An empty string when every image has the identity a DICOM-SEG copies and references, else which
    attribute is missing where, and what to write instead. Checked before any work when a SEG is asked for."""
    for keyword in SEG_IDENTITY:
        empty = [path.name for path, dataset in zip(series.files, series.datasets) if not str(dataset.get(keyword, ""))]
        if empty:
            return (f"the DICOM series has no {keyword} in {len(empty)} of its {len(series.files)} images (e.g. "
                    f"{empty[0]}; an anonymiser may have emptied it), and a DICOM-SEG must copy the source's "
                    "identity, which SDFSMIS never invents. Write --out result.seg.nrrd instead (3D Slicer opens it), "
                    "or export the series again with its UIDs kept")
    return ""


def _dicom_files(folder: Path) -> list[Path]:
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


def _listing(groups: dict[str, list[tuple[Path, Dataset]]]) -> str:
    """Each series with what a user recognises it by: description, modality, size, UID."""
    def line(uid: str, items: list[tuple[Path, Dataset]]) -> str:
        first = items[0][1]
        return (f"'{first.get('SeriesDescription', '') or 'no description'}' ({first.get('Modality', '?')}, "
                f"{len(items)} x {first.get('Rows', '?')} x {first.get('Columns', '?')}, UID {uid})")

    return "; ".join(line(uid, items) for uid, items in groups.items())


def _with_file_meta_identity(path: Path, dataset: Dataset) -> Dataset:
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


def _check_pixel_data(path: Path) -> None:
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


def _unreadable_file(files: Sequence[Path]) -> str:
    """Which file of a series stopped SimpleITK, and why (read one by one only once the series failed)."""
    for path in files:
        try:
            sitk.ReadImage(str(path))
        except RuntimeError as error:
            reason = str(error).strip().splitlines()[-1]
            return (f"{path} cannot be decoded ({reason}); it is probably truncated or damaged: copy or export it "
                    "again, or move it out of the folder")
    return "SimpleITK could not assemble the images into one volume; export the series again"


def _series_in(paths: Iterable[Path]) -> tuple[dict[str, list[tuple[Path, Dataset]]], Counter[str]]:
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


def _sorted_series(uid: str, items: list[tuple[Path, Dataset]]) -> DicomSeries:
    """Check the images form one regular grid and sort them along the slice normal."""
    where = f"DICOM series {uid}"
    for path, dataset in items:
        missing = [keyword for keyword in _NEEDED if keyword not in dataset]
        if missing:
            raise InputError(f"{where}: {path.name} lacks {', '.join(missing)}, so its position in space is unknown; "
                             "a DICOM-SEG needs cross-sectional images (CT, MR, PET) with image plane attributes")
        if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
            raise InputError(f"{where}: {path.name} is a multi-frame (enhanced) image, which is not supported; "
                             "convert the series to single-frame images, or save a .seg.nrrd instead")
    studies = {str(dataset.get("StudyInstanceUID", "")) for _, dataset in items}
    if len(studies) > 1:
        raise InputError(f"{where} spans {len(studies)} studies (StudyInstanceUID differs between its images); "
                         "a series belongs to one study: fix the files' StudyInstanceUID or export them again")
    frames = {str(dataset.get("FrameOfReferenceUID", "")) for _, dataset in items}
    if len(frames) > 1:
        listing = ", ".join(sorted(frame or "none" for frame in frames))
        raise InputError(f"{where} mixes {len(frames)} frames of reference ({listing}); "
                         "its slices are not in one coordinate system, so no voxel grid holds them: export a "
                         "series acquired in one frame of reference (or split the folder by FrameOfReferenceUID)")
    first = items[0][1]
    orientation = np.asarray(first.ImageOrientationPatient, dtype=float)
    spacing = np.asarray(first.PixelSpacing, dtype=float)
    for path, dataset in items:
        if (int(dataset.Rows), int(dataset.Columns)) != (int(first.Rows), int(first.Columns)):
            raise InputError(f"{where}: {path.name} is {dataset.Rows}x{dataset.Columns} pixels, other images "
                             f"{first.Rows}x{first.Columns}; a series for one grid needs one image size")
        if not np.allclose(np.asarray(dataset.ImageOrientationPatient, dtype=float), orientation,
                           atol=GEOMETRY_TOLERANCE):
            raise InputError(f"{where}: {path.name} has another ImageOrientationPatient than the other images "
                             "(a localizer or a multi-planar series?); export the images of one orientation")
        if not np.allclose(np.asarray(dataset.PixelSpacing, dtype=float), spacing, atol=GEOMETRY_TOLERANCE):
            raise InputError(f"{where}: {path.name} has PixelSpacing {list(dataset.PixelSpacing)}, other images "
                             f"{list(first.PixelSpacing)}; a series for one grid needs one pixel spacing")
    row, column = orientation[:3], orientation[3:]
    normal = np.cross(row, column)
    positions = np.array([np.asarray(dataset.ImagePositionPatient, dtype=float) for _, dataset in items])
    heights = positions @ normal
    order = np.argsort(heights, kind="stable")
    items = [items[index] for index in order]
    positions, heights = positions[order], heights[order]
    slice_spacing = _slice_spacing(where, items, positions, heights, normal, first)
    return DicomSeries(tuple(dataset for _, dataset in items), tuple(path for path, _ in items),
                       (float(spacing[1]), float(spacing[0]), slice_spacing), tuple(float(v) for v in positions[0]),
                       tuple(float(v) for v in np.column_stack((row, column, normal)).ravel()))


def _slice_spacing(where: str, items: list[tuple[Path, Dataset]], positions: np.ndarray, heights: np.ndarray,
                   normal: np.ndarray, first: Dataset) -> float:
    """The gap between slices, after checking that every gap is the same and runs along the normal."""
    if len(items) == 1:
        return float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
    gaps = np.diff(heights)
    if gaps.min() <= 1e-3:
        index = int(np.argmin(gaps))
        raise InputError(f"{where}: {items[index][0].name} and {items[index + 1][0].name} lie at the same position; "
                         "the folder holds several images per slice (echoes, phases or a duplicate series): "
                         "keep one image per position")
    mean = float(gaps.mean())
    if np.abs(gaps - mean).max() > max(SPACING_TOLERANCE * mean, 0.01):
        index = int(np.argmax(np.abs(gaps - mean)))
        raise InputError(f"{where} has inconsistent slice spacing: gaps from {gaps.min():.3f} to {gaps.max():.3f} mm "
                         f"(largest deviation between {items[index][0].name} and {items[index + 1][0].name}); "
                         "a slice is probably missing, or the series has variable spacing. Export the complete "
                         "series, or resample it to regular spacing and segment the resampled volume")
    steps = np.diff(positions, axis=0)
    sideways = np.linalg.norm(steps - np.outer(steps @ normal, normal), axis=1)
    if sideways.max() > max(SPACING_TOLERANCE * mean, 0.01):
        raise InputError(f"{where}: successive slices are shifted sideways by up to {sideways.max():.3f} mm "
                         "(gantry tilt or a sheared stack), which a voxel grid cannot hold; resample the series "
                         "to an orthogonal grid first")
    return mean
