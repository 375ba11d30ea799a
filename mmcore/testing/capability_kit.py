"""Checks of the capabilities a component's processor declares (mmcore/interfaces.py).

Run by :func:`mmcore.testing.check_component` after the checks of an encoder's kind, on the
processor built with the same options: ``capabilities.tokens`` (every id it names -- the
``special_tokens`` values, ``bos_id``, ``eos_id``, ``pad_id``, ``mask_id``, ``sep_id``,
``output_ids`` -- is an integer below its ``vocab_size``, and each named special id is among
``special_tokens``), ``capabilities.length`` (no example value makes more than ``max_length``
tokens), ``capabilities.decode`` (a text processor that implements ``decode`` turns the ids of
each example back into the example's text).
"""

from __future__ import annotations

from typing import Any

from ..registry import Component
from .examples import example_values

__all__ = ["CAPABILITY_CHECKS", "check_processor_capabilities"]

CAPABILITY_CHECKS = ("capabilities.tokens", "capabilities.length", "capabilities.decode")


def check_processor_capabilities(comp: Component, options: Any = None) -> list[tuple[str, str]]:
    """``(check, problem)`` for each declared capability of ``comp``'s processor that does not
    hold (empty: all hold, or the component has no processor)."""
    from mmcore.interfaces import Processor

    make = comp.load_processor()
    if make is None:
        return []
    opts = options
    if opts is None:
        opts = (comp.extra.get("conformance") or {}).get("options") or {}
    cfg = opts if isinstance(opts, comp.config) else comp.config.model_validate(dict(opts))
    proc = make(cfg)
    problems: list[tuple[str, str]] = []
    if not isinstance(proc, Processor):
        return [("capabilities.tokens", f"{type(proc).__name__} is not an mmcore.Processor")]
    vocab = proc.vocab_size
    named = {k: getattr(proc, k) for k in ("bos_id", "eos_id", "pad_id", "mask_id", "sep_id")}
    ids = [*proc.special_tokens.values(), *(v for v in named.values() if v is not None), *(proc.output_ids or ())]
    if ids and vocab is None:
        problems.append(("capabilities.tokens", "names token ids but declares no vocab_size"))
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int) or (vocab is not None and not 0 <= i < vocab):
            problems.append(("capabilities.tokens", f"id {i!r} is not an integer in [0, vocab_size = {vocab})"))
    specials = set(proc.special_tokens.values())
    for k, v in named.items():
        if v is not None and proc.special_tokens and v not in specials:
            problems.append(
                ("capabilities.tokens", f"{k} = {v} is not among special_tokens {dict(proc.special_tokens)}")
            )
    values = example_values(comp.modality or proc.modality, proc) or []
    for value in values:
        out = proc(value, where="example")
        n = int(next(iter(out.values())).shape[0]) if out else 0
        if proc.max_length is not None and "ids" in out and n > proc.max_length:
            problems.append(
                ("capabilities.length", f"an example makes {n} tokens, more than max_length = {proc.max_length}")
            )
        if (
            proc.modality == "text"
            and type(proc).decode is not Processor.decode
            and isinstance(value, str)
            and "ids" in out
            and (proc.max_length is None or n < proc.max_length)  # not cut
        ):
            back = proc.decode(out["ids"])
            if back != value:
                problems.append(("capabilities.decode", f"decode(ids of {value!r}) gave {back!r}"))
    return problems
