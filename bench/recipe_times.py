"""How long each recipe's training takes on this machine: measured step times x the recipe's steps.

The recipes' budgets (docs/tasks.md: the main job under 2 minutes of training on the 2-core
reference machine, every other recipe under 10) are wall time on an idle machine. Running
every recipe to the end costs an hour; its time is almost all optimizer steps, whose cost
depends on the stage (which tasks it samples) and not on the step number. So for each recipe
this script builds the recipe's model from its spec (with the recipe script's overrides),
and for each stage of the spec's training plan trains ``--steps`` steps of that stage's tasks
(after ``--warmup`` untimed ones) with the spec's own batch size, precision and data, then
times one evaluation as the trainer runs it. The estimate of one training run is

    sum over stages of (the stage's steps x its median seconds per step)
      + evaluations x seconds per evaluation   (every eval_every steps, and one at the end)

and a recipe script that trains several runs (one per fusion, per stage of a pipeline:
`image_text_fusions`, `llava_digits`, `stdlib_lm_distill`) is the sum of its runs' estimates,
each times how often the script makes it; the budget is for all of them together. It is the
budget of one seed: scripts that train the same spec again from other seeds, to show how far
a figure moves (`--seeds`, `--other-seeds`), repeat the recipe and are not counted.

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
class Training:
    """One training run a recipe script makes: a spec, what the script changes in it, how often."""

    spec: str  # under examples/
    overrides: dict[str, object] = field(default_factory=dict)  # dotted key -> value; None removes the key
    times: int = 1  # how many times the script trains it (once per seed, say)
    label: str = ""  # what the run is, in the table ("stage 1", "early")


@dataclass(frozen=True)
class Recipe:
    trainings: tuple[Training, ...]
    budget_s: float  # the budget docs/tasks.md states for the recipe's training, all its runs together
    makes_data: str  # the command that writes its data
    script: str = ""  # the recipe script that makes several runs (the table names it)
    # the processor caches decoded inputs (audio): the first pass over the data is slower, so it is
    # timed whole, untimed warm-up aside, and the rest of the stage at the warm rate
    first_epoch_cold: bool = False


def _one(spec: str, budget_s: float, makes_data: str, overrides: dict | None = None, **kw) -> Recipe:
    return Recipe((Training(spec, overrides or {}),), budget_s, makes_data, **kw)


_DIGITS = "python examples/recipes/digits_av.py"
_STDLIB = "python examples/recipes/stdlib_text.py"
# examples/recipes/llava_digits.py: pretrain the LM once, then stage 1 (LM frozen), stage 2 (LoRA) and the
# same captioner from scratch (for each of its seeds: one seed is the budget's). The LM's weights do not change a step's cost, so
# the caption runs are timed with the spec's backbone at random init (weights_from removed).
_LLAVA = {"backbone.weights_from": None, "encoders.text.weights_from": None}
_LORA = {"backbone.train": "lora", "backbone.lora": {"rank": 8, "alpha": 16}}
_DISTILL = [f"tasks.pretrain.{k}" for k in ("teacher", "distill_alpha", "distill_temperature", "distill_hidden")]
_SCRATCH = {"backbone.train": "full", "encoders.text.train": "full"}
_LATENTS = {"resampler": {"fusion.num_latents": 4}}  # image_text_fusions.py's RESAMPLER_LATENTS

RECIPES: dict[str, Recipe] = {
    "digits_av": _one("digits_av.toml", 120, _DIGITS),
    "digit_strings": _one("digit_strings.toml", 600, "python examples/recipes/digit_strings.py"),
    "speech_words": _one("speech_words.toml", 600, "python examples/recipes/speech_words.py", first_epoch_cold=True),
    "language_id": _one("language_id.toml", 600, "python examples/recipes/language_id.py"),
    "stdlib_topics": _one("stdlib_topics.toml", 600, _STDLIB),
    "stdlib_mlm": _one("stdlib_mlm.toml", 600, _STDLIB),
    "stdlib_lm": _one("stdlib_lm.toml", 600, _STDLIB),
    # translation.py --train DIR --steps 2500: the figures docs/tasks.md quotes
    "translation": _one("translation.toml", 600, "python examples/recipes/translation.py", {"training.steps": 2500}),
    # examples/recipes/image_text_fusions.py: one run per fusion; the resampler with the script's latents
    "image_text_fusions": Recipe(
        tuple(
            Training("image_text.toml", {"fusion.component": f, **_LATENTS.get(f, {})}, label=f)
            for f in ("early", "cross_attention", "resampler")
        ),
        600,
        _DIGITS,
        script="image_text_fusions.py",
    ),
    "text_to_image": _one("text_to_image.toml", 600, "python examples/recipes/text_to_image.py"),
    "diabetes_regression": _one("diabetes_regression.toml", 600, "python examples/recipes/diabetes_regression.py"),
    # distill_stdlib.py: the spec's student alone (no teacher), then distilled from runs/stdlib_lm (the
    # teacher is the stdlib_lm recipe, timed on its own row)
    "stdlib_lm_distill": Recipe(
        (
            Training("stdlib_lm_distill.toml", dict.fromkeys(_DISTILL), label="student alone"),
            Training("stdlib_lm_distill.toml", label="distilled"),
        ),
        600,
        f"{_STDLIB} && python examples/recipes/distill_stdlib.py --teacher-only",
        script="distill_stdlib.py",
    ),
    "llava_digits": Recipe(
        (
            Training("llava_lm.toml", label="pretrained LM"),
            Training("llava_digits.toml", {**_LLAVA, "training.steps": 300}, label="stage 1"),
            Training("llava_digits.toml", {**_LLAVA, **_LORA, "training.steps": 300}, label="stage 2"),
            Training("llava_digits.toml", {**_LLAVA, **_SCRATCH, "training.steps": 600}, label="scratch"),
        ),
        600,
        f"{_STDLIB} && {_DIGITS}",
        script="llava_digits.py",
    ),
}


def _set(data: dict, dotted: str, value: object) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        data = data.setdefault(key, {})
    if value is None:
        data.pop(last, None)
    else:
        data[last] = value


def _data_files(spec) -> list[Path]:
    """What the run reads: its tasks' data, and a distilled task's teacher (a model directory)."""
    return [Path(p) for t in spec.tasks.values() for p in (t.train, t.eval, t.teacher) if p]


def stage_seconds(
    steps: int, seconds_per_step: float, first_pass_steps: int = 0, first_pass_seconds: float = 0.0
) -> float:
    """A stage's estimated seconds: its first pass over the data as timed (a processor's cache fills
    then), the remaining steps at the warm median rate."""
    return first_pass_seconds + (steps - first_pass_steps) * seconds_per_step


def training_seconds(stages: list[dict], evaluations: int, seconds_per_evaluation: float) -> float:
    """One training run's estimate: its stages plus its evaluations."""
    return sum(s["seconds"] for s in stages) + evaluations * seconds_per_evaluation


