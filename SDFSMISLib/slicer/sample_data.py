"""The bundled phantom patients in 3D Slicer's Sample Data module, so a new user can try the module at once."""

from __future__ import annotations

from ..resources import RESOURCES

#: Phantom patients shipped in ``Resources/Data/phantoms`` (image and ground truth of each).
PHANTOMS = (101, 102)


def registerSampleData() -> None:
    """Add each phantom (image and labelmap) to Sample Data under "SDFSMIS" (called once Slicer has started)."""
    import SampleData

    folder = RESOURCES / "Data" / "phantoms"
    for patient in PHANTOMS:
        image, label = folder / f"image_{patient}.nii.gz", folder / f"label_{patient}.nii.gz"
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="SDFSMIS", sampleName=f"SDFSMISPhantom{patient}",
            thumbnailFileName=str(RESOURCES / "Icons" / "SDFSMIS.png"),
            uris=[image.as_uri(), label.as_uri()], fileNames=[image.name, label.name],
            nodeNames=[f"phantom {patient}", f"phantom {patient} truth"],
            loadFileType=["VolumeFile", "LabelMapVolumeFile"])
