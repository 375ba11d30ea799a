"""``encoder:features``: a fixed-length vector of numbers per record (tabular data), one token per feature."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mmcore import Encoder, InputError, Processor, Tokens

from .config import FeaturesEncoderConfig

__all__ = ["FeaturesProcessor", "FeaturesEncoder"]


class FeaturesProcessor(Processor):
    """A JSON list of ``features`` finite numbers -> ``{"x": (K,) float32}``; a batch ->
    ``{"x": (B, K), "mask": (B, K) bool}`` (all False for a record without the field)."""

    modality = "features"

    def __init__(self, config: FeaturesEncoderConfig):
        self.features = int(config.features)

    def __call__(self, value: Any, *, where: str = "") -> dict[str, Tensor]:
        if not isinstance(value, list) or len(value) != self.features:
            raise InputError(f"{where}: expected a list of {self.features} numbers, got {value!r:.80}")
        for i, v in enumerate(value):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
                raise InputError(f"{where}: item {i} must be a finite number, got {v!r}")
        return {"x": torch.tensor([float(v) for v in value], dtype=torch.float32)}

    def examples(self) -> list[list[float]]:
        """A few raw values, for mmcore's conformance kit."""
        k = self.features
        return [[0.5 * i - 1.0 for i in range(k)], [1.0] * k, [float(-i) for i in range(k)]]

    def collate(self, samples: Sequence[dict[str, Tensor] | None]) -> dict[str, Tensor]:
        x = torch.zeros(len(samples), self.features)
        present = torch.zeros(len(samples), dtype=torch.bool)
        for i, s in enumerate(samples):
            if s is not None:
                x[i], present[i] = s["x"], True
        return {"x": x, "mask": present.unsqueeze(1).expand(-1, self.features).clone()}


class FeaturesEncoder(Encoder):
    """One token per feature: ``x_k * w_k + b_k`` (learned (K, D) ``weight`` and ``bias``,
    as in FT-Transformer's feature tokenizer). ``num_tokens = features``.

    Initialisation: ``b_k ~ N(0, bias_std²)``, ``w_k ~ N(0, weight_std²)`` (1.0 and 0.1 by
    default). With the bias ten times the weight, the normalisation every block and the final
    norm apply to a token is close to linear in a standardised ``x_k``: the model starts near a
    linear (additive) model of the features and learns what is not linear from there. At 0.02
    for both, as for the backbone's own weights, the normalised token is about ``sign(x_k)``: a
    squashed value the model has to unlearn (docs/tasks.md, the diabetes search)."""

    modality = "features"

    def __init__(self, config: FeaturesEncoderConfig, *, width: int):
        super().__init__()
        self.out_dim = int(width)
        self.num_tokens = int(config.features)
        self.weight = nn.Parameter(torch.randn(self.num_tokens, width) * config.weight_std)
        self.bias = nn.Parameter(torch.randn(self.num_tokens, width) * config.bias_std)

    def forward(self, inputs: dict[str, Tensor]) -> Tokens:
        x = inputs["x"].to(self.weight.dtype)  # (B, K)
        embeds = x.unsqueeze(-1) * self.weight + self.bias  # (B, K, D)
        return Tokens(embeds=embeds, mask=inputs["mask"].bool())