def recipe_seconds(trainings: list[dict]) -> float:
    """A recipe's estimate: each of its runs' estimate times how often the script makes that run."""
    return sum(t["times"] * t["estimated_train_seconds"] for t in trainings)


def time_training(training: Training, steps: int, warmup: int, first_epoch_cold: bool) -> dict:
    import mmcore
    from mmcore.config import StageConfig
    from mmcore.schedule import plan_stages
    from mmcore.spec import parse_spec

    path = EXAMPLES / training.spec
    data = tomllib.loads(path.read_text())
    for key, value in training.overrides.items():
        _set(data, key, value)
    spec = parse_spec(data, file=str(path))
    missing = [str(p) for p in _data_files(spec) if not p.exists()]
    if missing:
        return {"skipped": f"no data ({missing[0]})"}
    model = mmcore.build(spec)
    full = mmcore.Trainer(model, spec.tasks, spec.training)  # resolves lr and the stages' steps
    stages = plan_stages(full.cfg, list(spec.tasks))
    out_stages = []
    epoch_steps = 0
    if first_epoch_cold:
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
        row = {
            "name": stage.name,
            "tasks": list(stage.tasks),
            "steps": stage.steps,
            "seconds_per_step": round(per, 4),
            "timed_steps": len(times),
            **({"first_pass_steps": cold, "first_pass_seconds": round(cold_s, 1)} if cold else {}),
        }
        row["seconds"] = round(
            stage_seconds(stage.steps, row["seconds_per_step"], cold, row.get("first_pass_seconds", 0.0)), 1
        )
        out_stages.append(row)
    t0 = time.perf_counter()
    full.evaluate(full.cfg.eval_batches)
    eval_s = round(time.perf_counter() - t0, 2)
    total_steps = sum(s["steps"] for s in out_stages)
    evals = (total_steps // full.cfg.eval_every if full.cfg.eval_every else 0) + 1
    return {
        "label": training.label,
        "spec": f"examples/{training.spec}",
        "overrides": training.overrides,
        "times": training.times,
        "batch_size": full.cfg.batch_size,
        "precision": full.cfg.precision,
        "stages": out_stages,
        "evaluations": evals,
        "seconds_per_evaluation": eval_s,
        "estimated_train_seconds": round(training_seconds(out_stages, evals, eval_s), 1),
    }


def time_recipe(name: str, recipe: Recipe, steps: int, warmup: int) -> dict:
    runs = []
    for training in recipe.trainings:
        row = time_training(training, steps, warmup, recipe.first_epoch_cold)
        if "skipped" in row:
            return {"skipped": f"{row['skipped']}: run `{recipe.makes_data}` first"}
        runs.append(row)
    estimate = round(recipe_seconds(runs), 1)
    return {
        **({"script": f"examples/recipes/{recipe.script}"} if recipe.script else {}),
        "trainings": runs,
        "estimated_train_seconds": estimate,
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
    def item(k: str, v: object) -> str:
        return f"`{k}` removed" if v is None else f"`{k} = {v}`"

    return " (" + ", ".join(item(k, v) for k, v in overrides.items()) + ", as the recipe runs it)" if overrides else ""


def _steps(training: dict) -> str:
    steps = "+".join(f"{s['steps']:,}" for s in training["stages"])
    return f"{steps} x {training['batch_size']}"


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
        runs = row["trainings"]
        if len(runs) == 1 and "script" not in row:
            recipe, steps = f"`{runs[0]['spec']}`{_overrides(runs[0]['overrides'])}", _steps(runs[0])
        else:  # a script that trains several runs: each run's steps, and how often it runs
            specs = ", ".join(dict.fromkeys(f"`{t['spec']}`" for t in runs))
            recipe = f"`{row['script']}` ({specs})"
            steps = "; ".join(
                f"{t['label']}: {t['times']} x {_steps(t)}" if t["times"] > 1 else f"{t['label']}: {_steps(t)}"
                for t in runs
            )
        verdict = "within" if row["within_budget"] else "**over**"
        lines.append(
            f"| {recipe} | {steps} | {_minutes(row['estimated_train_seconds'])} | {_minutes(row['budget_seconds'])} | {verdict} |"
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
            per = "; ".join(
                (f"{t['label']} " if t["label"] else "")
                + (f"{t['times']} x (" if t["times"] > 1 else "")
                + ", ".join(f"{s['name']} {s['steps']} x {s['seconds_per_step']:.3f}s" for s in t["stages"])
                + f", {t['evaluations']} eval x {t['seconds_per_evaluation']} s"
                + (")" if t["times"] > 1 else "")
                for t in row["trainings"]
            )
            verdict = "within" if row["within_budget"] else "OVER"
            print(
                f"{name:14s} {row['estimated_train_seconds']:7.1f} s ({verdict} the {row['budget_seconds']:.0f} s budget): {per}",
                flush=True,
            )
    out["load_average_after"] = round(os.getloadavg()[0], 2)
    if args.json:
        atomic_write_text(args.json, json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
