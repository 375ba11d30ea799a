"""The backbone's layers: :class:`KVCache`, :class:`RotaryEmbedding`, :class:`Attention`,
:class:`MLP`, :class:`Block` (in dependency order), read by :class:`mmcore.backbone.GPT`.

The shape notation and the conventions are those of :mod:`mmcore.backbone`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcore.config import BackboneConfig

__all__ = ["KVCache", "RotaryEmbedding", "Attention", "MLP", "Block", "apply_rotary", "make_norm", "split_heads"]


# -----------------------------------------------------------------------------
# KV cache


@dataclass(eq=False)  # compared by identity: fields are tensors
class KVCache:
    """Preallocated keys and values for incremental decoding. Create with :meth:`GPT.new_cache`.

    Slots ``[0, length)`` are filled. A forward call with ``cache=`` writes its ``L`` new
    keys/values at slots ``[length, length + L)``, attends over ``[0, length + L)`` and then
    advances ``length`` by ``L``. ``key_mask`` records which filled slots are real tokens, so
    a left-padded prompt keeps its padding masked out for every later token.

    The single-token decode step keeps its own state for a cache (:mod:`mmcore.decode`).
    """

    k: Tensor  # (N, B, H, max_len, hd) keys, after rotary embedding when positions="rope"
    v: Tensor  # (N, B, H, max_len, hd) values
    key_mask: Tensor  # (B, max_len) bool, True = real token; slots >= length are False
    length: int = 0  # filled slots (a Python int, so shapes never depend on tensor data)

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write new ``k, v (B, H, L, hd)`` of ``layer`` at ``[length, length+L)``; return all
        keys and values so far, each ``(B, H, length+L, hd)``. Does not advance ``length``
        (:meth:`GPT.forward` does that once, after the last layer)."""
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def reorder(self, index: Tensor) -> None:
        """Select/reorder batch rows in place (beam search): row ``i`` becomes old row ``index[i]``.

        ``index`` is ``long (B',)``; the batch size becomes ``B'``.
        """
        self.k = self.k.index_select(1, index)
        self.v = self.v.index_select(1, index)
        self.key_mask = self.key_mask.index_select(0, index)

    def reset(self) -> None:
        """Forget everything (keeps the allocation)."""
        self.length = 0
        self.key_mask.fill_(False)


# -----------------------------------------------------------------------------
# Rotary position embedding (RoPE)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding tables, read at arbitrary ``positions (B, L)``.

    Uses the "rotate half" convention of GPT-NeoX / Hugging Face LLaMA: the head
    dimension is split into two halves ``(x1, x2)`` that rotate as complex pairs
    ``(x1[i], x2[i])`` with frequency ``base ** (-2i / hd)``.

    The cos/sin tables cover positions ``[0, context_length)`` and are non-persistent
    buffers (never saved; rebuilt by :meth:`reset_tables`, which :meth:`GPT.init_weights`
    calls). They are kept in float32 and cast to the activations' dtype on use.
    """

    def __init__(self, head_dim: int, context_length: int, base: float = 10000.0) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.context_length = context_length
        self.base = base
        self.register_buffer("cos", torch.empty(context_length, head_dim // 2), persistent=False)
        self.register_buffer("sin", torch.empty(context_length, head_dim // 2), persistent=False)
        if not self.cos.is_meta:
            self.reset_tables()

    def reset_buffers(self) -> None:
        """Recompute the non-persistent tables (after building on the meta device)."""
        self.reset_tables()

    @torch.no_grad()
    def reset_tables(self) -> None:
        device = self.cos.device
        half = self.head_dim // 2
        inv_freq = self.base ** (-torch.arange(half, dtype=torch.float64, device=device) / half)  # (hd/2,)
        t = torch.arange(self.context_length, dtype=torch.float64, device=device)  # (C,)
        angles = torch.outer(t, inv_freq)  # (C, hd/2)
        self.cos.copy_(angles.cos())
        self.sin.copy_(angles.sin())

    def forward(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``positions (B, L)`` -> ``cos, sin``, each ``(B, 1, L, hd/2)`` (broadcast over heads)."""
        cos = self.cos[positions].to(dtype).unsqueeze(1)  # (B, 1, L, hd/2)
        sin = self.sin[positions].to(dtype).unsqueeze(1)  # (B, 1, L, hd/2)
        return cos, sin


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x (B, H, L, hd)`` by ``cos, sin (B, 1, L, hd/2)``."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, L, hd/2) each
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)  # (B, H, L, hd)


