"""Typed records that pass between the stages of a model.

raw record -> Processor -> :class:`Batch` -> Encoder -> :class:`Tokens`
-> Fusion -> :class:`FusedSequence` -> backbone -> hidden (B, L, D) -> Head -> :class:`HeadOutput`

Shapes use B = batch, N = tokens of one modality, L = fused length, D = backbone width.
Masks are bool tensors, True at real tokens. Token sequences are *right-padded*: the
real tokens of a sample come first, padding after.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "Batch",
    "Tokens",
    "FusedSequence",
    "HeadOutput",
    "ModelOutput",
    "IGNORE_INDEX",
    "LM_LABELS",
    "PROMPT_LEN",
    "TargetField",
]

#: Label value that means "no loss here" in token-level labels (as in PyTorch and transformers).
IGNORE_INDEX = -100

#: ``batch.targets[LM_LABELS]``: (B, N) long token labels of a masked-LM batch (the ``mlm``
#: objective puts them there); position i predicts ``lm_labels[:, i]`` unshifted, and
#: :data:`IGNORE_INDEX` marks positions without loss.
LM_LABELS = "lm_labels"

#: ``batch.inputs[<text input>][PROMPT_LEN]``: (B,) long, how many leading tokens of a
#: ``{"prompt", "target"}`` sample are the prompt (the text processor puts it there); next-token
#: losses count only the positions from there on.
PROMPT_LEN = "prompt_len"


def _to(obj: Any, *args: Any, **kwargs: Any) -> Any:
    """Move tensors (also inside dicts, lists and dataclasses) with ``Tensor.to``."""
    import torch

    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            return obj.to(*args, **kwargs)
        return obj.to(device=_device_of(args, kwargs)) if _device_of(args, kwargs) is not None else obj
    if isinstance(obj, dict):
        return {k: _to(v, *args, **kwargs) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, *args, **kwargs) for v in obj)
    if hasattr(obj, "__dataclass_fields__"):
        return replace(obj, **{f.name: _to(getattr(obj, f.name), *args, **kwargs) for f in fields(obj)})
    return obj


def _device_of(args: tuple, kwargs: dict) -> Any:
    import torch

    if "device" in kwargs:
        return kwargs["device"]
    for a in args:
        if isinstance(a, (str, torch.device)):
            return a
    return None


@dataclass
class Batch:
    """A collated batch, as the processors and the data loader produce it.

    Attributes:
        inputs: per input name (the spec's ``[encoders.<name>]`` key), the tensors that
            modality's :class:`~mmcore.Processor` collated, e.g. ``{"text": {"ids": (B, T)
            long, "mask": (B, T) bool}}``. A modality missing from every record may be
            absent; a modality missing from some records has ``mask`` all False for them.
        targets: task targets, e.g. ``{"label": (B,) long}``.
        meta: anything else (record ids, raw strings); never used in the forward pass.
    """

    inputs: dict[str, dict[str, "Tensor"]]
    targets: dict[str, "Tensor"] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        for tensors in self.inputs.values():
            for t in tensors.values():
                return int(t.shape[0])
        for t in self.targets.values():
            return int(t.shape[0])
        raise ValueError("empty batch: no inputs and no targets")

    def to(self, *args: Any, **kwargs: Any) -> "Batch":
        """Move every tensor (floating tensors also change dtype when one is given)."""
        return Batch(_to(self.inputs, *args, **kwargs), _to(self.targets, *args, **kwargs), self.meta)


@dataclass
class Tokens:
    """What an encoder produces for one modality.

    Attributes:
        embeds: (B, N, D_enc) float. D_enc is the encoder's ``out_dim``; the model puts a
            projector after encoders whose ``out_dim`` differs from the backbone width.
        mask: (B, N) bool, True at real tokens, right-padded. A sample that lacks the
            modality has an all-False row.
    """

    embeds: "Tensor"
    mask: "Tensor"

    def to(self, *args: Any, **kwargs: Any) -> "Tokens":
        return _to(self, *args, **kwargs)


@dataclass
class FusedSequence:
    """What a fusion produces: the one sequence the backbone reads.

    Attributes:
        embeds: (B, L, D) float, right-padded.
        mask: (B, L) bool, True at real tokens.
        modality_ids: (B, L) long, index into ``modalities`` of each position's source
            input (boundary and other fusion tokens count as their input), -1 at padding.
        modalities: the input names (``[encoders.<name>]`` keys) in sequence order.
        index: per input name, (B, N_m) long: where each of that input's tokens sits in
            the fused sequence, -1 where the token is padding. ``None`` means identity
            (token i of the modality is at position i), the fast path of single-modality
            input; use :meth:`gather` rather than reading it directly.
        positions: (B, L) long position ids, or None for 0..L-1.
        prefix_len: (B,) long, number of leading conditioning tokens (everything before
            the text, plus the text's own prompt part); used by prefix-LM attention.
        padding_side: ``"right"`` (training) or ``"left"`` (batched generation).
        context: extra input for layers inserted in the backbone (cross-attention memory).
    """

    embeds: "Tensor"
    mask: "Tensor"
    modality_ids: "Tensor"
    modalities: tuple[str, ...]
    index: dict[str, "Tensor | None"]
    positions: "Tensor | None" = None
    prefix_len: "Tensor | None" = None
    padding_side: str = "right"
    context: Any = None

    def gather(self, hidden: "Tensor", modality: str) -> "Tensor":
        """Hidden states at the positions of one input's tokens: (B, L, D) -> (B, N_m, D).

        Rows where the token is padding hold the state at position 0 (mask them out).
        """
        idx = self.index[modality]
        if idx is None:
            return hidden
        safe = idx.clamp(min=0)  # (B, N_m)
        return hidden.gather(1, safe.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))


@dataclass
class HeadOutput:
    """What a head returns.

    Attributes:
        logits: the head's main output (an LM head: (B, N, V) over the text tokens; a
            classification head: (B, C)).
        mask: (B, N) bool validity of ``logits`` rows, where they are per token.
        extra: anything else the head's ``loss`` or callers need.
    """

    logits: "Tensor"
    mask: "Tensor | None" = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelOutput:
    """What :class:`mmcore.MultimodalGPT` returns.

    Attributes:
        hidden: (B, L, D) final hidden states of the backbone.
        sequence: the :class:`FusedSequence` the backbone read.
        outputs: per head name, its :class:`HeadOutput`.
        losses: per head name, its loss (only when targets were available).
        loss: the sum of ``losses`` weighted by the heads' weights, or None.
    """

    hidden: "Tensor"
    sequence: FusedSequence
    outputs: dict[str, HeadOutput]
    losses: dict[str, "Tensor"] = field(default_factory=dict)
    loss: "Tensor | None" = None


#: The JSON types a record's target field may be declared with (see :class:`TargetField`).
TARGET_TYPES = ("integer", "float", "floats", "string")


@dataclass(frozen=True)
class TargetField:
    """One record field an objective reads as a target, and how the data layer checks it.

    The data layer (not the objective) validates every record against these declarations in
    the data-loader workers, so a bad value is a bad record naming file, line and field, and
    collates the values of a batch into ``batch.targets[name]``:

    * ``"integer"``: a JSON integer (not a boolean), ``low <= v < high`` when those are set;
      with ``names``, a string among them stands for its index. Collated to (B,) long.
    * ``"float"``: a JSON number (integer or float, finite). Collated to (B,) float32.
    * ``"floats"``: a JSON list of ``length`` finite numbers (any length >= 1 when None; then
      every record of a batch must have the same length). Collated to (B, length) float32.
      A single number is accepted when ``length`` is 1.
    * ``"string"``: a JSON string. Collated to a list of str in ``batch.meta["targets"][name]``.

    A record without a ``required`` field (the default) is a bad record naming file, line and
    field, handled like any other (``training.on_bad_record``); an optional field
    (``required=False``) may be absent, and a batch then has ``targets[name]`` only when each of
    its records has the field.

    Attributes:
        name: the record field (and the key in ``batch.targets``).
        type: one of :data:`TARGET_TYPES`.
        names: ``"integer"`` only: class names a string value may give.
        low, high: ``"integer"`` only: the valid range ``[low, high)``.
        length: ``"floats"`` only: how many numbers.
        required: every record must hold the field (default); False: it may be absent.
    """

    name: str
    type: Literal["integer", "float", "floats", "string"]
    names: tuple[str, ...] | None = None
    low: int | None = None
    high: int | None = None
    length: int | None = None
    required: bool = True

    def __post_init__(self) -> None:
        if self.type not in TARGET_TYPES:
            raise ValueError(f"target {self.name!r}: type {self.type!r} is not one of {', '.join(TARGET_TYPES)}")

    def parse(self, value: Any) -> Any:
        """The checked value of one record (a Python int, float, list of floats or str); a bad
        one raises ``ValueError`` with the reason (the data layer adds file, line and field)."""
        import math

        if self.type == "integer":
            names = list(self.names) if self.names is not None else None
            if isinstance(value, str) and names is not None:
                if value not in names:
                    raise ValueError(f"unknown class {value!r}; classes: {names}")
                return names.index(value)
            if isinstance(value, bool) or not isinstance(value, int):
                hint = f" or one of {names}" if names else " (give `labels = [...]` in the task to use names)"
                raise ValueError(f"must be an integer{hint}, got {value!r}")
            low = 0 if self.low is None else self.low
            high = self.high if self.high is not None else 2**63
            if not low <= value < high:  # 2**63 would overflow the batch's long tensor
                top = f"below {high} ({high} classes)" if self.high is not None else "of at most 2**63 - 1"
                raise ValueError(f"must be a class index, {low} or more and {top}; got {value}")
            return value

        def number(v: Any, what: str) -> float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{what} must be a number, got {v!r}")
            f = float(v)
            if not math.isfinite(f):
                raise ValueError(f"{what} must be finite, got {v!r}")
            return f

        if self.type == "float":
            return number(value, "the value")
        if self.type == "floats":
            if self.length == 1 and not isinstance(value, list):
                return [number(value, "the value")]
            if not isinstance(value, list) or not value:
                want = f"{self.length} numbers" if self.length else "numbers"
                raise ValueError(f"must be a list of {want}, got {value!r:.80}")
            if self.length is not None and len(value) != self.length:
                raise ValueError(f"must hold {self.length} numbers, got {len(value)}")
            return [number(v, f"item {i}") for i, v in enumerate(value)]
        if not isinstance(value, str):
            raise ValueError(f"must be a string, got {type(value).__name__}")
        return value

    def collate(self, values: list[Any]) -> Any:
        """The parsed values of a batch -> a tensor (or a list of str); see the class."""
        import torch

        if self.type == "string":
            return list(values)
        if self.type == "integer":
            return torch.tensor(values, dtype=torch.long)
        if self.type == "floats" and len({len(v) for v in values}) > 1:
            raise ValueError(f"target {self.name!r}: the records of a batch hold lists of different lengths")
        return torch.tensor(values, dtype=torch.float32)
