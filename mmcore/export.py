"""Export a composed model's forward pass for inference: ``torch.export`` and ONNX.

    from mmcore.export import export, export_onnx, example_batch

    batch = example_batch(model, batch_size=2)            # or model.preprocess(records)
    exported = export(model, batch)                       # an ExportedEncoder: .program, .run(batch)
    logits = exported.run(batch)                          # {head name: logits}, same as eager
    export_onnx(model, batch, "model.onnx")               # needs onnx and onnxscript

What is exported is the model from collated tensors to every head's logits (no loss):
processors stay in Python (they read files, tokenize, resample), as they run in data-loader
workers during training. The exported function takes the batch's tensors as flat positional
arguments in a fixed order, ``ExportedModel.input_names`` (``"<input>.<key>"``, e.g.
``text.ids``, ``text.mask``, ``image.pixels``, ``image.present``), and returns one logits tensor
per head in ``ExportedModel.output_names`` order.

Shapes: the batch dimension is dynamic (any batch size at run time) unless
``dynamic_batch=False``. The sequence length of every input whose processor has a
``max_length`` (text) is dynamic too, from 1 up to that ``max_length`` (any text the processor
produces fits), unless ``dynamic_length=False``. Every other dimension (image size, audio
frames) is fixed to the example batch's: ``ExportedModel.run`` right-pads shorter inputs, so
set those processors' limits (``max_frames``) to what you export with.

Models with int8 layers (:mod:`mmcore.quantize`) export the CPU kernel's computation in float
operations (:func:`mmcore.quantize.dynamic_int8_linear`; the kernel itself is not traceable):
the same numbers as the eager int8 model (tested to 1e-5 through the CLI).

Files: ``mmcore export MODEL_DIR --out DIR [--onnx]`` writes ``export.json`` (input and output
names and shapes, which dimensions are dynamic, the checks run and their largest differences
from eager mode) and, with ``--onnx``, ``model.onnx`` (protobuf: no pickle). The
``torch.export`` program is checked but not written: its archive format
(``torch.export.save``) may unpickle on load, which model directories never do.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import InputError, MMCoreError
from .types import Batch

__all__ = ["ExportedModel", "export", "export_onnx", "example_batch", "example_records", "export_dir", "flat_inputs"]


class _Forward(nn.Module):
    """The model as a function of flat tensors: ``(*tensors) -> tuple of logits``."""

    def __init__(self, model: nn.Module, layout: Sequence[tuple[str, str]], heads: Sequence[str], mode: str | None):
        super().__init__()
        self.model = model
        self.layout = tuple(layout)
        self.heads = tuple(heads)
        self.mode = mode

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        inputs: dict[str, dict[str, Tensor]] = {}
        for (name, key), t in zip(self.layout, tensors, strict=True):
            inputs.setdefault(name, {})[key] = t
        out = self.model(Batch(inputs), mode=self.mode, heads=self.heads, compute_loss=False)
        return tuple(out.outputs[h].logits for h in self.heads)


def flat_inputs(batch: Batch) -> tuple[list[tuple[str, str]], list[Tensor]]:
    """The batch's input tensors in a fixed order: ``([(input, key), ...], [tensor, ...])``."""
    layout, tensors = [], []
    for name in sorted(batch.inputs):
        for key in sorted(batch.inputs[name]):
            t = batch.inputs[name][key]
            if isinstance(t, Tensor):
                layout.append((name, key))
                tensors.append(t)
    return layout, tensors


