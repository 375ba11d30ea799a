"""Image + text with each of the three fusions: does the captioner read the picture?

Trains ``examples/image_text.toml`` (a patch ViT and a byte-level GPT captioning scikit-learn's
handwritten digits, ``examples/recipes/digits_av.py``) once per fusion (``early``,
``cross_attention``, ``resampler``: only the ``[fusion]`` key changes; same steps and schedule)
and per seed (``--seeds``, 0 and 1: the initialisation and the data order), then generates a
caption for each of the 359 held-out images and counts exact matches. Each model is also asked
with the picture removed (the same prompt, no image), which shows how much of its accuracy
comes from the picture.

Baselines on the same split: chance (1 in 10), the most frequent training caption, and the
classical classifiers of ``baselines.image_classifiers`` (logistic regression and an RBF SVM on
the same 16x16 pixels).

    python examples/recipes/image_text_fusions.py          # 3 fusions x 2 seeds x 2,500 steps, one core
    -> examples/recipes/results/image_text_fusions.json (docs/tasks.md, "Image + text")

To choose settings without the held-out images, ``--on validation`` cuts the training images by a
salted hash of their file names into a fit part (about 80 %) and a validation part (about 20 %),
trains on the fit part and captions the validation part; the baselines are fitted and scored on the
same two parts, and the held-out images are not read.

``--set KEY=VALUE`` changes the spec for every fusion; ``--fusion-set FUSION:KEY=VALUE`` for one fusion
alone (``resampler:training.lr=1e-3``), added to the script's own per-fusion settings (``FUSION_SETS``,
at present none); each run's results record them (``fusion_set``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent
sys.path.insert(0, str(HERE))  # the sibling recipe modules
import splits  # noqa: E402

SPEC = EXAMPLES / "image_text.toml"
FUSIONS = ("early", "cross_attention", "resampler")
SEEDS = (0, 1)
# The resampler's learned latents (its own option, so not in the spec's [fusion] table, which the other two
# fusions read too): one per image token. At the fusion's default of 32 the GPT reads 34 image tokens a
# caption and the resampler's steps cost about twice early fusion's; at 4 about 1.3 times (docs/tuning.md).
RESAMPLER_LATENTS = 4
# Settings of one fusion alone (``--set`` overrides by fusion; ``--fusion-set FUSION:KEY=VALUE`` adds to them):
# none, every fusion trains the spec as it is (docs/tuning.md, "Image + text", round 6).
FUSION_SETS: dict[str, tuple[str, ...]] = {}
SPLITS = ("eval", "validation")
VALIDATION_FRACTION = 0.2


def _check_fusion(fusion: str) -> None:
    if fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {fusion!r}; the recipe compares {', '.join(FUSIONS)}")


def fusion_overrides(
    fusion: str, latents: int = RESAMPLER_LATENTS, own: dict[str, tuple[str, ...]] = FUSION_SETS
) -> list[str]:
    """The ``--set`` overrides that make the spec ``fusion``: the component, for the resampler its
    number of latents (the other fusions have no such option), then ``own[fusion]``, the settings of
    that fusion alone (:data:`FUSION_SETS` unless given)."""
    _check_fusion(fusion)
    latent = [f"fusion.num_latents={latents}"] if fusion == "resampler" else []
    return [f'fusion.component="{fusion}"', *latent, *own.get(fusion, ())]


def fusion_sets(items: list[str], base: dict[str, tuple[str, ...]] = FUSION_SETS) -> dict[str, tuple[str, ...]]:
    """``base`` with each ``FUSION:KEY=VALUE`` of ``items`` (``--fusion-set``) added to its fusion's settings."""
    out = dict(base)
    for item in items:
        fusion, sep, setting = item.partition(":")
        if not sep or "=" not in setting:
            raise ValueError(f"--fusion-set {item!r}: expected FUSION:KEY=VALUE")
        _check_fusion(fusion)
        out[fusion] = (*out.get(fusion, ()), setting)
    return out


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def validation_split(train: list[dict], fraction: float = VALIDATION_FRACTION) -> tuple[list[dict], list[dict]]:
    """The training rows as (fit, validation): a row is in validation when a hash of its image's file
    name, salted with ``"validation:"``, falls in the lowest ``fraction`` of the range, so the split is
    deterministic, independent of the rows' order, and draws on nothing but the training rows."""
    return splits.validation_split(train, "image", fraction)


def split_for(on: str, data: Path, train: list[dict], test: list[dict]) -> tuple[list[dict], list[dict], list[str]]:
    """The (training, scored) rows for ``on`` and the ``--set`` overrides that point the spec's caption task
    at them: the spec's own files for ``"eval"``; for ``"validation"`` the parts of :func:`validation_split`,
    written to ``data``/caption_{fit,validation}.jsonl (the held-out rows are not used)."""
    if on == "eval":
        return train, test, []
    if on != "validation":
        raise ValueError(f"unknown split {on!r}; choose one of {', '.join(SPLITS)}")
    from mmcore import atomic_write_text

    fit, val = validation_split(train)
    sets = []
    for name, part in (("fit", fit), ("validation", val)):
        path = data / f"caption_{name}.jsonl"
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in part))
        sets.append(f'tasks.caption.{"train" if name == "fit" else "eval"}="{path}"')
    return fit, val, sets


