"""Generated outputs other than text: an input's processor turns generated ids into a value and
writes it to a file (the processor capabilities ``decode``, ``output_suffixes`` and
``save_output`` of :class:`mmcore.Processor`).

The core knows no output modality: :func:`generate_outputs` runs :func:`mmcore.generate` on the
input an LM head predicts and hands the ids to that input's processor's ``decode``;
:func:`write_outputs` writes values atomically through a saver (a processor's ``save_output``).
``encoder:vision.palette`` (mmcore-vision) is one such processor: its outputs are PIL images,
written as PNG (``mmcore_vision.generate.generate_images`` wraps this for images).

    values = mmcore.generate_outputs(model, [{"text": "draw a seven"}], GenerationConfig(do_sample=True, seed=0))
    paths = mmcore.write_outputs(values, "seven.png", model.processors["image"].save_output,
                                 suffixes=model.processors["image"].output_suffixes)

A processor whose outputs have a fixed size -- no ``eos_id``, a ``max_tokens`` -- gets exactly
the ids the prompt lacks (``max_tokens`` minus those of the prompt); end tokens, stop tokens and
strings and ``min_new_tokens`` do not apply to it. Otherwise generation runs as configured and
stops at ``eos_id``. ``decode`` receives the output's ids that follow the processor's
``bos_id``: the ids the prompt started the output with, then the generated ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import MMCoreError
from .generation import GenerationConfig, generate

__all__ = ["output_inputs", "resolve_output_input", "generate_outputs", "write_outputs"]


def output_inputs(model: Any) -> list[str]:
    """Inputs whose tokens an LM head of ``model`` predicts and whose processor writes outputs
    (declares ``output_suffixes``)."""
    predicted = {h.input for h in model.heads.values() if h.input is not None}
    return [name for name, proc in model.processors.items() if name in predicted and proc.output_suffixes]


def resolve_output_input(model: Any, name: str | None = None) -> str:
    """The input :func:`generate_outputs` generates: ``name`` when its processor writes outputs
    and an LM head predicts it, else (``name`` None) the model's only such input. MMCoreError
    otherwise, naming the processors of the inputs the LM heads predict."""
    candidates = output_inputs(model)
    predicted = [h.input for h in model.heads.values() if h.input is not None]
    procs = {n: type(model.processors[n]).__name__ for n in predicted if n in model.processors}
    if name is None:
        if len(candidates) == 1:
            return candidates[0]
        raise MMCoreError(
            "no LM head of this model predicts an input whose processor writes outputs (declares output_suffixes "
            f"and save_output, as vision.palette's images do); the LM heads predict {procs or 'nothing'}"
            if not candidates
            else f"say which input to generate: one of {candidates}"
        )
    if name not in candidates:
        proc = model.processors.get(name)
        what = (
            f"its processor {type(proc).__name__} writes no outputs (declares no output_suffixes)"
            if proc is not None and not proc.output_suffixes
            else "no LM head predicts it"
            if proc is not None
            else "it has no processor"
        )
        raise MMCoreError(f"input {name!r} cannot be generated as an output: {what}; inputs that can: {candidates}")
    return name


def generate_outputs(
    model: Any,
    records: Sequence[Mapping[str, Any]],
    config: GenerationConfig | None = None,
    *,
    output_input: str | None = None,
    batch_size: int = 16,
) -> list[Any]:
    """Decoded outputs (``num_return_sequences`` consecutive ones per record) generated for
    ``output_input`` (default: the model's only input in :func:`output_inputs`).

    ``records`` are prompt records with any of the model's inputs; under ``output_input`` a
    record holds what its processor reads as the start of an output (``{"prompt": [pixel ids]}``
    for ``vision.palette``); without it, ``{"prompt": []}``. Raises MMCoreError naming the
    processor when the input's processor writes no outputs.
    """
    cfg = config or GenerationConfig()
    output_input = resolve_output_input(model, output_input)
    proc = model.processors[output_input]
    fixed = proc.eos_id is None and proc.max_tokens is not None
    if fixed and (
        cfg.stop_strings or cfg.stop_tokens or cfg.min_new_tokens or (cfg.eos_id is not None and cfg.eos_id >= 0)
    ):
        raise MMCoreError(
            f"an output of {type(proc).__name__} ({output_input!r}) is a fixed number of tokens: eos_id, stop_tokens, "
            "stop_strings and min_new_tokens do not apply"
        )
    prompts: list[dict[str, Any]] = []
    for i, given in enumerate(records):
        if not isinstance(given, Mapping):
            raise MMCoreError(f"prompt {i}: expected a record (dict), got {type(given).__name__}")
        rec = dict(given)
        rec.setdefault(output_input, {"prompt": []})
        prompts.append(rec)
    values: list[Any] = []
    n = cfg.num_return_sequences
    for i in range(0, len(prompts), batch_size):
        batch = model.preprocess(prompts[i : i + batch_size], targets=())
        inp = batch.inputs[output_input]
        counts = inp["mask"].sum(1).tolist()
        starts = [inp["ids"][r, : counts[r]].tolist() for r in range(len(counts))]
        if proc.bos_id is not None:
            starts = [s[1:] if s[:1] == [proc.bos_id] else s for s in starts]
        groups: dict[int, list[int]] = {}  # rows with as many ids already share a generate() call
        for r, c in enumerate(counts):
            groups.setdefault(int(c), []).append(r)
        rows: dict[int, list[list[int]]] = {}
        for c, members in groups.items():
            sub = batch if len(groups) == 1 else model.preprocess([prompts[i + r] for r in members], targets=())
            missing = int(proc.max_tokens) - c if fixed else cfg.max_new_tokens
            if missing <= 0:
                out: list[list[int]] = [[] for _ in range(len(members) * n)]
            else:
                out = generate(model, sub, dataclasses.replace(cfg, max_new_tokens=missing), text_input=output_input)
            for j, r in enumerate(members):
                rows[r] = out[j * n : (j + 1) * n]
        for r in range(len(counts)):
            values += [proc.decode(starts[r] + row) for row in rows[r]]
    return values


def write_outputs(
    values: Sequence[Any],
    out: str | Path,
    save: Callable[[Any, Path], None],
    *,
    suffixes: Sequence[str],
    what: str = "output",
) -> list[Path]:
    """Write ``values`` to ``out`` (one value) or ``<stem>-1<suffix>`` ... ``<stem>-N<suffix>``
    (several) by calling ``save(value, path)`` (a processor's ``save_output``), each file to a
    temporary name with the same suffix, renamed into place (:func:`mmcore.atomic_write`).
    ``suffixes``: the suffixes ``save`` writes (``out``'s must be one of them). Returns the paths."""
    from .io import atomic_write

    out = Path(out)
    if out.suffix.lower() not in {s.lower() for s in suffixes}:
        others = ", ".join(suffixes[1:9]) + (", ..." if len(suffixes) > 9 else "")
        raise MMCoreError(
            f"{out}: the suffix {out.suffix!r} names no format the {what} can be written in; use "
            f"{suffixes[0] if suffixes else '(none)'}" + (f" (or {others})" if others else "")
        )
    if not values:
        raise MMCoreError(f"no {what}s to write")
    paths = (
        [out] if len(values) == 1 else [out.with_name(f"{out.stem}-{i + 1}{out.suffix}") for i in range(len(values))]
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    for value, path in zip(values, paths, strict=True):
        try:
            atomic_write(path, _writer(save, value))
        except OSError as exc:
            raise MMCoreError(f"{path}: cannot write the {what}: {exc}") from exc
    return paths


def _writer(save: Callable[[Any, Path], None], value: Any) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        save(value, tmp)

    return write
