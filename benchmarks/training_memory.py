"""GPU memory of one training step of the full SD-1.5 + DINOv2 model, random weights.

Forward, backward, gradient clipping and the AdamW update, as ``sdfsmis train`` runs them, twice (AdamW
allocates its states in the first step); reports CUDA max allocated. The question: with bf16 mixed
precision and gradient checkpointing, does one step fit in 16 GB? Needs a CUDA GPU:

    python benchmarks/training_memory.py --json benchmarks/results/training-memory-cuda.json
    python benchmarks/training_memory.py --mixed-precision no --no-gradient-checkpointing   # the reference

Options: --device (cuda), --mixed-precision (bf16), --no-gradient-checkpointing, --batch-size (1),
--image-size (256).
"""

from lib.command import run

if __name__ == "__main__":
    raise SystemExit(run("training-step", __doc__.splitlines()[0]))