@dataclass
class ExportedModel:
    """A ``torch.export`` program of a model's forward pass, with the names of its arguments.

    Attributes:
        program: the :class:`torch.export.ExportedProgram`.
        layout: ``(input, key)`` of each positional argument.
        heads: the head of each output.
        dynamic_batch: whether the batch dimension is dynamic.
        example_shapes: the example batch's shape of each argument.
        dynamic_lengths: argument name -> the longest length its dimension 1 takes (the
            processor's ``max_length``), for the arguments whose length is dynamic.
    """

    program: Any
    layout: list[tuple[str, str]]
    heads: list[str]
    dynamic_batch: bool
    example_shapes: dict[str, list[int]] = field(default_factory=dict)
    dynamic_lengths: dict[str, int] = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        return [f"{n}.{k}" for n, k in self.layout]

    @property
    def output_names(self) -> list[str]:
        return [f"{h}.logits" for h in self.heads]

    def arguments(self, batch: Batch) -> list[Tensor]:
        """The batch's tensors in the program's order, right-padded with zeros (False) to the
        exported fixed lengths (padding is masked out, as collation pads); dynamic lengths are
        passed as they are. Errors name missing or too long inputs."""
        args = []
        for (name, key), want in zip(self.layout, self.example_shapes.values(), strict=True):
            longest = self.dynamic_lengths.get(f"{name}.{key}")
            if longest is not None:
                t = batch.inputs.get(name, {}).get(key)
                if isinstance(t, Tensor) and t.dim() >= 2 and t.shape[1] <= longest:
                    want = [want[0], t.shape[1], *want[2:]]
            t = batch.inputs.get(name, {}).get(key)
            if not isinstance(t, Tensor):
                raise InputError(
                    f"the exported model takes {name}.{key}; the batch has inputs "
                    f"{ {n: sorted(v) for n, v in batch.inputs.items()} }"
                )
            shape = list(t.shape)
            ok = len(shape) == len(want) and (self.dynamic_batch or shape[0] == want[0])
            ok = ok and all(s <= w for s, w in zip(shape[1:], want[1:], strict=False))
            if not ok:
                raise InputError(
                    f"{name}.{key} has shape {shape}; the exported model takes {want} "
                    f"({'any batch size; ' if self.dynamic_batch else ''}"
                    + (f"length 1 to {longest}; " if longest is not None else "")
                    + "other dimensions at most these, fixed at export)"
                )
            pad: list[int] = []
            for s, w in zip(reversed(shape[1:]), reversed(want[1:]), strict=True):
                pad += [0, w - s]
            args.append(torch.nn.functional.pad(t, pad) if any(pad) else t)
        return args

    def run(self, batch: Batch) -> dict[str, Tensor]:
        """Run the exported program on a batch: head name -> logits (for per-token heads, at the
        exported length: positions past a batch's own length are padding)."""
        outs = self.program.module()(*self.arguments(batch))
        return dict(zip(self.heads, outs, strict=True))


def _heads_and_mode(model: nn.Module, heads: Sequence[str] | None) -> list[str]:
    names = list(model.heads) if heads is None else list(heads)
    unknown = [h for h in names if h not in model.heads]
    if unknown or not names:
        raise MMCoreError(f"export: heads {unknown or names} not in the model; heads: {list(model.heads)}")
    return names


def _lengths(model: nn.Module, layout: Sequence[tuple[str, str]], tensors: Sequence[Tensor]) -> dict[str, int]:
    """Argument name -> longest length, for the tensors whose dimension 1 is an input's sequence
    (its processor has an integer ``max_length``; the tensors of that input with the example's
    sequence length there, e.g. ``text.ids`` and ``text.mask``)."""
    out: dict[str, int] = {}
    seq: dict[str, int] = {}
    for (name, key), t in zip(layout, tensors, strict=True):
        limit = getattr(model.processors[name], "max_length", None) if name in model.processors else None
        if not isinstance(limit, int) or isinstance(limit, bool) or t.dim() < 2:
            continue
        if seq.setdefault(name, int(t.shape[1])) == t.shape[1]:
            out[f"{name}.{key}"] = max(limit, int(t.shape[1]))
    return out


