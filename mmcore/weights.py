"""Weights for single components from their own files (``weights_from``), and the load report.

Any component section of a spec, and the backbone's, may name a safetensors file its initial
weights come from::

    [encoders.image]
    component = "vision.patch"
    weights_from = {path = "clip_vision.safetensors", prefix = {"vision_model." = ""}}

    [backbone]
    weights_from = {path = "gpt2/model.safetensors", format = "gpt2"}

Loading happens in two passes, so that every problem is reported before any tensor is read:

1. :func:`plan_weights` reads only each file's safetensors header (a JSON table of names,
   dtypes and shapes) and maps its keys onto the component (prefix mapping, ignore
   patterns, the GPT-2 layout). Missing files, prefixes or keys that match nothing, shapes
   that differ and parameters the file lacks become messages located at
   ``<section>.weights_from``.
2. :func:`load_planned` reads the planned tensors and copies them into the model.

Each component's key space is its own parameter and buffer names (``model.encoders.image``'s
state dict). Two exceptions keep ownership as the training policy sees it: the layers a
fusion inserts into the backbone (``backbone.inserts.<block>``) belong to the fusion, as
``inserts.<block>.<name>``, and are not part of the backbone's key space.

:class:`LoadReport` says, per component, which keys were loaded, which kept their fresh
initialisation, and which file keys were ignored and why.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import WeightsSource
from .files import open_regular, regular_file_problem

__all__ = [
    "LoadReport",
    "PartReport",
    "WeightsPlan",
    "read_header",
    "part_keys",
    "plan_weights",
    "load_planned",
    "folder_tensors",
    "read_pieces",
]

_GPT2_BLOCK = re.compile(r"^(transformer\.)?h\.\d+\.attn\.c_attn\.weight$")
_MAX_HEADER = 100 * 1024 * 1024
_SHOW = 12


def _listing(items: list[str], n: int = _SHOW) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" ... ({len(items)} in all)" if len(items) > n else "")


# --- the safetensors header ------------------------------------------------------------------


def read_header(path: str | Path) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, str]]:
    """``(name -> (dtype, shape), metadata)`` from a safetensors file's header; no tensor is read.

    Raises ``ValueError`` (message names the file) for a file that is not safetensors.
    """
    p = Path(path)
    with open_regular(p) as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{p}: not a safetensors file (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", head)
        if n <= 0 or n > min(_MAX_HEADER, size - 8):
            raise ValueError(f"{p}: not a safetensors file (header length {n} does not fit the file of {size} bytes)")
        raw = f.read(n)
    try:
        table = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"{p}: not a safetensors file (its header is not JSON: {exc})") from None
    if not isinstance(table, dict):
        raise ValueError(f"{p}: not a safetensors file (its header is not a JSON object)")
    meta = table.pop("__metadata__", None) or {}
    out = {}
    for key, entry in table.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("shape"), list):
            raise ValueError(f"{p}: not a safetensors file (header entry {key!r} has no shape)")
        out[key] = (str(entry.get("dtype")), tuple(int(d) for d in entry["shape"]))
    return out, {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def folder_tensors(directory: str | Path) -> dict[str, tuple[Path, str, tuple[int, ...]]]:
    """``key -> (file, dtype, shape)`` for a model folder's safetensors weights, from headers alone.

    The folder holds ``model.safetensors``, or the shards that ``model.safetensors.index.json``
    lists (every file of its ``weight_map``; a key the index places in one file but found in
    another, or in none, is an error). A folder with only pickle checkpoints (``*.bin``,
    ``*.pt``) is refused with how to convert it.

    Raises ``FileNotFoundError`` (no weights) or ``ValueError`` (a bad index or file).
    """
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: not a folder (a model folder with config.json and safetensors is expected)")
    single, index = d / "model.safetensors", d / "model.safetensors.index.json"
    if single.is_file():
        files, weight_map = [single], None
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{index}: not a safetensors index (no weight_map of key -> file): {exc}") from None
        bad = [n for n in names if not isinstance(n, str) or Path(n).name != n]
        if bad:
            raise ValueError(f"{index}: shard names must be plain file names in the folder; got {bad[:3]}")
        files = [d / n for n in names]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise FileNotFoundError(f"{index} lists shard(s) missing from the folder: {', '.join(absent)}")
    else:
        pickles = sorted(p.name for p in [*d.glob("*.bin"), *d.glob("*.pt")])
        hint = (
            f" It has {', '.join(pickles)}: pickle checkpoints are never loaded (they can run arbitrary code). "
            "Convert it to safetensors first, in a trusted environment: "
            "AutoModelForCausalLM.from_pretrained(path).save_pretrained(path)."
            if pickles
            else ""
        )
        raise FileNotFoundError(f"no model.safetensors (or model.safetensors.index.json) in {d}.{hint}")
    out: dict[str, tuple[Path, str, tuple[int, ...]]] = {}
    for f in files:
        header, _ = read_header(f)
        for key, (dtype, shape) in header.items():
            if weight_map is not None and weight_map.get(key) != f.name:
                raise ValueError(f"{f}: holds {key!r}, which {index.name} places in {weight_map.get(key)!r}")
            out[key] = (f, dtype, shape)
    if weight_map is not None:
        lost = sorted(k for k in weight_map if k not in out)
        if lost:
            raise ValueError(f"{index.name} lists {len(lost)} key(s) no shard holds: {_listing(lost)}")
    return out


def read_pieces(pieces: Mapping[str, list[tuple[str, str]]]) -> Any:
    """Yield ``(key, tensor)`` for ``{key: [(file, file key), ...]}``: each tensor read once, lazily
    (one file key at a time, memory-mapped), the pieces concatenated along dim 0. Files stay
    open until the last key is read. Errors name the file (:class:`~mmcore.errors.WeightsError`)."""
    import contextlib

    import torch
    from safetensors import safe_open

    from .errors import WeightsError

    with contextlib.ExitStack() as stack:
        handles: dict[str, Any] = {}
        for key, parts in pieces.items():
            tensors = []
            for file, fk in parts:
                try:
                    if file not in handles:
                        handles[file] = stack.enter_context(safe_open(file, framework="pt", device="cpu"))
                    tensors.append(handles[file].get_tensor(fk))
                except Exception as exc:  # SafetensorError, OSError
                    raise WeightsError(f"reading {fk!r} from {file} failed: {type(exc).__name__}: {exc}") from exc
            yield key, tensors[0] if len(tensors) == 1 else torch.cat(tensors, 0)


# --- key spaces of the parts -------------------------------------------------------------------


def part_prefixes(model: Any, section: str) -> list[tuple[str, str]] | None:
    """``[(part prefix, model prefix), ...]`` for a spec section; None when no module is built for it.

    ``encoders.x`` -> ``[("", "encoders.x.")]``; ``encoders.x.projector`` -> ``projectors.x.``;
    ``fusion`` -> ``fusion.`` and ``inserts.`` -> ``backbone.inserts.``; ``backbone`` ->
    ``backbone.`` (without its inserts); ``heads.x`` -> ``heads.x.``.
    """
    if section == "backbone":
        return [("", "backbone.")]
    if section == "fusion":
        out = [("", "fusion.")]
        if len(model.backbone.inserts):
            out.append(("inserts.", "backbone.inserts."))
        return out
    parts = section.split(".")
    if parts[0] == "encoders" and len(parts) == 3 and parts[2] == "projector":
        return [("", f"projectors.{parts[1]}.")] if parts[1] in model.projectors else None
    if parts[0] in ("encoders", "heads") and len(parts) == 2:
        return [("", f"{section}.")]
    raise ValueError(f"not a component section: {section!r}")


def part_keys(model: Any, section: str, shapes: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, str]:
    """Part key -> model key for every parameter and persistent buffer of a section's component."""
    prefixes = part_prefixes(model, section)
    if prefixes is None:
        return {}
    if shapes is None:
        shapes = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}
    out: dict[str, str] = {}
    for part_prefix, model_prefix in prefixes:
        for key in shapes:
            if not key.startswith(model_prefix):
                continue
            rest = key[len(model_prefix) :]
            if section == "backbone" and rest.startswith("inserts."):
                continue  # the fusion's
            out[part_prefix + rest] = key
    return out


