"""The trainer's optimizer: AdamW over the trainable parameters (the model's and the objectives'),
in two weight-decay groups, and its state flattened into tensors and JSON for a checkpoint."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import MMCoreError
from .trainer_dist import TrainerDist


class TrainerOptim(TrainerDist):
    """The optimizer of :class:`mmcore.Trainer` (a part of it)."""

    def _make_optimizer(self) -> torch.optim.Optimizer:
        """AdamW over the parameters that require gradients, and only those.

        The spec's training policies decide which: a ``frozen`` component has none, a
        ``lora`` component only its adapters (``lora_A``, ``lora_B``). Weight decay applies to
        matrices (adapters included), not to biases and norms.
        """
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for _, p in self.model.named_parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 else no_decay).append(p)
        for p in self._objective_params():  # e.g. a distillation's hidden-state projection
            (decay if p.dim() >= 2 else no_decay).append(p)
        if not decay and not no_decay:
            raise MMCoreError(
                "every parameter is frozen: nothing to train (every component of the spec has train = 'frozen'; "
                "set train = 'full' or 'lora' on at least one)"
            )
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        # The fused kernel (CUDA, and CPU since torch 2.4) updates every tensor in one pass: on
        # CPU about 3x faster than the multi-tensor loop for a small GPT (bench/README.md).
        fused = self.device.type in ("cuda", "cpu")
        return torch.optim.AdamW(groups, lr=self.cfg.lr, betas=self.cfg.betas, eps=self.cfg.eps, fused=fused)

    def _objective_params(self) -> list[nn.Parameter]:
        """Trainable parameters the tasks' objectives hold outside the model (in task order)."""
        return [p for t in self.tasks.values() for p in t.objective.parameters()]


def _flatten_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, t in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = t
    for pid, vals in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(vals)
    return {"state": state, "param_groups": meta["param_groups"]}
