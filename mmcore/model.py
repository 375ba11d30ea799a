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

__all__ = [
    "MultimodalGPT",
    "Summary",
    "SummaryRow",
    "apply_policy",
    "build",
    "build_component",
    "check_compatibility",
    "validate_build",
]


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
        #: where each component's weights came from (:class:`mmcore.weights.LoadReport`); set by build
        self.load_report: Any = None

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
        hidden = self.backbone.run_sequence(seq, mode)  # (B, L, D)
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
        """Parameters per component: trainable, frozen and LoRA adapters (shared weights counted once).

        The layers a fusion inserts into the backbone count as the fusion's (its training
        policy governs them).
        """
        from .lora import is_lora_param

        rows: dict[str, dict[str, Any]] = {}
        for part, module in self.parts():
            rows[part] = {"component": _component_name(self, part, module), "params": 0, "trainable": 0, "lora": 0}
            rows[part]["names"] = []
        for name, p in self.named_parameters():  # deduplicated: a shared tensor appears once
            part = _part_of(name)
            if part not in rows:
                continue
            r = rows[part]
            r["params"] += p.numel()
            if p.requires_grad:
                r["trainable"] += p.numel()
                r["names"].append(name[len(part) + 1 :] if not name.startswith("backbone.inserts.") else name[9:])
            if is_lora_param(name):
                r["lora"] += p.numel()
        policies = _policies(self)
        return Summary(
            self.spec.name if self.spec else "model",
            [
                SummaryRow(
                    part,
                    r["component"],
                    r["params"],
                    r["trainable"],
                    lora=r["lora"],
                    train=policies.get(part, "full"),
                    trainable_names=tuple(r["names"]),
                )
                for part, r in rows.items()
            ],
        )


def _part_of(param: str) -> str:
    """The summary part a model parameter name belongs to (inserted layers: the fusion)."""
    if param.startswith("backbone.inserts."):
        return "fusion"
    head, _, rest = param.partition(".")
    if head in ("encoders", "projectors", "heads"):
        return f"{head}.{rest.partition('.')[0]}"
    return head


def _section_of(part: str) -> str:
    """Summary part -> spec section (``projectors.x`` -> ``encoders.x.projector``)."""
    return f"encoders.{part[11:]}.projector" if part.startswith("projectors.") else part


def _policies(model: MultimodalGPT) -> dict[str, str]:
    if model.spec is None:
        return {}
    core = model.spec.core_options()
    return {part: core[_section_of(part)].train for part, _ in model.parts() if _section_of(part) in core}


def _component_name(model: MultimodalGPT, part: str, module: nn.Module) -> str:
    if model.spec is not None:
        for path, c in model.spec.components():
            if path == part or (part.startswith("projectors.") and path == f"encoders.{part[11:]}.projector"):
                return c.component
    return type(module).__name__


@dataclass(frozen=True)
class SummaryRow:
    """One component's parameter counts.

    ``train`` is its policy (``full``, ``frozen``, ``lora``); ``lora`` counts the adapter
    parameters (trainable, included in ``params`` and ``trainable``); ``trainable_names`` are
    the names (inside the component) of the parameters that train.
    """

    part: str
    component: str
    params: int
    trainable: int
    lora: int = 0
    train: str = "full"
    trainable_names: tuple[str, ...] = ()

    @property
    def frozen(self) -> int:
        return self.params - self.trainable


