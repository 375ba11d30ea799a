"""Training plans: stages, the learning-rate schedule and the wall-clock budget.

A run is a sequence of :class:`Stage` (``[[training.stages]]``; without them, one stage of
every task for ``training.steps``). Each stage has its tasks, steps, peak learning rate and
warmup, and a *deadline*: with ``training.max_time``, stage i must end once the run has
used ``max_time`` times the fraction of all steps that stages 1..i hold, so time a stage
leaves unused passes to the next one, and the last deadline is ``max_time`` itself.

Within a stage the schedule is the usual warmup then decay, driven by the stage's
*progress*: the larger of its step fraction and its time fraction,

    progress = max(local_step / steps, (elapsed - stage_start) / (deadline - stage_start))

so a run with a time budget decays its learning rate to the floor just as time runs out.
Without ``max_time`` the schedule depends on the step alone (and a resumed run repeats an
uninterrupted one exactly). A stage ends when its progress reaches 1 (or early stopping
ends it); the next stage starts its own schedule from its own warmup.

This module imports the standard library and the core's config models only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .config import TrainingConfig
from .errors import MMCoreError

__all__ = ["Stage", "lr_at", "plan_stages", "progress", "time_fraction", "with_steps"]


@dataclass(frozen=True)
class Stage:
    """One resolved stage: what it trains, for how long, and its schedule's peak and warmup."""

    index: int
    name: str
    tasks: tuple[str, ...]
    steps: int
    lr: float
    warmup_steps: int
    deadline: float | None  # seconds of the run by which this stage must end (None: no budget)
    reset_optimizer: bool = False


def plan_stages(cfg: TrainingConfig, task_names: Sequence[str]) -> list[Stage]:
    """The stages of a run over the given tasks (in [tasks] order); checks the stages' tasks.

    Raises :class:`MMCoreError` naming the stage when it lists a task that is not in [tasks],
    or when ``training.steps`` disagrees with the stages (a config changed without validation).
    """
    names = list(task_names)
    if not cfg.stages:
        return [Stage(0, "all", tuple(names), cfg.steps, cfg.lr, cfg.warmup_steps, cfg.max_time)]
    total = sum(s.steps for s in cfg.stages)
    if cfg.steps != total:
        raise MMCoreError(
            f"training.steps = {cfg.steps} but [[training.stages]] hold {total} steps; with stages, steps is "
            "their sum (to change one stage's length, use mmcore.schedule.with_steps or edit the stage)"
        )
    out, done = [], 0
    for i, s in enumerate(cfg.stages):
        tasks = tuple(s.tasks) if s.tasks is not None else tuple(names)
        unknown = [t for t in tasks if t not in names]
        if unknown:
            raise MMCoreError(
                f"training.stages[{i}].tasks: no task named {', '.join(map(repr, unknown))}; "
                f"tasks: {', '.join(names) or '(none)'}"
            )
        done += s.steps
        deadline = cfg.max_time * done / total if cfg.max_time is not None else None
        out.append(
            Stage(
                i,
                s.name or f"stage-{i + 1}",
                tasks,
                s.steps,
                s.lr if s.lr is not None else cfg.lr,
                s.warmup_steps if s.warmup_steps is not None else cfg.warmup_steps,
                deadline,
                s.reset_optimizer,
            )
        )
    return out


def time_fraction(stage: Stage, elapsed: float, stage_start: float) -> float | None:
    """The fraction of its time the stage has used (None without a budget), from 0 to 1."""
    if stage.deadline is None:
        return None
    span = stage.deadline - stage_start
    return min(1.0, max(0.0, (elapsed - stage_start) / span)) if span > 0 else 1.0


def progress(stage: Stage, local_step: int, used_time: float | None) -> float:
    """How far the stage is, from 0 to 1: the larger of its step and time fractions (see the module)."""
    return min(1.0, max(local_step / stage.steps, used_time or 0.0))


def lr_at(cfg: TrainingConfig, stage: Stage, local_step: int, used_time: float | None = None) -> float:
    """Learning rate of the stage's step ``local_step`` (0-based), the stage having used the
    fraction ``used_time`` of its time (None: no budget; see :func:`time_fraction`).

    Linear warmup over the stage's first ``warmup_steps`` steps, then ``training.schedule``
    (cosine, linear or constant) from the stage's lr down to ``lr * min_lr_ratio``, over the
    stage's steps or, when larger, over its time: the decay fraction is the larger of
    ``(local_step - warmup) / (steps - warmup)`` and the same fraction of the progress in time.
    """
    lr, warmup = stage.lr, stage.warmup_steps
    if warmup and local_step < warmup:
        return lr * (local_step + 1) / warmup
    if cfg.schedule == "constant":
        return lr
    t = min(1.0, (local_step - warmup) / max(1, stage.steps - warmup))
    if used_time is not None:
        start = warmup / stage.steps  # the progress at which warmup ends
        t = max(t, min(1.0, (used_time - start) / (1.0 - start)) if start < 1 else 1.0)
    floor = lr * cfg.min_lr_ratio
    if cfg.schedule == "linear":
        return lr - (lr - floor) * t
    return floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * t))


def with_steps(cfg: TrainingConfig, steps: int) -> TrainingConfig:
    """``cfg`` with ``steps`` changed: without stages the run's length, with stages the last stage's."""
    if not cfg.stages:
        return cfg.model_copy(update={"steps": steps})
    stages = [*cfg.stages[:-1], cfg.stages[-1].model_copy(update={"steps": steps})]
    return cfg.model_copy(update={"stages": stages, "steps": sum(s.steps for s in stages)})
