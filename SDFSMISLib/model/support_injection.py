"""Support Information Injection (SII) as diffusers attention processors.

Two variants, selected by :attr:`SDFSMISConfig.injection`:

``kv-bank`` (the authors' released code, default)
    The support latent runs through the UNet first; every self-attention (``attn1`` of each
    ``BasicTransformerBlock``) records its keys and values. In the query pass each
    self-attention attends over ``[query K/V ; support K/V]`` concatenated along the tokens.
    k shots concatenate their tokens. No new parameters.

``cross-attn`` (the paper's Eq. 1)
    After the standard self-attention, an added attention lets the query attend to the
    support's self-attention input tokens. Its projections are copies of the block's
    self-attention and its output projection starts at zero, so at step 0 the network
    behaves exactly like the pretrained UNet.

The support tokens travel in a :class:`SupportContext` passed through the UNet's
``cross_attention_kwargs``. Nothing is stored on the modules, so no state can leak from one
prediction to the next or between batch items, and gradient checkpointing (which replays
blocks with the same kwargs) sees the same context on recomputation.

Attention itself runs PyTorch's fused ``scaled_dot_product_attention`` (``sdpa``, the default)
or the ``classic`` ``baddbmm`` + softmax + ``bmm`` of diffusers' ``AttnProcessor``, which the
released code uses and which materialises every score matrix; :func:`set_attention_kernel`
switches, so the speed benchmark can run the released computation on the same network.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from torch import nn

#: Keyword under which the context travels in ``cross_attention_kwargs``.
CONTEXT_KEY = "support"

AttentionKernel = Literal["sdpa", "classic"]
ATTENTION_KERNELS: tuple[AttentionKernel, ...] = ("sdpa", "classic")


class SupportMode(Enum):
    RECORD = "record"
    READ = "read"


@dataclass
class SupportContext:
    """Support tokens of every injecting attention layer, for one UNet call.

    In ``RECORD`` mode the support pass (batch = groups x shots, shot-major within a group)
    fills :attr:`tokens`. In ``READ`` mode the query pass reads them; query item ``b`` sees
    the tokens of support group ``index[b]``.
    """

    mode: SupportMode
    shots: int = 1
    tokens: dict[str, tuple[torch.Tensor, ...]] = field(default_factory=dict)
    index: torch.Tensor | None = None

    def record(self, layer: str, *tensors: torch.Tensor) -> None:
        # [groups * shots, T, C] -> [groups, shots * T, C]: the shots of a group concatenate.
        self.tokens[layer] = tuple(t.reshape(-1, self.shots * t.shape[1], t.shape[2]) for t in tensors)

    def read(self, layer: str, batch_size: int) -> tuple[torch.Tensor, ...]:
        stored = self.tokens[layer]
        groups = stored[0].shape[0]
        if self.index is None:
            if groups not in (1, batch_size):
                raise ValueError(f"{groups} support groups for {batch_size} queries: pass an index")
            return tuple(t.expand(batch_size, -1, -1) for t in stored)
        return tuple(t.index_select(0, self.index) for t in stored)

    def reading(self, index: torch.Tensor | None) -> "SupportContext":
        """A READ view of the recorded tokens for a query batch."""
        if self.mode is not SupportMode.RECORD or not self.tokens:
            raise RuntimeError("run the support pass (RECORD) before reading support tokens")
        return SupportContext(SupportMode.READ, self.shots, self.tokens, index)


def _classic_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` on ``[B, heads, T, d]`` as diffusers' ``AttnProcessor`` computes it.

    Heads are folded into the batch and the whole score matrix is materialised (``baddbmm``, softmax,
    ``bmm``): the released code's kernel, kept so its cost can be measured against the fused one.
    """
    batch, heads, _tokens, head_dim = query.shape
    q, k, v = (t.reshape(batch * heads, -1, head_dim) for t in (query, key, value))
    scores = torch.baddbmm(q.new_empty(q.shape[0], q.shape[1], k.shape[1]), q, k.transpose(1, 2),
                           beta=0, alpha=head_dim ** -0.5)
    return torch.bmm(scores.softmax(dim=-1), v).view(batch, heads, -1, head_dim)


def _attend(attn: Attention | SupportCrossAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
            kernel: AttentionKernel = "sdpa") -> torch.Tensor:
    """Multi-head attention with the layer's heads, then its output projection."""
    batch = query.shape[0]
    head_dim = key.shape[-1] // attn.heads

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

    attention = F.scaled_dot_product_attention if kernel == "sdpa" else _classic_attention
    out = attention(split(query), split(key), split(value))
    out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
    return attn.to_out[1](attn.to_out[0](out))


