"""The anatomy and the image contrast of the synthetic phantoms (:mod:`SDFSMISLib.data.phantom`).

Geometry: the anatomy is defined in patient coordinates (LPS mm: +x patient left, +y posterior, +z
superior) around the physical centre of the grid. A flipped or oblique ``direction`` therefore flips or
rotates the anatomy in the array (it stays anatomically right in physical space), while ``origin`` only
places the grid in space (the anatomy stays centred in the field of view). Texture, noise and the MR bias
field are drawn on the array: they are acquisition effects, not anatomy. For one seed the anatomy is the
same whatever the grid or the modality, so one patient can be sampled on several grids.

Content: body with subcutaneous fat and abdominal wall; liver (two lobes, vessels) with the gallbladder
under it; spleen; kidneys (cortex, medulla, sinus fat; the right one lower); vertebral column (bodies,
discs, canal, arch); paraspinal and psoas muscles; aorta and IVC; stomach (with gas) and bowel loops as
distractors. Every shape is a superellipsoid deformed by a few random low-frequency waves.

Intensities: ``mr`` mimics CHAOS T2-SPIR after the SSL-ALPNet preprocessing. SPIR suppresses fat, so
subcutaneous fat is darker than the liver (as in the real volumes, unlike plain T2); fluid, spleen and
kidneys are bright, the liver is darker than the spleen; Rician noise, a smooth multiplicative bias field,
and the top 0.5 % of the histogram clipped. ``ct`` mimics portal-venous Synapse/BTCV in HU, windowed to
[-125, 275] like the SABS preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
from scipy import ndimage

CT_WINDOW = (-125.0, 275.0)  # HU window of the SABS preprocessing
MR_CLIP_PERCENTILE = 99.5  # CHAOS preprocessing clips the top 0.5 % of the histogram
ENDLESS = 1.0e4  # semi-axis (mm) of shapes that run through the whole field of view: body, spine, vessels


class Tissue(IntEnum):
    """Tissue classes of the phantom; each has its own intensity and texture per modality."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    VISCERA = 3  # intra-abdominal background: mesenteric fat and collapsed bowel
    BOWEL = 4
    STOMACH = 5
    GAS = 6
    GALLBLADDER = 7
    LIVER = 8
    LIVER_VESSEL = 9
    SPLEEN = 10
    RIGHT_KIDNEY_CORTEX = 11
    RIGHT_KIDNEY_MEDULLA = 12
    LEFT_KIDNEY_CORTEX = 13
    LEFT_KIDNEY_MEDULLA = 14
    BONE = 15
    DISC = 16
    CSF = 17
    AORTA = 18
    IVC = 19


ORGAN_OF_TISSUE = {
    Tissue.LIVER: "liver", Tissue.LIVER_VESSEL: "liver", Tissue.SPLEEN: "spleen",
    Tissue.RIGHT_KIDNEY_CORTEX: "right_kidney", Tissue.RIGHT_KIDNEY_MEDULLA: "right_kidney",
    Tissue.LEFT_KIDNEY_CORTEX: "left_kidney", Tissue.LEFT_KIDNEY_MEDULLA: "left_kidney",
}
INSIDE_BODY = tuple(tissue for tissue in Tissue if tissue != Tissue.AIR)

