"""Masks of a trained model at float32 against a half type: does rounding change what the user gets?

Runs benchmarks/lib/precision_agreement.py: every ordered pair of patients of a labelled folder (the bundled
demo phantoms by default) propagated with the bundled demo model (or --checkpoint/--base-model/--dino) at
float32 and at the half type; Dice between the two label maps per organ.

    python benchmarks/precision_agreement.py --json benchmarks/results/precision-agreement-cpu.json \\
        --markdown benchmarks/results/precision-agreement-cpu.md
    python benchmarks/precision_agreement.py --device cuda --half float16 --data CHAOS_FOLDER --pairs 6 ...
"""

import argparse
import json
from pathlib import Path

from lib.precision_agreement import markdown, precision_agreement

from SDFSMISLib.data.phantom import bundled_phantoms
from SDFSMISLib.weights.model_files import chosen_model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="labelled folder (default: the bundled phantoms)")
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--base-model", type=Path)
    parser.add_argument("--dino", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--half", choices=("bfloat16", "float16"), default="bfloat16")
    parser.add_argument("--pairs", type=int, default=None, help="only the first N ordered patient pairs")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    result = precision_agreement(args.data or bundled_phantoms(), chosen_model(args.checkpoint, args.base_model,
                                                                                 args.dino),
                                 args.half, args.device, args.pairs, report=print)
    table = markdown(result)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