def _dynamic_shapes(
    layout: Sequence[tuple[str, str]], tensors: Sequence[Tensor], dynamic_batch: bool, lengths: Mapping[str, int]
) -> Any:
    if not dynamic_batch and not lengths:
        return None
    batch = torch.export.Dim("batch", min=1, max=4096)
    dims: dict[str, Any] = {}
    shapes = []
    for name, key in layout:
        d: dict[int, Any] = {0: batch} if dynamic_batch else {}
        longest = lengths.get(f"{name}.{key}")
        if longest is not None:
            d[1] = dims.setdefault(name, torch.export.Dim(f"{name}_length", min=1, max=longest))
        shapes.append(d or None)
    return (tuple(shapes),)  # forward(*tensors): one entry, the tuple


def export(
    model: nn.Module,
    batch: Batch,
    *,
    heads: Sequence[str] | None = None,
    mode: str | None = None,
    dynamic_batch: bool = True,
    dynamic_length: bool = True,
    strict: bool = False,
) -> ExportedModel:
    """``torch.export`` the model's forward pass (collated tensors -> each head's logits).

    Args:
        model: a :class:`~mmcore.MultimodalGPT` (put in eval mode here).
        batch: an example batch (``model.preprocess(records)``): it fixes which inputs the
            program takes and every dimension but the batch size and the sequence lengths.
        heads: the heads to compute (default: all).
        mode: attention mode (default: the backbone's).
        dynamic_batch: accept any batch size (else only the example's). Use an example with at
            least two rows: a batch of one would be specialised to one.
        dynamic_length: accept any sequence length up to the processor's ``max_length`` for the
            inputs that have one (text; else the example's length is the longest accepted).
        strict: ``torch.export``'s strict mode (TorchDynamo tracing).
    """
    model.eval()
    names = _heads_and_mode(model, heads)
    layout, tensors = flat_inputs(batch)
    if dynamic_batch and tensors and tensors[0].shape[0] < 2:
        raise MMCoreError("export with a dynamic batch needs an example batch of at least 2 records")
    fwd = _Forward(model, layout, names, mode)
    from .quantize import release_packed

    release_packed(model)  # an int8 model's packed kernel weights (after an eager call) cannot be traced
    lengths = _lengths(model, layout, tensors) if dynamic_length else {}
    with torch.no_grad():
        try:
            program = torch.export.export(
                fwd,
                tuple(tensors),
                dynamic_shapes=_dynamic_shapes(layout, tensors, dynamic_batch, lengths),
                strict=strict,
            )
        except Exception as exc:  # torch's export errors name the offending operation
            hint = " (export with dynamic_length=False, CLI --static-length, to fix the lengths)" if lengths else ""
            raise MMCoreError(f"torch.export failed for this model{hint}: {type(exc).__name__}: {exc}") from exc
    shapes = {f"{n}.{k}": list(t.shape) for (n, k), t in zip(layout, tensors, strict=True)}
    return ExportedModel(program, layout, names, dynamic_batch, shapes, lengths)


def _stable_sort(
    self: Tensor, *, stable: bool | None = None, dim: int = -1, descending: bool = False
) -> tuple[Tensor, Tensor]:
    """``torch.sort(..., stable=True)`` from comparisons, gathers and a scatter (ONNX has no stable
    sort): the rank of element ``i`` is the number of elements before it in the sorted order
    (smaller, or equal with a lower index). Quadratic in the sorted length, which is a fused
    sequence's (early fusion squeezes padding out with a stable sort)."""
    x = self.movedim(dim, -1)
    n = x.shape[-1]
    idx = torch.arange(n, device=x.device)
    xi, xj = x.unsqueeze(-1), x.unsqueeze(-2)  # element i against every j: (..., n, n)
    first = (xj > xi) if descending else (xj < xi)
    tie = (xj == xi) & (idx[None, :] < idx[:, None])
    rank = (first | tie).sum(-1)  # (..., n): where element i goes
    order = torch.zeros_like(rank).scatter(-1, rank, idx.expand_as(rank))  # (..., n): what goes at position k
    return x.gather(-1, order).movedim(-1, dim), order.movedim(-1, dim)


