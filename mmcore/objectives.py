"""Training objectives: what a task asks of the model, as a loss and metrics.

Objectives are components (kind ``objective``, contract :class:`mmcore.Objective`). The
core's four are registered by :mod:`mmcore.builtin` like any plugin's and implemented here
on the same public contract:

* ``lm`` -- next-token prediction, causal attention; metrics: perplexity.
* ``mlm`` -- masked-token prediction, bidirectional attention: a ``probability``
  fraction of the real, non-special text tokens is chosen; of those 80 % become
  ``<mask>``, 10 % a random token, 10 % stay; the loss is on chosen positions only;
  metrics: perplexity and masked accuracy.
* ``prefix_lm`` -- conditional generation: the conditioning prefix (other modalities and
  the text's prompt part) is attended bidirectionally and excluded from the loss.
* ``classification`` -- cross-entropy of a classification head on ``targets[label]``;
  metrics: accuracy and macro-F1 (from a streamed confusion matrix).

:func:`make_objective` binds a task to its objective (any registered one);
:func:`task_head` and :func:`task_attention` are the one place a task's head and attention
mode are decided (the trainer, evaluation, generation and explanations use them).

Any task with a ``teacher`` (a trained model directory) whose objective declares
``distillation`` is distilled (:class:`Distillation`): the loss mixes the labels'
cross-entropy with the KL divergence to the teacher's temperature-softened predictions, and
optionally a hidden-state error. The trainer loads the teacher and hands it to
:meth:`Distillation.bind`.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from pydantic import ValidationError
from torch import Tensor, nn

from .config import TaskConfig
from .errors import MMCoreError, PluginError, UnknownComponentError
from .interfaces import Objective
from .types import IGNORE_INDEX, LM_LABELS, PROMPT_LEN, Batch, ModelOutput, TargetField

__all__ = [
    "Objective",
    "LMObjective",
    "PrefixLMObjective",
    "MLMObjective",
    "ClassificationObjective",
    "Distillation",
    "make_objective",
    "objective_component",
    "task_head",
    "task_attention",
    "mask_tokens",
    "macro_f1",
    "IGNORE_INDEX",
]


class _TaskObjective(Objective):
    """The first-party objectives' shared construction: name, head, attention from the task."""

    def __init__(self, config: Any = None, *, task: TaskConfig, head: str, where: str = "tasks") -> None:
        self.task = task
        self.head = head
        self.where = where
        self.text_input = task.text_input
        self.attention = task_attention(task)


class LMObjective(_TaskObjective):
    """``lm``: next-token cross-entropy of an LM head (its ``loss_terms``); perplexity."""

    name = "lm"
    distillation: str | None = "token"

    def metrics(self, state: Mapping[str, Tensor]) -> dict[str, float]:
        out = super().metrics(state)
        out["perplexity"] = math.exp(min(out["loss"], 50.0))
        out["tokens"] = float(state["loss_count"])
        return out


class PrefixLMObjective(LMObjective):
    """``prefix_lm``: the LM loss on the target part of ``{"prompt", "target"}`` samples."""

    name = "prefix_lm"
    generates = True


