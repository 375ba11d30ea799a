"""Evaluation: a task objective's metrics over a data set, and BLEU and chrF of generations.

``evaluate_task`` runs one task's objective over a dataset in order and returns its
metrics, which the objective defines (:meth:`mmcore.Objective.metric_state` and
:meth:`~mmcore.Objective.metrics`): the evaluator only sums their states over batches and
processes. ``evaluate_dir`` is ``mmcore eval MODEL_DIR DATA``: it loads a model directory,
evaluates the data with the task the spec names (or the one given), and writes JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from .errors import MMCoreError
from .interfaces import Objective
from .loader import IndexPlan, make_loader

__all__ = ["evaluate_task", "evaluate_dir", "text_metrics", "add_state", "reduce_state"]


def text_metrics(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu) and exact match."""
    try:
        import sacrebleu
    except ImportError as exc:  # pragma: no cover - sacrebleu is a dependency of the eval extra
        raise MMCoreError("BLEU/chrF need sacrebleu: pip install sacrebleu") from exc
    bleu = sacrebleu.corpus_bleu(hypotheses, [references]).score
    chrf = sacrebleu.corpus_chrf(hypotheses, [references]).score
    exact = sum(h.strip() == r.strip() for h, r in zip(hypotheses, references, strict=True)) / max(1, len(references))
    return {"bleu": bleu, "chrf": chrf, "exact_match": exact}


