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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .config import TrainingConfig
from .errors import MMCoreError

__all__ = ["RunPlan", "Stage", "lr_at", "plan_stages", "progress", "time_fraction", "with_steps"]


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
    max_time = _seconds(cfg.max_time)
    if not cfg.stages:
        lr, warmup = _resolved(cfg.lr, "lr"), _resolved(cfg.warmup_steps, "warmup_steps")
        return [Stage(0, "all", tuple(names), cfg.steps, lr, warmup, max_time)]
    total = sum(s.steps or 0 for s in cfg.stages)  # validation filled in every stage's steps
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
        steps = _resolved(s.steps, f"stages[{i}].steps")  # validation shares training.steps among unset ones
        done += steps
        deadline = max_time * done / total if max_time is not None else None
        out.append(
            Stage(
                i,
                s.name or f"stage-{i + 1}",
                tasks,
                steps,
                s.lr if s.lr is not None else _resolved(cfg.lr, "lr"),
                s.warmup_steps if s.warmup_steps is not None else _resolved(cfg.warmup_steps, "warmup_steps"),
                deadline,
                s.reset_optimizer,
            )
        )
    return out


_T = TypeVar("_T")


def _resolved(value: _T | None, name: str) -> _T:
    """A training value the trainer derives when the spec leaves it unset (lr, warmup_steps, a
    stage's steps)."""
    if value is None:
        raise MMCoreError(
            f"training.{name} is not set: plan a run from a resolved config (mmcore.config.resolve_training "
            "fills in lr and warmup_steps, as the Trainer does)"
        )
    return value


def _seconds(max_time: float | str | None) -> float | None:
    """``training.max_time`` in seconds (validation turns '10m' into 600.0; a string left means none ran)."""
    if isinstance(max_time, str):
        raise MMCoreError(
            f"training.max_time {max_time!r} was not validated: build the TrainingConfig with model_validate"
        )
    return max_time


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
    With a time budget the warmup, too, is the larger of its step and time fractions: it ends
    after ``warmup_steps`` steps or once the stage has used ``warmup_steps / steps`` of its time,
    whichever comes first (a slow run that manages fewer steps than planned still reaches the
    peak rate, at the same point of its budget).
    """
    lr, warmup = stage.lr, stage.warmup_steps
    if warmup and local_step < warmup:
        done = (local_step + 1) / warmup
        if used_time is not None:
            done = max(done, used_time * stage.steps / warmup)
        if done < 1:
            return lr * done
    if cfg.schedule == "constant":
        return lr
    t = min(1.0, max(0.0, (local_step - warmup) / max(1, stage.steps - warmup)))
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


class RunPlan:
    """Where a run stands in its plan: the stage, where it began, the seconds used so far.

    The trainer asks it for the learning rate of the next step (:meth:`lr`), whether and why
    the current stage is over (:meth:`end_reason`), and keeps :meth:`state` in checkpoints.
    ``clock`` is a seconds clock (``time.monotonic``; tests pass a fake one); ``sync`` maps the
    elapsed seconds to the value every process agrees on (under torchrun: rank 0's).
    """

    def __init__(
        self,
        cfg: TrainingConfig,
        task_names: Sequence[str],
        clock: Callable[[], float],
        sync: Callable[[float], float] | None = None,
    ):
        self.cfg = cfg
        self.stages = plan_stages(cfg, task_names)
        self.clock, self.sync = clock, sync
        self.index = 0
        self.start: tuple[int, float] = (0, 0.0)  # (step, elapsed seconds) where the stage began
        self.elapsed = 0.0  # seconds of training so far, resumed runs included
        self._clock0 = (clock(), 0.0)

    @property
    def stage(self) -> Stage:
        return self.stages[self.index]

    @property
    def last(self) -> bool:
        return self.index == len(self.stages) - 1

    def start_clock(self) -> None:
        """Count seconds from now on top of those already used (call when training starts)."""
        self._clock0 = (self.clock(), self.elapsed)

    def tick(self) -> None:
        """Bring :attr:`elapsed` up to date."""
        start, before = self._clock0
        self.elapsed = before + (self.clock() - start)
        if self.sync is not None and self.cfg.max_time is not None:
            self.elapsed = self.sync(self.elapsed)

    def used_time(self) -> float | None:
        """The fraction of its time the current stage has used (None: no budget)."""
        return time_fraction(self.stage, self.elapsed, self.start[1])

    def lr(self, step: int) -> float:
        """The learning rate of global step ``step`` in the current stage."""
        return lr_at(self.cfg, self.stage, step - self.start[0], self.used_time())

    def end_reason(self, step: int) -> str | None:
        """``"steps"`` or ``"max_time"`` when the current stage is over at ``step``, else None."""
        if step - self.start[0] >= self.stage.steps:
            return "steps"
        used = self.used_time()
        return "max_time" if used is not None and used >= 1.0 else None

    def begin(self, index: int, step: int) -> Stage:
        """Enter stage ``index`` at ``step``; returns it."""
        self.index, self.start = index, (step, self.elapsed)
        return self.stage

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps (JSON)."""
        return {"stage": self.index, "stage_start": list(self.start), "elapsed": self.elapsed}

    def load_state(self, state: Mapping[str, Any], where: str) -> None:
        index = int(state.get("stage", 0))
        if index >= len(self.stages):
            raise MMCoreError(f"{where}: saved in stage {index + 1}, but training.stages has {len(self.stages)}")
        start = state.get("stage_start", [0, 0.0])
        self.index, self.start = index, (int(start[0]), float(start[1]))
        self.elapsed = float(state.get("elapsed", 0.0))
