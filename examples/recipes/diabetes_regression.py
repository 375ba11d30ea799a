"""Regression on scikit-learn's diabetes data, beside scikit-learn's linear regression.

scikit-learn ships the data (442 patients: age, sex, body-mass index, blood pressure and six
blood serum measurements; the target is a measure of disease progression one year later).
This recipe writes a seeded 342/100 split, each feature standardised with the training
split's mean and deviation:

* ``data/diabetes/train.jsonl`` / ``eval.jsonl``: ``{"features": [10 numbers], "y": 151.0}``

``--train DIR`` also trains examples/diabetes_regression.toml (``encoder:features``,
``head:regress``, ``objective:regression``) into DIR, evaluates it with ``mmcore eval``'s code
path, trains the spec again from the other ``--seeds``, fits scikit-learn's ``LinearRegression``
and ``RidgeCV`` (its penalty chosen by cross-validation on the training split) on the same split,
and writes ``examples/results/diabetes_regression.json``: every model's held-out R², MSE and MAE.

``--search`` chooses the spec's training settings without looking at the held-out patients:
it trains each candidate of ``SEARCH`` on 274 of the 342 training patients and scores it on the
other 68 (four seeds each), writing ``examples/recipes/results/diabetes_search.json``.

    python examples/recipes/diabetes_regression.py --train runs/diabetes
    python examples/recipes/diabetes_regression.py --search
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


def linear_baselines(split: dict) -> dict:
    """Held-out R², MSE and MAE of least squares and of ridge regression (RidgeCV: the penalty
    picked by leave-one-out cross-validation on the training split from 1e-3 to 1e3)."""
    import numpy as np
    from sklearn.linear_model import LinearRegression, RidgeCV
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    y = split["y_eval"]
    out = {}
    for name, model in (
        ("linear_regression", LinearRegression()),
        ("ridge_cv", RidgeCV(alphas=np.logspace(-3, 3, 61))),
    ):
        pred = model.fit(split["X_train"], split["y_train"]).predict(split["X_eval"])
        out[name] = {"r2": r2_score(y, pred), "mse": mean_squared_error(y, pred), "mae": mean_absolute_error(y, pred)}
        if name == "ridge_cv":
            out[name]["alpha"] = float(model.alpha_)
    return out


#: ``--search``'s candidates: spec overrides (``KEY=VALUE``, as for ``mmcore train --set``) on the spec.
SEARCH: dict[str, list[str]] = {
    "spec": [],
    "init 0.02 (before)": ["encoders.features.bias_std=0.02", "encoders.features.weight_std=0.02"],
    "bias_std=3.0": ["encoders.features.bias_std=3.0"],
    "weight_std=0.3": ["encoders.features.weight_std=0.3"],
    "steps=1200": ["training.steps=1200"],
    "steps=300": ["training.steps=300"],
    "weight_decay=0.3": ["training.weight_decay=0.3"],
    "dropout=0.3": ["backbone.dropout=0.3"],
    "width=64": ["backbone.width=64", "backbone.heads=4"],
    "loss=mae": ['tasks.progression.options={loss = "mae"}'],
}


def main() -> None:
    sys.path.insert(0, str(HERE))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(HERE.parent / "data" / "diabetes"))
    p.add_argument("--train", metavar="DIR", help="also train the spec into DIR and write the results file")
    p.add_argument("--spec", default=str(HERE.parent / "diabetes_regression.toml"))
    p.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="--train: the seeds (the first saved in DIR)"
    )
    p.add_argument("--search", action="store_true", help="score SEARCH's candidates on a split of the training data")
    p.add_argument("--only", nargs="*", help="--search: these candidates of SEARCH (none: the linear baselines only)")
    args = p.parse_args()
    split = write_split(Path(args.out))
    base = linear_baselines(split)
    print(json.dumps(base, indent=2))
    if args.search:
        search(args.spec, Path(args.out), list(SEARCH) if args.only is None else args.only)
    if args.train:
        train_and_report(args.spec, args.train, Path(args.out), base, args.seeds)


def search(spec_path: str, data: Path, names: list[str], seeds: tuple[int, ...] = (0, 1, 2, 3)) -> None:
    """Train each candidate on 274 of the training patients, score R² on the other 68 (seeded split)."""
    import random

    import torch
    from baselines import read_jsonl

    import mmcore
    from mmcore import atomic_write_text

    rows = read_jsonl(data / "train.jsonl")
    random.Random(1).shuffle(rows)
    inner = data / "search"
    inner.mkdir(exist_ok=True)
    for name, part in (("train", rows[:274]), ("eval", rows[274:])):
        atomic_write_text(inner / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in part))
    out_path = HERE / "results" / "diabetes_search.json"
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    xy = {
        f"{k}_{n}": [r[f] for r in part]
        for n, part in (("train", rows[:274]), ("eval", rows[274:]))
        for k, f in (("X", "features"), ("y", "y"))
    }
    results["linear baselines on the same 274 / 68 patients"] = linear_baselines(xy)
    atomic_write_text(out_path, json.dumps(results, indent=2) + "\n")
    for name in names:
        r2 = []
        for seed in seeds:
            sets = [*SEARCH[name], f"training.seed={seed}"]
            sets += [
                f'tasks.progression.train="{inner / "train.jsonl"}"',
                f'tasks.progression.eval="{inner / "eval.jsonl"}"',
            ]
            spec = mmcore.load_spec(spec_path, overrides=sets)
            torch.manual_seed(seed)
            result = mmcore.Trainer(mmcore.build(spec), spec.tasks, spec.training).fit()
            r2.append(result.eval["progression"]["r2"])
        results[name] = {"overrides": SEARCH[name], "seeds": list(seeds), "r2": r2, "mean_r2": sum(r2) / len(r2)}
        print(name, json.dumps(results[name]), flush=True)
        atomic_write_text(out_path, json.dumps(results, indent=2) + "\n")


def train_and_report(spec_path: str, out_dir: str, data: Path, base: dict, seeds: list[int]) -> None:
    import time

    import torch
    from baselines import other_seeds, write_results

    import mmcore
    from mmcore.evaluate import evaluate_dir

    spec = mmcore.load_spec(spec_path, overrides=[f"training.seed={seeds[0]}"])
    t0 = time.perf_counter()
    torch.manual_seed(seeds[0])
    model = mmcore.build(spec)
    result = mmcore.Trainer(model, spec.tasks, spec.training, out_dir=out_dir, resume=False).fit()
    seconds = time.perf_counter() - t0
    ev = evaluate_dir(out_dir, data / "eval.jsonl")["metrics"]  # the saved model directory, as `mmcore eval` reads it
    runs = [
        {"seed": seeds[0], **ev, "train_seconds_under_load": seconds},
        *other_seeds(spec, seeds[1:], "progression", "r2"),
    ]
    mean = {k: sum(r[k] for r in runs) / len(runs) for k in ("r2", "mae")}
    lin, ridge = base["linear_regression"], base["ridge_cv"]
    write_results(
        "diabetes_regression",
        {
            "split": {"train": 342, "eval": 100, "seed": 0},
            "mmcore": {"steps": result.steps, "seeds": runs, "mean": mean},
            "baselines": base,
        },
        {
            "linear regression R²": f"{lin['r2']:.3f}",
            "ridge regression R²": f"{ridge['r2']:.3f}",
            "mmcore R² (mean of the seeds)": f"{mean['r2']:.3f}",
            "mmcore R² per seed": " / ".join(f"{r['r2']:.3f}" for r in runs),
            "linear regression MAE": f"{lin['mae']:.1f}",
            "ridge regression MAE": f"{ridge['mae']:.1f}",
            "mmcore MAE (mean of the seeds)": f"{mean['mae']:.1f}",
        },
    )


if __name__ == "__main__":
    main()
