"""Reading and writing 3-D volumes with their physical geometry, so masks land back on the user's grid.

Axis convention (shared by every SDFSMIS module):

* ``Volume.array`` is in SimpleITK ``GetArrayFromImage`` order ``[K, J, I]``: array axis 0 is the image
  index axis ``k`` (usually the slice axis), array axis 2 is ``i`` (the fastest-varying, image columns).
* ``spacing``, ``origin`` and ``direction`` are in SimpleITK/ITK order and frame: ``spacing`` is
  ``(i, j, k)`` in mm, ``origin`` is the physical position (mm, LPS: +x left, +y posterior, +z superior)
  of voxel ``(0, 0, 0)``, ``direction`` is the 3x3 matrix, row-major, whose *column* ``c`` is the LPS
  unit vector of index axis ``c`` (``i``, ``j``, ``k``).
* Voxel ``array[k, j, i]`` therefore sits at ``origin + D @ (spacing * (i, j, k))``.

Formats: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``, ``.mhd``) and a
folder holding one DICOM series. Writes are atomic: a failure never leaves a partial file behind.
NIfTI stores geometry as 32-bit floats, so a round trip through it keeps geometry to about 1e-6.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .atomic import atomic_output, full_suffix

FILE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
SUPPORTED = f"a {', '.join(FILE_SUFFIXES)} file or a folder holding one DICOM series"


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3-D voxel array with the geometry that places it in patient space (see the module docstring)."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    def __post_init__(self) -> None:
        """Check the shape once here so every consumer can rely on a 3-D array and 3-D geometry."""
        array = np.asarray(self.array)
        if array.ndim != 3:
            raise InputError(f"the array is {array.ndim}-D with shape {array.shape}; a 3-D volume "
                             "[slices, rows, columns] is needed (stack 2-D slices, or pick one 3-D frame)")
        spacing = tuple(float(value) for value in self.spacing)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise InputError(f"spacing {spacing} must be 3 positive numbers (mm along i, j, k)")
        origin = tuple(float(value) for value in self.origin)
        direction = tuple(float(value) for value in self.direction)
        if len(origin) != 3 or len(direction) != 9:
            raise InputError("origin needs 3 values and direction 9 (a row-major 3x3 matrix)")
        object.__setattr__(self, "array", array)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)

    @classmethod
    def from_image(cls, image: sitk.Image) -> Volume:
        """The volume of a SimpleITK image; 2-D, 4-D and multi-component images are refused."""
        if image.GetDimension() != 3:
            raise InputError(f"the image is {image.GetDimension()}-D; a 3-D volume is needed "
                             "(for a time series or multi-frame file, save one 3-D frame)")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(f"the image has {image.GetNumberOfComponentsPerPixel()} components per voxel "
                             "(colour or vector image); a scalar (grey-level) 3-D volume is needed")
        return cls(sitk.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    def to_image(self) -> sitk.Image:
        """A SimpleITK image with this array and geometry (boolean masks become uint8)."""
        array = self.array.astype(np.uint8) if self.array.dtype == bool else self.array
        image = sitk.GetImageFromArray(array, isVector=False)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def with_array(self, array: np.ndarray) -> Volume:
        """The same grid holding new voxels (a segmentation of this image, for instance)."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise InputError(f"array shape {array.shape} does not match the volume grid {self.array.shape}")
        return Volume(array, self.spacing, self.origin, self.direction)

    def same_grid(self, other: Volume, tolerance: float = 1e-4) -> bool:
        """Whether ``other`` has the same shape and, within ``tolerance``, the same spacing, origin and direction."""
        return self.array.shape == other.array.shape and all(
            np.allclose(mine, theirs, rtol=0, atol=tolerance)
            for mine, theirs in ((self.spacing, other.spacing), (self.origin, other.origin),
                                 (self.direction, other.direction)))

    def direction_matrix(self) -> np.ndarray:
        """The 3x3 direction matrix; column ``c`` is the LPS direction of index axis ``c`` (i, j, k)."""
        return np.reshape(self.direction, (3, 3))


def slice_axis_nearest_si(volume: Volume) -> int:
    """The ARRAY axis (0, 1 or 2) whose physical direction is nearest the superior-inferior axis (LPS +z).

    Index axis ``c`` (i=0, j=1, k=2) is array axis ``2 - c``. On a tie array axis 0 wins, so an
    axial volume, and any volume whose geometry does not decide, keeps its stored slice axis.
    """
    superior_per_array_axis = np.abs(volume.direction_matrix()[2, ::-1])
    return int(np.argmax(superior_per_array_axis))


def slice_centres(volume: Volume) -> np.ndarray:
    """``[n, 3]`` LPS position (mm) of the centre of each slice along :func:`slice_axis_nearest_si`, in stored
    order: the one definition of where a slice is, for the command line, the query range and the panel."""
    axis = slice_axis_nearest_si(volume)
    shape = volume.array.shape
    index = np.tile([(shape[2] - 1) / 2, (shape[1] - 1) / 2, (shape[0] - 1) / 2], (shape[axis], 1))
    index[:, 2 - axis] = np.arange(shape[axis])
    return np.asarray(volume.origin) + index @ (volume.direction_matrix() * np.asarray(volume.spacing)).T


def slice_heights(volume: Volume) -> np.ndarray:
    """The S coordinate (mm; LPS z is RAS S) of each slice centre (:func:`slice_centres`): how users name
    heights."""
    return slice_centres(volume)[:, 2]


def read_volume(path: str | Path) -> Volume:
    """Read a volume file or a DICOM series folder (see :data:`SUPPORTED`)."""
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist; give {SUPPORTED}")
    _check_suffix(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"{path} could not be read ({_error_summary(error)}); it is probably truncated "
                         f"or not a {full_suffix(path)} file: export it again") from error
    return _volume_of(image, path)


def read_dicom_series(folder: str | Path, series_uid: str | None = None) -> Volume:
    """Read one DICOM series from ``folder`` (:func:`SDFSMISLib.io.dicom_series.read_series`, the one DICOM
    reader); with several series, ``series_uid`` picks one."""
    from .dicom_series import read_series

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"DICOM folder {folder} does not exist; give {SUPPORTED}")
    return read_series(folder, series_uid).read_volume()


def write_volume(path: str | Path, volume: Volume) -> Path:
    """Write ``volume`` to a file whose suffix picks the format, atomically; returns the path.

    Formats with a detached data file (``.nhdr``, ``.mhd``) are written whole into a hidden folder
    beside the target first, then each file is moved into place, data before header.
    """
    path = Path(path)
    _check_suffix(path, writing=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as staging:
        staged = Path(staging) / path.name
        sitk.WriteImage(volume.to_image(), str(staged), useCompression=True)
        for produced in sorted(Path(staging).iterdir(), key=lambda file: file == staged):
            with atomic_output(path.parent / produced.name) as temporary:
                os.replace(produced, temporary)
    return path


def _check_suffix(path: Path, writing: bool = False) -> None:
    if full_suffix(path).lower() not in FILE_SUFFIXES:
        formats = ", ".join(FILE_SUFFIXES) if writing else SUPPORTED
        raise InputError(f"{path}: unknown volume format {full_suffix(path)!r}; use {formats}")


def _volume_of(image: sitk.Image, source: Path) -> Volume:
    """The volume of an image just read, with errors that name the file."""
    try:
        return Volume.from_image(image)
    except InputError as error:
        raise InputError(f"{source}: {error}") from error


def _error_summary(error: Exception) -> str:
    return str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
