"""Checks of the capabilities a component declares (mmcore/interfaces.py).

Run by :func:`mmcore.testing.check_component` after the checks of the component's kind.

A fusion: ``capabilities.embed_step`` (with every parameter drawn at random, so that a
zero-initialised embedding cannot hide a difference, a text input's tokens embedded one step
at a time by ``embed_step`` are what ``forward`` puts at their positions of the fused
sequence: what generation relies on).

An encoder's processor, built with the same options: ``capabilities.tokens`` (every id it names -- the
``special_tokens`` values, ``bos_id``, ``eos_id``, ``pad_id``, ``mask_id``, ``sep_id``,
``output_ids`` -- is an integer below its ``vocab_size``, and each named special id is among
``special_tokens``), ``capabilities.length`` (no example value makes more than ``max_length``
tokens), ``capabilities.decode`` (a text processor that implements ``decode`` turns the ids of
each example back into the example's text), ``capabilities.save_output`` (a processor that
declares ``output_suffixes`` implements ``save_output``, and an example's ids after ``bos_id``,
decoded, are written to a non-empty file with its first suffix: what ``mmcore generate --out``
does).

A head that declares an ``input`` (an LM-style head): ``capabilities.project`` (``project`` of the
hidden states at that input's positions gives the logits ``forward`` returns at its valid
positions: generation and explanations call ``project`` alone).
"""

from __future__ import annotations

from typing import Any

from ..registry import Component
from .examples import example_values

__all__ = [
    "CAPABILITY_CHECKS",
    "FUSION_CAPABILITY_CHECKS",
    "HEAD_CAPABILITY_CHECKS",
    "check_processor_capabilities",
    "check_fusion_capabilities",
    "check_head_capabilities",
]

CAPABILITY_CHECKS = ("capabilities.tokens", "capabilities.length", "capabilities.decode", "capabilities.save_output")
FUSION_CAPABILITY_CHECKS = ("capabilities.embed_step",)
HEAD_CAPABILITY_CHECKS = ("capabilities.project",)


def _options(comp: Component, options: Any) -> Any:
    opts = options
    if opts is None:
        opts = (comp.extra.get("conformance") or {}).get("options") or {}
    return opts if isinstance(opts, comp.config) else comp.config.model_validate(dict(opts))


def check_fusion_capabilities(comp: Component, options: Any = None) -> list[tuple[str, str]]:
    """``(check, problem)`` for a fusion whose ``embed_step`` disagrees with its ``forward``."""
    import torch
    from torch import nn

    from mmcore.config import BackboneConfig
    from mmcore.interfaces import Encoder
    from mmcore.registry import call_factory
    from mmcore.types import Batch, Tokens

    width = 16

    def stub(modality: str) -> Encoder:
        enc = type(f"_{modality.capitalize()}Stub", (Encoder,), {"modality": modality, "forward": None})()
        enc.out_dim = width
        return enc

    encoders: dict[str, nn.Module] = {m: stub(m) for m in ("image", "text")}
    backbone = BackboneConfig(width=width, depth=2, heads=2, context_length=64)
    fusion = call_factory(
        comp.load_factory(), _options(comp, options), width=width, encoders=encoders, backbone=backbone
    )
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in fusion.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    fusion.eval()
    tokens = {
        "image": Tokens(torch.randn(2, 5, width, generator=g), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()),
        "text": Tokens(torch.randn(2, 4, width, generator=g), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]).bool()),
    }
    ids = torch.randint(0, 50, (2, 4), generator=g)
    batch = Batch({"image": {"mask": tokens["image"].mask}, "text": {"ids": ids, "mask": tokens["text"].mask}})
    with torch.no_grad():
        seq = fusion(tokens, batch)
        if "text" not in seq.index:
            return []
        placed = seq.gather(seq.embeds, "text")
        stepped = fusion.embed_step("text", tokens["text"])
    real = tokens["text"].mask
    if stepped.shape != tokens["text"].embeds.shape or not torch.allclose(placed[real], stepped[real], atol=1e-4):
        return [
            (
                "capabilities.embed_step",
                "embed_step('text', tokens) differs from what forward puts at the text's positions; generation "
                "embeds each new token with embed_step, so it must add what forward adds (a modality embedding...)",
            )
        ]
    return []


def check_head_capabilities(comp: Component, options: Any = None) -> list[tuple[str, str]]:
    """``(check, problem)`` for an LM-style head whose ``project`` disagrees with its ``forward``
    (empty: it agrees, or the head declares no ``input``)."""
    import tempfile

    import torch

    from .common import _Target
    from .heads import _HeadHarness

    with tempfile.TemporaryDirectory(prefix="mmcore-capabilities-") as wd:
        h = _HeadHarness(_Target(comp, _options(comp, options), comp.name), wd, None)
        head = h.component(h.build(0))
        if head.input is None:
            return []
        head.eval()
        hidden, seq, _ = h.make(h.everything())
        if head.input not in seq.index:
            return []
        with torch.no_grad():
            out = head(hidden, seq)
            want = head.project(seq.gather(hidden, head.input))
    valid = out.mask if out.mask is not None else torch.ones(out.logits.shape[:2], dtype=torch.bool)
    got = out.logits
    if got.shape != want.shape or not torch.allclose(got[valid], want[valid], atol=1e-4, rtol=1e-4):
        return [
            (
                "capabilities.project",
                f"project(hidden states at {head.input!r}'s positions) differs from the logits forward returns there "
                f"(shapes {tuple(want.shape)} and {tuple(got.shape)}); generation and explanations call project alone",
            )
        ]
    return []


def check_processor_capabilities(comp: Component, options: Any = None) -> list[tuple[str, str]]:
    """``(check, problem)`` for each declared capability of ``comp``'s processor that does not
    hold (empty: all hold, or the component has no processor)."""
    from mmcore.interfaces import Processor

    make = comp.load_processor()
    if make is None:
        return []
    proc = make(_options(comp, options))
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
    if proc.output_suffixes:
        problems += _check_save_output(proc, values)
    return problems


def _check_save_output(proc: Any, values: list[Any]) -> list[tuple[str, str]]:
    """``capabilities.save_output``: a decoded example's ids written through ``save_output``."""
    import tempfile
    from pathlib import Path

    from mmcore.interfaces import Processor

    if type(proc).save_output is Processor.save_output:
        return [("capabilities.save_output", "declares output_suffixes but does not implement save_output")]
    for value in values:
        out = proc(value, where="example")
        if "ids" not in out:
            continue
        ids = [int(i) for i in out["ids"].reshape(-1).tolist()]
        if proc.bos_id is not None and ids[:1] == [proc.bos_id]:
            ids = ids[1:]
        ids = [i for i in ids if i not in (proc.eos_id, proc.pad_id)]
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / f"out{proc.output_suffixes[0]}"
            try:
                proc.save_output(proc.decode(ids), path)
            except Exception as exc:  # noqa: BLE001 - the kit reports what broke
                return [("capabilities.save_output", f"save_output(decode(ids of an example)) raised {exc!r}")]
            if not path.is_file() or path.stat().st_size == 0:
                return [("capabilities.save_output", f"save_output wrote nothing to {path.name}")]
        break
    return []
