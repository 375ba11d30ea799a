"""The encoder and projector harnesses."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..types import Tokens
from .common import WIDTH, _Fail, _same, _Target
from .examples import example_values
from .harness import _check_mask, _Harness


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
        return self.comp.build_processor(self.t.options)

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
        want: tuple[Any, ...] = (B, e.shape[1], module.out_dim)
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
