"""``head:regress`` and ``objective:regression``: numeric targets, standardised, with MSE, MAE and R²."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mmcore import Batch, FusedSequence, Head, HeadOutput, InputError, MMCoreError, ModelOutput, Objective, TargetField

from .classify import pool, readout
from .config import RegressionHeadConfig, RegressionObjectiveConfig

__all__ = ["RegressionHead", "RegressionObjective"]


class RegressionHead(Head):
    """K numeric outputs per sample from the pooled hidden states.

    Built as ``RegressionHead(config, *, width)``. Layers: dropout, then ``nn.Linear(width, K)``
    or (``hidden`` set) ``Linear -> GELU -> dropout -> Linear``, held as ``regressor``.

    The network predicts *standardised* targets ``z = (y - mean) / std``; the persistent
    buffers ``target_mean`` and ``target_std`` (K,) are saved with the weights, so a model
    directory predicts in the targets' units. :meth:`fit_standardisation` sets them (the
    ``regression`` objective calls it from the training set before training).

    ``forward -> HeadOutput(logits (B, K) in target units, extra={"standardised": (B, K),
    "pooled": (B, D)})``. ``loss_terms(output, batch)``: (sum over samples and outputs of the
    squared -- or, with ``loss = "mae"`` set by the objective, absolute -- standardised error,
    B * K); None when the batch has no ``targets[field]``.
    """

    def __init__(self, config: RegressionHeadConfig, *, width: int):
        super().__init__()
        self.outputs = int(config.outputs)
        self.field = config.field
        self.pooling = config.pooling
        self.standardize = bool(config.standardize)
        self.weight = float(config.weight)
        self.error = "mse"
        self.dropout = nn.Dropout(config.dropout)
        self.regressor = readout(width, config.hidden, self.outputs, config.dropout)
        self.register_buffer("target_mean", torch.zeros(self.outputs))
        self.register_buffer("target_std", torch.ones(self.outputs))

    @torch.no_grad()
    def fit_standardisation(self, targets: Tensor) -> None:
        """Set each output's mean and standard deviation from (N, K) training targets (when
        ``standardize``); a constant output keeps std 1."""
        if not self.standardize:
            return
        targets = targets.reshape(-1, self.outputs).double()
        if targets.shape[0] == 0:
            raise MMCoreError("regress head: no training targets to standardise with")
        std = targets.std(0, unbiased=False) if targets.shape[0] > 1 else torch.ones(self.outputs, dtype=torch.float64)
        std = torch.where(std > 1e-12, std, torch.ones_like(std))
        self.target_mean.copy_(targets.mean(0).to(self.target_mean))
        self.target_std.copy_(std.to(self.target_std))

    def forward(self, hidden: Tensor, sequence: FusedSequence) -> HeadOutput:
        pooled = pool(hidden, sequence.mask, self.pooling)  # (B, D)
        z = self.regressor(self.dropout(pooled))  # (B, K), standardised
        y = z * self.target_std.to(z.dtype) + self.target_mean.to(z.dtype)  # in the parameters' dtype
        return HeadOutput(logits=y, extra={"standardised": z, "pooled": pooled})

    def example_targets(self, batch: Batch) -> dict[str, Tensor]:
        """Targets for mmcore's conformance kit: (B, K) numbers."""
        return {self.field: torch.linspace(-1.0, 2.0, batch.size * self.outputs).reshape(batch.size, self.outputs)}

    def targets_of(self, batch: Batch) -> Tensor | None:
        """(B, K) float targets of a batch, or None when it has none."""
        y = batch.targets.get(self.field)
        if y is None:
            return None
        if not y.is_floating_point() and y.dtype != torch.long:
            raise InputError(f"regress head: target {self.field!r} must be numbers, got {y.dtype}")
        return y.float().reshape(y.shape[0], -1)

    def loss_terms(self, output: HeadOutput, batch: Batch) -> tuple[Tensor, Tensor] | None:
        y = self.targets_of(batch)
        if y is None:
            return None
        z = output.extra["standardised"].float()
        if y.shape != z.shape:
            raise InputError(
                f"regress head: target {self.field!r} has shape {tuple(y.shape)}, expected {tuple(z.shape)}"
            )
        diff = z - (y - self.target_mean) / self.target_std
        err = diff.abs() if self.error == "mae" else diff.pow(2)
        return err.sum(), torch.tensor(float(err.numel()), device=err.device)

    def loss(self, output: HeadOutput, batch: Batch) -> Tensor | None:
        terms = self.loss_terms(output, batch)
        return None if terms is None else terms[0] / terms[1]

    def extra_repr(self) -> str:
        return f"outputs={self.outputs}, field={self.field!r}, pooling={self.pooling!r}, standardize={self.standardize}"


class RegressionObjective(Objective):
    """``regression``: trains a ``head:regress`` on the numbers of its ``field``.

    Targets: the head's ``field``, a number (one output) or a list of K numbers. Before
    training it sets the head's standardisation from every training target. Loss: the
    head's standardised squared (``loss = "mse"``) or absolute (``"mae"``) error. Metrics,
    in the targets' units and averaged over outputs: ``mse``, ``mae`` and ``r2`` (1 - SSE /
    SST with the evaluation set's own mean), from streamed sums (count, sum y, sum y², sum of
    squared and absolute errors per output).
    """

    def __init__(self, config: RegressionObjectiveConfig, *, task: Any, head: str, model: nn.Module, where: str):
        self.head = head
        self.attention = task.attention
        module = model.heads[head]
        if not isinstance(module, RegressionHead):
            raise MMCoreError(
                f"{where}: the regression objective trains a head:regress; {head!r} is {type(module).__name__}"
            )
        module.error = config.loss
        self.field, self.outputs = module.field, module.outputs

    def targets(self) -> list[TargetField]:
        return [TargetField(self.field, "floats", length=self.outputs)]

    def setup(self, model: nn.Module, targets: Iterable[Mapping[str, Any]]) -> None:
        values = [t[self.field] for t in targets if self.field in t]
        if not values:
            raise MMCoreError(f"regression objective: no training record has the target field {self.field!r}")
        self.unwrap(model).heads[self.head].fit_standardisation(torch.tensor(values, dtype=torch.float64))

    def metric_state(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        pred = output.outputs[self.head].logits.double()  # (B, K)
        y = batch.targets[self.field].double().reshape(pred.shape)
        err = pred - y
        return {
            "n": torch.tensor(float(y.shape[0]), dtype=torch.float64),
            "sum_y": y.sum(0),
            "sum_y2": y.pow(2).sum(0),
            "sse": err.pow(2).sum(0),
            "sae": err.abs().sum(0),
        }

    def metrics(self, state: Mapping[str, Tensor]) -> dict[str, float]:
        out = super().metrics(state)
        n = float(state["n"])
        sst = state["sum_y2"] - state["sum_y"].pow(2) / n  # (K,)
        r2 = 1 - state["sse"] / sst.clamp(min=1e-12)
        out.update(
            mse=float(state["sse"].mean()) / n,
            mae=float(state["sae"].mean()) / n,
            r2=float(r2.mean()),
            samples=n,
        )
        return out
