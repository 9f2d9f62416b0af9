"""Self-supervised training episodes (1-way 1-shot) as a map-style torch Dataset.

Episode ``i`` is a pure function of ``(seed, i)``: its generator is
``numpy.random.default_rng([seed, i])`` and nothing else random is used. Training therefore
resumes exactly at any step, and any split of the indices over processes or DataLoader workers
yields the same episodes.

Sampling follows ADNet / RPT: a random volume, a random label (supervoxel pseudo-label or
ground truth; 0 is background, never a class), then a random pair of adjacent slices where the
label covers at least ``min_pixels`` pixels on both; support is slice ``s``, query ``s + 1``, the
order swapped with probability 0.5. SSL-ALPNet's variant (``pairing="same-slice"``) uses one
slice for both and relies on augmentation to make them differ. ``pairing="distance"`` (ours) puts the
query 1 to ``max_distance`` slices from the support, as propagation does: a query a few slices away from
the nearest annotated slice, where the label may have shrunk or ended. Setting 2 exclusion is given per
volume as ``keep_slices``: only kept slices take part. All qualifying (label, slice) candidates
are indexed once in ``__init__``, so an episode costs one slice lookup plus augmentation.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..errors import InputError
from .augmentation import augment_pair

_PAIRINGS = ("adjacent", "same-slice", "distance")
_AUGMENTS = ("support-or-query", "support", "query", "both", "none")
_RANGE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class EpisodeOptions:
    """How episodes are drawn.

    ``augment``: ``"support-or-query"`` is RPT's rule (gamma on one side and the geometric
    transform on one side, each side drawn by its own coin); ``"support"`` / ``"query"`` /
    ``"both"`` apply the whole recipe to that side; ``"none"`` turns augmentation off.
    ``min_pixels`` must hold on both slices of a pair (RPT asks it of the larger one only), counted
    at the volumes' own resolution; with ``"distance"`` pairing it holds on the support only, and the
    query, ``1..max_distance`` slices away (uniformly), may show less of the label or none. ``size`` resizes slices to
    ``size x size`` (image bilinear, mask nearest) within the augmentation's interpolation.
    """

    pairing: Literal["adjacent", "same-slice", "distance"] = "adjacent"
    min_pixels: int = 200
    max_distance: int = 1
    augment: Literal["support-or-query", "support", "query", "both", "none"] = "support-or-query"
    size: int | None = None

    def __post_init__(self) -> None:
        if self.pairing not in _PAIRINGS:
            raise InputError(f"pairing must be one of {_PAIRINGS}, got {self.pairing!r}")
        if self.augment not in _AUGMENTS:
            raise InputError(f"augment must be one of {_AUGMENTS}, got {self.augment!r}")
        if self.pairing == "same-slice" and self.augment == "none":
            raise InputError("same-slice pairing without augmentation makes the query a copy of the support; "
                             "choose an augment mode other than 'none' or use adjacent pairing")
        if self.max_distance < 1:
            raise InputError(f"max_distance must be at least 1 slice, got {self.max_distance}")
        if self.min_pixels < 1:
            raise InputError(f"min_pixels must be at least 1, got {self.min_pixels}")
        if self.size is not None and self.size < 8:
            raise InputError(f"size must be at least 8 pixels, got {self.size}")


@dataclass
class TrainingVolume:
    """One training volume: ``[S, H, W]`` image in [-1, 1], integer labels on the same grid, and
    optionally which slices Setting 2 keeps (``[S]`` bool; None keeps all)."""

    image: np.ndarray
    labels: np.ndarray
    keep_slices: np.ndarray | None = None


@dataclass(frozen=True)
class _Candidates:
    """Qualifying episodes of one volume in compressed form: label ``labels[k]`` may start at the
    slices ``starts[offsets[k]:offsets[k + 1]]`` (the support slice, or the lower slice of a pair)."""

    labels: np.ndarray
    offsets: np.ndarray
    starts: np.ndarray


def _check_volume(number: int, volume: TrainingVolume) -> np.ndarray:
    """Validate one volume and return its keep mask (all True when none was given)."""
    name = f"training volume {number}"
    if volume.image.ndim != 3 or volume.image.shape != volume.labels.shape:
        raise InputError(f"{name}: image {volume.image.shape} and labels {volume.labels.shape} must be the "
                         "same [slices, rows, columns] shape; pass each volume's labels on its own image grid")
    if not np.issubdtype(volume.labels.dtype, np.integer) or volume.labels.min() < 0:
        raise InputError(f"{name}: labels must be non-negative integers (0 = background), got dtype "
                         f"{volume.labels.dtype} with minimum {volume.labels.min()}; convert or renumber them")
    low, high = float(volume.image.min()), float(volume.image.max())
    if low < -1 - _RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE or not np.isfinite(low + high):
        raise InputError(f"{name}: image values span [{low:.3g}, {high:.3g}]; normalise each volume to [-1, 1]")
    if volume.keep_slices is None:
        return np.ones(volume.image.shape[0], dtype=bool)
    keep = np.asarray(volume.keep_slices)
    if keep.dtype != bool or keep.shape != volume.image.shape[:1]:
        raise InputError(f"{name}: keep_slices must be a boolean array of {volume.image.shape[0]} values "
                         f"(one per slice), got dtype {keep.dtype} and shape {keep.shape}")
    return keep


def label_pixel_counts(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the label ids present and the ``[S, n_ids]`` pixel count of each on each slice.

    One ``bincount`` over (slice, label) does it (10x faster than sorting); only sparse ids, larger
    than the voxel count, are renumbered first so that the count table stays small.
    """
    if int(labels.max()) < labels.size:
        ids, compact = np.arange(int(labels.max()) + 1), labels
    else:
        ids, compact = np.unique(labels, return_inverse=True)
    slices = labels.shape[0]
    per_slice = np.arange(slices).repeat(labels[0].size) * len(ids) + compact.ravel()
    counts = np.bincount(per_slice, minlength=slices * len(ids)).reshape(slices, len(ids))
    present = counts.any(axis=0)
    return ids[present], counts[:, present]


