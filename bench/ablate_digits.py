"""Ablation of the main job's caption task: what makes a small GPT read digits well.

Each run trains ``examples/digits_av.toml``'s model on the caption task alone for a FIXED
number of steps (``--steps``), from one setting changed against the base (one factor at a
time), then greedy-captions the 359 held-out images and reports the exact-match accuracy.
Runs go one after the other in this process; results are appended to
``bench/results_ablate_digits.json`` (one entry per setting: accuracy, steps, seconds under
whatever load the machine had) and ``docs/tuning.md`` quotes that file.

    OMP_NUM_THREADS=2 python bench/ablate_digits.py --steps 400 --only base lr=3e-3
    python bench/ablate_digits.py --list

A setting is a name from ``SETTINGS``; each maps to dotted overrides of the spec
(``training.lr``, ``encoders.image.dim``...). ``--base k=v`` changes the base itself.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "examples" / "digits_av.toml"
RESULTS = ROOT / "bench" / "results_ablate_digits.json"

#: setting name -> overrides (dotted key -> value) on the base spec.
SETTINGS: dict[str, dict[str, object]] = {
    "base": {},
    # learning rate and schedule
    "lr=5e-4": {"training.lr": 5e-4},
    "lr=1e-3": {"training.lr": 1e-3},
    "lr=3e-3": {"training.lr": 3e-3},
    "lr=5e-3": {"training.lr": 5e-3},
    "schedule=constant": {"training.schedule": "constant"},
    "schedule=linear": {"training.schedule": "linear"},
    "min_lr_ratio=0": {"training.min_lr_ratio": 0.0},
    "warmup=0": {"training.warmup_steps": 0},
    "warmup=100": {"training.warmup_steps": 100},
    # regularisation
    "weight_decay=0": {"training.weight_decay": 0.0},
    "weight_decay=0.1": {"training.weight_decay": 0.1},
    "dropout=0.1": {"backbone.dropout": 0.1},
    "encoder_dropout=0.1": {"encoders.image.dropout": 0.1},
    "label_smoothing=0.1": {"heads.lm.label_smoothing": 0.1},
    # batch
    "batch=16": {"training.batch_size": 16},
    "batch=64": {"training.batch_size": 64},
    # initialisation
    "init_std=0.01": {"backbone.init_std": 0.01},
    "init_std=0.04": {"backbone.init_std": 0.04},
    # image input
    "real_mean_std": {"encoders.image.mean": [0.31], "encoders.image.std": [0.39]},
    "patch=2": {"encoders.image.patch_size": 2, "backbone.context_length": 96},
    "stem=conv": {"encoders.image.stem": "conv"},
    "native_8x8_patch2": {
        "encoders.image.image_size": 8,
        "encoders.image.patch_size": 2,
        "encoders.image.resize": "squash",
        "encoders.image.interpolation": "area",
    },
    "encoder_depth=2": {"encoders.image.depth": 2},
    "encoder_depth=0": {"encoders.image.depth": 0},
    "encoder_dim=96": {"encoders.image.dim": 96},
    "augment_shift": {"encoders.image.augment": ["shift"]},
    "augment_shift_rotate": {"encoders.image.augment": ["shift", "rotate"]},
    "augment_crop_flip": {"encoders.image.augment": True},
    # no [training] numbers at all: the derived defaults (steps 1000, batch 16, lr 0.2 / width)
    "no_training_numbers": {"training": {}},
    # reading the conditioning
    "attention=causal": {"tasks.caption.attention": "causal"},
}


def set_dotted(d: dict, key: str, value: object) -> None:
    *path, last = key.split(".")
    for k in path:
        d = d.setdefault(k, {})
    d[last] = value


def base_spec(steps: int, extra: dict[str, object]) -> dict:
    data = tomllib.loads(SPEC.read_text())
    data["tasks"] = {"caption": data["tasks"]["caption"]}
    data["heads"] = {"lm": data["heads"]["lm"]}
    data["encoders"] = {k: v for k, v in data["encoders"].items() if k in ("image", "text")}
    data["training"] = {"steps": steps, "batch_size": 32, "lr": 2e-3, "warmup_steps": 25, "log_every": 10**6}
    # round 1's base: the image encoder as the main job had it before this study (round 2: --base ...stem="conv")
    data["encoders"]["image"]["stem"] = "patch"
    for k, v in extra.items():
        set_dotted(data, k, v)
    return data


def caption_accuracy(model, data_dir: Path) -> float:
    from mmcore.generation import GenerationConfig, generate_for_records

    rows = [json.loads(line) for line in (data_dir / "caption_eval.jsonl").read_text().splitlines()]
    preds = generate_for_records(
        model,
        [{"image": r["image"]} for r in rows],
        base=data_dir,
        config=GenerationConfig(max_new_tokens=8),
        batch_size=128,
    )
    return sum(p.strip() == r["target"] for p, r in zip(preds, rows, strict=True)) / len(rows)


def run_one(name: str, overrides: dict, steps: int, base_extra: dict, seed: int) -> dict:
    import torch

    import mmcore
    from mmcore.spec import parse_spec

    data = base_spec(steps, base_extra)
    for k, v in copy.deepcopy(overrides).items():
        set_dotted(data, k, v)
    set_dotted(data, "training.seed", seed)
    torch.manual_seed(seed)
    spec = parse_spec(data, file=str(SPEC))
    model = mmcore.build(spec)
    t0 = time.perf_counter()
    result = mmcore.Trainer(model, spec.tasks, spec.training).fit()
    train_s = time.perf_counter() - t0
    model.eval()
    acc = caption_accuracy(model, ROOT / "examples" / "data" / "digits_av")
    return {
        "setting": name,
        "overrides": overrides,
        "base": base_extra,
        "seed": seed,
        "steps": spec.training.steps,
        "batch_size": spec.training.batch_size,
        "caption_exact_match": round(acc, 4),
        "final_loss": round(result.final_loss, 4),
        "train_seconds": round(train_s, 1),
        "threads": torch.get_num_threads(),
    }


DOC = ROOT / "docs" / "tuning.md"
BEGIN, END = (
    "<!-- ablate_digits: begin (written by bench/ablate_digits.py --write-docs) -->",
    "<!-- ablate_digits: end -->",
)


def tables_by_round(results: list[dict], header: str, row) -> str:
    """Markdown tables of ablation results, one per tag (round), in the order they were run:
    ``header`` is the table's two header lines, ``row(result, overrides)`` one row's cells."""
    out = []
    for tag in dict.fromkeys(r.get("tag", "") for r in results):
        rows = [r for r in results if r.get("tag", "") == tag]
        base = rows[0].get("base") or {}
        head = f"**{tag}**" + (
            f" (base plus {', '.join(f'`{k} = {json.dumps(v)}`' for k, v in base.items())})" if base else ""
        )
        out += [head, "", header]
        for r in rows:
            ov = ", ".join(f"`{k} = {json.dumps(v)}`" for k, v in r["overrides"].items()) or "(base)"
            out.append(row(r, ov))
        out.append("")
    return "\n".join(out)


def table(results: list[dict]) -> str:
    """Markdown tables of the results, one per tag (round), in the order they were run."""
    return tables_by_round(
        results,
        "| setting | overrides | seed | steps | caption exact match | final train loss | train minutes (under load) |\n"
        "|---|---|---:|---:|---:|---:|---:|",
        lambda r, ov: (
            f"| {r['setting']} | {ov} | {r['seed']} | {r['steps']} | {100 * r['caption_exact_match']:.1f} % | "
            f"{r['final_loss']:.3f} | {r['train_seconds'] / 60:.1f} |"
        ),
    )


def parse_setting(name: str, settings: dict[str, dict[str, object]]) -> dict[str, object]:
    """A named setting's overrides, or an inline ``k=v,k=v`` one (dotted keys, JSON values)."""
    if name in settings:
        return settings[name]
    return {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in name.split(","))}


