"""Time the supervoxel recipe on a 256 x 256 x 40 volume, and count supervoxels per CHAOS volume.

Pseudo-labels are made once per dataset, but for every volume: this checks that the numba 3-D
Felzenszwalb stays well under a minute per volume on a laptop CPU. The numba compile (or load from
numba's on-disk cache) is timed apart, on a tiny volume, before the timed runs:

    python benchmarks/supervoxels.py [--chaos ../shared/data/chaos-t2] [--all]

With a CHAOS folder it also times one real patient, and with ``--all`` prints the number of
supervoxels of every patient.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

from SDFSMISLib.data.supervoxels import felzenszwalb_3d, supervoxels
from SDFSMISLib.io.volumes import read_volume

SHAPE = (40, 256, 256)
CHAOS_SPACING = (7.7, 1.25, 1.25)  # (k, j, i) mm
DEFAULT_CHAOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "chaos-t2"


def synthetic_volume(seed: int = 0) -> np.ndarray:
    """Smooth blobs plus a little noise inside an elliptic 'body' on a zero background, roughly MR-like."""
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.random(SHAPE), sigma=(1, 8, 8))
    _, j, i = np.ogrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    body = ((j - 128) / 110) ** 2 + ((i - 128) / 120) ** 2 < 1
    volume = (smooth - smooth.min()) / np.ptp(smooth) * 1000 + rng.normal(0, 10, SHAPE)
    return np.where(body, np.clip(volume, 0, None), 0)


def timed(label: str, run: Callable[[], np.ndarray], background: bool = True) -> None:
    """Run once; print the seconds and the number of segments (label 0 is one unless it is ``background``)."""
    start = time.perf_counter()
    labels = run()
    seconds = time.perf_counter() - start
    print(f"{label}: {seconds:.2f} s, {int(labels.max()) + (not background)} segments")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chaos", type=Path, default=DEFAULT_CHAOS, help="folder of image_<id>.nii.gz")
    parser.add_argument("--all", action="store_true", help="count the supervoxels of every CHAOS volume")
    args = parser.parse_args()

    tiny = np.random.default_rng(1).random((3, 8, 8))
    timed("numba compile / cache load (3x8x8 volume)", lambda: felzenszwalb_3d(tiny, min_size=4), False)

    volume = synthetic_volume()
    timed(f"felzenszwalb_3d, synthetic {SHAPE}", lambda: felzenszwalb_3d(
        255 * volume / volume.max(), spacing=CHAOS_SPACING), False)
    timed(f"supervoxels (whole recipe), synthetic {SHAPE}", lambda: supervoxels(volume, CHAOS_SPACING))

    images = sorted(args.chaos.glob("image_*.nii.gz"), key=lambda path: int(path.name[6:-7]))
    for image_path in images if args.all else images[:1]:
        image = read_volume(image_path)
        timed(f"supervoxels, CHAOS {image_path.name} {image.array.shape}",
              lambda: supervoxels(image.array, image.spacing[::-1]))


if __name__ == "__main__":
    main()
