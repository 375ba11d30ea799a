"""Regression on scikit-learn's diabetes data, beside scikit-learn's linear regression.

scikit-learn ships the data (442 patients: age, sex, body-mass index, blood pressure and six
blood serum measurements; the target is a measure of disease progression one year later).
This recipe writes a seeded 342/100 split, each feature standardised with the training
split's mean and deviation:

* ``data/diabetes/train.jsonl`` / ``eval.jsonl``: ``{"features": [10 numbers], "y": 151.0}``

``--train DIR`` also trains examples/diabetes_regression.toml (``encoder:features``,
``head:regress``, ``objective:regression``) into DIR, evaluates it with ``mmcore eval``'s code
path, fits ``sklearn.linear_model.LinearRegression`` on the same training split, and writes
``examples/results/diabetes_regression.json``: both models' held-out R², MSE and MAE.

    python examples/recipes/diabetes_regression.py --train runs/diabetes
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def write_split(out: Path, seed: int = 0) -> dict:
    import numpy as np
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True, scaled=False)
    order = np.random.default_rng(seed).permutation(len(y))
    train, test = order[:342], order[342:]
    mean, std = X[train].mean(0), X[train].std(0)
    Xs = (X - mean) / std
    out.mkdir(parents=True, exist_ok=True)
    for name, idx in (("train", train), ("eval", test)):
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for i in idx:
                f.write(json.dumps({"features": [round(float(v), 6) for v in Xs[i]], "y": float(y[i])}) + "\n")
    return {"X_train": Xs[train], "y_train": y[train], "X_eval": Xs[test], "y_eval": y[test]}


def linear_baseline(split: dict) -> dict:
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    pred = LinearRegression().fit(split["X_train"], split["y_train"]).predict(split["X_eval"])
    y = split["y_eval"]
    return {"r2": r2_score(y, pred), "mse": mean_squared_error(y, pred), "mae": mean_absolute_error(y, pred)}


def main() -> None:
    sys.path.insert(0, str(HERE))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(HERE.parent / "data" / "diabetes"))
    p.add_argument("--train", metavar="DIR", help="also train the spec into DIR and write the results file")
    p.add_argument("--spec", default=str(HERE.parent / "diabetes_regression.toml"))
    args = p.parse_args()
    split = write_split(Path(args.out))
    base = linear_baseline(split)
    print(json.dumps({"linear_regression": base}, indent=2))
    if args.train:
        train_and_report(args.spec, args.train, Path(args.out), base)


def train_and_report(spec_path: str, out_dir: str, data: Path, base: dict) -> None:
    import time

    import torch
    from baselines import write_results

    import mmcore
    from mmcore.evaluate import evaluate_dir

    spec = mmcore.load_spec(spec_path)
    t0 = time.perf_counter()
    torch.manual_seed(spec.training.seed)
    model = mmcore.build(spec)
    result = mmcore.Trainer(model, spec.tasks, spec.training, out_dir=out_dir, resume=False).fit()
    seconds = time.perf_counter() - t0
    ev = evaluate_dir(out_dir, data / "eval.jsonl")["metrics"]  # the saved model directory, as `mmcore eval` reads it
    write_results(
        "diabetes_regression",
        {
            "split": {"train": 342, "eval": 100, "seed": 0},
            "mmcore": {"steps": result.steps, "train_seconds": seconds, **ev},
            "baselines": {"linear_regression": base},
        },
        {
            "linear regression R²": f"{base['r2']:.3f}",
            "mmcore R²": f"{ev['r2']:.3f}",
            "linear regression MAE": f"{base['mae']:.1f}",
            "mmcore MAE": f"{ev['mae']:.1f}",
        },
    )


if __name__ == "__main__":
    main()
