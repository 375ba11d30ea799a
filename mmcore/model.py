"""Composition: encoders -> projectors -> fusion -> GPT backbone -> heads, as one nn.Module.

:class:`MultimodalGPT` takes built modules (compose it yourself from Python objects),
and :func:`build` is the only code that reads a spec: it looks each component up in the
registry, validates its options, calls its factory, and hands the results to
:class:`MultimodalGPT`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .backbone import GPT
from .config import BackboneConfig
from .errors import InputError, MMCoreError, PluginError, SpecError, SpecIssue
from .interfaces import Encoder, Fusion, Head, Processor
from .registry import Component, Registry, call_factory
from .spec import Spec, load_spec, parse_spec
from .types import Batch, FusedSequence, ModelOutput, Tokens

__all__ = ["MultimodalGPT", "Summary", "build", "build_component"]


class MultimodalGPT(nn.Module):
    """A multimodal GPT: every part is a plain module you can hold, inspect and replace.

    Args:
        backbone: the :class:`mmcore.GPT` (built with ``inserts=fusion.inserts()`` when the
            fusion inserts layers).
        encoders: input name -> :class:`Encoder` (the input name is the record field it reads).
        fusion: the :class:`Fusion`.
        heads: head name -> :class:`Head`.
        projectors: input name -> projector, for encoders whose ``out_dim`` differs from
            the backbone width.
        processors: input name -> :class:`Processor` (not modules: they run in data loader
            workers). Used by :meth:`preprocess` and saved with the model.
    """

    def __init__(
        self,
        backbone: GPT,
        encoders: Mapping[str, Encoder],
        fusion: Fusion,
        heads: Mapping[str, Head] | None = None,
        projectors: Mapping[str, nn.Module] | None = None,
        processors: Mapping[str, Processor] | None = None,
    ):
        super().__init__()
        width = backbone.config.width
        projectors = dict(projectors or {})
        for name, enc in encoders.items():
            out = getattr(enc, "out_dim", width)
            if out != width and name not in projectors:
                raise ValueError(
                    f"encoder {name!r} produces width {out} but the backbone's is {width}: give a projector for it"
                )
        unknown = sorted(set(projectors) - set(encoders))
        if unknown:
            raise ValueError(f"projectors for unknown inputs {unknown}; inputs are {sorted(encoders)}")
        self.encoders = nn.ModuleDict(dict(encoders))
        self.projectors = nn.ModuleDict(projectors)
        self.fusion = fusion
        self.backbone = backbone
        self.heads = nn.ModuleDict(dict(heads or {}))
        self.processors: dict[str, Processor] = dict(processors or {})
        self.spec: Spec | None = None

    @property
    def config(self) -> BackboneConfig:
        return self.backbone.config

    # --- the forward pass --------------------------------------------------------------

    def encode(self, batch: Batch) -> dict[str, Tokens]:
        """Run each encoder (and its projector) on its inputs: name -> Tokens (B, N, D)."""
        tokens = {}
        for name, enc in self.encoders.items():
            inputs = batch.inputs.get(name)
            if inputs is None:
                continue
            t = enc(inputs)
            if name in self.projectors:
                t = Tokens(self.projectors[name](t.embeds), t.mask)
            tokens[name] = t
        if not tokens:
            raise InputError(
                f"the batch has none of the model's inputs {list(self.encoders)}; it has {list(batch.inputs)}"
            )
        return tokens

    def fuse(self, batch: Batch) -> FusedSequence:
        """Encode and fuse: the sequence the backbone reads."""
        return self.fusion(self.encode(batch), batch)

    def forward(
        self,
        batch: Batch,
        *,
        mode: str | None = None,
        heads: Iterable[str] | None = None,
        compute_loss: bool = True,
    ) -> ModelOutput:
        """Encode, fuse, run the backbone and the heads.

        Args:
            batch: a collated :class:`Batch` on the model's device.
            mode: attention mode for this call (``causal``/``prefix``/``bidirectional``);
                default: the backbone's.
            heads: which heads to run (default: all).
            compute_loss: compute each head's loss where the batch has its targets.
        """
        seq = self.fuse(batch)
        hidden = self.backbone(
            embeds=seq.embeds,
            mask=seq.mask,
            positions=seq.positions,
            mode=mode,
            prefix_len=seq.prefix_len,
            padding_side=seq.padding_side,
            context=seq.context,
        )  # (B, L, D)
        names = list(self.heads) if heads is None else list(heads)
        outputs, losses = {}, {}
        total: Tensor | None = None
        for name in names:
            head = self.heads[name]
            out = head(hidden, seq)
            outputs[name] = out
            if compute_loss:
                loss = head.loss(out, batch)
                if loss is not None:
                    losses[name] = loss
                    w = float(getattr(head, "weight", 1.0))
                    total = loss * w if total is None else total + loss * w
        return ModelOutput(hidden=hidden, sequence=seq, outputs=outputs, losses=losses, loss=total)

    # --- data ----------------------------------------------------------------------------

    def preprocess(self, records: Sequence[Mapping[str, Any]], *, targets: Iterable[str] = ("label",)) -> Batch:
        """Turn raw records (``{"text": "...", "image": "a.png", "label": 3}``) into a Batch.

        Each input is run through its processor; a record without an input gets a
        masked-out row. Integer ``targets`` fields present in every record become
        ``batch.targets``.
        """
        inputs = {}
        for name, proc in self.processors.items():
            if not any(name in r for r in records):
                continue
            samples = [
                proc(r[name], where=f"record {i} field {name!r}") if r.get(name) is not None else None
                for i, r in enumerate(records)
            ]
            inputs[name] = proc.collate(samples)
        if not inputs:
            raise InputError(f"no record has any of the model's inputs {list(self.processors)}")
        tgt = {}
        for key in targets:
            if all(key in r for r in records):
                try:
                    tgt[key] = torch.tensor([int(r[key]) for r in records], dtype=torch.long)
                except (TypeError, ValueError) as exc:
                    raise InputError(f"target {key!r} must be an integer in every record: {exc}") from exc
        return Batch(inputs, tgt).to(self.device)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # --- inspection ------------------------------------------------------------------------

    def parts(self) -> list[tuple[str, nn.Module]]:
        """(name, module) for every component, in data-flow order."""
        out: list[tuple[str, nn.Module]] = []
        for k, m in self.encoders.items():
            out.append((f"encoders.{k}", m))
            if k in self.projectors:
                out.append((f"projectors.{k}", self.projectors[k]))
        out.append(("fusion", self.fusion))
        out.append(("backbone", self.backbone))
        out += [(f"heads.{k}", m) for k, m in self.heads.items()]
        return out

    def summary(self) -> "Summary":
        """Parameters per component, trainable and frozen (shared weights counted once)."""
        seen: set[int] = set()
        rows = []
        for name, module in self.parts():
            total = trainable = 0
            for p in module.parameters():
                if id(p) in seen:
                    continue
                seen.add(id(p))
                total += p.numel()
                trainable += p.numel() if p.requires_grad else 0
            rows.append(SummaryRow(name, _component_name(self, name, module), total, trainable))
        return Summary(self.spec.name if self.spec else "model", rows)


def _component_name(model: MultimodalGPT, part: str, module: nn.Module) -> str:
    if model.spec is not None:
        for path, c in model.spec.components():
            if path == part or (part.startswith("projectors.") and path == f"encoders.{part[11:]}.projector"):
                return c.component
    return type(module).__name__


@dataclass(frozen=True)
class SummaryRow:
    part: str
    component: str
    params: int
    trainable: int

    @property
    def frozen(self) -> int:
        return self.params - self.trainable


@dataclass(frozen=True)
class Summary:
    """Parameter counts per component; ``str()`` gives a table."""

    name: str
    rows: list[SummaryRow]

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def trainable(self) -> int:
        return sum(r.trainable for r in self.rows)

    def __str__(self) -> str:
        head = ("component", "type", "params", "trainable", "frozen")
        body = [(r.part, r.component, _n(r.params), _n(r.trainable), _n(r.frozen)) for r in self.rows]
        foot = ("total", "", _n(self.params), _n(self.trainable), _n(self.params - self.trainable))
        widths = [max(len(str(row[i])) for row in [head, *body, foot]) for i in range(5)]

        def fmt(row: Sequence[str]) -> str:
            left = [str(row[i]).ljust(widths[i]) for i in range(2)]
            right = [str(row[i]).rjust(widths[i]) for i in range(2, 5)]
            return "  ".join(left + right).rstrip()

        rule = "-" * len(fmt(head))
        return "\n".join([f"model {self.name!r}", fmt(head), rule, *map(fmt, body), rule, fmt(foot)])


def _n(x: int) -> str:
    return f"{x:,}"


# --- the builder ---------------------------------------------------------------------------


def build_component(
    kind: str, name: str, options: Mapping[str, Any] | None = None, *, registry: Registry | None = None, **context: Any
) -> Any:
    """Build one registered component from Python: ``build_component("encoder", "text.bytes", width=256)``."""
    reg = registry or _registry()
    comp = reg.get(kind, name)
    return _call(comp, comp.config.model_validate(dict(options or {})), kind, **context)


def build(
    spec: Spec | str | Path | Mapping[str, Any],
    *,
    registry: Registry | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> MultimodalGPT:
    """Compose a :class:`MultimodalGPT` from a spec (a :class:`Spec`, a TOML path or a dict).

    Only registered components are built; each factory gets its validated options and
    the modules it needs. Freezing from the spec is applied. Built on ``device`` (use
    ``"meta"`` to skip initialisation before loading weights).
    """
    reg = registry or _registry()
    if isinstance(spec, (str, Path)):
        spec = load_spec(spec, registry=reg)
    elif not isinstance(spec, Spec):
        spec = parse_spec(spec, registry=reg)
    ctx = torch.device(device) if device is not None else None
    with ctx if ctx is not None else contextlib.nullcontext():
        model = _build(spec, reg)
    if dtype is not None:
        model.to(dtype=dtype)
    from .plugins import get_manager

    if registry is None:
        get_manager().call_model_built(model, spec)
    return model


def _build(spec: Spec, reg: Registry) -> MultimodalGPT:
    cfg = spec.backbone
    width = cfg.width
    base_dir = Path(spec.file).resolve().parent if spec.file else Path.cwd()
    processors: dict[str, Processor] = {}
    encoders: dict[str, Encoder] = {}
    projectors: dict[str, nn.Module] = {}
    for name, cs in spec.encoders.items():
        comp = reg.get("encoder", cs.component)
        proc_factory = _guard(comp, f"encoders.{name}", comp.load_processor)
        proc = None
        if proc_factory is not None:
            proc = _guard(comp, f"encoders.{name} (processor)", lambda f=proc_factory, o=cs.options: call_factory(f, o))
            processors[name] = proc
        enc = _call(comp, cs.options, f"encoders.{name}", width=width, processor=proc, base_dir=base_dir)
        encoders[name] = enc
        out = getattr(enc, "out_dim", None)
        if not isinstance(out, int):
            raise PluginError(f"encoders.{name}: {comp.key} from {comp.source} has no integer out_dim")
        if out != width:
            pc = cs.projector
            assert pc is not None  # parse_spec always sets one for encoders
            pcomp = reg.get("projector", pc.component)
            projectors[name] = _call(pcomp, pc.options, f"encoders.{name}.projector", in_dim=out, out_dim=width)
    fcomp = reg.get("fusion", spec.fusion.component)
    fusion = _call(
        fcomp, spec.fusion.options, "fusion", width=width, encoders=encoders, backbone=cfg, base_dir=base_dir
    )
    backbone = GPT(cfg, inserts=fusion.inserts() or None)
    heads = {}
    for name, hs in spec.heads.items():
        hcomp = reg.get("head", hs.component)
        heads[name] = _call(
            hcomp, hs.options, f"heads.{name}", width=width, encoders=encoders, backbone=cfg, base_dir=base_dir
        )
    model = MultimodalGPT(backbone, encoders, fusion, heads, projectors, processors)
    model.spec = spec
    for path, cs in spec.components():
        if cs.freeze:
            model.get_submodule(path).requires_grad_(False)
    if cfg.freeze:
        backbone.requires_grad_(False)
        if not spec.fusion.freeze:  # layers a fusion inserts belong to the fusion's policy (Flamingo)
            for m in backbone.inserts.values():
                m.requires_grad_(True)
    return model


def _call(comp: Component, options: Any, where: str, **context: Any) -> Any:
    return _guard(comp, where, lambda: call_factory(comp.load_factory(), options, **context))


def _guard(comp: Component, where: str, fn: Any) -> Any:
    """Run ``fn``; errors name the spec section and the plugin that provides the component."""
    try:
        return fn()
    except SpecError as exc:  # a component's own check of its options: locate it in the spec
        issues = [SpecIssue(f"{where}.{i.path}" if i.path else where, i.message, i.file, i.hint) for i in exc.issues]
        raise SpecError(issues, file=exc.file) from exc
    except MMCoreError as exc:
        exc.add_note(f"while building {where} ({comp.key} from {comp.source})")
        raise
    except Exception as exc:
        raise PluginError(
            f"{where}: building {comp.key} from {comp.source} failed: {type(exc).__name__}: {exc}"
        ) from exc


def _registry() -> Registry:
    from .plugins import get_registry

    return get_registry()
