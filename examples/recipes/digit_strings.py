"""Several objects in one picture: a row of four handwritten digits, read as one number.

Built from scikit-learn's digits (8x8 scans, 17 grey levels, kept at their own size): the
scans are split 80/20 first, then each string is four random scans of its split side by
side, an 8x32 PNG, with its caption the four digits ("4071"). No eval scan appears in a
training string. The spec (examples/digit_strings.toml) reads the strip at its aspect
ratio (``image_size = [8, 32]``), not padded to a square: 8x8 patches after three 3x3
convolutions, a 1x4 grid of tokens, one per digit cell (bench/ablate_strings.py chose them).

    python examples/recipes/digit_strings.py                 # data -> examples/data/digit_strings
    python examples/recipes/digit_strings.py --train runs/digit_strings   # and the results file

Baselines (on the same split): an RBF SVM and logistic regression on the pixels of each
8x8 cell (told where each digit is; the model's patch grid is aligned with the cells too, but
it learns which digit each token shows and in what order to read them), a string right when
all four cells are. ``--train`` writes examples/results/digit_strings.json: the held-out
share of strings read exactly and of digits right, beside the baselines, with the training
seconds (``train_seconds_under_load``: wall time on whatever machine ran it).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from digits_av import png_gray  # noqa: E402

LENGTH = 4
SPEC = HERE.parent / "digit_strings.toml"


def make(out: Path, n_train: int, n_eval: int, seed: int) -> dict:
    from sklearn.datasets import load_digits

    out.mkdir(parents=True, exist_ok=True)
    (out / "img").mkdir(exist_ok=True)
    rng = random.Random(seed)
    digits = load_digits()
    order = list(range(len(digits.target)))
    rng.shuffle(order)
    n_eval_scans = len(order) // 5
    side = {"eval": order[:n_eval_scans], "train": order[n_eval_scans:]}
    stats = {}
    for split, n in (("train", n_train), ("eval", n_eval)):
        rows = []
        for j in range(n):
            scans = [rng.choice(side[split]) for _ in range(LENGTH)]
            px = [[min(255, int(v * 16)) for i in scans for v in digits.images[i][r]] for r in range(8)]  # 8 rows of 32
            name = f"img/{split}_{j:05d}.png"
            (out / name).write_bytes(png_gray(px))
            rows.append({"image": name, "target": "".join(str(int(digits.target[i])) for i in scans)})
        with open(out / f"strings_{split}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        stats[split] = len(rows)
    return stats


def baseline(out: Path) -> dict:
    """Per-cell classifiers (told the cell borders): digit accuracy and whole-string accuracy.

    Logistic regression and an RBF SVM on the 64 pixels of each 8x8 cell, fitted on the cells
    of the first 1,500 training strips; a string is right when all four of its cells are."""
    import numpy as np
    from baselines import image_classifiers, load_pixels, read_jsonl

    data = {s: read_jsonl(out / f"strings_{s}.jsonl") for s in ("train", "eval")}

    def cells(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        x = load_pixels([out / r["image"] for r in rows]).reshape(len(rows), 8, LENGTH, 8)
        x = x.transpose(0, 2, 1, 3).reshape(len(rows) * LENGTH, 64)
        y = np.array([int(c) for r in rows for c in r["target"]])
        return x, y

    (xt, yt), (xe, ye) = cells(data["train"][:1500]), cells(data["eval"])
    models = image_classifiers(xt, yt, xe, ye)["_models"]
    base = {}
    for key, name in (("svm", "rbf_svm"), ("lr", "logistic_regression")):
        right = (models[key].predict(xe) == ye).reshape(-1, LENGTH)
        base |= {f"{name}_per_cell_digit": float(right.mean()), f"{name}_per_cell_string": float(right.all(1).mean())}
    return base


def evaluate(model, out: Path) -> tuple[float, float]:
    """Greedy-read the held-out strips: (share of strings read exactly, share of digits right).

    A digit counts as right when the prediction has the right digit at its position (a short
    prediction is padded with blanks, so its missing digits are wrong)."""
    from mmcore.generation import GenerationConfig, generate_for_records

    rows = [json.loads(line) for line in (out / "strings_eval.jsonl").read_text().splitlines()]
    preds = generate_for_records(
        model,
        [{"image": r["image"]} for r in rows],
        base=out,
        config=GenerationConfig(max_new_tokens=6),
        batch_size=100,
    )
    exact = sum(p_.strip() == r["target"] for p_, r in zip(preds, rows, strict=True)) / len(rows)
    digit = sum(
        a == b
        for p_, r in zip(preds, rows, strict=True)
        for a, b in zip(p_.strip()[:LENGTH].ljust(LENGTH), r["target"], strict=True)
    ) / (LENGTH * len(rows))
    return exact, digit


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(HERE.parent / "data" / "digit_strings"))
    p.add_argument("--train-strings", type=int, default=6000)
    p.add_argument("--eval-strings", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", metavar="DIR", help="also train examples/digit_strings.toml and write the results")
    args = p.parse_args(argv)
    out = Path(args.out)
    stats = make(out, args.train_strings, args.eval_strings, args.seed)
    base = baseline(out)
    print(json.dumps({**stats, **base}))
    from baselines import pct, write_results

    figures = {
        "svm string": pct(base["rbf_svm_per_cell_string"]),
        "svm digit": pct(base["rbf_svm_per_cell_digit"]),
        "logistic regression string": pct(base["logistic_regression_per_cell_string"]),
        "logistic regression digit": pct(base["logistic_regression_per_cell_digit"]),
    }
    if not args.train:
        write_results("digit_strings_baselines", {"strings": stats, "baselines": base}, figures)
        return 0
    import torch

    import mmcore

    spec = mmcore.load_spec(SPEC)
    t0 = time.perf_counter()
    torch.manual_seed(spec.training.seed)
    model = mmcore.build(spec)
    result = mmcore.Trainer(model, spec.tasks, spec.training, out_dir=args.train, resume=False).fit()
    seconds = time.perf_counter() - t0
    model.eval()
    exact, digit = evaluate(model, out)
    print(f"held-out strings read exactly: {exact:.1%} (digits {digit:.1%}); baselines {base}")
    write_results(
        "digit_strings",
        {
            "mmcore": {
                "steps": spec.training.steps,
                "batch_size": spec.training.batch_size,
                "train_seconds_under_load": seconds,
                "threads": torch.get_num_threads(),
                "string": exact,
                "digit": digit,
            },
            "baselines": base,
            "eval": result.eval,
        },
        {"mmcore string": pct(exact), "mmcore digit": pct(digit), **figures},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
