"""Cross-attention fusion (Flamingo-style): the text is the sequence, the rest is memory.

The backbone reads only the text input's tokens, unchanged. Every other input's tokens
(projected to the backbone width D) are concatenated into one *memory* per sample,
:class:`CrossAttentionMemory`, carried in ``FusedSequence.context``. Gated
cross-attention layers (:class:`GatedCrossAttentionLayer`) run after every ``every``-th
backbone block::

    x = x + tanh(attn_gate) * xattn(ln_1(x), ln_mem(memory))
    x = x + tanh(ff_gate) * mlp(ln_2(x))

Both gates start at zero, so at initialisation the model computes exactly what the
text-only model with the same backbone weights computes.

Notation: B batch, L text tokens (query length), M memory tokens, D width, H heads,
hd = D // H.

Two decisions worth knowing:

* **Samples without memory.** A sample whose record lacks every non-text input has an
  all-False memory mask row. Attention over no key is NaN in some SDPA kernels (a
  softmax over nothing; recent CPU kernels return zeros), so for such rows the key mask is opened to every slot (finite, meaningless values) and
  the cross-attention output is then zeroed: the sample gets no cross-attention update
  at all. The gated feed-forward still applies (as in OpenFlamingo, where text before
  any media also keeps the feed-forward). When no non-text input is in the batch at all
  (M = 0), the attention is skipped.
* **Ownership of the inserted layers.** The layers are returned by :meth:`inserts` and
  registered by the backbone (``GPT(cfg, inserts=fusion.inserts())``), so they are saved
  once, under ``backbone.inserts.<block>``. The fusion keeps them in a plain dict (not a
  submodule); ``fusion.requires_grad_`` and ``fusion.train``/``eval`` reach them too. The
  fusion's training policy governs them (``train = "frozen"`` or ``"lora"`` on the fusion
  reaches them; the backbone's policy does not, so a frozen backbone keeps them
  trainable, the Flamingo recipe). Move the whole model (or the backbone), not the fusion alone:
  ``fusion.to(...)`` does not move layers it does not own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import MLP, make_norm
from .builtin import CrossAttentionFusionConfig
from .config import BackboneConfig
from .errors import InputError
from .interfaces import Encoder, Fusion
from .types import Batch, FusedSequence, Tokens, _to

__all__ = [
    "CrossAttentionMemory",
    "CrossAttention",
    "GatedCrossAttentionLayer",
    "CrossAttentionFusion",
    "split_text_input",
    "layer_config",
]


@dataclass
class CrossAttentionMemory:
    """What the inserted layers attend to: the non-text inputs' tokens, concatenated.

    Attributes:
        embeds: (B, M, D) float; zero at padding slots.
        mask: (B, M) bool, True at real tokens. A sample lacking every non-text input has
            an all-False row. M may be 0 (no non-text input in the batch).
        inputs: the input names whose tokens make up the memory, in order.
    """

    embeds: Tensor
    mask: Tensor
    inputs: tuple[str, ...] = ()

    @property
    def has_memory(self) -> Tensor:
        """(B,) bool: whether the sample has any memory token."""
        return self.mask.any(dim=1)

    def to(self, *args: Any, **kwargs: Any) -> "CrossAttentionMemory":
        return _to(self, *args, **kwargs)

    def select(self, index: Tensor) -> "CrossAttentionMemory":
        """Rows ``index`` (B',) long: reorder or expand the memory along with a KV cache (beam search)."""
        return CrossAttentionMemory(self.embeds.index_select(0, index), self.mask.index_select(0, index), self.inputs)


def split_text_input(encoders: Mapping[str, Encoder], fusion: str) -> tuple[str, list[str]]:
    """``(text input, other inputs in spec order)``; ValueError unless exactly one input is text."""
    text = [k for k, e in encoders.items() if getattr(e, "modality", "") == "text"]
    if len(text) != 1:
        listed = ", ".join(f"{k} ({getattr(e, 'modality', '') or '?'})" for k, e in encoders.items()) or "(none)"
        raise ValueError(
            f"the {fusion} fusion needs exactly one text input (an encoder with modality 'text') to form the "
            f"backbone's sequence; found {len(text)}. Inputs (modality): {listed}"
        )
    return text[0], [k for k in encoders if k != text[0]]


def layer_config(backbone: BackboneConfig, heads: int | None, mlp_ratio: float | None) -> BackboneConfig:
    """The backbone's config with the heads and feed-forward ratio of a fusion's own layers."""
    heads = backbone.heads if heads is None else int(heads)
    if backbone.width % heads:
        raise ValueError(f"fusion heads ({heads}) must divide the backbone width ({backbone.width})")
    update: dict[str, Any] = {"heads": heads}
    if mlp_ratio is not None:
        update["mlp_ratio"] = float(mlp_ratio)
    return backbone.model_copy(update=update)


@torch.no_grad()
def init_layer(module: nn.Module, config: BackboneConfig, depth: int) -> None:
    """GPT-2-style init of a fusion's layers: linears ``normal(0, init_std)``, output projections
    (``*.proj``) ``normal(0, init_std / sqrt(2 * depth))``, biases zero; norms keep their defaults."""
    std = config.init_std
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=std / math.sqrt(2 * depth) if name.endswith("proj") else std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class CrossAttention(nn.Module):
    """Multi-head attention of queries over a memory, with a key mask (one SDPA call).

    Layers: ``q`` (D -> D), ``kv`` (D -> 2D, ``[k; v]``), ``proj`` (D -> D); heads and
    bias from the config.
    """

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        D = config.width
        self.heads = config.heads
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        self.q = nn.Linear(D, D, bias=config.bias)
        self.kv = nn.Linear(D, 2 * D, bias=config.bias)
        self.proj = nn.Linear(D, D, bias=config.bias)
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, memory: Tensor, key_mask: Tensor) -> Tensor:
        """``x (B, L, D)``, ``memory (B, M, D)``, ``key_mask (B, M)`` bool -> ``(B, L, D)``.

        Every row of ``key_mask`` must have a True entry (the caller's job), else SDPA
        returns NaN for that row.
        """
        B, L, D = x.shape
        M = memory.shape[1]
        q = self.q(x).view(B, L, self.heads, self.head_dim).transpose(1, 2)  # (B, H, L, hd)
        k, v = self.kv(memory).split(D, dim=2)  # (B, M, D) each
        k = k.view(B, M, self.heads, self.head_dim).transpose(1, 2)  # (B, H, M, hd)
        v = v.view(B, M, self.heads, self.head_dim).transpose(1, 2)  # (B, H, M, hd)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=key_mask[:, None, None, :],  # (B, 1, 1, M)
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, H, L, hd)
        y = y.transpose(1, 2).contiguous().view(B, L, D)  # (B, L, D)
        return self.resid_drop(self.proj(y))  # (B, L, D)