@torch.no_grad()
def evaluate_task(
    model: torch.nn.Module,
    objective: Objective,
    dataset: Any,
    processors: Mapping[str, Any],
    *,
    batch_size: int = 16,
    max_batches: int | None = None,
    device: torch.device | str = "cpu",
    autocast: Callable[[], Any] | None = None,
    rank: int = 0,
    world: int = 1,
    predictions: list[dict[str, Any]] | None = None,
) -> dict[str, float]:
    """Metrics of ``objective`` over ``dataset`` (in order, every record once).

    The objective's metric states are summed over the batches, then over the processes of a
    distributed run (:func:`reduce_state`), before :meth:`~mmcore.Objective.metrics` reads
    them. With ``rank``/``world``, process ``rank`` evaluates records ``rank, rank + world,
    ...`` only, so together they see each record once. ``predictions`` (a list) receives each
    record's ``where``, ``prediction`` and ``reference`` when the objective has one integer
    target and its head gives one row of logits a record (the predicted class, by name when
    the target has names)."""
    model.eval()
    if world > 1:
        dataset = _Strided(dataset, rank, world)
    n_batches = math.ceil(len(dataset) / batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    plan = IndexPlan(len(dataset), batch_size, shuffle=False)
    # The last batch wraps into the next epoch: evaluate exactly len(dataset) records.
    loader = make_loader(dataset, processors, plan, start=0, stop=n_batches, targets=objective.targets())
    state: dict[str, torch.Tensor] = {}
    seen = 0
    limit = len(dataset) if max_batches is None else min(len(dataset), max_batches * batch_size)
    gen = torch.Generator().manual_seed(1234)
    bad = 0
    for batch, bad_records in loader:
        bad += len(bad_records)
        if batch is None:
            continue
        keep = min(batch.size, limit - seen)
        if keep <= 0:
            break
        if keep < batch.size:
            batch = _take(batch, keep)
        seen += keep
        batch = objective.prepare(batch.to(device), gen)
        with autocast() if autocast else nullcontext():
            t, c, out = objective.terms(model, batch)
        add_state(state, {"loss_total": t.detach(), "loss_count": c.detach()})
        add_state(state, objective.metric_state(out, batch))
        if predictions is not None:
            predictions.extend(_classes(objective, out, batch))
    add_state(state, {"bad_records": torch.tensor(float(bad))})
    state = reduce_state(state, world, device)
    if float(state.get("loss_count", 0.0)) == 0:
        raise MMCoreError("evaluation found nothing to score (no targets in the data)")
    metrics = objective.metrics(state)
    if float(state["bad_records"]):
        metrics["bad_records"] = float(state["bad_records"])
    return metrics


def _classes(objective: Objective, out: Any, batch: Any) -> list[dict[str, Any]]:
    """Each record's predicted and reference class, for an objective with one integer target
    whose head gives (B, C) logits; else nothing."""
    fields = [t for t in objective.targets() if t.type == "integer"]
    logits = out.outputs[objective.head].logits if objective.head in out.outputs else None
    if len(fields) != 1 or logits is None or logits.dim() != 2 or fields[0].name not in batch.targets:
        return []
    names = fields[0].names

    def name(i: int) -> Any:
        return names[i] if names is not None and 0 <= i < len(names) else i

    pred, gold = logits.argmax(-1).tolist(), batch.targets[fields[0].name].tolist()
    return [
        {"where": w, "prediction": name(p), "reference": name(g), "exact": p == g}
        for w, p, g in zip(batch.meta["where"], pred, gold, strict=True)
    ]


def add_state(total: dict[str, torch.Tensor], part: Mapping[str, torch.Tensor]) -> None:
    """``total += part`` key by key, in float64 on the CPU (a metric state adds up)."""
    for k, v in part.items():
        v = torch.as_tensor(v).detach().to("cpu", torch.float64)
        if k in total:
            if total[k].shape != v.shape:
                raise MMCoreError(f"metric state {k!r}: shape {tuple(v.shape)} after {tuple(total[k].shape)}")
            total[k] = total[k] + v
        else:
            total[k] = v.clone()


def reduce_state(state: dict[str, torch.Tensor], world: int, device: torch.device | str) -> dict[str, torch.Tensor]:
    """The sum of every process's state (``all_reduce``) when ``world > 1``; else ``state``.

    Every process must hold the same keys with the same shapes (the same objective)."""
    if world <= 1:
        return state
    import torch.distributed as dist

    keys = sorted(state)
    flat = torch.cat([state[k].reshape(-1) for k in keys]).to(device)
    dist.all_reduce(flat)
    out, i = {}, 0
    for k in keys:
        n = state[k].numel()
        out[k] = flat[i : i + n].reshape(state[k].shape).cpu()
        i += n
    return out


class _Strided:
    """Records ``rank, rank + world, ...`` of a dataset (one process's share of an evaluation)."""

    def __init__(self, dataset: Any, rank: int, world: int):
        self.dataset, self.rank, self.world = dataset, rank, world
        self.processors = getattr(dataset, "processors", None)

    def __len__(self) -> int:
        return max(0, (len(self.dataset) - self.rank + self.world - 1) // self.world)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[self.rank + i * self.world]


def _take(batch: Any, n: int) -> Any:
    from .types import Batch

    def cut(d: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v[:n] for k, v in d.items()}

    meta = {k: (v[:n] if k == "where" else v) for k, v in batch.meta.items()}
    return Batch({k: cut(v) for k, v in batch.inputs.items()}, cut(batch.targets), meta)


#: BLEU counts n-grams up to this order; on references shorter than that (in words) it is 0 or
#: close to it whatever the generations are, so it is left out (with a note) there.
BLEU_ORDER = 4


def _references(ds: Any, reference_field: str, text_input: str) -> list[tuple[str, dict[str, Any], str | None]]:
    """``(where, record, reference)`` of every readable record of a manifest, read by the
    dataset's own reading (a bad line is left out): the reference is the record's
    ``reference_field`` (None when it has none; a ``{"prompt", "target"}`` text holds its own)."""
    out = []
    for where, record in ds.records():  # a bad line is counted as a bad record by the metrics' pass
        ref = record.get(reference_field)
        inner = record.get(text_input)
        if ref is None and isinstance(inner, dict) and isinstance(inner.get("target"), str):
            ref = inner["target"]
        prompt = inner.get("prompt", "") if isinstance(inner, dict) else inner
        if reference_field == text_input:
            prompt = ""
        rec = {k: v for k, v in record.items() if k in ds.processors and k != text_input}
        rec[text_input] = prompt if isinstance(prompt, str) else ""
        out.append((where, rec, ref if isinstance(ref, str) else None))
    return out


def evaluate_dir(
    model_dir: str | Path,
    data: str | Path,
    *,
    task: str | None = None,
    objective: str | None = None,
    batch_size: int = 16,
    generate: bool | None = None,
    max_new_tokens: int = 64,
    num_beams: int = 1,
    out: str | Path | None = None,
    reference_field: str | None = None,
    predictions: str | Path | None = None,
    verify: bool = True,
) -> dict[str, Any]:
    """``mmcore eval``: metrics of a saved model on a data file, written to JSON if ``out``.

    With generation (the default for ``prefix_lm``), each record's text is the prompt and its
    reference field (``reference_field``, default the task's ``target_field``: ``target``) the
    reference; when the reference field is the text input itself, the prompt is empty (other
    inputs condition the generation). ``{"text": {"prompt": .., "target": ..}}`` works too.
    The model continues every prompt (greedy, or beam search with ``num_beams``; lengths past
    the context are cut to fit, with a warning) and the output is scored with chrF, exact match
    and, where the references average at least :data:`BLEU_ORDER` words, corpus BLEU (else a
    note in ``result["notes"]`` says why it is left out). ``predictions``: a JSONL file (written
    atomically) with every record's ``where`` (file:line), ``prediction`` and ``reference``:
    generations, or the predicted class of a task with one integer target.
    """
    from .checkpoint import load
    from .config import TaskConfig
    from .data import ManifestDataset, PackedTextDataset, task_manifest
    from .objectives import make_objective

    model = load(model_dir, verify=verify)
    spec = model.spec
    tasks = dict(spec.tasks)
    if task is not None and task not in tasks:
        raise MMCoreError(f"{model_dir}: no task {task!r} in its spec; tasks: {sorted(tasks) or '(none)'}")
    if task is None and objective is None:
        if len(tasks) != 1:
            raise MMCoreError(
                f"{model_dir}: say which task to evaluate (--task) or which objective (--objective); "
                f"tasks: {sorted(tasks) or '(none)'}"
            )
        task = next(iter(tasks))
    if task is not None:
        cfg = tasks[task].model_copy(update={"train": str(data), "eval": None})
        if objective is not None:
            cfg = cfg.model_copy(update={"objective": objective})
    else:
        cfg = TaskConfig(objective=objective, train=str(data))  # type: ignore[arg-type,unused-ignore]
    if reference_field is not None:
        cfg = cfg.model_copy(update={"target_field": reference_field})
    obj = make_objective(cfg, model, task or "eval")
    path = Path(data)
    ds: ManifestDataset | PackedTextDataset
    if path.suffix == ".jsonl":
        modalities = {k: e.modality for k, e in model.encoders.items()}
        what = f"mmcore eval ({f'task {task!r}' if task else f'objective {cfg.objective!r}'})"
        ds = task_manifest(path, cfg, obj, model.processors, modalities, what=what)
    else:
        ds = PackedTextDataset(
            [path],
            model.processors[cfg.text_input],
            cfg.seq_len or model.config.context_length,
            input_name=cfg.text_input,
        )
    result: dict[str, Any] = {"model": str(model_dir), "data": str(data), "objective": obj.name}
    kept: list[dict[str, Any]] | None = [] if predictions is not None else None
    result["metrics"] = evaluate_task(
        model, obj, ds, model.processors, batch_size=batch_size, device=model.device, predictions=kept
    )
    want_text = generate if generate is not None else obj.generates
    if want_text and isinstance(ds, ManifestDataset):
        kept = _generations(model, ds, cfg, result, batch_size, max_new_tokens, num_beams, keep=kept is not None)
    if predictions is not None:
        if not kept:
            raise MMCoreError(
                f"--predictions: objective {obj.name!r} makes no per-record predictions here: they are the "
                "generations (--generate) or the class of a task with one integer target"
            )
        from .io import atomic_write_text

        atomic_write_text(predictions, "".join(json.dumps(k, ensure_ascii=False) + "\n" for k in kept))
        result["predictions"] = str(predictions)
    if out is not None:
        from .io import atomic_write_text

        atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    return result


def _generations(
    model: Any,
    ds: Any,
    cfg: Any,
    result: dict[str, Any],
    batch_size: int,
    max_new_tokens: int,
    num_beams: int,
    *,
    keep: bool,
) -> list[dict[str, Any]] | None:
    """Generate for every record of ``ds`` and score those with a reference (into ``result``);
    every record's prediction and reference when ``keep``."""
    from .generation import GenerationConfig, generate_for_records

    field = cfg.target_field
    rows = _references(ds, field, cfg.text_input)
    scored = [r for r in rows if r[2] is not None]
    if not scored:
        raise MMCoreError(
            f"{ds.path}: no record has a reference to score generations against in field {field!r}: give each "
            f'record one (e.g. {{"{cfg.text_input}": "prompt", "{field}": "reference"}}), name the field that holds '
            "it (--reference-field, or the task's target_field), or pass --no-generate"
        )
    rows = rows if keep else scored
    hyps = generate_for_records(
        model,
        [r[1] for r in rows],
        base=ds.path.parent,
        text_input=cfg.text_input,
        config=GenerationConfig(max_new_tokens=max_new_tokens, num_beams=num_beams, clamp=True),
        batch_size=batch_size,
    )
    pairs = [(h, r[2]) for h, r in zip(hyps, rows, strict=True) if r[2] is not None]
    metrics = text_metrics([h for h, _ in pairs], [ref for _, ref in pairs])
    words = sum(len(ref.split()) for _, ref in pairs) / len(pairs)
    if words < BLEU_ORDER:
        metrics.pop("bleu")
        result.setdefault("notes", []).append(
            f"bleu left out: the references average {words:.1f} words, fewer than BLEU's {BLEU_ORDER}-gram order, "
            "so it would be near 0 whatever the generations; exact_match and chrf apply"
        )
    result["metrics"].update(metrics)
    result["metrics"]["references"] = float(len(pairs))
    result["examples"] = [{"prediction": h, "reference": ref} for h, ref in pairs[:5]]
    if not keep:
        return None
    return [
        {
            "where": r[0],
            "prediction": h,
            "reference": r[2],
            "exact": None if r[2] is None else h.strip() == r[2].strip(),
        }
        for h, r in zip(hyps, rows, strict=True)
    ]
