"""The GPT backbone: a pre-norm decoder-only transformer.

One readable file in the spirit of nanoGPT's ``model.py``. Classes appear in dependency
order: :class:`KVCache`, :class:`RotaryEmbedding`, :class:`Attention`, :class:`MLP`,
:class:`Block`, :class:`GPT`.

The generation step (one new token per row against a KV cache, no grad) takes a lean path,
:meth:`GPT._decode_step`: the same arithmetic as the modules, as functional calls on their
parameters from one loop (on CPU about half the time of the modules for a small model). The
modules stay the reference (training, prompts, all else); tests hold the two equal.

Notation used in the shape comments::

    B  batch size            L   new tokens in this call (query length)
    D  width                 Lk  key length (cached + new tokens)
    H  heads                 hd  head size, D // H
    V  vocabulary size       N   depth (number of blocks)

Conventions (the contract every caller relies on):

* ``mask`` is ``bool (B, L)``, True = real token, False = padding.
* ``positions`` is ``long (B, L)``: the position index of each token (learned position
  embeddings and rotary embeddings both read it). Values must be ``< context_length``.
* The backbone returns final-normed hidden states ``(B, L, D)``; the LM head (or any
  other head) lives outside this file.
* Parameter names are stable (the GPT-2 conversion in :mod:`mmcore.gpt2` relies on them):
  ``wte``, ``wpe``, ``blocks.N.{ln_1, attn.qkv, attn.proj, ln_2, mlp.fc, mlp.proj}``, ``ln_f``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _nn_module

from mmcore.config import BackboneConfig

__all__ = ["KVCache", "RotaryEmbedding", "Attention", "MLP", "Block", "GPT"]

AttentionMode = Literal["causal", "prefix", "bidirectional"]
_MODES = ("causal", "prefix", "bidirectional")
_PADDING_SIDES = ("left", "right")


# -----------------------------------------------------------------------------
# KV cache


@dataclass(eq=False)  # compared by identity: fields are tensors
class KVCache:
    """Preallocated keys and values for incremental decoding. Create with :meth:`GPT.new_cache`.

    Slots ``[0, length)`` are filled. A forward call with ``cache=`` writes its ``L`` new
    keys/values at slots ``[length, length + L)``, attends over ``[0, length + L)`` and then
    advances ``length`` by ``L``. ``key_mask`` records which filled slots are real tokens, so
    a left-padded prompt keeps its padding masked out for every later token.

    ``step_plan``, ``padded`` and ``checked`` are private to :class:`GPT`'s single-token
    decode step: the parameters it reads (on CPU with transposed copies of the linear
    weights), gathered on its first call with this cache (see :meth:`GPT._step_plan`), and
    whether any filled slot is padding (then attention needs ``key_mask``); :meth:`reset`
    clears them.
    """

    k: Tensor  # (N, B, H, max_len, hd) keys, after rotary embedding when positions="rope"
    v: Tensor  # (N, B, H, max_len, hd) values
    key_mask: Tensor  # (B, max_len) bool, True = real token; slots >= length are False
    length: int = 0  # filled slots (a Python int, so shapes never depend on tensor data)
    step_plan: Any = field(default=None, init=False, repr=False)  # (GPT, _StepPlan or None) once used
    padded: bool = field(default=False, init=False, repr=False)  # some slot < checked is padding
    checked: int = field(default=0, init=False, repr=False)  # slots [0, checked) were looked at for padding

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
        self.step_plan = None
        self.padded, self.checked = False, 0


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
        q, k, v = self.qkv(x).split(D, dim=2)  # (B, L, D) each
        q = q.view(B, L, self.heads, self.head_dim).transpose(1, 2)  # (B, H, L, hd)
        k = k.view(B, L, self.heads, self.head_dim).transpose(1, 2)  # (B, H, L, hd)
        v = v.view(B, L, self.heads, self.head_dim).transpose(1, 2)  # (B, H, L, hd)
        if rope is not None:
            cos, sin = rope
            q = apply_rotary(q, cos, sin)  # (B, H, L, hd)
            k = apply_rotary(k, cos, sin)  # (B, H, L, hd)
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


# -----------------------------------------------------------------------------
# Single-token decode step: the tensors it reads


class _LayerParams(NamedTuple):
    """One block's parameters as :meth:`GPT._decode_step` reads them: linear weights transposed to
    ``(in, out)`` (see :func:`_transposed`), biases None when ``bias=False``. A linear that is
    not a stock ``nn.Linear`` (an int8 layer) is the function its ``step_linear()`` gave, bias None."""

    ln_1_w: Tensor
    ln_1_b: Tensor | None
    qkv_wt: Any  # Tensor (D, 3D)
    qkv_b: Tensor | None
    proj_wt: Any  # Tensor (D, D)
    proj_b: Tensor | None
    ln_2_w: Tensor
    ln_2_b: Tensor | None
    fc_wt: Any  # Tensor (D, hidden), or (D, 2*hidden) for swiglu
    fc_b: Tensor | None
    out_wt: Any  # Tensor (hidden, D): the MLP's proj
    out_b: Tensor | None
    insert: nn.Module | None  # run after the block as insert(x, context)


class _StepPlan(NamedTuple):
    """Everything the decode step reads, gathered once per cache (attribute lookups through nested
    modules cost more than the arithmetic of a one-token step)."""

    sources: tuple[Tensor, ...]  # the linear weights that the layers hold transposed copies of
    versions: tuple[int, ...]  # their version counters when copied (in-place updates bump them)
    layers: tuple[_LayerParams, ...]
    ln_f_w: Tensor
    ln_f_b: Tensor | None
    wpe: Tensor | None  # (C, D) learned positions, or None
    rope: tuple[Tensor, Tensor] | None  # cos, sin tables (C, hd/2), or None
    rms: bool  # RMSNorm (else LayerNorm)
    eps: float | None
    mlp: str  # "gelu", "gelu_tanh" or "swiglu"
    heads: int
    head_dim: int

    def stale(self) -> bool:
        """A weight changed in place since the copies were made (e.g. an optimizer step)."""
        return tuple(w._version for w in self.sources) != self.versions


def _transposed(w: Tensor) -> Tensor:
    """A linear weight ``(out, in)`` as ``(in, out)`` for ``x @ w_t``.

    On CPU a contiguous copy: with one or a few rows, MKL's ``x @ w.t()`` on the transposed view
    runs about half as fast as on a contiguous ``(in, out)`` matrix (transformers' GPT-2 keeps
    this layout), and the linears are most of a decode step. The copy lives as long as the
    cache's plan. Elsewhere (CUDA) the view: the BLAS handles transposes at no cost.
    """
    return w.t().contiguous() if w.device.type == "cpu" else w.t()


def _norm(x: Tensor, w: Tensor, b: Tensor | None, eps: float | None, rms: bool) -> Tensor:
    """What :func:`make_norm`'s module computes, as one functional call: ``(..., D)`` -> ``(..., D)``."""
    if rms:
        return F.rms_norm(x, (x.shape[-1],), w, eps)
    return F.layer_norm(x, (x.shape[-1],), w, b, eps)


