"""Does ``training.ema`` help the main job? Held-out figures of the averaged and the raw weights.

Trains examples/digits_av.toml (its two stages, 1,000 steps, seed 0) once with
``training.ema = DECAY``. The averages never feed back into training, so the run's trained
weights are exactly those of a run without ``ema``: one run gives both arms, on the same
trajectory. Both are evaluated on the held-out images, tones and pairs (the spec's eval sets;
exact-match generation as in examples/demo.py); the figures go to
bench/results_ema_digits_av.json, one entry per decay and step count (others are kept).

    python bench/ema_digits_av.py --ema 0.99
    python bench/ema_digits_av.py --ema 0.995 --steps 300   # a shorter last stage
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results_ema_digits_av.json"


def run(decay: float, steps: int | None, out: Path) -> dict:
    import torch

    import mmcore
    from mmcore.checkpoint import save
    from mmcore.schedule import with_steps

    sys.path.insert(0, str(ROOT / "examples"))
    from demo import exact_match

    torch.manual_seed(0)
    spec = mmcore.load_spec(ROOT / "examples" / "digits_av.toml")
    training = with_steps(spec.training, steps) if steps else spec.training
    training = training.model_copy(update={"ema": decay, "progress": False})
    spec = dataclasses.replace(spec, training=training)
    model = mmcore.build(spec)
    t0 = time.perf_counter()
    trainer = mmcore.Trainer(model, spec.tasks, spec.training, out_dir=out / "averaged", resume=False)
    result = trainer.fit()
    seconds = time.perf_counter() - t0
    save(model, out / "raw")  # the trained weights themselves
    trainer.ema = None
    raw_eval = trainer.evaluate()
    data = ROOT / "examples" / "data" / "digits_av"
    arms = {}
    for arm, metrics in (("raw", raw_eval), ("averaged", result.eval)):
        arms[arm] = {
            **exact_match(mmcore.load(out / arm), data),
            "match_accuracy": metrics["match"]["accuracy"],
            "match_macro_f1": metrics["match"]["macro_f1"],
            **{f"{t}_loss": metrics[t]["loss"] for t in ("caption", "transcribe", "match")},
        }
    return {
        "decay": decay,
        "steps": result.steps,
        "stages": [s.steps for s in training.stages],
        **arms,
        "train_seconds_under_load": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ema", type=float, nargs="+", default=[0.99], help="decays to try")
    p.add_argument("--steps", type=int, help="steps of the last stage (default: the spec's)")
    p.add_argument("--out", default="runs/ema_digits_av", help="where the models go")
    p.add_argument("--no-data", action="store_true", help="use the data already made (by examples/demo.py)")
    args = p.parse_args(argv)
    if not args.no_data:
        sys.path.insert(0, str(ROOT / "examples" / "recipes"))
        import digits_av

        digits_av.main(["--out", str(ROOT / "examples" / "data" / "digits_av")])
    for decay in args.ema:
        entry = run(decay, args.steps, Path(args.out) / f"ema-{decay:g}")
        print(json.dumps(entry))
        from mmcore import atomic_write_text

        have = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"runs": []}
        runs = [r for r in have["runs"] if (r["decay"], r["steps"]) != (entry["decay"], entry["steps"])] + [entry]
        have = {
            "what": "examples/digits_av.toml, seed 0, held-out sets; per run (training.ema = decay): the trained "
            "weights (raw) and their moving average (averaged), from the same run",
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}; timings under shared load",
            "runs": sorted(runs, key=lambda r: (r["steps"], r["decay"])),
        }
        atomic_write_text(RESULTS, json.dumps(have, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
