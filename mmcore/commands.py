"""What each ``mmcore`` subcommand runs (``cmd_*(args) -> exit status``); the parser and ``main`` are in
:mod:`mmcore.cli`. Each command imports what it needs when it runs (no torch at import)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from .catalog import first_party, install_target, read_catalog
from .errors import InputError, MMCoreError, SpecError

__all__ = [
    "cmd_build",
    "cmd_consolidate",
    "cmd_eval",
    "cmd_explain",
    "cmd_export",
    "cmd_generate",
    "cmd_new_plugin",
    "cmd_plugins",
    "cmd_quantize",
    "cmd_spec_docs",
    "cmd_spec_resolve",
    "cmd_spec_schema",
    "cmd_spec_validate",
    "cmd_train",
]


# --- commands ---------------------------------------------------------------------------


def cmd_plugins(args: argparse.Namespace) -> int:
    from .plugins import get_manager

    pm = get_manager()
    infos = pm.plugins()
    installed = {i.distribution for i in infos if i.distribution}
    catalog = read_catalog()
    if args.json:
        out = {
            "plugins": [
                {
                    "name": i.name,
                    "distribution": i.distribution,
                    "version": i.version,
                    "components": [{"key": c.key, "description": c.description} for c in i.components],
                }
                for i in infos
            ],
            "failures": [
                {"entry_point": f.entry_point, "distribution": f.distribution, "hook": f.hook, "error": str(f.error)}
                for f in pm.failures
            ],
            "available": {k: v for k, v in catalog.items() if v.get("distribution") not in installed},
        }
        print(json.dumps(out, indent=2))
        return 0
    for i in infos:
        dist = f"{i.distribution} {i.version or ''}".strip() if i.distribution else "registered in code"
        print(f"{i.name}  ({dist})")
        for c in i.components:
            print(f"    {c.key:<28} {c.description}")
        if not i.components:
            print("    (no components)")
    imports = [f for f in pm.failures if f.hook is None]
    hooks = [f for f in pm.failures if f.hook is not None]
    if imports:
        print("\nplugins that failed to load:")
        for f in imports:
            print(f"    {f}")
    if hooks:
        print("\nplugin hooks that failed or match no hook specification:")
        for f in hooks:
            print(f"    {f}")
    missing = {k: v for k, v in catalog.items() if v.get("distribution") not in installed}
    if missing:
        print("\navailable in registry.toml, not installed:")
        for name, entry in missing.items():
            target = install_target(entry, name)
            print(f"    {name:<10} {entry.get('distribution', '')}: {entry.get('description', '')}")
            print(f"               pip install {target}")
    return 0


def cmd_spec_validate(args: argparse.Namespace) -> int:
    from .spec import load_spec

    status = 0
    for f in args.files:
        try:
            spec = load_spec(f)
        except SpecError as exc:
            print(str(exc), file=sys.stderr)
            status = 1
            continue
        if args.build and not _validate_build(f, spec):
            status = 1
            continue
        n = len(spec.encoders)
        print(
            f"{f}: ok ({spec.name!r}: {n} encoder{'s' if n != 1 else ''}, fusion {spec.fusion.component!r}, "
            f"heads {sorted(spec.heads) or 'none'})"
        )
    return status


def _validate_build(f: str, spec: Any) -> bool:
    """:func:`mmcore.builder.validate_build`: ``build``'s own steps on the meta device (no memory,
    no initialisation), the ``weights_from`` files' headers included; print the problems."""
    from .builder import validate_build

    try:
        validate_build(spec)
    except MMCoreError as exc:
        print(f"{f}: does not build:\n{exc}" if not isinstance(exc, SpecError) else str(exc), file=sys.stderr)
        return False
    return True


def cmd_spec_schema(args: argparse.Namespace) -> int:
    from .schema import spec_json_schema

    print(json.dumps(spec_json_schema(), indent=2))
    return 0


def cmd_spec_resolve(args: argparse.Namespace) -> int:
    from .spec import load_spec

    print(load_spec(args.file).to_toml(), end="")
    return 0


