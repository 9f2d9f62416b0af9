"""Synthetic abdominal MR and CT phantoms: license-free stand-ins for CHAOS-T2 and Synapse/SABS volumes.

Why: tests, CI and the bundled demo need abdominal volumes that are quick to make and free to ship, and the
tiny SD-FSMIS model is trained on them (self-supervised, through supervoxels) and evaluated with the
few-shot protocol (support slices from one patient, query slices from another). So organ shape, size,
position, z-extent and intensity vary between patients and along the slice axis, while the layout stays
consistent enough that one patient's organ predicts another's.

The anatomy, its geometry and the intensities of each modality are in
:mod:`SDFSMISLib.data.phantom_anatomy`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.labels import label_ids
from ..io.volumes import Volume, write_volume
from ..progress import ProgressCallback, report
from ..resources import RESOURCES
from .phantom_anatomy import ORGAN_OF_TISSUE, Grid, Painter, Tissue, anatomy, render

MODALITIES = ("mr", "ct")
#: Each modality's phantoms use the label ids of its benchmark: CHAOS-T2 (Abd-MRI) and Synapse/SABS (Abd-CT).
MODALITY_DATASETS = {"mr": "chaos-t2", "ct": "synapse-ct"}
LABEL_IDS = {modality: label_ids(dataset) for modality, dataset in MODALITY_DATASETS.items()}
CHAOS_DIRECTION = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # what SimpleITK reads for the CHAOS files
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
CHAOS_SPACING = (1.25, 1.25, 7.7)
CHAOS_SLICES = (30, 46)
CT_SPACING_IN_PLANE = (1.4, 1.7)  # SABS: 448 mm-ish cropped field of view resampled to 256 pixels
CT_SLICE_SPACING = 5.0
CT_SLICES = (48, 64)
#: The two phantom patients (101, 102) the demo and the Slicer self-test use, written by
#: ``sdfsmis phantom --out Resources/Data/phantoms --patients 2 --modality mr --seed 1 --first-id 101``.
BUNDLED_PHANTOMS = RESOURCES / "Data" / "phantoms"


def _label_table(modality: str) -> np.ndarray:
    """Tissue -> label id lookup table for the modality's dataset."""
    table = np.zeros(len(Tissue), dtype=np.uint8)
    for tissue, organ in ORGAN_OF_TISSUE.items():
        table[tissue] = LABEL_IDS[modality][organ]
    return table


def _check_modality(modality: str) -> None:
    if modality not in MODALITIES:
        raise InputError(f"unknown phantom modality {modality!r}; use one of {', '.join(MODALITIES)}")


def _geometry(shape: Sequence[int], spacing: Sequence[float], direction: Sequence[float] | None,
              origin: Sequence[float] | None) -> tuple[Grid, tuple[float, float, float]]:
    """Checked grid and the origin (by default the one that puts the grid centre at physical 0)."""
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"phantom shape {tuple(shape)} must be 3 positive sizes [slices, rows, columns]")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise InputError(f"phantom spacing {tuple(spacing)} must be 3 positive mm values (i, j, k)")
    values = np.asarray(IDENTITY if direction is None else direction, dtype=float).ravel()
    if values.size != 9 or not np.allclose(values.reshape(3, 3).T @ values.reshape(3, 3), np.eye(3), atol=1e-4):
        raise InputError(f"phantom direction {direction} must be the 9 values of an orthonormal 3x3 matrix "
                         "(row-major, SimpleITK order)")
    grid = Grid(tuple(int(size) for size in shape), np.asarray(spacing, dtype=float), values.reshape(3, 3))
    if origin is None:
        origin = -grid.matrix @ (grid.spacing * grid.centre_index)
    if len(origin) != 3:
        raise InputError(f"phantom origin {tuple(origin)} must be 3 values (LPS mm)")
    return grid, tuple(float(value) for value in origin)


