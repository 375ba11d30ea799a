"""The state every part of :class:`mmcore.Trainer` shares, declared in one place.

The trainer is one class made of parts, one concern per file, stacked in this order (each part
may use the parts below it): :class:`TrainerBase` (this file: the attributes, set by
``Trainer.__init__``), where it runs (:mod:`mmcore.trainer_dist`), the optimizer
(:mod:`mmcore.trainer_optim`), the data (:mod:`mmcore.trainer_data`), checkpoints and resume
(:mod:`mmcore.trainer_checkpoints`), logging (:mod:`mmcore.trainer_log`), and the run itself
(:mod:`mmcore.trainer`). Only ``Trainer`` is public.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .interfaces import Objective
from .loader import ExcludingDataset, IndexPlan

if TYPE_CHECKING:
    from .config import TaskConfig, TrainingConfig
    from .ema import EMA
    from .schedule import RunPlan
    from .selection import Monitor


@dataclass
class _Task:
    """One task of a run: its config, objective, datasets, index plan and how far it got."""

    name: str
    config: TaskConfig
    objective: Objective
    train: Any
    eval: Any | None
    plan: IndexPlan
    consumed: int = 0
    bad: int = 0  # distinct bad records met (each counted once)
    bad_seen: set[str] = field(default_factory=set)  # where each of them is (file:line)
    loader: Any = None
    it: Any = None
    excluded: dict[int, str] = field(default_factory=dict)  # records that killed a worker process

    def data(self) -> Any:
        """The training records less the excluded ones."""
        return ExcludingDataset(self.train, self.excluded) if self.excluded else self.train


class TrainerBase:
    """The attributes of a :class:`mmcore.Trainer` (declarations; ``Trainer.__init__`` sets them)."""

    cfg: TrainingConfig
    task_cfgs: dict[str, TaskConfig]
    device: torch.device
    rank: int
    world: int
    model: nn.Module  # the model given (a MultimodalGPT: encoders, processors, heads, spec)
    out: Path | None
    resume: bool
    step: int
    history: list[dict[str, Any]]
    running: dict[str, tuple[float, int]]  # each task's running loss: (moving average, losses in it)
    tasks: dict[str, _Task]
    plan: RunPlan
    monitor: Monitor | None
    wrapped: Any  # the module the step runs (DDP/FSDP/compiled around ``model``)
    optimizer: torch.optim.Optimizer
    ema: EMA | None
    scaler: torch.amp.GradScaler

    def _averaged(self) -> Any:
        """A context with the weight averages in the model (``training.ema``), else nothing."""
        return self.ema.applied() if self.ema is not None else nullcontext()
