"""Early fusion: the core's default way of putting several modalities into one sequence.

Each input's tokens are laid out in a declared order (by default: every non-text input
in spec order, then the text, so the text is conditioned on everything else), with an
optional learned modality embedding added to each token and learned begin/end boundary
embeddings around each non-text modality. Padding is squeezed out with one stable sort
per batch -- no loop over samples -- so every sample's real tokens are contiguous and
the sequence is right-padded.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .builtin import EarlyFusionConfig
from .interfaces import Encoder, Fusion
from .types import Batch, FusedSequence, Tokens

__all__ = ["EarlyFusion"]


class EarlyFusion(Fusion):
    """Concatenate modalities in order, with modality and boundary embeddings.

    Args:
        config: :class:`EarlyFusionConfig`.
        width: backbone width D.
        inputs: input names in the order they appear in the sequence.
        text_inputs: names among ``inputs`` that are text (their prompt part, if the
            processor marks one with ``prompt_len``, counts as conditioning prefix).
    """

    def __init__(self, config: EarlyFusionConfig, width: int, inputs: list[str], text_inputs: set[str]):
        super().__init__()
        self.config = config
        self.order = tuple(inputs)
        self.text_inputs = frozenset(text_inputs)
        n = len(self.order)
        # One learned vector per input, added to all of its tokens (zero-initialised:
        # a text-only model starts out exactly as the plain GPT).
        self.modality_embedding = nn.Parameter(torch.zeros(n, width)) if config.modality_embeddings and n > 1 else None
        bounded = [m for m in self.order if m not in self.text_inputs] if config.boundary_tokens else []
        self.bounded = tuple(bounded)
        # Learned begin/end embeddings around each non-text modality: (n_bounded, 2, D).
        self.boundary = nn.Parameter(torch.randn(len(bounded), 2, width) * 0.02) if bounded else None

    @classmethod
    def from_config(cls, config: EarlyFusionConfig, *, width: int, encoders: Mapping[str, Encoder]) -> "EarlyFusion":
        names = list(encoders)
        text = {k for k, e in encoders.items() if getattr(e, "modality", "") == "text"}
        if config.order:
            unknown = [m for m in config.order if m not in encoders]
            missing = [m for m in names if m not in config.order]
            if unknown or missing:
                raise ValueError(
                    f"fusion.order must list every encoder input exactly once; unknown: {unknown}, "
                    f"missing: {missing}; inputs are {names}"
                )
            order = list(config.order)
        else:
            order = [m for m in names if m not in text] + [m for m in names if m in text]
        return cls(config, width, order, text)

    def forward(self, tokens: Mapping[str, Tokens], batch: Batch) -> FusedSequence:
        present = [m for m in self.order if m in tokens]
        if not present:
            raise ValueError(f"early fusion got no tokens; expected some of {list(self.order)}")
        # Fast path: one input and nothing to add -> the sequence *is* that input.
        if len(present) == 1 and present[0] not in self.bounded:
            m = present[0]
            t = tokens[m]
            x = t.embeds
            if self.modality_embedding is not None:
                x = x + self.modality_embedding[self.order.index(m)]
            ids = torch.where(t.mask, self.order.index(m), -1)
            return FusedSequence(
                embeds=x,
                mask=t.mask,
                modality_ids=ids,
                modalities=self.order,
                index={m: None},
                prefix_len=self._prompt_len(batch, m, t.mask),
            )

        parts: list[Tensor] = []  # each (B, n_i, D)
        masks: list[Tensor] = []  # each (B, n_i)
        mod_ids: list[int] = []  # one per part
        prefix: Tensor | int = 0  # (B,) conditioning tokens: all before the first text, plus its prompt
        seen_text = False
        offsets: dict[str, int] = {}
        pos = 0
        for m in present:
            t = tokens[m]
            i = self.order.index(m)
            x = t.embeds
            if self.modality_embedding is not None:
                x = x + self.modality_embedding[i]
            if m in self.bounded:
                b = self.boundary[self.bounded.index(m)]  # (2, D)
                B = x.shape[0]
                has = t.mask.any(dim=1, keepdim=True)  # (B, 1): boundaries only where present
                parts += [b[0].expand(B, 1, -1), x, b[1].expand(B, 1, -1)]
                masks += [has, t.mask, has]
                mod_ids += [i, i, i]
                offsets[m] = pos + 1
                pos += x.shape[1] + 2
                n_real = t.mask.sum(1) + 2 * has[:, 0]
            else:
                parts.append(x)
                masks.append(t.mask)
                mod_ids.append(i)
                offsets[m] = pos
                pos += x.shape[1]
                n_real = t.mask.sum(1)
            if m in self.text_inputs:
                if not seen_text:
                    p = self._prompt_len(batch, m, t.mask)
                    if p is not None:
                        prefix = prefix + p
                seen_text = True
            elif not seen_text:
                prefix = prefix + n_real
        prefix_len = prefix if isinstance(prefix, Tensor) else None

        x = torch.cat(parts, dim=1)  # (B, N, D)
        mask = torch.cat(masks, dim=1)  # (B, N)
        ids = torch.cat(
            [torch.full_like(mk, i, dtype=torch.long) for mk, i in zip(masks, mod_ids, strict=True)], dim=1
        )  # (B, N)
        # Squeeze out padding: a stable sort on "is padding" moves every real token to
        # the front in its original order. order[b, j] = source of fused position j.
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # (B, N)
        x = x.gather(1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        mask = mask.gather(1, order)
        ids = torch.where(mask, ids.gather(1, order), -1)
        # inverse[b, k] = fused position of source token k.
        inverse = torch.empty_like(order).scatter_(
            1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
        )
        index = {}
        for m in present:
            n = tokens[m].embeds.shape[1]
            idx = inverse[:, offsets[m] : offsets[m] + n]  # (B, N_m)
            index[m] = torch.where(tokens[m].mask, idx, -1)
        return FusedSequence(
            embeds=x, mask=mask, modality_ids=ids, modalities=self.order, index=index, prefix_len=prefix_len
        )

    def max_sequence_length(self, counts: Mapping[str, int | None]) -> int | None:
        """Each input's tokens, plus its begin/end boundary tokens (inputs of unknown count left out)."""
        return sum(n + (2 if m in self.bounded else 0) for m, n in counts.items() if n is not None and m in self.order)

    def embed_step(self, name: str, tokens: Tokens) -> Tensor:
        """Embeddings of new tokens of input ``name`` appended during generation: (B, n, D).

        What :meth:`forward` adds to that input's tokens (its modality embedding), so a
        token fed step by step through the KV cache gets the embedding it would have had
        in the fused sequence.
        """
        if name not in self.order:
            raise ValueError(f"early fusion has no input {name!r}; inputs are {list(self.order)}")
        x = tokens.embeds
        if self.modality_embedding is not None:
            x = x + self.modality_embedding[self.order.index(name)]
        return x

    @staticmethod
    def _prompt_len(batch: Batch, name: str, mask: Tensor) -> Tensor | None:
        """The text's own conditioning part (``prompt_len`` from its processor), if any."""
        p = batch.inputs.get(name, {}).get("prompt_len")
        return None if p is None else torch.minimum(p, mask.sum(1))

    def extra_repr(self) -> str:
        return f"order={list(self.order)}, boundaries={list(self.bounded)}"