class MLMObjective(LMObjective):
    """``mlm``: BERT-style masking of the text input (:func:`mask_tokens`); masked accuracy."""

    name = "mlm"
    distillation = None

    def __init__(self, config: Any = None, *, task: TaskConfig, head: str, model: nn.Module, where: str = "tasks"):
        super().__init__(config, task=task, head=head, where=where)
        self.probability = task.mlm_probability
        proc = model.processors.get(task.text_input)
        if proc is None or getattr(proc, "mask_id", None) is None:
            raise MMCoreError(f"{where}: mlm needs a text input {task.text_input!r} with a <mask> token")
        specials = getattr(proc, "special_tokens", {}) or {}
        self.mask_id = int(proc.mask_id)
        self.vocab_size = int(proc.vocab_size)
        self.special_ids = tuple(int(v) for v in specials.values())

    def prepare(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        text = batch.inputs.get(self.text_input)
        if text is None:
            raise MMCoreError(f"mlm objective: the batch has no {self.text_input!r} input")
        ids, labels = mask_tokens(
            text["ids"],
            text["mask"],
            probability=self.probability,
            mask_id=self.mask_id,
            vocab_size=self.vocab_size,
            special_ids=self.special_ids,
            generator=generator,
        )
        inputs = dict(batch.inputs)
        inputs[self.text_input] = {**text, "ids": ids}
        # The corrupted input carries no prompt: every chosen position counts.
        inputs[self.text_input].pop(PROMPT_LEN, None)
        return replace(batch, inputs=inputs, targets={**batch.targets, LM_LABELS: labels})

    def metric_state(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        labels = batch.targets[LM_LABELS]
        hit = (output.outputs[self.head].logits.argmax(-1) == labels) & (labels != IGNORE_INDEX)
        return {"correct": hit.sum().double()}

    def metrics(self, state: Mapping[str, Tensor]) -> dict[str, float]:
        out = super().metrics(state)
        out["masked_accuracy"] = float(state["correct"]) / max(float(state["loss_count"]), 1e-12)
        return out


class ClassificationObjective(_TaskObjective):
    """``classification``: one integer label per record (``task.label``, or a name among
    ``task.labels``), the classification head's cross-entropy; accuracy and macro-F1."""

    name = "classification"
    distillation = "sample"

    def __init__(self, config: Any = None, *, task: TaskConfig, head: str, where: str = "tasks"):
        super().__init__(config, task=task, head=head, where=where)
        self.label = task.label
        self.names = tuple(task.labels) if task.labels else None

    def targets(self) -> list[TargetField]:
        high = len(self.names) if self.names else None
        return [TargetField(self.label, "integer", names=self.names, low=0, high=high)]

    def metric_state(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        logits = output.outputs[self.head].logits  # (B, C)
        C = logits.shape[-1]
        pred, gold = logits.argmax(-1), batch.targets[self.label].long()
        confusion = torch.zeros(C * C, dtype=torch.float64, device=logits.device)
        confusion.index_add_(0, (gold.clamp(0, C - 1) * C + pred), torch.ones_like(pred, dtype=torch.float64))
        return {"confusion": confusion.view(C, C)}  # rows: gold, columns: predicted

    def metrics(self, state: Mapping[str, Tensor]) -> dict[str, float]:
        out = super().metrics(state)
        cm = state["confusion"]
        n = float(cm.sum())
        out["accuracy"] = float(cm.diag().sum()) / max(n, 1.0)
        out["macro_f1"] = macro_f1(cm)
        out["samples"] = n
        return out


def macro_f1(confusion: Tensor) -> float:
    """Unweighted mean of per-class F1 over the classes present in gold or predictions,
    from a (C, C) confusion matrix (rows: gold, columns: predicted)."""
    cm = confusion.double()
    tp = cm.diag()
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    seen = (tp + fp + fn) > 0
    if not bool(seen.any()):
        return 0.0
    f1 = 2 * tp[seen] / (2 * tp[seen] + fp[seen] + fn[seen])
    return float(f1.mean())


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


def objective_component(task: TaskConfig, where: str = "tasks") -> Any:
    """The registered ``objective`` component a task names (:class:`MMCoreError` with close
    matches when none is)."""
    from .plugins import get_registry

    try:
        return get_registry().get("objective", task.objective)
    except UnknownComponentError as exc:
        raise MMCoreError(f"{where}.objective: {exc}") from exc


def task_head(task: TaskConfig, heads: Sequence[str]) -> str | None:
    """The head a task trains: its ``head``, else the model's only head (None when there are several)."""
    return task.head or (heads[0] if len(heads) == 1 else None)


def task_attention(task: TaskConfig) -> str | None:
    """The attention mode a task trains with: its ``attention``, else its objective's
    registered default (None: the backbone's configured mode)."""
    return task.attention or objective_component(task).attention


def make_objective(task: TaskConfig, model: nn.Module, task_name: str = "") -> Objective:
    """Bind a task to its registered objective and the model's head (and, with a ``teacher``,
    wrap it in :class:`Distillation`; the trainer loads the teacher)."""
    m = Objective.unwrap(model)
    where = f"tasks.{task_name}" if task_name else "tasks"
    comp = objective_component(task, where)
    heads = list(m.heads)
    head = task_head(task, heads)
    if head is None or head not in m.heads:
        raise MMCoreError(f"{where}: head {task.head!r} not in the model; heads: {heads}")
    spec = getattr(m, "spec", None)
    head_spec = spec.heads.get(head) if spec is not None else None
    if (
        head_spec is not None
        and comp.heads
        and not any(fnmatch.fnmatchcase(head_spec.component, g) for g in comp.heads)
    ):
        raise MMCoreError(
            f"{where}: objective {task.objective!r} does not train head {head!r} (head:{head_spec.component}); "
            f"it trains {', '.join('head:' + g for g in comp.heads)}"
        )
    try:
        options = comp.config.model_validate(dict(task.options))
    except ValidationError as exc:
        raise MMCoreError(f"{where}.options: {exc}") from exc
    obj = comp.build(options, task=task, head=head, model=m, where=where)
    if not isinstance(obj, Objective):
        raise PluginError(
            f"objective {comp.key!r} from {comp.source}: its factory returned {type(obj).__name__}, "
            "not an mmcore.Objective"
        )
    obj.name, obj.head = task.objective, head
    if task.attention is not None:
        obj.attention = task.attention
    if task.teacher is not None:
        if obj.distillation is None:
            raise MMCoreError(
                f"{where}.teacher: objective {task.objective!r} cannot be distilled (it declares no "
                "distillation); distillation works with lm, prefix_lm and classification"
            )
        obj = Distillation(
            inner=obj,
            teacher_dir=task.teacher,
            teacher_head=task.teacher_head or head,
            alpha=task.distill_alpha,
            temperature=task.distill_temperature,
            hidden_weight=task.distill_hidden,
            where=where,
            text_input=task.text_input,
        )
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


class Distillation(Objective):
    """A task's objective plus knowledge distillation from a trained teacher model.

    Per counted item (a predicted token for ``"token"`` objectives such as ``lm`` and
    ``prefix_lm``, a sample for ``"sample"`` ones such as ``classification``), the loss is::

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

    The trainer loads the teacher (``teacher_dir``) and passes it to :meth:`bind`, which
    freezes it and checks it: it must read the same inputs through identical processors (same
    tokenizer and vocabulary, same image size...), and its head must have as many outputs as
    the student's; otherwise :class:`MMCoreError` says what differs. In eval mode
    (``model.training`` False) :meth:`terms` is the wrapped objective's, so evaluation reports
    the student's own metrics. Targets, set-up and metrics are the wrapped objective's.
    """

    def __init__(
        self,
        inner: Objective,
        teacher_dir: str,
        teacher_head: str | None = None,
        alpha: float = 0.5,
        temperature: float = 2.0,
        hidden_weight: float = 0.0,
        where: str = "distillation",
        text_input: str = "text",
    ):
        self.inner = inner
        self.text_input = text_input
        self.name, self.head, self.attention = inner.name, inner.head, inner.attention
        self.distillation = inner.distillation
        self.generates = inner.generates
        self.teacher_dir = teacher_dir
        self.teacher_head = teacher_head or inner.head
        self.alpha, self.temperature, self.hidden_weight = alpha, temperature, hidden_weight
        self.where = where
        self.teacher: Any = None
        self.projection: nn.Module | None = None

    # the wrapped objective's data, set-up and metrics
    def targets(self) -> list[TargetField]:
        return self.inner.targets()

    def setup(self, model: nn.Module, targets: Any) -> None:
        self.inner.setup(model, targets)

    def prepare(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        return self.inner.prepare(batch, generator)

    def metric_state(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        return self.inner.metric_state(output, batch)

    def metrics(self, state: Mapping[str, Tensor]) -> dict[str, float]:
        return self.inner.metrics(state)

    def __getstate__(self) -> dict[str, Any]:  # data-loader workers get no teacher
        return {**self.__dict__, "teacher": None}

    def bind(self, student: nn.Module, teacher: nn.Module) -> None:
        """Check the loaded ``teacher`` against ``student``, freeze it, make the projection."""
        student = Objective.unwrap(student)
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
                what = "tokenizer and vocabulary" if student.encoders[name].modality == "text" else "processor"
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
            device = next(student.parameters()).device
            ds, dt = student.config.width, teacher.config.width
            self.projection = nn.Identity() if ds == dt else nn.Linear(ds, dt, bias=False).to(device)

    def parameters(self) -> list[nn.Parameter]:
        return [] if self.projection is None else list(self.projection.parameters())

    def state_dict(self) -> dict[str, Tensor]:
        return {} if self.projection is None else {k: v for k, v in self.projection.state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if self.projection is None:
            if state:
                raise MMCoreError(f"{self.where}: the distillation has no projection; got {sorted(state)}")
            return
        if state:  # nothing saved yet: keep the fresh projection
            self.projection.load_state_dict(state)

    def terms(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor, Any]:
        if not Objective.unwrap(model).training:
            return self.inner.terms(model, batch)
        if self.teacher is None:
            raise MMCoreError(f"{self.where}: the teacher is not loaded (the trainer binds it before training)")
        total, count, out = self.inner.terms(model, batch)
        with torch.no_grad():
            t_out = self.teacher(batch, mode=self.attention, heads=[self.teacher_head], compute_loss=False)
        s_logits, t_logits = out.outputs[self.head].logits, t_out.outputs[self.teacher_head].logits
        if s_logits.shape != t_logits.shape:
            raise MMCoreError(
                f"{self.where}: student logits {tuple(s_logits.shape)} and teacher logits {tuple(t_logits.shape)} "
                "differ in shape on the same batch"
            )
        per_sample = self.distillation == "sample"
        if per_sample:
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
            assert self.projection is not None
            hs, ht = self._hidden(out), self._hidden(t_out)
            if not per_sample:
                hs, ht = hs[:, :-1], ht[:, :-1]
            err = (self.projection(hs.float()) - ht.float()).pow(2).mean(-1)
            loss = loss + self.hidden_weight * (err * keep).sum()
        return loss, count, out

    def _lm_keep(self, output: Any, batch: Batch) -> Tensor:
        """(B, N-1) bool: the target positions the LM head's loss counts (real, after the prompt)."""
        inputs = batch.inputs[self.text_input]
        valid = output.mask & inputs["mask"].bool()  # (B, N)
        keep = valid[:, 1:]
        prompt_len = inputs.get(PROMPT_LEN)
        if prompt_len is not None:
            pos = torch.arange(1, valid.shape[1], device=valid.device)
            keep = keep & (pos.unsqueeze(0) >= prompt_len.reshape(-1, 1))
        return keep

    def _hidden(self, out: Any) -> Tensor:
        if self.distillation == "sample":
            pooled = out.outputs[next(iter(out.outputs))].extra.get("pooled")
            if pooled is None:
                raise MMCoreError(f"{self.where}: distill_hidden needs a classification head that reports 'pooled'")
            return pooled  # (B, D)
        return out.sequence.gather(out.hidden, self.text_input)  # (B, N, D)
