"""The harness base: how the kit builds the module under test and feeds it, and the stub
encoders that fusions and heads are built with."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

# --- harnesses: how each kind is built and fed ------------------------------------------------
from .common import WIDTH, _Fail, _rng, _Skip, _Target


class _Harness:
    """Builds the module under test and makes its inputs; one subclass per kind."""

    #: whether the kit makes the padding values (then it varies them)
    random_padding = True

    def __init__(self, target: _Target, workdir: str):
        self.t = target
        self.comp = target.comp
        self.workdir = workdir

    def _factory_call(self, seed: int, device: str | None, **context: Any) -> nn.Module:
        torch.manual_seed(seed)
        with torch.device(device) if device else contextlib.nullcontext():
            m = self.comp.build(self.t.options, base_dir=self.workdir, **context)
        if not isinstance(m, nn.Module):
            raise _Fail(f"the factory returned {type(m).__name__}, not a torch.nn.Module")
        return m

    # overridden per kind
    def build(self, seed: int, device: str | None = None) -> nn.Module:
        raise NotImplementedError

    def cases(self) -> list[list[Any]]:
        """Batches of example rows (by index): one row, then mixed orders and lengths."""
        return [[0], [1, 0], [2, 0, 1], [0, 1, 2, 3]]

    def everything(self) -> list[Any]:
        """Every example row once."""
        return [0, 1, 2, 3]

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
