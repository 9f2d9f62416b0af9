"""Volume files keep voxels and geometry through a round trip; bad inputs raise errors a user can act on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from SDFSMISLib.errors import InputError
from SDFSMISLib.io import volumes
from SDFSMISLib.io.volumes import Volume, read_dicom_series, read_volume, slice_axis_nearest_si, write_volume

SPACING = (0.7, 1.3, 4.0)
ORIGIN = (10.0, -20.0, 30.5)


def oblique_direction(flip: tuple[int, int, int] = (-1, 1, -1)) -> tuple[float, ...]:
    """An oblique rotation with flipped axes (a proper rotation when the flips' product is +1)."""
    rotation = Rotation.from_euler("xyz", [20, -10, 35], degrees=True).as_matrix() @ np.diag(flip)
    return tuple(rotation.ravel())


def oblique_volume(dtype: type = np.int16, shape: tuple[int, int, int] = (5, 7, 9)) -> Volume:
    array = np.random.default_rng(0).integers(-1000, 1000, size=shape).astype(dtype)
    return Volume(array, SPACING, ORIGIN, oblique_direction())


def assert_same(read: Volume, written: Volume, tolerance: float) -> None:
    np.testing.assert_array_equal(read.array, written.array)
    assert read.array.dtype == written.array.dtype
    for name in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(getattr(read, name), getattr(written, name), rtol=0, atol=tolerance, err_msg=name)


@pytest.mark.parametrize(("suffix", "tolerance"), [(".nii.gz", 1e-6), (".nrrd", 1e-12), (".nhdr", 1e-12),
                                                   (".mha", 1e-12), (".mhd", 1e-12)])
def test_file_round_trip_keeps_voxels_and_geometry(tmp_path: Path, suffix: str, tolerance: float) -> None:
    volume = Volume(np.random.default_rng(1).normal(size=(5, 7, 9)).astype(np.float32), SPACING, ORIGIN,
                    oblique_direction((-1, -1, -1)))
    assert_same(read_volume(write_volume(tmp_path / f"image{suffix}", volume)), volume, tolerance)
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")], "staging files left behind"


def write_dicom_series(folder: Path, volume: Volume, series_uid: str) -> None:
    """Write ``volume`` as one DICOM file per slice, with the tags the series reader needs for geometry."""
    folder.mkdir(parents=True, exist_ok=True)
    image = volume.to_image()
    direction = volume.direction_matrix()
    orientation = "\\".join(f"{value:.12f}" for value in direction[:, :2].T.ravel())
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for index in range(image.GetDepth()):
        plane = image[:, :, index]
        position = image.TransformIndexToPhysicalPoint((0, 0, index))
        for tag, value in (("0008|0060", "MR"), ("0020|000e", series_uid), ("0020|000d", "1.2.826.0.1.3680043.2.1"),
                           ("0008|0018", f"{series_uid}.{index + 1}"), ("0020|0013", str(index + 1)),
                           ("0020|0037", orientation), ("0020|0032", "\\".join(f"{v:.12f}" for v in position)),
                           ("0018|0050", str(volume.spacing[2]))):
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{series_uid}-{index:03d}.dcm"))
        writer.Execute(plane)


def test_dicom_series_round_trip(tmp_path: Path) -> None:
    volume = oblique_volume()
    write_dicom_series(tmp_path / "series", volume, "1.2.826.0.1.3680043.2.1.7")
    assert_same(read_volume(tmp_path / "series"), volume, 1e-5)


def test_folder_with_two_series_lists_their_uids(tmp_path: Path) -> None:
    volume = oblique_volume(shape=(3, 4, 5))
    uids = ("1.2.826.0.1.3680043.2.1.8", "1.2.826.0.1.3680043.2.1.9")
    for uid in uids:
        write_dicom_series(tmp_path, volume, uid)
    with pytest.raises(InputError, match="2 DICOM series") as caught:
        read_volume(tmp_path)
    assert all(uid in str(caught.value) for uid in uids)
    assert_same(read_dicom_series(tmp_path, uids[1]), volume, 1e-5)
    with pytest.raises(InputError, match="no DICOM series '1.2.3'"):
        read_dicom_series(tmp_path, "1.2.3")


def test_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def write_then_fail(image: sitk.Image, name: str, useCompression: bool) -> None:  # noqa: N803 (SimpleITK's name)
        Path(name).write_bytes(b"half a file")
        raise RuntimeError("disk full")

    monkeypatch.setattr(volumes.sitk, "WriteImage", write_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        write_volume(tmp_path / "out.nii.gz", oblique_volume())
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs_raise_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="2-D"):
        Volume(np.zeros((4, 4)), (1, 1, 1), (0, 0, 0), np.eye(3).ravel())
    with pytest.raises(InputError, match="4-D"):
        read_volume(_write(tmp_path / "4d.nii.gz", sitk.Image([3, 3, 3, 2], sitk.sitkFloat32)))
    with pytest.raises(InputError, match="2-D"):
        read_volume(_write(tmp_path / "2d.nrrd", sitk.Image([3, 3], sitk.sitkFloat32)))
    with pytest.raises(InputError, match=r"\.png"):
        read_volume(_write(tmp_path / "slice.png", sitk.Image([3, 3], sitk.sitkUInt8)))
    with pytest.raises(InputError, match="holds no DICOM series"):
        read_volume(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        read_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "broken.nii.gz").write_bytes(b"not gzip")
    with pytest.raises(InputError, match="could not be read"):
        read_volume(tmp_path / "broken.nii.gz")
    with pytest.raises(InputError, match="unknown volume format"):
        write_volume(tmp_path / "out.dcm", oblique_volume())


def _write(path: Path, image: sitk.Image) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def test_slice_axis_nearest_superior_inferior() -> None:
    axial = Volume(np.zeros((2, 3, 4)), (1, 1, 1), (0, 0, 0), np.diag([-1.0, 1.0, -1.0]).ravel())
    assert slice_axis_nearest_si(axial) == 0
    coronal = Volume(axial.array, (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 0, 1, 0, -1, 0))
    assert slice_axis_nearest_si(coronal) == 1  # index j runs along -z: array axis 1
    index_i_superior = Volume(axial.array, (1, 1, 1), (0, 0, 0), (0, 1, 0, 0, 0, 1, 1, 0, 0))
    assert slice_axis_nearest_si(index_i_superior) == 2
    tilted = Rotation.from_euler("x", 30, degrees=True).as_matrix()
    assert slice_axis_nearest_si(Volume(axial.array, (1, 1, 1), (0, 0, 0), tilted.ravel())) == 0


def test_volume_grid_helpers() -> None:
    volume = oblique_volume()
    mask = volume.with_array(volume.array > 0)
    assert mask.same_grid(volume) and mask.to_image().GetPixelID() == sitk.sitkUInt8
    assert not mask.same_grid(Volume(volume.array, SPACING, (10.0, -20.0, 30.6), volume.direction))
    with pytest.raises(InputError, match="does not match"):
        volume.with_array(np.zeros((5, 7, 8)))
