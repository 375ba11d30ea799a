"""Distil the stdlib language model into a 2.3x smaller student, against the same student alone.

    python examples/recipes/stdlib_text.py                        # the data and its baselines
    python examples/recipes/distill_stdlib.py --train-teacher     # teacher, students, results

``--train-teacher`` first trains the teacher, examples/stdlib_lm.toml as it stands, into the
directory the student spec names as its ``teacher`` (runs/stdlib_lm); without it that directory
must hold a trained model already (``mmcore train examples/stdlib_lm.toml --out runs/stdlib_lm``).

Then trains the student of examples/stdlib_lm_distill.toml once alone (the ``teacher`` option
removed) and once per distillation variant (``--variant ALPHA,T,HIDDEN``; by default the spec's
own setting only: at the spec's 2,500 steps a distilled student takes about 5 idle minutes, so
soft-target-only variants are asked for by name), each with the same seed, data order and
schedule, and evaluates the teacher and every student on the whole held-out corpus
(``evaluate_dir``). ``--teacher-only`` trains the teacher, records its run beside it
(``teacher_run.json``) and stops; a later run without ``--train-teacher`` reports that record.

Writes runs/stdlib_distill/report.json and, unless ``--no-results``, the committed results file
examples/results/distill_stdlib.json (``baselines.write_results``): parameters, model.safetensors sizes, held-out perplexity,
training steps and wall time of each model, next to the classical baselines stdlib_text.py
computed on the same held-out file (examples/data/stdlib/baselines.json: unigram and
interpolated byte 5-gram). Its ``figures`` are the texts docs/tasks.md quotes.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch

import mmcore
from mmcore.evaluate import evaluate_dir

HERE = Path(__file__).resolve().parent.parent
#: beside the teacher's model: its training run as --train-teacher measured it (steps, wall time)
TEACHER_RUN = "teacher_run.json"


def variant_label(alpha: float, temperature: float, hidden: float) -> str:
    """The row label docs/tasks.md gives a distilled student, e.g. ``distilled, alpha 0.9, T 1``."""
    label = f"distilled, alpha {alpha:g}, T {temperature:g}"
    return label + (f", hidden states {hidden:g}" if hidden else "")


def parse_variant(text: str) -> tuple[float, float, float]:
    try:
        alpha, temperature, hidden = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--variant {text!r}: want ALPHA,TEMPERATURE,HIDDEN, e.g. 0.9,1,1") from None
    return alpha, temperature, hidden


def train(spec, out_dir: Path) -> dict:
    """Train ``spec`` from its seed into ``out_dir``; what the results file keeps of the run."""
    torch.manual_seed(spec.training.seed)
    model = mmcore.build(spec)
    t0 = time.perf_counter()
    result = mmcore.Trainer(model, spec.tasks, spec.training, out_dir=out_dir, resume=False).fit()
    seconds = time.perf_counter() - t0
    return {
        "steps": result.steps,
        "train_seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / result.steps, 3),
        "final_train_loss": result.final_loss,
    }


def describe(model_dir: Path, eval_file: str) -> dict:
    """Parameters, file size and held-out metrics (the whole file) of a saved model directory."""
    model = mmcore.load(model_dir)
    return {
        "steps": model.spec.training.steps,
        "params": model.summary().params,
        "bytes": (model_dir / "model.safetensors").stat().st_size,
        "eval": evaluate_dir(model_dir, eval_file, generate=False)["metrics"],
    }


def sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def recorded_teacher_run(teacher_dir: Path) -> dict:
    """What ``--train-teacher`` (or ``--teacher-only``) recorded of the teacher in ``teacher_dir``: its
    spec, precision, steps and wall time, if the model there is still the one it trained (same
    model.safetensors); otherwise a note that the teacher's training is not known here."""
    record_file = teacher_dir / TEACHER_RUN
    if record_file.is_file():
        record = json.loads(record_file.read_text())
        if record.pop("model_sha256", None) == sha256(str(teacher_dir / "model.safetensors")):
            return record
    return {"spec": None, "note": "trained before this run, not by this script; its wall time is not known here"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", default=str(HERE / "stdlib_lm_distill.toml"))
    p.add_argument("--teacher-spec", default=str(HERE / "stdlib_lm.toml"), help="what --train-teacher trains")
    p.add_argument("--train-teacher", action="store_true", help="train the teacher first (into the spec's teacher)")
    p.add_argument(
        "--teacher-only",
        action="store_true",
        help="train the teacher (as --train-teacher) and stop; a later run without the flag reuses it and its record",
    )
    p.add_argument("--out", default="runs/stdlib_distill")
    p.add_argument("--steps", type=int, help="override the student's training.steps")
    p.add_argument(
        "--variant",
        type=parse_variant,
        action="append",
        metavar="ALPHA,T,HIDDEN",
        help="a distilled student's distill_alpha, distill_temperature and distill_hidden (repeatable; "
        "default: the spec's own; e.g. --variant 0.9,1,1 --variant 0.9,1,0 --variant 0.5,2,0 adds soft targets only)",
    )
    p.add_argument("--no-results", action="store_true", help="write runs/.../report.json only")
    args = p.parse_args()
    spec = mmcore.load_spec(args.spec)
    ((name, task),) = spec.tasks.items()
    if task.teacher is None:
        raise SystemExit(f"{args.spec}: the task has no teacher")
    teacher_dir = Path(task.teacher)
    baselines_file = Path(task.eval).parent / "baselines.json"
    if not baselines_file.is_file():
        raise SystemExit(f"{baselines_file} is missing: run python examples/recipes/stdlib_text.py first")
    baselines = json.loads(baselines_file.read_text())
    eval_docs = sum(1 for line in open(task.eval, encoding="utf-8") if line.strip())
    if baselines.get("corpus_eval_docs") != eval_docs:
        raise SystemExit(
            f"{baselines_file} describes {baselines.get('corpus_eval_docs')} held-out documents, {task.eval} "
            f"holds {eval_docs}: rerun python examples/recipes/stdlib_text.py"
        )
    variants = args.variant or [(task.distill_alpha, task.distill_temperature, task.distill_hidden)]
    training = spec.training.model_copy(update={"steps": args.steps} if args.steps else {})
    out = Path(args.out)
    load_before = os.getloadavg()[0]
    report: dict = {
        "environment": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "load_average_before": round(load_before, 2),
        },
        "data": {
            "train": task.train,
            "eval": task.eval,
            "train_sha256": sha256(task.train),
            "eval_sha256": sha256(task.eval),
            "eval_docs": eval_docs,
        },
        "baselines": {k: baselines[k] for k in ("unigram_eval_perplexity", "byte_5gram_eval_perplexity")},
    }
    if args.train_teacher or args.teacher_only:
        tspec = mmcore.load_spec(args.teacher_spec)
        print(f"teacher: {args.teacher_spec} -> {teacher_dir}", flush=True)
        teacher_run = {
            "spec": Path(args.teacher_spec).name,
            "precision": tspec.training.precision,
            **train(tspec, teacher_dir),
        }
        record = {**teacher_run, "model_sha256": sha256(str(teacher_dir / "model.safetensors"))}
        mmcore.atomic_write_text(teacher_dir / TEACHER_RUN, json.dumps(record, indent=2) + "\n")
        if args.teacher_only:
            print(f"teacher trained; its run is in {teacher_dir / TEACHER_RUN}", flush=True)
            return
    elif (teacher_dir / "model.safetensors").is_file():
        teacher_run = recorded_teacher_run(teacher_dir)
    else:
        raise SystemExit(f"no teacher at {teacher_dir}: pass --train-teacher, or train examples/stdlib_lm.toml there")
    report["teacher"] = {"dir": str(teacher_dir), **teacher_run, **describe(teacher_dir, task.eval)}
    print("teacher", report["teacher"], flush=True)
    # alone: the distillation options back at their defaults, as a task without a teacher must have them
    alone = {"teacher": None, "distill_alpha": 0.5, "distill_temperature": 2.0, "distill_hidden": 0.0}
    runs = {"student alone": task.model_copy(update=alone)}
    for alpha, temperature, hidden in variants:
        runs[variant_label(alpha, temperature, hidden)] = task.model_copy(
            update={"distill_alpha": alpha, "distill_temperature": temperature, "distill_hidden": hidden}
        )
    report["students"] = {}
    for i, (label, t) in enumerate(runs.items()):
        s = dataclasses.replace(spec, tasks={name: t}, training=training)
        run_dir = out / f"student_{i}"
        run = train(s, run_dir)
        cfg = {"alpha": t.distill_alpha, "temperature": t.distill_temperature, "hidden": t.distill_hidden}
        report["students"][label] = {
            "dir": str(run_dir),
            "distill": cfg if t.teacher else None,
            **run,
            **describe(run_dir, task.eval),
        }
        print(label, report["students"][label], flush=True)
        # written after every student: a run stopped part-way keeps the students it finished
        write_report(report, out, None if args.no_results else baselines, planned=list(runs))


