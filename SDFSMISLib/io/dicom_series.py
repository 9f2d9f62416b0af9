"""Read one DICOM image series as pydicom headers in grid order, with the checks a DICOM-SEG depends on.

Why: a DICOM-SEG references each source image and gives each frame that image's position, so the exporter
needs the source datasets *and* the voxel grid a segmentation was made on, and must know which file is slice
``k`` of that grid. :func:`read_series` sorts the images along the slice normal (``row x column`` direction of
ImageOrientationPatient), as SimpleITK/GDCM do, so ``series.datasets[k]`` is ``array[k]`` of
:func:`SDFSMISLib.io.volumes.read_dicom_series` on the same folder, whatever the file names or InstanceNumbers.

A series a voxel grid cannot describe is refused with an :class:`~SDFSMISLib.errors.InputError` that names
the problem and the fix: several series in the folder (pick one by SeriesInstanceUID), several frames of
reference, images of different size, spacing or orientation, two images at one position (echoes, phases),
unequal gaps between slices (a missing slice) and a sheared stack (gantry tilt).
"""

from __future__ import annotations

from collections import defaultdict
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
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(path) for path in self.files])
        try:
            volume = Volume.from_image(reader.Execute())
        except RuntimeError as error:
            raise InputError(f"the DICOM series {self.series_instance_uid} could not be read ({error})") from error
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
        paths, where = sorted(path for path in folder.iterdir() if path.is_file()), str(folder)
    else:
        paths, where = [Path(path) for path in source], f"the {len(source)} files given"
        missing = [str(path) for path in paths if not path.is_file()]
        if missing:
            raise InputError(f"DICOM file {missing[0]} does not exist ({len(missing)} of {where} are missing)")
    groups = _series_in(paths)
    if not groups:
        raise InputError(f"{where} holds no DICOM images; a DICOM-SEG must reference the DICOM series the "
                         "segmentation was made on: give that series' folder, or save a .seg.nrrd instead")
    if series_uid is None and len(groups) > 1:
        listing = "; ".join(f"{uid} ({len(items)} images, {items[0][1].get('SeriesDescription', 'no description')})"
                            for uid, items in groups.items())
        raise InputError(f"{where} holds {len(groups)} DICOM series: {listing}. Pick one with --series-uid, or "
                         "move each series into its own folder")
    uid = series_uid if series_uid is not None else next(iter(groups))
    if uid not in groups:
        raise InputError(f"{where} has no DICOM series {uid!r}; it holds {', '.join(groups)}")
    return _sorted_series(uid, groups[uid])


def _series_in(paths: Iterable[Path]) -> dict[str, list[tuple[Path, Dataset]]]:
    """SeriesInstanceUID -> (file, header) of every DICOM image among ``paths`` (other files are skipped)."""
    groups: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for path in paths:
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue  # not a DICOM file (a README, a DICOMDIR's companion): not part of any series
        if "SeriesInstanceUID" in dataset and "Rows" in dataset and dataset.get("Modality") != "SEG":
            groups[str(dataset.SeriesInstanceUID)].append((path, dataset))
    return dict(groups)


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
    if len(frames) > 1 or "" in frames:
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