# --- planning (headers only) ----------------------------------------------------------------------


@dataclass
class WeightsPlan:
    """What :func:`plan_weights` found for one section: the mapping, or the problems.

    ``assign`` maps model keys to ``(file key, transpose)`` in ``source``; ``pieces`` maps model keys
    to tensors of a folder's files to concatenate; ``loaded``/``fresh`` are part keys;
    ``ignored`` is ``(file key, reason)``; ``problems`` are messages (empty: ready to load).
    """

    section: str
    source: str
    format: str
    assign: dict[str, tuple[str, bool]] = field(default_factory=dict)
    loaded: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: model key -> ``[(file, file key), ...]`` concatenated along dim 0 (a model folder's
    #: shards, ``format = "hf"``); read by :func:`read_pieces`, beside ``assign``.
    pieces: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    #: a line for the load report (a model folder: what its config.json describes)
    note: str = ""


def _gpt2_key(key: str, has_wte: bool) -> tuple[str | None, bool, str | None]:
    """A GPT-2 key -> (backbone key or None, transposed, reason it is ignored or None)."""
    from .gpt2 import LM_HEAD, _hf_key_to_mmcore

    k = key.removeprefix("transformer.")
    if k.endswith((".attn.bias", ".attn.masked_bias")):
        return None, False, "GPT-2 causal-mask buffer (the backbone computes its masks)"
    if k == LM_HEAD:
        return None, False, "GPT-2's output projection; an lm head tied to the text encoder's embedding replaces it"
    if k == "wte.weight" and not has_wte:
        return (
            None,
            False,
            "GPT-2's token embedding: here the text encoder owns it; give that encoder "
            'weights_from = {path = ..., prefix = {"transformer.wte." = "token_embedding."}}',
        )
    conv = _hf_key_to_mmcore(k)
    if conv is None:
        return None, False, None
    return conv[0], conv[1], None


def _gpt2_config_problems(path: Path, model: Any) -> list[str]:
    """Architecture options a ``config.json`` next to a GPT-2 file fixes, compared with the backbone's."""
    cfg_file = path.parent / "config.json"
    if not cfg_file.is_file():
        return []
    from .gpt2 import config_from_hf

    try:
        hf = json.loads(cfg_file.read_text(encoding="utf-8"))
        want, _ = config_from_hf(hf)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return [f"{cfg_file}: cannot read it as a GPT-2 config: {exc}"]
    have = model.backbone.config
    out = []
    for name in ("width", "depth", "heads", "context_length", "norm", "norm_eps", "positions", "mlp", "bias"):
        a, b = getattr(have, name), getattr(want, name)
        if a != b:
            out.append(f"backbone.{name} is {a!r} but {cfg_file} describes {b!r}")
    if have.mlp_hidden != want.mlp_hidden:
        out.append(
            f"backbone.mlp_ratio gives a feed-forward of {have.mlp_hidden} but {cfg_file} has {want.mlp_hidden} "
            f"(mlp_ratio = {want.mlp_hidden / want.width:g})"
        )
    return out


def plan_weights(
    model: Any, section: str, source: WeightsSource, shapes: Mapping[str, tuple[int, ...]] | None = None
) -> WeightsPlan:
    """Map a weights file's keys onto one section's component, reading the file's header only."""
    path = Path(source.path)
    plan = WeightsPlan(section, str(path), source.format)
    if source.format == "hf":  # a model folder fills several sections: mmcore.hf.plan_hf plans it
        plan.problems.append(
            "format = 'hf' names a Hugging Face model folder; give it in [backbone] (it fills the text embedding "
            "and the LM head too)"
        )
        return plan
    if shapes is None:
        shapes = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}
    keys = part_keys(model, section, shapes)
    if part_prefixes(model, section) is None:
        plan.problems.append(
            "no projector is built for this encoder (its width equals the backbone's), so there is nothing to load"
        )
        return plan
    if path.suffix.lower() in (".bin", ".pt", ".pth", ".ckpt", ".pkl"):
        plan.problems.append(
            f"{path}: only .safetensors files are read ({path.suffix} files are pickles, which can run code when "
            "loaded); convert it with safetensors.torch.save_file in a trusted environment"
        )
        return plan
    problem = regular_file_problem(path)  # a folder or /dev/zero is named as such, and never read
    if problem is not None:
        hint = "; a safetensors file is expected" if problem.startswith("is ") else ""
        if path.is_dir() and (path / "config.json").is_file():
            hint = "; a Hugging Face model folder (Llama, Qwen2, Mistral) loads in [backbone] with format = 'hf'"
        plan.problems.append(f"{path}: {problem}{hint}")
        return plan
    try:
        header, _ = read_header(path)
    except (OSError, ValueError) as exc:
        plan.problems.append(str(exc))
        return plan

    # 1. prefix mapping
    mapped: dict[str, str] = {}  # file key -> part key (before the format)
    used: set[str] = set()
    for fk in header:
        if not source.prefix:
            mapped[fk] = fk
            continue
        best = max((p for p in source.prefix if fk.startswith(p)), key=len, default=None)
        if best is None:
            plan.ignored.append((fk, "outside the prefix mapping"))
            continue
        used.add(best)
        mapped[fk] = source.prefix[best] + fk[len(best) :]
    for p in source.prefix:
        if p not in used:
            starts = sorted({k.split(".")[0] + "." if "." in k else k for k in header})
            plan.problems.append(f"prefix {p!r} matches no key of {path.name}; its keys begin with: {_listing(starts)}")
    # 2. ignore patterns
    hits = {pat: 0 for pat in source.ignore}
    for fk in list(mapped):
        pats = [pat for pat in source.ignore if fnmatch.fnmatchcase(fk, pat)]
        if pats:
            for pat in pats:
                hits[pat] += 1
            plan.ignored.append((fk, f"ignore = {pats[0]!r}"))
            del mapped[fk]
    for pat, n in hits.items():
        if n == 0:
            plan.problems.append(f"ignore pattern {pat!r} matches no key of {path.name}")
    # 3. layout
    fmt = source.format
    if fmt == "auto":
        fmt = "gpt2" if section == "backbone" and any(_GPT2_BLOCK.match(k) for k in mapped.values()) else "mmcore"
    if fmt == "gpt2" and section != "backbone":
        plan.problems.append("format = 'gpt2' describes a backbone's file; use it in [backbone] only")
        return plan
    plan.format = fmt
    has_wte = "wte.weight" in keys
    targets: dict[str, tuple[str, bool]] = {}  # part key -> (file key, transpose)
    unmatched: list[str] = []
    mismatched: list[str] = []
    duplicates: list[str] = []
    wrong: set[str] = set()  # part keys whose file tensor has another shape
    for fk, pk in mapped.items():
        transpose = False
        if fmt == "gpt2":
            converted, transpose, reason = _gpt2_key(pk, has_wte)
            if reason is not None:
                plan.ignored.append((fk, reason))
                continue
            if converted is None:
                unmatched.append(fk)
                continue
            pk = converted
        if pk not in keys:
            unmatched.append(fk if pk == fk else f"{fk} -> {pk}")
            continue
        if pk in targets:
            duplicates.append(f"{targets[pk][0]} and {fk} -> {pk}")
            continue
        file_shape = header[fk][1]
        if transpose and len(file_shape) == 2:
            file_shape = file_shape[::-1]
        want = shapes[keys[pk]]
        if tuple(file_shape) != tuple(want):
            mismatched.append(f"{pk}: component {list(want)}, file {list(file_shape)} ({fk})")
            wrong.add(pk)
            continue
        targets[pk] = (fk, transpose)
    if unmatched:
        plan.problems.append(
            f"{len(unmatched)} key(s) of {path.name} match nothing in the component: {_listing(unmatched)}; "
            f"the component's keys are: {_listing(sorted(keys))}"
        )
    if mismatched:
        plan.problems.append(f"{len(mismatched)} shape(s) differ: " + "; ".join(mismatched[:_SHOW]))
    if duplicates:
        plan.problems.append("several file keys map to one parameter: " + "; ".join(duplicates[:_SHOW]))
    missing = [k for k in keys if k not in targets and k not in wrong]
    if missing and not source.allow_missing:
        if len(missing) == len(keys):
            plan.problems.append(f"no key of {path.name} maps onto the component's keys: {_listing(missing)}")
        else:
            plan.problems.append(
                f"{path.name} lacks {len(missing)} of the component's {len(keys)} keys: {_listing(missing)} "
                "(set allow_missing = true to keep their fresh initialisation)"
            )
    if fmt == "gpt2":
        plan.problems += _gpt2_config_problems(path, model)
    plan.assign = {keys[pk]: v for pk, v in targets.items()}
    plan.loaded = [k for k in keys if k in targets]
    plan.fresh = missing
    return plan


