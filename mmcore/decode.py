"""The backbone's single-token decode step: the lean path of generation.

One new token per row against a KV cache, no grad: the same arithmetic as the modules of
:mod:`mmcore.blocks`, as functional calls on their parameters from one loop (on CPU about half
the time of the modules for a small model). :meth:`mmcore.backbone.GPT.forward` takes it when it
applies (:func:`step_plan` says when); the modules stay the reference, and tests hold the two
equal.

The step's state for a cache (the plan of the tensors it reads, whether a filled slot is padding)
is its own (:class:`DecodeState`, :func:`state_of`), kept beside the cache rather than on it:
:class:`~mmcore.blocks.KVCache` holds only keys, values and the key mask. The general path
tells it which slots it wrote (:func:`written`); a cache that was reset or rewound is noticed
from its ``length``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _nn_module

from .blocks import MLP, Attention, Block, KVCache, RotaryEmbedding, split_heads

__all__ = ["DecodeState", "decode_step", "make_step_plan", "state_of", "step_plan", "written"]


# -----------------------------------------------------------------------------
# Single-token decode step: the tensors it reads


class _LayerParams(NamedTuple):
    """One block's parameters as :meth:`GPT._decode_step` reads them: linear weights transposed to
    ``(in, out)`` (see :func:`_transposed`), biases None when ``bias=False``. A linear that is
    not a stock ``nn.Linear`` (an int8 layer) is the function its ``step_linear()`` gave, bias None."""

    ln_1_w: Tensor
    ln_1_b: Tensor | None
    qkv_wt: Any  # Tensor (D, D + 2 KV hd)
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
    kv_heads: int
    head_dim: int
    interleaved: bool  # rope_layout = "interleaved"

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
# The step's own state, per cache


@dataclass(eq=False)
class DecodeState:
    """What the decode step keeps for one :class:`~mmcore.blocks.KVCache`.

    ``owner`` and ``plan``: the backbone the plan was made for and the plan (None when that
    backbone must take the general path). ``padded``: some slot below ``checked`` is padding
    (then attention needs the key mask); slots ``[0, checked)`` were looked at.
    """

    owner: Any = None
    plan: _StepPlan | None = None
    padded: bool = False
    checked: int = 0


_STATES: weakref.WeakKeyDictionary[KVCache, DecodeState] = weakref.WeakKeyDictionary()


def state_of(cache: KVCache) -> DecodeState:
    """The decode step's state for ``cache`` (made on first use, dropped with the cache).

    A cache whose ``length`` fell below the slots already looked at was rewound: back to 0
    (:meth:`KVCache.reset`) everything is forgotten, plan included; elsewhere the padding is
    looked at again from slot 0.
    """
    st = _STATES.get(cache)
    if st is None:
        st = _STATES[cache] = DecodeState()
    elif cache.length < st.checked:
        if cache.length == 0:
            st.owner, st.plan = None, None
        st.padded, st.checked = False, 0
    return st


def written(cache: KVCache, start: int) -> None:
    """The general path wrote slots from ``start`` on: the step looks at them again."""
    st = _STATES.get(cache)
    if st is not None:
        st = state_of(cache)
        st.checked = min(st.checked, start)
        if start == 0:
            st.owner, st.plan, st.padded = None, None, False


def step_plan(self: Any, cache: KVCache) -> _StepPlan | None:
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
    st = state_of(cache)
    if st.owner is not self or (st.plan is not None and st.plan.stale()):
        st.owner, st.plan = self, make_step_plan(self)
    return st.plan


def make_step_plan(self: Any) -> _StepPlan | None:
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
        kv_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        interleaved=cfg.rope_layout == "interleaved",
    )


def decode_step(self: Any, x: Tensor, cache: KVCache, context: Any, plan: _StepPlan) -> Tensor:
    """One new real token per row after the cached ones: ``x (B, 1, D)`` -> final-normed ``(B, 1, D)``.

    The general path's arithmetic for ``L == 1`` with a cache and no mask, as functional
    calls on the parameters from one loop: no submodule calls, no dropout (only used when
    it is off), no mask construction per layer. The query is the last filled slot, so in
    every attention mode it sees exactly the real cached keys and itself: ``key_mask`` is
    the whole attention mask, and none is needed while no cached slot is padding. The
    caller has validated shapes and lengths.
    """
    B, _, D = x.shape
    H, KV, hd, rms, eps = plan.heads, plan.kv_heads, plan.head_dim, plan.rms, plan.eps
    gqa = KV != H
    past = cache.length
    Lk = past + 1
    key_mask = cache.key_mask  # (B, max_len)
    st = state_of(cache)
    if st.checked < past:  # slots written by the general path since the last step (one sync)
        st.padded = st.padded or not bool(key_mask[:, st.checked : past].all())
    key_mask[:, past] = True  # the new slot holds a real token
    st.checked = Lk

    # The new token's position: the number of real tokens before it (left padding skipped),
    # and the attention mask, built once for all layers (additive: SDPA would convert a bool
    # mask in every call).
    pos: Tensor | int
    if st.padded:
        pos = key_mask[:, :past].sum(-1)  # (B,)
        attn_bias = torch.where(key_mask[:, None, None, :Lk], 0.0, float("-inf")).to(x.dtype)  # (B, 1, 1, Lk)
    else:
        pos, attn_bias = past, None  # every row: `past` real tokens before this one, all keys real
    x = x.reshape(B, D)  # one row per sequence: the linears are plain addmm calls
    if plan.wpe is not None:
        x = x + plan.wpe[pos]  # (B, D)
    rope: tuple[Tensor, Tensor] | None = None
    if plan.rope is not None:
        rows = B if st.padded else 1
        cos = plan.rope[0][pos].to(x.dtype).view(rows, 1, 1, hd // 2)  # broadcasts over [q; k], heads
        sin = plan.rope[1][pos].to(x.dtype).view(rows, 1, 1, hd // 2)
        rope = (cos, sin)

    # Per layer, views of the cache's new slot (B, KV, 1, hd) and of all filled slots (B, KV, Lk, hd).
    # (unbind: one op for all layers; writing into its views is fine without autograd.)
    k_new, v_new = cache.k.narrow(3, past, 1).unbind(0), cache.v.narrow(3, past, 1).unbind(0)
    k_all, v_all = cache.k.narrow(3, 0, Lk).unbind(0), cache.v.narrow(3, 0, Lk).unbind(0)
    for i, p in enumerate(plan.layers):
        # --- attention: x + proj(sdpa(q, cached keys, cached values))
        h = _norm(x, p.ln_1_w, p.ln_1_b, eps, rms)  # (B, D)
        qkv = _linear(h, p.qkv_wt, p.qkv_b).view(B, 1, -1)  # [q; k; v]
        q, k, v = split_heads(qkv, H, hd, rope, kv_heads=KV, interleaved=plan.interleaved)  # q (B, H, 1, hd)
        k_new[i].copy_(k)  # (B, KV, 1, hd)
        v_new[i].copy_(v)
        y = F.scaled_dot_product_attention(q, k_all[i], v_all[i], attn_mask=attn_bias, enable_gqa=gqa)  # (B, H, 1, hd)
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
