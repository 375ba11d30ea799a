"""Where the trainer runs: the device, the torchrun process group, DDP or FSDP2 around the model,
``torch.compile``, autocast, and the full state dict of a sharded model."""

from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .trainer_base import TrainerBase


def _dist_info() -> tuple[int, int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0


def _init_distributed(device: torch.device) -> None:
    """Join the process group when started by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def _device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(name)


class TrainerDist(TrainerBase):
    """The trainer's processes and devices (a part of :class:`mmcore.Trainer`)."""

    def _wrap(self, model: nn.Module) -> nn.Module:
        """The module the training step runs: the model itself, or DDP/FSDP2 around it under
        torchrun, compiled with ``torch.compile`` when ``training.compile`` is set. Checkpoints,
        evaluation and the saved model always use ``self.model`` (no wrapper prefixes)."""
        wrapped: Any = self._distribute(model)
        if self.cfg.compile:
            wrapped = torch.compile(wrapped)
        return wrapped

    def _distribute(self, model: nn.Module) -> nn.Module:
        if self.world == 1:
            return model
        if self.cfg.distributed == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for block in model.backbone.blocks:
                fully_shard(block)
            fully_shard(model)
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        # Some parameters may sit out a step: other tasks' heads, a fusion's parameters for an
        # input that a batch lacks. DDP must then not wait for their gradients.
        unused = len(model.heads) > 1 or len(self.tasks) > 1 or len(model.encoders) > 1
        return DDP(model, device_ids=ids, find_unused_parameters=unused)

    def _rank0_value(self, x: float) -> float:
        """Rank 0's value of ``x`` in every process (so that all stop at the same step)."""
        t = torch.tensor([x], dtype=torch.float64, device=self.device)
        dist.broadcast(t, 0)
        return float(t[0])

    def _agree_stop(self, signum: int | None) -> int | None:
        """The signal that stops the run after this step, the same in every process (the largest
        any process got: SIGTERM over SIGINT), or None. One small all-reduce per step under torchrun."""
        if self.world == 1:
            return signum
        t = torch.tensor([signum or 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t[0]) or None

    def _autocast(self) -> Any:
        if self.cfg.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _sharded(self) -> bool:
        """Checkpoints are written sharded by every process (FSDP2 under torchrun): mmcore.sharded."""
        return self.world > 1 and self.cfg.distributed == "fsdp"

    def _model_state(self) -> dict[str, Any]:
        if self.world > 1 and self.cfg.distributed == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return self.model.state_dict()
