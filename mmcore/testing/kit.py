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

import contextlib
import copy
import json
import os
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel, ValidationError
from torch import Tensor, nn

from ..config import BackboneConfig
from ..errors import InputError
from ..registry import Component, Registry, call_factory
from ..types import Batch, FusedSequence, HeadOutput, Tokens, _to
from .examples import example_values

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

_COMMON = (
    "options",
    "build",
    "outputs",
    "padding",
    "missing",
    "determinism",
    "gradients",
    "state_dict",
    "meta",
    "names",
    "dtype",
    "device",
    "compile",
    "bad_input",
)

#: The checks run for each kind, in order (an encoder also runs :data:`PROCESSOR_CHECKS`).
CHECKS: dict[str, tuple[str, ...]] = {
    "encoder": _COMMON,
    "projector": tuple(c for c in _COMMON if c != "missing"),
    "fusion": _COMMON,
    "head": _COMMON,
    "objective": ("declarations", "records", "loss", "streaming", "eval"),  # testing/objective_kit.py
}

#: The checks of a Processor (run first for an encoder that has one).
PROCESSOR_CHECKS = (
    "processor.outputs",
    "processor.missing",
    "processor.determinism",
    "processor.pickle",
    "processor.files",
    "processor.bad_input",
)

# If one of these fails, the checks after it cannot run.
_FATAL = {"options", "build", "outputs"}

WIDTH = 32  # backbone width the kit builds components for
BACKBONE = {"width": WIDTH, "depth": 2, "heads": 4, "context_length": 256}


class ConformanceError(AssertionError):
    """A component breaks the contract of its kind.

    Attributes:
        component: ``kind:name (distribution)`` of the component.
        failures: ``(check, message)`` for every failing check.
        report: the :class:`Report` of the checks that ran.
    """

    def __init__(self, component: str, failures: list[tuple[str, str]], report: "Report"):
        self.component = component
        self.failures = failures
        self.report = report
        lines = [f"{component} fails {len(failures)} conformance check(s):"]
        lines += [f"  [{check}] {component}: {message}" for check, message in failures]
        super().__init__("\n".join(lines))


@dataclass
class Report:
    """What a conformance run did: checks passed, skipped (with the reason), notes and timings."""

    component: str
    passed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        out = [f"{self.component}: {len(self.passed)} checks passed"]
        out += [f"  skipped {k}: {v}" for k, v in self.skipped.items()]
        out += [f"  note: {n}" for n in self.notes]
        return "\n".join(out)


class _Fail(Exception):
    """A check found a broken contract; the message says what is wrong."""


class _Skip(Exception):
    """A check does not apply (e.g. no CUDA device for the device check)."""


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


# --- running checks -------------------------------------------------------------------------


@dataclass
class _Target:
    comp: Component
    options: Any
    label: str


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


@contextlib.contextmanager
def _rng() -> Iterator[None]:
    """Leave the caller's global RNG state as it was."""
    with torch.random.fork_rng(devices=[]):
        yield


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
        h: _Harness = state["harness"]
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


def _where(exc: BaseException, outside: tuple[str, ...] = ("mmcore/testing",)) -> str:
    """The innermost frame of ``exc``'s traceback in none of the ``outside`` paths."""
    frames = traceback.extract_tb(exc.__traceback__)
    inner = [f for f in frames if not any(o in f.filename.replace(os.sep, "/") for o in outside)] or frames
    f = inner[-1] if inner else None
    return f"{f.filename}:{f.lineno} in {f.name}" if f else "?"


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


# --- comparing outputs ----------------------------------------------------------------------


def _tol(ref: Tensor, dtype: torch.dtype | None = None) -> float:
    scale = 1.0 + float(ref.detach().abs().max()) if ref.numel() else 1.0
    if dtype == torch.bfloat16:
        return 0.1 * scale
    if dtype == torch.float64:
        return 1e-3 * scale
    return 1e-5 * scale


