"""The ``mmcore`` command line (also ``python -m mmcore``).

Importing this module, ``mmcore --help``, ``mmcore plugins`` and ``mmcore spec ...``
do not import torch: each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .catalog import catalog_path, first_party, install_target, read_catalog
from .errors import MMCoreError, SpecError

__all__ = ["main", "catalog_path", "read_catalog"]


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
                {"entry_point": f.entry_point, "distribution": f.distribution, "error": str(f.error)}
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
    if pm.failures:
        print("\nplugins that failed to load:")
        for f in pm.failures:
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
    """:func:`mmcore.model.validate_build`: ``build``'s own steps on the meta device (no memory,
    no initialisation), the ``weights_from`` files' headers included; print the problems."""
    from .model import validate_build

    try:
        validate_build(spec)
    except MMCoreError as exc:
        print(f"{f}: does not build:\n{exc}" if not isinstance(exc, SpecError) else str(exc), file=sys.stderr)
        return False
    return True


def cmd_spec_schema(args: argparse.Namespace) -> int:
    from .spec import spec_json_schema

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
    from .model import build

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

    spec = load_spec(args.spec)
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
    )
    print(json.dumps(res, indent=2))
    return 0


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

    model = load(args.model_dir, device=args.device)
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
        return _write_generated_images(args, model, cfg, others, text_input)
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
    from .quantize import quantize

    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    model = quantize(load(args.model_dir), parts=parts)
    out = save(model, args.out)
    before = (Path(args.model_dir) / "model.safetensors").stat().st_size
    after = (out / "model.safetensors").stat().st_size
    n = len(model.quantization["modules"])
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
    """torch.export (and ONNX) of a model directory's forward pass (mmcore.export)."""
    from .export import export_dir

    report = export_dir(
        args.model_dir,
        args.out,
        record=_read_record(args.record) if args.record else None,
        batch_size=args.batch_size,
        onnx=args.onnx,
        dynamic_batch=not args.static,
        dynamic_length=not args.static_length,
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


def _write_generated_images(
    args: argparse.Namespace, model: Any, cfg: Any, record: dict[str, Any], text_input: str
) -> int:
    """``mmcore generate ... --out image.png``: the prompt's text conditions an image-token input."""
    from .generation import generate_images, write_images

    if args.stream:
        raise MMCoreError("--stream prints text as it arrives; it does not apply with --out")
    images = generate_images(model, [{**record, text_input: args.prompt}], cfg, image_input=args.image_input)
    for path in write_images(images, args.out, scale=args.scale):
        print(path)
    return 0


# --- parser -----------------------------------------------------------------------------


def make_parser(with_plugins: bool = True) -> argparse.ArgumentParser:
    """The ``mmcore`` parser; installed plugins add their commands unless ``with_plugins`` is False."""
    from .version import __version__

    p = argparse.ArgumentParser(
        prog="mmcore",
        description="Compose, train and run multimodal GPT models from plugins and a TOML spec.",
    )
    p.add_argument("--version", action="version", version=f"mmcore {__version__}")
    p.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    sp = sub.add_parser("plugins", help="list installed plugins, their components and load failures")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_plugins)

    spec = sub.add_parser("spec", help="validate specs and print their schema")
    ssub = spec.add_subparsers(dest="spec_command", metavar="SUBCOMMAND")
    v = ssub.add_parser("validate", help="validate spec files (exit 1 with every problem listed)")
    v.add_argument("files", nargs="+", metavar="FILE")
    v.add_argument(
        "--build",
        action="store_true",
        help="also build each model on the meta device (no memory, no initialisation) and check that its parts "
        "fit: widths, sequence length against the context, special tokens, vocabularies, LoRA targets, and "
        "the weights_from files' names and shapes",
    )
    v.set_defaults(func=cmd_spec_validate)
    s = ssub.add_parser("schema", help="JSON Schema of a spec with every installed component's options")
    s.set_defaults(func=cmd_spec_schema)
    r = ssub.add_parser("resolve", help="print the spec with every default written out")
    r.add_argument("file", metavar="FILE")
    r.set_defaults(func=cmd_spec_resolve)
    dd = ssub.add_parser("docs", help="Markdown reference of every option (docs/spec.md)")
    dd.add_argument("--all", action="store_true", help="include third-party components")
    dd.set_defaults(func=cmd_spec_docs)
    spec.set_defaults(func=lambda a: (spec.print_help(), 2)[1])

    b = sub.add_parser("build", help="compose the model a spec describes")
    b.add_argument("file", metavar="FILE")
    b.add_argument("--summary", action="store_true", help="print parameters per component (default)")
    b.add_argument("--repr", action="store_true", help="print the module tree")
    b.set_defaults(func=cmd_build)

    t = sub.add_parser("train", help="train the model a spec describes on its [tasks]")
    t.add_argument("spec", metavar="SPEC")
    t.add_argument("--data", help="training data for the (only, or --task) task, instead of the spec's")
    t.add_argument("--eval", help="held-out data for that task")
    t.add_argument("--task", help="which task --data/--eval are for")
    t.add_argument("--out", help="model directory to write (default: runs/<spec name>); resumes if it has a checkpoint")
    t.add_argument("--steps", type=int, help="override training.steps (with stages: the last stage's steps)")
    t.add_argument("--device", help="override training.device")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a model directory on a data file; prints (and writes) JSON")
    e.add_argument("model_dir", metavar="MODEL_DIR")
    e.add_argument("data", metavar="DATA")
    e.add_argument("--task", help="a task of the model's spec (default: its only task)")
    e.add_argument("--objective", help="a registered objective (mmcore plugins lists them) instead of the task's")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument(
        "--generate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also generate text and score BLEU/chrF against record targets (default: for prefix_lm)",
    )
    e.add_argument("--max-new-tokens", type=int, default=64)
    e.add_argument("--num-beams", type=int, default=1, help="beam search for the generations (default: greedy)")
    e.add_argument("--out", help="write the JSON here too")
    e.set_defaults(func=cmd_eval)

    g = sub.add_parser("generate", help="generate text (or, with --out, an image) from a model directory")
    g.add_argument("model_dir", metavar="MODEL_DIR")
    g.add_argument(
        "--prompt",
        default="",
        help="text prefix, framed as the model was trained (mmcore.generation.prompt_records): '<bos> text <sep>' "
        "for a prefix_lm model, '<bos> text' (a continuation) otherwise",
    )
    g.add_argument(
        "--sep",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="end the prompt with <sep> (--sep) or not (--no-sep) whatever the model was trained with",
    )
    g.add_argument(
        "--input",
        action="append",
        metavar="NAME=VALUE",
        help="another input of the prompt, e.g. image=cat.png (repeatable)",
    )
    g.add_argument("--text-input", help="the text input to generate (default: the model's only one)")
    g.add_argument(
        "--attention",
        choices=("causal", "prefix", "bidirectional"),
        help="how the prompt is attended (default: as the model's tasks trained its LM head: prefix for prefix_lm, "
        "causal for lm)",
    )
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--min-new-tokens", type=int, default=0)
    g.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--num-beams", type=int, default=1)
    g.add_argument("--length-penalty", type=float, default=1.0)
    g.add_argument("--num-return-sequences", type=int, default=1)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("--seed", type=int)
    g.add_argument("--stream", action="store_true", help="print tokens as they arrive")
    g.add_argument(
        "--out",
        metavar="IMAGE",
        help="generate an image (models whose LM head predicts image tokens, e.g. vision.palette) and write it "
        "here (.png); with --num-return-sequences N, N files IMAGE-1.png ... IMAGE-N.png. The image's pixel "
        "count replaces --max-new-tokens",
    )
    g.add_argument("--image-input", help="the image-token input to generate with --out (default: the only one)")
    g.add_argument("--scale", type=int, default=1, help="enlarge written images this many times (--out)")
    g.add_argument("--device", default=None)
    g.set_defaults(func=cmd_generate)

    np_ = sub.add_parser(
        "new-plugin",
        help="write a new plugin distribution (component, tests with the conformance kit, README)",
        description="Write mmcore-NAME/: a pip-installable plugin with one working component of the given kind, "
        "its options model, tests using mmcore.testing, and a README. See docs/plugins.md.",
    )
    np_.add_argument("name", metavar="NAME", help="plugin name, a lower-case Python identifier (e.g. demo_depth)")
    np_.add_argument("--kind", required=True, choices=["encoder", "fusion", "head"], help="the component to write")
    np_.add_argument("--dir", default=".", metavar="PATH", help="where to create mmcore-NAME/ (default: here)")
    np_.set_defaults(func=cmd_new_plugin)

    qz = sub.add_parser("quantize", help="int8 copy of a model directory for CPU inference")
    qz.add_argument("model_dir", metavar="MODEL_DIR")
    qz.add_argument("--out", required=True, help="model directory to write")
    qz.add_argument(
        "--parts", default="backbone,encoders,projectors", help="comma-separated parts whose linear layers to quantize"
    )
    qz.set_defaults(func=cmd_quantize)

    cs = sub.add_parser("consolidate", help="turn a sharded checkpoint of an FSDP run into an ordinary model directory")
    cs.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="<out>/checkpoints/step-N of a training.distributed = 'fsdp' run"
    )
    cs.add_argument("--out", required=True, help="model directory to write")
    cs.set_defaults(func=cmd_consolidate)

    ex = sub.add_parser(
        "export",
        help="torch.export (and ONNX) of a model directory's forward pass",
        description="Export a model directory's forward pass (collated tensors -> each head's logits) with "
        "torch.export, check it against eager mode, and write export.json (inputs, outputs, dynamic dimensions, "
        "largest differences from eager mode) and, with --onnx, model.onnx. The torch.export program itself is "
        "not written (its archive may unpickle on load). The batch size is dynamic (unless --static), and so is the "
        "length of every text input, up to its processor's max_length (unless --static-length); other dimensions "
        "(image size, audio frames) are the example record's.",
    )
    ex.add_argument("model_dir", metavar="MODEL_DIR")
    ex.add_argument("--out", required=True, help="folder to write export.json (and model.onnx) to")
    ex.add_argument("--record", help="example record (JSON, a JSON file or MANIFEST:LINE); default: one made up")
    ex.add_argument("--batch-size", type=int, default=2, help="batch size of the example input")
    ex.add_argument("--static", action="store_true", help="fixed batch size (default: dynamic batch dimension)")
    ex.add_argument(
        "--static-length",
        action="store_true",
        help="text lengths fixed to the example record's (default: dynamic, up to each processor's max_length)",
    )
    ex.add_argument("--onnx", action="store_true", help="also write model.onnx (needs onnx and onnxscript)")
    ex.set_defaults(func=cmd_export)

    xp = sub.add_parser("explain", help="per-modality contributions to one prediction: JSON report and PNG")
    xp.add_argument("model_dir", metavar="MODEL_DIR")
    xp.add_argument("record", metavar="RECORD", help="a JSON object, a JSON file, or MANIFEST:LINE")
    xp.add_argument("--out", help="folder for explain.json and explain.png (default: print only)")
    xp.add_argument("--head", help="the head to explain (default: a classifier if any, else the LM head)")
    xp.add_argument("--target", help="class index, or for an LM head the text to score (default: the prediction)")
    xp.add_argument("--layers", help="backbone layers whose attention to draw, e.g. 0,-1 (default: last)")
    xp.set_defaults(func=cmd_explain)

    if with_plugins:
        from .plugins import get_manager

        get_manager().call_add_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except MMCoreError as exc:
        if args.traceback:
            raise
        print(f"error: {exc}", file=sys.stderr)
        for note in getattr(exc, "__notes__", []):
            print(f"  {note}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