def cmd_spec_docs(args: argparse.Namespace) -> int:
    from .docgen import spec_reference
    from .plugins import get_registry

    dists = first_party()
    print(spec_reference(get_registry(), None if args.all else dists), end="")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from .builder import build

    model = build(args.file)
    if args.summary or not args.repr:
        print(model.summary())
        if model.load_report is not None and model.load_report.sources:
            print(model.load_report)  # which weights came from which file, what stayed fresh or was ignored
    if args.repr:
        print(model)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .spec import load_spec
    from .trainer import train

    overrides = [*args.set, *([f"training.seed={args.seed}"] if args.seed is not None else [])]
    spec = load_spec(args.spec, overrides=overrides)
    if args.data or args.eval:
        if not spec.tasks:
            raise MMCoreError(f"{args.spec}: --data needs a [tasks.<name>] section saying the objective")
        names = [args.task] if args.task else list(spec.tasks)
        if len(names) != 1 or names[0] not in spec.tasks:
            raise MMCoreError(f"--data: say which task it is for with --task; tasks: {sorted(spec.tasks)}")
        upd = {k: str(Path(v).resolve()) for k, v in (("train", args.data), ("eval", args.eval)) if v}
        tasks = dict(spec.tasks)
        tasks[names[0]] = tasks[names[0]].model_copy(update=upd)
        spec = dataclasses.replace(spec, tasks=tasks)
    if args.steps is not None:
        from .schedule import with_steps

        spec = dataclasses.replace(spec, training=with_steps(spec.training, args.steps))
    if args.device is not None:
        spec = dataclasses.replace(spec, training=spec.training.model_copy(update={"device": args.device}))
    out = Path(args.out) if args.out else Path("runs") / spec.name
    _, result = train(spec, out_dir=out)
    print(f"trained {result.steps} steps in {result.seconds:.1f}s; final loss {result.final_loss:.4f}; model in {out}")
    for task, m in result.eval.items():
        print(f"  eval {task}: " + ", ".join(f"{k} {v:.4g}" for k, v in m.items()))
    skipped = {k: v for k, v in result.bad_records.items() if v}
    if skipped:
        print(f"  skipped bad records: {skipped}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_dir

    res = evaluate_dir(
        args.model_dir,
        args.data,
        task=args.task,
        objective=args.objective,
        batch_size=args.batch_size,
        generate=args.generate,
        max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams,
        out=args.out,
        reference_field=args.reference_field,
        predictions=args.predictions,
        verify=_verify(args),
    )
    print(json.dumps(res, indent=2))
    return 0


def _verify(args: argparse.Namespace) -> bool:
    """``--no-verify``: False, after a warning that the model's checksums go unchecked."""
    if args.no_verify:
        print(
            f"warning: {args.model_dir}: loading without checking its files against the manifest's checksums "
            "(--no-verify)",
            file=sys.stderr,
        )
        return False
    return True


def cmd_new_plugin(args: argparse.Namespace) -> int:
    """Write a plugin distribution from the templates (mmcore.scaffold)."""
    from .scaffold import new_plugin

    path = new_plugin(args.name, args.kind, args.dir)
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        print(f"wrote {f}")
    print(f"\nnext: pip install -e '{path}[test]' && pytest {path / 'tests'}  (see {path / 'README.md'})")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Generate text from a model directory; prompts may carry other inputs (--input image=cat.png)."""
    from .checkpoint import load
    from .generation import GenerationConfig, generate, generate_stream, prompt_records

    model = load(args.model_dir, device=args.device, verify=_verify(args))
    texts = [k for k, e in model.encoders.items() if getattr(e, "modality", "") == "text"]
    text_input = args.text_input or (texts[0] if len(texts) == 1 else None)
    if text_input is None:
        raise MMCoreError(f"say which input is the text with --text-input; inputs: {list(model.encoders)}")
    others: dict[str, Any] = {}
    for item in args.input or []:
        name, sep, value = item.partition("=")
        if not sep or name not in model.encoders:
            raise MMCoreError(f"--input {item!r}: expected NAME=VALUE with NAME one of {list(model.encoders)}")
        others[name] = value
    try:
        cfg = GenerationConfig(
            max_new_tokens=args.max_new_tokens,
            min_new_tokens=args.min_new_tokens,
            do_sample=args.do_sample,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            num_beams=args.num_beams,
            length_penalty=args.length_penalty,
            num_return_sequences=args.num_return_sequences,
            repetition_penalty=args.repetition_penalty,
            stop_strings=tuple(args.stop or ()),
            seed=args.seed,
        )
    except ValueError as exc:
        raise MMCoreError(f"generation options: {exc}") from exc
    if args.out:
        return _write_generated_outputs(args, model, cfg, others, text_input)
    # the prompt as the Python API builds it (mmcore.generation.prompt_records)
    (record,) = prompt_records(model, [{**others, text_input: args.prompt}], text_input=text_input, separator=args.sep)
    batch = model.preprocess([record], targets=())
    proc = model.processors[text_input]
    if args.stream and cfg.num_beams == 1 and cfg.num_return_sequences == 1 and not cfg.stop_strings:
        ids: list[int] = []
        shown = ""
        for tok in generate_stream(model, batch, cfg, text_input=text_input, mode=args.attention):
            t = int(tok[0])
            if t == getattr(proc, "eos_id", None):
                break
            ids.append(t)
            text = proc.decode(ids)
            if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for the rest
                continue
            print(text[len(shown) :], end="", flush=True)
            shown = text
        print()
        return 0
    for i, row in enumerate(generate(model, batch, cfg, text_input=text_input, mode=args.attention)):
        prefix = f"[{i + 1}] " if cfg.num_return_sequences > 1 else ""
        print(prefix + proc.decode(row))
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    """int8 copy of a model directory (mmcore.quantize)."""
    from .checkpoint import load, save
    from .quantize import quantization_info, quantize

    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    model = quantize(load(args.model_dir, verify=_verify(args)), parts=parts)
    out = save(model, args.out)
    before = (Path(args.model_dir) / "model.safetensors").stat().st_size
    after = (out / "model.safetensors").stat().st_size
    n = len((quantization_info(model) or {}).get("modules", ()))
    print(
        f"int8: {n} linear layers quantized ({', '.join(parts)}); model.safetensors {before / 1e6:.2f} MB -> "
        f"{after / 1e6:.2f} MB; model in {out}"
    )
    return 0


def cmd_consolidate(args: argparse.Namespace) -> int:
    """A sharded (FSDP) checkpoint -> an ordinary model directory (mmcore.sharded)."""
    from .sharded import consolidate

    out = consolidate(args.checkpoint, args.out)
    print(f"model in {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """torch.export (and ONNX) of a model directory's forward pass (mmcore.export); with --hf, a
    Hugging Face folder of the backbone, text embedding and LM head (mmcore.hf.export_hf)."""
    from .export import export_dir

    if args.hf:
        from .checkpoint import load
        from .hf import export_hf

        shard = None if args.max_shard_mb is None else int(args.max_shard_mb * 1024 * 1024)
        try:
            export_hf(load(args.model_dir, verify=_verify(args)), args.out, family=args.hf, max_shard_size=shard)
        except ValueError as exc:  # what the family's layout cannot hold, named
            raise InputError(f"export --hf {args.hf}: {exc}") from exc
        files = sorted(p.name for p in Path(args.out).iterdir())
        print(json.dumps({"format": "hf", "family": args.hf, "out": str(args.out), "files": files}, indent=2))
        return 0
    report = export_dir(
        args.model_dir,
        args.out,
        record=_read_record(args.record) if args.record else None,
        batch_size=args.batch_size,
        onnx=args.onnx,
        dynamic_batch=not args.static,
        dynamic_length=not args.static_length,
        verify=_verify(args),
    )
    print(json.dumps(report, indent=2))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Per-modality attributions of one prediction (mmcore.explain)."""
    from .explain import explain_dir

    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    report = explain_dir(
        args.model_dir,
        _read_record(args.record),
        out=args.out,
        head=args.head,
        target=args.target,
        layers=layers,
        verify=_verify(args),
    )
    print(json.dumps(report.summary(), indent=2))
    return 0


def _read_record(value: str) -> dict[str, Any]:
    """A record given on the command line: a JSON object, a path to a JSON file, or FILE:LINE of a manifest."""
    text, where = value, "the record argument"
    path, sep, line = value.rpartition(":")
    if not value.lstrip().startswith("{"):
        if sep and line.isdigit() and Path(path).is_file():
            lines = Path(path).read_text(encoding="utf-8").splitlines()
            n = int(line)
            if not 1 <= n <= len(lines):
                raise MMCoreError(f"{path}: has {len(lines)} lines; asked for line {n}")
            text, where = lines[n - 1], f"{path}:{n}"
        elif Path(value).is_file():
            text, where = Path(value).read_text(encoding="utf-8"), value
        else:
            raise MMCoreError(f"record {value!r}: neither a JSON object, a file, nor FILE:LINE of a manifest")
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise MMCoreError(f"{where}: not valid JSON: {exc}") from exc
    if not isinstance(record, dict):
        raise MMCoreError(f"{where}: a record is a JSON object, got {type(record).__name__}")
    if where != "the record argument" and Path(where.rpartition(":")[0] or where).is_file():
        base = Path(where.rpartition(":")[0] if where.rpartition(":")[2].isdigit() else where).resolve().parent
        record["__base__"] = str(base)
    return record


def _write_generated_outputs(
    args: argparse.Namespace, model: Any, cfg: Any, record: dict[str, Any], text_input: str
) -> int:
    """``mmcore generate ... --out FILE``: the prompt's text conditions an input whose processor
    writes outputs (declares ``output_suffixes`` and ``save_output``: vision.palette's images)."""
    from .outputs import generate_outputs, resolve_output_input, write_outputs

    if args.stream:
        raise MMCoreError("--stream prints text as it arrives; it does not apply with --out")
    name = resolve_output_input(model, args.output_input)
    proc = model.processors[name]
    if name == text_input:  # the text continues the prompt: framed as for text generation
        from .generation import prompt_records

        (prompt,) = prompt_records(model, [{**record, text_input: args.prompt}], text_input=name, separator=args.sep)
    else:
        prompt = {**record, text_input: args.prompt}
    values = generate_outputs(model, [prompt], cfg, output_input=name)
    save = lambda value, path: proc.save_output(value, path, scale=args.scale)  # noqa: E731
    for path in write_outputs(values, args.out, save, suffixes=proc.output_suffixes, what=f"{name} output"):
        print(path)
    return 0