@dataclass(frozen=True)
class Summary:
    """Parameter counts per component; ``str()`` gives a table, then which parameters train
    in every component that does not train in full."""

    name: str
    rows: list[SummaryRow]

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def trainable(self) -> int:
        return sum(r.trainable for r in self.rows)

    @property
    def lora(self) -> int:
        return sum(r.lora for r in self.rows)

    def __str__(self) -> str:
        from .lora import condense

        with_lora = any(r.lora for r in self.rows)
        head = ["component", "type", "train", "params", "trainable", "frozen"] + (["lora"] if with_lora else [])
        body = [
            [r.part, r.component, r.train, _n(r.params), _n(r.trainable), _n(r.frozen)]
            + ([_n(r.lora)] if with_lora else [])
            for r in self.rows
        ]
        foot = ["total", "", "", _n(self.params), _n(self.trainable), _n(self.params - self.trainable)]
        foot += [_n(self.lora)] if with_lora else []
        cols = len(head)
        widths = [max(len(str(row[i])) for row in [head, *body, foot]) for i in range(cols)]

        def fmt(row: Sequence[str]) -> str:
            left = [str(row[i]).ljust(widths[i]) for i in range(3)]
            right = [str(row[i]).rjust(widths[i]) for i in range(3, cols)]
            return "  ".join(left + right).rstrip()

        rule = "-" * len(fmt(head))
        lines = [f"model {self.name!r}", fmt(head), rule, *map(fmt, body), rule, fmt(foot)]
        partial = [r for r in self.rows if r.train != "full" or r.trainable != r.params]
        if partial:
            lines.append("trains:")
            for r in partial:
                what = condense(r.trainable_names) if r.trainable_names else "nothing"
                lines.append(f"  {r.part}: {what}")
        return "\n".join(lines)


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
    weights: bool = True,
) -> MultimodalGPT:
    """Compose a :class:`MultimodalGPT` from a spec (a :class:`Spec`, a TOML path or a dict).

    In order:

    1. every component is built by its factory with its validated options;
    2. :func:`check_compatibility` checks how the parts fit (widths, token counts against the
       context length, special tokens, processor and encoder pairing, LoRA targets, and the
       headers of the ``weights_from`` files) and raises one :class:`SpecError` listing every
       problem before any weights are read;
    3. ``weights_from`` files are loaded (``weights=False`` skips them: :func:`mmcore.load`
       assigns a model directory's weights instead); ``model.load_report`` (a
       :class:`~mmcore.weights.LoadReport`) says what came from where;
    4. the training policies apply: ``frozen`` components stop requiring gradients, ``lora``
       components are frozen and get adapters on their target layers.

    Built on ``device`` (``"meta"`` skips initialisation and weight files, for loading).
    """
    reg = registry or _registry()
    spec = _as_spec(spec, reg)
    ctx = torch.device(device) if device is not None else None
    meta = ctx is not None and ctx.type == "meta"
    with ctx if ctx is not None else contextlib.nullcontext():
        model, plans = _compose(spec, reg, read_weights=weights and not meta)
        report = _load_sources(model, spec, plans)
        apply_policy(model, spec)
    model.load_report = report
    if dtype is not None:
        model.to(dtype=dtype)
    from .plugins import get_manager

    if registry is None:
        get_manager().call_model_built(model, spec)
    return model


def validate_build(spec: Spec | str | Path | Mapping[str, Any], *, registry: Registry | None = None) -> MultimodalGPT:
    """What ``mmcore spec validate --build`` runs: :func:`build`'s own steps on the meta device
    (no memory, no initialisation), with the ``weights_from`` files' headers read but no tensor
    loaded.

    Steps 1, 2 and 4 of :func:`build` run exactly as there (the same code: the compatibility
    checks see the components before the LoRA adapters are added, as the builder does), so a
    spec passes here if and only if :func:`build` accepts it (the weights' contents aside).
    Raises the :class:`SpecError` :func:`build` would; returns the meta model.
    """
    reg = registry or _registry()
    spec = _as_spec(spec, reg)
    with torch.device("meta"):
        model, _ = _compose(spec, reg, read_weights=True)
        apply_policy(model, spec)
    return model


def _as_spec(spec: Spec | str | Path | Mapping[str, Any], reg: Registry) -> Spec:
    if isinstance(spec, (str, Path)):
        return load_spec(spec, registry=reg)
    return spec if isinstance(spec, Spec) else parse_spec(spec, registry=reg)


def _compose(spec: Spec, reg: Registry, *, read_weights: bool) -> tuple[MultimodalGPT, dict[str, Any]]:
    """Steps 1 and 2 of :func:`build`: the parts, then every compatibility problem as one
    :class:`SpecError`; returns the model (no weights loaded, no policy applied) and the weights plans."""
    model = _build(spec, reg)
    issues, plans = _check(model, spec, read_weights=read_weights)
    if issues:
        raise SpecError(issues, file=spec.file)
    return model, plans