def _candidates(ids: np.ndarray, counts: np.ndarray, keep: np.ndarray, options: EpisodeOptions) -> _Candidates:
    """Index the (label, start slice) pairs of one volume that make a valid episode."""
    present = (counts >= options.min_pixels) & keep[:, None] & (ids != 0)[None, :]
    usable = present if options.pairing != "adjacent" else present[:-1] & present[1:]
    label_index, starts = np.nonzero(usable.T)  # sorted by label, then slice
    labels, first = np.unique(label_index, return_index=True)
    return _Candidates(ids[labels], np.append(first, len(label_index)), starts)


def _no_episode_reason(summaries: list[tuple[np.ndarray, np.ndarray, np.ndarray]], options: EpisodeOptions) -> str:
    """Explain, for a volume list without a single episode, what ruled them all out."""
    if not any(keep.any() for _, _, keep in summaries):
        return "Setting 2 exclusion (keep_slices) removes every slice; check the excluded classes"
    foreground = [counts[keep][:, ids != 0] for ids, counts, keep in summaries]
    if not any(part.any() for part in foreground):
        return "the kept slices carry no label other than 0 (background); check the label volumes"
    largest = max(int(part.max(initial=0)) for part in foreground)
    if largest < options.min_pixels:
        return (f"no label covers min_pixels={options.min_pixels} pixels on any kept slice (largest: {largest}); "
                "lower min_pixels or use larger supervoxels")
    return (f"no label covers min_pixels={options.min_pixels} pixels on two adjacent kept slices; "
            "lower min_pixels, keep more slices or use same-slice pairing")


