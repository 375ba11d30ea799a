"""A new image task from the docs alone: mmcore against a plain PyTorch CNN, same data, same time.

The task is ``bench/glyphs_data.py``'s (ten capital letters drawn at random sizes, angles,
positions and colours on 32x32 pictures; 5,000 training, 1,000 held-out). The mmcore model is
``bench/glyphs.toml``, written from the docs only: components, task and data, no
``[training]``; each run adds only ``training.max_time`` (the wall budget, ``--budget``
seconds) and the seed, plus one setting of the vision encoder changed against the plugin's
defaults. The plain PyTorch model (``SmallCNN``: three 3x3 convolutions with ReLU and 2x2
max pooling, one linear layer; Adam at 1e-3, batch 64, no augmentation, no schedule) trains
for the same wall budget on the same thread count. Both report held-out accuracy at the end
of the budget, the steps they made and the machine's load average, so runs made side by side
(alternated: ``--only cnn base --seeds 0 1`` runs cnn 0, base 0, cnn 1, base 1) compare under
the same load.

    python bench/ablate_glyphs.py --baselines          # logistic regression on the pixels
    OMP_NUM_THREADS=1 nice python bench/ablate_glyphs.py --only cnn base --seeds 0 1 --tag "round 1"
    python bench/ablate_glyphs.py --write-docs         # docs/tuning.md's last section

Results are appended to ``bench/results_ablate_glyphs.json`` (the baselines:
``bench/results_glyphs_baselines.json``). A setting is ``cnn``, a name from ``SETTINGS`` or
``k=v,k=v`` dotted overrides of the spec (JSON values).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from ablate_digits import (  # noqa: E402
    add_ablation_options,
    parse_base,
    parse_setting,
    print_settings,
    run_settings,
    set_dotted,
    tables_by_round,
)
from ablate_digits import write_docs as write_between  # noqa: E402
from glyphs_data import DATA, LETTERS  # noqa: E402

SPEC = HERE / "glyphs.toml"
RESULTS = HERE / "results_ablate_glyphs.json"
BASELINES = HERE / "results_glyphs_baselines.json"

#: setting name -> overrides (dotted key -> value) on the docs-only spec; "cnn" is the plain PyTorch CNN.
SETTINGS: dict[str, dict[str, object]] = {
    "base": {},
    "stem_layers=2": {"encoders.image.stem_layers": 2},
    "stem_layers=3": {"encoders.image.stem_layers": 3},
    "fan_in": {"encoders.image.stem_init": "fan_in"},
    "stem_layers=2,fan_in": {"encoders.image.stem_layers": 2, "encoders.image.stem_init": "fan_in"},
    "stem_layers=3,fan_in": {"encoders.image.stem_layers": 3, "encoders.image.stem_init": "fan_in"},
    "patch=4": {"encoders.image.patch_size": 4},
    "patch=8": {"encoders.image.patch_size": 8},
    "patch=8,stem_layers=3,fan_in": {
        "encoders.image.patch_size": 8,
        "encoders.image.stem_layers": 3,
        "encoders.image.stem_init": "fan_in",
    },
    "stem=patch": {"encoders.image.stem": "patch"},
    "encoder_dim=64": {"encoders.image.dim": 64},
    "encoder_depth=1": {"encoders.image.depth": 1},
    # the backbone: the docs' default GPT (width 256, depth 4) against the main job's (width 96, depth 3)
    "backbone=96x3": {"backbone.width": 96, "backbone.depth": 3},
    # a convolutional encoder instead of the patch ViT: timm's ResNet-10-T from random init, reading the
    # pictures at their 32x32 (unset, vision.timm resizes to the model's pretrained size, 176 here), its
    # penultimate stage (stride 16: 2x2 = 4 image tokens), every residual block live from step one
    "timm=resnet10t": {
        "encoders.image.component": "vision.timm",
        "encoders.image.model": "resnet10t",
        "encoders.image.image_size": 32,
        "encoders.image.features": -2,
        "encoders.image.model_args": {"zero_init_last": False},
    },
    # the classify head's pooling: its default reads the last token, the image's end boundary, which
    # starts as the same learned vector for every picture; "mean" averages the image tokens themselves
    "pooling=mean": {"heads.letter.pooling": "mean"},
}
# the patch encoder with a stem that downsamples like a CNN (3 stages of conv, ReLU, 2x2 max pool: 32, 64, 128
# channels at the default dim 128, as small_cnn), then 1x1 patches of its 4x4 map: 16 image tokens
SETTINGS["stem=cnn"] = {
    "encoders.image.stem": "cnn",
    "encoders.image.stem_layers": 3,
    "encoders.image.patch_size": 8,
}
SETTINGS["stem=cnn,backbone=96x3"] = {**SETTINGS["stem=cnn"], **SETTINGS["backbone=96x3"]}
SETTINGS["stem=cnn,backbone=96x3,encoder_depth=0"] = {**SETTINGS["stem=cnn,backbone=96x3"], "encoders.image.depth": 0}
# the small CNN's whole 4x4 map as ONE image token (patch 32: a 4x4 patch embedding over the stem's output, as
# small_cnn's flatten and linear layer), and the head averaging the sequence's states instead of reading its
# last one, the image's end boundary (which starts as the same vector for every picture)
ONE_TOKEN = {**SETTINGS["stem=cnn"], "encoders.image.patch_size": 32, "heads.letter.pooling": "mean"}
SETTINGS["stem=cnn,one_token,pooling=mean"] = ONE_TOKEN
SETTINGS["stem=cnn,one_token,pooling=mean,backbone=96x3,encoder_depth=0"] = {
    **ONE_TOKEN,
    **SETTINGS["backbone=96x3"],
    "encoders.image.depth": 0,
}
SMALL = SETTINGS["stem=cnn,one_token,pooling=mean,backbone=96x3,encoder_depth=0"]
SETTINGS["small,four_tokens"] = {**SMALL, "encoders.image.patch_size": 16}  # the 4x4 map as 2x2 patches
SETTINGS["small,batch=64"] = {**SMALL, "training.batch_size": 64}  # small_cnn's batch
# round 11: batch norm after each stem convolution (stem_norm, now the "cnn" stem's default; rounds 8-10 ran
# before the option existed, without it, which "stem_norm=none" restores)
SETTINGS["small"] = SMALL  # round 9's small spec; from round 11 on with the stem's batch norm (its default)
SETTINGS["small,stem_norm=none"] = {**SMALL, "encoders.image.stem_norm": "none"}
SETTINGS["small,four_tokens,stem_norm=none"] = {**SETTINGS["small,four_tokens"], "encoders.image.stem_norm": "none"}
SETTINGS["small,lr=1e-3"] = {**SMALL, "training.lr": 1e-3}  # round 13: against the derived 0.2 / width (2.1e-3)
SETTINGS["small,lr=3e-3"] = {**SMALL, "training.lr": 3e-3}
SETTINGS["small,sixteen_tokens"] = {**SMALL, "encoders.image.patch_size": 8}  # the 4x4 map as 1x1 patches
SETTINGS["timm=resnet10t,pooling=mean"] = {**SETTINGS["timm=resnet10t"], **SETTINGS["pooling=mean"]}


def ensure_data() -> Path:
    if not (DATA / "eval.jsonl").exists():
        import glyphs_data

        glyphs_data.main(["--out", str(DATA)])
    return DATA


def load_split(split: str):
    """(N, 32, 32, 3) uint8 pixels and (N,) class indices of a split, in manifest order."""
    import numpy as np
    from PIL import Image

    rows = [json.loads(line) for line in (DATA / f"{split}.jsonl").read_text().splitlines()]
    x = np.stack([np.asarray(Image.open(DATA / r["image"]).convert("RGB")) for r in rows])
    return x, np.array([LETTERS.index(r["label"]) for r in rows])


def baselines() -> dict:
    """Logistic regression, fitted on the training split, on two views of each picture: the 3,072
    RGB pixels scaled to [0, 1], and each pixel's distance from the picture's median colour (the
    background), which no longer depends on the colours chosen: the letter's shape, wherever it is."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    xt, yt = load_split("train")
    xe, ye = load_split("eval")

    def shape(x):
        x = x.astype(np.float32) / 255
        return np.linalg.norm(x - np.median(x, axis=(1, 2), keepdims=True), axis=-1).reshape(len(x), -1)

    out: dict = {"train": len(xt), "eval": len(xe), "chance": 1 / len(LETTERS)}
    for name, f in (("pixels", lambda x: x.reshape(len(x), -1) / 255), ("distance_from_median", shape)):
        t0 = time.perf_counter()
        lr = LogisticRegression(max_iter=1000, C=1.0).fit(f(xt), yt)
        out[f"logistic_regression_{name}"] = float(np.mean(lr.predict(f(xe)) == ye))
        out[f"fit_seconds_under_load_{name}"] = round(time.perf_counter() - t0, 1)
    return out


