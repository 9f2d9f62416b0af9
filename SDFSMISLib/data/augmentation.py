"""Training-time augmentation of one slice and its mask (the RPT / ADNet / SSL-ALPNet recipe).

Self-supervised episodes pair a slice with its neighbour (or with itself); augmenting one side
keeps the network from matching pixels instead of learning the organ. The recipe (RPT
``geom_transform`` / ``gamma_tansform``, itself SSL-ALPNet's ``sabs_aug``):

- gamma in [0.5, 1.5], applied to the image mapped from [-1, 1] to [0, 1] and back;
- affine about the image centre: rotation +-5 deg, shift +-5 px per axis, shear +-5 deg,
  isotropic scale in [0.9, 1.2];
- elastic: uniform noise in [-1, 1] per pixel and axis, Gaussian-smoothed with sigma 5 px
  (kernel cut at 2 sigma, like RPT's ``cv2.GaussianBlur`` with ksize ``int(4 sigma) | 1``), times
  alpha 10 px. Both are in pixels of the augmented slice, so the field's standard deviation is
  only about 0.3 px: a mild wobble, as in RPT.

The affine, the elastic field and any resize to the network resolution are composed into one
sampling grid, so each slice is interpolated once: the image bilinearly, the mask by nearest
neighbour, at the same coordinates. Every random draw comes from the caller's
``numpy.random.Generator``: the same generator state gives the same result, in any process.
(RPT shears about the image corner and rounds a bilinearly warped mask; here every transform is
about the centre and the mask is sampled by nearest neighbour.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

Shape = tuple[int, int]


@dataclass(frozen=True)
class AugmentationRecipe:
    """Ranges of the random transforms; the defaults are RPT's (angles in degrees, lengths in pixels)."""

    gamma: tuple[float, float] = (0.5, 1.5)
    rotation: float = 5.0
    shift: float = 5.0
    shear: float = 5.0
    scale: tuple[float, float] = (0.9, 1.2)
    elastic_alpha: float = 10.0
    elastic_sigma: float = 5.0


RPT = AugmentationRecipe()


@dataclass(frozen=True)
class Affine:
    """One affine transform about the slice centre; the defaults are the identity.

    ``shift`` is (rows, columns) in output pixels; a positive shift moves the content towards
    higher indices. ``scale`` > 1 magnifies.
    """

    rotation: float = 0.0
    shift: tuple[float, float] = (0.0, 0.0)
    shear: float = 0.0
    scale: float = 1.0


def random_affine(rng: np.random.Generator, recipe: AugmentationRecipe = RPT) -> Affine:
    """Draw one affine transform uniformly within the recipe's ranges."""
    rotation = rng.uniform(-recipe.rotation, recipe.rotation)
    shift = rng.uniform(-recipe.shift, recipe.shift, size=2)
    shear = rng.uniform(-recipe.shear, recipe.shear)
    scale = rng.uniform(*recipe.scale)
    return Affine(float(rotation), (float(shift[0]), float(shift[1])), float(shear), float(scale))


def affine_matrix(affine: Affine, in_shape: Shape, out_shape: Shape) -> np.ndarray:
    """3 x 3 homogeneous matrix taking an output pixel (row, col) to the input pixel it samples.

    The affine acts about the output centre in output pixels; the resize from ``in_shape`` to
    ``out_shape`` uses pixel centres (``align_corners=False``). The identity affine at equal
    shapes gives exactly the identity matrix, so it samples every pixel unchanged.
    """
    angle, shear = np.deg2rad(affine.rotation), np.deg2rad(affine.shear)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    shearing = np.array([[1.0, 0.0], [np.tan(shear), 1.0]])
    inverse = np.linalg.inv(affine.scale * shearing @ rotation)
    centre = (np.asarray(out_shape, dtype=float) - 1) / 2
    to_source = np.eye(3)
    to_source[:2, :2] = inverse
    to_source[:2, 2] = centre - inverse @ (centre + np.asarray(affine.shift, dtype=float))
    ratio = np.asarray(in_shape, dtype=float) / np.asarray(out_shape, dtype=float)
    resize = np.diag([*ratio, 1.0])
    resize[:2, 2] = (ratio - 1) / 2
    return resize @ to_source


def elastic_displacement(shape: Shape, rng: np.random.Generator, recipe: AugmentationRecipe = RPT) -> np.ndarray:
    """``[2, H, W]`` smooth random displacement in pixels (row and column components)."""
    noise = 2 * rng.random((2, *shape), dtype=np.float32) - 1  # float32 halves the cost of the blur
    sigma = (0.0, recipe.elastic_sigma, recipe.elastic_sigma)
    return recipe.elastic_alpha * ndimage.gaussian_filter(noise, sigma, mode="mirror", truncate=2.0)


def sampling_coordinates(matrix: np.ndarray, out_shape: Shape, displacement: np.ndarray | None = None) -> np.ndarray:
    """``[2, H, W]`` input coordinates of every output pixel: the elastic field, then the affine.

    As in RPT, the elastic field deforms the already affine-transformed slice, so it is added to
    the output grid before the matrix maps it to the input.
    """
    grid = np.indices(out_shape, dtype=float)
    if displacement is not None:
        grid += displacement
    return np.einsum("ij,jhw->ihw", matrix[:2, :2], grid) + matrix[:2, 2, None, None]


def warp(image: np.ndarray, mask: np.ndarray, coordinates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample the image bilinearly and the mask by nearest neighbour at the same coordinates.

    Outside the slice the edge pixel is repeated, so no fill value can leave the image range.
    """
    warped_image = ndimage.map_coordinates(image, coordinates, order=1, mode="nearest", output=np.float32)
    warped_mask = ndimage.map_coordinates(mask.astype(np.float32, copy=False), coordinates, order=0,
                                          mode="nearest", output=np.float32)
    return warped_image, warped_mask


def gamma_transform(image: np.ndarray, gamma: float) -> np.ndarray:
    """Apply ``x -> x ** gamma`` to the image mapped from [-1, 1] to [0, 1], then map it back."""
    unit = np.clip((image + 1) / 2, 0.0, 1.0)
    return (2 * np.power(unit, gamma) - 1).astype(np.float32)


def augment_pair(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *,
                 intensity: bool = True, geometric: bool = True, out_shape: Shape | None = None,
                 recipe: AugmentationRecipe = RPT) -> tuple[np.ndarray, np.ndarray]:
    """Augment one ``[H, W]`` slice in [-1, 1] and its {0, 1} mask; return float32 ``out_shape`` arrays.

    ``geometric`` draws an affine and an elastic field shared by image and mask; ``intensity``
    draws a gamma for the image. ``out_shape`` (default: the slice's shape) resizes in the same
    interpolation. With nothing to do, the inputs come back unchanged as float32 copies.
    """
    in_shape: Shape = (image.shape[0], image.shape[1])
    out_shape = in_shape if out_shape is None else out_shape
    if geometric or out_shape != in_shape:
        affine = random_affine(rng, recipe) if geometric else Affine()
        displacement = elastic_displacement(out_shape, rng, recipe) if geometric else None
        coordinates = sampling_coordinates(affine_matrix(affine, in_shape, out_shape), out_shape, displacement)
        image, mask = warp(image, mask, coordinates)
    if intensity:
        image = gamma_transform(image, rng.uniform(*recipe.gamma))
    return image.astype(np.float32), mask.astype(np.float32)
