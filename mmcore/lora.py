"""Low-rank adapters (LoRA) as plain modules: :class:`LoRALinear`, :func:`apply_lora`, :func:`merge_lora`.

A component trained with ``train = "lora"`` keeps every parameter of its own frozen; each
target ``nn.Linear`` is replaced by a :class:`LoRALinear` that holds the original layer as
``base`` and adds a trainable low-rank update::

    y = base(x) + (alpha / rank) * (dropout(x) @ A.T) @ B.T      A: (rank, in)  B: (out, rank)

``B`` starts at zero, so a freshly adapted component computes exactly what it computed
before. Parameter names gain one level: ``blocks.0.attn.qkv.weight`` becomes
``blocks.0.attn.qkv.base.weight``, next to ``...qkv.lora_A`` and ``...qkv.lora_B``; weight
sources (``weights_from``) are read before the adapters are added, so they use the plain
names. :func:`merge_lora` folds every update into its base weight and puts plain
``nn.Linear`` layers back (for export, or to save the model as a plain one).
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LoRALinear",
    "adapted_layers",
    "apply_lora",
    "lora_candidates",
    "match_targets",
    "merge_lora",
    "is_lora_param",
    "unadapted_shapes",
]

M = TypeVar("M", bound=nn.Module)


class LoRALinear(nn.Module):
    """``base(x) + scaling * B(A(dropout(x)))`` around a frozen ``nn.Linear``.

    Args:
        base: the layer to adapt; its parameters are set to ``requires_grad = False``.
        rank, alpha, dropout: as in :class:`mmcore.config.LoraConfig`; ``scaling = alpha / rank``.

    Attributes:
        base: the wrapped ``nn.Linear`` (unchanged by training).
        lora_A: ``(rank, in_features)``, initialised as ``nn.Linear`` initialises its weight.
        lora_B: ``(out_features, rank)``, zeros.
        weight: the effective weight ``base.weight + scaling * lora_B @ lora_A`` (computed; code
            that reads ``layer.weight`` directly sees the adapted layer).
        bias: ``base.bias``.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        self.base = base
        base.requires_grad_(False)
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.scaling = self.alpha / self.rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(self.rank, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, self.rank, device=w.device, dtype=w.dtype))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_lora()

    @torch.no_grad()
    def reset_lora(self) -> None:
        """A as a linear layer's weight (Kaiming uniform), B zero: the update starts at exactly zero."""
        if not self.lora_A.is_meta:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> Tensor:
        return self.base.weight + self.delta_weight()

    @property
    def bias(self) -> Tensor | None:
        return self.base.bias

    def delta_weight(self) -> Tensor:
        """``scaling * lora_B @ lora_A``: (out_features, in_features)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: Tensor) -> Tensor:
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return self.base(x) + update * self.scaling

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """A plain ``nn.Linear`` whose weight is the adapted one (a new module; ``self`` is unchanged).

        Its parameters have the base's ``requires_grad`` (False) and are fresh tensors.
        """
        out = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.base.bias is not None,
            device=self.base.weight.device,
            dtype=self.base.weight.dtype,
        )
        merged = self.base.weight.float() + self.delta_weight().float()
        out.weight.copy_(merged.to(self.base.weight.dtype))
        if self.base.bias is not None:
            out.bias.copy_(self.base.bias)
        out.requires_grad_(self.base.weight.requires_grad)
        return out

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}"


def is_lora_param(name: str) -> bool:
    """True for the adapter parameters (``...lora_A``, ``...lora_B``)."""
    last = name.rpartition(".")[2]
    return last in ("lora_A", "lora_B")


def lora_candidates(module: nn.Module, exclude: Sequence[str] = ()) -> list[str]:
    """Names (inside ``module``) of the ``nn.Linear`` layers an adapter could wrap.

    Layers under a name in ``exclude`` (prefixes: ``"inserts"``) and layers already wrapped are
    left out.
    """
    out = []
    for name, m in module.named_modules():
        if not name or any(name == e or name.startswith(e + ".") for e in exclude):
            continue
        if isinstance(m, nn.Linear) and not name.endswith(".base"):
            out.append(name)
    return out


def adapted_layers(module: nn.Module, exclude: Sequence[str] = ()) -> list[str]:
    """Names (inside ``module``) of the layers already wrapped in :class:`LoRALinear`: with
    :func:`lora_candidates`, the layers the targets were matched against."""
    return [
        n
        for n, m in module.named_modules()
        if isinstance(m, LoRALinear) and not any(n == e or n.startswith(e + ".") for e in exclude)
    ]


def unadapted_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """State-dict key -> shape, with the keys the model had before :func:`apply_lora`
    (``...qkv.base.weight`` -> ``...qkv.weight``; the adapters' own ``lora_A``/``lora_B`` left out),
    which is how ``weights_from`` files name them."""
    wrapped = set(adapted_layers(model))
    out = {}
    for key, v in model.state_dict(keep_vars=True).items():
        owner, _, last = key.rpartition(".")
        if owner in wrapped and last in ("lora_A", "lora_B"):
            continue
        layer, _, base = owner.rpartition(".")
        if base == "base" and layer in wrapped:
            key = f"{layer}.{last}"
        out[key] = tuple(v.shape)
    return out


def _matches(name: str, target: str) -> bool:
    if any(ch in target for ch in "*?["):
        return fnmatch.fnmatchcase(name, target)
    return name == target or name.endswith("." + target)


def match_targets(candidates: Iterable[str], targets: Sequence[str]) -> tuple[list[str], list[str]]:
    """(layers matched by some target, targets that match no layer)."""
    candidates = list(candidates)
    matched = [n for n in candidates if any(_matches(n, t) for t in targets)]
    unused = [t for t in targets if not any(_matches(n, t) for n in candidates)]
    return matched, unused


def condense(names: Iterable[str], limit: int | None = None) -> str:
    """``blocks.0.attn.qkv``, ``blocks.1.attn.qkv`` -> ``blocks.*.attn.qkv (2)``: names with indices folded.

    With ``limit``, at most that many groups are shown, then how many names there are in all.
    """
    groups: dict[str, int] = {}
    for n in names:
        key = re.sub(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.)", "*", n)
        groups[key] = groups.get(key, 0) + 1
    shown = [k if c == 1 else f"{k} ({c})" for k, c in groups.items()]
    if limit is not None and len(shown) > limit:
        return ", ".join(shown[:limit]) + f" ... ({sum(groups.values())} in all)"
    return ", ".join(shown)


def apply_lora(
    module: nn.Module,
    *,
    rank: int,
    alpha: float,
    targets: Sequence[str],
    dropout: float = 0.0,
    exclude: Sequence[str] = (),
    strict: bool = True,
) -> list[str]:
    """Freeze ``module`` and wrap its target ``nn.Linear`` layers in :class:`LoRALinear`, in place.

    Returns the wrapped layers' names. With ``strict``, raises ``ValueError`` naming the targets
    that match no layer and listing the layers there are. Layers under ``exclude`` prefixes keep their
    parameters' ``requires_grad`` as it was (they belong to another component's policy).
    """
    candidates = lora_candidates(module, exclude)
    matched, unused = match_targets(candidates, targets)
    if unused and strict:
        raise ValueError(
            f"LoRA targets {unused} match no linear layer; the layers are: {condense(candidates) or '(none)'}"
        )
    for name, p in module.named_parameters():
        if not any(name.startswith(e + ".") for e in exclude):
            p.requires_grad_(False)
    for name in matched:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha, dropout))
    return matched


def merge_lora(model: M) -> M:
    """Fold every :class:`LoRALinear` of ``model`` into a plain ``nn.Linear``, in place; return ``model``.

    The merged model computes the same outputs (up to float rounding) and has the plain
    parameter names. A :class:`mmcore.MultimodalGPT` built from a spec also gets a spec whose
    ``train = "lora"`` sections say ``train = "full"``, so :func:`mmcore.save` writes it as a
    plain model that :func:`mmcore.load` rebuilds without adapters.
    """
    wrapped = [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name, m in wrapped:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, m.merge())
    spec = getattr(model, "spec", None)
    if spec is not None:
        model.spec = spec.without_lora()
    return model