class SupportCrossAttention(nn.Module):
    """The added query-to-support attention of the ``cross-attn`` variant (paper Eq. 1).

    Initialised from the block's self-attention projections with a zero output projection,
    so the pretrained behaviour is unchanged until training moves it.
    """

    def __init__(self, self_attention: Attention) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(self_attention.to_q.in_features)
        self.to_q = copy.deepcopy(self_attention.to_q)
        self.to_k = copy.deepcopy(self_attention.to_k)
        self.to_v = copy.deepcopy(self_attention.to_v)
        self.to_out = copy.deepcopy(self_attention.to_out)
        nn.init.zeros_(self.to_out[0].weight)
        nn.init.zeros_(self.to_out[0].bias)
        self.heads = self_attention.heads

    def forward(self, hidden_states: torch.Tensor, support_tokens: torch.Tensor,
                kernel: AttentionKernel = "sdpa") -> torch.Tensor:
        query = self.to_q(self.norm(hidden_states))
        return _attend(self, query, self.to_k(support_tokens), self.to_v(support_tokens), kernel)


class SupportInjectionProcessor:
    """Attention processor for every attention of the UNet.

    Self-attentions of transformer blocks (``inject=True``) record or read support tokens;
    all other attentions compute ordinary attention and ignore the context. ``kernel`` is the
    attention implementation (see the module docstring).
    """

    def __init__(self, layer: str, inject: bool, variant: str, kernel: AttentionKernel = "sdpa") -> None:
        self.layer = layer
        self.inject = inject
        self.variant = variant
        self.kernel = kernel

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        support: SupportContext | None = None,
    ) -> torch.Tensor:
        if attention_mask is not None or attn.group_norm is not None or attn.spatial_norm is not None:
            raise NotImplementedError("SD-FSMIS attention processors expect plain UNet transformer attention")
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query = attn.to_q(hidden_states)
        key = attn.to_k(context)
        value = attn.to_v(context)
        injecting = self.inject and support is not None
        if injecting and self.variant == "kv-bank":
            if support.mode is SupportMode.RECORD:
                support.record(self.layer, key, value)
            else:
                bank_key, bank_value = support.read(self.layer, hidden_states.shape[0])
                key = torch.cat([key, bank_key.to(key.dtype)], dim=1)
                value = torch.cat([value, bank_value.to(value.dtype)], dim=1)
        out = _attend(attn, query, key, value, self.kernel)
        if injecting and self.variant == "cross-attn":
            if support.mode is SupportMode.RECORD:
                support.record(self.layer, hidden_states)
            else:
                (support_tokens,) = support.read(self.layer, hidden_states.shape[0])
                out = out + attn.support_cross_attention(hidden_states + out, support_tokens.to(out.dtype), self.kernel)
        if attn.residual_connection:
            raise NotImplementedError("residual attention is not used by the SD-1.5 UNet")
        return out / attn.rescale_output_factor


def _is_injecting(name: str) -> bool:
    """Self-attention of a transformer block: ``...transformer_blocks.N.attn1``."""
    return ".transformer_blocks." in name and name.endswith("attn1")


def install_support_injection(unet: UNet2DConditionModel, variant: str) -> list[str]:
    """Give every attention of ``unet`` a :class:`SupportInjectionProcessor`.

    For ``cross-attn`` also adds the :class:`SupportCrossAttention` modules (saved as
    ``...attn1.support_cross_attention.*`` in the state dict). Returns the injecting layers.
    """
    processors = {}
    injecting = []
    for name, module in unet.named_modules():
        if not isinstance(module, Attention):
            continue
        inject = _is_injecting(name)
        if inject:
            injecting.append(name)
            if variant == "cross-attn" and not hasattr(module, "support_cross_attention"):
                module.support_cross_attention = SupportCrossAttention(module)
        processors[f"{name}.processor"] = SupportInjectionProcessor(name, inject, variant)
    unet.set_attn_processor(processors)
    return injecting


def set_attention_kernel(unet: UNet2DConditionModel, kernel: AttentionKernel) -> None:
    """Make every SD-FSMIS attention processor of ``unet`` use ``kernel`` (``sdpa`` or ``classic``)."""
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"unknown attention kernel {kernel!r}; use one of {', '.join(ATTENTION_KERNELS)}")
    for processor in unet.attn_processors.values():
        if isinstance(processor, SupportInjectionProcessor):
            processor.kernel = kernel
