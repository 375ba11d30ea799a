"""How a raw record is read: each input's value and the targets an objective declares.

The one reading that :class:`mmcore.data.ManifestDataset` (the trainer's loader and
``mmcore eval``'s) and :meth:`mmcore.MultimodalGPT.preprocess` share, so a record means the
same thing to both:

* :func:`input_values`: input name -> the value its processor receives (None: absent). The
  text input becomes ``{"prompt": text, "target": record[target_field]}`` when the record
  holds its target field (conditional generation: the loss is on the target); when the target
  field *is* the text input, the whole text is the target of an empty prompt. A text value that
  is already a dict (``{"prompt": ...}``, as generation prompts are made) is left as it is.
* :func:`parse_targets`: the record's targets, each checked against its
  :class:`~mmcore.types.TargetField`; a required field that is missing is an error naming it.
* :func:`collate_targets`: a batch's parsed targets -> ``batch.targets`` and the string
  targets of ``batch.meta["targets"]``.

Problems raise :class:`RecordError` (an :class:`~mmcore.errors.InputError`) with the field
and the reason; the caller adds where the record came from (a manifest's file and line).
This module imports the standard library only (tensors are made by ``TargetField.collate``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .errors import InputError
from .types import TargetField

__all__ = ["RecordError", "TEXT_TARGET", "input_values", "parse_targets", "collate_targets"]

#: The record field whose text is the target of the text input, unless a task names another
#: (``tasks.<name>.target_field``).
TEXT_TARGET = "target"


class RecordError(InputError):
    """A record's field is missing or has a value its reader cannot use (``field``: which, or None)."""

    def __init__(self, field: str | None, reason: str):
        super().__init__(f"field {field!r}: {reason}" if field else reason)
        self.field, self.reason = field, reason


def input_values(
    record: Mapping[str, Any],
    inputs: Iterable[str],
    *,
    text_input: str | None = "text",
    target_field: str | None = TEXT_TARGET,
) -> dict[str, Any]:
    """Input name -> the record's value for it (None when the record has none); see the module."""
    out: dict[str, Any] = {}
    for name in inputs:
        value = record.get(name)
        if name == text_input and target_field is not None and target_field in record and not isinstance(value, dict):
            target = record[target_field]
            if not isinstance(target, str):
                raise RecordError(target_field, f"must be a string (the target text), got {type(target).__name__}")
            prompt = value if target_field != text_input and value is not None else ""
            value = {"prompt": prompt, "target": target}
        out[name] = value
    return out


def parse_targets(record: Mapping[str, Any], targets: Sequence[TargetField]) -> dict[str, Any]:
    """Field name -> the checked value of each declared target the record holds.

    Raises :class:`RecordError` for a value of the wrong type and for a missing field that is
    ``required`` (the message lists the fields the record has)."""
    out = {}
    for t in targets:
        if t.name not in record:
            if t.required:
                raise RecordError(
                    t.name, f"missing: the task's objective reads its target here; the record has {sorted(record)}"
                )
            continue
        try:
            out[t.name] = t.parse(record[t.name])
        except ValueError as exc:
            raise RecordError(t.name, str(exc)) from None
    return out


def collate_targets(
    parsed: Sequence[Mapping[str, Any]], targets: Sequence[TargetField] = ()
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The parsed targets of a batch's records -> (tensors by field, string targets by field).

    A field is collated only when every record has it; a field without a declaration collates
    as integers (a (B,) long tensor)."""
    declared = {t.name: t for t in targets}
    tensors: dict[str, Any] = {}
    strings: dict[str, list[str]] = {}
    keys = set().union(*(p.keys() for p in parsed)) if parsed else set()
    for key in sorted(keys):
        if all(key in p for p in parsed):
            spec = declared.get(key) or TargetField(key, "integer")
            value = spec.collate([p[key] for p in parsed])
            (strings if spec.type == "string" else tensors)[key] = value
    return tensors, strings
