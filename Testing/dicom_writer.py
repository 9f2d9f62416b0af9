"""Write a :class:`~SDFSMISLib.io.volumes.Volume` as a DICOM CT or MR image series (one file per slice).

Why: a DICOM-SEG must reference the DICOM images it segments, so the tests, the demos and users who only
have NIfTI/NRRD volumes need a real series to segment and to reference. The files follow the CT Image and MR
Image IODs closely enough that ``dciodvfy`` reports no errors on them, and their geometry is exactly the
volume's: slice ``k`` of ``volume.array`` is one file whose ImagePositionPatient is the LPS position of voxel
``(0, 0, k)`` and whose ImageOrientationPatient holds the directions of the ``i`` (row) and ``j`` (column)
axes, so oblique and flipped grids are written as they are. Reading the folder back with
:func:`SDFSMISLib.io.volumes.read_dicom_series` gives the same voxels on the same grid, except that DICOM
readers order slices along ``i x j``: a volume whose ``k`` axis points the other way (a left-handed grid such
as CHAOS's flipped ``j``) comes back with ``k`` reversed (same voxels in space).

Pixel values: CT is stored as unsigned 16 bits with RescaleIntercept/RescaleSlope giving Hounsfield units
(integer volumes exactly; a float volume is quantised to 65536 levels over its range). MR has no rescale in
its IOD, so MR voxels are rounded to integers and stored as signed or unsigned 16 bits.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from SDFSMISLib import __version__
from SDFSMISLib.errors import InputError
from SDFSMISLib.io.atomic import atomic_output
from SDFSMISLib.io.volumes import Volume

MODALITIES = {"CT": CTImageStorage, "MR": MRImageStorage}
_UINT16_LEVELS = 65535


def write_dicom_series(volume: Volume, folder: Path | str, modality: str = "CT", *,
                       series_description: str = "SDFSMIS phantom", patient_name: str = "SDFSMIS^Phantom",
                       patient_id: str = "SDFSMIS-PHANTOM", study_instance_uid: str | None = None,
                       series_instance_uid: str | None = None, frame_of_reference_uid: str | None = None,
                       series_number: int = 1, shuffle_seed: int | None = None) -> list[Path]:
    """Write ``volume`` as one DICOM file per slice into ``folder``; returns the files in slice order.

    ``modality`` is ``CT`` (values in HU) or ``MR``. UIDs not given are generated, so two calls with the same
    ``study_instance_uid`` and ``frame_of_reference_uid`` give two series of one study in one frame of
    reference. ``shuffle_seed`` names the files (and numbers the instances) in a random order, to test that
    readers sort slices by position rather than by file name or InstanceNumber. Each file is written atomically.
    """
    modality = modality.upper()
    if modality not in MODALITIES:
        raise InputError(f"unknown DICOM modality {modality!r}; use one of {', '.join(MODALITIES)}")
    folder = Path(folder)
    stored, slope, intercept, signed = _stored_pixels(volume.array, modality)
    now = datetime.datetime.now()
    shared = _shared_dataset(volume, modality, now, series_description, patient_name, patient_id,
                             study_instance_uid or generate_uid(), series_instance_uid or generate_uid(),
                             frame_of_reference_uid or generate_uid(), series_number)
    _set_pixel_module(shared, stored, signed, modality, slope, intercept)
    slices = volume.array.shape[0]
    order = np.arange(slices) if shuffle_seed is None else np.random.default_rng(shuffle_seed).permutation(slices)
    written = []
    for index in range(slices):
        dataset = _slice_dataset(shared, volume, index, stored[index], int(order[index]) + 1, modality)
        path = folder / f"IM{int(order[index]) + 1:05d}.dcm"
        with atomic_output(path) as temporary:
            dataset.save_as(temporary, enforce_file_format=True)
        written.append(path)
    return written


def _stored_pixels(array: np.ndarray, modality: str) -> tuple[np.ndarray, float, float, bool]:
    """(stored uint16/int16 pixels, slope, intercept, signed) whose rescale gives ``array`` back."""
    values = np.asarray(array)
    if not np.isfinite(values).all():
        raise InputError("the volume has NaN or infinite voxels; DICOM stores integers: replace them first")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    integral = np.issubdtype(values.dtype, np.integer) or bool(np.all(values == np.rint(values)))
    if modality == "MR":
        rounded = np.rint(values)
        if low >= 0 and high <= _UINT16_LEVELS:
            return rounded.astype(np.uint16), 1.0, 0.0, False
        if low >= -32768 and high <= 32767:
            return rounded.astype(np.int16), 1.0, 0.0, True
        raise InputError(f"MR voxel values {low:g}..{high:g} do not fit 16 bits; rescale the volume first")
    if integral and high - low <= _UINT16_LEVELS:
        intercept = min(low, 0.0) if high - min(low, 0.0) <= _UINT16_LEVELS else low
        return np.rint(values - intercept).astype(np.uint16), 1.0, intercept, False
    slope = (high - low) / _UINT16_LEVELS or 1.0
    return np.rint((values - low) / slope).astype(np.uint16), slope, low, False


def _shared_dataset(volume: Volume, modality: str, now: datetime.datetime, description: str, patient_name: str,
                    patient_id: str, study_uid: str, series_uid: str, frame_uid: str, series_number: int) -> Dataset:
    """The attributes every slice of the series shares: patient, study, series, equipment, plane geometry."""
    dataset = Dataset()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    direction = volume.direction_matrix()
    values = {
        "SpecificCharacterSet": "ISO_IR 192", "SOPClassUID": MODALITIES[modality],
        "StudyDate": date, "SeriesDate": date, "ContentDate": date, "AcquisitionDate": date,
        "StudyTime": time, "SeriesTime": time, "ContentTime": time, "AcquisitionTime": time,
        "AccessionNumber": "", "Modality": modality, "Manufacturer": "SDFSMIS",
        "ReferringPhysicianName": "", "StudyDescription": "SDFSMIS synthetic study",
        "SeriesDescription": description, "ManufacturerModelName": "SDFSMISLib dicom_writer",
        "SoftwareVersions": __version__, "PatientName": patient_name, "PatientID": patient_id,
        "PatientBirthDate": "", "PatientSex": "O", "BodyPartExamined": "ABDOMEN",
        "PatientPosition": "HFS", "StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid,
        "StudyID": "1", "SeriesNumber": series_number, "AcquisitionNumber": 1,
        "FrameOfReferenceUID": frame_uid, "PositionReferenceIndicator": "",
        "ImageOrientationPatient": [_ds(value) for value in direction[:, :2].T.ravel()],
        "PixelSpacing": [_ds(volume.spacing[1]), _ds(volume.spacing[0])],  # row spacing (j), column spacing (i)
        "SliceThickness": _ds(volume.spacing[2]), "SpacingBetweenSlices": _ds(volume.spacing[2]),
        "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"] if modality == "CT" else ["ORIGINAL", "PRIMARY", "OTHER"],
        "BurnedInAnnotation": "NO",
    }
    for keyword, value in values.items():
        setattr(dataset, keyword, value)
    if modality == "CT":
        dataset.KVP = "120"
        dataset.ConvolutionKernel = "STANDARD"
    else:
        for keyword, value in {"ScanningSequence": "SE", "SequenceVariant": "NONE", "ScanOptions": "",
                               "MRAcquisitionType": "2D", "RepetitionTime": "1000", "EchoTime": "80",
                               "EchoTrainLength": "1", "MagneticFieldStrength": "1.5", "ImagedNucleus": "1H",
                               "AngioFlag": "N"}.items():
            setattr(dataset, keyword, value)
    return dataset


def _set_pixel_module(dataset: Dataset, stored: np.ndarray, signed: bool, modality: str, slope: float,
                      intercept: float) -> None:
    """Image Pixel attributes, rescale (CT only) and a display window over the stored range."""
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.Rows, dataset.Columns = int(stored.shape[1]), int(stored.shape[2])
    dataset.BitsAllocated = dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = int(signed)
    low, high = (float(stored.min()), float(stored.max())) if stored.size else (0.0, 1.0)
    if modality == "CT":
        dataset.RescaleIntercept = _ds(intercept)
        dataset.RescaleSlope = _ds(slope)
        dataset.RescaleType = "HU"
        low, high = low * slope + intercept, high * slope + intercept
    dataset.WindowCenter = _ds((low + high) / 2)
    dataset.WindowWidth = _ds(max(high - low, 1.0))


def _slice_dataset(shared: Dataset, volume: Volume, index: int, pixels: np.ndarray, number: int,
                   modality: str) -> Dataset:
    """One slice's file: the shared attributes plus its UID, number, position and pixels."""
    dataset = Dataset()
    dataset.update(shared)
    dataset.SOPInstanceUID = generate_uid()
    dataset.InstanceNumber = number
    position = np.asarray(volume.origin) + volume.direction_matrix()[:, 2] * volume.spacing[2] * index
    dataset.ImagePositionPatient = [_ds(value) for value in position]
    normal = np.cross(*volume.direction_matrix()[:, :2].T)
    dataset.SliceLocation = _ds(float(np.dot(position, normal)))
    dataset.PixelData = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MODALITIES[modality]
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    dataset.file_meta = meta
    return dataset


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters (DICOM's DS limit) that keeps as many digits as fit."""
    value = float(value)
    if abs(value) < 1e-12:
        return "0"
    for digits in range(12, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    raise InputError(f"{value} cannot be written as a DICOM decimal string")

