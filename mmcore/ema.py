"""An exponential moving average of a model's trained weights (``training.ema``).

After every optimizer step, each trained parameter's average moves towards it:
``avg <- d * avg + (1 - d) * param`` with ``d = min(decay, (1 + n) / (10 + n))`` at the
n-th update, so early averages are not dominated by the random initialisation. Only
parameters that require gradients are averaged (a frozen weight equals its average).
:meth:`EMA.applied` puts the averages into the model for the duration of a ``with`` block
(evaluation, saving) and restores the trained weights after it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .errors import MMCoreError

__all__ = ["EMA"]


class EMA:
    """The moving average of ``model``'s trainable parameters, with decay ``decay`` (0 < decay < 1)."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise MMCoreError(f"training.ema must be between 0 and 1 (e.g. 0.999), got {decay!r}")
        self.decay = decay
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.shadow = [p.detach().clone() for p in self.params]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        """Move the averages towards the current weights (call after each optimizer step)."""
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        if self.shadow:
            torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - d)
        self.updates += 1

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged weights in the model inside the block; the trained ones again after it."""
        with torch.no_grad():
            kept = [p.detach().clone() for p in self.params]
            for p, s in zip(self.params, self.shadow, strict=True):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, k in zip(self.params, kept, strict=True):
                    p.copy_(k)

    def state_dict(self) -> dict[str, Tensor]:
        """Parameter name -> its average (CPU tensors, for a safetensors file)."""
        return {n: s.detach().cpu().contiguous() for n, s in zip(self.names, self.shadow, strict=True)}

    def load_state_dict(self, state: Mapping[str, Tensor], updates: int, where: str) -> None:
        """Adopt saved averages; they must cover exactly the trained parameters, with their shapes."""
        missing = sorted(set(self.names) - set(state))
        extra = sorted(set(state) - set(self.names))
        if missing or extra:
            raise MMCoreError(
                f"{where}: the saved weight averages do not match the trained parameters (missing: "
                f"{missing[:5] or 'none'}, unexpected: {extra[:5] or 'none'}); resume with the same spec"
            )
        with torch.no_grad():
            for n, s in zip(self.names, self.shadow, strict=True):
                if state[n].shape != s.shape:
                    raise MMCoreError(
                        f"{where}: the saved average of {n} has shape {tuple(state[n].shape)}, "
                        f"the parameter {tuple(s.shape)}"
                    )
                s.copy_(state[n])
        self.updates = int(updates)