def _stable_argsort(self: Tensor, *, stable: bool = True, dim: int = -1, descending: bool = False) -> Tensor:
    return _stable_sort(self, stable=stable, dim=dim, descending=descending)[1]


_ONNX_DECOMPOSITIONS = {
    torch.ops.aten.sort.stable: _stable_sort,
    torch.ops.aten.argsort.stable: _stable_argsort,
}


def export_onnx(
    model: nn.Module,
    batch: Batch,
    path: str | Path,
    *,
    heads: Sequence[str] | None = None,
    mode: str | None = None,
    dynamic_batch: bool = True,
    dynamic_length: bool = True,
    opset: int | None = None,
) -> ExportedModel:
    """Write the forward pass as ONNX (``torch.onnx.export(..., dynamo=True)``) to ``path``.

    Needs the ``onnx`` and ``onnxscript`` packages. Returns the :class:`ExportedModel` the file
    was made from (input and output names are the same). The file is written atomically.
    """
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise MMCoreError(
            f"ONNX export needs the onnx and onnxscript packages (pip install onnx onnxscript): {exc}"
        ) from exc
    exported = export(model, batch, heads=heads, mode=mode, dynamic_batch=dynamic_batch, dynamic_length=dynamic_length)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import warnings

        from .io import atomic_write

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = exported.program.run_decompositions(_ONNX_DECOMPOSITIONS)
            onnx_program = torch.onnx.export(
                program,
                (),
                dynamo=True,
                input_names=exported.input_names,
                output_names=exported.output_names,
                opset_version=opset,
                verbose=False,
            )
        atomic_write(path, lambda tmp: onnx_program.save(str(tmp)))
    except MMCoreError:
        raise
    except Exception as exc:
        raise MMCoreError(f"ONNX export failed for this model: {type(exc).__name__}: {exc}") from exc
    return exported


def run_onnx(path: str | Path, exported: ExportedModel, batch: Batch) -> dict[str, Tensor]:
    """Run an ONNX file with onnxruntime (CPU) on a batch: head name -> logits."""
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {
        name: t.detach().cpu().numpy() for name, t in zip(exported.input_names, exported.arguments(batch), strict=True)
    }
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, feeds)
    return {h: torch.from_numpy(np.asarray(o)) for h, o in zip(exported.heads, outs, strict=True)}


# --- example inputs ---------------------------------------------------------------------------


def example_records(model: nn.Module, n: int = 2) -> list[dict[str, Any]]:
    """``n`` made-up records with every input of the model (text, image, audio; others need a record)."""

    records: list[dict[str, Any]] = [{} for _ in range(n)]
    for name, proc in model.processors.items():
        modality = proc.modality or model.encoders[name].modality
        own = proc.examples()
        for i, r in enumerate(records):
            if own:
                r[name] = own[0]  # the same value in every record: no padding
            elif modality == "text":
                r[name] = f"example record number {i:04d}"  # the same length: no padding
            else:
                raise MMCoreError(
                    f"export: cannot make up an example for input {name!r} (modality {modality!r}; its processor "
                    f"{type(proc).__name__} has no examples()); give a record"
                )
    return records


def example_batch(model: nn.Module, batch_size: int = 2, records: Sequence[Mapping[str, Any]] | None = None) -> Batch:
    """A batch of ``batch_size`` records: the given ones repeated, or :func:`example_records`."""
    recs = list(records) if records else example_records(model, batch_size)
    recs = [recs[i % len(recs)] for i in range(batch_size)]
    return model.preprocess(recs, targets=())


# --- a model directory ------------------------------------------------------------------------


def _max_diff(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) if a[k].numel() else 0.0 for k in a)


