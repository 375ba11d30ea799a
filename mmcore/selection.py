"""Model selection during training: the best evaluation so far, and early stopping.

``training.monitor = "<task>.<metric>"`` (default: the loss of the first task with an eval
set) names the metric; ``training.monitor_mode`` says whether lower or higher is better
(``auto``: lower for loss and perplexity, higher for everything else). After every
evaluation, :meth:`Monitor.update` says whether the metric improved on the best so far by
more than ``training.min_delta``; ``training.patience`` evaluations in a row without
improvement end the stage (the run, without stages). The trainer writes the improving
model to ``<out>/best/`` and keeps :meth:`Monitor.state` in its checkpoints, so a resumed
run picks the same best model and stops at the same evaluation as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import TrainingConfig
from .errors import MMCoreError

__all__ = ["LOWER_IS_BETTER", "Monitor"]

#: Metrics for which ``monitor_mode = "auto"`` means lower is better.
LOWER_IS_BETTER = frozenset({"loss", "perplexity"})


@dataclass
class Monitor:
    """The monitored metric and its state: the best value, where it was reached, and how many
    evaluations in a row have not improved on it."""

    task: str
    metric: str
    mode: str  # "min" or "max"
    patience: int = 0
    min_delta: float = 0.0
    best: float | None = None
    best_step: int | None = None
    bad: int = 0

    @classmethod
    def from_config(cls, cfg: TrainingConfig, evaluated: Sequence[str]) -> "Monitor | None":
        """The monitor of a run whose tasks with an eval set are ``evaluated`` (in [tasks] order).

        None when nothing is evaluated and no monitor or patience was asked for. Raises
        :class:`MMCoreError` when the monitored task has no eval set.
        """
        if cfg.monitor is None:
            if not evaluated:
                if cfg.patience:
                    raise MMCoreError(
                        "training.patience: early stopping needs an evaluation; give a task an eval set "
                        "([tasks.<name>] eval = ...)"
                    )
                return None
            task, metric = evaluated[0], "loss"
        else:
            task, metric = cfg.monitor.rsplit(".", 1)
            if task not in evaluated:
                raise MMCoreError(
                    f"training.monitor = {cfg.monitor!r}: task {task!r} has no eval set, so nothing measures it; "
                    f"tasks with an eval set: {', '.join(evaluated) or '(none)'}"
                )
        mode = cfg.monitor_mode if cfg.monitor_mode != "auto" else ("min" if metric in LOWER_IS_BETTER else "max")
        return cls(task, metric, mode, cfg.patience, cfg.min_delta)

    @property
    def name(self) -> str:
        return f"{self.task}.{self.metric}"

    def value(self, metrics: Mapping[str, Mapping[str, float]]) -> float:
        """The monitored value in an evaluation's metrics (task -> metric -> value)."""
        got = metrics.get(self.task, {})
        if self.metric not in got:
            raise MMCoreError(
                f"training.monitor = {self.name!r}: the evaluation of task {self.task!r} has no metric "
                f"{self.metric!r}; it has: {', '.join(got) or '(none)'}"
            )
        return float(got[self.metric])

    def update(self, metrics: Mapping[str, Mapping[str, float]], step: int) -> bool:
        """Take one evaluation into account; True when it is the best so far (a NaN never is)."""
        v = self.value(metrics)
        if math.isnan(v):
            better = False
        elif self.best is None:
            better = True
        elif self.mode == "min":
            better = v < self.best - self.min_delta
        else:
            better = v > self.best + self.min_delta
        if better:
            self.best, self.best_step, self.bad = v, step, 0
        else:
            self.bad += 1
        return better

    @property
    def exhausted(self) -> bool:
        """True when early stopping is on and ``patience`` evaluations in a row did not improve."""
        return bool(self.patience) and self.bad >= self.patience

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps (JSON)."""
        return {
            "monitor": self.name,
            "mode": self.mode,
            "best": self.best,
            "best_step": self.best_step,
            "bad": self.bad,
        }

    def load_state(self, state: Mapping[str, Any], where: str) -> None:
        """Adopt a checkpoint's state; refuses one kept for another metric or mode."""
        if state.get("monitor") != self.name or state.get("mode") != self.mode:
            raise MMCoreError(
                f"{where}: the checkpoint monitored {state.get('monitor')!r} ({state.get('mode')}), this run "
                f"monitors {self.name!r} ({self.mode}); resume with the same training.monitor or start afresh"
            )
        best = state.get("best")
        self.best = float(best) if best is not None else None
        self.best_step = state.get("best_step")
        self.bad = int(state.get("bad", 0))