class GatedCrossAttentionLayer(nn.Module):
    """Flamingo's gated cross-attention + dense layer, run as ``x = layer(x, memory)``.

    ``x + tanh(attn_gate) * xattn(ln_1(x), ln_mem(memory))``, then
    ``x + tanh(ff_gate) * mlp(ln_2(x))``; both gates are scalars initialised at zero, so a
    fresh layer is the identity (exactly). ``memory`` is a :class:`CrossAttentionMemory`
    or None (then only the gated feed-forward runs). Samples without memory get no
    cross-attention update (see the module docstring). Position-wise in ``x``, so it
    works unchanged under the backbone's KV cache (the memory is the same at every step).
    """

    def __init__(self, config: BackboneConfig, depth: int = 1) -> None:
        super().__init__()
        self.ln_1 = make_norm(config)
        self.ln_mem = make_norm(config)
        self.xattn = CrossAttention(config)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)
        self.ff_gate = nn.Parameter(torch.zeros(1))
        self._config = config
        self._depth = depth
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """(Re-)initialise: gates zero, linears as :func:`init_layer` (scaled for the backbone
        ``depth``), norms weight one and bias zero. The backbone's ``init_weights`` leaves
        inserts alone; call this after materialising a layer built on the meta device."""
        self.attn_gate.zero_()
        self.ff_gate.zero_()
        init_layer(self, self._config, self._depth)
        for m in (self.ln_1, self.ln_mem, self.ln_2):
            m.reset_parameters()

    def forward(self, x: Tensor, memory: CrossAttentionMemory | None) -> Tensor:
        """``x (B, L, D)`` -> ``(B, L, D)``."""
        if memory is not None and memory.embeds.shape[1] > 0:
            if memory.embeds.shape[0] != x.shape[0]:
                raise ValueError(
                    f"cross-attention memory has batch size {memory.embeds.shape[0]} but the sequence has "
                    f"{x.shape[0]} (reorder or expand the context together with the KV cache)"
                )
            has = memory.has_memory  # (B,)
            key_mask = memory.mask | ~has[:, None]  # (B, M): rows without memory see every slot (finite) ...
            y = self.xattn(self.ln_1(x), self.ln_mem(memory.embeds), key_mask)  # (B, L, D)
            y = torch.where(has[:, None, None], y, torch.zeros((), dtype=y.dtype, device=y.device))  # ... zeroed
            x = x + torch.tanh(self.attn_gate) * y  # (B, L, D)
        x = x + torch.tanh(self.ff_gate) * self.mlp(self.ln_2(x))  # (B, L, D)
        return x

    def extra_repr(self) -> str:
        if self.attn_gate.is_meta:
            return "gates on the meta device"
        return f"attn_gate={self.attn_gate.item():.4g}, ff_gate={self.ff_gate.item():.4g}"


