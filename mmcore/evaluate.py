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
) -> dict[str, float]:
    """Metrics of ``objective`` over ``dataset`` (in order, every record once).

    The objective's metric states are summed over the batches, then over the processes of a
    distributed run (:func:`reduce_state`), before :meth:`~mmcore.Objective.metrics` reads
    them. With ``rank``/``world``, process ``rank`` evaluates records ``rank, rank + world,
    ...`` only, so together they see each record once."""
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
    add_state(state, {"bad_records": torch.tensor(float(bad))})
    state = reduce_state(state, world, device)
    if float(state.get("loss_count", 0.0)) == 0:
        raise MMCoreError("evaluation found nothing to score (no targets in the data)")
    metrics = objective.metrics(state)
    if float(state["bad_records"]):
        metrics["bad_records"] = float(state["bad_records"])
    return metrics


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

    return Batch({k: cut(v) for k, v in batch.inputs.items()}, cut(batch.targets), batch.meta)


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _as_prompt_target(record: Any, text_input: str) -> Any:
    """``{"text": {"prompt": p, "target": t}}`` -> ``{"text": p, "target": t}`` (both manifest forms)."""
    if isinstance(record, dict) and isinstance(record.get(text_input), dict) and "target" not in record:
        inner = record[text_input]
        return {**record, text_input: inner.get("prompt", ""), "target": inner.get("target")}
    return record


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
) -> dict[str, Any]:
    """``mmcore eval``: metrics of a saved model on a data file, written to JSON if ``out``.

    With generation (the default for ``prefix_lm``), each record's text is the prompt and its
    ``target`` the reference (``{"text": {"prompt": .., "target": ..}}`` works too); the
    model continues every prompt (greedy, or beam search with ``num_beams``) and the output
    is scored with BLEU, chrF and exact match.
    """
    from .checkpoint import load
    from .config import TaskConfig
    from .data import ManifestDataset, PackedTextDataset
    from .objectives import make_objective

    model = load(model_dir)
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
    obj = make_objective(cfg, model, task or "eval")
    path = Path(data)
    ds: ManifestDataset | PackedTextDataset
    if path.suffix == ".jsonl":
        modalities = {k: e.modality for k, e in model.encoders.items()}
        ds = ManifestDataset(path, model.processors, modalities, text_input=cfg.text_input, targets=obj.targets())
    else:
        ds = PackedTextDataset(
            [path],
            model.processors[cfg.text_input],
            cfg.seq_len or model.config.context_length,
            input_name=cfg.text_input,
        )
    result: dict[str, Any] = {"model": str(model_dir), "data": str(data), "objective": obj.name}
    result["metrics"] = evaluate_task(model, obj, ds, model.processors, batch_size=batch_size, device=model.device)
    want_text = generate if generate is not None else obj.generates
    if want_text and isinstance(ds, ManifestDataset):
        from .generation import GenerationConfig, generate_for_records

        records = [_as_prompt_target(json.loads(line), cfg.text_input) for line in _lines(path)]
        records = [r for r in records if isinstance(r, dict) and isinstance(r.get("target"), str)]
        if not records:
            raise MMCoreError(
                f"{path}: no record has a reference to score generations against: give each record a string "
                f'"target" (e.g. {{"{cfg.text_input}": "prompt", "target": "reference"}}), or pass --no-generate'
            )
        hyps = generate_for_records(
            model,
            records,
            base=path.parent,
            text_input=cfg.text_input,
            config=GenerationConfig(max_new_tokens=max_new_tokens, num_beams=num_beams),
            batch_size=batch_size,
        )
        refs = [r["target"] for r in records]
        result["metrics"].update(text_metrics(hyps, refs))
        result["examples"] = [{"prediction": h, "reference": r} for h, r in zip(hyps[:5], refs[:5], strict=False)]
    if out is not None:
        from .io import atomic_write_text

        atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    return result