def write_report(report: dict, out: Path, baselines: dict | None, planned: list[str]) -> None:
    """Compare the finished students with the one trained alone and write runs/.../report.json and,
    given ``baselines``, the results file (``baselines.write_results``). ``planned``: every
    student's label, so the report says which are still to come."""
    alone = report["students"]["student alone"]
    for row in report["students"].values():
        row["perplexity_vs_alone"] = round(row["eval"]["perplexity"] / alone["eval"]["perplexity"] - 1, 4)
        row["seconds_per_step_vs_alone"] = round(row["seconds_per_step"] / alone["seconds_per_step"], 2)
    report["students_not_trained_yet"] = [label for label in planned if label not in report["students"]]
    report["environment"]["load_average_after"] = round(os.getloadavg()[0], 2)
    out.mkdir(parents=True, exist_ok=True)
    mmcore.atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    if baselines is not None:
        from baselines import write_results  # examples/recipes/baselines.py, beside this script

        figures = {
            "unigram": f"{baselines['unigram_eval_perplexity']:.1f}",
            "byte 5-gram": f"{baselines['byte_5gram_eval_perplexity']:.2f}",
            "teacher": f"{report['teacher']['eval']['perplexity']:.2f}",
            **{label: f"{row['eval']['perplexity']:.2f}" for label, row in report["students"].items()},
        }
        write_results("distill_stdlib", report, figures)


if __name__ == "__main__":
    main()
