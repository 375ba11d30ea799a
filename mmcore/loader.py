"""Loading: which records make up each batch (:class:`IndexPlan`, resumable from the batch
index alone), the DataLoader over a dataset (:func:`make_loader`), and finding the record that
kills a worker process (:func:`find_fatal_record`). The records themselves are read by
:mod:`mmcore.data`."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from .data import BadRecord, Collator
from .interfaces import Processor
from .interrupts import ignore_stop_signals
from .types import TargetField

__all__ = ["ExcludingDataset", "IndexPlan", "find_fatal_record", "make_loader", "record_where"]


@dataclass
class IndexPlan:
    """Which records make up global batch *k*, decided by the seed alone.

    The record order is an endless sequence of epochs, each a seeded permutation. Global
    batch k covers positions [k*B, (k+1)*B) of that sequence; process r of W takes the
    r-th of W equal slices. Resuming at batch k needs only k.

    With ``lengths`` (one per record), batches are grouped by length: each epoch's
    permutation is cut into windows of ``group_window`` batches, each window is sorted by
    length (longest first), and the order of the epoch's whole batches is shuffled again
    (seeded). Every batch then holds records of similar length, so collation pads little,
    while which records meet in a batch, and in which order batches come, stay random.
    """

    n: int
    global_batch: int
    seed: int = 0
    rank: int = 0
    world: int = 1
    shuffle: bool = True
    lengths: torch.Tensor | None = field(default=None, repr=False)
    group_window: int = 64
    _perm: tuple[int, torch.Tensor] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.global_batch % self.world:
            raise ValueError(f"batch size {self.global_batch} is not divisible by the {self.world} processes")
        if self.lengths is not None and len(self.lengths) != self.n:
            raise ValueError(f"{len(self.lengths)} lengths for {self.n} records")
        if self.group_window < 1:
            raise ValueError(f"group_window must be at least 1, got {self.group_window}")

    def _epoch(self, e: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != e:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + e)
                perm = torch.randperm(self.n, generator=g)
            else:
                perm = torch.arange(self.n)
            if self.lengths is not None:
                perm = self._grouped(perm, e)
            self._perm = (e, perm)
        return self._perm[1]

    def _grouped(self, perm: torch.Tensor, e: int) -> torch.Tensor:
        """``perm`` rearranged so each consecutive batch holds records of similar length."""
        assert self.lengths is not None
        B, window = self.global_batch, self.global_batch * self.group_window
        parts = []
        for start in range(0, self.n, window):
            chunk = perm[start : start + window]
            parts.append(chunk[torch.argsort(self.lengths[chunk], descending=True, stable=True)])
        arranged = torch.cat(parts)
        whole = self.n // B
        if not self.shuffle or whole < 2:
            return arranged
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + e + 7_919)
        order = torch.randperm(whole, generator=g)
        return torch.cat([arranged[: whole * B].view(whole, B)[order].reshape(-1), arranged[whole * B :]])

    def global_indices(self, k: int) -> list[int]:
        out = []
        pos = k * self.global_batch
        end = pos + self.global_batch
        while pos < end:
            e, off = divmod(pos, self.n)
            take = min(end - pos, self.n - off)
            out.extend(self._epoch(e)[off : off + take].tolist())
            pos += take
        return out

    def indices(self, k: int) -> list[int]:
        per = self.global_batch // self.world
        return self.global_indices(k)[self.rank * per : (self.rank + 1) * per]

    def epoch_of(self, k: int) -> float:
        return k * self.global_batch / self.n


class _PlanSampler:
    """A batch sampler over an :class:`IndexPlan` starting at batch ``start``."""

    def __init__(self, plan: IndexPlan, start: int, stop: int | None = None):
        self.plan, self.start, self.stop = plan, start, stop

    def __iter__(self) -> Iterator[list[int]]:
        k = self.start
        while self.stop is None or k < self.stop:
            yield self.plan.indices(k)
            k += 1

    def __len__(self) -> int:
        if self.stop is None:
            raise TypeError("endless sampler")
        return self.stop - self.start


class ExcludingDataset(Dataset):
    """``dataset`` with some records replaced by a :class:`BadRecord` (never processed).

    The trainer excludes a record this way once processing it has killed a DataLoader
    worker process (``on_bad_record = "skip"``).
    """

    def __init__(self, dataset: Dataset, excluded: Mapping[int, str]):
        self.dataset, self.excluded = dataset, dict(excluded)
        self.processors = getattr(dataset, "processors", None)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type,unused-ignore]  # a map-style Dataset

    def __getitem__(self, i: int) -> Any:
        if i in self.excluded:
            return BadRecord(record_where(self.dataset, i), None, self.excluded[i])
        return self.dataset[i]


def record_where(dataset: Any, i: int) -> str:
    """How messages name record ``i`` of ``dataset`` (``file:line`` for manifests)."""
    where = getattr(dataset, "where", None)
    return where(i) if callable(where) else f"record {i + 1}"


def _probe(dataset: Any, indices: list[int], conn: Any) -> None:
    for i in indices:
        conn.send(i)
        dataset[i]
    conn.send(None)
    conn.close()


def find_fatal_record(dataset: Any, indices: Sequence[int], *, timeout: float = 600.0) -> int | None:
    """Process ``dataset[i]`` for each of ``indices`` in a fresh process, in order; return the
    index during which that process died (a processor that crashed or exited the interpreter),
    or None when it processed them all.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_probe, args=(dataset, list(indices), send), daemon=True)
    proc.start()
    send.close()
    last = None
    try:
        while recv.poll(timeout):
            last = recv.recv()
    except EOFError:
        pass
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
        recv.close()
    return None if proc.exitcode == 0 and last is None else last


def make_loader(
    dataset: Dataset,
    processors: Mapping[str, Processor],
    plan: IndexPlan,
    *,
    start: int = 0,
    stop: int | None = None,
    num_workers: int = 0,
    targets: Sequence[TargetField] = (),
) -> DataLoader:
    """A DataLoader that yields ``(Batch | None, [BadRecord])`` for batches start, start+1, ...;
    ``targets`` as the :class:`Collator` takes them (the task objective's declarations)."""
    return DataLoader(
        dataset,
        batch_sampler=_PlanSampler(plan, start, stop),
        collate_fn=Collator(processors, targets),
        num_workers=num_workers,
        persistent_workers=False,
        multiprocessing_context="spawn" if num_workers and os.name != "nt" else None,
        worker_init_fn=ignore_stop_signals if num_workers else None,  # Ctrl-C and SIGTERM: the trainer's
        # Each iterator draws its workers' base seed from this generator. Without one it draws from
        # torch's global generator, so a resumed run (new iterators) would shift the dropout stream.
        generator=torch.Generator().manual_seed(plan.seed * 1_000_003 + start),
    )
