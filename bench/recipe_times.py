"""How long each recipe's training takes on this machine: measured step times x the recipe's steps.

The recipes' budgets (docs/tasks.md: the main job under 2 minutes of training on the 2-core
reference machine, every other recipe under 10) are wall time on an idle machine. Running
every recipe to the end costs an hour; its time is almost all optimizer steps, whose cost
depends on the stage (which tasks it samples) and not on the step number. So for each recipe
this script builds the recipe's model from its spec (with the recipe script's overrides),
and for each stage of the spec's training plan trains ``--steps`` steps of that stage's tasks
(after ``--warmup`` untimed ones) with the spec's own batch size, precision and data, then
times one evaluation as the trainer runs it. The estimate is

    sum over stages of (the stage's steps x its median seconds per step)
      + evaluations x seconds per evaluation   (every eval_every steps, and one at the end)

For a recipe whose processor caches decoded inputs (the speech recipe's audio), the first pass
over the training data is slower than the rest: it is timed whole (those steps at their
measured time) and only the remaining steps at the median rate after it.

Nothing here is a test. The result depends on the machine's load: the script records the load
average before and after, and the figures quoted in the docs are from a run on the idle
machine. Recipes whose data is missing are skipped with the command that makes it.

    python bench/recipe_times.py                        # every recipe, 2 threads
    python bench/recipe_times.py --only digits_av speech_words --threads 2
    python bench/recipe_times.py --json bench/results_recipe_times.json
    python bench/recipe_times.py --write-docs           # docs/tasks.md's table, from that file
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@dataclass(frozen=True)
class Recipe:
    spec: str  # under examples/
    budget_s: float  # the budget docs/tasks.md states for its training
    makes_data: str  # the command that writes its data
    overrides: dict[str, object] = field(default_factory=dict)  # what the recipe script changes in the spec
    # the processor caches decoded inputs (audio): the first pass over the data is slower, so it is
    # timed whole, untimed warm-up aside, and the rest of the stage at the warm rate
    first_epoch_cold: bool = False


RECIPES: dict[str, Recipe] = {
    "digits_av": Recipe("digits_av.toml", 120, "python examples/recipes/digits_av.py"),
    "digit_strings": Recipe("digit_strings.toml", 600, "python examples/recipes/digit_strings.py"),
    "speech_words": Recipe("speech_words.toml", 600, "python examples/recipes/speech_words.py", first_epoch_cold=True),
    "language_id": Recipe("language_id.toml", 600, "python examples/recipes/language_id.py"),
    "stdlib_topics": Recipe("stdlib_topics.toml", 600, "python examples/recipes/stdlib_text.py"),
    "stdlib_mlm": Recipe("stdlib_mlm.toml", 600, "python examples/recipes/stdlib_text.py"),
    "stdlib_lm": Recipe("stdlib_lm.toml", 600, "python examples/recipes/stdlib_text.py"),
    # translation.py --train DIR --steps 2500: the figures docs/tasks.md quotes
    "translation": Recipe("translation.toml", 600, "python examples/recipes/translation.py", {"training.steps": 2500}),
}


def _set(data: dict, dotted: str, value: object) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        data = data.setdefault(key, {})
    data[last] = value


def _data_files(spec) -> list[Path]:
    return [Path(p) for t in spec.tasks.values() for p in (t.train, t.eval) if p]


def time_recipe(name: str, recipe: Recipe, steps: int, warmup: int) -> dict:
    import torch

    import mmcore
    from mmcore.config import StageConfig
    from mmcore.schedule import plan_stages
    from mmcore.spec import parse_spec

    path = EXAMPLES / recipe.spec
    data = tomllib.loads(path.read_text())
    for key, value in recipe.overrides.items():
        _set(data, key, value)
    spec = parse_spec(data, file=str(path))
    missing = [str(p) for p in _data_files(spec) if not p.exists()]
    if missing:
        return {"skipped": f"no data ({missing[0]}): run `{recipe.makes_data}` first"}
    model = mmcore.build(spec)
    full = mmcore.Trainer(model, spec.tasks, spec.training)  # resolves lr and the stages' steps
    stages = plan_stages(full.cfg, list(spec.tasks))
    out_stages = []
    epoch_steps = 0
    if recipe.first_epoch_cold:
        records = sum(sum(1 for _ in open(t.train)) for t in spec.tasks.values() if t.train)
        epoch_steps = -(-records // full.cfg.batch_size)
    for stage in stages:
        cold = min(epoch_steps, stage.steps)
        n = warmup + cold + steps
        cfg = full.cfg.model_copy(
            update={"stages": [StageConfig(tasks=list(stage.tasks), steps=n)], "steps": n, "max_time": None}
        )
        trainer = mmcore.Trainer(model, spec.tasks, cfg)
        times, cold_s = [], 0.0
        for i in range(n):
            t0 = time.perf_counter()
            trainer.train_step()
            if i < cold:  # the first pass over the data (the cache fills), timed whole
                cold_s += time.perf_counter() - t0
            elif i >= cold + warmup:
                times.append(time.perf_counter() - t0)
        per = statistics.median(times)
        out_stages.append(
            {
                "name": stage.name,
                "tasks": list(stage.tasks),
                "steps": stage.steps,
                "seconds_per_step": round(per, 4),
                "timed_steps": len(times),
                **({"first_pass_steps": cold, "first_pass_seconds": round(cold_s, 1)} if cold else {}),
                "seconds": round(cold_s + (stage.steps - cold) * per, 1),
            }
        )
    t0 = time.perf_counter()
    full.evaluate(full.cfg.eval_batches)
    eval_s = time.perf_counter() - t0
    total_steps = sum(s["steps"] for s in out_stages)
    evals = (total_steps // full.cfg.eval_every if full.cfg.eval_every else 0) + 1
    estimate = sum(s["seconds"] for s in out_stages) + evals * eval_s
    del torch
    return {
        "spec": f"examples/{recipe.spec}",
        "overrides": recipe.overrides,
        "batch_size": full.cfg.batch_size,
        "precision": full.cfg.precision,
        "stages": out_stages,
        "evaluations": evals,
        "seconds_per_evaluation": round(eval_s, 2),
        "estimated_train_seconds": round(estimate, 1),
        "budget_seconds": recipe.budget_s,
        "within_budget": estimate <= recipe.budget_s,
    }


DOC = ROOT / "docs" / "tasks.md"
BEGIN = "<!-- recipe_times: begin (written by bench/recipe_times.py --write-docs) -->"
END = "<!-- recipe_times: end -->"
RESULTS = ROOT / "bench" / "results_recipe_times.json"


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(round(seconds % 60)):02d} s" if seconds >= 60 else f"{seconds:.0f} s"


def _overrides(overrides: dict) -> str:
    return (
        " (" + ", ".join(f"`{k} = {v}`" for k, v in overrides.items()) + ", as the recipe runs it)" if overrides else ""
    )


def table(results: dict) -> str:
    """docs/tasks.md's table of the recipes' training times, from a results file of this script."""
    lines = [
        f"Estimated on {results['threads']} thread{'s' if results['threads'] != 1 else ''} (load average {results['load_average_before']} before, "
        f"{results['load_average_after']} after; bench/results_recipe_times.json):",
        "",
        "| recipe | steps x batch | training, estimated | budget | |",
        "|---|---:|---:|---:|---|",
    ]
    for name, row in results["recipes"].items():
        if "skipped" in row:
            lines.append(f"| `{name}` | | not measured: {row['skipped']} | | |")
            continue
        steps = "+".join(f"{s['steps']:,}" for s in row["stages"])
        verdict = "within" if row["within_budget"] else "**over**"
        lines.append(
            f"| `{row['spec']}`{_overrides(row['overrides'])} | {steps} x {row['batch_size']} | {_minutes(row['estimated_train_seconds'])} "
            f"| {_minutes(row['budget_seconds'])} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def write_docs(results: dict) -> None:
    """Rewrite docs/tasks.md between BEGIN and END with :func:`table`."""
    from mmcore import atomic_write_text

    text = DOC.read_text()
    start, stop = text.index(BEGIN) + len(BEGIN), text.index(END)
    atomic_write_text(DOC, text[:start] + "\n" + table(results) + text[stop:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=sorted(RECIPES), help="these recipes (default: all)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2, the reference machine's cores)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per stage (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before them (default 3)")
    p.add_argument("--json", type=Path, help="write the results here (atomically)")
    p.add_argument("--write-docs", action="store_true", help=f"rewrite docs/tasks.md's table from {RESULTS.name}")
    args = p.parse_args(argv)
    if args.write_docs:
        write_docs(json.loads(RESULTS.read_text()))
        return 0

    import torch

    from mmcore import atomic_write_text

    torch.set_num_threads(args.threads)
    out: dict[str, object] = {
        "what": "estimated training seconds per recipe: measured seconds per step of each stage x its steps, "
        "plus evaluations (bench/recipe_times.py)",
        "threads": args.threads,
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "torch": torch.__version__,
        "load_average_before": round(os.getloadavg()[0], 2),
        "recipes": {},
    }
    for name in args.only or list(RECIPES):
        t0 = time.perf_counter()
        row = time_recipe(name, RECIPES[name], args.steps, args.warmup)
        row["measured_in_seconds"] = round(time.perf_counter() - t0, 1)
        out["recipes"][name] = row  # type: ignore[index]
        if "skipped" in row:
            print(f"{name:14s} skipped: {row['skipped']}")
        else:
            per = ", ".join(f"{s['name']} {s['steps']} x {s['seconds_per_step']:.3f}s" for s in row["stages"])
            verdict = "within" if row["within_budget"] else "OVER"
            print(
                f"{name:14s} {row['estimated_train_seconds']:7.1f} s ({verdict} the {row['budget_seconds']:.0f} s "
                f"budget): {per}; {row['evaluations']} eval x {row['seconds_per_evaluation']} s",
                flush=True,
            )
    out["load_average_after"] = round(os.getloadavg()[0], 2)
    if args.json:
        atomic_write_text(args.json, json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
