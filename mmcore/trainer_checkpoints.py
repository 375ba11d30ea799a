"""The trainer's checkpoints: ``checkpoints/step-N/`` model directories with the optimizer, RNG,
objective and plan state beside them (sharded under FSDP2: :mod:`mmcore.sharded`), the atomic
``latest`` pointer, pruning, ``best/``, and the exact resume from them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .errors import MMCoreError, ModelDirError
from .io import atomic_write_text, read_safetensors, write_safetensors
from .trainer_data import TrainerData
from .trainer_optim import _flatten_optimizer, _unflatten_optimizer

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE = "trainer_state.json"
OPTIM = "optimizer.safetensors"
EMA_FILE = "ema.safetensors"
BEST = "best"


class TrainerCheckpoints(TrainerData):
    """Checkpoints and resume of :class:`mmcore.Trainer` (a part of it)."""

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
            "tasks": {
                n: {"consumed": t.consumed, "bad": t.bad, "bad_seen": sorted(t.bad_seen)} for n, t in self.tasks.items()
            },
            "world": self.world,
            "running": {n: list(v) for n, v in self.running.items()},  # the logged running losses
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
        self.running = {n: (float(v[0]), int(v[1])) for n, v in state.get("running", {}).items()}
        self._last_checkpoint = self.step
        self._load_plan_state(state, d)
        for n, t in state["tasks"].items():
            if n in self.tasks:
                self.tasks[n].consumed, self.tasks[n].bad = int(t["consumed"]), int(t["bad"])
                self.tasks[n].bad_seen = {str(w) for w in t.get("bad_seen", ())}
                self.tasks[n].it = None

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


class _StateView:
    """Lets :func:`mmcore.save` write a given state dict (gathered FSDP weights) of a model."""

    def __init__(self, model: nn.Module, state: dict[str, torch.Tensor]):
        self.model, self._state = model, state
        self.spec = model.spec
        self.processors = model.processors

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state
