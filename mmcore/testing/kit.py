"""The conformance kit: checks per component kind (see :mod:`mmcore.testing`).

How a component is exercised, by kind:

* **encoder**: built by its factory with ``width`` and the Processor the registration
  names; inputs are the Processor's collated example values (:mod:`.examples`).
* **projector**: built with ``in_dim`` and ``out_dim``; inputs are random token batches.
* **fusion**: built with stub encoders (``image``, ``audio`` and ``text`` inputs of the
  backbone width) and run with the core's GPT backbone, which owns the layers the fusion
  inserts; inputs are random tokens with right padding and missing rows.
* **head**: built with stub encoders (a text encoder with a token embedding, an image
  encoder); the fused sequences come from the core's early fusion and the hidden states
  are random, so every sample's values are known.

Inputs the kit makes itself put random values at padding positions: a component that
reads padding gives different outputs for the same sample in different batches.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from torch import Tensor

from ..registry import Component, Registry
from ..types import Batch
from .checks import _Checks
from .common import (
    _FATAL,
    CHECKS,
    PROCESSOR_CHECKS,
    ConformanceError,
    Report,
    _Fail,
    _first_line,
    _rng,
    _Skip,
    _Target,
    _where,
)
from .encoders import _EncoderHarness, _ProjectorHarness
from .examples import example_values
from .fusions import _FusionHarness
from .harness import _Harness
from .heads import _HeadHarness
from .processors import _ProcessorChecks

__all__ = [
    "CHECKS",
    "PROCESSOR_CHECKS",
    "ConformanceError",
    "Report",
    "check_component",
    "check_encoder",
    "check_processor",
    "check_projector",
    "check_fusion",
    "check_head",
    "example_values",
]

# --- entry points -----------------------------------------------------------------------------


def check_component(
    component: Component | str,
    options: Mapping[str, Any] | BaseModel | None = None,
    *,
    registry: Registry | None = None,
    skip: Sequence[str] = (),
    **kwargs: Any,
) -> Report:
    """Run every check of the component's kind; return a :class:`Report` or raise :class:`ConformanceError`.

    Args:
        component: an :class:`mmcore.Component` record, or ``"kind:name"`` of a registered one.
        options: the component's options (a dict, or its validated options model). Default:
            ``component.extra["conformance"]["options"]`` when the registration declares it
            (needed when an option is required), else the options model's defaults.
        registry: where to look ``"kind:name"`` up (default: the installed plugins').
        skip: names of checks not to run (see :data:`CHECKS`); reported as skipped.
        **kwargs: passed to the kind's function: ``values`` (encoders: raw example values
            for the Processor), ``targets`` (heads: ``callable(batch) -> dict`` of targets),
            ``inputs`` (fusions: input name -> modality of the stub encoders).

    Checks (every kind unless noted): ``options`` (JSON Schema, JSON round trip, unknown
    keys rejected), ``build``, ``outputs`` (types, shapes, masks for batch sizes 1-4 and
    several lengths), ``padding`` (a sample's outputs do not depend on what it is batched
    with or on values at padding positions), ``missing`` (records without an input;
    not projectors), ``determinism`` (eval mode), ``gradients`` (every trainable
    parameter gets a finite gradient), ``state_dict`` (round trip through a safetensors
    file into a fresh build gives identical outputs), ``meta`` (built on the meta device,
    loaded with ``assign=True``: identical outputs), ``names`` (two builds have the same
    parameter names, shapes and dtypes), ``dtype`` (float64 and bfloat16), ``device``
    (on CUDA when available, else on the ``meta`` device: no tensor made on a fixed device), ``compile`` (``torch.compile`` with the eager backend captures a
    graph and gives the same outputs), ``bad_input`` (a clear error, not a result).
    Encoders first run the Processor checks (:func:`check_processor`).
    """
    comp = _resolve(component, None, registry)
    fn = {"encoder": check_encoder, "projector": check_projector, "fusion": check_fusion, "head": check_head}
    return fn[comp.kind](comp, options, skip=skip, **kwargs)


def check_encoder(
    component: Component | str,
    options: Mapping[str, Any] | BaseModel | None = None,
    *,
    values: Sequence[Any] | None = None,
    registry: Registry | None = None,
    skip: Sequence[str] = (),
) -> Report:
    """Check an encoder and its Processor (see :func:`check_component`).

    ``values``: raw values as records hold them (at least two; of different sizes where
    the modality has one). Default: the Processor's ``examples()``, else the kit's
    examples for text, image and audio.
    """
    comp = _resolve(component, "encoder", registry)
    return _run(comp, options, lambda t, wd: _EncoderHarness(t, wd, values), skip, with_processor=True)


def check_projector(
    component: Component | str,
    options: Mapping[str, Any] | BaseModel | None = None,
    *,
    registry: Registry | None = None,
    skip: Sequence[str] = (),
) -> Report:
    """Check a projector (see :func:`check_component`)."""
    comp = _resolve(component, "projector", registry)
    return _run(comp, options, lambda t, wd: _ProjectorHarness(t, wd), skip)


def check_fusion(
    component: Component | str,
    options: Mapping[str, Any] | BaseModel | None = None,
    *,
    inputs: Mapping[str, str] | None = None,
    registry: Registry | None = None,
    skip: Sequence[str] = (),
) -> Report:
    """Check a fusion with the core's backbone (see :func:`check_component`).

    ``inputs``: input name -> modality of the stub encoders it is built with (default
    ``{"image": "image", "audio": "audio", "text": "text"}``; exactly one ``text``).
    """
    comp = _resolve(component, "fusion", registry)
    return _run(comp, options, lambda t, wd: _FusionHarness(t, wd, inputs), skip)


def check_head(
    component: Component | str,
    options: Mapping[str, Any] | BaseModel | None = None,
    *,
    targets: Callable[[Batch], dict[str, Tensor]] | None = None,
    registry: Registry | None = None,
    skip: Sequence[str] = (),
) -> Report:
    """Check a head (see :func:`check_component`).

    ``targets``: ``callable(batch) -> dict`` of the batch's targets. Default: the head's
    ``example_targets(batch)`` method if it has one, else ``{"label": (B,) long}`` with
    labels 0 and 1.
    """
    comp = _resolve(component, "head", registry)
    return _run(comp, options, lambda t, wd: _HeadHarness(t, wd, targets), skip)


def check_processor(
    processor: Any,
    *,
    values: Sequence[Any] | None = None,
    modality: str | None = None,
    label: str | None = None,
    make: Callable[[], Any] | None = None,
    skip: Sequence[str] = (),
) -> Report:
    """Check a Processor instance (:data:`PROCESSOR_CHECKS`).

    ``values`` as for :func:`check_encoder`; ``modality``: the one its encoder declares
    (default: the processor's own); ``make``: builds a fresh processor with the same
    options, for the save/load round trip (default: a pickled copy).
    """
    label = label or f"processor {type(processor).__name__}"
    report = Report(label)
    failures: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="mmcore-conformance-") as wd, _rng():
        checker = _ProcessorChecks(processor, values, modality, make, wd)
        _run_checks(checker.checks(), report, failures, skip)
    if failures:
        raise ConformanceError(label, failures, report)
    return report


def _resolve(component: Component | str, kind: str | None, registry: Registry | None) -> Component:
    if isinstance(component, Component):
        comp = component
    elif isinstance(component, str):
        if registry is None:
            from ..plugins import get_registry

            registry = get_registry()
        k, sep, name = component.partition(":")
        if not sep:
            if kind is None:
                raise ValueError(f"say the kind of {component!r}: 'encoder:{component}', 'head:{component}', ...")
            k, name = kind, component
        comp = registry.get(k, name)
    else:
        raise TypeError(f"expected an mmcore.Component or 'kind:name', got {type(component).__name__}")
    if kind is not None and comp.kind != kind:
        raise ValueError(f"{comp.key} is a {comp.kind}, not a {kind}: use check_{comp.kind} or check_component")
    return comp


def _label(comp: Component) -> str:
    return f"{comp.key} ({comp.source})" if (comp.distribution or comp.plugin) else comp.key


def _declared_options(comp: Component) -> Any:
    conf = (comp.extra or {}).get("conformance") or {}
    return conf.get("options")


def _run(
    comp: Component,
    options: Any,
    harness_factory: Callable[[_Target, str], "_Harness"],
    skip: Sequence[str],
    *,
    with_processor: bool = False,
) -> Report:
    label = _label(comp)
    report = Report(label)
    failures: list[tuple[str, str]] = []
    unknown = set(skip) - set(CHECKS[comp.kind]) - set(PROCESSOR_CHECKS)
    if unknown:
        raise ValueError(f"unknown checks to skip {sorted(unknown)}; checks: {', '.join(CHECKS[comp.kind])}")
    with tempfile.TemporaryDirectory(prefix="mmcore-conformance-") as wd, _rng():
        state: dict[str, Any] = {}

        def check_options() -> None:
            state["target"] = _check_options(comp, options, label, report)

        def check_build() -> None:
            state["harness"] = h = harness_factory(state["target"], wd)
            state["module"] = h.build(0)

        steps: list[tuple[str, Callable[[], None]]] = [("options", check_options), ("build", check_build)]
        if not _run_checks(steps, report, failures, skip):
            raise ConformanceError(label, failures, report)
        h: Any = state["harness"]  # an _EncoderHarness when with_processor
        if with_processor:
            proc = getattr(h, "processor", None)
            checker = _ProcessorChecks(proc, h.values, comp.modality, h.make_processor, wd)
            _run_checks(checker.checks(), report, failures, skip)
        _run_checks(_Checks(h, state["module"], wd, report).checks(comp.kind), report, failures, skip)
    if failures:
        raise ConformanceError(label, failures, report)
    return report


def _run_checks(
    steps: Sequence[tuple[str, Callable[[], None]]],
    report: Report,
    failures: list[tuple[str, str]],
    skip: Sequence[str],
) -> bool:
    """Run the steps; False when a fatal one failed (the rest were not run)."""
    for name, fn in steps:
        if name in skip:
            report.skipped[name] = "skipped by the caller"
            continue
        start = time.perf_counter()
        try:
            fn()
        except _Skip as exc:
            report.skipped[name] = str(exc)
        except _Fail as exc:
            failures.append((name, str(exc)))
        except Exception as exc:
            failures.append((name, f"raised {type(exc).__name__}: {_first_line(exc)} (at {_where(exc)})"))
        else:
            report.passed.append(name)
        report.seconds[name] = time.perf_counter() - start
        if failures and failures[-1][0] == name and name in _FATAL:
            return False
    return True


def _check_options(comp: Component, options: Any, label: str, report: Report) -> _Target:
    model = comp.config
    try:
        json.dumps(model.model_json_schema())
    except Exception as exc:
        raise _Fail(f"the options model {model.__name__} has no JSON Schema: {type(exc).__name__}: {exc}") from None
    if options is None:
        options = _declared_options(comp)
    try:
        cfg = options if isinstance(options, model) else model.model_validate(dict(options or {}))
    except ValidationError as exc:
        hint = (
            "give options= to the kit, or declare working ones in the registration: "
            "Component(..., extra={'conformance': {'options': {...}}})"
        )
        raise _Fail(f"the options {dict(options or {})} are not valid: {exc.errors()[0].get('msg')}; {hint}") from None
    dumped = cfg.model_dump(mode="json")
    try:
        again = model.model_validate(json.loads(json.dumps(dumped)))
    except Exception as exc:
        raise _Fail(
            f"the options do not survive a JSON round trip (saved specs hold them as data): {type(exc).__name__}: {exc}"
        ) from None
    if again != cfg:
        raise _Fail(f"the options change in a JSON round trip: {cfg!r} became {again!r}")
    try:
        model.model_validate({**dumped, "mmcore_conformance_unknown_key": 1})
    except ValidationError:
        pass
    else:
        raise _Fail(
            f"{model.__name__} accepts unknown keys, so a typo in a spec is silently ignored: subclass "
            "mmcore.ComponentConfig (extra='forbid')"
        )
    undocumented = [k for k, f in model.model_fields.items() if not f.description]
    if undocumented:
        report.notes.append(
            f"options without a description (docs and `mmcore spec schema` show it): {', '.join(undocumented)}"
        )
    return _Target(comp, cfg, label)
