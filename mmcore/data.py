"""Data: JSONL manifests and plain-text corpora -> Batches, with a resumable order.

* :class:`ManifestDataset` reads a JSONL manifest lazily (one record a line; fields named
  after the spec's inputs, plus ``target`` and ``label``; file paths relative to the
  manifest) and runs each input's Processor on it, in DataLoader workers.
* :class:`PackedTextDataset` tokenizes plain-text corpora (one document a line, or whole
  files) and packs them into fixed-length sequences for language-model pretraining.
* :class:`IndexPlan` decides which records form global batch *k*, from the seed alone, so
  a run resumed at batch *k* sees exactly the batches an uninterrupted run would, and each
  process of a distributed run takes its slice of the same global batch.
* :class:`Collator` turns samples into a :class:`~mmcore.Batch`. A record that fails to
  load or process becomes a :class:`BadRecord` (file, line, field, reason), never a zero
  tensor; the trainer skips it with a count or stops, per ``on_bad_record``.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .errors import InputError, MMCoreError
from .files import regular_file_problem
from .interfaces import Objective, Processor
from .records import TEXT_TARGET, RecordError, collate_targets, input_values, parse_targets
from .types import Batch, TargetField

__all__ = [
    "BadRecord",
    "DataError",
    "ManifestDataset",
    "PackedTextDataset",
    "Collator",
    "MAX_RECORD_BYTES",
    "FIELD_SAMPLE",
    "MIN_FIELD_SHARE",
    "resolve_record",
    "task_manifest",
]

#: Longest manifest line (one record, in bytes, newline included) read by default; a longer
#: one is a bad record without being read. Large media belong in files named by ``path``.
MAX_RECORD_BYTES = 16 * 1024 * 1024
#: Records read before training to check a manifest's fields (:meth:`ManifestDataset.check_fields`).
FIELD_SAMPLE = 100
#: The least share of those records a required field (a target, a required input) must be in.
MIN_FIELD_SHARE = 0.5
#: How close (``difflib`` ratio) a record's unused field must be to a missing one to be named as
#: the probable misspelling.
FIELD_MATCH = 0.6
_BLOCK = 1 << 20


class DataError(MMCoreError):
    """A record could not be used and the policy says to stop (names file, line, field)."""


@dataclass(frozen=True)
class BadRecord:
    """A record that failed to load or process: where, which field, why."""

    where: str
    field: str | None
    reason: str

    def __str__(self) -> str:
        f = f" field {self.field!r}" if self.field else ""
        return f"{self.where}{f}: {self.reason}"


def _line_offsets(path: Path) -> tuple[list[int], list[int], list[int]]:
    """Byte offset, 1-based line number and byte size of every non-blank line (records parse lazily).

    Reads in blocks, so a line of any length costs no more memory than a block."""
    offsets, numbers, sizes = [], [], []
    pos, start, n, blank = 0, 0, 1, True  # blank: the current line holds only whitespace so far
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            i = 0
            while True:
                j = block.find(b"\n", i)
                part = block[i:] if j < 0 else block[i:j]
                blank = blank and not part.strip()
                if j < 0:
                    break
                if not blank:
                    offsets.append(start)
                    numbers.append(n)
                    sizes.append(pos + j + 1 - start)
                start, n, blank, i = pos + j + 1, n + 1, True, j + 1
            pos += len(block)
    if not blank:
        offsets.append(start)
        numbers.append(n)
        sizes.append(pos - start)
    return offsets, numbers, sizes


class ManifestDataset(Dataset):
    """Records of a JSONL manifest, processed by the model's processors.

    File references. In a field whose modality is not ``text``, every file reference is
    resolved by :meth:`resolve_value` before any processor sees the value, whatever shape
    the value has: every string in it is one, at the top, in a list or under a dict's key
    (``{"path": "a.wav"}``), at any depth. Each resolves against the manifest's folder and must stay in
    it (no ``..``, absolute path or symlink leading out; ``allow_outside=True`` lifts only
    this rule) and name a regular file (not a folder, FIFO, device or socket; no NUL byte).
    ``bytes`` in a dict is the file's *content*, written as base64 text (RFC 4648, standard
    alphabet, padded, as ``base64.b64encode(data).decode()`` writes it); it is decoded here
    and the processor receives bytes, so ``bytes`` can never name a file. Dict keys and
    non-string values (numbers, ``null``) pass through unchanged. Processors therefore
    receive only resolved, checked paths or in-memory bytes.

    A line longer than ``max_record_bytes`` is a bad record, refused before it is read.

    Args:
        path: the manifest.
        processors: input name -> Processor (``model.processors``).
        modalities: input name -> modality; inputs whose modality is not ``text`` take a
            file path (or an inline value their processor accepts).
        text_input: the input that receives ``{"prompt": record[text_input], "target":
            record["target"]}`` when a record has a ``target`` (conditional generation).
        targets: the record fields that become targets, as the task's objective declares them
            (:meth:`mmcore.Objective.targets`): a record without a required one is a bad record; a
            plain field name is an optional integer class label.
        labels: optional class names per plain-name target field; string labels map to their index.
        target_field: the field whose text is the text input's target (:mod:`mmcore.records`).
        required: inputs every record must have (a record without one is a bad record): the
            text input of an objective that reads it.
        allow_outside: let file references leave the manifest's folder (the other rules stay).
        max_record_bytes: longest line read (default :data:`MAX_RECORD_BYTES`).
    """

    def __init__(
        self,
        path: str | Path,
        processors: Mapping[str, Processor],
        modalities: Mapping[str, str],
        *,
        text_input: str | None = "text",
        targets: Sequence[TargetField | str] = ("label",),
        labels: Mapping[str, Sequence[str]] | None = None,
        allow_outside: bool = False,
        max_record_bytes: int = MAX_RECORD_BYTES,
        target_field: str | None = TEXT_TARGET,
        required: Sequence[str] = (),
    ):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: manifest not found")
        self.root = self.path.resolve().parent
        self.processors = dict(processors)
        self.modalities = dict(modalities)
        self.text_input = text_input if text_input in self.processors else None
        names = {k: tuple(v) for k, v in (labels or {}).items()}
        self.targets = tuple(
            t
            if isinstance(t, TargetField)
            else TargetField(
                t, "integer", names=names.get(t), low=0, high=len(names[t]) if t in names else None, required=False
            )
            for t in targets
        )
        self.target_field = target_field
        self.required = tuple(required)
        self.allow_outside = allow_outside
        self.max_record_bytes = int(max_record_bytes)
        self.offsets, self.lines, self.sizes = _line_offsets(self.path)
        if not self.offsets:
            raise DataError(f"{self.path}: the manifest has no records")

    def __len__(self) -> int:
        return len(self.offsets)

    def record_sizes(self) -> torch.Tensor:
        """(N,) long: each record's size in bytes of JSON, known without parsing a record.

        A proxy for its length in tokens (text fields dominate a record's size), which
        length-grouped batching (``training.group_by_length``) sorts by."""
        return torch.tensor(self.sizes, dtype=torch.long)

    def where(self, i: int) -> str:
        """``file:line`` of record ``i``."""
        return f"{self.path}:{self.lines[i]}"

    def _read(self, i: int) -> tuple[int, dict[str, Any]]:
        line = self.lines[i]
        if self.sizes[i] > self.max_record_bytes:  # refused unread: parsing it would take ~10x its size
            raise _Bad(
                f"{self.path}:{line}",
                None,
                f"the line is {self.sizes[i]:,} bytes, more than max_record_bytes = {self.max_record_bytes:,}; "
                "put large media in files and name them with a path",
            )
        with open(self.path, "rb") as f:
            f.seek(self.offsets[i])
            raw = f.readline(self.max_record_bytes + 1).rstrip(b"\r\n")
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:  # the record is this one line: its column, not the parser's "line 2"
            raise _Bad(f"{self.path}:{line}", None, f"not valid JSON: {exc.msg} at column {exc.colno}") from exc
        except (ValueError, UnicodeDecodeError) as exc:
            raise _Bad(f"{self.path}:{line}", None, f"not valid JSON: {exc}") from exc
        except RecursionError as exc:  # the json module parses nesting recursively
            raise _Bad(f"{self.path}:{line}", None, "not valid JSON: arrays or objects nested too deeply") from exc
        if not isinstance(record, dict):
            raise _Bad(f"{self.path}:{line}", None, f"a record must be a JSON object, got {type(record).__name__}")
        return line, record

    def records(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(file:line, record)`` of every record that parses as a JSON object, in file order
        (the raw JSON: no processor runs; a bad line is left out)."""
        for i in range(len(self)):
            try:
                line, record = self._read(i)
            except _Bad:
                continue
            yield f"{self.path}:{line}", record

    def field_counts(self, sample: int = FIELD_SAMPLE) -> tuple[int, dict[str, int]]:
        """``(n, counts)``: how many of the first ``sample`` records hold each field (with a value
        other than null), over the ``n`` of them that parse. A record holding the target field
        counts as holding the text input too (the pair is what the text input reads)."""
        n, counts = 0, Counter[str]()
        for i in range(min(sample, len(self))):
            try:
                _, record = self._read(i)
            except _Bad:
                continue
            present = {k for k, v in record.items() if v is not None}
            if self.text_input and self.target_field in present:
                present.add(self.text_input)
            n += 1
            counts.update(present)
        return n, dict(counts)

    def check_fields(self, what: str, *, sample: int = FIELD_SAMPLE, share: float = MIN_FIELD_SHARE) -> set[str]:
        """Check, before any record is processed, that the fields this reading needs are there;
        return the fields the first ``sample`` records hold.

        Raises :class:`DataError` (``what`` says whose data it is, e.g. ``tasks.topics``) when a
        required target or required input is held by fewer than ``share`` of the first
        ``sample`` records, or when an input no record holds has a close match among the
        records' fields that no reading uses (a misspelling: ``chemm`` for ``chem``). The
        message lists the fields the records have and says which one was probably meant."""
        n, counts = self.field_counts(sample)
        if n == 0:  # none parses: each is a bad record, reported as such
            return set()
        known = set(self.processors) | {t.name for t in self.targets} | {self.target_field}
        unknown = sorted(k for k in counts if k not in known)
        problems = []
        needed = [(t.name, "a target of the task's objective") for t in self.targets if t.required]
        needed += [(name, "an input the task reads") for name in self.required]
        for name, role in needed:
            c = counts.get(name, 0)
            if c < share * n:
                problems.append(_field_problem(name, role, c, n, unknown))
        for name in self.processors:
            if name not in counts and difflib.get_close_matches(name, unknown, n=1, cutoff=FIELD_MATCH):
                problems.append(_field_problem(name, "an input of the model", 0, n, unknown))
        if problems:
            raise DataError(
                f"{self.path}: {what}: "
                + "; ".join(problems)
                + f". The records have the fields {sorted(counts)} (the first {n} records read)"
            )
        return set(counts)

    def resolve_path(self, value: str, where: str, field_name: str) -> str:
        """One file reference -> the absolute path of a regular file inside the manifest's folder."""
        return _resolve_path(value, self.root, self.allow_outside, where, field_name)

    def resolve_value(self, value: Any, where: str, field_name: str) -> Any:
        """A non-text field's value with every file reference resolved and checked (see the class)."""
        return _resolve_value(value, self.root, self.allow_outside, where, field_name)

    def __getitem__(self, i: int) -> dict[str, Any] | BadRecord:
        try:
            line, record = self._read(i)
            where = f"{self.path}:{line}"
            try:
                values = input_values(
                    record, self.processors, text_input=self.text_input, target_field=self.target_field
                )
                targets = parse_targets(record, self.targets)
            except RecordError as exc:
                raise _Bad(where, exc.field, exc.reason) from None
            for name in self.required:
                if values.get(name) is None:
                    raise _Bad(where, name, f"missing: the task reads this input; the record has {sorted(record)}")
            inputs: dict[str, Any] = {}
            for name, proc in self.processors.items():
                value = values[name]
                if value is None:
                    inputs[name] = None
                    continue
                if self.modalities.get(name) != "text":
                    value = self.resolve_value(value, where, name)
                at = f"{where} field {name!r}"
                try:
                    inputs[name] = proc(value, where=at)
                except InputError as exc:
                    msg = str(exc)
                    raise _Bad(where, name, msg[len(at) :].lstrip(": ") if msg.startswith(at) else msg) from exc
            if all(v is None for v in inputs.values()):
                raise _Bad(where, None, f"the record has none of the inputs {sorted(self.processors)}")
            return {"inputs": inputs, "targets": targets, "where": where}
        except _Bad as bad:
            return BadRecord(bad.where, bad.field, bad.reason)
        except (OSError, ValueError) as exc:  # a processor's unexpected failure on this record
            return BadRecord(self.where(i), None, f"{type(exc).__name__}: {exc}")

    def iter_targets(self) -> Iterator[dict[str, Any]]:
        """Every record's parsed targets, in file order, reading only the JSON (no processor
        runs): what :meth:`mmcore.Objective.setup` learns from. Bad records are left out."""
        for i in range(len(self)):
            try:
                _, record = self._read(i)
                targets = parse_targets(record, self.targets)
            except (_Bad, RecordError):
                continue
            if targets:
                yield targets


def task_manifest(
    path: str | Path,
    task: Any,
    objective: Objective,
    processors: Mapping[str, Processor],
    modalities: Mapping[str, str],
    *,
    what: str,
) -> ManifestDataset:
    """A task's JSONL manifest read as its objective needs it (the objective's targets, the
    task's ``text_input`` and ``target_field``; the text input required when the objective reads
    it), its fields checked before any record is processed (:meth:`ManifestDataset.check_fields`,
    ``what`` naming whose data it is). The trainer and ``mmcore eval`` both read manifests so."""
    from .objectives import objective_component

    ds = ManifestDataset(
        path,
        processors,
        modalities,
        text_input=task.text_input,
        targets=objective.targets(),
        target_field=task.target_field,
        required=[task.text_input] if objective_component(task).text else [],
    )
    ds.check_fields(what)
    return ds


def resolve_record(
    record: Mapping[str, Any],
    modalities: Mapping[str, str],
    base: str | Path | None = None,
    *,
    where: str = "the record",
    allow_outside: bool = False,
) -> dict[str, Any]:
    """``record`` with every file reference of its non-text fields resolved against ``base``
    by the rules of :class:`ManifestDataset` (the one implementation both use).

    ``base``: the folder of the file the record came from (None: a record typed on the
    command line, resolved against the current directory, which it may leave). Raises
    :class:`~mmcore.errors.InputError` naming ``where``, the field and the reason.
    """
    root = Path(base).resolve() if base is not None else Path.cwd()
    outside = allow_outside or base is None
    out = dict(record)
    for name, value in record.items():
        if name in modalities and modalities[name] != "text" and value is not None:
            try:
                out[name] = _resolve_value(value, root, outside, where, name)
            except _Bad as bad:
                raise InputError(f"{where} field {name!r}: {bad.reason}") from None
    return out


def _resolve_path(value: str, root: Path, allow_outside: bool, where: str, field_name: str) -> str:
    if "\x00" in value:
        raise _Bad(where, field_name, f"path {value!r} holds a NUL byte, which no file name can")
    p = Path(value)
    full = (p if p.is_absolute() else root / p).resolve()
    if not allow_outside and root not in full.parents and full != root:
        raise _Bad(where, field_name, f"path {value!r} leaves the manifest's folder {root}")
    problem = regular_file_problem(full)
    if problem is not None:
        raise _Bad(where, field_name, f"path {value!r}: {full} {problem}")
    return str(full)


def _resolve_value(value: Any, root: Path, allow_outside: bool, where: str, field_name: str) -> Any:
    """Strings (at the top, in lists, under any key of a dict) become absolute paths of regular
    files (in ``root`` unless ``allow_outside``); ``bytes`` (base64 text) becomes bytes."""
    if isinstance(value, str):
        return _resolve_path(value, root, allow_outside, where, field_name)
    if isinstance(value, list):
        return [_resolve_value(v, root, allow_outside, where, field_name) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, v in value.items():
        if v is None:
            out[key] = None
        elif key == "bytes":
            out[key] = _base64(v, where, field_name)
        elif key == "path" and not isinstance(v, str):  # {"path": ...}: the same rule as a bare path
            raise _Bad(where, field_name, f"'path' must be a string, got {type(v).__name__}")
        else:
            out[key] = _resolve_value(v, root, allow_outside, where, field_name)
    return out


def _base64(value: Any, where: str, field_name: str) -> bytes:
    """A manifest's ``bytes``: base64 text of a file's content -> the content."""
    if not isinstance(value, str):
        raise _Bad(
            where,
            field_name,
            f"'bytes' must be the file's content as base64 text, got {type(value).__name__}; name a file with 'path'",
        )
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _Bad(
            where,
            field_name,
            f"'bytes' is not base64 text ({exc}); it holds a file's content, encoded as base64 (a file is named "
            "with 'path')",
        ) from None


def _field_problem(name: str, role: str, count: int, n: int, unknown: Sequence[str]) -> str:
    held = "none" if count == 0 else f"{count}"
    msg = f"field {name!r} ({role}) is in {held} of the first {n} records"
    if count:
        msg += f" (under {MIN_FIELD_SHARE:.0%}: the others would all be bad records)"
    close = difflib.get_close_matches(name, unknown, n=1, cutoff=FIELD_MATCH)
    if close:
        msg += f"; did you mean {close[0]!r}? (rename the records' field, or the spec's name)"
    return msg


class _Bad(Exception):
    def __init__(self, where: str, field_name: str | None, reason: str):
        super().__init__(reason)
        self.where, self.field, self.reason = where, field_name, reason


class PackedTextDataset(Dataset):
    """Plain text packed into fixed-length token sequences for language-model pretraining.

    Each document (a line, or a whole file with ``per_line=False``) becomes
    ``<bos> tokens <eos>``; documents are concatenated and cut into sequences of
    ``seq_len`` tokens (the remainder is dropped).

    Args:
        files: text files (UTF-8).
        processor: the text input's processor (its ``encode``, ``bos_id``, ``eos_id``).
        seq_len: tokens per sequence (at most the backbone's context length).
        input_name: the text input's name in the spec.
    """

    def __init__(
        self,
        files: Sequence[str | Path],
        processor: Any,
        seq_len: int,
        *,
        input_name: str = "text",
        per_line: bool = True,
    ):
        if seq_len < 2:
            raise DataError(f"seq_len must be at least 2, got {seq_len}")
        self.input_name = input_name
        self.seq_len = seq_len
        ids: list[int] = []
        for f in files:
            path = Path(f)
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise DataError(f"{path}: cannot read the corpus: {exc}") from exc
            docs = [d for d in text.splitlines() if d.strip()] if per_line else [text]
            for d in docs:
                ids.append(processor.bos_id)
                ids.extend(processor.encode(d))
                ids.append(processor.eos_id)
        n = len(ids) // seq_len
        if n == 0:
            raise DataError(
                f"the corpus ({', '.join(map(str, files))}) has {len(ids)} tokens, fewer than one sequence of {seq_len}"
            )
        self.tokens = torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)  # (N, seq_len)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"inputs": {self.input_name: {"ids": self.tokens[i]}}, "targets": {}, "where": f"sequence {i}"}


class Collator:
    """Samples -> (Batch, bad records). Runs in the worker processes; picklable.

    ``targets``: how target fields collate (:meth:`TargetField.collate`); a field without a
    declaration collates as integers (a (B,) long tensor)."""

    def __init__(self, processors: Mapping[str, Processor], targets: Sequence[TargetField] = ()):
        self.processors = dict(processors)
        self.targets = tuple(targets)

    def __call__(self, samples: Sequence[dict[str, Any] | BadRecord]) -> tuple[Batch | None, list[BadRecord]]:
        bad = [s for s in samples if isinstance(s, BadRecord)]
        good = [s for s in samples if not isinstance(s, BadRecord)]
        if not good:
            return None, bad
        inputs = {}
        for name, proc in self.processors.items():
            values = [s["inputs"].get(name) for s in good]
            if any(v is not None for v in values):
                inputs[name] = proc.collate(values)
        targets, strings = collate_targets([s["targets"] for s in good], self.targets)
        meta: dict[str, Any] = {"where": [s["where"] for s in good]}
        if strings:
            meta["targets"] = strings
        return Batch(inputs, targets, meta), bad
