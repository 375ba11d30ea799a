"""The builder: a spec -> a :class:`~mmcore.model.MultimodalGPT`.

:func:`build` is the only code that reads a spec: it looks each component up in the
registry, validates its options, calls its factory (one path, :func:`build_component`'s
``_call``), runs the compatibility checks (:mod:`mmcore.compatibility`), loads the
``weights_from`` files and applies the training policies.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .backbone import GPT
from .compatibility import _check, _policy_groups
from .errors import MMCoreError, PluginError, SpecError, SpecIssue
from .interfaces import Encoder, Processor
from .model import MultimodalGPT
from .registry import Component, Registry
from .spec import Spec, load_spec, parse_spec

__all__ = ["apply_policy", "assemble", "build", "build_component", "validate_build"]


# --- the builder ---------------------------------------------------------------------------


def build_component(
    kind: str, name: str, options: Mapping[str, Any] | None = None, *, registry: Registry | None = None, **context: Any
) -> nn.Module:
    """Build one registered component from Python: ``build_component("encoder", "text.bytes", width=256)``."""
    reg = registry or _registry()
    comp = reg.get(kind, name)
    return _call(comp, comp.options(options), kind, **context)


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

    Then every plugin's ``mmcore_model_built`` hook is called once with the model and its spec,
    whatever registry the model was built from.
    """
    model = assemble(spec, registry=registry, device=device, dtype=dtype, weights=weights)
    from .plugins import get_manager

    get_manager().call_model_built(model, model.spec)
    return model


def assemble(
    spec: Spec | str | Path | Mapping[str, Any],
    *,
    registry: Registry | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    weights: bool = True,
) -> MultimodalGPT:
    """:func:`build` without the ``mmcore_model_built`` hook: for the core's own builds that
    no user sees as such (the meta-device skeleton :func:`mmcore.load` fills, which calls the
    hook itself once the weights are in; the model a consolidation saves; the docs' summaries)."""
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
                proc = _guard(comp, f"encoders.{name} (processor)", lambda c=comp, o=cs.options: c.build_processor(o))
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
            PartReport(
                section,
                plan.source,
                plan.format,
                tuple(plan.loaded),
                tuple(plan.fresh),
                tuple(plan.ignored),
                plan.note,
            )
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
    obj = _guard(comp, where, lambda: comp.build(options, **context))
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
