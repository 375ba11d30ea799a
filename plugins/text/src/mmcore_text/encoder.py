"""The ``text.bytes`` and ``text.bpe`` encoder: a learned embedding of the tokenizer's ids."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mmcore import Encoder, Tokens

from .config import BPETextConfig, ByteTextConfig
from .tokenizer import VOCAB_SIZE

__all__ = ["TokenEmbedding"]


class TokenEmbedding(Encoder):
    """Token ids -> embeddings of the backbone's width.

    Built as ``TokenEmbedding(config, *, width, processor)``: ``width`` is the backbone
    width (so no projector is needed), ``processor`` the :class:`TextProcessor` or
    :class:`BPETextProcessor` whose vocabulary it embeds (``processor.vocab_size`` rows).
    Without a processor: ``config.vocab_size`` for a :class:`BPETextConfig`, else the byte
    tokenizer's 264 ids.

    Attributes:
        token_embedding: ``nn.Embedding(vocab_size, width)``, normal init with std 0.02
            (GPT-2). An LM head ties its output projection to it; weight files name it
            ``encoders.<input>.token_embedding.weight``.
        vocab_size: number of token ids.
        out_dim: ``width``.

    ``forward({"ids": (B, T) long, "mask": (B, T) bool})`` -> ``Tokens(embeds=(B, T, width),
    mask=(B, T) bool)``; the mask is passed through (all True when absent).
    """

    modality = "text"

    def __init__(self, config: ByteTextConfig | BPETextConfig | None = None, *, width: int, processor: Any = None):
        super().__init__()
        self.config = config if config is not None else ByteTextConfig()
        if processor is not None:
            self.vocab_size = int(processor.vocab_size)
        elif isinstance(self.config, BPETextConfig) and self.config.vocab_size is not None:
            self.vocab_size = int(self.config.vocab_size)
        else:
            self.vocab_size = VOCAB_SIZE
        self.out_dim = int(width)
        self.token_embedding = nn.Embedding(self.vocab_size, self.out_dim)
        nn.init.normal_(self.token_embedding.weight, mean=0.0, std=0.02)

    def forward(self, inputs: dict[str, Tensor]) -> Tokens:
        ids = inputs["ids"]
        mask = inputs.get("mask")
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.to(torch.bool)
        return Tokens(embeds=self.token_embedding(ids), mask=mask)

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, out_dim={self.out_dim}"