def small_cnn(classes: int, batch_norm: bool = False):
    """The plain PyTorch baseline: 3 convolutions (32, 64, 128 channels) + max pooling + a linear layer;
    with ``batch_norm``, a BatchNorm2d after each convolution (which then has no bias), as most CNNs have."""
    from torch import nn

    layers: list = []
    for cin, cout in ((3, 32), (32, 64), (64, 128)):  # 32x32 -> 16x16 -> 8x8 -> 4x4
        conv = nn.Conv2d(cin, cout, 3, padding=1, bias=not batch_norm)
        layers += (
            [conv, nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]
            if batch_norm
            else [conv, nn.ReLU(), nn.MaxPool2d(2)]
        )
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(128 * 4 * 4, classes))


#: the plain PyTorch models: setting name -> small_cnn's batch_norm
CNNS = {"cnn": False, "cnn_bn": True}


def run_cnn(seed: int, budget: float | None, batch_norm: bool = False, steps: int | None = None) -> dict:
    """Train ``small_cnn`` with Adam (lr 1e-3, batch 64) for ``budget`` seconds of wall clock, or ``steps``
    steps when ``budget`` is None."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    xt, yt = load_split("train")
    xe, ye = load_split("eval")

    def tensor(x):
        return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - 0.5

    xt, yt, xe, ye = tensor(xt), torch.from_numpy(yt), tensor(xe), torch.from_numpy(ye)
    model = small_cnn(len(LETTERS), batch_norm)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    done, t0, load0 = 0, time.perf_counter(), os.getloadavg()[0]

    def over() -> bool:
        return done >= steps if budget is None else time.perf_counter() - t0 >= budget

    model.train()
    while not over():
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if over():
                break
    train_s = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        acc = float((model(xe).argmax(-1) == ye).float().mean())
    return {
        "setting": "cnn_bn" if batch_norm else "cnn",
        "overrides": {},
        "seed": seed,
        "steps": done,
        "batch_size": 64,
        "accuracy": round(acc, 4),
        "final_loss": round(float(loss.detach()), 4),
        "budget_seconds": budget,
        "budget_steps": steps,
        "train_seconds_under_load": round(train_s, 1),
        "load_average": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def spec_data(
    overrides: dict, seed: int, budget: float | None, base: dict | None = None, steps: int | None = None
) -> dict:
    data = tomllib.loads(SPEC.read_text())
    limit = {"steps": steps} if budget is None else {"max_time": budget}  # training.steps, or the wall budget
    data["training"] = {**limit, "seed": seed, "progress": False, "log_every": 10**6}
    for k, v in [*(base or {}).items(), *copy.deepcopy(overrides).items()]:
        set_dotted(data, k, v)
    return data


def run_mmcore(
    name: str, overrides: dict, seed: int, budget: float | None, base: dict | None = None, steps: int | None = None
) -> dict:
    import torch

    import mmcore
    from mmcore.spec import parse_spec

    spec = parse_spec(spec_data(overrides, seed, budget, base, steps), file=str(SPEC))
    torch.manual_seed(seed)
    model = mmcore.build(spec)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    result = mmcore.Trainer(model, spec.tasks, spec.training).fit()
    train_s = time.perf_counter() - t0  # includes the final evaluation of the 1,000 held-out pictures
    return {
        "setting": name,
        "overrides": overrides,
        "base": base or {},
        "seed": seed,
        "steps": result.steps,
        "batch_size": spec.training.batch_size,
        "accuracy": round(result.eval["letter"]["accuracy"], 4),
        "final_loss": round(result.final_loss, 4),
        "stop_reason": result.stop_reason,
        "budget_seconds": budget,
        "budget_steps": steps,
        "fit_seconds_with_eval": round(train_s, 1),
        "load_average": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "threads": torch.get_num_threads(),
        "image_tokens": model.encoders["image"].num_tokens,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


DOC = ROOT / "docs" / "tuning.md"
BEGIN, END = (
    "<!-- ablate_glyphs: begin (written by bench/ablate_glyphs.py --write-docs) -->",
    "<!-- ablate_glyphs: end -->",
)


def table(results: list[dict]) -> str:
    base = json.loads(BASELINES.read_text()) if BASELINES.exists() else {}
    views = {
        "pixels": "on the 3,072 RGB pixels",
        "distance_from_median": "on each pixel's distance from the picture's median colour (colour-blind: the "
        "letter's shape)",
    }
    found = [
        f"{v} {100 * base[f'logistic_regression_{k}']:.1f} %"
        for k, v in views.items()
        if f"logistic_regression_{k}" in base
    ]
    head = ""
    if found:
        head = (
            "Classical baseline on the same split (bench/results_glyphs_baselines.json): logistic regression "
            f"{', '.join(found)} (chance {100 * base['chance']:.0f} %).\n\n"
        )

    first_base = {}  # the base the round's heading names (its first row's)
    for r in results:
        first_base.setdefault(r.get("tag", ""), r.get("base") or {})

    def row(r: dict, ov: str) -> str:
        if r["setting"] == "cnn":
            ov = "plain PyTorch CNN (`small_cnn`, Adam 1e-3, batch 64)"
        elif r["setting"] == "cnn_bn":
            ov = "the same CNN with batch norm after each convolution (`small_cnn(batch_norm=True)`)"
        elif (r.get("base") or {}) != first_base[r.get("tag", "")]:  # a base the heading does not name
            ov = ", ".join(f"`{k} = {json.dumps(v)}`" for k, v in {**r["base"], **r["overrides"]}.items())
        load = "-".join(f"{x:.1f}" for x in r["load_average"])
        if r["budget_seconds"] is None:  # a run of --steps: its own seconds (the CNN's without evaluation)
            limit, seconds = (
                f"{r['budget_steps']} steps",
                r.get("fit_seconds_with_eval") or r["train_seconds_under_load"],
            )
        else:
            limit, seconds = f"{r['budget_seconds'] / 60:g} min", r["budget_seconds"]
        return (
            f"| {r['setting']} | {ov} | {r.get('image_tokens', '')} | {r['seed']} | {limit} | "
            f"{r['steps']} x {r['batch_size']} | {seconds / r['steps']:.3f} | "
            f"**{100 * r['accuracy']:.1f} %** | {load} |"
        )

    return head + tables_by_round(
        results,
        "| setting | model / overrides of the docs-only spec | image tokens | seed | budget | steps x batch in it "
        "| s / step (under load) | held-out accuracy | load average (start-end) |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        row,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=120.0, help="wall-clock seconds of training per run")
    p.add_argument("--steps", type=int, help="train every run for this many steps instead of --budget seconds")
    p.add_argument("--baselines", action="store_true", help="fit the classical baseline and write its file")
    add_ablation_options(
        p,
        RESULTS,
        only_help="settings to run, alternated per seed (default: cnn and base)",
        write_docs_help="rewrite docs/tuning.md's last section's tables",
    )
    args = p.parse_args(argv)
    from mmcore import atomic_write_text

    if args.write_docs:
        write_between(json.loads(Path(args.out).read_text()), BEGIN, END, table)
        return 0
    if args.list:
        print_settings(SETTINGS, 32)
        return 0
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    ensure_data()
    if args.baselines:
        result = baselines()
        atomic_write_text(BASELINES, json.dumps(result, indent=1) + "\n")
        print(json.dumps(result))
        return 0

    base = parse_base(args.base)
    budget = None if args.steps else args.budget

    def run(name: str, seed: int) -> dict:
        if name in CNNS:
            return run_cnn(seed, budget, CNNS[name], args.steps)
        return run_mmcore(name, parse_setting(name, SETTINGS), seed, budget, base, args.steps)

    for seed in args.seeds:  # alternate: every setting of seed 0, then of seed 1, ...
        run_settings(args.only or ["cnn", "base"], [seed], run, args.out, args.tag)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
