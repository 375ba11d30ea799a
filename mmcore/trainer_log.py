"""The trainer's logging: ``metrics.jsonl`` (kept up to the resumed step), the progress bar (tqdm
when installed and on a terminal) or a line per logged step with the ETA, and TensorBoard
scalars when it is installed."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from .trainer_checkpoints import TrainerCheckpoints


class TrainerLog(TrainerCheckpoints):
    """The metrics and progress of :class:`mmcore.Trainer` (a part of it)."""

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
