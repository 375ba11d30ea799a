"""The ``mmcore`` command line (also ``python -m mmcore``).

Importing this module, ``mmcore --help``, ``mmcore plugins`` and ``mmcore spec ...``
do not import torch: each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .catalog import catalog_path, read_catalog
from .commands import (
    cmd_build,
    cmd_consolidate,
    cmd_eval,
    cmd_explain,
    cmd_export,
    cmd_generate,
    cmd_new_plugin,
    cmd_plugins,
    cmd_quantize,
    cmd_spec_docs,
    cmd_spec_resolve,
    cmd_spec_schema,
    cmd_spec_validate,
    cmd_train,
)
from .errors import MMCoreError
from .interrupts import TrainingInterrupted

__all__ = ["main", "catalog_path", "read_catalog"]


# --- parser -----------------------------------------------------------------------------


def _no_verify(p: argparse.ArgumentParser) -> None:
    """``--no-verify`` on a command that loads a model directory (commands._verify reads it)."""
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="load the model without checking its files against the manifest's checksums (a warning says so)",
    )


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

    def spec_help(args: argparse.Namespace) -> int:
        spec.print_help()
        return 2

    spec.set_defaults(func=spec_help)

    b = sub.add_parser("build", help="compose the model a spec describes")
    b.add_argument("file", metavar="FILE")
    b.add_argument("--summary", action="store_true", help="print parameters per component (default)")
    b.add_argument("--repr", action="store_true", help="print the module tree")
    b.set_defaults(func=cmd_build)

    t = sub.add_parser(
        "train",
        help="train the model a spec describes on its [tasks]",
        description="Train the model SPEC describes on its [tasks] and write a model directory (--out). A run "
        "interrupted and started again with the same command resumes from its last checkpoint.",
    )
    t.add_argument(
        "spec",
        metavar="SPEC",
        help="a TOML spec file: the model ([backbone], [encoders.*], [fusion], [heads.*]), [training] and "
        "[tasks.*] (docs/spec.md, docs/training.md); check it with `mmcore spec validate SPEC`",
    )
    t.add_argument("--data", help="training data for the (only, or --task) task, instead of the spec's")
    t.add_argument("--eval", help="held-out data for that task")
    t.add_argument("--task", help="which task --data/--eval are for")
    t.add_argument("--out", help="model directory to write (default: runs/<spec name>); resumes if it has a checkpoint")
    t.add_argument("--steps", type=int, help="override training.steps (with stages: the last stage's steps)")
    t.add_argument("--device", help="override training.device")
    t.add_argument("--seed", type=int, help="override training.seed")
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any option of the spec, e.g. --set training.lr=1e-3 --set tasks.caption.weight=2 "
        '(repeatable; VALUE is a TOML value: 1e-3, true, "cosine", [1, 2]; a bare word is text). Validated like '
        "the spec, and written into the model directory's spec.toml",
    )
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
    e.add_argument(
        "--max-new-tokens",
        type=int,
        default=64,
        help="longest generation (cut to what the context leaves after a prompt, with a warning)",
    )
    e.add_argument("--num-beams", type=int, default=1, help="beam search for the generations (default: greedy)")
    e.add_argument(
        "--reference-field",
        metavar="FIELD",
        help="the record field holding the reference text that generations are scored against (default: the task's "
        "target_field, 'target'); the text input's own name scores generations from an empty prompt",
    )
    e.add_argument(
        "--predictions",
        metavar="FILE",
        help="write every record's prediction and reference (with its file:line) here, as JSONL",
    )
    e.add_argument("--out", help="write the JSON here too")
    _no_verify(e)
    e.set_defaults(func=cmd_eval)

    g = sub.add_parser(
        "generate", help="generate text (or, with --out, an output such as an image) from a model directory"
    )
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
        metavar="FILE",
        help="generate an output other than text and write it here, through the capability its processor declares "
        "(save_output; e.g. an image of vision.palette as .png); with --num-return-sequences N, N files FILE-1 ... "
        "FILE-N. A fixed-size output (an image's pixels) replaces --max-new-tokens",
    )
    g.add_argument(
        "--output-input",
        "--image-input",
        dest="output_input",
        help="the input to generate and write with --out (default: the only one whose processor writes outputs)",
    )
    g.add_argument(
        "--scale", type=int, default=1, help="enlarge written outputs that have a size (images) this many times"
    )
    g.add_argument("--device", default=None)
    _no_verify(g)
    g.set_defaults(func=cmd_generate)

    np_ = sub.add_parser(
        "new-plugin",
        help="write a new plugin distribution (component, tests with the conformance kit, README)",
        description="Write mmcore-NAME/: a pip-installable plugin with a working component of each given kind, "
        "their options models, tests using mmcore.testing for each, and a README saying what was generated. "
        "See docs/plugins.md.",
    )
    np_.add_argument("name", metavar="NAME", help="plugin name, a lower-case Python identifier (e.g. demo_depth)")
    np_.add_argument(
        "--kind",
        required=True,
        action="append",
        metavar="KIND[:COMPONENT]",
        help="a component to write: encoder, fusion, head or objective, optionally with its name (head:tab.regress; "
        "default NAME.KIND); repeat it (or separate with commas) for several in one distribution",
    )
    np_.add_argument("--dir", default=".", metavar="PATH", help="where to create mmcore-NAME/ (default: here)")
    np_.set_defaults(func=cmd_new_plugin)

    qz = sub.add_parser("quantize", help="int8 copy of a model directory for CPU inference")
    qz.add_argument("model_dir", metavar="MODEL_DIR")
    qz.add_argument("--out", required=True, help="model directory to write")
    qz.add_argument(
        "--parts", default="backbone,encoders,projectors", help="comma-separated parts whose linear layers to quantize"
    )
    _no_verify(qz)
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
    ex.add_argument(
        "--hf",
        choices=("llama", "qwen2", "mistral"),
        help="instead: write the backbone, text embedding and LM head as a Hugging Face folder of this family "
        "(config.json and safetensors; mmcore.hf.export_hf)",
    )
    ex.add_argument("--max-shard-mb", type=float, help="with --hf: split the weights into shards of at most this size")
    _no_verify(ex)
    ex.set_defaults(func=cmd_export)

    xp = sub.add_parser("explain", help="per-modality contributions to one prediction: JSON report and PNG")
    xp.add_argument("model_dir", metavar="MODEL_DIR")
    xp.add_argument("record", metavar="RECORD", help="a JSON object, a JSON file, or MANIFEST:LINE")
    xp.add_argument("--out", help="folder for explain.json and explain.png (default: print only)")
    xp.add_argument("--head", help="the head to explain (default: a classifier if any, else the LM head)")
    xp.add_argument("--target", help="class index, or for an LM head the text to score (default: the prediction)")
    xp.add_argument("--layers", help="backbone layers whose attention to draw, e.g. 0,-1 (default: last)")
    _no_verify(xp)
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
    except KeyboardInterrupt as exc:  # Ctrl-C; a training run stopped on a signal: 128 + the signal
        return exc.exit_code if isinstance(exc, TrainingInterrupted) else 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
