"""int8 weight quantization for CPU inference.

    from mmcore.quantize import quantize

    qmodel = quantize(mmcore.load("runs/lm"))              # in place; returns the model
    mmcore.save(qmodel, "runs/lm-int8")                    # int8 weights + scales, safetensors
    same = mmcore.load("runs/lm-int8")                     # rebuilt quantized

or from the command line: ``mmcore quantize runs/lm --out runs/lm-int8``.

Every ``nn.Linear`` of the chosen parts (by default the backbone, including layers a fusion
inserts into it, the encoders and the projectors) becomes an :class:`Int8Linear`: the
weight stored as int8 with one float32 scale per output row (symmetric, zero point 0), the
bias in float32. On CPU the product runs through PyTorch's own dynamically quantized linear
kernel (``torch.ops.quantized.linear_dynamic``, FBGEMM/oneDNN: activations are quantized to
8 bits per call, multiplied in integer arithmetic and rescaled), the kernel behind
``torch.ao.quantization.quantize_dynamic``. Elsewhere (CUDA, ``torch.export`` tracing,
``torch.compile``) :func:`dynamic_int8_linear` computes the same thing with float operations
(the activations quantized per call as the kernel does, integer-valued products, the same
rescaling): the same numbers as the kernel (to about 1e-6 of the output's scale), without the
speed-up. So an exported int8 model computes what the eager int8 model computes.

What stays float: embeddings (token, position), norms, convolutions (patch embeddings,
audio front ends), heads (an LM head tied to the token embedding reads the embedding's
float weight; pass ``parts=(..., "heads")`` to quantize untied heads and classifiers) and
any linear whose weight is shared with another module.

Model directories. ``mmcore.save`` writes the int8 weights and scales as plain tensors
(``<linear>.weight_int8``, ``<linear>.weight_scale``, ``<linear>.bias``) to
``model.safetensors``, and records the quantization (method and the names of the
quantized linears) in the file's metadata and in ``manifest.json``. ``mmcore.load`` reads
that record, builds the float model on the meta device, puts :class:`Int8Linear` modules at
the recorded names, and assigns the stored tensors: no pickle, no float weights ever
materialised, and a quantized directory is about a quarter of the float one's size (plus
the float parts listed above).

The backbone's single-token decode step (:meth:`mmcore.GPT._decode_step`) accepts
:class:`Int8Linear` layers (they provide :meth:`Int8Linear.step_linear`), so generation of
a quantized model keeps the lean decoding path.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import MMCoreError, WeightsError

__all__ = [
    "Int8Linear",
    "dynamic_int8_linear",
    "release_packed",
    "quantize",
    "quantization_info",
    "apply_quantization",
    "METHOD",
    "PARTS",
]

#: The method name recorded in model directories.
METHOD = "int8-weight-per-channel"
#: Parts of a :class:`~mmcore.MultimodalGPT` that can be quantized.
PARTS = ("backbone", "encoders", "projectors", "fusion", "heads")
_DEFAULT_PARTS = ("backbone", "encoders", "projectors")


def _qint8_weight(w_int8: Tensor, scale: Tensor) -> Tensor:
    """An int8 (out, in) matrix and per-row scales as a per-channel quantized tensor (zero points 0)."""
    zero = torch.zeros(w_int8.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # PyTorch announces a future replacement of quantized tensors
        warnings.simplefilter("ignore")
        return torch._make_per_channel_quantized_tensor(w_int8.cpu(), scale.double().cpu(), zero, 0)


def dynamic_int8_linear(x: Tensor, weight_int8: Tensor, weight_scale: Tensor, bias: Tensor | None) -> Tensor:
    """``torch.ops.quantized.linear_dynamic(x, packed, reduce_range=True)`` in float operations
    (traceable by ``torch.export``, and on any device): ``x`` (N, in) float32 -> (N, out).

    As the CPU kernel does: one affine quantization of the whole ``x`` to 7 bits (``reduce_range``):
    the range ``[min(x, 0), max(x, 0)]`` over ``127`` steps (computed in double; 0 -> 0.1), zero
    point ``round(-min / scale)`` (or ``round(127 - max / scale)``, whichever PyTorch's
    ``ChooseQuantizationParams`` picks), ``x_q = clamp(round(x * (1 / scale)) + zero, 0, 127)``; then
    ``(x_q - zero) @ weight_int8.T`` (integers, exact in float32 for these sizes) times
    ``scale * weight_scale``, plus the bias. Agrees with the kernel to about 2e-7 of the
    output's largest value (tests/test_quantize.py); a whole exported int8 model gives the eager
    int8 model's logits exactly (tests/test_export.py)."""
    lo = x.min().clamp(max=0.0).double()
    hi = x.max().clamp(min=0.0).double()
    scale = (hi - lo) / 127.0  # in double, as PyTorch's ChooseQuantizationParams, then stored as float
    scale = torch.where((scale.float() == 0) | torch.isinf(1.0 / scale.float()), torch.full_like(scale, 0.1), scale)
    # the zero point from whichever end of the range loses less precision, rounded to an integer
    from_min, from_max = -lo / scale, 127.0 - hi / scale
    better_min = -(lo / scale).abs() < 127.0 - (hi / scale).abs()
    zero = torch.round(torch.where(better_min, from_min, from_max)).clamp(0, 127).to(x.dtype)
    scale = scale.to(x.dtype)
    xq = (torch.round(x * (1.0 / scale)) + zero).clamp(0, 127) - zero  # FBGEMM multiplies by the inverse
    y = F.linear(xq, weight_int8.to(x.dtype)) * (scale * weight_scale.to(x.dtype))
    return y if bias is None else y + bias.to(x.dtype)