def _same(a: Tensor | None, b: Tensor | None, what: str, tol: float | None = None) -> None:
    if a is None or b is None:
        if (a is None) != (b is None):
            raise _Fail(f"{what}: one has outputs, the other none")
        return
    if a.shape != b.shape:
        raise _Fail(f"{what}: shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.numel() == 0:
        return
    a64, b64 = a.detach().to("cpu", torch.float64), b.detach().to("cpu", torch.float64)
    diff = float((a64 - b64).abs().max())
    limit = _tol(b64) if tol is None else tol
    if not diff <= limit:
        raise _Fail(f"{what} (max difference {diff:.3g}, tolerance {limit:.3g})")


def _same_rows(a: list[Tensor | None], b: list[Tensor | None], what: str, tol: float | None = None) -> None:
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        _same(x, y, what.format(i=i), tol)


# --- the checks every kind shares -----------------------------------------------------------


class _Checks:
    def __init__(self, h: "_Harness", module: nn.Module, workdir: str, report: Report):
        self.h = h
        self.m = module
        self.wd = workdir
        self.report = report
        self._second: nn.Module | None = None

    def second(self) -> nn.Module:
        """Another build with the same options and another seed (built once)."""
        if self._second is None:
            self._second = self.h.build(1)
        return self._second

    def copy(self) -> nn.Module:
        """A copy of the module under test (cheaper than building again)."""
        return copy.deepcopy(self.m)

    def checks(self, kind: str) -> list[tuple[str, Callable[[], None]]]:
        return [(name, getattr(self, f"check_{name}")) for name in CHECKS[kind] if name not in ("options", "build")]

    def _eval_rows(self, module: nn.Module, picks: Sequence[Any], **kw: Any) -> list[Tensor | None]:
        module.eval()
        batch = self.h.make(picks, **kw)
        with torch.no_grad():
            return self.h.rows(self.h.run(module, batch), batch)

    def check_outputs(self) -> None:
        self.m.eval()
        for picks in self.h.cases():
            batch = self.h.make(picks)
            with torch.no_grad():
                out = self.h.run(self.m, batch)
            self.h.validate(self.m, out, batch, picks)

    def check_padding(self) -> None:
        every = self.h.everything()
        batched = self._eval_rows(self.m, every)
        for i, pick in enumerate(every):
            alone = self._eval_rows(self.m, [pick])[0]
            _same(
                alone,
                batched[i],
                f"sample {i}'s outputs at its real tokens differ alone and batched with other samples of other "
                "lengths: padding leaks into real tokens (is a mask ignored?)",
            )
        if self.h.random_padding:
            other = self._eval_rows(self.m, every, noise=2)
            _same_rows(
                other,
                batched,
                "sample {i}'s outputs change when only the values at padding positions change: padding is read "
                "(is a mask ignored?)",
            )
        self.h.check_padding_extra(self.m)

    def check_missing(self) -> None:
        self.h.check_missing(self.m)

    def check_determinism(self) -> None:
        every = self.h.everything()
        a = self._eval_rows(self.m, every)
        b = self._eval_rows(self.m, every)
        _same_rows(
            a,
            b,
            "two forward passes in eval mode on the same batch differ at sample {i}: the outputs are random outside "
            "training (dropout or torch.rand used regardless of self.training?)",
            tol=1e-6,
        )

    def check_gradients(self) -> None:
        m = self.copy()
        m.train()
        params = self.h.trainable(m)
        if not params:
            self.report.notes.append("no trainable parameters: the gradient check had nothing to check")
            return
        for _, p in params:
            p.grad = None
        batch = self.h.make(self.h.everything())
        out = self.h.run(m, batch)
        rows = [r for r in self.h.rows(out, batch) if r is not None and r.numel()]
        gen = torch.Generator().manual_seed(0)
        loss = sum(((r.float() * torch.randn(r.shape, generator=gen)).sum() for r in rows), torch.zeros(()))
        extra = self.h.extra_loss(m, out, batch)
        if extra is not None:
            loss = loss + extra.float()
        if not loss.requires_grad:
            raise _Fail("the outputs at real tokens do not depend on any trainable parameter")
        loss.backward()
        none = [n for n, p in params if p.grad is None]
        if none:
            raise _Fail(
                f"{len(none)} trainable parameter(s) get no gradient from the outputs: {', '.join(none[:10])}: "
                "unused, or used outside autograd (.detach(), .item(), torch.no_grad()); remove them or freeze them "
                "with requires_grad_(False)"
            )
        bad = [n for n, p in params if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
        if bad:
            raise _Fail(f"parameter(s) get NaN or infinite gradients: {', '.join(bad[:10])}")

    def _state(self, module: nn.Module) -> dict[str, Tensor]:
        return {k: v.detach().clone().contiguous() for k, v in self.h.state_module(module).state_dict().items()}

    def check_state_dict(self) -> None:
        from safetensors.torch import load_file, save_file

        state = self._state(self.m)
        bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
        if bad:
            raise _Fail(f"state_dict entries that are not tensors: {bad[:10]}")
        path = os.path.join(self.wd, "component.safetensors")
        try:
            save_file(state, path)
        except Exception as exc:
            raise _Fail(f"the state dict cannot be saved as safetensors: {type(exc).__name__}: {exc}") from None
        fresh = self.second()
        result = self.h.state_module(fresh).load_state_dict(load_file(path), strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise _Fail(
                f"a fresh build does not take the saved state dict: missing {result.missing_keys[:10]}, "
                f"unexpected {result.unexpected_keys[:10]}"
            )
        every = self.h.everything()
        _same_rows(
            self._eval_rows(fresh, every),
            self._eval_rows(self.m, every),
            "after loading the saved safetensors state dict into a fresh build, sample {i}'s outputs differ: some "
            "state is not in the state dict (a tensor kept as a plain attribute? a non-persistent buffer that "
            "differs between builds?)",
            tol=1e-6,
        )

    def check_meta(self) -> None:
        state = self._state(self.m)
        try:
            meta = self.h.build(0, device="meta")
        except Exception as exc:
            raise _Fail(
                f"building on the meta device (how mmcore.load builds before assigning weights) failed: "
                f"{type(exc).__name__}: {_first_line(exc)}"
            ) from None
        shapes = {k: (tuple(v.shape), v.dtype) for k, v in self.h.state_module(meta).state_dict().items()}
        want = {k: (tuple(v.shape), v.dtype) for k, v in state.items()}
        if shapes != want:
            diff = sorted(set(shapes.items()) ^ set(want.items()))[:6]
            raise _Fail(f"built on the meta device, the state dict differs from a CPU build's: {diff}")
        target = self.h.state_module(meta)
        target.load_state_dict(state, assign=True, strict=True)
        _materialize(meta)
        every = self.h.everything()
        _same_rows(
            self._eval_rows(meta, every),
            self._eval_rows(self.m, every),
            "built on the meta device and loaded with load_state_dict(assign=True), sample {i}'s outputs differ "
            "from the original's: a buffer is computed at construction and not restored (implement "
            "reset_buffers())",
            tol=1e-6,
        )

    def check_names(self) -> None:
        a = [(k, tuple(v.shape), str(v.dtype)) for k, v in self.h.state_module(self.m).state_dict().items()]
        other = self.second()
        b = [(k, tuple(v.shape), str(v.dtype)) for k, v in self.h.state_module(other).state_dict().items()]
        if a != b:
            diff = [x for x in a if x not in b][:5] + [x for x in b if x not in a][:5]
            raise _Fail(
                f"two builds with the same options have different state dict names, shapes or order: {diff}; weight "
                "files could not be loaded into a new build"
            )
        pa = [n for n, _ in self.h.state_module(self.m).named_parameters()]
        pb = [n for n, _ in self.h.state_module(other).named_parameters()]
        if pa != pb:
            raise _Fail(f"two builds name their parameters differently: {pa[:5]} vs {pb[:5]}")

    def check_dtype(self) -> None:
        every = self.h.everything()
        ref = self._eval_rows(self.m, every)
        for dtype in (torch.float64, torch.bfloat16):
            m = self.copy()
            self.h.move(m, dtype=dtype)
            batch = self.h.make(every, dtype=dtype)
            m.eval()
            with torch.no_grad():
                out = self.h.run(m, batch)
            self.h.validate(m, out, batch, every)
            rows = self.h.rows(out, batch)
            name = str(dtype).replace("torch.", "")
            for i, (r, want) in enumerate(zip(rows, ref, strict=True)):
                if r is None or want is None:
                    continue
                if r.dtype != dtype:
                    raise _Fail(
                        f"after .to(torch.{name}) the outputs are {str(r.dtype).replace('torch.', '')}: compute in "
                        "the parameters' dtype (cast floating inputs with .to(weight.dtype))"
                    )
                if not bool(torch.isfinite(r).all()):
                    raise _Fail(f"after .to(torch.{name}) sample {i}'s outputs hold NaN or infinity")
                _same(
                    r,
                    want,
                    f"after .to(torch.{name}) sample {i}'s outputs are far from float32's",
                    _tol(want, dtype),
                )

    def check_device(self) -> None:
        if not torch.cuda.is_available():
            self._check_meta_device()
            return
        every = self.h.everything()
        ref = self._eval_rows(self.m, every)
        m = self.copy()
        self.h.move(m, device="cuda")
        m.eval()
        batch = _to(self.h.make(every), "cuda")
        with torch.no_grad():
            out = self.h.run(m, batch)
        for t in self.h.primary(out):
            if t.device.type != "cuda":
                raise _Fail(f"after .to('cuda') with inputs on CUDA, an output is on {t.device}")
        rows = self.h.rows(out, batch)
        for i, (r, want) in enumerate(zip(rows, ref, strict=True)):
            if r is not None and want is not None:  # TF32 convolutions: a looser tolerance than on the CPU
                _same(
                    r,
                    want,
                    f"on CUDA sample {i}'s outputs are far from the CPU's",
                    2e-3 * (1 + float(want.abs().max())),
                )

    def _check_meta_device(self) -> None:
        """Without CUDA: parameters and inputs on the ``meta`` device, where a tensor that
        ``forward`` makes on a fixed device (``device="cpu"``, or no device at all) meets
        them and raises. A forward that needs values (``.item()``, boolean indexing) cannot
        run on ``meta``: the check is then skipped, saying why."""
        every = self.h.everything()
        m = self.copy()
        self.h.move(m, device="meta")
        m.eval()
        batch = _to(self.h.make(every), "meta")
        try:
            with torch.no_grad():
                out = self.h.run(m, batch)
        except Exception as exc:
            text = str(exc)
            if "expected device" in text or "same device" in text or "at least two devices" in text:
                raise _Fail(
                    f"with its parameters and inputs on another device (meta), forward mixes devices: "
                    f"{type(exc).__name__}: {_first_line(exc)} (at {_where(exc, ('mmcore/testing', '/torch/'))}); make new tensors on the inputs' or "
                    "parameters' device (device=x.device, torch.zeros_like, x.new_zeros), never a fixed one"
                ) from None
            raise _Skip(
                f"no CUDA device here, and forward cannot run on the meta device ({type(exc).__name__}: "
                f"{_first_line(exc)})"
            ) from None
        for t in self.h.primary(out):
            if t.device.type != "meta":
                raise _Fail(f"with its parameters and inputs on the meta device, an output is on {t.device}")

    def check_compile(self) -> None:
        import torch._dynamo

        graphs: list[Any] = []

        def counting(gm: Any, example_inputs: Any) -> Any:
            graphs.append(gm)
            return gm.forward

        component = self.h.component(self.m)
        component.eval()
        batch = self.h.make(self.h.everything())
        torch._dynamo.reset()
        quiet = _quiet_dynamo()
        try:
            compiled = torch.compile(component, backend=counting)
            with torch.no_grad():
                got = self.h.primary(self.h.call(compiled, batch))
                want = self.h.primary(self.h.call(component, batch))
        except Exception as exc:
            raise _Fail(
                f"torch.compile(backend='eager') failed: {type(exc).__name__}: {_first_line(exc)} (at {_where(exc)})"
            ) from None
        finally:
            quiet.close()
            torch._dynamo.reset()
        if not graphs:
            raise _Fail("torch.compile captured no graph: dynamo skipped the whole forward")
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            _same(a, b, f"compiled, output {i} differs from eager")

    def check_bad_input(self) -> None:
        for what, call in self.h.bad_inputs(self.m):
            try:
                call()
            except Exception as exc:
                if not str(exc).strip():
                    raise _Fail(f"{what}: raised {type(exc).__name__} with an empty message") from None
                continue
            raise _Fail(f"{what}: returned a result instead of raising an error that says what is wrong")


def _quiet_dynamo() -> contextlib.ExitStack:
    """Silence dynamo's graph-break warnings while the compile check runs (graph breaks are allowed)."""
    import logging

    stack = contextlib.ExitStack()
    logger = logging.getLogger("torch._dynamo")
    level = logger.level
    logger.setLevel(logging.ERROR)
    stack.callback(logger.setLevel, level)
    return stack


def _materialize(module: nn.Module) -> None:
    """Give buffers still on the meta device values via the nearest ``reset_buffers()`` (as mmcore.load does)."""
    modules = dict(module.named_modules())
    owners: dict[str, None] = {}
    for name, sub in modules.items():
        if any(b.is_meta for b in sub.buffers(recurse=False)):
            sub.to_empty(device="cpu", recurse=False)
            owner = name
            while not hasattr(modules[owner], "reset_buffers"):
                if not owner:
                    raise _Fail(
                        f"{name or 'the module'} ({type(sub).__name__}) has buffers that are not saved, and neither it "
                        "nor a parent module has reset_buffers() to recompute them after a build on the meta device"
                    )
                owner = owner.rpartition(".")[0]
            owners[owner] = None
    for owner in owners:
        modules[owner].reset_buffers()
    left = [n for n, p in module.named_parameters() if p.is_meta]
    if left:
        raise _Fail(f"parameters still on the meta device after loading the state dict: {left[:10]}")


# --- harnesses: how each kind is built and fed ------------------------------------------------


class _Harness:
    """Builds the module under test and makes its inputs; one subclass per kind."""

    #: whether the kit makes the padding values (then it varies them)
    random_padding = True

    def __init__(self, target: _Target, workdir: str):
        self.t = target
        self.comp = target.comp
        self.workdir = workdir

    def _factory_call(self, seed: int, device: str | None, **context: Any) -> nn.Module:
        factory = self.comp.load_factory()
        torch.manual_seed(seed)
        with torch.device(device) if device else contextlib.nullcontext():
            m = call_factory(factory, self.t.options, base_dir=self.workdir, **context)
        if not isinstance(m, nn.Module):
            raise _Fail(f"the factory returned {type(m).__name__}, not a torch.nn.Module")
        return m

    # overridden per kind
    def build(self, seed: int, device: str | None = None) -> nn.Module:
        raise NotImplementedError

    def cases(self) -> list[list[Any]]:
        raise NotImplementedError

    def everything(self) -> list[Any]:
        raise NotImplementedError

    def make(self, picks: Sequence[Any], *, noise: int = 1, dtype: torch.dtype = torch.float32) -> Any:
        raise NotImplementedError

    def run(self, module: nn.Module, batch: Any) -> Any:
        return self.call(self.component(module), batch)

    def call(self, component: Any, batch: Any) -> Any:
        raise NotImplementedError

    def rows(self, out: Any, batch: Any) -> list[Tensor | None]:
        raise NotImplementedError

    def primary(self, out: Any) -> list[Tensor]:
        raise NotImplementedError

    def validate(self, module: nn.Module, out: Any, batch: Any, picks: Sequence[Any]) -> None:
        raise NotImplementedError

    def bad_inputs(self, module: nn.Module) -> list[tuple[str, Callable[[], Any]]]:
        raise NotImplementedError

    def component(self, module: nn.Module) -> nn.Module:
        return module

    def state_module(self, module: nn.Module) -> nn.Module:
        return module

    def trainable(self, module: nn.Module) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.component(module).named_parameters() if p.requires_grad]

    def move(self, module: nn.Module, **kw: Any) -> None:
        module.to(**kw)

    def extra_loss(self, module: nn.Module, out: Any, batch: Any) -> Tensor | None:
        return None

    def check_padding_extra(self, module: nn.Module) -> None:
        pass

    def check_missing(self, module: nn.Module) -> None:
        raise _Skip("not applicable")


def _right_padded(mask: Tensor) -> bool:
    """Every row is True* then False* (real tokens first)."""
    if mask.shape[-1] < 2:
        return True
    return not bool((~mask[..., :-1] & mask[..., 1:]).any())


def _check_mask(mask: Any, shape: tuple[int, ...], what: str) -> None:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise _Fail(f"{what} must be a bool tensor, got {got}")
    if tuple(mask.shape) != shape:
        raise _Fail(f"{what} has shape {tuple(mask.shape)}, expected {shape}")
    if not _right_padded(mask):
        raise _Fail(f"{what} is not right-padded: a row has a real token after padding")


class _EncoderHarness(_Harness):
    random_padding = False  # the Processor pads

    def __init__(self, target: _Target, workdir: str, values: Sequence[Any] | None):
        super().__init__(target, workdir)
        self.processor = self.make_processor()
        if self.processor is None:
            raise _Fail(
                "the encoder names no processor: the kit makes inputs with the component's Processor "
                "(Component(processor='pkg.module:Processor'))"
            )
        vals = list(values) if values is not None else example_values(self.comp.modality or "", self.processor)
        if vals is None or len(vals) < 2:
            raise _Fail(
                f"no example values for modality {self.comp.modality!r}: give values= to the kit, or give the "
                "Processor an examples() method returning a few raw values (of different sizes)"
            )
        self.values = vals
        self.samples = [self.processor(v, where=f"example value {i}") for i, v in enumerate(vals)]
        self.n = len(vals)

    def make_processor(self) -> Any:
        factory = self.comp.load_processor()
        return None if factory is None else call_factory(factory, self.t.options)

    def build(self, seed: int, device: str | None = None) -> nn.Module:
        m = self._factory_call(seed, device, width=WIDTH, processor=self.processor)
        out_dim = getattr(m, "out_dim", None)
        if not isinstance(out_dim, int) or isinstance(out_dim, bool) or out_dim <= 0:
            raise _Fail(f"the encoder's out_dim must be a positive int, got {out_dim!r}")
        modality = getattr(m, "modality", None)
        if modality != self.comp.modality:
            raise _Fail(f"the encoder's modality is {modality!r} but its registration says {self.comp.modality!r}")
        return m

    def cases(self) -> list[list[Any]]:
        n = self.n
        return [[0], [1 % n, 0], [(2 % n), 0, 1 % n], [0, 1 % n, (2 % n), 1 % n]]

    def everything(self) -> list[Any]:
        return list(range(self.n))

    def make(self, picks: Sequence[Any], *, noise: int = 1, dtype: torch.dtype = torch.float32) -> Any:
        return self.processor.collate([None if p is None else self.samples[p] for p in picks])

    def call(self, component: Any, batch: Any) -> Any:
        return component(batch)

    def rows(self, out: Tokens, batch: Any) -> list[Tensor | None]:
        return [out.embeds[i][out.mask[i]] for i in range(out.embeds.shape[0])]

    def primary(self, out: Tokens) -> list[Tensor]:
        return [out.embeds, out.mask]

    def validate(self, module: nn.Module, out: Any, batch: Any, picks: Sequence[Any]) -> None:
        B = len(picks)
        if not isinstance(out, Tokens):
            raise _Fail(f"forward must return mmcore.Tokens, got {type(out).__name__}")
        e = out.embeds
        if not isinstance(e, Tensor) or e.dim() != 3 or not e.is_floating_point():
            got = tuple(e.shape) if isinstance(e, Tensor) else type(e).__name__
            raise _Fail(f"Tokens.embeds must be a floating (B, N, out_dim) tensor, got {got}")
        want = (B, e.shape[1], module.out_dim)
        if tuple(e.shape) != want:
            raise _Fail(
                f"Tokens.embeds has shape {tuple(e.shape)} for a batch of {B}; expected (B, N, out_dim) = "
                f"({B}, N, {module.out_dim})"
            )
        _check_mask(out.mask, (B, e.shape[1]), "Tokens.mask")
        if not bool(torch.isfinite(e).all()):
            raise _Fail("Tokens.embeds holds NaN or infinity")
        for i, p in enumerate(picks):
            has = bool(out.mask[i].any())
            if p is not None and not has:
                raise _Fail(f"sample {i} (example value {p}) has no real token: its mask row is all False")
            if p is None and has:
                raise _Fail(f"sample {i} lacks the input but its mask row has real tokens")

    def check_missing(self, module: nn.Module) -> None:
        module.eval()
        with torch.no_grad():
            both = self.make([0, 1 % self.n])
            gap = self.make([0, None, 1 % self.n])
            a = self.rows(self.run(module, both), both)
            out = self.run(module, gap)
            self.validate(module, out, gap, [0, None, 1 % self.n])
            b = self.rows(out, gap)
            _same(b[0], a[0], "a record without the input changes the outputs of the sample before it")
            _same(b[2], a[1], "a record without the input changes the outputs of the sample after it")
            none = self.make([None, None])
            out = self.run(module, none)
            self.validate(module, out, none, [None, None])

    def bad_inputs(self, module: nn.Module) -> list[tuple[str, Callable[[], Any]]]:
        module.eval()
        return [("forward({}) (inputs missing every key)", lambda: module({}))]


class _ProjectorHarness(_Harness):
    IN_DIM = 24
    LENGTHS = (3, 7, 5)

    def __init__(self, target: _Target, workdir: str):
        super().__init__(target, workdir)
        gen = torch.Generator().manual_seed(1)
        self.items = [torch.randn(n, self.IN_DIM, generator=gen) for n in self.LENGTHS]

    def build(self, seed: int, device: str | None = None) -> nn.Module:
        return self._factory_call(seed, device, in_dim=self.IN_DIM, out_dim=WIDTH)

    def cases(self) -> list[list[Any]]:
        return [[0], [1, 0], [2, 0, 1], [0, 1, 2, 1]]

    def everything(self) -> list[Any]:
        return [0, 1, 2]

    def make(self, picks: Sequence[Any], *, noise: int = 1, dtype: torch.dtype = torch.float32) -> Any:
        gen = torch.Generator().manual_seed(100 + noise)
        n = max(len(self.items[p]) for p in picks)
        x = torch.randn(len(picks), n, self.IN_DIM, generator=gen) * 10
        for i, p in enumerate(picks):
            x[i, : len(self.items[p])] = self.items[p]
        return x.to(dtype), [len(self.items[p]) for p in picks]

    def call(self, component: Any, batch: Any) -> Any:
        return component(batch[0])

    def rows(self, out: Tensor, batch: Any) -> list[Tensor | None]:
        return [out[i, :n] for i, n in enumerate(batch[1])]

    def primary(self, out: Tensor) -> list[Tensor]:
        return [out]

    def validate(self, module: nn.Module, out: Any, batch: Any, picks: Sequence[Any]) -> None:
        x = batch[0]
        want = (x.shape[0], x.shape[1], WIDTH)
        if not isinstance(out, Tensor) or tuple(out.shape) != want:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise _Fail(f"(B, N, in_dim) = {tuple(x.shape)} must map to (B, N, out_dim) = {want}, got {got}")
        if not bool(torch.isfinite(out).all()):
            raise _Fail("the output holds NaN or infinity")

    def bad_inputs(self, module: nn.Module) -> list[tuple[str, Callable[[], Any]]]:
        module.eval()
        x = torch.randn(2, 3, self.IN_DIM + 1)
        return [(f"tokens of width {self.IN_DIM + 1} for in_dim {self.IN_DIM}", lambda: module(x))]


class _StubEncoder(nn.Module):
    """Stands in for a real encoder when a fusion or head is built: modality, out_dim, a vocabulary for text."""

    def __init__(self, modality: str, width: int, vocab: int | None = None):
        super().__init__()
        self.modality = modality
        self.out_dim = width
        if vocab is not None:
            self.vocab_size = vocab
            self.token_embedding = nn.Embedding(vocab, width)


def _stubs(inputs: Mapping[str, str], vocab: int) -> dict[str, _StubEncoder]:
    with _rng(), torch.device("cpu"):
        torch.manual_seed(1234)
        return {k: _StubEncoder(m, WIDTH, vocab if m == "text" else None) for k, m in inputs.items()}


class _Stack(nn.Module):
    """The component with what it needs around it (the backbone for a fusion, stub encoders for a head)."""

    def __init__(self, component: nn.Module, **others: nn.Module):
        super().__init__()
        self.component = component
        for k, v in others.items():
            setattr(self, k, v)


class _FusionHarness(_Harness):
    #: per sample: tokens per input (None: the record lacks it)
    LAYOUT = (
        {"image": 4, "audio": 3, "text": 5},
        {"image": 4, "audio": None, "text": 2},
        {"image": None, "audio": 6, "text": 7},
        {"image": 4, "audio": 2, "text": 3},
    )

    def __init__(self, target: _Target, workdir: str, inputs: Mapping[str, str] | None):
        super().__init__(target, workdir)
        self.inputs = dict(inputs or {"image": "image", "audio": "audio", "text": "text"})
        if sum(m == "text" for m in self.inputs.values()) != 1:
            raise ValueError(f"inputs must hold exactly one text input, got {self.inputs}")
        others = [n for n, m in self.inputs.items() if m != "text"]
        column = {n: ("image", "audio")[j % 2] for j, n in enumerate(others)}  # layouts to reuse for other names
        column.update({n: "text" for n, m in self.inputs.items() if m == "text"})
        self.layout = [{n: row[column[n]] for n in self.inputs} for row in self.LAYOUT]
        self.backbone_config = BackboneConfig(**BACKBONE)
        self.encoders = _stubs(self.inputs, 50)
        gen = torch.Generator().manual_seed(2)
        self.tokens = [
            {n: None if k is None else torch.randn(k, WIDTH, generator=gen) for n, k in row.items()}
            for row in self.layout
        ]

    def build(self, seed: int, device: str | None = None) -> nn.Module:
        from ..backbone import GPT

        fusion = self._factory_call(
            seed, device, width=WIDTH, encoders=dict(self.encoders), backbone=self.backbone_config
        )
        inserts = fusion.inserts() if hasattr(fusion, "inserts") else {}
        with torch.device(device) if device else contextlib.nullcontext():
            torch.manual_seed(seed + 7)
            backbone = GPT(self.backbone_config, inserts=inserts or None)
        return _Stack(fusion, backbone=backbone)

    def cases(self) -> list[list[Any]]:
        return [[0], [1, 0], [2, 0, 1], [0, 1, 2, 3]]

    def everything(self) -> list[Any]:
        return [0, 1, 2, 3]

    def make(
        self,
        picks: Sequence[Any],
        *,
        noise: int = 1,
        dtype: torch.dtype = torch.float32,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
    ) -> Any:
        gen = torch.Generator().manual_seed(200 + noise)
        tokens: dict[str, Tokens] = {}
        inputs: dict[str, dict[str, Tensor]] = {}
        for name in self.inputs:
            have = [self.tokens[p][name] for p in picks]
            if name in exclude or (all(t is None for t in have) and name not in include):
                continue  # like a batch where no record has the input
            n = max([1, *(len(t) for t in have if t is not None)])
            x = torch.randn(len(picks), n, WIDTH, generator=gen) * 10
            mask = torch.zeros(len(picks), n, dtype=torch.bool)
            for i, t in enumerate(have):
                if t is not None:
                    x[i, : len(t)] = t
                    mask[i, : len(t)] = True
            tokens[name] = Tokens(x.to(dtype), mask)
            inputs[name] = {"mask": mask}
            if self.inputs[name] == "text":
                inputs[name]["ids"] = torch.randint(0, 50, (len(picks), n), generator=gen)
        return tokens, Batch(inputs)

    def component(self, module: nn.Module) -> nn.Module:
        return module.component

    def call(self, component: Any, batch: Any) -> Any:
        return component(batch[0], batch[1])

    def run(self, module: nn.Module, batch: Any) -> Any:
        seq = module.component(batch[0], batch[1])
        hidden = module.backbone.run_sequence(seq)
        return seq, hidden

    def rows(self, out: Any, batch: Any) -> list[Tensor | None]:
        seq, hidden = out
        return [torch.cat([seq.embeds[i][seq.mask[i]], hidden[i][seq.mask[i]]], -1) for i in range(hidden.shape[0])]

    def primary(self, out: Any) -> list[Tensor]:
        seq = out[0] if isinstance(out, tuple) else out
        return [seq.embeds, seq.mask, seq.modality_ids]

    def trainable(self, module: nn.Module) -> list[tuple[str, nn.Parameter]]:
        fusion = module.component
        out = [(n, p) for n, p in fusion.named_parameters() if p.requires_grad]
        seen = {id(p) for _, p in out}
        inserts = fusion.inserts() if hasattr(fusion, "inserts") else {}
        for i, layer in sorted(inserts.items()):
            for n, p in layer.named_parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    out.append((f"inserts.{i}.{n}", p))
        return out

    def validate(self, module: nn.Module, out: Any, batch: Any, picks: Sequence[Any]) -> None:
        seq = out[0] if isinstance(out, tuple) else out
        tokens = batch[0]
        B = len(picks)
        if not isinstance(seq, FusedSequence):
            raise _Fail(f"forward must return mmcore.FusedSequence, got {type(seq).__name__}")
        e = seq.embeds
        if not isinstance(e, Tensor) or e.dim() != 3 or e.shape[0] != B or e.shape[2] != WIDTH:
            got = tuple(e.shape) if isinstance(e, Tensor) else type(e).__name__
            raise _Fail(f"FusedSequence.embeds must be (B, L, D) = ({B}, L, {WIDTH}), got {got}")
        L = e.shape[1]
        if not bool(torch.isfinite(e).all()):
            raise _Fail("FusedSequence.embeds holds NaN or infinity")
        _check_mask(seq.mask, (B, L), "FusedSequence.mask")
        ids = seq.modality_ids
        if not isinstance(ids, Tensor) or tuple(ids.shape) != (B, L) or ids.dtype != torch.long:
            raise _Fail(f"FusedSequence.modality_ids must be (B, L) long, got {getattr(ids, 'shape', ids)}")
        if bool((ids[~seq.mask] != -1).any()):
            raise _Fail("FusedSequence.modality_ids must be -1 at padding positions")
        n_mod = len(seq.modalities)
        if bool(((ids[seq.mask] < 0) | (ids[seq.mask] >= n_mod)).any()):
            raise _Fail(f"FusedSequence.modality_ids at real positions must index modalities ({n_mod} of them)")
        unknown = set(seq.modalities) - set(self.inputs)
        if unknown:
            raise _Fail(f"FusedSequence.modalities names unknown inputs {sorted(unknown)}")
        if seq.padding_side != "right":
            raise _Fail(f"a fusion's sequence must be right-padded, got padding_side={seq.padding_side!r}")
        for name, idx in seq.index.items():
            if name not in tokens:
                raise _Fail(f"FusedSequence.index has input {name!r}, which is not in the batch")
            if idx is None:
                continue
            if not isinstance(idx, Tensor) or idx.dim() != 2 or idx.shape[0] != B or idx.dtype != torch.long:
                raise _Fail(
                    f"FusedSequence.index[{name!r}] must be (B, N) long or None, got {getattr(idx, 'shape', idx)}"
                )
            real = idx >= 0
            if bool((idx[real] >= L).any()):
                raise _Fail(f"FusedSequence.index[{name!r}] points past the sequence (L = {L})")
            rows = torch.arange(B).unsqueeze(1).expand_as(idx)
            if bool((~seq.mask[rows[real], idx[real]]).any()):
                raise _Fail(f"FusedSequence.index[{name!r}] points at padding positions")
            if bool((idx[~real] != -1).any()):
                raise _Fail(f"FusedSequence.index[{name!r}] must be -1 where the token is padding")
        p = seq.prefix_len
        if p is not None:
            if not isinstance(p, Tensor) or tuple(p.shape) != (B,):
                raise _Fail(f"FusedSequence.prefix_len must be (B,) or None, got {getattr(p, 'shape', p)}")
            if bool(((p < 0) | (p > seq.mask.sum(1))).any()):
                raise _Fail("FusedSequence.prefix_len must lie between 0 and each sample's real length")
        for i, pick in enumerate(picks):
            if any(t is not None for t in self.tokens[pick].values()) and not bool(seq.mask[i].any()):
                raise _Fail(f"sample {i} has inputs but no real position in the fused sequence")

    def check_missing(self, module: nn.Module) -> None:
        module.eval()
        names = [n for n in self.inputs if self.inputs[n] != "text"]
        for pick in self.everything():
            lacking = [n for n in names if self.tokens[pick][n] is None]
            if not lacking:
                continue
            with torch.no_grad():
                present = self.make([pick], include=lacking)
                absent = self.make([pick])
                a = self.rows(self.run(module, present), present)[0]
                b = self.rows(self.run(module, absent), absent)[0]
            _same(
                a,
                b,
                f"a sample without {lacking[0]!r} gives other outputs when that input is in the batch with an "
                "all-False mask row than when it is absent: missing inputs must be handled through the mask",
            )
        with torch.no_grad():  # a batch where only the text is present
            only_text = self.make([0, 1], exclude=names)
            out = self.run(module, only_text)
            self.validate(module, out, only_text, [0, 1])

    def bad_inputs(self, module: nn.Module) -> list[tuple[str, Callable[[], Any]]]:
        module.eval()
        _, batch = self.make([0])
        return [("forward with no tokens at all", lambda: module.component({}, batch))]


class _HeadHarness(_Harness):
    VOCAB = 40
    #: per sample: (image tokens, text tokens); None: the record lacks that input
    LAYOUT = ((3, 5), (None, 3), (3, 8), (3, None))

    def __init__(self, target: _Target, workdir: str, targets: Callable[[Batch], dict[str, Tensor]] | None):
        super().__init__(target, workdir)
        from ..builtin import EarlyFusionConfig
        from ..fusion import EarlyFusion

        self.targets = targets
        self.backbone_config = BackboneConfig(**BACKBONE)
        self.inputs = {"image": "image", "text": "text"}
        self.fusion = EarlyFusion(EarlyFusionConfig(modality_embeddings=False), WIDTH, ["image", "text"], {"text"})
        gen = torch.Generator().manual_seed(3)
        self.ids = [None if t is None else torch.randint(0, self.VOCAB, (t,), generator=gen) for _, t in self.LAYOUT]
        self.hidden_seed = 300

    def build(self, seed: int, device: str | None = None) -> nn.Module:
        encoders = _stubs(self.inputs, self.VOCAB)  # the same values for every build; moved with the head
        head = self._factory_call(seed, device, width=WIDTH, encoders=dict(encoders), backbone=self.backbone_config)
        return _Stack(head, encoders=nn.ModuleDict(encoders))

    def state_module(self, module: nn.Module) -> nn.Module:
        return module.component

    def component(self, module: nn.Module) -> nn.Module:
        return module.component

    def cases(self) -> list[list[Any]]:
        return [[0], [1, 0], [2, 0, 1], [0, 1, 2, 3]]

    def everything(self) -> list[Any]:
        return [0, 1, 2, 3]

    def make(
        self,
        picks: Sequence[Any],
        *,
        noise: int = 1,
        dtype: torch.dtype = torch.float32,
        exclude: Sequence[str] = (),
    ) -> Any:
        B = len(picks)
        tokens: dict[str, Tokens] = {}
        inputs: dict[str, dict[str, Tensor]] = {}
        img = [self.LAYOUT[p][0] for p in picks]
        if any(n is not None for n in img) and "image" not in exclude:
            n = max(k for k in img if k is not None)
            mask = torch.tensor([[j < (k or 0) for j in range(n)] for k in img], dtype=torch.bool)
            tokens["image"] = Tokens(torch.zeros(B, n, WIDTH), mask)
            inputs["image"] = {"present": mask.any(1)}
        txt = [self.ids[p] for p in picks]
        if any(t is not None for t in txt) and "text" not in exclude:
            n = max(len(t) for t in txt if t is not None)
            ids = torch.zeros(B, n, dtype=torch.long)
            mask = torch.zeros(B, n, dtype=torch.bool)
            for i, t in enumerate(txt):
                if t is not None:
                    ids[i, : len(t)] = t
                    mask[i, : len(t)] = True
            tokens["text"] = Tokens(torch.zeros(B, n, WIDTH), mask)
            inputs["text"] = {"ids": ids, "mask": mask}
        labels = torch.tensor([p % 2 for p in picks], dtype=torch.long)
        batch = Batch(inputs, {"label": labels})
        with torch.no_grad():
            seq = self.fusion(tokens, batch)
        gen = torch.Generator().manual_seed(self.hidden_seed + noise)
        hidden = torch.randn(B, seq.mask.shape[1], WIDTH, generator=gen) * 10
        for i, p in enumerate(picks):
            real = seq.mask[i].nonzero().squeeze(1)
            g = torch.Generator().manual_seed(1000 + p)
            hidden[i, real] = torch.randn(len(real), WIDTH, generator=g)
        seq = FusedSequence(
            embeds=hidden,
            mask=seq.mask,
            modality_ids=seq.modality_ids,
            modalities=seq.modalities,
            index=seq.index,
            positions=seq.positions,
            prefix_len=seq.prefix_len,
        )
        return hidden.to(dtype), seq, batch

    def call(self, component: Any, batch: Any) -> Any:
        return component(batch[0], batch[1])

    def rows(self, out: HeadOutput, batch: Any) -> list[Tensor | None]:
        logits, mask = out.logits, out.mask
        B = logits.shape[0]
        if mask is not None and logits.dim() >= 2 and tuple(mask.shape) == tuple(logits.shape[:2]):
            return [logits[i][mask[i]] for i in range(B)]
        return [logits[i] for i in range(B)]

    def primary(self, out: HeadOutput) -> list[Tensor]:
        return [out.logits] + ([out.mask] if out.mask is not None else [])

    def _with_targets(self, module: nn.Module, batch: Batch) -> Batch:
        head = module.component
        if self.targets is not None:
            return Batch(batch.inputs, dict(self.targets(batch)))
        own = getattr(head, "example_targets", None)
        if callable(own):
            return Batch(batch.inputs, dict(own(batch)))
        return batch

    def loss_of(self, module: nn.Module, out: HeadOutput, batch: Any) -> tuple[Tensor | None, Any]:
        head = module.component
        b = self._with_targets(module, batch[2])
        b = Batch(b.inputs, {k: v.to(out.logits.device) for k, v in b.targets.items()})
        return head.loss(out, b), head.loss_terms(out, b)

    def extra_loss(self, module: nn.Module, out: Any, batch: Any) -> Tensor | None:
        return self.loss_of(module, out, batch)[0]

    def validate(self, module: nn.Module, out: Any, batch: Any, picks: Sequence[Any]) -> None:
        B = len(picks)
        if not isinstance(out, HeadOutput):
            raise _Fail(f"forward must return mmcore.HeadOutput, got {type(out).__name__}")
        lg = out.logits
        if not isinstance(lg, Tensor) or not lg.is_floating_point() or lg.dim() < 2 or lg.shape[0] != B:
            got = tuple(lg.shape) if isinstance(lg, Tensor) else type(lg).__name__
            raise _Fail(f"HeadOutput.logits must be a floating tensor with the batch first ({B}, ...), got {got}")
        if not bool(torch.isfinite(lg).all()):
            raise _Fail("HeadOutput.logits holds NaN or infinity")
        if out.mask is not None:
            m = out.mask
            if not isinstance(m, Tensor) or m.dtype != torch.bool or tuple(m.shape) != tuple(lg.shape[:2]):
                raise _Fail(
                    f"HeadOutput.mask must be None or a bool tensor of shape logits.shape[:2] = {tuple(lg.shape[:2])}, "
                    f"got {getattr(m, 'dtype', type(m).__name__)} {tuple(getattr(m, 'shape', ()))}"
                )
        loss, terms = self.loss_of(module, out, batch)
        if loss is None:
            if terms is not None:
                raise _Fail("loss() is None but loss_terms() is not")
            return
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            raise _Fail(f"loss() must return a scalar tensor or None, got {getattr(loss, 'shape', loss)}")
        if not bool(torch.isfinite(loss)):
            raise _Fail(f"loss() is {float(loss)} for a batch with padding and missing inputs")
        if terms is None or len(terms) != 2:
            raise _Fail("loss_terms() must return (total, count) when loss() is not None")
        total, count = terms
        if float(count) > 0:
            _same(
                (total / count).reshape(()),
                loss.reshape(()),
                "loss_terms() must satisfy total / count == loss()",
                tol=1e-3 * (1 + abs(float(loss))),
            )

    def check_padding_extra(self, module: nn.Module) -> None:
        module.eval()
        every = self.everything()
        losses = []
        for noise in (1, 2):
            batch = self.make(every, noise=noise)
            with torch.no_grad():
                losses.append(self.loss_of(module, self.run(module, batch), batch)[0])
        if losses[0] is not None:
            _same(
                losses[0].reshape(()),
                losses[1].reshape(()),
                "the loss changes when only the hidden states at padding positions change: padding contributes",
            )

    def check_missing(self, module: nn.Module) -> None:
        module.eval()
        with torch.no_grad():
            for picks, exclude, what in (
                ([1, 3], (), "a batch with a record lacking the image and one lacking the text"),
                ([0, 1], ("image",), "a batch without any image"),
                ([0, 3], ("text",), "a batch without any text"),
            ):
                batch = self.make(picks, exclude=exclude)
                try:
                    out = self.run(module, batch)
                    self.validate(module, out, batch, picks)
                except _Fail as exc:
                    raise _Fail(f"{what}: {exc}") from None

    def bad_inputs(self, module: nn.Module) -> list[tuple[str, Callable[[], Any]]]:
        module.eval()
        hidden, seq, _ = self.make([0, 2])
        wide = torch.randn(hidden.shape[0], hidden.shape[1], WIDTH + 3)
        return [
            (f"hidden states of width {WIDTH + 3} for a head built for {WIDTH}", lambda: module.component(wide, seq))
        ]


# --- processors -------------------------------------------------------------------------------


class _ProcessorChecks:
    BAD_WHERE = "record 7 field 'conformance'"

    def __init__(self, processor: Any, values: Any, modality: str | None, make: Callable[[], Any] | None, wd: str):
        self.p = processor
        self.modality = modality if modality is not None else getattr(processor, "modality", "")
        self.values = list(values) if values is not None else example_values(self.modality or "", processor)
        self.make = make
        self.wd = wd

    def checks(self) -> list[tuple[str, Callable[[], None]]]:
        return [(name, getattr(self, "check_" + name.split(".")[1])) for name in PROCESSOR_CHECKS]

    def _one(self, value: Any, i: int) -> dict[str, Tensor]:
        out = self.p(value, where=f"example value {i}")
        if not isinstance(out, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in out.items()):
            raise _Fail(f"__call__ must return dict[str, Tensor] for one sample, got {type(out).__name__}")
        return out

    def _outputs(self, proc: Any) -> list[dict[str, Tensor]]:
        return [proc(v, where=f"example value {i}") for i, v in enumerate(self.values)]

    def check_outputs(self) -> None:
        if self.values is None or len(self.values) < 2:
            raise _Fail(
                f"no example values for modality {self.modality!r}: give values= or a Processor.examples() method"
            )
        if isinstance(self.p, nn.Module):
            raise _Fail("a Processor must not be an nn.Module (it runs in DataLoader workers, outside the model)")
        own = getattr(self.p, "modality", None)
        if self.modality and own != self.modality:
            raise _Fail(f"the processor's modality is {own!r}, its encoder's {self.modality!r}")
        samples = [self._one(v, i) for i, v in enumerate(self.values)]
        n = len(samples)
        for picks in ([0], [1, 0], list(range(n))):
            batch = self.p.collate([samples[i] for i in picks])
            self._check_batch(batch, len(picks))
            mask = batch.get("mask")
            if mask is not None and not bool(mask.any(1).all()):
                raise _Fail("collate gives a sample that has the input an all-False mask row")

    def _check_batch(self, batch: Any, B: int) -> None:
        if not isinstance(batch, dict) or not all(isinstance(v, Tensor) for v in batch.values()):
            raise _Fail(f"collate must return dict[str, Tensor], got {type(batch).__name__}")
        for k, v in batch.items():
            if v.dim() == 0 or v.shape[0] != B:
                raise _Fail(f"collate's {k!r} has shape {tuple(v.shape)}: the batch ({B}) must come first")
        mask = batch.get("mask")
        if mask is not None:
            if mask.dtype != torch.bool or mask.dim() != 2:
                raise _Fail(f"collate's 'mask' must be (B, T) bool, got {mask.dtype} {tuple(mask.shape)}")
            if not _right_padded(mask):
                raise _Fail("collate's 'mask' is not right-padded: real items must come first")
        present = batch.get("present")
        if present is not None and (present.dtype != torch.bool or tuple(present.shape) != (B,)):
            raise _Fail(f"collate's 'present' must be (B,) bool, got {present.dtype} {tuple(present.shape)}")

    def check_missing(self) -> None:
        s = self._one(self.values[0], 0)
        batch = self.p.collate([s, None])
        self._check_batch(batch, 2)
        mask, present = batch.get("mask"), batch.get("present")
        marked = (mask is not None and not bool(mask[1].any()) and bool(mask[0].any())) or (
            present is not None and present.tolist() == [True, False]
        )
        if not marked:
            raise _Fail(
                "collate([sample, None]) does not mark the missing record: give it an all-False 'mask' row "
                "(variable-length inputs) or a 'present' (B,) bool flag (fixed-size inputs)"
            )
        self._check_batch(self.p.collate([None, None]), 2)

    def check_determinism(self) -> None:
        a, b = self._outputs(self.p), self._outputs(self.p)
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            for k in x:
                if not torch.equal(x[k], y[k]):
                    raise _Fail(f"processing example value {i} twice gives different {k!r} (training is False)")

    def check_pickle(self) -> None:
        try:
            copy = _pickled_copy(self.p)
        except Exception as exc:
            raise _Fail(
                f"the processor does not pickle (DataLoader workers need it): {type(exc).__name__}: {exc}"
            ) from None
        self._equal(self._outputs(copy), self._outputs(self.p), "a pickled copy")

    def _equal(self, a: list[dict[str, Tensor]], b: list[dict[str, Tensor]], who: str) -> None:
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if set(x) != set(y) or not all(torch.equal(x[k], y[k]) for k in x):
                raise _Fail(f"{who} processes example value {i} differently")

    def check_files(self) -> None:
        directory = os.path.join(self.wd, "processor")
        os.makedirs(directory, exist_ok=True)
        names = self.p.save(directory)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise _Fail(f"save() must return the list of file names it wrote, got {names!r}")
        missing = [n for n in names if not os.path.exists(os.path.join(directory, n))]
        if missing:
            raise _Fail(f"save() says it wrote {missing}, which are not in the directory")
        fresh = self.make() if self.make is not None else _pickled_copy(self.p)
        fresh.load(directory)
        self._equal(self._outputs(fresh), self._outputs(self.p), "a processor restored with load()")

    def check_bad_input(self) -> None:
        bad = object()
        try:
            self.p(bad, where=self.BAD_WHERE)
        except InputError as exc:
            if self.BAD_WHERE not in str(exc):
                raise _Fail(
                    f"the InputError for a bad value does not say where it is (the `where` argument): {exc}"
                ) from None
            return
        except Exception as exc:
            raise _Fail(
                f"a bad value (an arbitrary object) raised {type(exc).__name__}: {_first_line(exc)}; raise "
                "mmcore.InputError naming `where` and the reason"
            ) from None
        raise _Fail("a bad value (an arbitrary object) was accepted; raise mmcore.InputError naming `where`")


def _pickled_copy(obj: Any) -> Any:
    """``obj`` through pickle and back, as a DataLoader sends a processor to its workers.

    Only bytes this function has just made from ``obj`` are unpickled: never data from a file.
    """
    import pickle

    return pickle.loads(pickle.dumps(obj))
