"""The GPT backbone: a pre-norm decoder-only transformer.

In the spirit of nanoGPT's ``model.py``, in three files read in this order: the layers
(:mod:`mmcore.blocks`: :class:`KVCache`, :class:`RotaryEmbedding`, :class:`Attention`,
:class:`MLP`, :class:`Block`), this file (:class:`GPT`: embeddings, masks, the blocks), and the
generation step (:mod:`mmcore.decode`).

The generation step (one new token per row against a KV cache, no grad) takes a lean path,
:func:`mmcore.decode.decode_step`: the same arithmetic as the modules, as functional calls on
their parameters from one loop (on CPU about half the time of the modules for a small model).
Its state per cache is its own. The modules stay the reference (training, prompts, all else);
tests hold the two equal.

Notation used in the shape comments::

    B  batch size            L   new tokens in this call (query length)
    D  width                 Lk  key length (cached + new tokens)
    H  heads                 hd  head size, D // H
    KV key/value heads (kv_heads; H with multi-head attention)
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
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from mmcore.config import BackboneConfig

from .blocks import MLP, Attention, Block, KVCache, RotaryEmbedding, apply_rotary, make_norm
from .decode import _StepPlan, decode_step, step_plan, written

# the layers live in mmcore/blocks.py, the decode step in mmcore/decode.py; their names stay importable here
__all__ = ["KVCache", "RotaryEmbedding", "Attention", "MLP", "Block", "GPT", "apply_rotary", "make_norm"]

AttentionMode = Literal["causal", "prefix", "bidirectional"]
_MODES = ("causal", "prefix", "bidirectional")
_PADDING_SIDES = ("left", "right")


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
            RotaryEmbedding(config.head_dim, config.context_length, config.rope_base, config.rope_scaling)
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
        """Preallocate a :class:`KVCache` for ``batch_size`` rows and up to ``max_len`` tokens
        (``kv_heads`` heads per layer: grouped-query attention caches fewer keys).

        ``device``/``dtype`` default to those of the backbone's parameters.
        """
        if max_len > self.config.context_length:
            raise ValueError(f"cache max_len ({max_len}) exceeds context_length ({self.config.context_length})")
        param = cast(Tensor, self.ln_f.weight)
        device = param.device if device is None else device
        dtype = param.dtype if dtype is None else dtype
        shape = (self.config.depth, batch_size, cast(int, self.config.kv_heads), max_len, self.config.head_dim)
        return KVCache(
            k=torch.zeros(shape, device=device, dtype=dtype),  # (N, B, KV, max_len, hd)
            v=torch.zeros(shape, device=device, dtype=dtype),  # (N, B, KV, max_len, hd)
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
            written(cache, past)  # the decode step looks at these slots for padding
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

    # --- the single-token decode step (mmcore/decode.py) ------------------------------

    def _step_plan(self, cache: KVCache) -> _StepPlan | None:
        """The plan of the decode step for this cache, or None (see :func:`mmcore.decode.step_plan`)."""
        return step_plan(self, cache)

    def _decode_step(self, x: Tensor, cache: KVCache, context: Any, plan: _StepPlan) -> Tensor:
        """One new real token per row after the cached ones (see :func:`mmcore.decode.decode_step`)."""
        return decode_step(self, x, cache, context, plan)

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
        key_real: Tensor | None
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
