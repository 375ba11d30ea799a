"""Every figure docs/tasks.md gives for text to image, from one trained model directory, written
to ``examples/results/text_to_image.json`` (tests/test_docs.py checks the page quotes it).

    python examples/recipes/text_to_image.py                       # the data
    mmcore train examples/text_to_image.toml --out runs/text_to_image
    python examples/recipes/text_to_image_results.py runs/text_to_image [--train-seconds S]

It runs :func:`text_to_image.evaluate` (an RBF SVM trained on the real training images labels
each generated image) for: 10 images per digit with "draw a seven" at sampling seed 0 (the main
figure, and docs/img/text_to_image_grid.png); 50 per digit at seeds 0, 1 and 2; and the two
other phrasings, 10 per digit. The classifier's accuracy on the real held-out images is the
baseline beside them: what a generator whose images were indistinguishable from real ones
would score.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from baselines import write_results  # noqa: E402
from text_to_image import TEMPLATES, evaluate  # noqa: E402


def _pct(x: float, digits: int = 0) -> str:
    return f"{100 * x:.{digits}f} %"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir")
    p.add_argument("--grid", default=str(HERE.parent.parent / "docs" / "img" / "text_to_image_grid.png"))
    p.add_argument("--train-seconds", type=float, help="wall time of the `mmcore train` run, to record beside it")
    args = p.parse_args(argv)
    runs = {"main": evaluate(args.model_dir, 10, 0, args.grid, 1.0, 0, TEMPLATES[0])}
    for seed in (0, 1, 2):
        runs[f"50_seed{seed}"] = evaluate(args.model_dir, 50, seed, None, 1.0, 0, TEMPLATES[0])
    for i, template in enumerate(TEMPLATES[1:], 1):
        runs[f"template{i}"] = evaluate(args.model_dir, 10, 0, None, 1.0, 0, template)
    main_run = runs["main"]
    root = HERE.parent.parent
    for run in runs.values():  # paths as the docs' commands name them, not this machine's
        if run.get("grid") and Path(run["grid"]).resolve().is_relative_to(root):
            run["grid"] = str(Path(run["grid"]).resolve().relative_to(root))
    figures = {
        "chance (10 digits)": "10 %",
        "baseline: the classifier on the real held-out images": _pct(main_run["classifier_real_heldout_accuracy"], 1),
        "mmcore: generated images match the prompt (10 per digit, seed 0)": _pct(main_run["accuracy"]),
        "mmcore: 50 per digit, seeds 0 / 1 / 2": " / ".join(
            _pct(runs[f"50_seed{s}"]["accuracy"], 1) for s in (0, 1, 2)
        ),
        "mmcore: other phrasings": f"{_pct(runs['template1']['accuracy'])[:-2]} / {_pct(runs['template2']['accuracy'])}",
        "mmcore: exact copies of training images": f"{main_run['exact_copies_of_training_images']} of 100",
    }
    results = {"runs": runs, "train_seconds": args.train_seconds}
    write_results("text_to_image", results, figures)
    return figures


if __name__ == "__main__":
    print(main())
