"""The main job: one model that reads pictures, sound and text together.

1. Makes the data (examples/recipes/digits_av.py): scikit-learn's handwritten digits as
   images, each digit's telephone keypad tone (DTMF) as sound, the digit's name as text.
2. Trains examples/digits_av.toml: a vision encoder, an audio encoder and a byte-level text
   encoder around one GPT, in the spec's three [[training.stages]]: stage 1 (400 steps)
   teaches the model to caption a digit image; stage 2 (200 steps) to transcribe a digit
   tone; stage 3 (800 steps) trains all three tasks at once, adding: decide whether a
   tone and a picture show the same digit. `mmcore train examples/digits_av.toml` trains the same way.
3. Evaluates on held-out images and tones, prints example generations next to their
   references, and writes the model directory (with loss.png) to runs/demo.

    python examples/demo.py            # or: python3 dev.py demo
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="model directory to write")
    p.add_argument("--spec", default=str(HERE / "digits_av.toml"), help="the spec (default: examples/digits_av.toml)")
    p.add_argument("--data", default=str(HERE / "data" / "digits_av"), help="where to write the data the spec reads")
    p.add_argument("--steps", type=int, help="override the steps of the last stage (all three tasks)")
    p.add_argument(
        "--results", action="store_true", help="write examples/results/digits_av.json (the figures docs quote)"
    )
    args = p.parse_args(argv)
    t0 = time.perf_counter()

    sys.path.insert(0, str(HERE / "recipes"))
    import digits_av

    data = Path(args.data)
    print(f"[1/3] data: digits (scikit-learn) + DTMF tones -> {data}")
    stats = digits_av.main(["--out", str(data)])

    import torch

    import mmcore

    torch.manual_seed(0)
    spec = mmcore.load_spec(args.spec)
    if args.steps:
        import dataclasses

        from mmcore.schedule import with_steps

        spec = dataclasses.replace(spec, training=with_steps(spec.training, args.steps))
    model = mmcore.build(spec)
    print(f"[2/3] training {spec.name!r} ({stats['train']['images']} images, {stats['train']['clips']} tones)")
    t_train = time.perf_counter()
    trainer = mmcore.Trainer(model, spec.tasks, spec.training, out_dir=args.out, resume=False)
    result = trainer.fit()
    train_seconds = time.perf_counter() - t_train

    print("[3/3] held-out evaluation")
    report: dict = {"tasks": result.eval}
    report.update(exact_match(model, data, show=5))
    match = result.eval["match"]
    print(
        f"  match (needs picture and tone together): accuracy {match['accuracy']:.1%} on "
        f"{int(match['samples'])} held-out pairs (chance 50.0%), macro-F1 {match['macro_f1']:.3f}"
    )
    report["match_accuracy"] = match["accuracy"]
    report["seconds"] = time.perf_counter() - t0
    report["train_seconds"] = train_seconds
    report["steps"] = {st.name or f"stage{i + 1}": st.steps for i, st in enumerate(spec.training.stages)}
    mmcore.atomic_write_text(Path(args.out) / "demo_report.json", json.dumps(report, indent=2) + "\n")
    base = digits_av.baselines(data)
    print(
        f"  classical baselines on the same split: caption {base['caption']['rbf_svm_pixels']:.1%} (RBF SVM on "
        f"pixels), transcribe {base['transcribe']['logistic_regression_spectrum']:.1%}, match "
        f"{base['match']['rbf_svm_pixels_x_logistic_regression_spectrum']:.1%} (the two composed)"
    )
    if args.results:
        from baselines import pct, write_results

        write_results(
            "digits_av",
            {"mmcore": report, "baselines": base},
            {
                "caption mmcore": pct(report["caption_exact_match"]),
                "caption logistic regression": pct(base["caption"]["logistic_regression_pixels"]),
                "caption svm": pct(base["caption"]["rbf_svm_pixels"]),
                "transcribe mmcore": pct(report["transcribe_exact_match"]),
                "transcribe logistic regression": pct(base["transcribe"]["logistic_regression_spectrum"]),
                "match mmcore": pct(report["match_accuracy"]),
                "match composed": pct(base["match"]["rbf_svm_pixels_x_logistic_regression_spectrum"]),
                "match composed logistic regression": pct(
                    base["match"]["logistic_regression_pixels_x_logistic_regression_spectrum"]
                ),
            },
        )
    print(f"done in {report['seconds']:.0f}s; model, metrics.jsonl and loss.png in {args.out}")
    return 0


def exact_match(
    model, data: Path, show: int = 0, predictions: dict[str, dict[str, str]] | None = None
) -> dict[str, float]:
    """Generate a name for every held-out image and tone; the fraction named exactly, per task.
    ``predictions`` (a dict), if given, receives each task's generated names by input path
    (``{"caption": {"img/0001.png": "seven", ...}, "transcribe": {...}}``)."""
    from mmcore.generation import GenerationConfig, generate_for_records

    out = {}
    gen = GenerationConfig(max_new_tokens=8)
    for task, field in (("caption", "image"), ("transcribe", "audio")):
        rows = [json.loads(line) for line in (data / f"{task}_eval.jsonl").read_text().splitlines()]
        preds = generate_for_records(model, [{field: r[field]} for r in rows], base=data, config=gen, batch_size=64)
        refs = [r["target"] for r in rows]
        if predictions is not None:
            predictions[task] = {row[field]: p.strip() for row, p in zip(rows, preds, strict=True)}
        acc = sum(p.strip() == r for p, r in zip(preds, refs, strict=True)) / len(refs)
        out[f"{task}_exact_match"] = acc
        if show:
            what = "images" if field == "image" else "tones"
            print(f"  {task}: {acc:.1%} of {len(refs)} held-out {what} named exactly; examples:")
            step = max(1, len(rows) // show)
            for p_, r_, row in list(zip(preds, refs, rows, strict=True))[::step][:show]:
                print(f"    {row[field]:<18} generated {p_!r:<10} reference {r_!r}")
    return out


if __name__ == "__main__":
    sys.exit(main())
