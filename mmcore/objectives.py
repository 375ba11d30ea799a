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

Any ``lm``, ``prefix_lm`` or ``classification`` task with a ``teacher`` (a trained model
directory) is distilled (:class:`Distillation`): the loss mixes the labels' cross-entropy with
the KL divergence to the teacher's temperature-softened predictions, and optionally a
hidden-state error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from .config import TaskConfig
from .errors import MMCoreError
from .types import Batch

__all__ = [
    "Objective",
    "Distillation",
    "make_objective",
    "task_head",
    "task_attention",
    "mask_tokens",
    "IGNORE_INDEX",
]

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

    # Trainable state of the objective itself (none here; a distillation's projection).
    def parameters(self) -> list[nn.Parameter]:
        return []

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state:
            raise MMCoreError(f"{self.kind} objective has no state; got {sorted(state)}")


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


def task_head(task: TaskConfig, heads: Sequence[str]) -> str | None:
    """The head a task trains: its ``head``, else the model's only head (None when there are several)."""
    return task.head or (heads[0] if len(heads) == 1 else None)


def task_attention(task: TaskConfig) -> str | None:
    """The attention mode a task trains with: its ``attention``, else its objective's default
    (None for classification: the backbone's configured mode)."""
    return task.attention or _DEFAULT_MODE[task.objective]


