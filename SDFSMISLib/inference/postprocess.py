"""From the decoded foreground map to a binary mask.

Released rule: foreground where the map exceeds 0.25 x its maximum over the chunk of
slices predicted together, then the largest 8-connected component of each slice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from ..errors import InputError

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Threshold:
    """``relative``: foreground > value x max over the chunk (released code, value 0.25).
    ``absolute``: foreground > value on the [0, 1] map."""

    mode: Literal["relative", "absolute"] = "relative"
    value: float = 0.25

    def __post_init__(self) -> None:
        if self.mode not in ("relative", "absolute"):
            raise InputError(f"threshold mode must be 'relative' or 'absolute', got {self.mode!r}")
        if not 0.0 <= self.value <= 1.0:
            raise InputError(f"threshold value must lie in [0, 1], got {self.value}")

    def apply(self, foreground: np.ndarray) -> np.ndarray:
        """``[..., H, W]`` map in [0, 1] -> boolean mask; a chunk with no signal stays empty."""
        cut = self.value * float(foreground.max(initial=0.0)) if self.mode == "relative" else self.value
        return foreground > cut


def largest_component_per_slice(masks: np.ndarray) -> np.ndarray:
    """Keep the largest 8-connected component of each ``[H, W]`` slice of ``[N, H, W]``."""
    kept = np.zeros_like(masks, dtype=bool)
    for i, mask in enumerate(masks):
        labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        if count:
            sizes = np.bincount(labels.ravel())[1:]
            kept[i] = labels == 1 + int(np.argmax(sizes))
    return kept


def binarize(foreground: np.ndarray, threshold: Threshold = Threshold(),
             largest_component: bool = True) -> np.ndarray:
    """``[N, H, W]`` foreground maps of one chunk -> boolean masks."""
    masks = threshold.apply(foreground)
    return largest_component_per_slice(masks) if largest_component else masks
