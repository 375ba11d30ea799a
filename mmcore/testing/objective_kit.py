"""The conformance checks of an ``objective`` component (see :func:`check_objective`).

An objective cannot be checked alone: it trains a head of a model on records. Its
registration therefore says on what, in ``Component.extra["conformance"]``:

* ``"spec"``: the ``encoders`` and ``heads`` sections of a small model it trains (the kit adds a
  tiny backbone), e.g. ``{"encoders": {"text": {"component": "text.bytes"}}, "heads": {"lm":
  {"component": "lm"}}}``;
* ``"records"``: at least four JSONL records with its targets;
* ``"task"`` (optional): further ``[tasks.<name>]`` keys (``labels``, ``options``...).

The checks, each reported by name: ``declarations`` (the registered attention mode, the
targets declared as :class:`mmcore.TargetField`), ``records`` (the records pass the data
layer; a record whose target has the wrong JSON type is a bad record naming file, line and
field), ``loss`` (training-mode terms: finite total, positive count, a gradient reaches the
head), ``streaming`` (the metric state of a batch equals the sum of the states of its two
halves, key by key, and ``metrics`` gives finite floats with ``loss``), ``eval`` (the core's
evaluator runs it over the records and reports its metrics).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..registry import ATTENTION_MODES, Component
from ..types import TargetField
from .kit import CHECKS, ConformanceError, Report

__all__ = ["check_objective"]

_BACKBONE = {"width": 32, "depth": 1, "heads": 2, "context_length": 64}


def check_objective(component: Component, options: Any = None, *, skip: Any = (), **_: Any) -> Report:
    """Run the objective checks (module docstring); raise :class:`ConformanceError` on failures."""
    import mmcore
    from mmcore.config import TaskConfig
    from mmcore.data import BadRecord, Collator, ManifestDataset
    from mmcore.evaluate import add_state, evaluate_task
    from mmcore.objectives import make_objective

    assert CHECKS["objective"] == ("declarations", "records", "loss", "streaming", "eval")
    report = Report(component.key)
    failures: list[tuple[str, str]] = []
    conf = component.extra.get("conformance") or {}
    if "spec" not in conf or len(conf.get("records") or []) < 4:
        raise ConformanceError(
            component.key,
            [("declarations", 'extra["conformance"] needs "spec" (encoders, heads) and at least 4 "records"')],
            report,
        )

    def check(name: str, fn: Any) -> None:
        if name in skip:
            report.skipped[name] = "asked"
            return
        try:
            fn()
            report.passed.append(name)
        except AssertionError as exc:
            failures.append((name, str(exc)))

    with tempfile.TemporaryDirectory() as d:
        manifest = Path(d) / "records.jsonl"
        manifest.write_text("".join(json.dumps(r) + "\n" for r in conf["records"]), encoding="utf-8")
        task = TaskConfig(objective=component.name, train=str(manifest), **(conf.get("task") or {}))
        if options is not None:
            task = task.model_copy(update={"options": dict(options)})
        spec = {"spec_version": 1, "name": "objective-kit", "backbone": _BACKBONE, **conf["spec"]}
        spec["tasks"] = {"t": task.model_dump(exclude_none=True)}
        torch.manual_seed(0)
        model = mmcore.build(spec)
        obj = make_objective(task, model, "t")
        targets = obj.targets()
        modalities = {k: e.modality for k, e in model.encoders.items()}
        ds = ManifestDataset(manifest, model.processors, modalities, text_input=task.text_input, targets=targets)

        def declarations() -> None:
            assert component.attention is None or component.attention in ATTENTION_MODES, component.attention
            assert all(isinstance(t, TargetField) for t in targets), f"targets() returned {targets!r}"

        def records() -> None:
            samples = [ds[i] for i in range(len(ds))]
            bad = [s for s in samples if isinstance(s, BadRecord)]
            assert not bad, f"the conformance records are bad records: {bad}"
            for t in targets:
                rec = dict(conf["records"][0], **{t.name: {"not": "a target"}})
                wrong = Path(d) / f"wrong_{t.name}.jsonl"
                wrong.write_text(json.dumps(rec) + "\n", encoding="utf-8")
                got = ManifestDataset(wrong, model.processors, modalities, text_input=task.text_input, targets=targets)[
                    0
                ]
                assert isinstance(got, BadRecord) and got.field == t.name and ":1" in got.where, (
                    f"a record whose {t.name!r} holds an object is not a bad record naming the field: {got!r}"
                )

        check("declarations", declarations)
        check("records", records)
        obj.setup(model, ds.iter_targets())
        batch, _bad = Collator(model.processors, targets)([ds[i] for i in range(len(ds))])
        assert batch is not None

        def loss() -> None:
            model.train()
            gen = torch.Generator().manual_seed(0)
            total, count, _ = obj.terms(model, obj.prepare(batch, gen))
            value = float(total.detach())
            assert total.dim() == 0 and count.dim() == 0, "terms() must give scalar total and count"
            assert math.isfinite(value) and float(count) > 0, f"total {value}, count {float(count)}"
            model.zero_grad()
            total.backward()
            grads = [p.grad for p in model.heads[obj.head].parameters() if p.grad is not None]
            params = list(model.heads[obj.head].parameters()) + list(model.backbone.parameters())
            assert grads or any(p.grad is not None for p in params), "no gradient reaches the model"

        def streaming() -> None:
            model.eval()
            n = batch.size
            with torch.no_grad():
                whole: dict[str, torch.Tensor] = {}
                parts: dict[str, torch.Tensor] = {}
                gen = torch.Generator().manual_seed(1)
                b = obj.prepare(batch, gen)
                t, c, out = obj.terms(model, b)
                add_state(whole, {"loss_total": t, "loss_count": c, **obj.metric_state(out, b)})
                gen = torch.Generator().manual_seed(1)
                b = obj.prepare(batch, gen)  # the same corruption, then split
                for lo, hi in ((0, n // 2), (n // 2, n)):
                    h = _take(b, lo, hi)
                    t, c, out = obj.terms(model, h)
                    add_state(parts, {"loss_total": t, "loss_count": c, **obj.metric_state(out, h)})
            assert sorted(whole) == sorted(parts), f"metric state keys differ by batch: {sorted(whole)} {sorted(parts)}"
            for k in whole:
                assert torch.allclose(whole[k], parts[k], rtol=1e-4, atol=1e-5), (
                    f"metric state {k!r} of a batch ({whole[k]}) is not the sum over its halves ({parts[k]})"
                )
            metrics = obj.metrics(whole)
            assert "loss" in metrics and all(isinstance(v, float) and math.isfinite(v) for v in metrics.values()), (
                f"metrics(state) must give finite floats with 'loss': {metrics}"
            )

        check("loss", loss)
        check("streaming", streaming)
        check("eval", lambda: evaluate_task(model, obj, ds, model.processors, batch_size=3))
    if failures:
        raise ConformanceError(component.key, failures, report)
    return report


def _take(batch: Any, lo: int, hi: int) -> Any:
    """Samples ``lo:hi`` of a batch (inputs, targets and per-sample meta)."""
    from ..types import Batch

    def cut(d: Any) -> Any:
        if isinstance(d, dict):
            return {k: cut(v) for k, v in d.items()}
        return d[lo:hi]

    return Batch(cut(batch.inputs), cut(batch.targets), cut(batch.meta))