# (mean, texture standard deviation) per tissue. MR: CHAOS T2-SPIR grey levels; CT: HU.
_MR = {
    Tissue.AIR: (0, 0), Tissue.FAT: (150, 25), Tissue.MUSCLE: (195, 20), Tissue.VISCERA: (200, 60),
    Tissue.BOWEL: (500, 140), Tissue.STOMACH: (700, 60), Tissue.GAS: (20, 5), Tissue.GALLBLADDER: (830, 25),
    Tissue.LIVER: (320, 35), Tissue.LIVER_VESSEL: (560, 40), Tissue.SPLEEN: (610, 45),
    Tissue.RIGHT_KIDNEY_CORTEX: (640, 45), Tissue.RIGHT_KIDNEY_MEDULLA: (730, 45),
    Tissue.LEFT_KIDNEY_CORTEX: (640, 45), Tissue.LEFT_KIDNEY_MEDULLA: (730, 45),
    Tissue.BONE: (270, 40), Tissue.DISC: (430, 40), Tissue.CSF: (800, 30), Tissue.AORTA: (90, 30),
    Tissue.IVC: (430, 60),
}
_CT = {
    Tissue.AIR: (-1000, 0), Tissue.FAT: (-100, 15), Tissue.MUSCLE: (50, 10), Tissue.VISCERA: (-40, 45),
    Tissue.BOWEL: (25, 45), Tissue.STOMACH: (15, 12), Tissue.GAS: (-950, 20), Tissue.GALLBLADDER: (10, 6),
    Tissue.LIVER: (100, 9), Tissue.LIVER_VESSEL: (165, 10), Tissue.SPLEEN: (128, 9),
    Tissue.RIGHT_KIDNEY_CORTEX: (185, 14), Tissue.RIGHT_KIDNEY_MEDULLA: (135, 12),
    Tissue.LEFT_KIDNEY_CORTEX: (185, 14), Tissue.LEFT_KIDNEY_MEDULLA: (135, 12),
    Tissue.BONE: (450, 90), Tissue.DISC: (80, 15), Tissue.CSF: (15, 8), Tissue.AORTA: (175, 10),
    Tissue.IVC: (135, 12),
}


@dataclass(frozen=True)
class _Appearance:
    """How one modality renders the tissue map; the ranges give the spread between patients."""

    table: dict[Tissue, tuple[float, float]]
    noise: tuple[float, float]  # range of the noise standard deviation
    gain: tuple[float, float]  # range of the global intensity factor (MR scanners have no absolute scale)
    relative_jitter: float  # each tissue's mean changes by up to this fraction...
    absolute_jitter: float  # ...and by up to this many grey levels (contrast uptake in CT)
    bias: float  # strength of the multiplicative bias field (0: none)


_APPEARANCE = {
    "mr": _Appearance(_MR, noise=(8.0, 14.0), gain=(0.85, 1.15), relative_jitter=0.07, absolute_jitter=0.0,
                      bias=0.12),
    "ct": _Appearance(_CT, noise=(8.0, 14.0), gain=(1.0, 1.0), relative_jitter=0.0, absolute_jitter=4.0, bias=0.0),
}


@dataclass(frozen=True, eq=False)
class _Blob:
    """A superellipsoid in patient coordinates (mm) with a smooth random perturbation of its radius.

    The blob's own axes are u (lateral), v (antero-posterior) and w (superior) before a rotation by
    ``yaw`` about the superior axis. ``bend`` curves it (tips towards -u, a crescent), ``taper`` thins
    the v extent towards +u (a wedge). The perturbation, of amplitude ``wobble``, is a mean of sine waves
    (``waves`` per unit of u, v and w, w in units of at most 120 mm) of the unbent coordinates.
    """

    centre: tuple[float, float, float]
    axes: tuple[float, float, float]
    yaw: float = 0.0
    power: float = 2.0
    bend: float = 0.0
    taper: float = 0.0
    wobble: float = 0.0
    waves: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    phases: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def reach(self) -> np.ndarray:
        """Half-size (x, y, z mm) of an axis-aligned box around the centre that surely holds the blob."""
        margin = (1.0 + self.wobble) * (1.0 + abs(self.taper))
        u, v, w = (axis * margin for axis in self.axes)
        u += abs(self.bend) * self.axes[0] * margin ** 2
        cos, sin = abs(np.cos(self.yaw)), abs(np.sin(self.yaw))
        return np.array([cos * u + sin * v, sin * u + cos * v, w])

    def gradients(self) -> np.ndarray:
        """Rows: the patient-coordinate gradients of u, v and w (per mm)."""
        cos, sin = np.cos(self.yaw), np.sin(self.yaw)
        return np.array([[cos, sin, 0.0], [-sin, cos, 0.0], [0.0, 0.0, 1.0]]) / np.array(self.axes)[:, None]

    def radius(self, box: _Box) -> np.ndarray:
        """Normalised radius over ``box``: the blob is where it is <= 1 (a shrunken copy where it is < 1)."""
        gradients, centre = self.gradients(), np.array(self.centre)
        u, v, w = (box.linear(gradient, -gradient @ centre) for gradient in gradients)
        if self.bend:
            u = u + np.float32(self.bend) * v * v
        if self.taper:
            v = v / np.maximum(1.0 - np.float32(self.taper) * u, np.float32(0.25))
        radius = (np.abs(u) ** self.power + np.abs(v) ** self.power + np.abs(w) ** self.power) ** (1.0 / self.power)
        if not self.wobble:
            return radius
        gradients[2] *= self.axes[2] / min(self.axes[2], 120.0)
        wave_gradients = self.waves @ gradients
        return radius - np.float32(self.wobble) * box.waves(wave_gradients, self.phases - wave_gradients @ centre)