def make_objective(task: TaskConfig, model: nn.Module, task_name: str = "") -> Objective:
    """Bind a task's objective to the model's head and text processor."""
    m = _unwrap(model)
    heads = list(m.heads)
    head = task_head(task, heads)
    if head is None or head not in m.heads:
        raise MMCoreError(f"tasks.{task_name}: head {task.head!r} not in the model; heads: {heads}")
    mode = task_attention(task)
    obj = Objective(
        kind=task.objective, head=head, mode=mode, text_input=task.text_input, mlm_probability=task.mlm_probability
    )
    if task.teacher is not None:
        obj = Distillation(
            kind=task.objective,
            head=head,
            mode=mode,
            text_input=task.text_input,
            teacher_dir=task.teacher,
            teacher_head=task.teacher_head or head,
            alpha=task.distill_alpha,
            temperature=task.distill_temperature,
            hidden_weight=task.distill_hidden,
            where=f"tasks.{task_name}",
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


# --- knowledge distillation ----------------------------------------------------------------------


#: Keys of a processor's saved JSON description that limit lengths or switch augmentation: two
#: processors that differ only there turn the same value into the same tokens.
_RUNTIME_KEYS = frozenset(
    {"options", "augment", "augment_scale", "max_pixels", "max_length", "max_seconds", "max_frames"}
)


def _processor_fingerprint(proc: Any) -> tuple[str, Any]:
    """What makes two processors produce the same tokens: their class and saved description
    (JSON files without length limits and augmentation switches; other files byte for byte)."""
    import json
    import tempfile
    from pathlib import Path

    kind = f"{type(proc).__module__}.{type(proc).__qualname__}"
    files: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        for n in sorted(proc.save(d) or []):
            data = (Path(d) / n).read_bytes()
            try:
                obj = json.loads(data)
            except ValueError:
                files[n] = data
                continue
            files[n] = {k: v for k, v in obj.items() if k not in _RUNTIME_KEYS} if isinstance(obj, dict) else obj
    if files:
        return kind, files
    return kind, {k: repr(v) for k, v in sorted(vars(proc).items()) if k != "training"}


@dataclass
class Distillation(Objective):
    """A task's objective plus knowledge distillation from a trained teacher model directory.

    Per counted item (a predicted token for ``lm``/``prefix_lm``, a sample for
    ``classification``), the loss is::

        (1 - alpha) * CE(student, label)
        + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
        + hidden_weight * mean_d (P h_student - h_teacher)^2

    summed over items and divided by the item count of the hard loss (the trainer's exact
    normalisation). ``T^2`` keeps the soft term's gradients on the scale of the hard one
    (Hinton et al., 2015). The hidden states are the backbones' final-normed states at the
    positions the head reads (the text tokens for an LM head, the pooled state for a
    classifier); ``P`` is a learned linear map (no bias) when the widths differ, else the
    identity. ``P`` is trained with the student and kept in the trainer's checkpoints, not
    in the student's model directory.

    The teacher is loaded on first use (training only), frozen and in eval mode, run without
    gradients on the same batch as the student. It must read the same inputs through
    identical processors (same tokenizer and vocabulary, same image size...), and its head
    must have as many outputs as the student's; otherwise :class:`MMCoreError` says what
    differs. In eval mode (``model.training`` False) :meth:`terms` is the plain objective,
    so evaluation reports the student's own metrics.
    """

    teacher_dir: str = ""
    teacher_head: str | None = None
    alpha: float = 0.5
    temperature: float = 2.0
    hidden_weight: float = 0.0
    where: str = "distillation"
    teacher: Any = field(default=None, repr=False)
    projection: nn.Module | None = field(default=None, repr=False)

    def bind(self, student: nn.Module) -> None:
        """Load and check the teacher against ``student`` (once); make the projection."""
        if self.teacher is not None:
            return
        from .checkpoint import load

        student = _unwrap(student)
        device = next(student.parameters()).device
        try:
            teacher = load(self.teacher_dir, device=device)
        except MMCoreError as exc:
            raise MMCoreError(f"{self.where}.teacher: cannot load {self.teacher_dir}: {exc}") from exc
        teacher.requires_grad_(False).eval()
        where = f"{self.where}.teacher ({self.teacher_dir})"
        for name in teacher.encoders:
            if name not in student.processors or name not in teacher.processors:
                raise MMCoreError(
                    f"{where}: the teacher reads input {name!r}, which the student does not have "
                    f"(student inputs: {sorted(student.encoders)}); both must read the same inputs"
                )
            a, b = _processor_fingerprint(student.processors[name]), _processor_fingerprint(teacher.processors[name])
            if a != b:
                what = (
                    "tokenizer and vocabulary"
                    if getattr(student.encoders[name], "modality", "") == "text"
                    else "processor"
                )
                detail = f"{a[0]} vs {b[0]}" if a[0] != b[0] else "their saved descriptions differ"
                raise MMCoreError(
                    f"{where}: input {name!r} has a different {what} in the student and the teacher ({detail}); "
                    "distillation compares predictions over the same tokens, so both need the same one"
                )
        if self.teacher_head not in teacher.heads:
            raise MMCoreError(
                f"{where}: no head {self.teacher_head!r}; its heads: {list(teacher.heads)} (teacher_head)"
            )
        s_head, t_head = student.heads[self.head], teacher.heads[self.teacher_head]
        for attr in ("vocab_size", "num_classes"):
            sv, tv = getattr(s_head, attr, None), getattr(t_head, attr, None)
            if sv != tv:
                raise MMCoreError(
                    f"{where}: head {self.teacher_head!r} has {attr} {tv}, the student's head {self.head!r} has {sv}; "
                    "the soft targets must cover the same outputs"
                )
        self.teacher = teacher
        if self.hidden_weight > 0:
            ds, dt = student.config.width, teacher.config.width
            self.projection = nn.Identity() if ds == dt else nn.Linear(ds, dt, bias=False).to(device)

    def parameters(self) -> list[nn.Parameter]:
        return [] if self.projection is None else list(self.projection.parameters())

    def state_dict(self) -> dict[str, Tensor]:
        return {} if self.projection is None else {k: v for k, v in self.projection.state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if self.projection is None or not state:  # nothing saved yet: keep the fresh projection
            return super().load_state_dict(state) if self.projection is None else None
        self.projection.load_state_dict(state)

    def terms(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor, Any]:
        if not _unwrap(model).training:
            return super().terms(model, batch)
        self.bind(model)
        total, count, out = super().terms(model, batch)
        with torch.no_grad():
            t_out = self.teacher(batch, mode=self.mode, heads=[self.teacher_head], compute_loss=False)
        s_logits, t_logits = out.outputs[self.head].logits, t_out.outputs[self.teacher_head].logits
        if s_logits.shape != t_logits.shape:
            raise MMCoreError(
                f"{self.where}: student logits {tuple(s_logits.shape)} and teacher logits {tuple(t_logits.shape)} "
                "differ in shape on the same batch"
            )
        if self.kind == "classification":
            keep = torch.ones(s_logits.shape[0], dtype=torch.bool, device=s_logits.device)  # (B,)
        else:  # next-token heads: position i predicts token i + 1, as the LM head's loss counts it
            keep = self._lm_keep(out.outputs[self.head], batch)  # (B, N-1)
            s_logits, t_logits = s_logits[:, :-1], t_logits[:, :-1]
        T = self.temperature
        s_logp = torch.log_softmax(s_logits.float() / T, dim=-1)
        t_logp = torch.log_softmax(t_logits.float() / T, dim=-1)
        kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1)  # (B,) or (B, N-1)
        soft = (kl * keep).sum() * (T * T)
        loss = (1 - self.alpha) * total + self.alpha * soft
        if self.hidden_weight > 0:
            hs, ht = self._hidden(out), self._hidden(t_out)
            if self.kind != "classification":
                hs, ht = hs[:, :-1], ht[:, :-1]
            err = (self.projection(hs.float()) - ht.float()).pow(2).mean(-1)  # type: ignore[misc]  # bind() made it
            loss = loss + self.hidden_weight * (err * keep).sum()
        return loss, count, out

    def _lm_keep(self, output: Any, batch: Batch) -> Tensor:
        """(B, N-1) bool: the target positions the LM head's loss counts (real, after the prompt)."""
        inputs = batch.inputs[self.text_input]
        valid = output.mask & inputs["mask"].bool()  # (B, N)
        keep = valid[:, 1:]
        prompt_len = inputs.get("prompt_len")
        if prompt_len is not None:
            pos = torch.arange(1, valid.shape[1], device=valid.device)
            keep = keep & (pos.unsqueeze(0) >= prompt_len.reshape(-1, 1))
        return keep

    def _hidden(self, out: Any) -> Tensor:
        if self.kind == "classification":
            pooled = out.outputs[next(iter(out.outputs))].extra.get("pooled")
            if pooled is None:
                raise MMCoreError(f"{self.where}: distill_hidden needs a classification head that reports 'pooled'")
            return pooled  # (B, D)
        return out.sequence.gather(out.hidden, self.text_input)  # (B, N, D)
