"""The backbone's layers: :class:`KVCache`, :class:`RotaryEmbedding`, :class:`Attention`,
:class:`MLP`, :class:`Block` (in dependency order), read by :class:`mmcore.backbone.GPT`.

The shape notation and the conventions are those of :mod:`mmcore.backbone`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcore.config import BackboneConfig, RopeScaling

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

    k: Tensor  # (N, B, KV, max_len, hd) keys, after rotary embedding when positions="rope"
    v: Tensor  # (N, B, KV, max_len, hd) values (KV = kv_heads)
    key_mask: Tensor  # (B, max_len) bool, True = real token; slots >= length are False
    length: int = 0  # filled slots (a Python int, so shapes never depend on tensor data)

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write new ``k, v (B, KV, L, hd)`` of ``layer`` at ``[length, length+L)``; return all
        keys and values so far, each ``(B, KV, length+L, hd)``. Does not advance ``length``
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

    Frequency ``i`` (``0 <= i < hd/2``) is ``base ** (-2i / hd)``, scaled as ``scaling`` (a
    :class:`~mmcore.config.RopeScaling`, or None) says. Which two entries of a head rotate
    together at frequency ``i`` is :func:`apply_rotary`'s ``interleaved`` (the backbone's
    ``rope_layout``).

    The cos/sin tables cover positions ``[0, context_length)`` and are non-persistent
    buffers (never saved; rebuilt by :meth:`reset_tables`, which :meth:`GPT.init_weights`
    calls). They are kept in float32 and cast to the activations' dtype on use.
    """

    def __init__(
        self, head_dim: int, context_length: int, base: float = 10000.0, scaling: RopeScaling | None = None
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.context_length = context_length
        self.base = base
        self.scaling = scaling
        self.register_buffer("cos", torch.empty(context_length, head_dim // 2), persistent=False)
        self.register_buffer("sin", torch.empty(context_length, head_dim // 2), persistent=False)
        if not self.cos.is_meta:
            self.reset_tables()

    def reset_buffers(self) -> None:
        """Recompute the non-persistent tables (after building on the meta device)."""
        self.reset_tables()

    def inv_freq(self, device: torch.device | None = None) -> Tensor:
        """The ``hd/2`` frequencies (float32), scaled as :attr:`scaling` says.

        Computed in float32 with the operations, in the order, of Hugging Face's Llama rotary
        embedding (``1 / base ** (2i / hd)``), so that loaded checkpoints match it to rounding.
        """
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=device).float() / self.head_dim
        inv_freq = 1.0 / (self.base**exponent)  # (hd/2,)
        sc = self.scaling
        if sc is None:
            return inv_freq
        if sc.type == "linear":
            return inv_freq / sc.factor
        # llama3: long wavelengths divided by factor, short ones kept, a smooth blend between
        wavelen = 2 * math.pi / inv_freq
        low_wavelen = sc.original_context_length / sc.low_freq_factor
        high_wavelen = sc.original_context_length / sc.high_freq_factor
        scaled = torch.where(wavelen > low_wavelen, inv_freq / sc.factor, inv_freq)
        smooth = (sc.original_context_length / wavelen - sc.low_freq_factor) / (
            sc.high_freq_factor - sc.low_freq_factor
        )
        blended = (1 - smooth) * scaled / sc.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return torch.where(medium, blended, scaled)

    @torch.no_grad()
    def reset_tables(self) -> None:
        device = self.cos.device
        t = torch.arange(self.context_length, device=device).float()  # (C,)
        angles = torch.outer(t, self.inv_freq(device))  # (C, hd/2), float32 as in transformers
        self.cos.copy_(angles.cos())
        self.sin.copy_(angles.sin())

    def forward(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``positions (B, L)`` -> ``cos, sin``, each ``(B, 1, L, hd/2)`` (broadcast over heads)."""
        cos = self.cos[positions].to(dtype).unsqueeze(1)  # (B, 1, L, hd/2)
        sin = self.sin[positions].to(dtype).unsqueeze(1)  # (B, 1, L, hd/2)
        return cos, sin


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = False) -> Tensor:
    """Rotate ``x (..., L, hd)`` by ``cos, sin`` (broadcasting to ``(..., L, hd/2)``).

    ``interleaved=False`` ("rotate half", GPT-NeoX and Hugging Face Llama): entry ``i`` and
    entry ``i + hd/2`` form the pair rotated at frequency ``i``. ``interleaved=True`` (Meta's
    Llama, GPT-J): entries ``2i`` and ``2i + 1``.
    """
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]  # (..., L, hd/2) each
        return torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)  # (..., L, hd)
    x1, x2 = x.chunk(2, dim=-1)  # (..., L, hd/2) each
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)  # (..., L, hd)


def split_heads(
    qkv: Tensor,
    heads: int,
    head_dim: int,
    rope: tuple[Tensor, Tensor] | None = None,
    *,
    kv_heads: int | None = None,
    interleaved: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """A fused projection ``[q; k; v]`` -> ``q (B, H, L, hd)``, ``k, v (B, KV, L, hd)``.

    ``qkv`` is ``(B, L, (H + 2 KV) hd)``: the ``H`` query heads, then the ``KV`` key heads, then
    the ``KV`` value heads (``kv_heads``, default ``heads``: GPT-2's ``c_attn`` layout). Rotary
    embedding is applied to ``q`` and ``k`` when ``rope`` (``cos, sin`` broadcasting to
    ``(B, 1, L, hd/2)``) is given, in the layout ``interleaved`` names (:func:`apply_rotary`)."""
    B, L, _ = qkv.shape
    kv = heads if kv_heads is None else kv_heads
    if kv != heads:  # grouped-query attention: fewer key/value heads than query heads
        q, k, v = qkv.split((heads * head_dim, kv * head_dim, kv * head_dim), dim=-1)
        q = q.view(B, L, heads, head_dim).transpose(1, 2)  # (B, H, L, hd)
        k = k.view(B, L, kv, head_dim).transpose(1, 2)  # (B, KV, L, hd)
        v = v.view(B, L, kv, head_dim).transpose(1, 2)  # (B, KV, L, hd)
        if rope is not None:
            q, k = apply_rotary(q, *rope, interleaved), apply_rotary(k, *rope, interleaved)
        return q, k, v
    if L == 1:  # a decode step: the same values, strided as SDPA's one-query kernels run fastest
        t = qkv.view(B, 3, heads, 1, head_dim).transpose(0, 1)  # (3, B, H, 1, hd)
    else:
        t = qkv.view(B, L, 3, heads, head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, L, hd)
    if rope is None:
        q, k, v = t.unbind(0)
        return q, k, v
    cos, sin = rope
    q, k = apply_rotary(t[:2], cos, sin, interleaved).unbind(0)  # (B, H, L, hd) each
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

    The fused ``qkv`` output is ``[q; k; v]``: ``q`` is ``D`` wide, ``k`` and ``v`` are
    ``kv_heads * hd`` wide each, heads contiguous inside each (with ``kv_heads == heads``,
    GPT-2's ``c_attn`` layout). With fewer key/value heads (grouped-query attention), query
    head ``h`` reads key/value head ``h // (heads / kv_heads)``.
    """

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.kv_heads = cast(int, config.kv_heads)
        self.head_dim = config.head_dim
        self.interleaved = config.rope_layout == "interleaved"
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.width, config.width + 2 * config.kv_width, bias=config.attn_bias)
        self.proj = nn.Linear(config.width, config.width, bias=config.bias)
        self.resid_drop = nn.Dropout(config.dropout)

    def split(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``x (B, L, D)`` -> ``q (B, H, L, hd)``, ``k, v (B, KV, L, hd)``, rotary applied to ``q`` and ``k``
        (``rope``: ``cos, sin (B, 1, L, hd/2)`` or None). The one place attention's inputs are
        made: :meth:`forward`, the decode step (through :func:`split_heads`) and
        :mod:`mmcore.explain` use it."""
        return split_heads(
            self.qkv(x), self.heads, self.head_dim, rope, kv_heads=self.kv_heads, interleaved=self.interleaved
        )

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
        q, k, v = self.split(x, rope)  # q (B, H, L, hd), k and v (B, KV, L, hd)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, KV, Lk, hd) each
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
            enable_gqa=self.kv_heads != self.heads,
        )  # (B, H, L, hd)
        y = y.transpose(1, 2).contiguous().view(B, L, D)  # (B, L, D)
        return self.resid_drop(self.proj(y))  # (B, L, D)


class MLP(nn.Module):
    """Feed-forward: ``fc`` -> activation -> ``proj``.

    * ``gelu``: exact GELU. ``gelu_tanh``: tanh approximation (GPT-2's ``gelu_new``).
    * ``swiglu``: ``fc`` is fused, output ``[gate; up]`` (each ``hidden`` wide); the
      activation is ``silu(gate) * up``.

    ``hidden`` is the config's ``mlp_hidden`` (``int(mlp_ratio * width)`` unless given).
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
