"""The trainer's logging: ``metrics.jsonl`` (kept up to the resumed step), a live progress bar on a
terminal or a plain line per logged step elsewhere, and TensorBoard scalars
(``training.log_to``).

What a logged step says, on the bar, in the lines, in ``metrics.jsonl`` and in TensorBoard alike:

* **running loss per task**: a moving average of the task's step losses (decay
  :data:`RUNNING_DECAY`, bias-corrected like Adam's moments, so the first value is the first
  loss), updated at every step that trains the task and kept in the checkpoints;
* **lr**: the step's learning rate;
* **positions/s** (:data:`POSITIONS`): the real (non-padding) positions of the fused sequences
  the backbone ran, every input's tokens counted after its encoder (text tokens, image patches,
  audio frames) plus boundary tokens, all processes together, per second of the window since the
  previous logged step. One measure for every task, whatever its inputs.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from .errors import MMCoreError
from .trainer_checkpoints import TrainerCheckpoints

METRICS = "metrics.jsonl"
RUNNING_DECAY = 0.9
POSITIONS = (
    "positions/s: real positions of the fused sequences per second, all processes together;\n"
    "a position is a text token, an image patch, an audio frame or a boundary token"
)


def running_update(state: tuple[float, int] | None, loss: float, decay: float = RUNNING_DECAY) -> tuple[float, int]:
    """One step of the running loss: (the raw moving average, the number of losses in it)."""
    avg, n = state if state is not None else (0.0, 0)
    return decay * avg + (1 - decay) * loss, n + 1


def running_value(state: tuple[float, int], decay: float = RUNNING_DECAY) -> float:
    """The bias-corrected running loss of a :func:`running_update` state."""
    avg, n = state
    return avg / (1 - decay**n)


class TrainerLog(TrainerCheckpoints):
    """The metrics and progress of :class:`mmcore.Trainer` (a part of it)."""

    # --- opening and closing ----------------------------------------------------------------

    def _open_log(self) -> Path | None:
        """Start logging for :meth:`fit` (after a resume): the metrics file kept up to the current
        step, the bar or the lines, TensorBoard. Returns the metrics file (None: not written)."""
        from .io import atomic_write_text

        self._tb: Any = None
        self._bar: Any = None
        wants_tb = "tensorboard" in self.cfg.log_to
        if wants_tb:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise MMCoreError(
                    "training.log_to names 'tensorboard', but the tensorboard package is not installed: "
                    'pip install "mmcore[tensorboard]" (or drop "tensorboard" from training.log_to)'
                ) from exc
        path = self.out / METRICS if self.out is not None and "jsonl" in self.cfg.log_to else None
        self._window = (0, time.perf_counter())
        self._fit_start = (time.perf_counter(), self.step)
        if self.rank != 0:
            return path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.history = _read_history(path, self.step)
            atomic_write_text(path, "".join(json.dumps(h) + "\n" for h in self.history))
        if wants_tb and self.out is not None:
            self._tb = SummaryWriter(str(self.out / "tensorboard"))
        self._bar = self._progress()
        legend = POSITIONS.replace("\n", "\n  ")
        self._say(f"logging every {self.cfg.log_every} steps: running loss per task, lr, positions/s\n  {legend}")
        return path

    def _close_bar(self) -> None:
        if getattr(self, "_bar", None) is not None:
            self._bar.close()
            self._bar = None

    def _close_log(self) -> None:
        self._close_bar()
        if getattr(self, "_tb", None) is not None:
            self._tb.close()
            self._tb = None

    def _progress(self) -> Any:
        """A tqdm bar on stderr when it is a terminal and ``training.progress`` is on, else None."""
        if not self.cfg.progress or self.rank != 0 or not sys.stderr.isatty():
            return None
        from tqdm import tqdm

        class Bar(tqdm):  # the summary after the times, without tqdm's ", " before it
            summary = ""

            @property
            def format_dict(self) -> dict[str, Any]:
                return {**super().format_dict, "summary": self.summary}

        return Bar(
            total=self.cfg.steps,
            initial=self.step,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
            bar_format="{desc} {n_fmt}/{total_fmt} |{bar}| [{elapsed}<{remaining}] {summary}",
        )

    def _say(self, message: str) -> None:
        """Print a line on stderr (rank 0), above the progress bar when there is one."""
        if self.rank != 0:
            return
        bar = getattr(self, "_bar", None)
        if bar is not None:
            bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr)

    # --- every step ---------------------------------------------------------------------------

    def _after_step(self, entry: dict[str, Any], metrics_path: Path | None) -> None:
        """Account a finished step: its task's running loss, the window's positions, the bar,
        and the log (every ``log_every`` steps and at the last step)."""
        self.running[entry["task"]] = running_update(self.running.get(entry["task"]), entry["loss"])
        count, t0 = self._window
        count += entry.get("positions", 0)
        logged = self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps
        if logged:
            entry["positions_per_s"] = count / max(time.perf_counter() - t0, 1e-9)
            entry["running"] = {t: round(running_value(s), 6) for t, s in self._running_in_order()}
            self._window = (0, time.perf_counter())
            self._log(entry, metrics_path)
        else:
            self._window = (count, t0)
        bar = getattr(self, "_bar", None)
        if bar is not None:
            if logged or self.step == self._fit_start[1] + 1:
                bar.summary = self._summary(entry, bar=True)
            bar.update(1)

    def _summary(self, entry: dict[str, Any], bar: bool = False) -> str:
        """``loss lm 2.3100 cls 0.6931  lr 1.00e-03  12,345 positions/s`` (running losses); on the
        bar, whose line a narrow terminal cuts, ``loss lm 2.310 cls 0.693  lr 1.0e-03  12,345 pos/s``."""
        digits = 3 if bar else 4
        losses = " ".join(f"{t} {running_value(s):.{digits}f}" for t, s in self._running_in_order())
        unit = "pos/s" if bar else "positions/s"
        rate = f"  {entry['positions_per_s']:,.0f} {unit}" if "positions_per_s" in entry else ""
        return f"loss {losses}  lr {entry['lr']:.{digits - 2}e}{rate}"

    def _running_in_order(self) -> list[tuple[str, tuple[float, int]]]:
        """The running losses of the tasks that have trained, in the spec's order of tasks."""
        return [(t, self.running[t]) for t in self.tasks if t in self.running]

    # --- the log ------------------------------------------------------------------------------

    def _log(self, entry: dict[str, Any], path: Path | None) -> None:
        """Record a logged step or an evaluation: history, ``metrics.jsonl``, TensorBoard, stderr."""
        if self.rank != 0:
            return
        entry = {k: v for k, v in entry.items() if v is not None}
        self.history.append(entry)
        if path is not None:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
        self._tensorboard(entry)
        if "eval" in entry:
            parts = [f"{t}: " + ", ".join(f"{k} {v:.4g}" for k, v in m.items()) for t, m in entry["eval"].items()]
            self._say(f"step {entry['step']:>6}  eval  " + " | ".join(parts))
        elif getattr(self, "_bar", None) is None:
            start, start_step = getattr(self, "_fit_start", (time.perf_counter(), 0))
            done = entry["step"] - start_step
            eta = ""
            if done > 0:
                left = (time.perf_counter() - start) / done * (self.cfg.steps - entry["step"])
                eta = f"  ETA {int(left) // 60}:{int(left) % 60:02d}"
            self._say(f"step {entry['step']:>6}/{self.cfg.steps}  {self._summary(entry)}{eta}")

    def _tensorboard(self, entry: dict[str, Any]) -> None:
        """The entry's scalars in TensorBoard (``training.log_to = [..., "tensorboard"]``):
        ``train/<task>/loss`` (the step's, for the task it trained), ``train/<task>/running_loss``,
        ``train/lr``, ``train/positions_per_s``, ``train/grad_norm``, ``eval/<task>/<metric>``."""
        writer = getattr(self, "_tb", None)
        if writer is None:
            return
        step = entry["step"]
        if "eval" in entry:
            for task, metrics in entry["eval"].items():
                for k, v in metrics.items():
                    writer.add_scalar(f"eval/{task}/{k}", v, step)
        else:
            writer.add_scalar(f"train/{entry['task']}/loss", entry["loss"], step)
            for task, v in entry.get("running", {}).items():
                writer.add_scalar(f"train/{task}/running_loss", v, step)
            for key in ("lr", "positions_per_s", "grad_norm"):
                if key in entry:
                    writer.add_scalar(f"train/{key}", entry[key], step)
        writer.flush()


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