def generate_phantom(seed: int, modality: str = "mr", shape: Sequence[int] = (36, 256, 256),
                     spacing: Sequence[float] = CHAOS_SPACING, direction: Sequence[float] | None = None,
                     origin: Sequence[float] | None = None) -> tuple[Volume, Volume]:
    """One synthetic abdominal patient: (int16 image, uint8 labels) on the same grid.

    ``shape`` is ``[K, J, I]`` (slices first), ``spacing`` is ``(i, j, k)`` mm, ``direction`` the row-major
    SimpleITK matrix (default identity) and ``origin`` the LPS position of voxel 0 (default: the grid is
    centred on physical 0). The anatomy follows physical coordinates around the grid centre (see the
    module docstring); labels use the ids of :data:`LABEL_IDS` for ``modality``.
    """
    _check_modality(modality)
    if seed < 0:
        raise InputError(f"phantom seed {seed} is negative; use a seed >= 0")
    grid, origin = _geometry(shape, spacing, direction, origin)
    anatomy_rng, render_rng = np.random.default_rng(seed).spawn(2)
    painter = Painter(grid)
    for layer in anatomy(anatomy_rng):
        painter.paint(layer)
    image = np.rint(render(painter.tissue, modality, render_rng)).astype(np.int16)
    labels = _label_table(modality)[painter.tissue]
    geometry = (tuple(float(value) for value in spacing), origin, tuple(float(value) for value in grid.matrix.ravel()))
    return Volume(image, *geometry), Volume(labels, *geometry)


def patient_seed(seed: int, modality: str, patient_id: int) -> int:
    """The phantom seed of one patient of a dataset: distinct for every (dataset seed, modality, id)."""
    return int(np.random.SeedSequence([seed, MODALITIES.index(modality), patient_id]).generate_state(1)[0])


def dataset_grid(modality: str, seed: int) -> tuple[tuple[int, int, int], tuple[float, float, float],
                                                       tuple[float, ...]]:
    """(shape, spacing, direction) of one patient in the layout of the real preprocessed dataset.

    ``mr``: CHAOS-T2, 256 x 256, 1.25 x 1.25 x 7.7 mm, 30-46 slices, CHAOS's flipped-j direction.
    ``ct``: SABS, 256 x 256, 1.4-1.7 mm in-plane, 5 mm slices, 48-64 slices, identity direction.
    """
    _check_modality(modality)
    rng = np.random.default_rng([seed, 1])
    if modality == "mr":
        return (int(rng.integers(CHAOS_SLICES[0], CHAOS_SLICES[1] + 1)), 256, 256), CHAOS_SPACING, CHAOS_DIRECTION
    in_plane = round(float(rng.uniform(*CT_SPACING_IN_PLANE)), 3)
    slices = int(rng.integers(CT_SLICES[0], CT_SLICES[1] + 1))
    return (slices, 256, 256), (in_plane, in_plane, CT_SLICE_SPACING), IDENTITY


def write_phantom_dataset(out: Path | str, patients: int = 10, modality: str = "mr", seed: int = 0,
                          first_id: int = 1, progress: ProgressCallback | None = None) -> list[Path]:
    """Write ``image_<id>.nii.gz`` (int16) and ``label_<id>.nii.gz`` (uint8) for ids ``first_id``...

    The files follow the layout of the real preprocessed datasets (see :func:`dataset_grid`), so every
    loader written for CHAOS-T2 or SABS reads them unchanged. Returns the paths written, image then label
    for each patient.
    """
    _check_modality(modality)
    if patients < 1 or first_id < 0 or seed < 0:
        raise InputError(f"patients ({patients}) must be >= 1 and first_id ({first_id}) and seed ({seed}) >= 0")
    out = Path(out)
    written = []
    for done, patient_id in enumerate(range(first_id, first_id + patients)):
        phantom = patient_seed(seed, modality, patient_id)
        shape, spacing, direction = dataset_grid(modality, phantom)
        image, labels = generate_phantom(phantom, modality, shape, spacing, direction)
        written.append(write_volume(out / f"image_{patient_id}.nii.gz", image))
        written.append(write_volume(out / f"label_{patient_id}.nii.gz", labels))
        report(progress, done + 1, patients)
    return written


def bundled_phantoms() -> Path:
    """Folder of the bundled phantom patients (``image_<id>.nii.gz``, ``label_<id>.nii.gz``)."""
    if not any(BUNDLED_PHANTOMS.glob("image_*.nii.gz")):
        raise InputError(f"the bundled phantom patients are missing from {BUNDLED_PHANTOMS}: use a source checkout, "
                         "or write new ones with `sdfsmis phantom --out DIR`")
    return BUNDLED_PHANTOMS
