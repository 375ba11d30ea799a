"""The checks every component kind shares (:class:`_Checks`): determinism, batching, padding,
dtype, device, meta-device build, compile, state dict, ... run over a harness."""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..types import _to

# --- the checks every kind shares -----------------------------------------------------------
from .common import CHECKS, Report, _Fail, _first_line, _same, _same_rows, _Skip, _tol, _where
from .harness import _Harness


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