def baselines(data: Path, train: list[dict], test: list[dict]) -> dict:
    """Chance, the most frequent caption, and ``baselines.image_classifiers`` (logistic regression
    and the RBF SVM the main job's demo reports) on the same pixels and split."""
    from baselines import image_classifiers, load_pixels, public

    refs = [r["target"] for r in test]
    common = Counter(r["target"] for r in train).most_common(1)[0][0]
    clf = public(
        image_classifiers(
            load_pixels([data / r["image"] for r in train]),
            [r["target"] for r in train],
            load_pixels([data / r["image"] for r in test]),
            refs,
        )
    )
    return {
        "chance": 0.1,
        "most_frequent_caption": {"caption": common, "exact_match": sum(r == common for r in refs) / len(refs)},
        "logistic_regression_on_pixels": clf["logistic_regression_pixels"],
        "rbf_svm_on_pixels": clf["rbf_svm_pixels"],
    }


def run(
    fusion: str,
    data: Path,
    test: list[dict],
    steps: int | None,
    overrides: list[str] = (),
    seed: int = 0,
    latents: int = RESAMPLER_LATENTS,
    own: dict[str, tuple[str, ...]] = FUSION_SETS,
) -> dict:
    """Train examples/image_text.toml with ``fusion`` (:func:`fusion_overrides`; ``latents``: the
    resampler's; ``own``: each fusion's own settings) and ``overrides`` (``KEY=VALUE`` as for ``mmcore
    train --set``, for every fusion) from ``seed`` (``training.seed`` and the initialisation), then
    caption ``test`` with and without the picture."""
    import torch

    import mmcore
    from mmcore.generation import GenerationConfig, generate_for_records

    sets = [*fusion_overrides(fusion, latents, own), f"training.seed={seed}", *overrides]
    sets += [f"training.steps={steps}"] if steps is not None else []
    spec = mmcore.load_spec(SPEC, overrides=sets)
    torch.manual_seed(seed)
    model = mmcore.build(spec)
    t0 = time.perf_counter()
    trainer = mmcore.Trainer(model, spec.tasks, spec.training)
    trainer.fit()
    seconds = time.perf_counter() - t0
    model.eval()
    refs = [r["target"] for r in test]
    cfg = GenerationConfig(max_new_tokens=8)
    with_image = [{"image": r["image"]} for r in test]

    def exact(records: list[dict]) -> tuple[float, list[str]]:
        preds = generate_for_records(model, records, base=data, config=cfg, batch_size=64)
        return sum(p.strip() == r for p, r in zip(preds, refs, strict=True)) / len(refs), preds

    out = {"fusion": fusion, "seed": seed, "steps": spec.training.steps, "lr": spec.training.lr}
    out["train_seconds_under_load"] = round(seconds, 1)
    if own.get(fusion):
        out["fusion_set"] = list(own[fusion])
    if fusion == "resampler":
        out["num_latents"] = spec.fusion.options.num_latents
    if trainer.ema is not None:  # after fit() the model holds the trained weights; the figures are the averages'
        out["exact_match_raw_weights"] = exact(with_image)[0]
    with trainer.ema.applied() if trainer.ema is not None else nullcontext():
        out["exact_match"], preds = exact(with_image)
        out["examples"] = [{"generated": p, "reference": r} for p, r in zip(preds[:5], refs[:5], strict=True)]
        out["without_image"] = exact([{}] * len(test))[0]
    print(json.dumps(out), flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, help="override the spec's training.steps")
    p.add_argument("--fusions", default=",".join(FUSIONS))
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="train each fusion from each seed")
    p.add_argument(
        "--latents", type=int, default=RESAMPLER_LATENTS, help=f"the resampler's latents (default {RESAMPLER_LATENTS})"
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a spec override for every fusion (repeatable)"
    )
    p.add_argument(
        "--fusion-set",
        action="append",
        default=[],
        metavar="FUSION:KEY=VALUE",
        help="a spec override for one fusion, added to the script's FUSION_SETS (repeatable)",
    )
    p.add_argument(
        "--on",
        choices=SPLITS,
        default="eval",
        help="caption the held-out images (eval), or train on part of the training images and caption the rest "
        "(validation, for choosing settings)",
    )
    p.add_argument("--out", default=str(HERE / "results" / "image_text_fusions.json"))
    args = p.parse_args(argv)
    own = fusion_sets(args.fusion_set)
    data = EXAMPLES / "data" / "digits_av"
    if not (data / "caption_train.jsonl").is_file():
        sys.path.insert(0, str(HERE))
        import digits_av

        digits_av.main(["--out", str(data)])
    sys.path.insert(0, str(HERE))
    train, test, sets = split_for(args.on, data, rows(data / "caption_train.jsonl"), rows(data / "caption_eval.jsonl"))
    from mmcore import atomic_write_text

    scored = "held-out" if args.on == "eval" else "validation (cut from the training images)"
    report = {
        "spec": "examples/image_text.toml",
        "on": args.on,
        "overrides": args.set,
        "fusion_sets": {f: list(v) for f, v in own.items() if v},
        "data": f"examples/recipes/digits_av.py: {len(train)} training, {len(test)} {scored} images",
        "metric": "exact match of the generated caption (greedy, 8 new tokens) on the " + scored + " images",
        "timings": "train_seconds_under_load: wall seconds of training on one thread, on a machine other jobs shared",
        "baselines": baselines(data, train, test),
        "fusions": [
            run(f, data, test, args.steps, [*sets, *args.set], seed, args.latents, own)
            for f in args.fusions.split(",")
            for seed in args.seeds
        ],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.out), json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["baselines"]))
    return report


if __name__ == "__main__":
    main()
