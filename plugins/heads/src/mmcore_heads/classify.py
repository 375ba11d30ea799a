"""``head:classify``: pool the fused sequence's hidden states and predict one label per sample."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcore import Batch, FusedSequence, Head, HeadOutput, InputError

from .config import ClassificationHeadConfig

__all__ = ["ClassificationHead", "pool", "readout"]


def pool(hidden: Tensor, mask: Tensor, how: str) -> Tensor:
    """(B, L, D) hidden states and (B, L) bool mask -> (B, D) one vector per sample.

    * ``"last"``: the state at the last real position (for right padding, position
      ``mask.sum(1) - 1``; left padding works too);
    * ``"first"``: the state at the first real position;
    * ``"mean"``: the mean over real positions;
    * ``"max"``: the maximum of each feature over real positions (padding never wins,
      whatever its values): a feature keeps its strongest evidence anywhere in the
      sequence, which a mean over a long sequence dilutes.

    A row without real tokens gives the state at position 0 (``last``/``first``) or
    zeros (``mean``, ``max``).
    """
    B, L, _ = hidden.shape
    if how == "mean":
        m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, L, 1)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    if how == "max":
        m = mask.unsqueeze(-1)  # (B, L, 1)
        low = torch.finfo(hidden.dtype).min
        out = hidden.masked_fill(~m, low).amax(1)  # (B, D)
        return torch.where(mask.any(1, keepdim=True), out, torch.zeros_like(out))
    pos = torch.arange(L, device=hidden.device).expand(B, L)
    if how == "last":
        idx = torch.where(mask, pos, -1).amax(1).clamp(min=0)  # (B,)
    elif how == "first":
        idx = torch.where(mask, pos, L).amin(1)
        idx = torch.where(idx < L, idx, 0)
    else:
        raise ValueError(f"unknown pooling {how!r}; expected 'last', 'mean', 'max' or 'first'")
    return hidden[torch.arange(B, device=hidden.device), idx]


def readout(width: int, hidden: int | None, outputs: int, dropout: float) -> nn.Module:
    """``nn.Linear(width, outputs)``, or with ``hidden``: ``Linear -> GELU -> Dropout -> Linear``."""
    if not hidden:
        return nn.Linear(width, outputs)
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, outputs))


class ClassificationHead(Head):
    """Classifier over the backbone's pooled hidden states.

    Built as ``ClassificationHead(config, *, width)``. Layers: dropout, then either one
    ``nn.Linear(width, C)`` or (``hidden`` set) ``Linear(width, hidden) -> GELU -> dropout
    -> Linear(hidden, C)``, held as ``classifier``.

    ``forward(hidden (B, L, D), sequence) -> HeadOutput(logits (B, C),
    extra={"pooled": (B, D)})``: the fused sequence is pooled over ``sequence.mask``
    (``config.pooling``, see :func:`pool`); ``mask`` is None.

    ``loss(output, batch)``: cross-entropy against ``batch.targets[config.label]`` ((B,)
    integers in [0, C)), weighted by ``class_weights`` (mean normalised by the weights of
    the batch's labels, as ``F.cross_entropy`` does) with ``label_smoothing``. None when
    the batch has no such target. A label outside [0, C) raises
    :class:`~mmcore.errors.InputError` naming the key, the value and the range.

    ``class_weights`` is a non-persistent buffer (not in the state dict);
    :meth:`reset_buffers` recomputes it after a build on the meta device.
    """

    def __init__(self, config: ClassificationHeadConfig, *, width: int):
        super().__init__()
        self.num_classes = int(config.num_classes)
        self.pooling = config.pooling
        self.label = config.label
        self.weight = float(config.weight)
        self.label_smoothing = float(config.label_smoothing)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = readout(width, config.hidden, self.num_classes, config.dropout)
        self._class_weights = None if config.class_weights is None else tuple(float(w) for w in config.class_weights)
        # Not persistent: the weights come from the config, not from weight files. A model
        # built on the meta device gets their values from reset_buffers() (mmcore.load).
        weights = None if self._class_weights is None else torch.tensor(self._class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)

    def reset_buffers(self) -> None:
        """Refill the non-persistent ``class_weights`` buffer from the config, in place."""
        if self.class_weights is not None and self._class_weights is not None:
            with torch.no_grad():
                self.class_weights.copy_(torch.tensor(self._class_weights, dtype=self.class_weights.dtype))

    def forward(self, hidden: Tensor, sequence: FusedSequence) -> HeadOutput:
        pooled = pool(hidden, sequence.mask, self.pooling)  # (B, D)
        logits = self.classifier(self.dropout(pooled))  # (B, C)
        return HeadOutput(logits=logits, extra={"pooled": pooled})

    def loss(self, output: HeadOutput, batch: Batch) -> Tensor | None:
        terms = self.loss_terms(output, batch)
        if terms is None:
            return None
        total, count = terms
        return total / count.clamp(min=torch.finfo(torch.float32).tiny)

    def loss_terms(self, output: HeadOutput, batch: Batch) -> tuple[Tensor, Tensor] | None:
        """(sum of weighted per-sample losses, sum of their weights): ``loss`` is their ratio."""
        labels = batch.targets.get(self.label)
        if labels is None:
            return None
        logits = output.logits
        C = self.num_classes
        if (
            labels.is_floating_point()
            or labels.dtype == torch.bool
            or labels.dim() != 1
            or labels.shape[0] != logits.shape[0]
        ):
            raise InputError(
                f"target {self.label!r}: expected integer class labels of shape ({logits.shape[0]},), got "
                f"{labels.dtype} of shape {tuple(labels.shape)}"
            )
        labels = labels.long()
        bad = (labels < 0) | (labels >= C)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise InputError(
                f"target {self.label!r}: label {int(labels[i])} (sample {i} of the batch) is outside the valid "
                f"range [0, {C - 1}] of num_classes = {C}"
            )
        w = None if self.class_weights is None else self.class_weights.float()
        per_sample = F.cross_entropy(
            logits.float(),
            labels,
            weight=w,
            reduction="none",
            label_smoothing=self.label_smoothing if self.training else 0.0,  # eval: the plain cross-entropy
        )  # (B,), already multiplied by w[label]
        denom = w[labels].sum() if w is not None else torch.tensor(float(labels.shape[0]), device=logits.device)
        return per_sample.sum(), denom

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, pooling={self.pooling!r}, label={self.label!r}, weight={self.weight}"
