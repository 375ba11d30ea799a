"""Training objectives: what a task asks of the model, as a loss.

Each objective picks the attention mode, may transform the batch (masked LM corrupts the
text), runs the model with the task's head, and returns the head's loss *terms*
``(total, count)`` so the trainer can normalise exactly across micro-batches and
processes (``loss = total / count``).

* ``lm`` -- next-token prediction, causal attention.
* ``mlm`` -- masked-token prediction, bidirectional attention: a ``probability``
  fraction of the real, non-special text tokens is chosen; of those 80 % become
  ``<mask>``, 10 % a random token, 10 % stay; the loss is on chosen positions only.
* ``prefix_lm`` -- conditional generation: the conditioning prefix (other modalities and
  the text's prompt part) is attended bidirectionally and excluded from the loss.
* ``classification`` -- cross-entropy of a classification head on ``targets[label]``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from .config import TaskConfig
from .errors import MMCoreError
from .types import Batch

__all__ = ["Objective", "make_objective", "mask_tokens", "IGNORE_INDEX"]

IGNORE_INDEX = -100

_DEFAULT_MODE = {"lm": "causal", "mlm": "bidirectional", "prefix_lm": "prefix", "classification": None}


@dataclass
class Objective:
    """One task's objective, bound to a head and the text input.

    Attributes:
        kind: ``lm``, ``mlm``, ``prefix_lm`` or ``classification``.
        head: name of the head whose loss is optimised.
        mode: attention mode for the backbone (None: the backbone's default).
        text_input: the text input the LM objectives read.
        mlm_probability: masked LM only.
        special_ids: token ids never chosen for masking (pad, bos, eos, ...).
        mask_id / vocab_size: masked LM only, from the text processor.
    """

    kind: str
    head: str
    mode: str | None
    text_input: str = "text"
    mlm_probability: float = 0.15
    special_ids: tuple[int, ...] = ()
    mask_id: int | None = None
    vocab_size: int | None = None

    def prepare(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        """Transform a batch before the forward pass (masked LM corrupts the text here)."""
        if self.kind != "mlm":
            return batch
        text = batch.inputs.get(self.text_input)
        if text is None:
            raise MMCoreError(f"mlm objective: the batch has no {self.text_input!r} input")
        ids, labels = mask_tokens(
            text["ids"],
            text["mask"],
            probability=self.mlm_probability,
            mask_id=self.mask_id,
            vocab_size=self.vocab_size,
            special_ids=self.special_ids,
            generator=generator,
        )
        inputs = dict(batch.inputs)
        inputs[self.text_input] = {**text, "ids": ids}
        # The corrupted input carries no prompt: every chosen position counts.
        inputs[self.text_input].pop("prompt_len", None)
        return replace(batch, inputs=inputs, targets={**batch.targets, "lm_labels": labels})

    def terms(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor, Any]:
        """Forward the model on ``batch`` (already prepared); returns (total, count, output)."""
        out = model(batch, mode=self.mode, heads=[self.head], compute_loss=False)
        head = _unwrap(model).heads[self.head]
        terms = head.loss_terms(out.outputs[self.head], batch)
        if terms is None:
            raise MMCoreError(
                f"{self.kind} objective: head {self.head!r} found no targets in the batch "
                f"(inputs {sorted(batch.inputs)}, targets {sorted(batch.targets)})"
            )
        total, count = terms
        return total, count.to(total.dtype), out


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DDP


def mask_tokens(
    ids: Tensor,
    real: Tensor,
    *,
    probability: float,
    mask_id: int | None,
    vocab_size: int | None,
    special_ids: tuple[int, ...] = (),
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT-style masking: returns (corrupted ids, labels with -100 where no loss).

    ``ids`` and ``real`` are (B, T); chosen positions are real, non-special tokens picked
    with ``probability``; of those 80 % -> ``mask_id``, 10 % -> a random token, 10 % kept.
    At least one position per sample with any eligible token is chosen, so no sample is
    wasted. Vectorised; draws from ``generator`` (CPU) for reproducibility.
    """
    if mask_id is None or vocab_size is None:
        raise MMCoreError("mlm objective: the text processor exposes no mask_id/vocab_size")
    eligible = real.bool().clone()
    for s in special_ids:
        eligible &= ids != s
    u = torch.rand(ids.shape, generator=generator).to(ids.device)  # (B, T)
    chosen = (u < probability) & eligible
    # guarantee one choice per sample: the eligible position with the smallest draw
    none = ~chosen.any(dim=1) & eligible.any(dim=1)  # (B,)
    first = torch.where(eligible, u, torch.full_like(u, 2.0)).argmin(dim=1)  # (B,)
    chosen[none, first[none]] = True
    action = torch.rand(ids.shape, generator=generator).to(ids.device)
    random_tokens = torch.randint(0, vocab_size, ids.shape, generator=generator).to(ids.device)
    corrupted = torch.where(chosen & (action < 0.8), torch.full_like(ids, mask_id), ids)
    corrupted = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_tokens, corrupted)
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
    return corrupted, labels


def make_objective(task: TaskConfig, model: nn.Module, task_name: str = "") -> Objective:
    """Bind a task's objective to the model's head and text processor."""
    m = _unwrap(model)
    heads = list(m.heads)
    head = task.head or (heads[0] if len(heads) == 1 else None)
    if head is None or head not in m.heads:
        raise MMCoreError(f"tasks.{task_name}: head {task.head!r} not in the model; heads: {heads}")
    mode = task.attention or _DEFAULT_MODE[task.objective]
    obj = Objective(
        kind=task.objective, head=head, mode=mode, text_input=task.text_input, mlm_probability=task.mlm_probability
    )
    if task.objective == "mlm":
        proc = m.processors.get(task.text_input)
        if proc is None or getattr(proc, "mask_id", None) is None:
            raise MMCoreError(f"tasks.{task_name}: mlm needs a text input {task.text_input!r} with a <mask> token")
        specials = getattr(proc, "special_tokens", {}) or {}
        obj.mask_id = int(proc.mask_id)
        obj.vocab_size = int(proc.vocab_size)
        obj.special_ids = tuple(int(v) for v in specials.values())
    return obj
