"""A small trainer: AdamW, warmup and decay, accumulation, clipping, autocast, multi-task,
evaluation, exact resume, metrics, and the same code under ``torchrun``.

    trainer = mmcore.Trainer(model, tasks={"lm": {"objective": "lm", "train": "corpus.txt"}},
                             training={"steps": 500, "batch_size": 16}, out_dir="runs/lm")
    trainer.fit()

Design notes:

* **Exact normalisation.** Each micro-batch's head returns loss *terms* (sum, count). The
  trainer back-propagates the sums and, before the optimizer step, divides the gradients
  by the count summed over all micro-batches and processes. The update is then exactly
  that of one big batch, whatever the padding, the accumulation or the process count.
* **Stateless randomness per step.** Which task a step trains, and the masked-LM masks,
  come from generators seeded by (seed, step), and the data order from
  :class:`~mmcore.loader.IndexPlan`. Only the weights, the optimizer state, the torch RNG
  (dropout) and the number of batches each task consumed need saving; resuming from a
  checkpoint reproduces an uninterrupted run bit for bit on CPU.
* **Checkpoints are model directories** (``checkpoints/step-N/``, written by
  :func:`mmcore.save`) plus ``trainer_state.json`` and ``optimizer.safetensors``; the
  pointer ``checkpoints/latest`` is replaced atomically after a checkpoint is complete. Under
  FSDP2 every process writes its shards instead (:mod:`mmcore.sharded`).

This file holds the run: set-up, the training step, evaluation, the loop through the stages and
model selection. The rest of the class is in its parts, one concern per file, stacked below it
(:mod:`mmcore.trainer_base` lists them): where it runs (``trainer_dist``), the optimizer
(``trainer_optim``), the data (``trainer_data``), checkpoints and resume
(``trainer_checkpoints``), logging (``trainer_log``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import torch
import torch.distributed as dist
from torch import nn

from .config import TaskConfig, TrainingConfig, resolve_training
from .data import DataError, ManifestDataset  # noqa: F401  (DataError: re-exported)
from .errors import MMCoreError
from .interrupts import GracefulStop, TrainingInterrupted
from .io import atomic_write_text
from .objectives import Distillation
from .schedule import RunPlan
from .selection import Monitor
from .trainer_checkpoints import BEST, CHECKPOINTS, EMA_FILE, LATEST, OPTIM, STATE, _StateView  # noqa: F401  (re-exported)
from .trainer_dist import _device, _dist_info, _init_distributed
from .trainer_log import METRICS, TrainerLog, _read_history  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from .model import MultimodalGPT
    from .spec import Spec
    from .types import ModelOutput

__all__ = ["Trainer", "TrainResult", "TrainingInterrupted", "train"]
# Re-exported above, importable from here as before the split: DataError and the checkpoint
# layout's names (CHECKPOINTS, LATEST, STATE, OPTIM, EMA_FILE, BEST).


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns."""

    steps: int
    final_loss: float
    eval: dict[str, dict[str, float]] = field(default_factory=dict)
    bad_records: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    out_dir: str | None = None
    stop_reason: str = "steps"  # why the last stage ended: "steps", "max_time" or "early_stopping"
    best: dict[str, Any] | None = None  # the monitored metric's best value and step (Monitor.state())


