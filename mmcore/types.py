"""Typed records that pass between the stages of a model.

raw record -> Processor -> :class:`Batch` -> Encoder -> :class:`Tokens`
-> Fusion -> :class:`FusedSequence` -> backbone -> hidden (B, L, D) -> Head -> :class:`HeadOutput`

Shapes use B = batch, N = tokens of one modality, L = fused length, D = backbone width.
Masks are bool tensors, True at real tokens. Token sequences are *right-padded*: the
real tokens of a sample come first, padding after.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["Batch", "Tokens", "FusedSequence", "HeadOutput", "ModelOutput"]


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