class EpisodeDataset(torch.utils.data.Dataset):
    """``length`` episodes over ``volumes``; item ``i`` depends only on ``(seed, i)``.

    Each item is a dict of float32 ``[H, W]`` tensors: ``support_image`` and ``query_image`` in
    [-1, 1], ``support_mask`` and ``query_mask`` in {0, 1}. Volumes without a single qualifying
    episode are left out of the draw; their positions in ``volumes`` are listed in ``skipped``.
    """

    def __init__(self, volumes: Sequence[TrainingVolume], length: int, seed: int = 42,
                 options: EpisodeOptions = EpisodeOptions()) -> None:
        if length < 1:
            raise InputError(f"length (number of episodes) must be at least 1, got {length}")
        if seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {seed}")
        if not volumes:
            raise InputError("no training volumes were given; pass at least one image with its labels")
        self.length, self.seed, self.options = length, seed, options
        self.volumes: list[TrainingVolume] = []
        self.candidates: list[_Candidates] = []
        self.skipped: list[int] = []
        summaries = []
        for number, volume in enumerate(volumes):
            keep = _check_volume(number, volume)
            ids, counts = label_pixel_counts(volume.labels)
            summaries.append((ids, counts, keep))
            candidates = _candidates(ids, counts, keep, options)
            if len(candidates.labels):
                self.volumes.append(TrainingVolume(np.asarray(volume.image, dtype=np.float32), volume.labels, keep))
                self.candidates.append(candidates)
            else:
                self.skipped.append(number)
        if not self.volumes:
            raise InputError(f"no training episode can be drawn from the {len(volumes)} volume(s): "
                             + _no_episode_reason(summaries, options))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = operator.index(index)
        if not 0 <= index < self.length:
            raise IndexError(f"episode {index} is outside 0..{self.length - 1}")
        rng = np.random.default_rng([self.seed, index])
        number = int(rng.integers(len(self.volumes)))
        volume, candidates = self.volumes[number], self.candidates[number]
        k = int(rng.integers(len(candidates.labels)))
        start = int(candidates.starts[rng.integers(candidates.offsets[k], candidates.offsets[k + 1])])
        support, query = self._slice_pair(start, rng, volume.keep_slices)
        label = candidates.labels[k]
        sides = [(volume.image[s], volume.labels[s] == label) for s in (support, query)]
        return self._augment(sides, rng)

    def _slice_pair(self, start: int, rng: np.random.Generator, keep: np.ndarray) -> tuple[int, int]:
        """Support and query slice indices for a candidate start slice; ``keep`` marks the usable slices.

        A distant query on a slice Setting 2 excludes falls back to the support slice itself.
        """
        if self.options.pairing == "same-slice":
            return start, start
        if self.options.pairing == "distance":
            distance = int(rng.integers(1, self.options.max_distance + 1))
            ahead = start + distance < len(keep) and (start - distance < 0 or rng.random() < 0.5)
            query = int(np.clip(start + distance if ahead else start - distance, 0, len(keep) - 1))
            return start, query if keep[query] else start
        return (start + 1, start) if rng.random() < 0.5 else (start, start + 1)

    def _augment(self, sides: list[tuple[np.ndarray, np.ndarray]],
                 rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Augment (support, query) per the options and pack them as tensors."""
        mode = self.options.augment
        if mode == "support-or-query":
            intensity_side, geometric_side = int(rng.random() < 0.5), int(rng.random() < 0.5)
            plan = [(intensity_side == side, geometric_side == side) for side in (0, 1)]
        else:
            plan = [(on, on) for on in (mode in ("support", "both"), mode in ("query", "both"))]
        out_shape = None if self.options.size is None else (self.options.size, self.options.size)
        episode = {}
        for name, (image, mask), (intensity, geometric) in zip(("support", "query"), sides, plan):
            image, mask = augment_pair(image, mask, rng, intensity=intensity, geometric=geometric, out_shape=out_shape)
            episode[f"{name}_image"], episode[f"{name}_mask"] = torch.from_numpy(image), torch.from_numpy(mask)
        return episode
