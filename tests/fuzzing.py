"""Shared settings and bookkeeping of the fuzz tests (tests/test_fuzz_*.py).

* Default run: each property runs its own small number of examples, derandomized (the
  same cases every run, so CI is not flaky), with no example database.
* Long run: ``MMCORE_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz_*.py`` runs that many
  random examples per property.
* ``MMCORE_FUZZ_REPORT=path.json`` writes, at exit, the cases tried per surface and how
  they ended (``accepted``: valid input that worked; ``rejected``: an mmcore error naming
  where the problem is). A case that ends any other way fails its test.
"""

from __future__ import annotations

import atexit
import json
import os
from collections import Counter, defaultdict
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
