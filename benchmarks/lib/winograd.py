"""Winograd F(4x4, 3x3) convolution: the same 3x3 convolutions with 4x fewer multiplications, for the CPU.

An experiment kept outside the product: on the whole propagation path it gave about 1.2x at float32 on 2
CPU cores for about 2 GiB more peak memory (the transformed weights, and a monkey-patched ``forward``), so
:func:`SDFSMISLib.weights.loading.load_model` does not use it. The propagation benchmark measures it as its
own row and on top of the production path (``benchmarks/propagate.py``).

**Why.** At float32 on the CPU, propagation's time goes into 3x3 convolutions (the VAE's encoder and
decoder alone are about 890 of the optimised path's 1240 GFLOP per slice at 256 px), and oneDNN already runs
them at 50-80 % of the processor's matrix-multiply speed: past batching and layout, only fewer operations
make them faster. Winograd's minimal filtering algorithm (Lavin and Gray, "Fast Algorithms for Convolutional
Neural Networks", CVPR 2016) computes a 4 x 4 output tile of a 3 x 3 convolution from its 6 x 6 input tile
with 36 multiplications per channel pair instead of 144. Over a whole layer this is 36 independent matrix
products ``[tiles, C_in] x [C_in, C_out]`` between transformed input tiles and transformed weights, framed
by small linear transforms (``B^T d B`` in, ``A^T m A`` out), all run here as PyTorch GEMMs.

**Exactness.** The result is the same convolution up to float32 rounding: relative error about 3e-6
against a float64 reference (oneDNN's direct convolution: about 1e-6), far below what moves a mask; the
benchmark checks the masks against the naive path (``benchmarks/propagate.py``). The F(4x4) transform
points (0, +-1, +-2, 1/2 folded into the weight transform) are the standard, well-conditioned choice.
Larger tiles were measured and left out: F(6x6, 3x3) (points 0, +-1, +-2, +-1/2) kept the relative error
at 4-6e-6, but ran at 0.70x (512 channels), 0.90x (256) and 0.96x (128) the speed of F(4x4) on the
decoder's layers at batch 4, written the same way: its 64 products are over fewer tiles each, and its
transformed weights, streamed once per chunk, are 1.8x larger.

**Where.** Only where it pays and nothing else changes: float32 tensors on the CPU without gradients
(inference), stride 1, padding 1, no dilation or groups, at least :data:`MIN_CHANNELS` channels in and out
(the transforms' cost per channel pair grows as the channels fall: at 128 channels a layer is only 1.2x
faster) and at least :data:`MIN_PIXELS` output pixels (on small maps the 4x larger transformed weights make
the product memory-bound: with the UNet's 16 x 16 and 8 x 8 levels as well, the path was slower).
Anything else falls back to the module's own convolution, so a network with Winograd switched on still
trains, runs on a GPU or in half precision exactly as before. :func:`set_winograd` switches it on the
convolutions of a module; the transformed weights are computed on first use and recomputed when the weights
change (``load_state_dict``, ``.to()``), at the memory cost of 4x the weights of the convolutions that use it.

**Chunks.** The tiles of a layer are processed in chunks of about :data:`CHUNK_BYTES` of transformed
input, so that a chunk's transform, product and inverse transform stay in the processor's cache (2, 4 and
8 MB measured alike), but of at least :data:`MIN_CHUNK_TILES` tiles, so that the products stay fast
(:func:`chunk_tiles`; the figures below predate that floor). Measured on a 2-core Sapphire Rapids
against oneDNN's channels_last convolution, per layer of the SD-1.5 VAE decoder at batch 4: 1.6-1.9x at
512 channels (32-128 px), 1.4x at 256 channels, 1.2x at 128 channels (256 px); the whole decoder 1.54x and
the encoder 1.43x, whose remaining time is mostly group normalisation, SiLU and the layers Winograd leaves
out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

#: Output tile side (m) and kernel side (r) of F(m x m, r x r); the input tile side is m + r - 1.
TILE = 4
KERNEL = 3
INPUT_TILE = TILE + KERNEL - 1
#: Fewest input and output channels at which the transforms cost less than the product saves.
MIN_CHANNELS = 128
#: Fewest output pixels (per image) at which the larger transformed weights are worth streaming.
MIN_PIXELS = 32 * 32
#: Transformed input per chunk: sized to stay in a core's L2 cache with the product and output tiles.
CHUNK_BYTES = 4 * 2**20
#: Fewest tiles per chunk, the rows of each of its 36 products: below this the products run far under the
#: processor's matrix-multiply speed (at 512 channels, 4 MB holds only 56 tiles).
MIN_CHUNK_TILES = 128

# Lavin and Gray's F(4x4, 3x3) matrices (interpolation points 0, +-1, +-2, infinity).
_INPUT_1D = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
             (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
_WEIGHT_1D = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
              (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))
_OUTPUT_1D = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))


def _two_dimensional(matrix: tuple[tuple[float, ...], ...]) -> torch.Tensor:
    """The 2-D transform ``M X M^T`` of a flattened tile as one matrix: ``kron(M, M)`` (in float64, exact)."""
    one = torch.tensor(matrix, dtype=torch.float64)
    return torch.kron(one, one)


INPUT_TRANSFORM = torch.tensor(_INPUT_1D, dtype=torch.float32)  # [6, 6]: B^T, applied along rows, then columns
WEIGHT_TRANSFORM = _two_dimensional(_WEIGHT_1D)  # [36, 9], applied in float64 once per weight
OUTPUT_TRANSFORM = _two_dimensional(_OUTPUT_1D).float()  # [16, 36]: 36 products -> 4x4 output tile


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """``[C_out, C_in, 3, 3]`` -> ``[36, C_in, C_out]``: the right-hand matrices of the 36 products."""
    c_out, c_in = weight.shape[:2]
    transformed = WEIGHT_TRANSFORM.to(weight.device) @ weight.detach().double().reshape(c_out * c_in, 9).T
    return transformed.to(weight.dtype).view(INPUT_TILE**2, c_out, c_in).transpose(1, 2).contiguous()


def _zero_bordered(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``x`` (``[B, H, W, C]``) inside a zero frame, ``[B, height, width, C]``: one pixel above and left
    (the convolution's padding), the rest below and right (padding plus what completes the last tiles).

    Unlike ``F.pad`` it zero-fills only the frame, not the whole tensor before copying into it."""
    batch, rows, cols, channels = x.shape
    padded = x.new_empty(batch, height, width, channels)
    padded[:, 0].zero_()
    padded[:, rows + 1:].zero_()
    padded[:, 1:rows + 1, 0].zero_()
    padded[:, 1:rows + 1, cols + 1:].zero_()
    padded[:, 1:rows + 1, 1:cols + 1].copy_(x)
    return padded


def chunk_tiles(channels: int, element_size: int, chunk_bytes: int | None = None,
                min_tiles: int | None = None) -> int:
    """Tiles per chunk: :data:`CHUNK_BYTES` of transformed input, but at least :data:`MIN_CHUNK_TILES`.

    The floor matters at 512 channels, where 4 MB holds only 56 tiles and the products ran at about 60 % of
    the matmul speed: measured at batch 4 with it, the whole VAE decoder ran 1.12x and the encoder 1.20x
    faster (three alternating runs each, same results). On the whole propagation path (8 slices, two
    alternations) the difference was within the shared host's noise.
    """
    return max(min_tiles or MIN_CHUNK_TILES,
               (chunk_bytes or CHUNK_BYTES) // (INPUT_TILE**2 * channels * element_size))


def winograd_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    chunk_bytes: int | None = None, min_chunk_tiles: int | None = None) -> torch.Tensor:
    """``F.conv2d(x, w, bias, padding=1)`` for a 3x3 ``w`` given as ``transform_weight(w)``.

    ``x`` is ``[B, C_in, H, W]`` in any layout; the result is ``[B, C_out, H, W]``, channels_last when ``x``
    is (the CPU inference layout, which the product writes naturally), contiguous otherwise. The chunking
    arguments (:func:`chunk_tiles`) change only speed.
    """
    batch, c_in, height, width = x.shape
    c_out = weight.shape[2]
    rows, cols = -(-height // TILE), -(-width // TILE)  # tiles per image, the last ones padded
    # NHWC, zero border of 1 (the convolution's padding) plus whatever completes the last tiles.
    padded = _zero_bordered(x.permute(0, 2, 3, 1), TILE * rows + 2, TILE * cols + 2)
    padded_h, padded_w = padded.shape[1:3]
    out = torch.empty(batch, TILE * rows, TILE * cols, c_out, dtype=x.dtype, device=x.device)
    input_transform, output_transform = INPUT_TRANSFORM.to(x.device), OUTPUT_TRANSFORM.to(x.device)
    tiles_per_chunk = chunk_tiles(max(c_in, c_out), x.element_size(), chunk_bytes, min_chunk_tiles)
    row_step = max(1, min(rows, tiles_per_chunk // cols))  # tile rows per chunk within one image
    image_step = max(1, tiles_per_chunk // (rows * cols)) if row_step == rows else 1
    tiles_in_chunk = image_step * row_step * cols
    if bias is None:
        tiled_bias = x.new_zeros(tiles_in_chunk * c_out)
    else:
        tiled_bias = bias.detach().repeat(tiles_in_chunk)
    for image in range(0, batch, image_step):
        images = min(image_step, batch - image)
        for row in range(0, rows, row_step):
            count = min(row_step, rows - row)
            # [6, 6, images, count, cols, C_in]: every input tile, overlapping by 2, without copying.
            tiles = padded.as_strided(
                (INPUT_TILE, INPUT_TILE, images, count, cols, c_in),
                (padded_w * c_in, c_in, padded_h * padded_w * c_in, TILE * padded_w * c_in, TILE * c_in, 1),
                padded.storage_offset() + (image * padded_h + TILE * row) * padded_w * c_in)
            # B^T d B as two products with the 6 x 6 B^T, along the tiles' rows (this reshape gathers the
            # overlapping tiles) and then their columns: a third of the arithmetic of one product with the
            # 36 x 36 kron(B^T, B^T), and 10-20 % faster per layer. (For A^T m A the single 16 x 36 product
            # measured faster than two passes.)
            rows_done = input_transform @ tiles.reshape(INPUT_TILE, -1)
            transformed = torch.matmul(input_transform, rows_done.view(INPUT_TILE, INPUT_TILE, -1)).view(
                INPUT_TILE**2, -1, c_in)
            products = torch.bmm(transformed, weight)  # [36, tiles, C_out]
            # The bias joins the output transform's product (addmm), sparing a pass over the output.
            output_tiles = torch.addmm(tiled_bias[:products.shape[1] * c_out], output_transform,
                                       products.view(INPUT_TILE**2, -1))
            out[image:image + images, TILE * row:TILE * (row + count)].view(
                images, count, TILE, cols, TILE, c_out).copy_(
                output_tiles.view(TILE, TILE, images, count, cols, c_out).permute(2, 3, 0, 4, 1, 5))
    layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    return out[:, :height, :width].permute(0, 3, 1, 2).contiguous(memory_format=layout)


def is_eligible(conv: nn.Conv2d) -> bool:
    """Whether ``conv`` is a 3x3 convolution Winograd F(4x4, 3x3) computes (see "Where" above)."""
    return (type(conv).forward is nn.Conv2d.forward  # a subclass's own forward (LoRA, say) must still run
            and conv.kernel_size == (KERNEL, KERNEL) and conv.stride == (1, 1) and conv.padding == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
            and min(conv.in_channels, conv.out_channels) >= MIN_CHANNELS)


@dataclass(eq=False)
class WinogradForward:
    """A convolution's ``forward`` while Winograd is on: Winograd where it applies, the module's own otherwise.

    Set as an instance attribute (``conv.forward``), so deleting it restores the class's ``forward``. The
    transformed weight is cached with the weight tensor it came from, kept alive so that its memory cannot
    be reused, and that tensor's version: replacing the weight (``.to()``, ``load_state_dict`` with
    ``assign``) or changing it in place through autograd-visible operations (an optimiser step,
    ``load_state_dict``) makes it recompute. Edits through ``weight.data`` bypass PyTorch's version counter
    and are not seen: switch Winograd off and on after them. Copies and pickles drop the cache.
    """

    conv: nn.Conv2d
    _source: torch.Tensor | None = None  # the weight the cache was computed from
    _source_version: int | None = None
    _transformed: torch.Tensor | None = None

    def applies(self, x: torch.Tensor) -> bool:
        weight = self.conv.weight
        wants_gradients = torch.is_grad_enabled() and (
            x.requires_grad or any(parameter.requires_grad for parameter in self.conv.parameters()))
        return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and x.dim() == 4
                and not wants_gradients and x.shape[2] * x.shape[3] >= MIN_PIXELS)

    def transformed_weight(self) -> torch.Tensor:
        weight = self.conv.weight
        version = None if weight.is_inference() else weight._version  # inference tensors have no version
        if (self._source is None or weight.data_ptr() != self._source.data_ptr()
                or version != self._source_version):
            self._source, self._source_version, self._transformed = weight.detach(), version, transform_weight(weight)
        return self._transformed

    def __getstate__(self) -> dict[str, object]:
        return {"conv": self.conv}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.applies(x):
            return type(self.conv).forward(self.conv, x)
        return winograd_conv2d(x, self.transformed_weight(), self.conv.bias)


def _installed(module: nn.Module) -> bool:
    """Whether ``module``'s forward is a :class:`WinogradForward` (set on the instance by :func:`set_winograd`)."""
    return isinstance(module.__dict__.get("forward"), WinogradForward)


def winograd_applies(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the experiment can run there: float32 on the CPU (GPUs run their own Winograd or implicit-GEMM
    kernels, and half types would lose the digits the transforms need)."""
    return device.type == "cpu" and dtype == torch.float32


def set_winograd(module: nn.Module, enabled: bool) -> int:
    """Switch Winograd on or off for every eligible convolution in ``module``; how many are eligible.

    Switching off also frees the transformed weights. Idempotent both ways.
    """
    convolutions = [conv for conv in module.modules() if isinstance(conv, nn.Conv2d) and is_eligible(conv)]
    for conv in convolutions:
        installed = _installed(conv)
        if enabled and not installed:
            conv.forward = WinogradForward(conv)
        elif not enabled and installed:
            del conv.forward
    return len(convolutions)


def winograd_enabled(module: nn.Module) -> bool:
    """Whether any convolution of ``module`` runs Winograd (where it applies)."""
    return any(_installed(conv) for conv in module.modules())
