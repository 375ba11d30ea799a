"""Seconds per training step of examples/speech_words.toml beside the demo's (examples/digits_av.toml).

On a shared machine wall times mean little, but two specs timed alternately in one process
under the same load give a usable ratio; times the demo's idle figure (1,400 steps in 107 s
on two idle threads: 0.076 s a step) it estimates the speech recipe's idle step. Each
measurement is the time of ``n + 30`` steps minus that of ``n`` steps (so building the trainer
and the final evaluation cancel out), for the speech spec with its processor's cache warm
(every training clip read once before, as after the first epoch) and for the demo with its
three stages scaled to 1/50 and 4/50 of their steps (the same mix of tasks). ``--variant``
times the speech spec with dotted overrides against itself instead of the demo
(``--variant training.precision=bf16``). Writes bench/results_speech_step_time.json.

    python bench/speech_step_time.py --reps 2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
RESULTS = ROOT / "bench" / "results_speech_step_time.json"
DEMO_IDLE_S_PER_STEP = 107 / 1400


def demo_spec(scale: float):
    from mmcore.spec import parse_spec

    data = tomllib.loads((EXAMPLES / "digits_av.toml").read_text())
    for stage in data["training"]["stages"]:
        stage["steps"] = max(1, round(stage["steps"] * scale))
        if "warmup_steps" in stage:
            stage["warmup_steps"] = 1
    data["training"].update(warmup_steps=1, log_every=10**6, eval_batches=1)
    return parse_spec(data, file=str(EXAMPLES / "digits_av.toml")), sum(s["steps"] for s in data["training"]["stages"])


def speech_spec(steps: int, overrides: list[str]):
    import mmcore

    extra = [f"training.steps={steps}", "training.warmup_steps=1", "training.log_every=1000000"]
    return mmcore.load_spec(EXAMPLES / "speech_words.toml", overrides=[*overrides, *extra, "training.eval_batches=1"])


def seconds_per_step(model, make, a, b) -> float:
    import mmcore

    (sa, na), (sb, nb) = make(a), make(b)
    times = []
    for spec in (sa, sb):
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            mmcore.Trainer(model, spec.tasks, spec.training, out_dir=None, resume=False).fit()
        times.append(time.perf_counter() - t0)
    return (times[1] - times[0]) / (nb - na)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=2, help="alternations of the two measurements")
    p.add_argument("--variant", nargs="*", default=None, help="dotted overrides timed against the speech spec")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    import mmcore

    os.chdir(EXAMPLES)  # the specs' data paths are relative to examples/
    speech = lambda n: (speech_spec(n, []), n)  # noqa: E731
    model = mmcore.build(speech(2)[0])
    proc = model.processors["audio"]
    data = EXAMPLES / "data" / "speech_words"
    t0 = time.perf_counter()
    for line in (data / "train.jsonl").read_text().splitlines():
        proc(str(data / json.loads(line)["audio"]))
    warm = time.perf_counter() - t0
    if args.variant is not None:
        other, other_model, name = (lambda n: (speech_spec(n, args.variant), n)), model, " ".join(args.variant)
        lo, hi = 5, 35
    else:
        other, name, lo, hi = demo_spec, "examples/digits_av.toml", 1 / 50, 4 / 50
        other_model = mmcore.build(demo_spec(1 / 50)[0])
    rows = []
    for _ in range(args.reps):
        o = seconds_per_step(other_model, other, lo, hi)
        s = seconds_per_step(model, speech, 5, 35)
        rows.append({"other_s_per_step": round(o, 4), "speech_s_per_step": round(s, 4), "ratio": round(s / o, 2)})
        print(json.dumps(rows[-1]), flush=True)
    ratio = sum(r["speech_s_per_step"] for r in rows) / sum(r["other_s_per_step"] for r in rows)
    result = {
        "against": name,
        "rows": rows,
        "ratio": round(ratio, 2),
        "first_epoch_decode_resample_seconds_under_load": round(warm, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "threads": __import__("torch").get_num_threads(),
    }
    if args.variant is None:
        result["idle_estimate_s_per_step"] = round(ratio * DEMO_IDLE_S_PER_STEP, 3)
    print(json.dumps(result))
    from mmcore import atomic_write_text

    out = Path(args.out)
    old = json.loads(out.read_text()) if out.exists() else []
    atomic_write_text(out, json.dumps([*old, result], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
