"""Does ``training.ema`` help the main job? Held-out figures with and without, same step budget.

Trains examples/digits_av.toml (its two stages, 1,000 steps, seed 0) once per EMA decay
given (0: off), evaluates each model on the held-out images, tones and pairs (the spec's
eval sets; exact-match generation as in examples/demo.py) and writes the figures to
bench/results_ema_digits_av.json, one entry per decay (entries of other decays in the
file are kept, so the arms may run as separate processes).

    python bench/ema_digits_av.py --ema 0 0.99
    python bench/ema_digits_av.py --ema 0.99 --steps 300   # a shorter last stage
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
    from mmcore.schedule import with_steps

    sys.path.insert(0, str(ROOT / "examples"))
    from demo import exact_match

    torch.manual_seed(0)
    spec = mmcore.load_spec(ROOT / "examples" / "digits_av.toml")
    training = with_steps(spec.training, steps) if steps else spec.training
    training = training.model_copy(update={"ema": decay or None, "progress": False})
    spec = dataclasses.replace(spec, training=training)
    model = mmcore.build(spec)
    t0 = time.perf_counter()
    result = mmcore.Trainer(model, spec.tasks, spec.training, out_dir=out, resume=False).fit()
    seconds = time.perf_counter() - t0
    ema = mmcore.load(out)  # the saved model: the averaged weights when ema is on
    figures = exact_match(ema, ROOT / "examples" / "data" / "digits_av")
    return {
        "ema": decay or None,
        "steps": result.steps,
        "stages": [s.steps for s in training.stages],
        "caption_exact_match": figures["caption_exact_match"],
        "transcribe_exact_match": figures["transcribe_exact_match"],
        "match_accuracy": result.eval["match"]["accuracy"],
        "match_macro_f1": result.eval["match"]["macro_f1"],
        "caption_loss": result.eval["caption"]["loss"],
        "transcribe_loss": result.eval["transcribe"]["loss"],
        "match_loss": result.eval["match"]["loss"],
        "train_seconds_under_load": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ema", type=float, nargs="+", default=[0.0, 0.99], help="decays to compare (0: off)")
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
        from mmcore.checkpoint import atomic_write_text

        have = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"runs": []}
        runs = [r for r in have["runs"] if (r["ema"], r["steps"]) != (entry["ema"], entry["steps"])] + [entry]
        have = {
            "what": "examples/digits_av.toml, seed 0, held-out sets; ema null = off",
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}; timings under shared load",
            "runs": sorted(runs, key=lambda r: (r["steps"], r["ema"] or 0)),
        }
        atomic_write_text(RESULTS, json.dumps(have, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
