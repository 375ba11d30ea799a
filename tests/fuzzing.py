"""Shared settings and bookkeeping of the fuzz tests (tests/test_fuzz_*.py).

* Default run: each property runs its own small number of examples, derandomized (the
  same cases every run, so CI is not flaky), with no example database.
* Long run: ``MMCORE_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz_*.py`` runs that many
  random examples per property.
* ``MMCORE_FUZZ_REPORT=path.json`` writes, at exit, the cases tried per surface and how
  they ended (``accepted``: valid input that worked; ``rejected``: an mmcore error naming
  where the problem is). A case that ends any other way fails its test.
* Memory: hostile inputs that once exhausted memory run under a cap on the address space
  (``RLIMIT_AS``), so a regression fails its test (``MemoryError``, or a killed
  subprocess) instead of taking the machine: :func:`memory_cap` in this process (for the
  fuzzers), :func:`run_capped` in a fresh interpreter (for the regression cases).
"""

from __future__ import annotations

import atexit
import json
import os
import resource
import subprocess
import sys
import textwrap
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hypothesis import HealthCheck, settings

LONG = int(os.environ.get("MMCORE_FUZZ_EXAMPLES", "0") or 0)
COUNTS: dict[str, Counter] = defaultdict(Counter)


def fuzz(default: int) -> Any:
    """Hypothesis settings: ``default`` examples (derandomized), or ``MMCORE_FUZZ_EXAMPLES`` random ones."""
    return settings(
        max_examples=LONG or default,
        deadline=None,
        derandomize=not LONG,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        print_blob=True,
    )


def record(surface: str, outcome: str) -> None:
    COUNTS[surface][outcome] += 1


def _write_report() -> None:
    path = os.environ.get("MMCORE_FUZZ_REPORT")
    if not path or not COUNTS:
        return
    out = {k: dict(v) | {"tried": sum(v.values())} for k, v in sorted(COUNTS.items())}
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"examples_per_property": LONG or "default", "surfaces": out}, f, indent=2)


atexit.register(_write_report)


# --- memory caps ------------------------------------------------------------------------

MiB = 1024 * 1024


def address_space() -> int:
    """This process's current virtual size in bytes (``VmSize``)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


@contextmanager
def memory_cap(extra: int) -> Iterator[None]:
    """Limit this process's address space to what it uses now plus ``extra`` bytes, for the
    duration of the block; an allocation beyond it raises ``MemoryError`` (the test fails,
    the machine is spared). The limit is raised back afterwards (only the soft limit moves)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = address_space() + extra
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


_PRELUDE = """
import resource, sys
def _vm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
def cap_memory(extra):
    resource.setrlimit(resource.RLIMIT_AS, (_vm() + extra, resource.getrlimit(resource.RLIMIT_AS)[1]))
"""


def run_capped(code: str, *, timeout: float = 120, env: dict[str, str] | None = None) -> str:
    """Run ``code`` in a fresh Python; it calls ``cap_memory(extra_bytes)`` once its imports are
    done, then works on the hostile input. Returns its stdout; a non-zero exit (a
    ``MemoryError``, a failed assertion, a kill) or a timeout fails the calling test with
    the child's output."""
    full = _PRELUDE + textwrap.dedent(code)
    child_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", full], capture_output=True, text=True, timeout=timeout, env=child_env
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the capped child ran past {timeout} s; output: {exc.stdout!r} {exc.stderr!r}") from None
    assert proc.returncode == 0, f"capped child exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout
