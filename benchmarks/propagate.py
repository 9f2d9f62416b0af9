"""Propagation speed of SD-FSMIS at full SD-1.5 scale with random weights: naive against optimised.

The released code's per-slice computation (support re-encoded for every query slice, batch 1, float32,
classic attention) against the production path, and each optimisation on its own, on N query slices at
256 x 256 with 3 support slices; the masks of every path are compared with the naive ones. See
benchmarks/lib/propagation_benchmark.py. Speed does not depend on the weights, so no weight files are needed:

    python benchmarks/propagate.py --device cpu --json benchmarks/results/propagate-cpu.json \\
        --markdown benchmarks/results/propagate-cpu.md
    python benchmarks/propagate.py --device cuda --dtype float16 --json benchmarks/results/propagate-cuda.json \\
        --markdown benchmarks/results/propagate-cuda.md

Options: --slices N (60), --ablation-slices N (8; 0 skips the one-at-a-time rows), --dtype, --batch-size,
--channels-last, --compile (see ``--help``).
"""

from lib.command import run

if __name__ == "__main__":
    raise SystemExit(run("propagate", __doc__.splitlines()[0]))
