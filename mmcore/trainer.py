# Over 500 lines on purpose, for now: the trainer's task path and the objectives are being
# reworked (issue 17: objectives as components). Splitting it (the run loop, checkpoints and
# resume, the torchrun/FSDP set-up) waits for that work to land, so the two do not clash.
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
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from .config import TaskConfig, TrainingConfig, resolve_training
from .data import DataError, ManifestDataset  # noqa: F401  (DataError: re-exported)
from .errors import MMCoreError, ModelDirError
from .io import atomic_write_text, read_safetensors, write_safetensors
from .objectives import Distillation
from .schedule import RunPlan
from .selection import Monitor
from .trainer_data import TrainerData
from .trainer_dist import _device, _dist_info, _init_distributed
from .trainer_optim import _flatten_optimizer, _unflatten_optimizer

if TYPE_CHECKING:
    from .model import MultimodalGPT
    from .spec import Spec

__all__ = ["Trainer", "TrainResult", "train"]
# Re-exported above, importable from here as before the split: DataError.

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE = "trainer_state.json"
OPTIM = "optimizer.safetensors"
EMA_FILE = "ema.safetensors"
BEST = "best"
METRICS = "metrics.jsonl"


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


class Trainer(TrainerData):
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
        self.tasks = {name: self._make_task(name, t) for name, t in self.task_cfgs.items()}
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
        tokens = 0
        for micro in range(self.cfg.grad_accum):
            batch = self._next_batch(task).to(self.device)
            gen = torch.Generator().manual_seed((self.cfg.seed * 1_000_003 + step) * 131 + micro * 7 + self.rank)
            batch = task.objective.prepare(batch, gen)
            tokens += sum(int(v["mask"].sum()) for v in batch.inputs.values() if "mask" in v) or batch.size
            sync = micro == self.cfg.grad_accum - 1 or self.world == 1
            ctx = self.wrapped.no_sync() if (not sync and hasattr(self.wrapped, "no_sync")) else nullcontext()
            with ctx:
                with self._autocast():
                    total, count, _ = task.objective.terms(self.wrapped, batch)
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
            "tokens": tokens * self.world,
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

    # --- checkpoints -----------------------------------------------------------------------

    def _checkpoint_dir(self) -> Path | None:
        if self.out is None:
            return None
        latest = self.out / CHECKPOINTS / LATEST
        if not latest.is_file():
            return None
        d = self.out / CHECKPOINTS / latest.read_text().strip()
        return d if (d / STATE).is_file() else None

    def save_checkpoint(self) -> Path | None:
        """Write a resumable checkpoint (rank 0); returns its folder."""
        if self.out is None:
            return None
        if self._sharded():
            return self._save_sharded_checkpoint()
        state = self._model_state()
        if self.rank != 0:
            self._last_checkpoint = self.step  # every rank decides alike whether to write the final one
            return None
        root = self.out / CHECKPOINTS
        root.mkdir(parents=True, exist_ok=True)
        name = f"step-{self.step:08d}"
        existed = (root / name).exists()
        try:
            d = self._write_checkpoint(root, name, state)
        except (OSError, ModelDirError) as exc:  # a full disk, say: the previous checkpoint stays the latest
            if not existed:
                shutil.rmtree(root / name, ignore_errors=True)
            cause = exc.__cause__ if isinstance(exc, ModelDirError) and exc.__cause__ is not None else exc
            raise MMCoreError(f"{root / name}: cannot write the checkpoint: {cause}") from exc
        self._last_checkpoint = self.step
        self._prune_checkpoints(root)
        return d

    def _prune_checkpoints(self, root: Path) -> None:
        keep = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
        for old in keep[: -self.cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    def _save_sharded_checkpoint(self) -> Path:
        from .sharded import remove_stale, save_sharded

        root = self.out / CHECKPOINTS
        name = f"step-{self.step:08d}"
        d = root / name
        if self.rank == 0:
            remove_stale(d)  # shards a killed run left for this step
        dist.barrier()
        save_sharded(d, self.model, self.optimizer, self.rank, self._objective_state())
        self._last_checkpoint = self.step
        if self.rank == 0:
            atomic_write_text(d / STATE, json.dumps(self._trainer_state(format="sharded"), indent=2))
            atomic_write_text(root / LATEST, name + "\n")
            self._prune_checkpoints(root)
        return d

    def _objective_state(self) -> dict[str, torch.Tensor]:
        """An objective's own weights (a distillation's projection), by ``objective.<task>.<name>``."""
        return {
            f"objective.{n}.{k}": v.detach().cpu()
            for n, t in self.tasks.items()
            for k, v in t.objective.state_dict().items()
        }

    def _trainer_state(self, **extra: Any) -> dict[str, Any]:
        return {
            "step": self.step,
            "tasks": {n: {"consumed": t.consumed, "bad": t.bad} for n, t in self.tasks.items()},
            "world": self.world,
            **self._plan_state(),
            **extra,
        }

    def _write_checkpoint(self, root: Path, name: str, state: dict[str, torch.Tensor]) -> Path:
        from .checkpoint import save

        d = save(_StateView(self.model, state), root / name)
        tensors, meta = _flatten_optimizer(self.optimizer.state_dict())
        tensors["rng.torch"] = torch.get_rng_state()
        tensors.update(self._objective_state())
        if torch.cuda.is_available():
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        write_safetensors(d / OPTIM, tensors)
        if self.ema is not None:
            write_safetensors(d / EMA_FILE, self.ema.state_dict())
        atomic_write_text(d / STATE, json.dumps(self._trainer_state(optimizer=meta), indent=2))
        atomic_write_text(root / LATEST, name + "\n")
        return d

    def _plan_state(self) -> dict[str, Any]:
        """The trainer state of the plan (stage, time used), model selection and weight average."""
        out: dict[str, Any] = self.plan.state()
        if self.monitor is not None:
            out["monitor"] = self.monitor.state()
        if self.ema is not None:
            out["ema_updates"] = self.ema.updates
        return out

    def _load_plan_state(self, state: dict[str, Any], d: Path) -> None:
        self.plan.load_state(state, str(d))
        if self.monitor is not None and "monitor" in state:
            self.monitor.load_state(state["monitor"], str(d))
        if self.ema is not None:
            if not (d / EMA_FILE).is_file():
                raise MMCoreError(f"{d}: training.ema is set but the checkpoint has no {EMA_FILE} (saved without ema)")
            self.ema.load_state_dict(read_safetensors(d / EMA_FILE)[0], state.get("ema_updates", self.step), str(d))

    def load_checkpoint(self, d: Path) -> None:
        from .checkpoint import load
        from .sharded import is_sharded, load_sharded

        state = json.loads((d / STATE).read_text())
        if state.get("world", 1) != self.world:
            raise MMCoreError(f"{d}: saved by {state.get('world')} processes, resuming with {self.world}")
        if is_sharded(d) != self._sharded():
            kind = "sharded (FSDP)" if is_sharded(d) else "unsharded"
            raise MMCoreError(f"{d}: a {kind} checkpoint; resume with the training.distributed it was written with")
        if is_sharded(d):
            tensors = load_sharded(d, self.model, self.optimizer, self.rank, self._objective_state())
        else:
            saved = load(d)
            self.model.load_state_dict(saved.state_dict())
            tensors, _ = read_safetensors(d / OPTIM)
            torch.set_rng_state(tensors.pop("rng.torch"))
            cuda_rng = tensors.pop("rng.cuda", None)
            if cuda_rng is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state(cuda_rng)
        for n, t in self.tasks.items():
            prefix = f"objective.{n}."
            own = {k[len(prefix) :]: tensors.pop(k) for k in list(tensors) if k.startswith(prefix)}
            t.objective.load_state_dict(own)
        if not is_sharded(d):
            self.optimizer.load_state_dict(_unflatten_optimizer(tensors, state["optimizer"]))
        self.step = int(state["step"])
        self._last_checkpoint = self.step
        self._load_plan_state(state, d)
        for n, t in state["tasks"].items():
            if n in self.tasks:
                self.tasks[n].consumed, self.tasks[n].bad = int(t["consumed"]), int(t["bad"])
                self.tasks[n].it = None

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
        metrics_path = self.out / METRICS if self.out is not None else None
        if self.rank == 0 and getattr(self.model, "spec", None) is not None and hasattr(self.model, "summary"):
            print(self.model.summary(), file=sys.stderr)  # what trains, per component
            if getattr(self.model, "load_report", None) is not None and self.model.load_report.sources:
                print(self.model.load_report, file=sys.stderr)  # where the initial weights came from
        if metrics_path is not None and self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            self.history = _read_history(metrics_path, self.step)
            atomic_write_text(metrics_path, "".join(json.dumps(h) + "\n" for h in self.history))
        bar = self._progress()
        self._fit_start = (time.perf_counter(), self.step)
        self.plan.start_clock()
        last: dict[str, Any] = {"loss": float("nan")}
        window_tokens, window_t = 0, time.perf_counter()
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
            window_tokens += last["tokens"]
            if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                dt = time.perf_counter() - window_t
                last["tokens_per_s"] = window_tokens / max(dt, 1e-9)
                window_tokens, window_t = 0, time.perf_counter()
                self._log(last, metrics_path)
            if bar is not None:
                bar.update(1)
                post = {"loss": f"{last['loss']:.4f}", "task": last["task"]}
                if "tokens_per_s" in last:
                    post["tok/s"] = f"{last['tokens_per_s']:,.0f}"
                bar.set_postfix(post)
            if self.cfg.eval_every and self.step % self.cfg.eval_every == 0 and not self._finished():
                eval_metrics, evaluated = self.evaluate(self.cfg.eval_batches), self.step
                self._log({"step": self.step, "eval": eval_metrics}, metrics_path)
                self._select(eval_metrics)
            if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
                self.save_checkpoint()
        if bar is not None:
            bar.close()
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
            from .plot import plot_history

            with self._averaged():
                save(_StateView(self.model, self._model_state()), self.out)
            atomic_write_text(self.out / "eval.json", json.dumps(eval_metrics, indent=2) + "\n")
            plot_history(self.history, self.out / "loss.png")
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
        if self.rank == 0:
            print(
                f"stage {index + 1}/{len(self.plan.stages)} {st.name!r}: {st.steps} steps of {', '.join(st.tasks)} "
                f"at lr {st.lr:g} (warmup {st.warmup_steps})",
                file=sys.stderr,
            )

    def _select(self, metrics: dict[str, dict[str, float]]) -> None:
        """Feed an evaluation to the monitor; write ``best/`` when it improved (with periodic evaluations)."""
        if self.monitor is None or not metrics:
            return
        m = self.monitor
        improved = m.update(metrics, self.step)
        if self.rank == 0:
            note = "new best" if improved else f"no improvement ({m.bad} of patience {m.patience or 'off'})"
            print(f"step {self.step:>6}  {m.name} {m.value(metrics):.4g}: {note}", file=sys.stderr)
        if improved and self.cfg.eval_every and self.out is not None:
            self._save_best(metrics)

    def _save_best(self, metrics: dict[str, dict[str, float]]) -> None:
        """Write the evaluated model (the weight averages with ``training.ema``) to ``<out>/best/``."""
        from .checkpoint import save

        with self._averaged():
            state = self._model_state()  # FSDP gathers are collective: every rank takes part
            if self.rank == 0:
                save(_StateView(self.model, state), self.out / BEST)
        if self.rank == 0:
            info = {"step": self.step, **(self.monitor.state() if self.monitor else {}), "eval": metrics}
            atomic_write_text(self.out / BEST / "eval.json", json.dumps(info, indent=2) + "\n")

    def _progress(self) -> Any:
        if not self.cfg.progress or self.rank != 0 or not sys.stderr.isatty():
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        return tqdm(total=self.cfg.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)

    def _tensorboard(self, entry: dict[str, Any]) -> None:
        """Also write scalars for TensorBoard when it is installed and there is an out_dir."""
        if self.out is None:
            return
        writer: Any = getattr(self, "_tb", None)
        if writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                self._tb = False
                return
            writer = self._tb = SummaryWriter(str(self.out / "tensorboard"))  # type: ignore[assignment]
        if writer is False:
            return
        step = entry["step"]
        if "eval" in entry:
            for task, metrics in entry["eval"].items():
                for k, v in metrics.items():
                    writer.add_scalar(f"eval/{task}/{k}", v, step)
        else:
            writer.add_scalar(f"train/{entry['task']}/loss", entry["loss"], step)
            writer.add_scalar("train/lr", entry["lr"], step)
            if "tokens_per_s" in entry:
                writer.add_scalar("train/tokens_per_s", entry["tokens_per_s"], step)
        writer.flush()

    def _log(self, entry: dict[str, Any], path: Path | None) -> None:
        if self.rank != 0:
            return
        entry = {k: v for k, v in entry.items() if v is not None}
        self.history.append(entry)
        if path is not None:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
        if "eval" in entry:
            parts = [f"{t}: " + ", ".join(f"{k} {v:.4g}" for k, v in m.items()) for t, m in entry["eval"].items()]
            print(f"step {entry['step']:>6}  eval  " + " | ".join(parts), file=sys.stderr)
        self._tensorboard(entry)
        if "eval" not in entry and not (self.cfg.progress and sys.stderr.isatty()):
            start, start_step = getattr(self, "_fit_start", (time.perf_counter(), 0))
            done = entry["step"] - start_step
            eta = ""
            if done > 0:
                left = (time.perf_counter() - start) / done * (self.cfg.steps - entry["step"])
                eta = f"  ETA {int(left) // 60}:{int(left) % 60:02d}"
            print(
                f"step {entry['step']:>6}/{self.cfg.steps}  {entry['task']}  loss {entry['loss']:.4f}  "
                f"lr {entry['lr']:.2e}  {entry.get('tokens_per_s', 0):,.0f} tok/s{eta}",
                file=sys.stderr,
            )


class _StateView:
    """Lets :func:`mmcore.save` write a given state dict (gathered FSDP weights) of a model."""

    def __init__(self, model: nn.Module, state: dict[str, torch.Tensor]):
        self.model, self._state = model, state
        self.spec = model.spec
        self.processors = model.processors

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state


def _read_history(path: Path, upto: int) -> list[dict[str, Any]]:
    """Metrics already logged up to step ``upto`` (entries after a crash point are dropped)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and int(entry.get("step", 0)) <= upto:
            out.append(entry)
    return out


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