def _build(spec: Spec, reg: Registry) -> MultimodalGPT:
    cfg = spec.backbone
    width = cfg.width
    base_dir = Path(spec.file).resolve().parent if spec.file else Path.cwd()
    processors: dict[str, Processor] = {}
    encoders: dict[str, Encoder] = {}
    projectors: dict[str, nn.Module] = {}
    issues: list[SpecIssue] = []  # components' own checks of their options, all of them
    for name, cs in spec.encoders.items():
        comp = reg.get("encoder", cs.component)
        try:
            proc_factory = _guard(comp, f"encoders.{name}", comp.load_processor)
            proc = None
            if proc_factory is not None:
                proc = _guard(
                    comp, f"encoders.{name} (processor)", lambda f=proc_factory, o=cs.options: call_factory(f, o)
                )
                if not (callable(proc) and callable(getattr(proc, "collate", None))):
                    raise PluginError(
                        f"encoders.{name}: the processor factory of {comp.key} from {comp.source} returned "
                        f"{type(proc).__name__}, not a Processor (callable, with collate)"
                    )
                processors[name] = proc
            enc = _call(comp, cs.options, f"encoders.{name}", width=width, processor=proc, base_dir=base_dir)
        except SpecError as exc:
            issues += exc.issues
            continue
        encoders[name] = enc
        out = getattr(enc, "out_dim", None)
        if not isinstance(out, int):
            raise PluginError(f"encoders.{name}: {comp.key} from {comp.source} has no integer out_dim")
        if out != width:
            pc = cs.projector
            if pc is None:  # a Spec built by hand without a projector
                issues.append(
                    SpecIssue(
                        f"encoders.{name}.projector",
                        f"the encoder's width is {out}, the backbone's {width}: it needs a projector",
                        spec.file,
                    )
                )
                continue
            pcomp = reg.get("projector", pc.component)
            try:
                projectors[name] = _call(pcomp, pc.options, f"encoders.{name}.projector", in_dim=out, out_dim=width)
            except SpecError as exc:
                issues += exc.issues
    if issues:
        raise SpecError(issues, file=spec.file)
    fcomp = reg.get("fusion", spec.fusion.component)
    fusion = _call(
        fcomp, spec.fusion.options, "fusion", width=width, encoders=encoders, backbone=cfg, base_dir=base_dir
    )
    inserts = _guard(fcomp, "fusion", lambda: fusion.inserts())
    if inserts and not (isinstance(inserts, Mapping) and all(isinstance(m, nn.Module) for m in inserts.values())):
        raise PluginError(f"fusion: {fcomp.key} from {fcomp.source}: inserts() must return {{block index: nn.Module}}")
    backbone = GPT(cfg, inserts=inserts or None)
    heads = {}
    for name, hs in spec.heads.items():
        hcomp = reg.get("head", hs.component)
        try:
            heads[name] = _call(
                hcomp, hs.options, f"heads.{name}", width=width, encoders=encoders, backbone=cfg, base_dir=base_dir
            )
        except SpecError as exc:
            issues += exc.issues
    if issues:
        raise SpecError(issues, file=spec.file)
    model = MultimodalGPT(backbone, encoders, fusion, heads, projectors, processors)
    model.spec = spec
    return model


# --- compatibility checks ----------------------------------------------------------------------


def check_compatibility(model: MultimodalGPT, spec: Spec | None = None, *, weights: bool = True) -> list[SpecIssue]:
    """Every way the parts of a built model do not fit together, as located spec issues.

    Checks: encoder and projector widths; the longest fused sequence against the backbone's
    ``context_length``; special tokens the fusion, the heads and the tasks' objectives need
    from the text processors; that each processor reads its encoder's modality and produces
    ids within its vocabulary; that LoRA targets match layers; and, with ``weights``, the
    ``weights_from`` files against the components (headers only: names and shapes). An empty
    list means the model is consistent. :func:`build` raises them all as one :class:`SpecError`.
    """
    spec = spec if spec is not None else model.spec
    if spec is None:
        raise ValueError("check_compatibility needs the model's spec")
    return _check(model, spec, read_weights=weights)[0]


