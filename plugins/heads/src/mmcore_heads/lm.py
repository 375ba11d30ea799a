"""``head:lm``: logits over a token input's vocabulary at each of its tokens, and the LM loss.

The input is usually text; any encoder that owns a token vocabulary works, e.g. the image
tokens of ``vision.palette``, whose head then predicts an image pixel by pixel."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcore import IGNORE_INDEX, LM_LABELS, PROMPT_LEN, Batch, FusedSequence, Head, HeadOutput, InputError

from .config import LMHeadConfig

__all__ = ["LMHead", "IGNORE_INDEX"]


class LMHead(Head):
    """Language-model head over the tokens of one encoder input (``config.input``).

    Built as ``LMHead(config, *, width, encoders)``: ``encoders`` maps input names to the
    model's encoders; the one named ``config.input`` must expose ``vocab_size`` and, when
    ``tie`` is set, ``token_embedding`` (an ``nn.Embedding(vocab_size, width)``).

    Tied (default): ``logits = hidden @ token_embedding.weight.T (+ bias)``. The head keeps
    a reference to the embedding *module* without registering it as a submodule, so the
    state dict holds the weight once (under the encoder), and a weight swapped in by
    ``load_state_dict(..., assign=True)`` is the one the head uses. Untied: a separate
    ``proj = nn.Linear(width, vocab_size, bias=bias)``.

    ``forward(hidden (B, L, D), sequence) -> HeadOutput(logits (B, N, V), mask (B, N))``
    where N is the input's token count (its collated length T). Positions come from
    ``sequence.gather(hidden, input)``; ``mask`` is True at the input's real tokens:
    ``sequence.index[input] >= 0`` (-1 marks padding), or, where the index is None (the
    input *is* the sequence, token i at position i), ``sequence.mask[:, :N]``. Logits at
    padding rows are computed but meaningless. When the sequence holds no tokens of the
    input, logits are (B, 0, V).

    ``loss(output, batch)`` -> scalar, the mean over counted tokens of the token-level
    cross-entropy (one token, one vote, across the batch):

    * default, next-token: ``logits[:, :-1]`` predict ``ids[:, 1:]`` (``ids =
      batch.inputs[input]["ids"]``). A target position j counts when token j is real and,
      if the input carries ``prompt_len`` (B,), ``j >= prompt_len`` -- so for
      ``{"prompt", "target"}`` samples only the target (and ``<eos>``) is learned.
    * masked-LM: when ``batch.targets["lm_labels"]`` (B, N) long is present, logits at
      position i predict ``lm_labels[:, i]`` *unshifted* (the input holds ``<mask>`` where
      a token is to be recovered); -100 means no loss; padding never counts.

    None when the batch has neither ``ids`` for the input nor ``lm_labels``. With no
    counted token the loss is a zero that still has a ``grad_fn`` (never NaN).
    """

    def __init__(self, config: LMHeadConfig | None = None, *, width: int, encoders: Mapping[str, nn.Module]):
        super().__init__()
        config = config if config is not None else LMHeadConfig()
        self.input = config.input
        self.tie = config.tie
        self.weight = float(config.weight)
        self.label_smoothing = float(config.label_smoothing)
        self.width = int(width)

        available = ", ".join(repr(k) for k in encoders) or "(none)"
        with_vocab = [k for k, e in encoders.items() if _vocab_of(e) is not None] or ["(none)"]
        enc = encoders.get(self.input)
        if enc is None:
            raise ValueError(
                f"lm head: input {self.input!r} is not one of the model's encoder inputs ({available}); "
                f"set the head's `input` option to one with a token vocabulary: {', '.join(with_vocab)}"
            )
        vocab = _vocab_of(enc)
        emb = getattr(enc, "token_embedding", None)
        if vocab is None or (self.tie and not isinstance(emb, nn.Embedding)):
            need = "vocab_size and token_embedding (nn.Embedding)" if self.tie else "vocab_size"
            raise ValueError(
                f"lm head: the encoder of input {self.input!r} ({type(enc).__name__}) has no token vocabulary "
                f"(it needs {need}); inputs of this model: {available}; with a vocabulary: {', '.join(with_vocab)}"
            )
        self.vocab_size = int(vocab)
        if self.tie:
            assert isinstance(emb, nn.Embedding)
            if tuple(emb.weight.shape) != (self.vocab_size, self.width):
                raise ValueError(
                    f"lm head: cannot tie to {self.input!r}'s token_embedding of shape {tuple(emb.weight.shape)}: "
                    f"the backbone width is {self.width} and the vocabulary {self.vocab_size}; set tie = false"
                )
            # Not a submodule: the weight lives (and is saved) under the encoder only.
            object.__setattr__(self, "_tied", emb)
            self.proj = None
        else:
            object.__setattr__(self, "_tied", None)
            self.proj = nn.Linear(self.width, self.vocab_size, bias=config.bias)
            nn.init.normal_(self.proj.weight, mean=0.0, std=0.02)
            if self.proj.bias is not None:
                nn.init.zeros_(self.proj.bias)
        self.bias = nn.Parameter(torch.zeros(self.vocab_size)) if self.tie and config.bias else None

    @property
    def tied_embedding(self) -> nn.Embedding | None:
        """The token embedding the output projection is tied to (None when untied)."""
        return cast(nn.Embedding | None, self._tied)

    def project(self, h: Tensor) -> Tensor:
        """Hidden states (..., D) -> logits (..., V)."""
        if self._tied is not None:
            return F.linear(h, self._tied.weight, self.bias)
        assert self.proj is not None
        return self.proj(h)

    def forward(self, hidden: Tensor, sequence: FusedSequence) -> HeadOutput:
        if self.input not in sequence.index:
            B = hidden.shape[0]
            return HeadOutput(
                logits=hidden.new_zeros(B, 0, self.vocab_size),
                mask=torch.zeros(B, 0, dtype=torch.bool, device=hidden.device),
            )
        h = sequence.gather(hidden, self.input)  # (B, N, D)
        idx = sequence.index[self.input]
        mask = sequence.mask[:, : h.shape[1]] if idx is None else idx >= 0  # (B, N)
        return HeadOutput(logits=self.project(h), mask=mask)

    def loss(self, output: HeadOutput, batch: Batch) -> Tensor | None:
        terms = self.loss_terms(output, batch)
        if terms is None:
            return None
        total, count = terms
        return total / count.clamp(min=1)

    def loss_terms(self, output: HeadOutput, batch: Batch) -> tuple[Tensor, Tensor] | None:
        """(summed token cross-entropy, number of counted tokens): ``loss`` is their ratio."""
        logits = output.logits  # (B, N, V)
        B, N, V = logits.shape
        inputs: Mapping[str, Any] = batch.inputs.get(self.input) or {}
        labels = batch.targets.get(LM_LABELS)
        if labels is None and "ids" not in inputs:
            return None
        valid = output.mask if output.mask is not None else torch.ones(B, N, dtype=torch.bool, device=logits.device)
        if "mask" in inputs:
            valid = valid & _check(inputs["mask"], (B, N), f"inputs[{self.input!r}]['mask']").to(torch.bool)

        if labels is not None:  # masked LM: position i predicts lm_labels[:, i]
            pred = logits
            target = _check(labels, (B, N), "targets['lm_labels']").long()
            keep = valid & (target != IGNORE_INDEX)
        else:  # next token: position i predicts ids[:, i + 1]
            ids = _check(inputs["ids"], (B, N), f"inputs[{self.input!r}]['ids']").long()
            pred = logits[:, :-1]
            target = ids[:, 1:]
            keep = valid[:, 1:]
            prompt_len = inputs.get(PROMPT_LEN)
            if prompt_len is not None:
                pos = torch.arange(1, N, device=logits.device)  # target positions
                keep = keep & (pos.unsqueeze(0) >= prompt_len.reshape(B, 1))

        target = torch.where(keep, target, torch.full_like(target, IGNORE_INDEX))
        per_token = F.cross_entropy(
            pred.reshape(-1, V).float(),
            target.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="none",
            label_smoothing=self.label_smoothing if self.training else 0.0,  # eval: the true NLL (perplexity)
        )  # 0 at ignored tokens
        return per_token.sum(), keep.sum()

    def extra_repr(self) -> str:
        tied = f"tied to encoders.{self.input}.token_embedding" if self.tie else "untied"
        return f"input={self.input!r}, vocab_size={self.vocab_size}, {tied}, weight={self.weight}"


def _vocab_of(encoder: nn.Module) -> int | None:
    v = getattr(encoder, "vocab_size", None)
    return int(v) if isinstance(v, int) and v > 0 else None


def _check(t: Tensor, shape: tuple[int, int], name: str) -> Tensor:
    if tuple(t.shape) != shape:
        raise InputError(f"lm head: {name} has shape {tuple(t.shape)}, expected {shape} (batch, tokens)")
    return t