def run_settings(names: list[str], seeds: list[int], run, out: str | Path, tag: str) -> None:
    """``run(name, seed)`` for every setting and seed, each result tagged, printed and appended to
    the JSON list in ``out`` as soon as it is made (atomically: a long ablation keeps what finished)."""
    from mmcore import atomic_write_text

    out = Path(out)
    for name in names:
        for seed in seeds:
            r = run(name, seed)
            r["tag"] = tag
            print(json.dumps(r), flush=True)
            results = json.loads(out.read_text()) if out.exists() else []
            atomic_write_text(out, json.dumps([*results, r], indent=1) + "\n")


def write_docs(results: list[dict], begin: str = BEGIN, end: str = END, tables=None) -> None:
    """Rewrite docs/tuning.md between the markers ``begin`` and ``end`` with ``tables(results)``."""
    from mmcore import atomic_write_text

    text = DOC.read_text()
    start, stop = text.index(begin) + len(begin), text.index(end)
    atomic_write_text(DOC, text[:start] + "\n" + (tables or table)(results) + text[stop:])


def add_ablation_options(
    p: argparse.ArgumentParser,
    results: Path,
    only_help: str = "settings to run (default: all)",
    write_docs_help: str = "rewrite docs/tuning.md's tables from the results file",
) -> None:
    """The command-line options every ablation script shares: which settings, a base every run
    starts from, the seeds, a tag, --list, --write-docs and the results file."""
    p.add_argument("--only", nargs="*", help=only_help)
    p.add_argument("--base", nargs="*", default=[], help="dotted k=v (JSON values) applied to every run")
    p.add_argument("--seeds", type=int, nargs="*", default=[0])
    p.add_argument("--tag", default="", help="label stored with each result (e.g. 'round 2')")
    p.add_argument("--list", action="store_true")
    p.add_argument("--write-docs", action="store_true", help=write_docs_help)
    p.add_argument("--out", default=str(results))


def parse_base(items: list[str]) -> dict[str, object]:
    """``--base`` items (``k=v``, JSON values) as overrides."""
    return {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in items)}


def print_settings(settings: dict[str, dict], width: int = 24) -> None:
    """``--list``: each setting's name and overrides."""
    for k, v in settings.items():
        print(f"{k:{width}} {v}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=400)
    add_ablation_options(p, RESULTS)
    args = p.parse_args(argv)
    if args.write_docs:
        write_docs(json.loads(Path(args.out).read_text()))
        return 0
    if args.list:
        print_settings(SETTINGS)
        return 0
    sys.path.insert(0, str(ROOT / "examples" / "recipes"))
    import digits_av

    data_dir = ROOT / "examples" / "data" / "digits_av"
    if not (data_dir / "caption_eval.jsonl").exists():
        digits_av.main(["--out", str(data_dir)])
    base_extra = parse_base(args.base)
    run_settings(
        args.only or list(SETTINGS),
        args.seeds,
        lambda name, seed: run_one(name, parse_setting(name, SETTINGS), args.steps, base_extra, seed),
        args.out,
        args.tag,
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
