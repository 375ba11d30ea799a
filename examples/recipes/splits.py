"""Deterministic splits by a salted hash, shared by the recipe scripts and bench/.

A row's side of a split depends only on its key (a file name, a text) and a salt: not on the
rows' order, the seed or what else is in the file, so a split can be remade anywhere and a
second split (validation) can be cut from one side of the first (eval) by salting it apart.
"""

from __future__ import annotations

import hashlib


def in_fraction(key: str, fraction: float) -> bool:
    """Whether ``key`` falls in the lowest ``fraction`` of the range of its SHA-256 hash (in steps of
    0.1 %): a row is held out when this is true for its key."""
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) % 1000 < fraction * 1000


def validation_split(
    rows: list[dict], field: str, fraction: float = 0.2, salt: str = "validation:"
) -> tuple[list[dict], list[dict]]:
    """Training ``rows`` as (fit, validation), for choosing settings without the eval split: a row is in
    validation when ``in_fraction(salt + row[field], fraction)``; the salt keeps the cut independent
    of the one that made the eval split from the same keys."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must lie strictly between 0 and 1, got {fraction}")
    fit, val = [], []
    for r in rows:
        (val if in_fraction(salt + r[field], fraction) else fit).append(r)
    return fit, val
