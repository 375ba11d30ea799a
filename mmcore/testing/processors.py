"""The processor checks (run for encoders that name a processor, and by ``check_processor``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InputError
from .common import PROCESSOR_CHECKS, _Fail, _first_line
from .examples import example_values
from .harness import _right_padded

# --- processors -------------------------------------------------------------------------------


class _ProcessorChecks:
    BAD_WHERE = "record 7 field 'conformance'"

    def __init__(self, processor: Any, values: Any, modality: str | None, make: Callable[[], Any] | None, wd: str):
        self.p = processor
        self.modality = modality if modality is not None else getattr(processor, "modality", "")
        self.values = list(values) if values is not None else example_values(self.modality or "", processor)
        self.make = make
        self.wd = wd

    def checks(self) -> list[tuple[str, Callable[[], None]]]:
        return [(name, getattr(self, "check_" + name.split(".")[1])) for name in PROCESSOR_CHECKS]

    def _one(self, value: Any, i: int) -> dict[str, Tensor]:
        out = self.p(value, where=f"example value {i}")
        if not isinstance(out, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in out.items()):
            raise _Fail(f"__call__ must return dict[str, Tensor] for one sample, got {type(out).__name__}")
        return out

    def _outputs(self, proc: Any) -> list[dict[str, Tensor]]:
        return [proc(v, where=f"example value {i}") for i, v in enumerate(self.values)]

    def check_outputs(self) -> None:
        if self.values is None or len(self.values) < 2:
            raise _Fail(
                f"no example values for modality {self.modality!r}: give values= or a Processor.examples() method"
            )
        if isinstance(self.p, nn.Module):
            raise _Fail("a Processor must not be an nn.Module (it runs in DataLoader workers, outside the model)")
        own = getattr(self.p, "modality", None)
        if self.modality and own != self.modality:
            raise _Fail(f"the processor's modality is {own!r}, its encoder's {self.modality!r}")
        samples = [self._one(v, i) for i, v in enumerate(self.values)]
        n = len(samples)
        for picks in ([0], [1, 0], list(range(n))):
            batch = self.p.collate([samples[i] for i in picks])
            self._check_batch(batch, len(picks))
            mask = batch.get("mask")
            if mask is not None and not bool(mask.any(1).all()):
                raise _Fail("collate gives a sample that has the input an all-False mask row")

    def _check_batch(self, batch: Any, B: int) -> None:
        if not isinstance(batch, dict) or not all(isinstance(v, Tensor) for v in batch.values()):
            raise _Fail(f"collate must return dict[str, Tensor], got {type(batch).__name__}")
        for k, v in batch.items():
            if v.dim() == 0 or v.shape[0] != B:
                raise _Fail(f"collate's {k!r} has shape {tuple(v.shape)}: the batch ({B}) must come first")
        mask = batch.get("mask")
        if mask is not None:
            if mask.dtype != torch.bool or mask.dim() != 2:
                raise _Fail(f"collate's 'mask' must be (B, T) bool, got {mask.dtype} {tuple(mask.shape)}")
            if not _right_padded(mask):
                raise _Fail("collate's 'mask' is not right-padded: real items must come first")
        present = batch.get("present")
        if present is not None and (present.dtype != torch.bool or tuple(present.shape) != (B,)):
            raise _Fail(f"collate's 'present' must be (B,) bool, got {present.dtype} {tuple(present.shape)}")

    def check_missing(self) -> None:
        s = self._one(self.values[0], 0)
        batch = self.p.collate([s, None])
        self._check_batch(batch, 2)
        mask, present = batch.get("mask"), batch.get("present")
        marked = (mask is not None and not bool(mask[1].any()) and bool(mask[0].any())) or (
            present is not None and present.tolist() == [True, False]
        )
        if not marked:
            raise _Fail(
                "collate([sample, None]) does not mark the missing record: give it an all-False 'mask' row "
                "(variable-length inputs) or a 'present' (B,) bool flag (fixed-size inputs)"
            )
        self._check_batch(self.p.collate([None, None]), 2)

    def check_determinism(self) -> None:
        a, b = self._outputs(self.p), self._outputs(self.p)
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            for k in x:
                if not torch.equal(x[k], y[k]):
                    raise _Fail(f"processing example value {i} twice gives different {k!r} (training is False)")

    def check_pickle(self) -> None:
        try:
            copy = _pickled_copy(self.p)
        except Exception as exc:
            raise _Fail(
                f"the processor does not pickle (DataLoader workers need it): {type(exc).__name__}: {exc}"
            ) from None
        self._equal(self._outputs(copy), self._outputs(self.p), "a pickled copy")

    def _equal(self, a: list[dict[str, Tensor]], b: list[dict[str, Tensor]], who: str) -> None:
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if set(x) != set(y) or not all(torch.equal(x[k], y[k]) for k in x):
                raise _Fail(f"{who} processes example value {i} differently")

    def check_files(self) -> None:
        directory = os.path.join(self.wd, "processor")
        os.makedirs(directory, exist_ok=True)
        names = self.p.save(directory)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise _Fail(f"save() must return the list of file names it wrote, got {names!r}")
        missing = [n for n in names if not os.path.exists(os.path.join(directory, n))]
        if missing:
            raise _Fail(f"save() says it wrote {missing}, which are not in the directory")
        fresh = self.make() if self.make is not None else _pickled_copy(self.p)
        fresh.load(directory)
        self._equal(self._outputs(fresh), self._outputs(self.p), "a processor restored with load()")

    def check_bad_input(self) -> None:
        bad = object()
        try:
            self.p(bad, where=self.BAD_WHERE)
        except InputError as exc:
            if self.BAD_WHERE not in str(exc):
                raise _Fail(
                    f"the InputError for a bad value does not say where it is (the `where` argument): {exc}"
                ) from None
            return
        except Exception as exc:
            raise _Fail(
                f"a bad value (an arbitrary object) raised {type(exc).__name__}: {_first_line(exc)}; raise "
                "mmcore.InputError naming `where` and the reason"
            ) from None
        raise _Fail("a bad value (an arbitrary object) was accepted; raise mmcore.InputError naming `where`")


def _pickled_copy(obj: Any) -> Any:
    """``obj`` through pickle and back, as a DataLoader sends a processor to its workers.

    Only bytes this function has just made from ``obj`` are unpickled: never data from a file.
    """
    import pickle

    return pickle.loads(pickle.dumps(obj))