class Trainer(TrainerLog):
    """Train a :class:`mmcore.MultimodalGPT` on one or more tasks.

    Args:
        model: the model (a plain nn.Module; it stays usable in your own loop).
        tasks: task name -> :class:`TaskConfig` (or a dict of its options).
        training: :class:`TrainingConfig` (or a dict).
        out_dir: where checkpoints, metrics, the plot and the final model go (None:
            nothing is written and there is no resume).
        resume: continue from ``out_dir/checkpoints/latest`` when it exists.
        clock: the seconds clock ``training.max_time`` is measured with (default
            ``time.monotonic``; tests pass a fake one).

    The run follows ``training.stages`` (see :mod:`mmcore.schedule`), keeps the best model by
    ``training.monitor`` in ``out_dir/best/`` and stops early after ``training.patience``
    evaluations without improvement (see :mod:`mmcore.selection`); with ``training.ema`` it
    evaluates and saves the moving average of the weights (see :mod:`mmcore.ema`).
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Mapping[str, TaskConfig | Mapping[str, Any]],
        training: TrainingConfig | Mapping[str, Any] | None = None,
        *,
        out_dir: str | Path | None = None,
        resume: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.cfg = training if isinstance(training, TrainingConfig) else TrainingConfig.model_validate(training or {})
        if not tasks:
            raise MMCoreError("nothing to train: give at least one task ([tasks.<name>] in the spec)")
        self.task_cfgs = {k: v if isinstance(v, TaskConfig) else TaskConfig.model_validate(v) for k, v in tasks.items()}
        self.device = _device(self.cfg.device)
        _init_distributed(self.device)
        self.rank, self.world, _ = _dist_info()
        if self.cfg.batch_size % self.world:
            raise MMCoreError(f"training.batch_size {self.cfg.batch_size} is not divisible by {self.world} processes")
        torch.manual_seed(self.cfg.seed)
        self.model = model.to(self.device)
        backbone = getattr(model, "backbone", None)
        self.cfg, chosen = resolve_training(self.cfg, getattr(getattr(backbone, "config", None), "width", None))
        if chosen and self.rank == 0:
            print(f"training: not set in the spec, chosen: {'; '.join(chosen)}", file=sys.stderr)
        self.out = Path(out_dir) if out_dir is not None else None
        self.resume = resume
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.running: dict[str, tuple[float, int]] = {}  # each task's running loss (trainer_log)
        self.tasks = {name: self._make_task(name, t) for name, t in self.task_cfgs.items()}
        self._check_inputs_seen()
        for task in self.tasks.values():
            if isinstance(task.objective, Distillation):  # load and check the teacher now, not mid-run
                task.objective.bind(self.model, self._load_teacher(task))
            targets = task.train.iter_targets() if isinstance(task.train, ManifestDataset) else iter(())
            task.objective.setup(self.model, targets)  # learn from the training set (before a resume loads state)
        self.plan = RunPlan(self.cfg, list(self.tasks), clock, self._rank0_value if self.world > 1 else None)
        self.monitor = Monitor.from_config(self.cfg, [n for n, t in self.tasks.items() if t.eval is not None])
        self.wrapped = self._wrap(self.model)
        self.optimizer = self._make_optimizer()
        self.ema = None
        if self.cfg.ema is not None:
            if self.world > 1 and self.cfg.distributed == "fsdp":
                raise MMCoreError("training.ema does not work with distributed = 'fsdp' yet; use 'ddp' or drop ema")
            from .ema import EMA

            self.ema = EMA(self.model, self.cfg.ema)
        self.scaler = torch.amp.GradScaler(enabled=self.cfg.precision == "fp16" and self.device.type == "cuda")

    # --- set-up ------------------------------------------------------------------------

    # --- data ----------------------------------------------------------------------------

    # --- one step ------------------------------------------------------------------------

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over ``grad_accum`` micro-batches of one task."""
        step = self.step
        task = self._pick_task(step)
        self.wrapped.train()
        lr = self.plan.lr(step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        total_loss = torch.zeros((), device=self.device, dtype=torch.float64)
        total_count = torch.zeros((), device=self.device, dtype=torch.float64)
        positions = torch.zeros((), device=self.device, dtype=torch.int64)
        for micro in range(self.cfg.grad_accum):
            batch = self._next_batch(task).to(self.device)
            gen = torch.Generator().manual_seed((self.cfg.seed * 1_000_003 + step) * 131 + micro * 7 + self.rank)
            batch = task.objective.prepare(batch, gen)
            sync = micro == self.cfg.grad_accum - 1 or self.world == 1
            ctx = self.wrapped.no_sync() if (not sync and hasattr(self.wrapped, "no_sync")) else nullcontext()
            with ctx:
                with self._autocast():
                    total, count, out = task.objective.terms(self.wrapped, batch)
                positions += _positions(out)
                self.scaler.scale(total.float() * task.config.loss_weight).backward()
            total_loss += total.detach().double()
            total_count += count.detach().double()
        if self.world > 1:
            stats = torch.stack([total_loss, total_count])
            dist.all_reduce(stats)
            total_loss, total_count = stats[0], stats[1]
        # Gradients hold sum-of-losses; DDP averaged them over processes. Scale to the mean
        # over every counted item of the step (see the module docstring).
        scale = float(self.world) / max(float(total_count), 1e-12)
        self.scaler.unscale_(self.optimizer)
        extra = [p for p in self._objective_params() if p.grad is not None]
        if self.world > 1:  # not inside DDP: average their gradients as DDP does the model's
            for p in extra:
                dist.all_reduce(p.grad)
                p.grad.div_(self.world)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None] + [p.grad for p in extra]
        if grads:
            torch._foreach_mul_(grads, scale)
        norm = None
        if self.cfg.clip_grad is not None:
            params = [*self.model.parameters(), *self._objective_params()]
            norm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.clip_grad))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update()
        self.step += 1
        loss = float(total_loss / total_count.clamp(min=1e-12)) / 1.0
        return {
            "step": self.step,
            "task": task.name,
            "loss": loss,
            "lr": lr,
            "grad_norm": norm,
            "positions": int(positions) * self.world,  # fused sequence positions (trainer_log.POSITIONS)
        }

    # --- evaluation ------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, max_batches: int | None = None) -> dict[str, dict[str, float]]:
        """Loss (and perplexity or accuracy/macro-F1) of every task on its eval set; with
        ``training.ema``, of the averaged weights."""
        from .evaluate import evaluate_task

        self.model.eval()
        out = {}
        with self._averaged():
            for name, task in self.tasks.items():
                if task.eval is None:
                    continue
                out[name] = evaluate_task(
                    self.model,
                    task.objective,
                    task.eval,
                    self.model.processors,
                    batch_size=self.cfg.batch_size,
                    max_batches=max_batches,
                    device=self.device,
                    autocast=self._autocast,
                    # DDP: each process scores its share and the metric states are summed; FSDP's
                    # sharded forward needs every process to run the same batches, so each runs all
                    **({"rank": self.rank, "world": self.world} if not self._sharded() else {}),
                )
        return out

    # --- the loop ------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Train through the stages (resuming if a checkpoint exists); returns the result.

        Each stage ends after its steps, when its share of ``training.max_time`` is used up,
        or by early stopping; the run ends with the last stage, then evaluates and saves."""
        t0 = time.perf_counter()
        if self.resume and (ck := self._checkpoint_dir()) is not None:
            self.load_checkpoint(ck)
            if self.rank == 0:
                print(f"resuming from {ck} at step {self.step}", file=sys.stderr)
        if self.rank == 0 and getattr(self.model, "spec", None) is not None and hasattr(self.model, "summary"):
            print(self.model.summary(), file=sys.stderr)  # what trains, per component
            if getattr(self.model, "load_report", None) is not None and self.model.load_report.sources:
                print(self.model.load_report, file=sys.stderr)  # where the initial weights came from
        metrics_path = self._open_log()
        try:
            with GracefulStop(lambda: self.step, announce=self.rank == 0) as stop:
                return self._fit(t0, metrics_path, stop)
        finally:
            self._close_log()

    def _fit(self, t0: float, metrics_path: Path | None, stop: GracefulStop) -> TrainResult:
        self.plan.start_clock()
        last: dict[str, Any] = {"loss": float("nan")}
        eval_metrics: dict[str, dict[str, float]] = {}
        evaluated = -1  # the step of the last evaluation in this call
        if self.cfg.stages and self.step == 0:
            self._begin_stage(0)
        reason = "steps"
        while True:
            self.plan.tick()
            end = self._stage_end()
            if end is not None:
                reason = end
                if self.plan.last:
                    break
                self._begin_stage(self.plan.index + 1)
                continue
            last = self.train_step()
            self._after_step(last, metrics_path)
            # Every process stops after the same step: a signal any of them got counts for all.
            signum = self._agree_stop(stop.signum)
            if self.cfg.eval_every and self.step % self.cfg.eval_every == 0 and not self._finished():
                eval_metrics, evaluated = self.evaluate(self.cfg.eval_batches), self.step
                self._log({"step": self.step, "eval": eval_metrics}, metrics_path)
                self._select(eval_metrics)
            if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
                self.save_checkpoint()
            if signum:
                self._interrupted(signum)
        if signum := self._agree_stop(stop.signum):  # a signal after the last step: save, skip the rest
            self._interrupted(signum)
        self._close_bar()
        if reason == "max_time" and self.rank == 0:
            print(f"training.max_time ({self.cfg.max_time:g} s) used up at step {self.step}", file=sys.stderr)
        if evaluated != self.step:  # not just evaluated (early stopping follows an evaluation)
            eval_metrics = self.evaluate(self.cfg.eval_batches)
            if eval_metrics:
                self._log({"step": self.step, "eval": eval_metrics}, metrics_path)
                self._select(eval_metrics)
        if getattr(self, "_last_checkpoint", None) != self.step:  # not the one just written (or resumed from)
            self.save_checkpoint()
        if self.out is not None and self.rank == 0:
            from .checkpoint import save

            with self._averaged():
                save(_StateView(self.model, self._model_state()), self.out)
            atomic_write_text(self.out / "eval.json", json.dumps(eval_metrics, indent=2) + "\n")
            self._plot()
        elif self.out is not None:
            with self._averaged():
                self._model_state()  # FSDP gathers are collective: every rank takes part
        return TrainResult(
            steps=self.step,
            final_loss=float(last["loss"]),
            eval=eval_metrics,
            bad_records={n: t.bad for n, t in self.tasks.items()},
            seconds=time.perf_counter() - t0,
            out_dir=str(self.out) if self.out is not None else None,
            stop_reason=reason,
            best=self.monitor.state() if self.monitor is not None else None,
        )

    # --- stages, time and model selection -------------------------------------------------------

    def _stage_end(self) -> str | None:
        """Why the current stage is over (``steps``, ``max_time``, ``early_stopping``), or None."""
        end = self.plan.end_reason(self.step)
        if end is None and self.monitor is not None and self.monitor.exhausted:
            return "early_stopping"
        return end

    def _finished(self) -> bool:
        """True when the run ends before another step (the final evaluation follows)."""
        self.plan.tick()
        return self.plan.last and self._stage_end() is not None

    def _begin_stage(self, index: int) -> None:
        """Start stage ``index``: its schedule from its warmup, early stopping's count from 0."""
        st = self.plan.begin(index, self.step)
        if self.monitor is not None:
            self.monitor.bad = 0
        if st.reset_optimizer:
            self.optimizer.state.clear()  # AdamW starts its moments and step count afresh
        self._say(
            f"stage {index + 1}/{len(self.plan.stages)} {st.name!r}: {st.steps} steps of {', '.join(st.tasks)} "
            f"at lr {st.lr:g} (warmup {st.warmup_steps})"
        )

    def _interrupted(self, signum: int) -> NoReturn:
        """Stop on a signal after the current step: write its checkpoint (unless just written),
        say how to resume, raise :class:`TrainingInterrupted` (exit status 128 + signal)."""
        self._close_bar()
        if getattr(self, "_last_checkpoint", None) != self.step:
            self.save_checkpoint()
        if self.out is None:
            msg = f"interrupted at step {self.step}; nothing saved (no out_dir)"
            where = None
        else:
            where = str(self.out / CHECKPOINTS / f"step-{self.step:08d}")
            msg = f"interrupted at step {self.step}; checkpoint saved to {where}; run the same command to resume"
            if self.rank == 0:
                self._plot()
        self._say(msg)
        raise TrainingInterrupted(signum, self.step, where, msg)

    def _plot(self) -> None:
        """``loss.png`` from the history (rank 0), or a line saying why there is none."""
        from .plot import plot_history

        if plot_history(self.history, self.out / "loss.png") is None:
            self._say('loss.png not written: matplotlib is not installed (pip install "mmcore[plot]")')

    def _select(self, metrics: dict[str, dict[str, float]]) -> None:
        """Feed an evaluation to the monitor; write ``best/`` when it improved (with periodic evaluations)."""
        if self.monitor is None or not metrics:
            return
        m = self.monitor
        improved = m.update(metrics, self.step)
        note = "new best" if improved else f"no improvement ({m.bad} of patience {m.patience or 'off'})"
        self._say(f"step {self.step:>6}  {m.name} {m.value(metrics):.4g}: {note}")
        if improved and self.cfg.eval_every and self.out is not None:
            self._save_best(metrics)


def _positions(out: ModelOutput) -> torch.Tensor:
    """The real positions of the fused sequence the backbone ran (``trainer_log.POSITIONS``): an
    objective's ``terms`` returns the :class:`ModelOutput` (its contract), whose sequence mask
    marks them."""
    return out.sequence.mask.sum()


def train(
    spec: Spec | str | Path, *, out_dir: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> tuple[MultimodalGPT, TrainResult]:
    """Build the model a spec describes and train it on the spec's tasks."""
    from .builder import build
    from .spec import Spec, load_spec

    s = spec if isinstance(spec, Spec) else load_spec(spec)
    torch.manual_seed(s.training.seed)
    model = build(s)
    training = s.training.model_copy(update=dict(overrides or {})) if overrides else s.training
    trainer = Trainer(model, s.tasks, training, out_dir=out_dir)
    return model, trainer.fit()