def split_heads(
    qkv: Tensor, heads: int, head_dim: int, rope: tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """A fused projection ``[q; k; v] (B, L, 3D)`` (GPT-2's ``c_attn`` layout) -> ``q, k, v``, each
    ``(B, H, L, hd)``, with rotary embedding applied to ``q`` and ``k`` when ``rope`` (``cos, sin``
    broadcasting to ``(B, 1, L, hd/2)``) is given."""
    B, L, _ = qkv.shape
    if L == 1:  # a decode step: the same values, strided as SDPA's one-query kernels run fastest
        t = qkv.view(B, 3, heads, 1, head_dim).transpose(0, 1)  # (3, B, H, 1, hd)
    else:
        t = qkv.view(B, L, 3, heads, head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, L, hd)
    if rope is None:
        q, k, v = t.unbind(0)
        return q, k, v
    cos, sin = rope
    q, k = apply_rotary(t[:2], cos, sin).unbind(0)  # (B, H, L, hd) each
    return q, k, t[2]


# -----------------------------------------------------------------------------
# Transformer block


def make_norm(config: BackboneConfig) -> nn.Module:
    """LayerNorm (with a bias when ``config.bias``) or RMSNorm (never has a bias)."""
    if config.norm == "layernorm":
        return nn.LayerNorm(config.width, eps=config.norm_eps, bias=config.bias)
    return nn.RMSNorm(config.width, eps=config.norm_eps)


class Attention(nn.Module):
    """Multi-head self-attention: one fused ``qkv`` projection, one SDPA call, ``proj``.

    The fused ``qkv`` output is ``[q; k; v]`` (each ``D`` wide, heads contiguous inside
    each), which is GPT-2's ``c_attn`` layout.
    """

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.width, 3 * config.width, bias=config.bias)
        self.proj = nn.Linear(config.width, config.width, bias=config.bias)
        self.resid_drop = nn.Dropout(config.dropout)

    def split(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``x (B, L, D)`` -> ``q, k, v``, each ``(B, H, L, hd)``, rotary applied to ``q`` and ``k``
        (``rope``: ``cos, sin (B, 1, L, hd/2)`` or None). The one place attention's inputs are
        made: :meth:`forward`, the decode step (through :func:`split_heads`) and
        :mod:`mmcore.explain` use it."""
        return split_heads(self.qkv(x), self.heads, self.head_dim, rope)

    def forward(
        self,
        x: Tensor,
        *,
        rope: tuple[Tensor, Tensor] | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> Tensor:
        """``x (B, L, D)`` -> ``(B, L, D)``.

        ``rope``: ``cos, sin (B, 1, L, hd/2)`` or None. ``attn_mask``: bool ``(B, 1, L, Lk)``,
        True = may attend, or None. ``is_causal``: SDPA's built-in causal mask (only without
        ``attn_mask`` and without cache). ``cache``/``layer``: where to store and read keys.
        """
        B, L, D = x.shape
        q, k, v = self.split(x, rope)  # (B, H, L, hd) each
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, H, Lk, hd) each
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
        )  # (B, H, L, hd)
        y = y.transpose(1, 2).contiguous().view(B, L, D)  # (B, L, D)
        return self.resid_drop(self.proj(y))  # (B, L, D)


class MLP(nn.Module):
    """Feed-forward: ``fc`` -> activation -> ``proj``.

    * ``gelu``: exact GELU. ``gelu_tanh``: tanh approximation (GPT-2's ``gelu_new``).
    * ``swiglu``: ``fc`` is fused, output ``[gate; up]`` (each ``hidden`` wide); the
      activation is ``silu(gate) * up``.

    ``hidden = int(mlp_ratio * width)``.
    """

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.kind = config.mlp
        hidden = config.mlp_hidden
        fc_out = 2 * hidden if config.mlp == "swiglu" else hidden
        self.fc = nn.Linear(config.width, fc_out, bias=config.bias)
        self.proj = nn.Linear(hidden, config.width, bias=config.bias)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``x (B, L, D)`` -> ``(B, L, D)``."""
        h = self.fc(x)  # (B, L, hidden) or (B, L, 2*hidden) for swiglu
        if self.kind == "swiglu":
            gate, up = h.chunk(2, dim=-1)  # (B, L, hidden) each
            h = F.silu(gate) * up  # (B, L, hidden)
        elif self.kind == "gelu_tanh":
            h = F.gelu(h, approximate="tanh")  # (B, L, hidden)
        else:
            h = F.gelu(h)  # (B, L, hidden)
        return self.drop(self.proj(h))  # (B, L, D)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = Attention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, **attn_kwargs: Any) -> Tensor:
        """``x (B, L, D)`` -> ``(B, L, D)``; ``attn_kwargs`` go to :meth:`Attention.forward`."""
        x = x + self.attn(self.ln_1(x), **attn_kwargs)  # (B, L, D)
        x = x + self.mlp(self.ln_2(x))  # (B, L, D)
        return x
