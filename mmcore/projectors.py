"""Projectors: map an encoder's width to the backbone's, (B, N, in_dim) -> (B, N, out_dim)."""

from __future__ import annotations

from torch import Tensor, nn

from .builtin import LinearProjectorConfig, MLPProjectorConfig
from .interfaces import Projector

__all__ = ["LinearProjector", "MLPProjector"]


class LinearProjector(Projector):
    def __init__(self, config: LinearProjectorConfig, *, in_dim: int, out_dim: int):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.proj = nn.Linear(in_dim, out_dim, bias=config.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)  # (B, N, in_dim) -> (B, N, out_dim)


class MLPProjector(Projector):
    def __init__(self, config: MLPProjectorConfig, *, in_dim: int, out_dim: int):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        hidden = config.hidden or out_dim
        self.fc = nn.Linear(in_dim, hidden, bias=config.bias)
        self.act = nn.GELU()
        self.proj = nn.Linear(hidden, out_dim, bias=config.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.act(self.fc(x)))  # (B, N, in_dim) -> (B, N, out_dim)