def _linear(x: Tensor, w_t: Tensor | Any, b: Tensor | None) -> Tensor:
    """``F.linear(x, w_t.t(), b)``: ``x (B, in)``, ``w_t (in, out)`` -> ``(B, out)``.

    ``w_t`` may instead be the function a linear-like module's ``step_linear()`` gave (an int8
    layer of :mod:`mmcore.quantize`); it computes the whole layer, bias included."""
    if not isinstance(w_t, Tensor):
        return w_t(x)
    return torch.addmm(b, x, w_t) if b is not None else x.mm(w_t)


def _step_linear_ok(m: nn.Module) -> bool:
    """A stock ``nn.Linear``, or a module that computes a linear layer for the decode step itself."""
    return type(m) is nn.Linear or callable(getattr(type(m), "step_linear", None))


def _step_weight(m: nn.Module) -> tuple[Tensor | Any, Tensor | None, Tensor]:
    """What the decode step reads of one linear: (transposed weight or function, bias, version source)."""
    if type(m) is nn.Linear:
        return _transposed(m.weight), m.bias, m.weight
    fn, source = m.step_linear()
    return fn, None, source


def _has_hooks(module: nn.Module) -> bool:
    return bool(
        module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
    )


_GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def _global_hooks() -> bool:
    """Module hooks registered for every module (``nn.modules.module.register_module_forward_hook``, ...)."""
    return any(getattr(_nn_module, name, None) for name in _GLOBAL_HOOKS)


# -----------------------------------------------------------------------------
# The backbone