def export_dir(
    model_dir: str | Path,
    out: str | Path,
    *,
    record: Mapping[str, Any] | None = None,
    batch_size: int = 2,
    onnx: bool = False,
    dynamic_batch: bool = True,
    dynamic_length: bool = True,
    verify: bool = True,
) -> dict[str, Any]:
    """``mmcore export``: export a model directory, check the program (and the ONNX file) against
    eager mode on the example batch, on a batch of another size and (dynamic lengths) on a batch
    whose texts are longer than the example's, and write ``export.json``. ``verify=False`` loads
    the directory without checking its checksums (``--no-verify``)."""
    from .checkpoint import load
    from .io import atomic_write_text

    model = load(model_dir, verify=verify).eval()
    records = None
    if record is not None:
        base = record.get("__base__")
        records = [_resolve(model, {k: v for k, v in record.items() if k != "__base__"}, base)]
    batch = example_batch(model, batch_size, records)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    exported = export(model, batch, dynamic_batch=dynamic_batch, dynamic_length=dynamic_length)
    report: dict[str, Any] = {
        "model_dir": str(model_dir),
        "inputs": exported.example_shapes,
        "outputs": exported.output_names,
        "dynamic_batch": dynamic_batch,
        "dynamic_lengths": exported.dynamic_lengths,
        "torch_export_seconds": round(time.perf_counter() - t0, 2),
    }
    checks = [batch]
    if dynamic_batch:
        checks.append(example_batch(model, batch_size + 1, records))
    if exported.dynamic_lengths:
        longer = _longer_batch(model, batch_size, records, batch)
        if longer is not None:
            checks.append(longer)
            report["longer_input_checked"] = {
                n: list(longer.inputs[n.split(".")[0]][n.split(".")[1]].shape) for n in exported.dynamic_lengths
            }
    with torch.no_grad():
        eager = [
            {h: o.logits for h, o in model(b, heads=exported.heads, compute_loss=False).outputs.items()} for b in checks
        ]
        report["torch_export_max_abs_diff"] = max(
            _max_diff(exported.run(b), e) for b, e in zip(checks, eager, strict=True)
        )
    if onnx:
        path = out / "model.onnx"
        export_onnx(model, batch, path, dynamic_batch=dynamic_batch, dynamic_length=dynamic_length)
        report["onnx"] = path.name
        report["onnx_bytes"] = path.stat().st_size
        import onnx as onnx_pkg

        onnx_pkg.checker.check_model(str(path))
        report["onnx_checker"] = "ok"
        try:
            diffs = [_max_diff(run_onnx(path, exported, b), e) for b, e in zip(checks, eager, strict=True)]
            report["onnxruntime_max_abs_diff"] = max(diffs)
        except ImportError:
            report["onnxruntime_max_abs_diff"] = None  # onnxruntime not installed: the checker ran
    atomic_write_text(out / "export.json", json.dumps(report, indent=2) + "\n")
    return report


def _longer_batch(
    model: nn.Module, batch_size: int, records: Sequence[Mapping[str, Any]] | None, example: Batch
) -> Batch | None:
    """The example records with every text written twice (longer than the example, truncated at
    the processor's ``max_length``), when that makes a longer batch; else None."""
    recs = list(records) if records else example_records(model, batch_size)
    texts = [k for k, p in model.processors.items() if getattr(p, "modality", "") == "text"]
    longer = [{**r, **{k: f"{r[k]} {r[k]}" for k in texts if isinstance(r.get(k), str)}} for r in recs]
    try:
        batch = example_batch(model, batch_size, longer)
    except InputError:  # truncation = "error": the example is as long as texts may be
        return None
    grew = any(
        batch.inputs[k]["ids"].shape[1] > example.inputs[k]["ids"].shape[1]
        for k in texts
        if "ids" in batch.inputs.get(k, {}) and "ids" in example.inputs.get(k, {})
    )
    return batch if grew else None


def _resolve(model: nn.Module, record: dict[str, Any], base: str | None) -> dict[str, Any]:
    """File references of non-text inputs resolved against the record file's folder (the manifest rules)."""
    from .data import resolve_record

    modalities = {k: getattr(e, "modality", "") for k, e in model.encoders.items()}
    return resolve_record(record, modalities, base)
