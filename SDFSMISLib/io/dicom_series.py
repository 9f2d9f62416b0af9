"""Read one DICOM image series as pydicom headers in grid order, with the checks a DICOM-SEG depends on.

This is the one DICOM reader: volumes (:func:`SDFSMISLib.io.volumes.read_volume` of a folder), the command
line and the DICOM-SEG writer all go through :func:`read_series`; which files hold images, and their
identity, is :mod:`SDFSMISLib.io.dicom_files`' job. A series is single-frame images (one file per slice) or
one enhanced multi-frame image (CT, MR, legacy-converted), whose frames are placed by their per-frame plane
positions. Pixel data of every transfer syntax a scanner writes (JPEG baseline, extended and lossless,
JPEG-LS, JPEG 2000, RLE, deflate, big endian) is decoded by the GDCM inside SimpleITK; a file that cannot be
decoded is named. Identity that no file holds is never invented for a DICOM-SEG (:func:`seg_identity_problem`).

Why: a DICOM-SEG references each source image and gives each frame that image's position, so the exporter
needs the source datasets *and* the voxel grid a segmentation was made on, and must know which file is slice
``k`` of that grid. :func:`read_series` sorts the images (or frames) along the slice normal (``row x column``
direction of ImageOrientationPatient), as SimpleITK/GDCM do, so ``series.datasets[k]`` (or frame
``series.frames[k]``) is ``array[k]`` of :meth:`DicomSeries.read_volume`, whatever the file names,
InstanceNumbers or frame order.

A series a voxel grid cannot describe is refused with an :class:`~SDFSMISLib.errors.InputError` that names
the problem and the fix: several series in the folder (pick one by SeriesInstanceUID), several frames of
reference, images of different size, spacing or orientation, two images at one position (echoes, phases),
unequal gaps between slices (a missing slice) and a sheared stack (gantry tilt).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from ..errors import InputError
from .dicom_files import (check_pixel_data, dicom_files, image_series_in, series_listing, unreadable_file,
                          with_file_meta_identity)
from .volumes import Volume

#: Largest deviation of a slice gap from the mean gap, as a fraction of the mean gap (and at least 0.01 mm).
SPACING_TOLERANCE = 0.01
#: Largest difference between direction cosines, or between pixel spacings (mm), of images of one series.
GEOMETRY_TOLERANCE = 1e-4
_NEEDED = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
#: Attributes a DICOM-SEG copies from its source or references it by: empty in the source, they cannot be
#: recovered, and a SEG made with invented ones would not belong to the patient's study.
SEG_IDENTITY = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPClassUID", "SOPInstanceUID")


@dataclass(frozen=True)
class DicomSeries:
    """One image series: headers (no pixel data) sorted along the slice normal, and the grid they form.

    Single-frame images: ``datasets[k]`` and ``files[k]`` are slice ``k`` of :meth:`grid` (array axis 0).
    One enhanced multi-frame image: ``datasets`` and ``files`` hold it alone, and slice ``k`` is its frame
    ``frames[k]`` (0-based, in the file's frame order).
    """

    datasets: tuple[Dataset, ...]
    files: tuple[Path, ...]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    #: What was skipped or recovered on the way (non-image objects, UIDs taken from the file meta), for the user.
    notes: tuple[str, ...] = ()
    frames: tuple[int, ...] = ()

    @property
    def shape(self) -> tuple[int, int, int]:
        """The grid shape ``[K, J, I]``: slices, rows, columns."""
        slices = len(self.frames) if self.frames else len(self.datasets)
        return slices, int(self.datasets[0].Rows), int(self.datasets[0].Columns)

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
        """The voxels (rescaled to real values), decoded by SimpleITK, on exactly :meth:`grid`."""
        for path in self.files:
            check_pixel_data(path)
        try:
            if self.frames:  # GDCM decodes the frames but does not place them: the grid comes from the headers
                image = sitk.ReadImage(str(self.files[0]))
                return self.grid().with_array(sitk.GetArrayFromImage(image)[list(self.frames)])
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames([str(path) for path in self.files])
            volume = Volume.from_image(reader.Execute())
        except RuntimeError as error:
            raise InputError(f"the DICOM series {self.series_instance_uid} could not be read: "
                             f"{unreadable_file(self.files)}") from error
        if not volume.same_grid(self.grid(), tolerance=1e-3):
            raise InputError(f"the DICOM series {self.series_instance_uid} reads as a grid (origin {volume.origin}, "
                             f"direction {volume.direction}) that differs from its image positions; check its "
                             "ImagePositionPatient and ImageOrientationPatient values")
        return volume

    def in_source_order(self, slices: np.ndarray) -> np.ndarray:
        """``[K, ...]`` per-slice values of the grid in the order of the source's frames (for a DICOM-SEG of an
        enhanced image, whose frames follow the source's); unchanged for single-frame images."""
        if not self.frames:
            return slices
        ordered = np.empty_like(slices)
        ordered[list(self.frames)] = slices
        return ordered


def read_series(source: Path | str | Sequence[Path | str], series_uid: str | None = None) -> DicomSeries:
    """The one image series in ``source`` (or the one with ``series_uid``), checked and sorted into a grid.

    ``source`` is a folder (with a DICOMDIR, or every file below it) or a list of files, such as 3D Slicer's
    ``slicer.dicomDatabase.filesForSeries(uid)``.
    """
    if isinstance(source, (str, Path)):
        folder = Path(source)
        if not folder.is_dir():
            raise InputError(f"{folder} is not a folder; give the folder holding the DICOM series' files "
                             "(without a DICOM source, save a .seg.nrrd instead of a DICOM-SEG)")
        paths, where = dicom_files(folder), str(folder)
    else:
        paths, where = [Path(path) for path in source], f"the {len(source)} files given"
        missing = [str(path) for path in paths if not path.is_file()]
        if missing:
            raise InputError(f"DICOM file {missing[0]} does not exist ({len(missing)} of {where} are missing)")
    groups, skipped = image_series_in(paths)
    notes = tuple(f"skipped {count} {kind} object(s) that hold no image" for kind, count in sorted(skipped.items()))
    if not groups:
        found = f" (only {', '.join(sorted(skipped))})" if skipped else ""
        raise InputError(f"{where} holds no DICOM series: it holds no DICOM images{found}; give the folder of the "
                         "image series (CT, MR, ...) the segmentation is made on, or a volume file")
    if series_uid is None and len(groups) > 1:
        raise InputError(f"{where} holds {len(groups)} DICOM series: {series_listing(groups)}. Pick one with "
                         "--series-uid UID, or move each series into its own folder")
    uid = series_uid if series_uid is not None else next(iter(groups))
    if uid not in groups:
        raise InputError(f"{where} has no DICOM series {uid!r}; it holds {series_listing(groups)}")
    items = [(path, with_file_meta_identity(path, dataset)) for path, dataset in groups[uid]]
    recovered = sum(dataset is not original for (_, dataset), (_, original) in zip(items, groups[uid]))
    if recovered:
        notes += (f"took SOPClassUID/SOPInstanceUID of {recovered} image(s) from their file meta (the datasets' "
                  "own were empty)",)
    where = f"DICOM series {uid}"
    multiframe = [path.name for path, dataset in items if _frame_count(dataset) > 1]
    if multiframe and len(items) > 1:
        raise InputError(f"{where} mixes a multi-frame image ({multiframe[0]}) with {len(items) - 1} other images; "
                         "export the enhanced image or the single-frame images alone")
    if multiframe:
        planes = _frame_planes(where, *items[0])
    elif len(items) == 1:
        raise InputError(f"{where} is a single 2-D image ({items[0][0].name}); SDFSMIS segments volumes: give the "
                         "folder of the whole series")
    else:
        planes = [_image_plane(where, path, dataset) for path, dataset in items]
    _check_one_study_and_frame(where, [dataset for _, dataset in items])
    order, spacing, origin, direction = _grid(where, planes, items[0][1])
    if multiframe:
        return DicomSeries((items[0][1],), (items[0][0],), spacing, origin, direction, notes,
                           tuple(int(index) for index in order))
    return DicomSeries(tuple(items[index][1] for index in order), tuple(items[index][0] for index in order),
                       spacing, origin, direction, notes)


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


@dataclass(frozen=True)
class _Plane:
    """Where one slice (an image, or a frame of an enhanced image) lies, and what it is called in messages."""

    name: str
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: np.ndarray
    size: tuple[int, int]


def _frame_count(dataset: Dataset) -> int:
    return int(dataset.get("NumberOfFrames", 1) or 1)


def _image_plane(where: str, path: Path, dataset: Dataset) -> _Plane:
    missing = [keyword for keyword in _NEEDED if keyword not in dataset]
    if missing:
        raise InputError(f"{where}: {path.name} lacks {', '.join(missing)}, so its position in space is unknown; "
                         "a DICOM-SEG needs cross-sectional images (CT, MR, PET) with image plane attributes")
    return _Plane(path.name, np.asarray(dataset.ImagePositionPatient, dtype=float),
                  np.asarray(dataset.ImageOrientationPatient, dtype=float),
                  np.asarray(dataset.PixelSpacing, dtype=float), (int(dataset.Rows), int(dataset.Columns)))


def _frame_planes(where: str, path: Path, dataset: Dataset) -> list[_Plane]:
    """The planes of an enhanced image's frames, from its per-frame (or shared) functional groups."""
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence") or []
    shared = (dataset.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    if len(per_frame) != _frame_count(dataset):
        raise InputError(f"{where}: {path.name} has {_frame_count(dataset)} frames but {len(per_frame)} per-frame "
                         "functional groups, so its frames cannot be placed; export it again")

    def attribute(group: Dataset, sequence: str, keyword: str) -> object:
        for source in (group, shared):
            if sequence in source and keyword in source[sequence].value[0]:
                return source[sequence].value[0][keyword].value
        raise InputError(f"{where}: {path.name} has no {sequence} > {keyword} for its frames, so they cannot be placed "
                         "in space; SDFSMIS needs a cross-sectional enhanced image (CT, MR)")

    return [_Plane(f"{path.name} frame {index + 1}",
                   np.asarray(attribute(group, "PlanePositionSequence", "ImagePositionPatient"), dtype=float),
                   np.asarray(attribute(group, "PlaneOrientationSequence", "ImageOrientationPatient"), dtype=float),
                   np.asarray(attribute(group, "PixelMeasuresSequence", "PixelSpacing"), dtype=float),
                   (int(dataset.Rows), int(dataset.Columns)))
            for index, group in enumerate(per_frame)]


def _check_one_study_and_frame(where: str, datasets: list[Dataset]) -> None:
    studies = {str(dataset.get("StudyInstanceUID", "")) for dataset in datasets}
    if len(studies) > 1:
        raise InputError(f"{where} spans {len(studies)} studies (StudyInstanceUID differs between its images); "
                         "a series belongs to one study: fix the files' StudyInstanceUID or export them again")
    frames = {str(dataset.get("FrameOfReferenceUID", "")) for dataset in datasets}
    if len(frames) > 1:
        listing = ", ".join(sorted(frame or "none" for frame in frames))
        raise InputError(f"{where} mixes {len(frames)} frames of reference ({listing}); "
                         "its slices are not in one coordinate system, so no voxel grid holds them: export a "
                         "series acquired in one frame of reference (or split the folder by FrameOfReferenceUID)")


def _grid(where: str, planes: list[_Plane], first: Dataset) -> tuple[np.ndarray, tuple[float, float, float],
                                                                       tuple[float, float, float], tuple[float, ...]]:
    """Check the planes form one regular grid; their order along the slice normal, and the grid's spacing,
    origin and direction."""
    reference = planes[0]
    for plane in planes:
        if plane.size != reference.size:
            raise InputError(f"{where}: {plane.name} is {plane.size[0]}x{plane.size[1]} pixels, other images "
                             f"{reference.size[0]}x{reference.size[1]}; a series for one grid needs one image size")
        if not np.allclose(plane.orientation, reference.orientation, atol=GEOMETRY_TOLERANCE):
            raise InputError(f"{where}: {plane.name} has another ImageOrientationPatient than the other images "
                             "(a localizer or a multi-planar series?); export the images of one orientation")
        if not np.allclose(plane.pixel_spacing, reference.pixel_spacing, atol=GEOMETRY_TOLERANCE):
            raise InputError(f"{where}: {plane.name} has PixelSpacing {list(plane.pixel_spacing)}, other images "
                             f"{list(reference.pixel_spacing)}; a series for one grid needs one pixel spacing")
    row, column = reference.orientation[:3], reference.orientation[3:]
    normal = np.cross(row, column)
    positions = np.array([plane.position for plane in planes])
    order = np.argsort(positions @ normal, kind="stable")
    slice_spacing = _slice_spacing(where, [planes[index].name for index in order], positions[order], normal, first)
    spacing = reference.pixel_spacing
    return (order, (float(spacing[1]), float(spacing[0]), slice_spacing), tuple(float(v) for v in positions[order[0]]),
            tuple(float(v) for v in np.column_stack((row, column, normal)).ravel()))


def _slice_spacing(where: str, names: list[str], positions: np.ndarray, normal: np.ndarray, first: Dataset) -> float:
    """The gap between slices, after checking that every gap is the same and runs along the normal."""
    if len(names) == 1:
        return float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
    gaps = np.diff(positions @ normal)
    if gaps.min() <= 1e-3:
        index = int(np.argmin(gaps))
        raise InputError(f"{where}: {names[index]} and {names[index + 1]} lie at the same position; "
                         "the folder holds several images per slice (echoes, phases or a duplicate series): "
                         "keep one image per position")
    mean = float(gaps.mean())
    if np.abs(gaps - mean).max() > max(SPACING_TOLERANCE * mean, 0.01):
        index = int(np.argmax(np.abs(gaps - mean)))
        raise InputError(f"{where} has inconsistent slice spacing: gaps from {gaps.min():.3f} to {gaps.max():.3f} mm "
                         f"(largest deviation between {names[index]} and {names[index + 1]}); "
                         "a slice is probably missing, or the series has variable spacing. Export the complete "
                         "series, or resample it to regular spacing and segment the resampled volume")
    steps = np.diff(positions, axis=0)
    sideways = np.linalg.norm(steps - np.outer(steps @ normal, normal), axis=1)
    if sideways.max() > max(SPACING_TOLERANCE * mean, 0.01):
        raise InputError(f"{where}: successive slices are shifted sideways by up to {sideways.max():.3f} mm "
                         "(gantry tilt or a sheared stack), which a voxel grid cannot hold; resample the series "
                         "to an orthogonal grid first")
    return mean
