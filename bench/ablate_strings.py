"""Ablation of the digit-strings recipe: how a small GPT reads four digits in one 8x32 strip.

Each run trains ``examples/digit_strings.toml``'s model for a FIXED number of steps
(``--steps``) with one setting changed against the base (the image's tokens and patch shape,
the convolutional stem, widths, learning rate), then greedy-reads the 500 held-out strips and
reports the share read exactly (all four digits) and the share of digits right. Results are
appended to ``bench/results_ablate_strings.json``; docs/tuning.md quotes that file.

    OMP_NUM_THREADS=1 python bench/ablate_strings.py --steps 600 --only base patch=8
    OMP_NUM_THREADS=1 python bench/ablate_strings.py --time base patch=8   # s/step vs the demo's
    python bench/ablate_strings.py --write-docs

``--time`` measures seconds per training step of each named setting side by side with the
committed demo spec (``examples/digits_av.toml``, all three tasks mixed, as its longest stage
trains), alternating in one process on one thread, and turns them into an estimate of the
training time on the idle 2-core reference machine: steps x (s/step / demo s/step) x 0.076 s
(the demo's 1,400 steps trained in 107 s there). Written to
``bench/results_strings_step_time.json``.

A setting is a name from ``SETTINGS`` or ``k=v,k=v`` dotted overrides (JSON values);
``--base k=v`` changes the base itself.
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "examples" / "recipes"))

from ablate_digits import (  # noqa: E402
    add_ablation_options,
    parse_base,
    parse_setting,
    print_settings,
    run_settings,
    set_dotted,
    tables_by_round,
)
from ablate_digits import write_docs as write_between  # noqa: E402

SPEC = ROOT / "examples" / "digit_strings.toml"
DEMO = ROOT / "examples" / "digits_av.toml"
RESULTS = HERE / "results_ablate_strings.json"
TIMES = HERE / "results_strings_step_time.json"
DATA = ROOT / "examples" / "data" / "digit_strings"
#: the demo spec's seconds per step on two threads of the idle reference machine (1,400 steps, 107 s)
DEMO_IDLE_S_PER_STEP = 107 / 1400

#: setting name -> overrides (dotted key -> value) on the base spec.
SETTINGS: dict[str, dict[str, object]] = {
    "base": {},
    # tokens: the patch side on the 8x32 strip (2: 4x16 = 64 tokens, 4: 2x8 = 16, 8: 1x4 = 4, one per digit)
    "patch=2": {"encoders.image.patch_size": 2},
    "patch=4": {"encoders.image.patch_size": 4},
    "patch=8": {"encoders.image.patch_size": 8},
    "patch=4,stem_layers=2": {"encoders.image.patch_size": 4, "encoders.image.stem_layers": 2},
    "patch=4,stem_layers=3": {"encoders.image.patch_size": 4, "encoders.image.stem_layers": 3},
    "patch=8,stem_layers=2": {"encoders.image.patch_size": 8, "encoders.image.stem_layers": 2},
    "patch=8,stem_layers=3": {"encoders.image.patch_size": 8, "encoders.image.stem_layers": 3},
    # the stem
    "stem_layers=1": {"encoders.image.stem_layers": 1},
    "stem_layers=2": {"encoders.image.stem_layers": 2},
    "stem_layers=3": {"encoders.image.stem_layers": 3},
    "stem_layers=4": {"encoders.image.stem_layers": 4},
    "stem_channels=16": {"encoders.image.stem_channels": 16},
    "stem_channels=64": {"encoders.image.stem_channels": 64},
    # widths
    "encoder_depth=0": {"encoders.image.depth": 0},
    "encoder_depth=2": {"encoders.image.depth": 2},
    "encoder_dim=96": {"encoders.image.dim": 96},
    "width=64": {"backbone.width": 64},
    "depth=2": {"backbone.depth": 2},
    # learning rate, batch
    "lr=1e-3": {"training.lr": 1e-3},
    "lr=2e-3": {"training.lr": 2e-3},
    "lr=3e-3": {"training.lr": 3e-3},
    "batch=64": {"training.batch_size": 64},
    "stem_layers=4,lr=3e-3": {"encoders.image.stem_layers": 4, "training.lr": 3e-3},
    # regularisation
    "augment_shift": {"encoders.image.augment": ["shift"], "encoders.image.augment_shift": 0.03},
    "dropout=0.1": {"backbone.dropout": 0.1},
    "label_smoothing=0.1": {"heads.lm.label_smoothing": 0.1},
}


def spec_data(steps: int, base: dict[str, object], overrides: dict[str, object], seed: int) -> dict:
    data = tomllib.loads(SPEC.read_text())
    data["training"] = {**data["training"], "steps": steps, "seed": seed, "log_every": 10**6, "progress": False}
    for k, v in [*base.items(), *copy.deepcopy(overrides).items()]:
        set_dotted(data, k, v)
    return data


def run_one(name: str, overrides: dict, steps: int, base: dict, seed: int) -> dict:
    import torch
    from digit_strings import evaluate

    import mmcore
    from mmcore.spec import parse_spec

    spec = parse_spec(spec_data(steps, base, overrides, seed), file=str(SPEC))
    torch.manual_seed(seed)
    model = mmcore.build(spec)
    t0 = time.perf_counter()
    result = mmcore.Trainer(model, spec.tasks, spec.training).fit()
    train_s = time.perf_counter() - t0
    model.eval()
    exact, digit = evaluate(model, DATA)
    return {
        "setting": name,
        "overrides": overrides,
        "base": base,
        "seed": seed,
        "steps": spec.training.steps,
        "batch_size": spec.training.batch_size,
        "image_tokens": model.encoders["image"].num_tokens,
        "string": round(exact, 4),
        "digit": round(digit, 4),
        "final_loss": round(result.final_loss, 4),
        "train_seconds_under_load": round(train_s, 1),
        "threads": torch.get_num_threads(),
    }


def step_times(names: list[str], base: dict, rounds: int = 2, steps: int = 20) -> dict:
    """Seconds per training step of each setting and of the demo spec, alternating, one thread."""
    import torch

    import mmcore
    from mmcore.spec import parse_spec

    torch.set_num_threads(1)
    demo = tomllib.loads(DEMO.read_text())
    demo["training"] = {"steps": 1400, "batch_size": 32, "lr": 1e-3, "progress": False}  # all tasks mixed
    specs = {"demo": parse_spec(demo, file=str(DEMO))}
    for n in names:
        specs[n] = parse_spec(spec_data(1000, base, parse_setting(n), 0), file=str(SPEC))
    times: dict[str, list[float]] = {}
    for _ in range(rounds):
        for n, spec in specs.items():
            trainer = mmcore.Trainer(mmcore.build(spec), spec.tasks, spec.training)
            trainer.train_step()  # warm-up
            t0 = time.perf_counter()
            for _ in range(steps):
                trainer.train_step()
            times.setdefault(n, []).append((time.perf_counter() - t0) / steps)
    demo_s = sum(times["demo"]) / rounds
    rows = {}
    for n in names:
        s = sum(times[n]) / rounds
        rows[n] = {"seconds_per_step": times[n], "over_demo": round(s / demo_s, 3)}
        rows[n]["idle_seconds_per_1000_steps"] = round(1000 * s / demo_s * DEMO_IDLE_S_PER_STEP, 1)
    return {
        "demo_seconds_per_step": times["demo"],
        "settings": rows,
        "base": base,
        "threads": 1,
        "steps_timed": steps,
        "note": "shared machine under load; only the ratio to the demo means something",
    }


DOC = ROOT / "docs" / "tuning.md"
BEGIN, END = (
    "<!-- ablate_strings: begin (written by bench/ablate_strings.py --write-docs) -->",
    "<!-- ablate_strings: end -->",
)


def table(results: list[dict]) -> str:
    return tables_by_round(
        results,
        "| setting | overrides | image tokens | seed | steps | strings exactly right | digits right "
        "| final train loss | train minutes (under load) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|",
        lambda r, ov: (
            f"| {r['setting']} | {ov} | {r['image_tokens']} | {r['seed']} | {r['steps']} | {100 * r['string']:.1f} % | "
            f"{100 * r['digit']:.1f} % | {r['final_loss']:.3f} | {r['train_seconds_under_load'] / 60:.1f} |"
        ),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--time", nargs="*", metavar="SETTING", help="measure s/step of these settings vs the demo")
    add_ablation_options(p, RESULTS)
    args = p.parse_args(argv)
    from mmcore import atomic_write_text

    if args.write_docs:
        write_between(json.loads(Path(args.out).read_text()), BEGIN, END, table)
        return 0
    if args.list:
        print_settings(SETTINGS)
        return 0
    base = parse_base(args.base)
    if args.time is not None:
        result = step_times(args.time or ["base"], base)
        atomic_write_text(TIMES, json.dumps(result, indent=1) + "\n")
        print(json.dumps(result, indent=1))
        return 0
    if not (DATA / "strings_eval.jsonl").exists():
        import digit_strings

        digit_strings.main(["--out", str(DATA)])
    run_settings(
        args.only or list(SETTINGS),
        args.seeds,
        lambda name, seed: run_one(name, parse_setting(name, SETTINGS), args.steps, base, seed),
        args.out,
        args.tag,
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
