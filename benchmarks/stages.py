"""Per-stage timing of SD-FSMIS at full SD-1.5 scale with random weights.

One support slice + one query slice at 256 x 256: VAE encode, DINOv2, UNet support pass,
UNet query pass, VAE decode, and peak memory. Speed does not depend on the weights, so no
weight files are needed. Run on CPU, and on GPU when there is one:

    python benchmarks/stages.py --device cpu --json benchmarks/results/stages-cpu.json
    python benchmarks/stages.py --device cuda --dtype float16 --json benchmarks/results/stages-cuda.json

benchmarks/propagate.py measures a whole query volume, naive against optimised.
"""

from lib.command import run

if __name__ == "__main__":
    raise SystemExit(run("stages", __doc__.splitlines()[0]))