def _check(model: MultimodalGPT, spec: Spec, *, read_weights: bool) -> tuple[list[SpecIssue], dict[str, Any]]:
    issues: list[SpecIssue] = []

    def add(path: str, message: str, hint: str | None = None) -> None:
        issues.append(SpecIssue(path, message, spec.file, hint))

    width = model.backbone.config.width
    reg = _registry_or_none()
    # widths and pairing
    for name, enc in model.encoders.items():
        out = getattr(enc, "out_dim", width)
        proj = model.projectors[name] if name in model.projectors else None
        if proj is not None:
            pin, pout = getattr(proj, "in_dim", None), getattr(proj, "out_dim", None)
            if isinstance(pin, int) and pin != out:
                add(f"encoders.{name}.projector", f"the projector reads width {pin}, the encoder produces {out}")
            if isinstance(pout, int) and pout != width:
                add(f"encoders.{name}.projector", f"the projector produces width {pout}, the backbone's is {width}")
        elif out != width:
            add(f"encoders.{name}", f"the encoder produces width {out}, the backbone's is {width}, and no projector")
        proc = model.processors.get(name)
        declared = None
        cs = spec.encoders.get(name)
        if reg is not None and cs is not None and f"encoder:{cs.component}" in reg:
            declared = reg.get("encoder", cs.component).modality
        kinds = {
            "registration": declared,
            "encoder": getattr(enc, "modality", None) or None,
            "processor": getattr(proc, "modality", None) or None if proc is not None else None,
        }
        seen = {v for v in kinds.values() if v}
        if len(seen) > 1:
            add(
                f"encoders.{name}",
                "the encoder and its processor read different modalities: "
                + ", ".join(f"{k} {v!r}" for k, v in kinds.items() if v),
            )
        pv, ev = getattr(proc, "vocab_size", None), getattr(enc, "vocab_size", None)
        if isinstance(pv, int) and isinstance(ev, int) and pv > ev:
            add(
                f"encoders.{name}",
                f"the processor produces token ids up to {pv - 1} but the encoder embeds only {ev} ids",
            )
    _check_special_tokens(model, spec, add)
    _check_context(model, spec, add)
    _check_lora_targets(model, spec, add)
    plans: dict[str, Any] = {}
    if read_weights:
        from .lora import unadapted_shapes
        from .weights import plan_weights

        shapes = unadapted_shapes(model)  # a built model's adapters aside: the names the files use
        for section, core in spec.core_options().items():
            if core.weights_from is None:
                continue
            plan = plan_weights(model, section, core.weights_from, shapes)
            for problem in plan.problems:
                add(f"{section}.weights_from", problem)
            plans[section] = plan
    return issues, plans


def _check_special_tokens(model: MultimodalGPT, spec: Spec, add: Any) -> None:
    """Tokens named by ``special_tokens_needed`` (fusion, heads) and by the tasks' objectives."""
    text_inputs = [k for k, e in model.encoders.items() if getattr(e, "modality", "") == "text"]
    needs: list[tuple[str, str, str]] = []  # (input, token, who, as a section path)
    for section, module in [("fusion", model.fusion), *((f"heads.{k}", h) for k, h in model.heads.items())]:
        wanted = getattr(module, "special_tokens_needed", None) or ()
        if isinstance(wanted, Mapping):
            needs += [(inp, tok, section) for inp, toks in wanted.items() for tok in toks]
        else:
            needs += [(inp, tok, section) for inp in text_inputs for tok in wanted]
    reg = _registry()
    for tname, task in spec.tasks.items():
        key = f"objective:{task.objective}"
        toks = reg.get("objective", task.objective).special_tokens if key in reg else ()
        if task.text_input in model.processors:  # the objective's registration names them
            needs += [(task.text_input, tok, f"tasks.{tname}") for tok in toks]
    for inp, tok, who in needs:
        proc = model.processors.get(inp)
        if proc is None:
            add(who, f"needs the special token {tok} in input {inp!r}, which has no processor")
            continue
        have = getattr(proc, "special_tokens", None)
        if not isinstance(have, Mapping):
            add(who, f"needs the special token {tok} but the processor of {inp!r} lists no special_tokens")
        elif tok not in have:
            add(
                who,
                f"needs the special token {tok} but the processor of encoders.{inp} has none",
                f"its special tokens: {', '.join(have) or '(none)'}",
            )


def _max_tokens(enc: nn.Module, proc: Any) -> int | None:
    """The most tokens an encoder produces for one sample, when it or its processor says."""
    for value in (getattr(enc, "max_tokens", None), getattr(enc, "num_tokens", None)):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    value = getattr(proc, "max_length", None) if proc is not None else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _check_context(model: MultimodalGPT, spec: Spec, add: Any) -> None:
    """The longest fused sequence the inputs can make must fit the backbone's context_length."""
    counts = {k: _max_tokens(e, model.processors.get(k)) for k, e in model.encoders.items()}
    n = model.fusion.max_sequence_length(dict(counts))  # the core's fusions answer as a plugin's does
    if n is None:
        return
    known = ", ".join(f"{m}: {c} tokens" for m, c in counts.items() if c is not None)
    total, parts = int(n), [f"{spec.fusion.component} fusion of {known}"]
    ctx = model.backbone.config.context_length
    if total > ctx:
        text = [k for k, e in model.encoders.items() if getattr(e, "modality", "") == "text"]
        hint = f"raise backbone.context_length to at least {total}"
        if text:
            hint += " or lower " + " / ".join(f"encoders.{k}.max_length" for k in text)
        add(
            "backbone.context_length",
            f"the longest fused sequence has {total} positions ({'; '.join(parts)}), more than context_length = {ctx}",
            hint,
        )