def load_planned(model: Any, plan: WeightsPlan) -> None:
    """Read the planned tensors from the file and copy them into ``model`` (dtype converted)."""
    import torch
    from safetensors import safe_open

    from .errors import WeightsError

    if plan.pieces:  # a model folder: each tensor copied in as it is read (never two copies of the model)
        targets = model.state_dict(keep_vars=True)
        try:
            with torch.no_grad():
                for key, t in read_pieces(plan.pieces):
                    targets[key].copy_(t)
        except WeightsError as exc:
            raise WeightsError(f"{plan.section}.weights_from: {exc}") from exc
    if not plan.assign:
        return
    state = {}
    try:
        with safe_open(plan.source, framework="pt", device="cpu") as f:
            for model_key, (file_key, transpose) in plan.assign.items():
                t = f.get_tensor(file_key)
                state[model_key] = t.t().contiguous() if transpose and t.dim() == 2 else t
    except Exception as exc:  # SafetensorError, OSError
        raise WeightsError(
            f"{plan.section}.weights_from: reading {plan.source} failed: {type(exc).__name__}: {exc}"
        ) from exc
    with torch.no_grad():
        result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:  # planned keys always exist; this guards the invariant
        raise WeightsError(f"{plan.section}.weights_from: unexpected keys {result.unexpected_keys[:_SHOW]}")


