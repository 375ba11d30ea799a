"""Distil the stdlib language model into a 7x smaller student, against the same student alone.

    python examples/recipes/stdlib_text.py
    mmcore train examples/stdlib_lm.toml --out runs/stdlib_lm                 # the teacher
    python examples/recipes/distill_stdlib.py                                 # both students

Trains the student of examples/stdlib_lm_distill.toml twice with the same seed, data order and
schedule: once with the teacher (soft targets mixed with the labels) and once without (the
``teacher`` option removed), then evaluates the teacher and both students on the held-out
corpus. Writes runs/stdlib_distill/report.json: parameters, model.safetensors sizes, held-out
perplexity and training wall time of each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

import mmcore
from mmcore.evaluate import evaluate_dir

HERE = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", default=str(HERE / "stdlib_lm_distill.toml"))
    p.add_argument("--out", default="runs/stdlib_distill")
    p.add_argument("--steps", type=int, help="override training.steps")
    p.add_argument("--hidden", type=float, default=0.0, help="distill_hidden for the distilled student")
    p.add_argument("--alpha", type=float, help="distill_alpha for the distilled student (default: the spec's)")
    p.add_argument("--temperature", type=float, help="distill_temperature (default: the spec's)")
    p.add_argument("--only", choices=["distilled", "alone"], help="train only this student")
    args = p.parse_args()
    spec = mmcore.load_spec(args.spec)
    ((name, task),) = spec.tasks.items()
    if task.teacher is None:
        raise SystemExit(f"{args.spec}: the task has no teacher")
    training = spec.training.model_copy(update={"steps": args.steps} if args.steps else {})
    out = Path(args.out)
    runs = {
        "distilled": task.model_copy(
            update={
                "distill_hidden": args.hidden,
                "distill_alpha": task.distill_alpha if args.alpha is None else args.alpha,
                "distill_temperature": task.distill_temperature if args.temperature is None else args.temperature,
            }
        ),
        "alone": task.model_copy(
            update={"teacher": None, "distill_alpha": 0.5, "distill_temperature": 2.0, "distill_hidden": 0.0}
        ),
    }
    if args.only:
        runs = {args.only: runs[args.only]}
    d = runs.get("distilled")
    report: dict = {"teacher_dir": task.teacher, "steps": training.steps, "students": {}}
    if d is not None:
        report["distill"] = {"alpha": d.distill_alpha, "temperature": d.distill_temperature, "hidden": d.distill_hidden}
    for label, t in runs.items():
        s = dataclasses.replace(spec, tasks={name: t}, training=training)
        torch.manual_seed(training.seed)
        model = mmcore.build(s)
        t0 = time.perf_counter()
        result = mmcore.Trainer(model, s.tasks, s.training, out_dir=out / label, resume=False).fit()
        report["students"][label] = {
            "params": model.summary().params,
            "bytes": (out / label / "model.safetensors").stat().st_size,
            "train_seconds": round(time.perf_counter() - t0, 1),
            "final_train_loss": result.final_loss,
            "eval": evaluate_dir(out / label, task.eval, generate=False),
        }
        print(label, report["students"][label], flush=True)
    teacher = mmcore.load(task.teacher)
    report["teacher"] = {
        "params": teacher.summary().params,
        "bytes": (Path(task.teacher) / "model.safetensors").stat().st_size,
        "eval": evaluate_dir(task.teacher, task.eval, generate=False),
    }
    out.mkdir(parents=True, exist_ok=True)
    mmcore.atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