def release_packed(model: nn.Module) -> None:
    """Drop every :class:`Int8Linear`'s packed kernel weights (they are packed again on the next
    CPU call). ``torch.export`` cannot trace a module that holds them (TorchScript objects)."""
    for m in model.modules():
        if isinstance(m, Int8Linear):
            m._packed, m._packed_key = None, None


class Int8Linear(nn.Module):
    """A linear layer with an int8 weight (one float32 scale per output row) and a float32 bias.

    Inference only (no gradients flow to the weight). ``forward(x (..., in)) -> (..., out)``:

    * on CPU, outside ``torch.compile``/``torch.export``: ``torch.ops.quantized.linear_dynamic``
      on weights packed once (on first use and again when the int8 weight changes in place),
      with ``reduce_range=True`` as ``torch.ao.quantization.quantize_dynamic`` uses on x86
      (7-bit activations, so the integer products cannot saturate);
    * otherwise (other devices, tracing) :func:`dynamic_int8_linear`: the kernel's computation
      in float operations, so the numbers agree; the result in ``x``'s dtype.

    Buffers (all saved): ``weight_int8`` int8 ``(out, in)``, ``weight_scale`` float32
    ``(out,)``, ``bias`` float32 ``(out,)`` or None.
    """

    weight_int8: Tensor
    weight_scale: Tensor
    bias: Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32, device=device) if bias else None)
        self._packed: Any = None
        self._packed_key: tuple[int, ...] | None = None

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        """Quantize a float linear: per output row, ``scale = max|w| / 127`` and ``round(w / scale)``."""
        w = linear.weight.detach().float().cpu()
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)  # (out,)
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)  # (out, in)
        m = cls(linear.in_features, linear.out_features, linear.bias is not None)
        m.weight_int8.copy_(q)
        m.weight_scale.copy_(scale)
        if linear.bias is not None:
            m.bias.copy_(linear.bias.detach().float().cpu())
        return m.to(linear.weight.device)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The float weight ``(out, in)`` this layer computes with: ``weight_int8 * weight_scale``."""
        return self.weight_int8.to(dtype) * self.weight_scale.to(dtype)[:, None]

    def _pack(self) -> Any:
        w = self.weight_int8
        key = (w.data_ptr(), w._version, self.weight_scale._version, -1 if self.bias is None else self.bias._version)
        if self._packed is None or self._packed_key != key:
            bias = None if self.bias is None else self.bias.detach().float().cpu().contiguous()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._packed = torch.ops.quantized.linear_prepack(_qint8_weight(w, self.weight_scale), bias)
            self._packed_key = key
        return self._packed

    def _use_kernel(self, x: Tensor) -> bool:
        return (
            x.device.type == "cpu"
            and self.weight_int8.device.type == "cpu"
            and not torch.compiler.is_compiling()
            and not _is_fake(x)
        )

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).float()
        if self._use_kernel(x):
            y = torch.ops.quantized.linear_dynamic(flat, self._pack(), True)
        else:
            y = dynamic_int8_linear(flat, self.weight_int8, self.weight_scale, self.bias)
        return y.view(*shape[:-1], self.out_features).to(x.dtype)

    def step_linear(self) -> tuple[Callable[[Tensor], Tensor], Tensor]:
        """For the backbone's decode step: a function ``(B, in) -> (B, out)`` computing this layer
        on CPU, and the tensor whose in-place changes make it stale (the int8 weight)."""
        if self.weight_int8.device.type != "cpu":
            w, s, b = self.weight_int8, self.weight_scale, self.bias

            def dense(x: Tensor) -> Tensor:
                return dynamic_int8_linear(x.float(), w, s, b).to(x.dtype)

            return dense, self.weight_int8
        packed = self._pack()
        op = torch.ops.quantized.linear_dynamic

        def kernel(x: Tensor) -> Tensor:
            return op(x, packed, True)

        return kernel, self.weight_int8

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"


def _is_fake(x: Tensor) -> bool:
    """A tensor subclass (fake or functional tensors while tracing for torch.export)."""
    return type(x) not in (Tensor, nn.Parameter)


# --- model-level -------------------------------------------------------------------------------


def _roots(model: nn.Module, parts: Iterable[str]) -> list[tuple[str, nn.Module]]:
    out = []
    for part in parts:
        if part not in PARTS:
            raise MMCoreError(f"quantize: unknown part {part!r}; valid parts: {', '.join(PARTS)}")
        m = getattr(model, part, None)
        if m is None:
            continue
        out.append((part, m))
    return out


def _shared_weights(model: nn.Module) -> set[int]:
    """ids of parameters reachable under more than one name (tied weights)."""
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {k for k, n in seen.items() if n > 1}


def quantize(model: nn.Module, *, parts: Iterable[str] = _DEFAULT_PARTS, min_features: int = 1) -> nn.Module:
    """Replace the float ``nn.Linear`` layers of ``parts`` by :class:`Int8Linear`, in place.

    Args:
        model: a :class:`~mmcore.MultimodalGPT` (or any module with the named parts).
        parts: which of ``backbone``, ``encoders``, ``projectors``, ``fusion``, ``heads``.
            Default: backbone, encoders and projectors.
        min_features: leave linears with fewer input features than this float.

    Returns the model, in eval mode, with ``model.quantization`` set to the record that
    :func:`mmcore.save` writes. Linears whose weight is shared (tied) are left float.
    Quantizing a model twice is an error.
    """
    if getattr(model, "quantization", None):
        raise MMCoreError("quantize: this model is already quantized")
    shared = _shared_weights(model)
    names: list[str] = []
    for part, root in _roots(model, parts):
        for name, mod in list(root.named_modules()):
            if type(mod) is not nn.Linear or mod.in_features < min_features:
                continue
            if id(mod.weight) in shared:
                continue
            full = f"{part}.{name}" if name else part
            _set_module(model, full, Int8Linear.from_linear(mod))
            names.append(full)
    if not names:
        raise MMCoreError(f"quantize: no nn.Linear layer found in {list(parts)}")
    model.eval()
    model.quantization = {"method": METHOD, "modules": names}  # type: ignore[assignment]  # mmcore's own attribute
    return model


def quantization_info(model: nn.Module) -> dict[str, Any] | None:
    """The quantization record of a model (method, quantized module names), or None if float."""
    q = getattr(model, "quantization", None)
    return dict(q) if q else None


def apply_quantization(model: nn.Module, record: Mapping[str, Any], *, where: str = "model") -> None:
    """Put empty :class:`Int8Linear` modules at the names ``record["modules"]`` lists (used by
    :func:`mmcore.load` on a model built on the meta device, before its tensors are assigned)."""
    if not isinstance(record, Mapping) or record.get("method") != METHOD or not isinstance(record.get("modules"), list):
        raise WeightsError(
            f"{where}: unknown quantization record {record!r}; this version of mmcore reads method {METHOD!r}"
        )
    for name in record["modules"]:
        try:
            mod = model.get_submodule(name)
        except AttributeError as exc:
            raise WeightsError(
                f"{where}: quantized module {name!r} does not exist in the model the spec builds"
            ) from exc
        if type(mod) is not nn.Linear:
            raise WeightsError(f"{where}: quantized module {name!r} is a {type(mod).__name__}, expected nn.Linear")
        _set_module(model, name, Int8Linear(mod.in_features, mod.out_features, mod.bias is not None, device="meta"))
    model.quantization = {"method": METHOD, "modules": list(record["modules"])}  # type: ignore[assignment]


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def file_size(directory: Any) -> int:
    """Bytes of a model directory's ``model.safetensors``."""
    from pathlib import Path

    return (Path(directory) / "model.safetensors").stat().st_size