class GPT(nn.Module):
    """Decoder-only transformer backbone returning final-normed hidden states ``(B, L, D)``.

    Args:
        config: sizes and block options.
        vocab_size: when given, the backbone owns a token embedding ``wte (V, D)`` and
            accepts ``idx``; without it, callers pass ``embeds``.
        inserts: extra layers run after block ``i`` (``0 <= i < depth``), called as
            ``x = insert(x, context)`` with the ``context`` object given to :meth:`forward`
            (e.g. Flamingo-style gated cross-attention). Stored in ``self.inserts`` under
            ``str(i)``. :meth:`init_weights` leaves them alone: they initialise themselves.
    """

    def __init__(
        self,
        config: BackboneConfig,
        vocab_size: int | None = None,
        inserts: Mapping[int, nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.wte = nn.Embedding(vocab_size, config.width) if vocab_size is not None else None
        self.wpe = nn.Embedding(config.context_length, config.width) if config.positions == "learned" else None
        self.rope = (
            RotaryEmbedding(config.head_dim, config.context_length, config.rope_base)
            if config.positions == "rope"
            else None
        )
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.ln_f = make_norm(config)

        inserts = dict(inserts or {})
        bad = [i for i in inserts if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < config.depth]
        if bad:
            raise ValueError(
                f"inserts has invalid block indices {bad!r}; valid indices are integers 0..{config.depth - 1} "
                f"(an insert runs after the block with that index; depth = {config.depth})"
            )
        self.inserts = nn.ModuleDict({str(i): m for i, m in sorted(inserts.items())})
        # Which blocks are followed by an insert, as a plain tuple (fixed at construction).
        self._insert_after = tuple(i in inserts for i in range(config.depth))

        if not self.ln_f.weight.is_meta:
            self.init_weights()

    # --- initialisation -----------------------------------------------------------

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re-)initialise every backbone parameter and the rotary tables; inserts untouched.

        * Linear and Embedding weights: ``normal(0, init_std)``; biases: zero.
        * Residual projections (``attn.proj``, ``mlp.proj``): ``normal(0, init_std / sqrt(2 * depth))``
          (GPT-2's scaled init: each block adds two residual branches, so the residual
          stream's variance stays roughly constant with depth).
        * Norms: weight one, bias zero.

        Call it after materialising a module built on the meta device (``to_empty``).
        """
        std = self.config.init_std
        resid_std = std / math.sqrt(2 * self.config.depth)
        own = [self.wte, self.wpe, self.blocks, self.ln_f]
        for root in own:
            if root is None:
                continue
            for name, module in root.named_modules():
                if isinstance(module, nn.Linear):
                    is_resid = name.endswith("attn.proj") or name.endswith("mlp.proj")
                    nn.init.normal_(module.weight, mean=0.0, std=resid_std if is_resid else std)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
                elif isinstance(module, nn.Embedding):
                    nn.init.normal_(module.weight, mean=0.0, std=std)
                elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                    if module.weight is not None:
                        nn.init.ones_(module.weight)
                    if getattr(module, "bias", None) is not None:
                        nn.init.zeros_(module.bias)
        if self.rope is not None:
            self.rope.reset_tables()

    # --- cache --------------------------------------------------------------------

    def new_cache(
        self,
        batch_size: int,
        max_len: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """Preallocate a :class:`KVCache` for ``batch_size`` rows and up to ``max_len`` tokens.

        ``device``/``dtype`` default to those of the backbone's parameters.
        """
        if max_len > self.config.context_length:
            raise ValueError(f"cache max_len ({max_len}) exceeds context_length ({self.config.context_length})")
        param = self.ln_f.weight
        device = param.device if device is None else device
        dtype = param.dtype if dtype is None else dtype
        shape = (self.config.depth, batch_size, self.config.heads, max_len, self.config.head_dim)
        return KVCache(
            k=torch.zeros(shape, device=device, dtype=dtype),  # (N, B, H, max_len, hd)
            v=torch.zeros(shape, device=device, dtype=dtype),  # (N, B, H, max_len, hd)
            key_mask=torch.zeros(batch_size, max_len, device=device, dtype=torch.bool),  # (B, max_len)
        )

    # --- forward ------------------------------------------------------------------

    def run_sequence(self, seq: Any, mode: str | None = None) -> Tensor:
        """The backbone over a fused sequence (an :class:`mmcore.FusedSequence`): its embeddings,
        mask, positions, conditioning prefix, padding side and cross-attention context.
        Calls the module (hooks apply). Returns ``(B, L, D)`` hidden states."""
        return self(
            embeds=seq.embeds,
            mask=seq.mask,
            positions=seq.positions,
            mode=mode,
            prefix_len=seq.prefix_len,
            padding_side=seq.padding_side,
            context=seq.context,
        )

    def forward(
        self,
        idx: Tensor | None = None,
        *,
        embeds: Tensor | None = None,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
        mode: AttentionMode | None = None,
        prefix_len: Tensor | int | None = None,
        padding_side: Literal["left", "right"] = "right",
        cache: KVCache | None = None,
        context: Any = None,
    ) -> Tensor:
        """Run the backbone; return final-normed hidden states ``(B, L, D)``.

        Args:
            idx: token ids, long ``(B, L)``; needs ``wte`` (``vocab_size`` given at construction).
            embeds: input embeddings ``(B, L, D)`` in the parameters' dtype. Exactly one of
                ``idx`` / ``embeds``.
            mask: bool ``(B, L)``, True = real token, False = padding. Padding keys are never
                attended to; padding queries produce unspecified (but finite) outputs.
            positions: long ``(B, L)``, each ``< context_length``. Default: ``arange(L)``;
                with ``padding_side="left"`` and a mask, ``cumsum(mask) - 1`` clamped at 0
                (so the first real token gets position 0); with a cache, the positions
                continue after the number of *real* tokens already cached (which is
                ``cache.length`` when nothing was padded).
            mode: ``"causal"``, ``"prefix"`` or ``"bidirectional"``; default ``config.attention``.
            prefix_len: for ``mode="prefix"`` only (required there): long ``(B,)`` or int,
                the number of leading *real* tokens that attend to each other
                bidirectionally. Padding is skipped when counting, so with left padding the
                prefix starts at the first real token. Every query attends to the whole
                prefix; the rest is causal.
            padding_side: where ``mask`` puts its padding (only matters when ``mask`` is given).
            cache: a :class:`KVCache`: new keys/values are written after the cached ones and
                attention covers cached + new tokens (causal within the new chunk in causal
                mode); ``cache.length`` advances by ``L``.
            context: any object, passed to every insert as ``insert(x, context)``.

        Raises:
            ValueError: both or neither of ``idx``/``embeds``; bad shapes; unknown mode or
                padding side; ``prefix`` mode without ``prefix_len``; total length
                (cached + new) beyond ``context_length``.
        """
        cfg = self.config
        # --- inputs -> x (B, L, D)
        if (idx is None) == (embeds is None):
            given = "both idx and embeds" if idx is not None else "neither idx nor embeds"
            raise ValueError(
                f"GPT.forward got {given}; pass exactly one: idx (long (B, L) token ids, needs the backbone "
                f"built with vocab_size) or embeds (float (B, L, {cfg.width}))"
            )
        if idx is not None:
            if self.wte is None:
                raise ValueError(
                    "GPT.forward got idx but this backbone has no token embedding (built without "
                    "vocab_size); pass embeds (B, L, D) instead"
                )
            if idx.dim() != 2:
                raise ValueError(f"idx must be (B, L); got shape {tuple(idx.shape)}")
            x = self.wte(idx)  # (B, L, D)
        else:
            if embeds.dim() != 3 or embeds.shape[-1] != cfg.width:
                raise ValueError(f"embeds must be (B, L, {cfg.width}); got shape {tuple(embeds.shape)}")
            x = embeds  # (B, L, D)
        B, L, _ = x.shape
        device = x.device

        past = 0 if cache is None else cache.length
        if past + L > cfg.context_length:
            what = f"{L}" if cache is None else f"{past} cached + {L} new = {past + L}"
            raise ValueError(f"sequence length {what} exceeds context_length {cfg.context_length}")
        mode = cfg.attention if mode is None else mode
        if mode not in _MODES:
            raise ValueError(f"unknown attention mode {mode!r}; valid: {', '.join(_MODES)}")
        if padding_side not in _PADDING_SIDES:
            raise ValueError(f"unknown padding_side {padding_side!r}; valid: left, right")
        if mask is not None:
            if tuple(mask.shape) != (B, L):
                raise ValueError(f"mask must be (B, L) = {(B, L)}; got shape {tuple(mask.shape)}")
            mask = mask.to(torch.bool)  # (B, L)
        if cache is not None:
            if cache.batch_size != B:
                raise ValueError(f"cache was made for batch size {cache.batch_size}; got batch size {B}")
            if past + L > cache.max_len:
                raise ValueError(f"cache holds {cache.max_len} tokens; {past} cached + {L} new = {past + L}")
            # The generation step: one real token per row after the cached ones. Every attention
            # mode then lets it see all cached real tokens and itself, so the lean path applies.
            if L == 1 and mask is None and positions is None and prefix_len is None:
                plan = self._step_plan(cache)
                if plan is not None:
                    return self._decode_step(x, cache, context, plan)  # (B, 1, D)
            # Record which new slots are real before any layer reads the key mask.
            cache.key_mask[:, past : past + L] = True if mask is None else mask  # (B, L) slice
            cache.checked = min(cache.checked, past)  # the decode step looks at these slots for padding
        if mode == "prefix" and prefix_len is None:
            mode = "causal"  # no conditioning prefix: prefix-LM attention is plain causal attention
        if mode == "prefix":
            if isinstance(prefix_len, int):
                prefix_len = torch.full((B,), prefix_len, device=device, dtype=torch.long)  # (B,)
            elif tuple(prefix_len.shape) != (B,):
                raise ValueError(f"prefix_len must be (B,) = ({B},); got shape {tuple(prefix_len.shape)}")

        # --- positions (B, L)
        if positions is None:
            if cache is None and (mask is None or padding_side == "right"):
                positions = torch.arange(L, device=device).expand(B, L)  # (B, L)
            else:
                real = torch.ones(B, L, dtype=torch.bool, device=device) if mask is None else mask  # (B, L)
                seen = 0 if cache is None else cache.key_mask[:, :past].sum(-1, keepdim=True)  # (B, 1)
                positions = (seen + real.long().cumsum(-1) - 1).clamp(min=0)  # (B, L)
        elif tuple(positions.shape) != (B, L):
            raise ValueError(f"positions must be (B, L) = {(B, L)}; got shape {tuple(positions.shape)}")

        if self.wpe is not None:
            x = x + self.wpe(positions)  # (B, L, D)
        x = self.drop(x)  # (B, L, D)
        rope = self.rope(positions, x.dtype) if self.rope is not None else None  # 2 x (B, 1, L, hd/2)

        # --- attention mask
        # Fast path: causal attention ignores later tokens, and right padding only ever comes
        # *after* the real tokens, so real positions cannot see it: SDPA's built-in causal mask
        # is exact at every real position, and no explicit mask is needed.
        if mode == "causal" and cache is None and (mask is None or padding_side == "right"):
            attn_mask, is_causal = None, True
        else:
            attn_mask, is_causal = self._attention_mask(mode, B, L, mask, prefix_len, cache, device), False

        # --- blocks
        for i, block in enumerate(self.blocks):
            x = block(x, rope=rope, attn_mask=attn_mask, is_causal=is_causal, cache=cache, layer=i)  # (B, L, D)
            if self._insert_after[i]:
                x = self.inserts[str(i)](x, context)  # (B, L, D)
        x = self.ln_f(x)  # (B, L, D)
        if cache is not None:
            cache.length = past + L
        return x

    # --- the single-token decode step --------------------------------------------------

    def _step_plan(self, cache: KVCache) -> _StepPlan | None:
        """The plan of :meth:`_decode_step` for this cache, or None when the general path must run.

        The step is an inference path: None with grad mode on (it reads copies of the weights),
        in training with dropout, under global module hooks, inside ``torch.compile`` (the
        step's one data-dependent check would break the graph), and when a submodule is not the
        stock class or has hooks (the general path calls the modules, so those still take
        effect). A linear may also be a module with ``step_linear()`` (the int8 layers of
        :mod:`mmcore.quantize`): the step then calls the function it returns. Built on the first step with ``cache`` and again when a linear weight changed
        in place; parameters replaced (a new tensor, or ``.data =``) during the cache's life
        are not seen until :meth:`KVCache.reset`.
        """
        if torch.is_grad_enabled() or (self.training and self.config.dropout > 0) or _global_hooks():
            return None
        if torch.compiler.is_compiling():  # a compiled forward fuses the general path itself
            return None
        entry = cache.step_plan
        if entry is None or entry[0] is not self or (entry[1] is not None and entry[1].stale()):
            entry = cache.step_plan = (self, self._make_step_plan())
        return entry[1]

    def _make_step_plan(self) -> _StepPlan | None:
        cfg = self.config
        norm = type(self.ln_f)  # every norm is this class, with this eps
        expected: list[tuple[nn.Module | None, type]] = [(self.wpe, nn.Embedding), (self.rope, RotaryEmbedding)]
        for blk in self.blocks:
            attn, mlp = blk.attn, blk.mlp
            expected += [(blk, Block), (attn, Attention), (mlp, MLP), (blk.ln_1, norm), (blk.ln_2, norm)]
        linears = [m for blk in self.blocks for m in (blk.attn.qkv, blk.attn.proj, blk.mlp.fc, blk.mlp.proj)]
        stock = norm in (nn.LayerNorm, nn.RMSNorm) and all(m is None or type(m) is t for m, t in expected)
        stock = stock and all(_step_linear_ok(m) for m in linears)
        stock = stock and all(blk.ln_1.eps == blk.ln_2.eps == self.ln_f.eps for blk in self.blocks)
        roots = [m for m in (self.blocks, self.ln_f, self.wpe, self.rope) if m is not None]
        if not stock or any(_has_hooks(m) for root in roots for m in root.modules()):
            return None
        step = [_step_weight(m) for m in linears]  # 4 per block: qkv, attn.proj, fc, mlp.proj
        layers = tuple(
            _LayerParams(
                blk.ln_1.weight,
                getattr(blk.ln_1, "bias", None),
                *step[4 * i][:2],
                *step[4 * i + 1][:2],
                blk.ln_2.weight,
                getattr(blk.ln_2, "bias", None),
                *step[4 * i + 2][:2],
                *step[4 * i + 3][:2],
                self.inserts[str(i)] if self._insert_after[i] else None,
            )
            for i, blk in enumerate(self.blocks)
        )
        sources = tuple(s[2] for s in step)
        return _StepPlan(
            sources=sources,
            versions=tuple(w._version for w in sources),
            layers=layers,
            ln_f_w=self.ln_f.weight,
            ln_f_b=getattr(self.ln_f, "bias", None),
            wpe=None if self.wpe is None else self.wpe.weight,
            rope=None if self.rope is None else (self.rope.cos, self.rope.sin),
            rms=norm is nn.RMSNorm,
            eps=self.ln_f.eps,
            mlp=cfg.mlp,
            heads=cfg.heads,
            head_dim=cfg.head_dim,
        )

    def _decode_step(self, x: Tensor, cache: KVCache, context: Any, plan: _StepPlan) -> Tensor:
        """One new real token per row after the cached ones: ``x (B, 1, D)`` -> final-normed ``(B, 1, D)``.

        The general path's arithmetic for ``L == 1`` with a cache and no mask, as functional
        calls on the parameters from one loop: no submodule calls, no dropout (only used when
        it is off), no mask construction per layer. The query is the last filled slot, so in
        every attention mode it sees exactly the real cached keys and itself: ``key_mask`` is
        the whole attention mask, and none is needed while no cached slot is padding. The
        caller has validated shapes and lengths.
        """
        B, _, D = x.shape
        H, hd, rms, eps = plan.heads, plan.head_dim, plan.rms, plan.eps
        past = cache.length
        Lk = past + 1
        key_mask = cache.key_mask  # (B, max_len)
        if cache.checked < past:  # slots written by the general path since the last step (one sync)
            cache.padded = cache.padded or not bool(key_mask[:, cache.checked : past].all())
        key_mask[:, past] = True  # the new slot holds a real token
        cache.checked = Lk

        # The new token's position: the number of real tokens before it (left padding skipped),
        # and the attention mask, built once for all layers (additive: SDPA would convert a bool
        # mask in every call).
        if cache.padded:
            pos = key_mask[:, :past].sum(-1)  # (B,)
            attn_bias = torch.where(key_mask[:, None, None, :Lk], 0.0, float("-inf")).to(x.dtype)  # (B, 1, 1, Lk)
        else:
            pos, attn_bias = past, None  # every row: `past` real tokens before this one, all keys real
        x = x.reshape(B, D)  # one row per sequence: the linears are plain addmm calls
        if plan.wpe is not None:
            x = x + plan.wpe[pos]  # (B, D)
        if plan.rope is not None:
            rows = B if cache.padded else 1
            cos = plan.rope[0][pos].to(x.dtype).view(rows, 1, 1, 1, hd // 2)  # broadcasts over [q; k], heads
            sin = plan.rope[1][pos].to(x.dtype).view(rows, 1, 1, 1, hd // 2)

        # Per layer, views of the cache's new slot (B, H, 1, hd) and of all filled slots (B, H, Lk, hd).
        # (unbind: one op for all layers; writing into its views is fine without autograd.)
        k_new, v_new = cache.k.narrow(3, past, 1).unbind(0), cache.v.narrow(3, past, 1).unbind(0)
        k_all, v_all = cache.k.narrow(3, 0, Lk).unbind(0), cache.v.narrow(3, 0, Lk).unbind(0)
        for i, p in enumerate(plan.layers):
            # --- attention: x + proj(sdpa(q, cached keys, cached values))
            h = _norm(x, p.ln_1_w, p.ln_1_b, eps, rms)  # (B, D)
            qkv = _linear(h, p.qkv_wt, p.qkv_b).view(B, 3, H, 1, hd)  # [q; k; v], each (B, H, 1, hd)
            if plan.rope is not None:
                q, k = apply_rotary(qkv[:, :2], cos, sin).unbind(1)  # (B, H, 1, hd) each
                v = qkv[:, 2]  # (B, H, 1, hd)
            else:
                q, k, v = qkv.unbind(1)  # (B, H, 1, hd) each
            k_new[i].copy_(k)
            v_new[i].copy_(v)
            y = F.scaled_dot_product_attention(q, k_all[i], v_all[i], attn_mask=attn_bias)  # (B, H, 1, hd)
            x = x + _linear(y.reshape(B, D), p.proj_wt, p.proj_b)  # (B, D)
            # --- MLP: x + out(act(fc(x)))
            h = _linear(_norm(x, p.ln_2_w, p.ln_2_b, eps, rms), p.fc_wt, p.fc_b)  # (B, hidden or 2*hidden)
            if plan.mlp == "swiglu":
                gate, up = h.chunk(2, dim=-1)  # (B, hidden) each
                h = F.silu(gate) * up  # (B, hidden)
            elif plan.mlp == "gelu_tanh":
                h = F.gelu(h, approximate="tanh")  # (B, hidden)
            else:
                h = F.gelu(h)  # (B, hidden)
            x = x + _linear(h, p.out_wt, p.out_b)  # (B, D)
            if p.insert is not None:
                x = p.insert(x.view(B, 1, D), context).reshape(B, D)  # inserts see (B, L, D)
        cache.length = Lk
        return _norm(x, plan.ln_f_w, plan.ln_f_b, eps, rms).view(B, 1, D)  # (B, 1, D)

    @staticmethod
    def _attention_mask(
        mode: str,
        B: int,
        L: int,
        mask: Tensor | None,
        prefix_len: Tensor | None,
        cache: KVCache | None,
        device: torch.device,
    ) -> Tensor:
        """One boolean mask ``(B or 1, 1, L, Lk)``, True = may attend, combining mode and key padding.

        Works in cache slot coordinates: the queries are slots ``[past, past+L)``, the keys
        ``[0, past+L)`` (``past = 0`` without a cache). A query always attends to itself, so
        no row is empty (fully padded rows give finite values instead of NaN).
        """
        past = 0 if cache is None else cache.length
        Lk = past + L
        q_slot = torch.arange(past, Lk, device=device)  # (L,)
        k_slot = torch.arange(Lk, device=device)  # (Lk,)
        if cache is not None:
            key_real = cache.key_mask[:, :Lk]  # (B, Lk); the new slots were written by forward
        else:
            key_real = mask  # (B, Lk) or None

        if mode == "bidirectional":
            allowed = torch.ones(1, L, Lk, dtype=torch.bool, device=device)  # (1, L, Lk)
        else:
            allowed = (k_slot[None, :] <= q_slot[:, None]).unsqueeze(0)  # (1, L, Lk) causal
            if mode == "prefix":
                real = key_real if key_real is not None else torch.ones(B, Lk, dtype=torch.bool, device=device)
                rank = real.long().cumsum(-1) - 1  # (B, Lk) index among real tokens
                in_prefix = real & (rank < prefix_len[:, None])  # (B, Lk)
                allowed = allowed | in_prefix[:, None, :]  # (B, L, Lk)
        if key_real is not None:
            allowed = allowed & key_real[:, None, :]  # (B, L, Lk)
        allowed = allowed | (k_slot[None, :] == q_slot[:, None])  # (B or 1, L, Lk) always see yourself
        return allowed.unsqueeze(1)  # (B or 1, 1, L, Lk)
