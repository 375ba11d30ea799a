"""What every part of the conformance kit shares: the check names, the report, the
failure types, the sizes the kit builds for, and output comparison."""

from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..registry import Component

_COMMON = (
    "options",
    "build",
    "outputs",
    "padding",
    "missing",
    "determinism",
    "gradients",
    "state_dict",
    "meta",
    "names",
    "dtype",
    "device",
    "compile",
    "bad_input",
)

#: The checks run for each kind, in order (an encoder also runs :data:`PROCESSOR_CHECKS`).
CHECKS: dict[str, tuple[str, ...]] = {
    "encoder": _COMMON,
    "projector": tuple(c for c in _COMMON if c != "missing"),
    "fusion": _COMMON,
    "head": _COMMON,
    "objective": ("declarations", "records", "loss", "streaming", "eval"),  # testing/objective_kit.py
}

#: The checks of a Processor (run first for an encoder that has one).
PROCESSOR_CHECKS = (
    "processor.outputs",
    "processor.missing",
    "processor.determinism",
    "processor.pickle",
    "processor.files",
    "processor.bad_input",
)

# If one of these fails, the checks after it cannot run.
_FATAL = {"options", "build", "outputs"}

WIDTH = 32  # backbone width the kit builds components for
BACKBONE = {"width": WIDTH, "depth": 2, "heads": 4, "context_length": 256}


class ConformanceError(AssertionError):
    """A component breaks the contract of its kind.

    Attributes:
        component: ``kind:name (distribution)`` of the component.
        failures: ``(check, message)`` for every failing check.
        report: the :class:`Report` of the checks that ran.
    """

    def __init__(self, component: str, failures: list[tuple[str, str]], report: "Report"):
        self.component = component
        self.failures = failures
        self.report = report
        lines = [f"{component} fails {len(failures)} conformance check(s):"]
        lines += [f"  [{check}] {component}: {message}" for check, message in failures]
        super().__init__("\n".join(lines))


@dataclass
class Report:
    """What a conformance run did: checks passed, skipped (with the reason), notes and timings."""

    component: str
    passed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        out = [f"{self.component}: {len(self.passed)} checks passed"]
        out += [f"  skipped {k}: {v}" for k, v in self.skipped.items()]
        out += [f"  note: {n}" for n in self.notes]
        return "\n".join(out)


class _Fail(Exception):
    """A check found a broken contract; the message says what is wrong."""


class _Skip(Exception):
    """A check does not apply (e.g. no CUDA device for the device check)."""


# --- running checks -------------------------------------------------------------------------


@contextlib.contextmanager
def _rng() -> Iterator[None]:
    """Leave the caller's global RNG state as it was."""
    with torch.random.fork_rng(devices=[]):
        yield


@dataclass
class _Target:
    comp: Component
    options: Any
    label: str


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


def _where(exc: BaseException, outside: tuple[str, ...] = ("mmcore/testing",)) -> str:
    """The innermost frame of ``exc``'s traceback in none of the ``outside`` paths."""
    frames = traceback.extract_tb(exc.__traceback__)
    inner = [f for f in frames if not any(o in f.filename.replace(os.sep, "/") for o in outside)] or frames
    f = inner[-1] if inner else None
    return f"{f.filename}:{f.lineno} in {f.name}" if f else "?"


# --- comparing outputs ----------------------------------------------------------------------


def _tol(ref: Tensor, dtype: torch.dtype | None = None) -> float:
    scale = 1.0 + float(ref.detach().abs().max()) if ref.numel() else 1.0
    if dtype == torch.bfloat16:
        return 0.1 * scale
    if dtype == torch.float64:
        return 1e-3 * scale
    return 1e-5 * scale


def _same(a: Tensor | None, b: Tensor | None, what: str, tol: float | None = None) -> None:
    if a is None or b is None:
        if (a is None) != (b is None):
            raise _Fail(f"{what}: one has outputs, the other none")
        return
    if a.shape != b.shape:
        raise _Fail(f"{what}: shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.numel() == 0:
        return
    a64, b64 = a.detach().to("cpu", torch.float64), b.detach().to("cpu", torch.float64)
    diff = float((a64 - b64).abs().max())
    limit = _tol(b64) if tol is None else tol
    if not diff <= limit:
        raise _Fail(f"{what} (max difference {diff:.3g}, tolerance {limit:.3g})")


def _same_rows(a: list[Tensor | None], b: list[Tensor | None], what: str, tol: float | None = None) -> None:
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        _same(x, y, what.format(i=i), tol)
