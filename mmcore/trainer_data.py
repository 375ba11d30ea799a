"""The trainer's data: a task's datasets, objective and resumable index plan (a ``_Task``), its
next micro-batch, bad records (skipped and counted, or an error), a DataLoader worker that
dies (the record that killed it found and excluded), and which task a step trains."""

from __future__ import annotations

import copy
import difflib
import random
import sys
from pathlib import Path
from typing import Any

from torch import nn

from .config import TaskConfig
from .data import FIELD_MATCH, FIELD_SAMPLE, BadRecord, DataError, ManifestDataset, PackedTextDataset, task_manifest
from .errors import MMCoreError
from .interfaces import Objective
from .loader import IndexPlan, find_fatal_record, make_loader, record_where
from .objectives import Distillation, make_objective
from .trainer_base import _Task
from .trainer_optim import TrainerOptim
from .types import Batch


class TrainerData(TrainerOptim):
    """The tasks and their data of :class:`mmcore.Trainer` (a part of it)."""

    def _make_task(self, name: str, t: TaskConfig) -> _Task:
        model = self.model
        fmt = t.format if t.format != "auto" else ("jsonl" if t.train.endswith(".jsonl") else "text")
        objective = make_objective(t, model, name)
        train = self._dataset(name, t, t.train, fmt, objective, training=True)
        evals = self._dataset(name, t, t.eval, fmt, objective) if t.eval else None
        sizes = getattr(train, "record_sizes", None) if self.cfg.group_by_length else None
        plan = IndexPlan(
            len(train),
            self.cfg.batch_size,
            seed=self.cfg.seed + _stable_hash(name),
            rank=self.rank,
            world=self.world,
            lengths=sizes() if sizes is not None else None,
        )
        return _Task(name, t, objective, train, evals, plan)

    def _check_inputs_seen(self) -> None:
        """Every input of the model is in the first records of some task's training data; an input
        none holds is an error before the first step (its encoder would never train), listing the
        fields the records have and the probable misspelling."""
        seen: dict[str, set[str]] = {}
        for task in self.tasks.values():
            if isinstance(task.train, PackedTextDataset):
                seen[task.name] = {task.train.input_name}
            elif isinstance(task.train, ManifestDataset):
                seen[task.name] = set(task.train.field_counts()[1])
            else:  # a dataset whose records cannot be read here: nothing to check against
                return
        every = set().union(*seen.values()) if seen else set()
        missing = [n for n in self.model.encoders if n not in every]
        if not missing:
            return
        hints = []
        for n in missing:
            close = difflib.get_close_matches(n, sorted(every - set(self.model.encoders)), n=1, cutoff=FIELD_MATCH)
            if close:
                hints.append(f"did you mean {close[0]!r} for {n!r}?")
        fields = "; ".join(f"tasks.{k}: {sorted(v)}" for k, v in seen.items())
        raise DataError(
            f"the model's input{'s' if len(missing) > 1 else ''} {missing} {'are' if len(missing) > 1 else 'is'} in "
            f"none of the first {FIELD_SAMPLE} records of any task's training data, so "
            f"{'their encoders' if len(missing) > 1 else 'its encoder'} would never train. The records have the "
            f"fields {fields}" + (f". {' '.join(hints)}" if hints else "")
        )

    def _load_teacher(self, task: _Task) -> nn.Module:
        """The distillation teacher of ``task``: its model directory, loaded on the training device."""
        from .checkpoint import load

        obj = task.objective
        assert isinstance(obj, Distillation)
        try:
            return load(obj.teacher_dir, device=self.device)
        except MMCoreError as exc:
            raise MMCoreError(f"tasks.{task.name}.teacher: cannot load {obj.teacher_dir}: {exc}") from exc

    def _dataset(
        self, name: str, t: TaskConfig, path: str, fmt: str, objective: Objective, training: bool = False
    ) -> Any:
        m = self.model
        if fmt == "jsonl":
            modalities = {k: e.modality for k, e in m.encoders.items()}
            procs: Any = m.processors
            if training:  # augmentation on: training copies of the processors (workers copy them again)
                procs = {k: copy.copy(p) for k, p in procs.items()}
                for p in procs.values():
                    p.training = True
            what = f"tasks.{name}.{'train' if training else 'eval'}"
            return task_manifest(path, t, objective, procs, modalities, what=what)
        proc = m.processors.get(t.text_input)
        if proc is None:
            raise MMCoreError(f"tasks.{name}: a text corpus needs the text input {t.text_input!r}")
        seq_len = t.seq_len or m.config.context_length
        files = sorted(Path(path).glob("*.txt")) if Path(path).is_dir() else [Path(path)]
        return PackedTextDataset(files, proc, seq_len, input_name=t.text_input)

    def _next_batch(self, task: _Task) -> Batch:
        """The task's next usable micro-batch; bad records are skipped (counted) or raise."""
        while True:
            if task.it is None:
                procs = getattr(task.train, "processors", self.model.processors)  # training copies
                task.loader = make_loader(
                    task.data(),
                    procs,
                    task.plan,
                    start=task.consumed,
                    num_workers=self.cfg.num_workers,
                    targets=task.objective.targets(),
                )
                task.it = iter(task.loader)
            try:
                batch, bad = next(task.it)
            except RuntimeError as exc:  # a worker process died: find the record that killed it
                if not self.cfg.num_workers or "exited unexpectedly" not in str(exc):
                    raise
                self._worker_died(task, exc)
                continue
            task.consumed += 1
            self._handle_bad(task, bad)
            if batch is not None:
                return batch

    def _worker_died(self, task: _Task, exc: RuntimeError) -> None:
        """Replay the batches in flight in a fresh process to find the record that kills it;
        stop naming it, or exclude it and rebuild the loader (``on_bad_record``)."""
        task.it = task.loader = None
        data = task.data()
        candidates = [i for k in (task.consumed, task.consumed + 1) for i in task.plan.indices(k)]
        candidates = [i for i in dict.fromkeys(candidates) if i not in task.excluded]
        culprit = find_fatal_record(data, candidates)
        if culprit is None:
            raise DataError(
                f"tasks.{task.name}: a DataLoader worker died ({exc}) and none of the records of batches "
                f"{task.consumed}-{task.consumed + 1} kills a fresh process (out of memory?)"
            ) from exc
        where = record_where(task.train, culprit)
        reason = "processing this record killed the DataLoader worker process"
        if self.cfg.on_bad_record == "error":
            raise DataError(
                f"tasks.{task.name}: {where}: {reason} (set training.on_bad_record = 'skip' to skip such records)"
            ) from exc
        if self.rank == 0:
            print(f"warning: tasks.{task.name}: {where}: {reason}; skipping it", file=sys.stderr)
        task.excluded[culprit] = reason

    def _handle_bad(self, task: _Task, bad: list[BadRecord]) -> None:
        if not bad:
            return
        if self.cfg.on_bad_record == "error":
            raise DataError(f"tasks.{task.name}: {bad[0]} (set training.on_bad_record = 'skip' to skip such records)")
        if task.bad == 0 and self.rank == 0:
            print(f"warning: tasks.{task.name}: skipping bad record {bad[0]}", file=sys.stderr)
        new = {b.where for b in bad} - task.bad_seen  # a record counts once, however many epochs meet it
        task.bad_seen |= new
        task.bad += len(new)

    def _pick_task(self, step: int) -> _Task:
        names = list(self.plan.stage.tasks)
        if len(names) == 1:
            return self.tasks[names[0]]
        weights = [self.tasks[n].config.weight for n in names]
        return self.tasks[random.Random(self.cfg.seed * 1_000_003 + step).choices(names, weights)[0]]


def _stable_hash(s: str) -> int:
    h = 0
    for ch in s.encode():
        h = (h * 131 + ch) % 1_000_003
    return h