# --- the report ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartReport:
    """Where one component's weights came from.

    Attributes:
        section: the spec section (``encoders.image``, ``encoders.image.projector``, ``backbone``...).
        source: the weights file, or None (freshly initialised).
        format: ``mmcore`` or ``gpt2`` (None without a source).
        loaded: the component's keys read from the file.
        fresh: its keys that kept their initialisation.
        ignored: ``(file key, reason)`` for the file's keys that were not used.
        note: one line about the source (a model folder: the sizes its config.json gave), or "".
    """

    section: str
    source: str | None
    format: str | None
    loaded: tuple[str, ...] = ()
    fresh: tuple[str, ...] = ()
    ignored: tuple[tuple[str, str], ...] = ()
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "source": self.source,
            "format": self.format,
            "loaded": list(self.loaded),
            "fresh": list(self.fresh),
            "ignored": [list(x) for x in self.ignored],
            "note": self.note,
        }


@dataclass(frozen=True)
class LoadReport:
    """Per component: loaded from which file, initialised fresh, ignored. ``str()`` gives a table.

    Attached to a built model as ``model.load_report``.
    """

    parts: tuple[PartReport, ...]

    def __getitem__(self, section: str) -> PartReport:
        for p in self.parts:
            if p.section == section:
                return p
        raise KeyError(
            f"no component section {section!r} in the load report; sections: {[p.section for p in self.parts]}"
        )

    @classmethod
    def from_file(cls, model: Any, spec: Any, path: str) -> LoadReport:
        """Every component loaded in full from one file (a model directory's weights)."""
        shapes = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}
        parts = []
        for section in spec.core_options():
            keys = tuple(part_keys(model, section, shapes))
            if keys or not section.endswith(".projector"):
                parts.append(PartReport(section, path, "mmcore", keys, (), ()))
        return cls(tuple(parts))

    @property
    def sources(self) -> dict[str, str]:
        """Section -> weights file, for the sections that have one."""
        return {p.section: p.source for p in self.parts if p.source is not None}

    def to_dict(self) -> dict[str, Any]:
        return {"parts": [p.to_dict() for p in self.parts]}

    def __str__(self) -> str:
        def src(p: PartReport) -> str:
            if p.source is None:
                return "(fresh)"
            rel = os.path.relpath(p.source) if not p.source.startswith("<") else p.source
            shown = rel if len(rel) < len(p.source) else p.source
            return f"{shown} ({p.format})"

        head = ("component", "weights", "loaded", "fresh", "ignored")
        body = [(p.section, src(p), str(len(p.loaded)), str(len(p.fresh)), str(len(p.ignored))) for p in self.parts]
        widths = [max(len(r[i]) for r in [head, *body]) for i in range(5)]

        def fmt(r: tuple[str, ...]) -> str:
            return "  ".join(
                [r[0].ljust(widths[0]), r[1].ljust(widths[1])] + [r[i].rjust(widths[i]) for i in (2, 3, 4)]
            )

        lines = ["weights", fmt(head), "-" * len(fmt(head)), *map(fmt, body)]
        from .lora import condense

        for p in self.parts:
            if p.note:
                lines.append(f"  {p.section}: {p.note}")
            if p.source is not None and p.fresh:
                lines.append(f"  {p.section}: fresh (not in the file): {condense(p.fresh, 6)}")
            reasons: dict[str, list[str]] = {}
            for key, why in p.ignored:
                reasons.setdefault(why, []).append(key)
            for why, keys in reasons.items():
                lines.append(f"  {p.section}: ignored {condense(keys, 4)}: {why}")
        return "\n".join(line.rstrip() for line in lines)