class CrossAttentionFusion(Fusion):
    """``fusion:cross_attention``: text as the sequence, other inputs as cross-attended memory.

    Args:
        config: :class:`~mmcore.builtin.CrossAttentionFusionConfig`.
        width: backbone width D.
        text_input: the input whose tokens form the backbone's sequence.
        memory_inputs: the other inputs, in memory order.
        backbone: the :class:`~mmcore.BackboneConfig` (depth, norm, MLP type, init).

    ``forward(tokens, batch)`` -> :class:`FusedSequence` with ``embeds`` = the text's
    tokens (B, T, D) unchanged, ``mask`` its mask, ``index = {text: None}``,
    ``modalities = (text,)``, ``prefix_len`` = the text's ``prompt_len`` (or None), and
    ``context`` = :class:`CrossAttentionMemory` (B, M, D) over the memory inputs present
    in ``tokens`` (M = sum of their token counts; a learned per-input embedding is added
    when ``modality_embeddings`` and there are several memory inputs).

    ``inserts()`` -> ``{block: GatedCrossAttentionLayer}`` for blocks ``every - 1,
    2 * every - 1, ...``; the backbone owns them (see the module docstring).
    """

    def __init__(
        self,
        config: CrossAttentionFusionConfig,
        width: int,
        text_input: str,
        memory_inputs: list[str],
        backbone: BackboneConfig,
    ) -> None:
        super().__init__()
        if backbone.width != width:
            raise ValueError(f"backbone width {backbone.width} differs from width {width}")
        if config.every > backbone.depth:
            raise ValueError(
                f"cross_attention fusion: every = {config.every} exceeds the backbone depth ({backbone.depth}); "
                f"no layer would be inserted. Use 1 .. {backbone.depth}"
            )
        self.config = config
        self.text_input = text_input
        self.memory_inputs = tuple(memory_inputs)
        n = len(self.memory_inputs)
        self.modality_embedding = (
            nn.Parameter(torch.randn(n, width) * backbone.init_std) if config.modality_embeddings and n > 1 else None
        )
        cfg = layer_config(backbone, config.heads, config.mlp_ratio)
        layers: dict[int, GatedCrossAttentionLayer] = {}
        for i in range(config.every - 1, backbone.depth, config.every):
            layers[i] = GatedCrossAttentionLayer(cfg, backbone.depth)
        # A plain dict, not a submodule: the backbone registers (and saves) these layers.
        object.__setattr__(self, "_layers", layers)

    @classmethod
    def from_config(
        cls,
        config: CrossAttentionFusionConfig,
        *,
        width: int,
        encoders: Mapping[str, Encoder],
        backbone: BackboneConfig,
    ) -> "CrossAttentionFusion":
        text, others = split_text_input(encoders, "cross_attention")
        return cls(config, width, text, others, backbone)

    def inserts(self) -> dict[int, nn.Module]:
        return dict(self._layers)

    @property
    def layers(self) -> dict[int, GatedCrossAttentionLayer]:
        """The inserted layers by block index (owned by the backbone)."""
        return dict(self._layers)

    def requires_grad_(self, requires_grad: bool = True) -> "CrossAttentionFusion":
        super().requires_grad_(requires_grad)
        for layer in self._layers.values():
            layer.requires_grad_(requires_grad)
        return self

    def train(self, mode: bool = True) -> "CrossAttentionFusion":
        super().train(mode)
        for layer in self._layers.values():
            layer.train(mode)
        return self

    def forward(self, tokens: Mapping[str, Tokens], batch: Batch) -> FusedSequence:
        if self.text_input not in tokens:
            raise InputError(
                f"the cross_attention fusion needs the text input {self.text_input!r} in every batch (it is the "
                f"backbone's sequence); the batch has {list(tokens)}"
            )
        t = tokens[self.text_input]
        B, _, D = t.embeds.shape
        embeds: list[Tensor] = []  # each (B, N_m, D)
        masks: list[Tensor] = []  # each (B, N_m)
        names = []
        for i, m in enumerate(self.memory_inputs):
            if m not in tokens:
                continue
            tm = tokens[m]
            x = torch.where(
                tm.mask[..., None], tm.embeds, torch.zeros((), dtype=tm.embeds.dtype, device=tm.embeds.device)
            )
            if self.modality_embedding is not None:
                x = x + self.modality_embedding[i]
            embeds.append(x)
            masks.append(tm.mask.to(torch.bool))
            names.append(m)
        if embeds:
            memory = CrossAttentionMemory(torch.cat(embeds, dim=1), torch.cat(masks, dim=1), tuple(names))
        else:
            memory = CrossAttentionMemory(
                t.embeds.new_zeros(B, 0, D), torch.zeros(B, 0, dtype=torch.bool, device=t.embeds.device)
            )
        p = batch.inputs.get(self.text_input, {}).get("prompt_len")
        return FusedSequence(
            embeds=t.embeds,
            mask=t.mask,
            modality_ids=torch.where(t.mask, 0, -1),
            modalities=(self.text_input,),
            index={self.text_input: None},
            prefix_len=None if p is None else torch.minimum(p, t.mask.sum(1)),
            context=memory,
        )

    def max_sequence_length(self, counts: Mapping[str, int | None]) -> int | None:
        """Only the text is in the sequence (the other inputs are cross-attention memory)."""
        return counts.get(self.text_input)

    def embed_step(self, name: str, tokens: Tokens) -> Tensor:
        """New text tokens during generation (B, n, D): unchanged (the text is the sequence as is)."""
        if name != self.text_input:
            raise ValueError(f"cross_attention fusion: only the text input {self.text_input!r} is in the sequence")
        return tokens.embeds

    def extra_repr(self) -> str:
        return (
            f"text={self.text_input!r}, memory={list(self.memory_inputs)}, "
            f"inserted after blocks {sorted(self._layers)} (owned by the backbone)"
        )