def _mean_of_sines(waves: np.ndarray, phases: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Mean of sin(k . (x, y, z) + phase) over the waves, at points given as 1-D arrays: within [-1, 1]."""
    return np.sin(np.stack([x, y, z], axis=-1) @ waves.T.astype(np.float32) + phases.astype(np.float32)).mean(axis=-1)


@dataclass(frozen=True)
class _Tubes:
    """Curved tubes where two smooth fields of physical position are both near zero: intrahepatic vessels."""

    waves: np.ndarray  # (2, count, 3) rad/mm
    phases: np.ndarray  # (2, count)
    width: float

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        first, second = (np.abs(_mean_of_sines(waves, phases, x, y, z)) < self.width
                         for waves, phases in zip(self.waves, self.phases))
        return first & second


@dataclass(frozen=True)
class _Slabs:
    """Thin slabs repeating along the superior axis: intervertebral discs."""

    period: float
    phase: float
    fraction: float

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return ((z - self.phase) / self.period) % 1.0 < self.fraction


@dataclass(frozen=True)
class _Layer:
    """Paint ``tissue`` where ``blob``'s radius <= ``level`` (and ``where`` holds), over ``only_on`` tissues."""

    blob: _Blob
    tissue: Tissue
    level: float = 1.0
    only_on: tuple[Tissue, ...] | None = None
    where: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None


class _Box:
    """A sub-box of the grid. Patient coordinates are affine in the voxel index, so any linear function of
    them is a sum of one term per index axis, and a sine of it splits into in-plane and per-slice factors.
    """

    def __init__(self, slices: tuple[slice, slice, slice], steps: list[np.ndarray], matrix: np.ndarray) -> None:
        self.slices = slices  # [k, j, i]
        self.steps = steps  # mm from the grid centre along i, j, k (1-D float64)
        self.matrix = matrix

    def _terms(self, gradient: np.ndarray) -> list[np.ndarray]:
        """Per index axis (i, j, k), ``gradient . position`` as arrays shaped to broadcast over the box."""
        coefficients = gradient @ self.matrix
        return [(coefficient * step).astype(np.float32).reshape([-1 if axis == 2 - index else 1 for axis in range(3)])
                for index, (coefficient, step) in enumerate(zip(coefficients, self.steps))
                if abs(coefficient) > 1e-12]

    def linear(self, gradient: np.ndarray, offset: float) -> np.ndarray:
        """``gradient . position + offset`` over the box (broadcastable, float32)."""
        terms = self._terms(gradient)  # never empty: the gradients used are non-zero and the matrix orthonormal
        return sum(terms[1:], terms[0] + np.float32(offset))

    def waves(self, gradients: np.ndarray, phases: np.ndarray) -> np.ndarray:
        """Mean over rows of sin(gradient . position + phase), from in-plane and per-slice factors (one matmul)."""
        i, j, k = self.steps
        coefficients = gradients @ self.matrix  # (waves, 3): per index axis
        plane = (coefficients[:, 0, None, None] * i[None, None, :] + coefficients[:, 1, None, None] * j[None, :, None]
                 + phases[:, None, None])
        depth = coefficients[:, 2, None] * k[None, :]
        slices = np.concatenate([np.cos(depth), np.sin(depth)]).T.astype(np.float32)
        planes = np.concatenate([np.sin(plane), np.cos(plane)]).astype(np.float32)
        return np.tensordot(slices, planes, axes=1) / np.float32(len(gradients))

    def points(self, voxels: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patient coordinates (1-D float32) of the voxels ``[k, j, i]`` given as index arrays into the box."""
        i, j, k = (step[index] for step, index in zip(self.steps, voxels[::-1]))
        x, y, z = self.matrix @ np.stack([i, j, k])
        return x.astype(np.float32), y.astype(np.float32), z.astype(np.float32)


class Grid:
    """Index <-> patient-coordinate mapping of a ``[K, J, I]`` grid, centred on its physical centre."""

    def __init__(self, shape: tuple[int, int, int], spacing: np.ndarray, matrix: np.ndarray) -> None:
        self.shape = shape
        self.spacing = spacing  # (i, j, k) mm
        self.matrix = matrix  # columns: LPS directions of i, j, k
        self.centre_index = (np.array(shape[::-1], dtype=float) - 1.0) / 2.0  # (i, j, k)

    def box(self, centre: np.ndarray, reach: np.ndarray) -> _Box | None:
        """The part of the grid covering the physical box ``centre +- reach``; None when it is outside."""
        corners = centre + reach * np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).reshape(3, -1).T
        indices = corners @ self.matrix / self.spacing + self.centre_index
        low = np.maximum(np.floor(indices.min(axis=0)), 0).astype(int)
        high = np.minimum(np.ceil(indices.max(axis=0)), np.array(self.shape[::-1]) - 1).astype(int)
        if np.any(low > high):
            return None
        steps = [(np.arange(low[axis], high[axis] + 1) - self.centre_index[axis]) * self.spacing[axis]
                 for axis in range(3)]
        return _Box(tuple(slice(low[axis], high[axis] + 1) for axis in (2, 1, 0)), steps, self.matrix)


class Painter:
    """Paints layers into a tissue map; consecutive layers of the same blob reuse its radius."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.tissue = np.zeros(grid.shape, dtype=np.uint8)
        self._cached: tuple[_Blob, _Box | None, np.ndarray | None] | None = None

    def paint(self, layer: _Layer) -> None:
        if self._cached is None or self._cached[0] is not layer.blob:
            box = self.grid.box(np.asarray(layer.blob.centre), layer.blob.reach())
            self._cached = (layer.blob, box, None if box is None else layer.blob.radius(box))
        _, box, radius = self._cached
        if box is None:
            return
        region = self.tissue[box.slices]
        inside = np.broadcast_to(radius <= layer.level, region.shape)
        if layer.only_on is not None:
            inside = inside & np.isin(region, np.array(layer.only_on, dtype=np.uint8))
        if layer.where is None:
            region[inside] = layer.tissue
            return
        voxels = np.nonzero(inside)  # the condition is evaluated on the selected voxels only
        chosen = layer.where(*box.points(voxels))
        region[tuple(index[chosen] for index in voxels)] = layer.tissue


class _Sampler:
    """Random anatomy of one patient: every size and position scaled by the patient's build."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.scale = rng.uniform(0.9, 1.1)
        self.shift = rng.normal(0.0, (5.0, 5.0, 12.0))

    def blob(self, centre: Sequence[float], axes: Sequence[float], *, spread: Sequence[float] = (6, 6, 10),
             size: float = 0.12, yaw: float = 0.0, power: float = 2.0, wobble: float = 0.3,
             frequency: tuple[float, float] = (1.0, 3.0), relative_to: _Blob | None = None,
             **shape: float) -> _Blob:
        """A blob around the typical ``centre``/``axes`` (mm) with per-patient jitter.

        ``centre`` is in the patient frame, or an offset from ``relative_to``'s centre when given.
        """
        rng = self.rng
        anchor = self.shift if relative_to is None else np.asarray(relative_to.centre)
        centre = (np.asarray(centre) + rng.normal(0.0, spread)) * self.scale + anchor
        axes = np.asarray(axes) * rng.uniform(1.0 - size, 1.0 + size, 3) * np.where(np.asarray(axes) < ENDLESS,
                                                                                       self.scale, 1.0)
        directions = rng.normal(size=(5, 3))
        waves = directions / np.linalg.norm(directions, axis=1, keepdims=True) * rng.uniform(*frequency, (5, 1))
        return _Blob(tuple(float(value) for value in centre), tuple(float(value) for value in axes),
                     yaw=float(yaw + rng.normal(0.0, 0.12)), power=float(power), wobble=float(wobble),
                     waves=waves, phases=rng.uniform(0, 2 * np.pi, 5),
                     **{key: float(value) for key, value in shape.items()})

    def tubes(self, wavelength: tuple[float, float], width: float) -> _Tubes:
        directions = self.rng.normal(size=(2, 4, 3))
        lengths = self.rng.uniform(*wavelength, (2, 4, 1))
        waves = directions / np.linalg.norm(directions, axis=2, keepdims=True) * (2 * np.pi / lengths)
        return _Tubes(waves, self.rng.uniform(0, 2 * np.pi, (2, 4)), width)


def _body_layers(sampler: _Sampler) -> tuple[list[_Layer], float]:
    """Skin-to-viscera rings; returns them and the y (mm) of the vertebral body centre."""
    rng = sampler.rng
    lateral, depth = rng.uniform(140, 165), rng.uniform(100, 120)
    body = sampler.blob((0, 8, 0), (lateral, depth, ENDLESS), spread=(2, 2, 0), size=0.03,
                        power=rng.uniform(2.1, 2.6), wobble=0.12, frequency=(0.8, 2.0))
    fat, wall = rng.uniform(0.06, 0.16), rng.uniform(0.05, 0.08)
    layers = [_Layer(body, Tissue.FAT), _Layer(body, Tissue.MUSCLE, 1.0 - fat),
              _Layer(body, Tissue.VISCERA, 1.0 - fat - wall)]
    return layers, 8.0 + depth - 72.0


def _kidney_layers(sampler: _Sampler, spine: float, side: int) -> list[_Layer]:
    """Cortex, medulla and sinus fat of one kidney; ``side`` -1 is the patient's right (LPS -x), +1 left."""
    right = side < 0
    cortex, medulla = ((Tissue.RIGHT_KIDNEY_CORTEX, Tissue.RIGHT_KIDNEY_MEDULLA) if right
                       else (Tissue.LEFT_KIDNEY_CORTEX, Tissue.LEFT_KIDNEY_MEDULLA))
    kidney = sampler.blob((68 * side, spine + 2, -42 if right else -27), (26, 33, 54), spread=(5, 5, 10),
                          yaw=0.65 * side, power=2.2, wobble=0.2)
    hilum = (-16 * side, -12, 0)  # antero-medial
    sinus = sampler.blob(hilum, (12, 10, 22), spread=(2, 2, 3), wobble=0.2, relative_to=kidney)
    return [_Layer(kidney, cortex, only_on=(Tissue.VISCERA,)), _Layer(kidney, medulla, 0.68, only_on=(cortex,)),
            _Layer(sinus, Tissue.FAT, only_on=(cortex, medulla))]


def _liver_layers(sampler: _Sampler, spine: float) -> list[_Layer]:
    """Right and left lobes with vessels, and the gallbladder under the right lobe."""
    right = sampler.blob((-60, spine - 47, 35), (74, 86, 82), power=2.3, taper=0.35, wobble=0.25)
    left = sampler.blob((5, spine - 97, 60), (55, 34, 45), power=2.2, taper=0.5, wobble=0.3)
    vessels = sampler.tubes((35.0, 80.0), 0.05)
    gallbladder = sampler.blob((-32, spine - 88, -5), (14, 17, 32), yaw=0.3, wobble=0.15)
    layers = [_Layer(lobe, Tissue.LIVER, only_on=(Tissue.VISCERA,)) for lobe in (right, left)]
    layers += [_Layer(lobe, Tissue.LIVER_VESSEL, 0.92, only_on=(Tissue.LIVER,), where=vessels)
               for lobe in (right, left)]
    return layers + [_Layer(gallbladder, Tissue.GALLBLADDER, only_on=(Tissue.LIVER, Tissue.VISCERA))]


def _distractor_layers(sampler: _Sampler, spine: float) -> list[_Layer]:
    """Stomach with a gas cap and bowel loops: bright or dark blobs that are not organs of interest."""
    rng = sampler.rng
    stomach = sampler.blob((50, spine - 82, 45), (42, 36, 55), yaw=-0.3, bend=0.3, wobble=0.3)
    gas = sampler.blob((0, -26, 0), (26, 14, 26), spread=(2, 2, 2), wobble=0.2, relative_to=stomach)
    layers = [_Layer(stomach, Tissue.STOMACH, only_on=(Tissue.VISCERA,)), _Layer(gas, Tissue.GAS,
                                                                                 only_on=(Tissue.STOMACH,))]
    for _ in range(rng.integers(6, 11)):
        centre = (rng.uniform(-85, 85), rng.uniform(spine - 130, spine - 40), rng.uniform(-150, 10))
        loop = sampler.blob(centre, rng.uniform(12, 28, 3), spread=(0, 0, 0), size=0.0, yaw=rng.uniform(0, np.pi))
        layers.append(_Layer(loop, Tissue.BOWEL, only_on=(Tissue.VISCERA,)))
        if rng.random() < 0.35:
            layers.append(_Layer(loop, Tissue.GAS, 0.5, only_on=(Tissue.BOWEL,)))
    return layers


def _musculoskeletal_layers(sampler: _Sampler, spine: float) -> list[_Layer]:
    """Paraspinal and psoas muscles, the great vessels and the vertebral column, painted over everything else."""
    rng = sampler.rng

    def column(x: float, y: float, lateral: float, depth: float, **options: float) -> _Blob:
        return sampler.blob((x, y, 0), (lateral, depth, ENDLESS), spread=(1, 1, 0), size=0.06, wobble=0.08,
                            frequency=(0.5, 1.5), **options)

    layers = []
    for side in (-1, 1):
        layers.append(_Layer(column(38 * side, spine + 50, 28, 20, yaw=0.2 * side), Tissue.MUSCLE,
                             only_on=INSIDE_BODY))
        psoas = sampler.blob((34 * side, spine - 2, -175), (18, 18, 150), spread=(3, 3, 10), wobble=0.1)
        layers.append(_Layer(psoas, Tissue.MUSCLE, only_on=INSIDE_BODY))
    vertebra = column(0, spine, 21, 18, power=2.2)
    discs = _Slabs(rng.uniform(28, 34), rng.uniform(0, 30), 0.22)
    layers += [
        _Layer(column(14, spine - 31, 11, 11), Tissue.AORTA, only_on=INSIDE_BODY),
        _Layer(column(-25, spine - 30, 14, 10), Tissue.IVC, only_on=INSIDE_BODY),
        _Layer(vertebra, Tissue.BONE, only_on=INSIDE_BODY),
        _Layer(vertebra, Tissue.DISC, only_on=(Tissue.BONE,), where=discs),
        _Layer(column(0, spine + 38, 24, 8), Tissue.BONE, only_on=INSIDE_BODY),
        _Layer(column(0, spine + 55, 5, 16), Tissue.BONE, only_on=INSIDE_BODY),
        _Layer(column(0, spine + 28, 9, 8), Tissue.CSF, only_on=INSIDE_BODY),
    ]
    return layers


def anatomy(rng: np.random.Generator) -> list[_Layer]:
    """All layers of one patient in painting order; where organs meet, the one painted first keeps the voxel."""
    sampler = _Sampler(rng)
    body, spine = _body_layers(sampler)
    kidneys = _kidney_layers(sampler, spine, -1) + _kidney_layers(sampler, spine, 1)
    spleen = sampler.blob((90, spine + 12, 52), (30, 55, 48), yaw=0.75, bend=0.4, power=2.2, wobble=0.25)
    return (body + kidneys + [_Layer(spleen, Tissue.SPLEEN, only_on=(Tissue.VISCERA,))]
            + _liver_layers(sampler, spine) + _distractor_layers(sampler, spine)
            + _musculoskeletal_layers(sampler, spine))


def _upsampler(size: int, coarse: int) -> np.ndarray:
    """(size, coarse) matrix interpolating a coarse random grid smoothly (Gaussian weights) to ``size``."""
    positions = (np.arange(size) + 0.5) * coarse / size - 0.5
    weights = np.exp(-0.5 * (positions[:, None] - np.arange(coarse)[None, :]) ** 2)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cell: float) -> np.ndarray:
    """Zero-mean, unit-variance noise over the last two axes, correlated over about ``cell`` pixels."""
    rows, columns = shape[-2:]
    coarse_rows, coarse_columns = max(2, round(rows / cell)) + 2, max(2, round(columns / cell)) + 2
    coarse = rng.standard_normal((*shape[:-2], coarse_rows, coarse_columns), dtype=np.float32)
    noise = np.tensordot(coarse, _upsampler(columns, coarse_columns), axes=([-1], [1]))
    noise = np.moveaxis(np.tensordot(_upsampler(rows, coarse_rows), noise, axes=([1], [-2])), 0, -2)
    return (noise - noise.mean()) / max(float(noise.std()), 1e-6)


def render(tissue: np.ndarray, modality: str, rng: np.random.Generator) -> np.ndarray:
    """Grey levels of a tissue map: per-tissue mean and texture, partial volume, bias, noise, clipping."""
    look = _APPEARANCE[modality]
    table = np.array([look.table[name] for name in Tissue], dtype=np.float32)
    means, textures = table[:, 0], table[:, 1]
    jitter = look.relative_jitter, look.absolute_jitter
    means = (means * rng.uniform(*look.gain) * rng.uniform(1 - jitter[0], 1 + jitter[0], len(means))
             + rng.uniform(-jitter[1], jitter[1], len(means)) * (textures > 0)).astype(np.float32)
    texture = 0.7 * _smooth_noise(rng, tissue.shape, 10.0) + 0.7 * rng.standard_normal(tissue.shape, np.float32)
    image = ndimage.gaussian_filter(means[tissue] + textures[tissue] * texture, (0.0, 0.7, 0.7), truncate=2.5)
    sigma = np.float32(rng.uniform(*look.noise))
    if modality == "ct":
        image += sigma * rng.standard_normal(tissue.shape, np.float32)
        return np.clip(image, *CT_WINDOW)
    image *= np.exp(look.bias * _smooth_noise(rng, tissue.shape[1:], 64.0))[None]
    image *= np.exp(0.04 * _smooth_noise(rng, (1, tissue.shape[0]), 4.0)).reshape(-1, 1, 1)
    image = np.hypot(image + sigma * rng.standard_normal(tissue.shape, np.float32),
                     sigma * rng.standard_normal(tissue.shape, np.float32))  # magnitude image: Rician noise
    return np.minimum(image, np.percentile(image, MR_CLIP_PERCENTILE))