def _policy_groups(model: MultimodalGPT, section: str) -> list[tuple[nn.Module, tuple[str, ...]]]:
    """The modules a section's training policy governs, each with the prefixes it leaves alone."""
    if section == "backbone":
        return [(model.backbone, ("inserts",))]
    if section == "fusion":
        return [(model.fusion, ()), *((m, ()) for m in model.backbone.inserts.values())]
    parts = section.split(".")
    if len(parts) == 3:
        return [(model.projectors[parts[1]], ())] if parts[1] in model.projectors else []
    container = model.encoders if parts[0] == "encoders" else model.heads
    return [(container[parts[1]], ())]


def _check_lora_targets(model: MultimodalGPT, spec: Spec, add: Any) -> None:
    from .lora import adapted_layers, condense, lora_candidates, match_targets

    for section, core in spec.core_options().items():
        if core.train != "lora" or core.lora is None:
            continue
        groups = _policy_groups(model, section)
        # the layers a built model has wrapped already count as matched, as they were when built
        names = [n for module, ex in groups for n in lora_candidates(module, ex) + adapted_layers(module, ex)]
        _, unused = match_targets(names, core.lora.targets)
        if unused:
            add(
                f"{section}.lora.targets",
                f"{unused} match no linear layer of the component",
                f"its linear layers: {condense(names) or '(none)'}",
            )


def _load_sources(model: MultimodalGPT, spec: Spec, plans: Mapping[str, Any]) -> Any:
    """Load every planned weights file; the report covers every component section."""
    from .weights import LoadReport, PartReport, load_planned, part_keys

    shapes = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}
    parts = []
    for section in spec.core_options():
        keys = list(part_keys(model, section, shapes))
        if section.endswith(".projector") and not keys:
            continue  # no projector was built
        plan = plans.get(section)
        if plan is None:
            parts.append(PartReport(section, None, None, (), tuple(keys), ()))
            continue
        load_planned(model, plan)
        parts.append(
            PartReport(section, plan.source, plan.format, tuple(plan.loaded), tuple(plan.fresh), tuple(plan.ignored))
        )
    return LoadReport(tuple(parts))


def apply_policy(model: MultimodalGPT, spec: Spec) -> None:
    """Apply every section's ``train`` policy: freeze, or freeze and add LoRA adapters.

    ``full`` leaves the component as built. The layers a fusion inserts into the backbone
    follow the fusion's policy, never the backbone's.
    """
    from .lora import apply_lora

    for section, core in spec.core_options().items():
        if core.train == "full":
            continue
        for module, exclude in _policy_groups(model, section):
            if core.train == "frozen":
                for name, p in module.named_parameters():
                    if not any(name.startswith(e + ".") for e in exclude):
                        p.requires_grad_(False)
            else:
                lc = core.lora
                assert lc is not None  # CoreOptions fills it in for train = "lora"
                apply_lora(
                    module,
                    rank=lc.rank,
                    alpha=lc.alpha,
                    targets=lc.targets,
                    dropout=lc.dropout,
                    exclude=exclude,
                    strict=False,  # targets were checked over the whole group
                )
        if section == "fusion" and core.train == "frozen":
            model.fusion.requires_grad_(False)  # a fusion may forward it to layers it holds


def _call(comp: Component, options: Any, where: str, **context: Any) -> Any:
    obj = _guard(comp, where, lambda: call_factory(comp.load_factory(), options, **context))
    if not isinstance(obj, nn.Module):  # every component kind is a module (mmcore.interfaces)
        raise PluginError(
            f"{where}: the factory of {comp.key} from {comp.source} returned {type(obj).__name__}, not a torch.nn.Module"
        )
    return obj


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


def _registry_or_none() -> Registry | None:
    try:
        return _registry()
    except Exception:  # modality cross-check only; the build itself already used a registry
        return None
