"""Explain the main job's model (runs/demo): which inputs its predictions rely on.

    python3 dev.py demo                               # trains runs/demo
    python examples/recipes/explain_digits.py          # about a minute

On held-out records of two tasks, with mmcore.explain:

* ``match`` (does the tone name the digit in the picture? needs both inputs): accuracy of the
  full records and of the same records with the picture removed, or the tone removed (what the
  occlusion measures), the mean drop of the target's log-probability per input, and the mean
  share of gradient x input per input;
* ``caption`` (name the digit in the picture: one input conditions the text): the same
  per-input figures for the caption's log-probability.

Writes runs/explain_digits/report.json and one example explanation per task (explain.json,
explain.png) in runs/explain_digits/<task>/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import mmcore
from mmcore.explain import explain

HERE = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="runs/demo")
    p.add_argument("--data", default=str(HERE / "data" / "digits_av"))
    p.add_argument("--records", type=int, default=60, help="held-out records per task")
    p.add_argument("--out", default="runs/explain_digits")
    args = p.parse_args()
    t0 = time.perf_counter()
    model = mmcore.load(args.model)
    data, out = Path(args.data), Path(args.out)
    report: dict = {}
    for task, head in (("match", "match"), ("caption", "lm")):
        lines = (data / f"{task}_eval.jsonl").read_text().splitlines()[: args.records]
        rows = []
        for i, line in enumerate(lines):
            r = json.loads(line)
            rec = {k: str(data / v) for k, v in r.items() if k in ("image", "audio")}
            if task == "match":
                rec["text"] = r["text"]
                e = explain(model, rec, head=head, target=r["label"])
            else:
                rec["text"] = {"prompt": "", "target": r["target"]}
                e = explain(model, rec, head=head)
            rows.append((r, e.summary()))
            if i == 0:
                e.save(out / task)
        inputs = list(rows[0][1]["modalities"])
        entry: dict = {"records": len(rows), "inputs": {}}
        for m in inputs:
            occ = [s["modalities"][m]["occlusion"] for _, s in rows]
            e_m: dict = {
                "mean_share_grad_x_input": statistics.mean(s["modalities"][m]["grad_x_input_share"] for _, s in rows),
                "mean_logprob_drop": None if occ[0] is None else statistics.mean(o["delta"] for o in occ),
            }
            if task == "match" and occ[0] is not None:
                e_m["accuracy_without"] = statistics.mean(
                    o["prediction"] == r["label"] for o, (r, _) in zip(occ, rows, strict=True)
                )
            entry["inputs"][m] = e_m
        if task == "match":
            entry["accuracy"] = statistics.mean(
                s["target"]["probs"].index(max(s["target"]["probs"])) == r["label"] for r, s in rows
            )
        entry["mean_logprob"] = statistics.mean(s["logprob"] for _, s in rows)
        report[task] = entry
        print(task, json.dumps(entry, indent=2), flush=True)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    out.mkdir(parents=True, exist_ok=True)
    mmcore.atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'report.json'} in {report['seconds']} s")


if __name__ == "__main__":
    main()
