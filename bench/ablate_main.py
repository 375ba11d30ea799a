"""Ablation of the main job as a whole: caption, transcription and match, trained together.

Each run trains ``examples/digits_av.toml`` (all three tasks, its ``[[training.stages]]``
unless a setting replaces them) with one change against the base, then measures what
``examples/demo.py`` measures on the held-out split: the share of images and tones named
exactly (greedy generation) and the match accuracy. Results are appended to
``bench/results_ablate_main.json`` (one entry per setting and seed, with the step count, the
training seconds under whatever load the machine had and the load average) and
``docs/tuning.md`` quotes that file (``--write-docs``).

    OMP_NUM_THREADS=1 python bench/ablate_main.py --only base caption_weight=2 --tag "round 7"
    # rounds 4-5 and 6 (docs/tuning.md) ran on earlier plans of the spec:
    OMP_NUM_THREADS=1 python bench/ablate_main.py --base-plan round4 --only base no_reset
    OMP_NUM_THREADS=1 python bench/ablate_main.py --base-plan round6 --only caption_then_transcribe
    # seconds per step of each setting's whole plan, side by side (-> results_ablate_main_step_time.json)
    OMP_NUM_THREADS=1 python bench/ablate_main.py --step-time --only base stem_layers=2
    python bench/ablate_main.py --list
    python bench/ablate_main.py --write-docs

``--on validation`` chooses settings without the eval split: the training images and tones are cut by a
salted hash of their file names into a fit part (about 80 %) and a validation part (``validation_data``,
written to ``examples/data/digits_av_validation``: the recipe's files, its ``*_train.jsonl`` the fit part,
its ``*_eval.jsonl`` the validation part, match pairs drawn again within each part); each run trains on
the fit part and is scored on the validation part, the eval images and tones untouched.
``--record-baseline`` appends the classical baselines (RBF SVM and logistic regression on pixels, the
tones' logistic regression, the two composed for the match) on the same split as rows.

    OMP_NUM_THREADS=1 python bench/ablate_main.py --on validation --record-baseline --only base --seeds 0 1 2 3

A setting is a name from ``SETTINGS``, or ad-hoc ``k=v,k=v`` (dotted keys, JSON values);
``training.stages`` replaces the whole list; ``init.stem`` (``"fan_in"`` or ``"std=0.02"``)
re-initialises the image encoder's stem convolutions after the model is built. ``--base k=v`` changes the base itself.
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

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "examples" / "digits_av.toml"
RESULTS = ROOT / "bench" / "results_ablate_main.json"
DATA = ROOT / "examples" / "data" / "digits_av"
#: ``--on validation``: the training split cut into fit (``*_train.jsonl``) and validation (``*_eval.jsonl``)
VALIDATION_DATA = ROOT / "examples" / "data" / "digits_av_validation"
#: the tasks' data files each split reads, relative to examples/ (the spec's own paths on eval)
SPLIT_DIRS = {"eval": DATA, "validation": VALIDATION_DATA}

sys.path.insert(0, str(ROOT / "bench"))
from ablate_digits import (  # noqa: E402
    add_ablation_options,
    parse_base,
    print_settings,
    run_settings,
    set_dotted,
    tables_by_round,
    write_docs,
)

_ONE_STAGE = {"training.stages": [], "training.steps": 1200, "training.lr": 2e-3, "training.warmup_steps": 25}

_TWO_STAGES = [
    {"name": "encoders", "tasks": ["caption", "transcribe"], "steps": 400, "lr": 2e-3, "warmup_steps": 25},
    {"name": "all", "steps": 800, "reset_optimizer": True},
]
#: the spec's training plan in earlier rounds (``--base-plan``): the base each round's settings changed.
BASE_PLANS: dict[str, list[dict]] = {
    "round4": _TWO_STAGES,  # rounds 4 and 5
    "round6": [_TWO_STAGES[0], {"name": "all", "steps": 800}],  # round 5's no_reset
}

#: the committed spec's three stages (round 16's settings add a fourth after them)
_SPEC_STAGES = tomllib.loads(SPEC.read_text())["training"]["stages"]

#: setting name -> overrides (dotted key -> value) on the base spec (examples/digits_av.toml).
SETTINGS: dict[str, dict[str, object]] = {
    "base": {},
    # the caption after stage 1 alone (400 steps of caption and transcription)
    "stage1_only": {"training.stages": "first"},
    # the second stage: how much of it is caption, its learning rate
    "caption_weight=2": {"tasks.caption.weight": 2.0},
    "transcribe_weight=0.5": {"tasks.transcribe.weight": 0.5},
    "stage2_lr=2e-3": {"training.lr": 2e-3},
    "stage2_lr=5e-4": {"training.lr": 5e-4},
    "no_reset": {"training.stages.1.reset_optimizer": False},
    # stage 1 alone, twice as long (each of caption and transcription gets about 400 steps)
    "stage1_only_800": {"training.stages": "first", "training.stages.0.steps": 800},
    # captions alone first (as in bench/ablate_digits.py, 97.5 %), then the spec's two stages
    "caption_first": {
        "training.stages": [
            {"name": "caption", "tasks": ["caption"], "steps": 400, "lr": 2e-3, "warmup_steps": 25},
            {"name": "encoders", "tasks": ["caption", "transcribe"], "steps": 200, "lr": 2e-3, "warmup_steps": 25},
            {"name": "all", "steps": 800},
        ]
    },
    # captions alone, then transcription alone, then all three tasks
    "caption_then_transcribe": {
        "training.stages": [
            {"name": "caption", "tasks": ["caption"], "steps": 400, "lr": 2e-3, "warmup_steps": 25},
            {"name": "transcribe", "tasks": ["transcribe"], "steps": 200, "lr": 2e-3, "warmup_steps": 25},
            {"name": "all", "steps": 800},
        ]
    },
    # a third, short stage of caption and transcription at a low lr after the match has been learned
    "polish": {
        "training.stages": [
            {"name": "encoders", "tasks": ["caption", "transcribe"], "steps": 400, "lr": 2e-3, "warmup_steps": 25},
            {"name": "all", "steps": 700, "reset_optimizer": True},
            {"name": "polish", "tasks": ["caption", "transcribe"], "steps": 200, "lr": 5e-4, "warmup_steps": 0},
        ]
    },
    # the match's reading
    "match_pooling=mean": {"heads.match.pooling": "mean"},
    "match_causal": {"tasks.match.attention": "causal"},
    # one stage of all three tasks (no curriculum)
    "one_stage": dict(_ONE_STAGE),
    # regularisation / averaging
    "label_smoothing=0.1": {"heads.lm.label_smoothing": 0.1},
    "ema=0.99": {"training.ema": 0.99},
    # batch and model size at the same steps
    "batch=16": {"training.batch_size": 16},
    "batch=64": {"training.batch_size": 64},
    "image_depth=2": {"encoders.image.depth": 2},
    "image_depth=0": {"encoders.image.depth": 0},
    "depth=2": {"backbone.depth": 2},
    "width=64": {"backbone.width": 64, "backbone.heads": 4},
    # no [training] numbers at all: one stage (the default), or the curriculum's two stages without numbers
    "no_training_numbers": {"training": {}},
    "no_training_numbers_stages": {"training": {"stages": [{"tasks": ["caption", "transcribe"]}, {}]}},
    # the same curriculum as the committed spec (each encoder alone, then all), without numbers
    "no_training_numbers_3stages": {"training": {"stages": [{"tasks": ["caption"]}, {"tasks": ["transcribe"]}, {}]}},
    # round 7: candidate defaults (batch and steps) under the curriculum without other numbers
    "stages_batch32_steps1500": {
        "training": {"stages": [{"tasks": ["caption", "transcribe"]}, {}], "batch_size": 32, "steps": 1500}
    },
    # round 8: the closing stage of the curriculum without numbers at half the derived lr (0.1 / width),
    # before that became the default (round 9)
    "no_training_numbers_stages_last_lr_half": {
        "training": {"stages": [{"tasks": ["caption", "transcribe"]}, {"lr": 0.1 / 96}]}
    },
    "3stages_batch32_steps1500": {
        "training": {
            "stages": [{"tasks": ["caption"]}, {"tasks": ["transcribe"]}, {}],
            "batch_size": 32,
            "steps": 1500,
        }
    },
    # round 10: a deeper convolutional stem before the image patches, and its init (init.stem re-initialises
    # the stem after the build; the spec's stem_init = "fan_in" is the same init, adopted in round 11)
    "stem_layers=2": {"encoders.image.stem_layers": 2},
    "stem_layers=3": {"encoders.image.stem_layers": 3},
    "stem_layers=2_fan_in": {"encoders.image.stem_layers": 2, "init.stem": "fan_in"},
    "stem_layers=3_fan_in": {"encoders.image.stem_layers": 3, "init.stem": "fan_in"},
    "stem_layers=2_fan_in_300_150_950": {
        "encoders.image.stem_layers": 2,
        "init.stem": "fan_in",
        "training.stages.0.steps": 300,
        "training.stages.1.steps": 150,
        "training.stages.2.steps": 950,
    },
    # round 12 (on round 6's spec, one stem layer at the std-0.02 init): fewer, larger image tokens after a
    # deeper stem, as bench/ablate_strings.py found for the digit strings. The scan at its own 8x8 (the area
    # filter undoes digits_av.py's 2x upscale exactly), one 8x8 patch: one image token per picture.
    "native_8x8_one_token": {
        "encoders.image.image_size": 8,
        "encoders.image.resize": "squash",
        "encoders.image.interpolation": "area",
        "encoders.image.patch_size": 8,
        "encoders.image.stem_layers": 3,
    },
    "patch8_stem3": {"encoders.image.patch_size": 8, "encoders.image.stem_layers": 3},  # 16x16, 4 tokens
    # round 13 (on the committed spec): the budget's spare seconds spent on the closing stage of all three
    # tasks (0.058 s a step idle: 350 more steps keep the estimate under 75 % of the 2 minutes), and its lr
    "all_1150": {"training.stages.2.steps": 1150},
    "all_1150_lr=7e-4": {"training.stages.2.steps": 1150, "training.lr": 7e-4},
    # round 14 (on the committed spec): the weights' moving average (each run also records its raw weights,
    # which are those of the run without ema: the averages never feed back), label smoothing on the match
    "ema=0.995": {"training.ema": 0.995},
    "ema=0.998": {"training.ema": 0.998},
    "match_label_smoothing=0.1": {"heads.match.label_smoothing": 0.1},
    "match_label_smoothing=0.1_ema=0.995": {"heads.match.label_smoothing": 0.1, "training.ema": 0.995},
    # round 15 (on the committed spec): levers that cost no training time. Dropout 0.1 in the GPT and the
    # encoders (what lifted the image + text fusions, docs/tasks.md), AdamW's weight decay (the default 0.01
    # ten times), the match task's weight in the closing stage
    "dropout=0.1": {"backbone.dropout": 0.1, "encoders.image.dropout": 0.1, "encoders.audio.dropout": 0.1},
    "backbone_dropout=0.1": {"backbone.dropout": 0.1},
    "weight_decay=0.1": {"training.weight_decay": 0.1},
    "match_weight=3": {"tasks.match.weight": 3.0},
    "match_weight=2.5": {"tasks.match.weight": 2.5},
    # round 16 (on the committed spec; every run also records where the match's errors fall, its
    # "match_breakdown"): the closing stage's mix with the caption's share kept at a quarter: the
    # transcription (100 % after its own stage) gives half its share to the match (caption 1/4 of the
    # steps, transcription 1/8, match 5/8; round 15's match weight 3 took the caption to 1/5); the head's
    # max pooling over the pair's positions
    "transcribe_weight=0.5_match_weight=2.5": {"tasks.transcribe.weight": 0.5, "tasks.match.weight": 2.5},
    "match_pooling=max": {"heads.match.pooling": "max"},
    # eight match pairs per training image instead of four (digits_av.py --pairs-per-image 8: the first
    # four of each image are the spec's, the eval pairs unchanged): more distinct tones per image
    "pairs_per_image=8": {"tasks.match.train": "data/digits_av_pairs8/match_train.jsonl"},
    # the closing stage at round 13's lower lr within the budget: its 800 steps (no time added), or 100 more
    # (about 6 s idle); the match's weight 3 at that lr; the caption's weight raised beside the match's 3 so
    # that it keeps about its quarter of the steps (1.5 : 1 : 3 -> 27 %, 18 %, 55 %)
    "stage3_lr=7e-4": {"training.lr": 7e-4},
    "match_weight=3_lr=7e-4": {"tasks.match.weight": 3.0, "training.lr": 7e-4},
    "all_900_lr=7e-4": {"training.stages.2.steps": 900, "training.lr": 7e-4},
    "caption_weight=1.5_match_weight=3": {"tasks.caption.weight": 1.5, "tasks.match.weight": 3.0},
    # round 15's match weight 3, then a short fourth stage that gives the caption back its steps (100 steps,
    # about 6.5 s idle, at a low lr): captions alone, or captions and matches (the match kept in training)
    "match_weight=3_then_caption_100": {
        "tasks.match.weight": 3.0,
        "training.stages": [
            *_SPEC_STAGES,
            {"name": "caption again", "tasks": ["caption"], "steps": 100, "lr": 3e-4, "warmup_steps": 0},
        ],
    },
    "match_weight=3_then_caption_match_100": {
        "tasks.match.weight": 3.0,
        "training.stages": [
            *_SPEC_STAGES,
            {"name": "caption+match", "tasks": ["caption", "match"], "steps": 100, "lr": 3e-4, "warmup_steps": 0},
        ],
    },
    # round 17 (on the validation split, --on validation): the caption's reading. A fourth stem layer (9x9
    # pixels seen before the patch, the whole 8x8 scan; the digit strings' best, 97.6 %), twice the stem's
    # channels (64), a longer caption stage (600 steps, within the 1.2x time budget), its lr 3e-3
    "stem_layers=4": {"encoders.image.stem_layers": 4},
    "stem_channels=64": {"encoders.image.stem_channels": 64},
    "caption_600": {"training.stages.0.steps": 600},
    "caption_lr=3e-3": {"training.stages.0.lr": 3e-3},
    # round 18 (on the validation split): augmentation of the training images at the encoder's 8x8. The
    # processor shifts and rotates after the 16->8 area downscale, so 'shift' at augment_shift 0.125 moves
    # the scan by whole pixels of the 8x8 (up to 1 either way, edge pixels filling); augment_prob leaves
    # that share of the images augmented and the rest clean; 'rotate' resamples the 8x8 (bilinear)
    "shift_1px": {"encoders.image.augment": ["shift"], "encoders.image.augment_shift": 0.125},
    "shift_1px_p0.5": {
        "encoders.image.augment": ["shift"],
        "encoders.image.augment_shift": 0.125,
        "encoders.image.augment_prob": 0.5,
    },
    "shift_1px_rotate_10_p0.5": {
        "encoders.image.augment": ["shift", "rotate"],
        "encoders.image.augment_shift": 0.125,
        "encoders.image.augment_rotate": 10.0,
        "encoders.image.augment_prob": 0.5,
    },
}

#: match training files of settings that name another ``digits_av.py --pairs-per-image`` (made on first use)
PAIRS_DATA = {"data/digits_av_pairs8/match_train.jsonl": 8}


def held_for_validation(name: str, fraction: float = 0.2) -> bool:
    """Whether a training file (``img/0123.png``, ``wav/3_017.wav``) goes to the validation part: a
    salted hash of its name, so the cut is deterministic and depends on nothing but the name."""
    sys.path.insert(0, str(ROOT / "examples" / "recipes"))
    from splits import in_fraction

    return in_fraction(f"digits_av validation:{name}", fraction)


def validation_data(out: Path = VALIDATION_DATA) -> dict:
    """Write the validation split's data to ``out`` and the classical baselines on it.

    The recipe's data is made again in ``out`` (the same images and tones, bit for bit: the recipe is
    seeded); then its training images and tones are cut by :func:`held_for_validation` and the task
    files rewritten: ``*_train.jsonl`` hold the fit part, ``*_eval.jsonl`` the validation part (the
    eval split's files are not referenced by any of them). Match pairs are drawn again as the recipe
    draws them (``digits_av.draw_pairs``: four per fit image from fit tones, one per validation image
    from validation tones, half of them matching). ``baselines.json`` holds the classical baselines
    trained on the fit part and scored on the validation part. Returns the counts."""
    import random

    sys.path.insert(0, str(ROOT / "examples" / "recipes"))
    import digits_av

    digits_av.main(["--out", str(out)])

    def read(name: str) -> list[dict]:
        return [json.loads(line) for line in (out / name).read_text().splitlines()]

    def write(name: str, rows: list[dict]) -> None:
        digits_av.write_if_changed(out / name, "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8"))

    stats: dict[str, dict[str, int]] = {"fit": {}, "validation": {}}
    words = {w: i for i, w in enumerate(digits_av.WORDS)}
    parts: dict[str, dict[str, list[dict]]] = {}
    for task, field in (("caption", "image"), ("transcribe", "audio")):
        rows = read(f"{task}_train.jsonl")
        val = [r for r in rows if held_for_validation(r[field])]
        fit = [r for r in rows if not held_for_validation(r[field])]
        parts[task] = {"fit": fit, "validation": val}
        write(f"{task}_train.jsonl", fit)
        write(f"{task}_eval.jsonl", val)
    for part, file, reps in (
        ("fit", "match_train.jsonl", digits_av.FIRST_PAIRS),
        ("validation", "match_eval.jsonl", 1),
    ):
        by_digit: dict[int, list[str]] = {}
        for r in parts["transcribe"][part]:
            by_digit.setdefault(words[r["target"]], []).append(r["audio"])
        images = [(r["image"], words[r["target"]]) for r in parts["caption"][part]]
        pairs = digits_av.draw_pairs(images, by_digit, range(reps), random.Random(f"digits_av validation pairs {part}"))
        write(file, pairs)
        stats[part] = {"images": len(images), "clips": sum(map(len, by_digit.values())), "pairs": len(pairs)}
    from mmcore.checkpoint import atomic_write_text

    atomic_write_text(out / "baselines.json", json.dumps(digits_av.baselines(out), indent=1) + "\n")
    return stats


def baseline_rows(on: str, tag: str) -> list[dict]:
    """The classical baselines on split ``on`` as result rows (``"baseline": true``; the caption,
    transcription and match fields hold the baselines' figures on the same images, tones and pairs)."""
    if on == "validation":
        base = json.loads((VALIDATION_DATA / "baselines.json").read_text())
    else:
        sys.path.insert(0, str(ROOT / "examples" / "recipes"))
        import digits_av

        base = digits_av.baselines(DATA)
    rows = []
    for name, img, pair in (
        ("classical: RBF SVM on pixels (match: composed with the tones' LR)", "rbf_svm_pixels", "rbf_svm"),
        (
            "classical: logistic regression on pixels (match: composed)",
            "logistic_regression_pixels",
            "logistic_regression",
        ),
    ):
        rows.append(
            {
                "setting": name,
                "baseline": True,
                "overrides": {},
                "on": on,
                "tag": tag,
                "caption_exact_match": round(base["caption"][img], 4),
                "transcribe_exact_match": round(base["transcribe"]["logistic_regression_spectrum"], 4),
                "match_accuracy": round(base["match"][f"{pair}_pixels_x_logistic_regression_spectrum"], 4),
            }
        )
    return rows


def overrides_of(name: str) -> dict[str, object]:
    """A setting's overrides: its entry in ``SETTINGS``, or an ad-hoc ``k=v,k=v`` (JSON values)."""
    if name in SETTINGS:
        return SETTINGS[name]
    return {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in name.split(","))}


def spec_data(overrides: dict[str, object], base_extra: dict[str, object], seed: int, on: str = "eval") -> dict:
    """The spec's data with ``base_extra`` and ``overrides`` applied and ``seed`` set; ``on="validation"``
    points every task at the validation split's files (train: the fit part, eval: the validation part)."""
    data = tomllib.loads(SPEC.read_text())
    data["training"]["log_every"] = 10**6
    for k, v in copy.deepcopy([*base_extra.items(), *overrides.items()]):
        if k.startswith("training.stages."):  # training.stages.<i>.<field>
            _, _, i, field = k.split(".", 3)
            data["training"]["stages"][int(i)][field] = v
        elif k == "training.stages" and not v:
            data["training"].pop("stages", None)
        elif k == "training.stages" and v == "first":
            data["training"]["stages"] = data["training"]["stages"][:1]
        else:
            set_dotted(data, k, v)
    set_dotted(data, "training.seed", seed)
    if on not in SPLIT_DIRS:
        raise ValueError(f"'on' takes {sorted(SPLIT_DIRS)}, got {on!r}")
    if on == "validation":
        src, dst = f"data/{DATA.name}/", f"data/{VALIDATION_DATA.name}/"
        for name, task in data["tasks"].items():
            for split in ("train", "eval"):
                if not task[split].startswith(src):
                    raise ValueError(f"tasks.{name}.{split} = {task[split]!r}: no validation split of that file")
                task[split] = dst + task[split][len(src) :]
    return data


def reinit_stem(model, how: str) -> int:
    """Re-initialise every ``vision.patch`` stem convolution: ``fan_in`` (Kaiming normal for the
    GELU that follows, zero bias) or ``std=<s>`` (truncated normal of that std, the plugin's own
    init at 0.02). Returns how many convolutions it changed. A setting names it as ``init.stem``."""
    import torch
    from mmcore_vision.patch import PatchEncoder

    n = 0
    for enc in (m for m in model.modules() if isinstance(m, PatchEncoder) and m.stem is not None):
        for conv in (m for m in enc.stem.modules() if isinstance(m, torch.nn.Conv2d)):
            if how == "fan_in":
                torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            elif how.startswith("std="):
                torch.nn.init.trunc_normal_(conv.weight, std=float(how[4:]))
            else:
                raise ValueError(f"init.stem = {how!r}: expected 'fan_in' or 'std=<float>'")
            torch.nn.init.zeros_(conv.bias)
            n += 1
    if not n:
        raise ValueError("init.stem: the spec has no vision.patch encoder with a conv stem")
    return n


def match_breakdown(model, trainer, names: dict[str, dict[str, str]], data: Path | None = None) -> dict:
    """Where the match head's held-out errors fall, against what the same model's caption and
    transcription say of each pair's picture and tone (``names``: :func:`demo.exact_match`'s
    ``predictions``).

    ``errors_on_named_pairs`` counts the match errors on pairs whose picture the caption names
    right and whose tone the transcription names right: errors a comparison of the two names would
    not make. ``composed_accuracy`` is that comparison's own accuracy (same digit when the two
    generated names are equal), the mmcore counterpart of the composed classical baseline. ``data``:
    the folder of the split scored (default ``DATA``, the eval split)."""
    from mmcore.evaluate import evaluate_task

    task = trainer.tasks["match"]
    preds: list[dict] = []
    evaluate_task(model, task.objective, task.eval, model.processors, batch_size=64, predictions=preds)

    def jsonl(name: str) -> list[dict]:
        return [json.loads(line) for line in ((data or DATA) / name).read_text().splitlines()]

    rows = jsonl("match_eval.jsonl")
    truth = {r["image"]: r["target"] for r in jsonl("caption_eval.jsonl")}
    truth |= {r["audio"]: r["target"] for r in jsonl("transcribe_eval.jsonl")}
    cap, tr = names["caption"], names["transcribe"]
    errors = []
    for row, pr in zip(rows, preds, strict=True):
        if not pr["exact"]:
            errors.append(
                {
                    "image": row["image"],
                    "audio": row["audio"],
                    "label": row["label"],
                    "caption": cap[row["image"]],
                    "image_digit": truth[row["image"]],
                    "transcription": tr[row["audio"]],
                    "tone_digit": truth[row["audio"]],
                }
            )
    named = [e for e in errors if e["caption"] == e["image_digit"] and e["transcription"] == e["tone_digit"]]
    composed = sum((cap[r["image"]] == tr[r["audio"]]) == bool(r["label"]) for r in rows)
    return {
        "pairs": len(rows),
        "errors": len(errors),
        "errors_on_named_pairs": len(named),
        "errors_on_misnamed_pictures": sum(e["caption"] != e["image_digit"] for e in errors),
        "composed_correct": composed,
        "composed_accuracy": round(composed / len(rows), 4),
        "caption_misses": sorted(k for k, v in cap.items() if v != truth[k]),
        "error_pairs": errors,
    }


def run_one(name: str, overrides: dict, base_extra: dict, seed: int, on: str = "eval") -> dict:
    import torch

    import mmcore
    from mmcore.spec import parse_spec

    sys.path.insert(0, str(ROOT / "examples"))
    from demo import exact_match

    torch.manual_seed(seed)
    merged = {**base_extra, **overrides}
    inits = {k: v for k, v in merged.items() if k.startswith("init.")}
    spec_over = {k: v for k, v in overrides.items() if k not in inits}
    spec_base = {k: v for k, v in base_extra.items() if k not in inits}
    spec = parse_spec(spec_data(spec_over, spec_base, seed, on), file=str(SPEC))
    data = SPLIT_DIRS[on]
    model = mmcore.build(spec)
    for k, v in inits.items():
        if k != "init.stem":
            raise ValueError(f"{k}: the only init setting is init.stem")
        with torch.random.fork_rng():  # the training's random stream stays the one without the setting
            torch.manual_seed(seed + 1)
            reinit_stem(model, v)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    trainer = mmcore.Trainer(model, spec.tasks, spec.training)
    result = trainer.fit()
    train_s = time.perf_counter() - t0
    model.eval()
    raw = {}
    if trainer.ema is not None:  # result.eval is the averages'; generate from them too, and keep the raw arm
        gen_raw = exact_match(model, data)  # after fit() the model holds the trained (raw) weights
        ema, trainer.ema = trainer.ema, None
        raw = {
            "raw": {
                "caption_exact_match": round(gen_raw["caption_exact_match"], 4),
                "transcribe_exact_match": round(gen_raw["transcribe_exact_match"], 4),
                "match_accuracy": round(trainer.evaluate()["match"]["accuracy"], 4),
            }
        }
        with ema.applied():
            gen = exact_match(model, data)
    else:
        names: dict[str, dict[str, str]] = {}
        gen = exact_match(model, data, predictions=names)
        raw = {"match_breakdown": match_breakdown(model, trainer, names, data)}  # not an arm: no "raw" key
    return {
        "setting": name,
        "overrides": overrides,
        "base": base_extra,
        "on": on,
        "seed": seed,
        "steps": spec.training.steps,
        "stages": [s.steps for s in spec.training.stages] or [spec.training.steps],
        "batch_size": spec.training.batch_size,
        "caption_exact_match": round(gen["caption_exact_match"], 4),
        "transcribe_exact_match": round(gen["transcribe_exact_match"], 4),
        "match_accuracy": round(result.eval["match"]["accuracy"], 4),
        "train_seconds": round(train_s, 1),
        "seconds_per_step": round(train_s / spec.training.steps, 4),
        "load_average": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "threads": torch.get_num_threads(),
        **raw,  # with training.ema: the same run's trained weights (those of the run without ema)
    }


STEP_TIMES = ROOT / "bench" / "results_ablate_main_step_time.json"


def plan_step_time(names: list[str], base_extra: dict, steps: int = 20, rounds: int = 2) -> dict:
    """Seconds per training step of each setting's whole plan, side by side in one process.

    For every stage of a setting's plan it builds a one-stage trainer of that stage's tasks and
    times ``steps`` of its steps after one warm-up step; the plan's figure is the mean over its
    stages weighted by their steps. The settings take turns ``rounds`` times (so each sees the
    same machine load); ``ratio`` is each setting's s/step over the first's.
    """
    import torch

    import mmcore
    from mmcore.spec import parse_spec

    per: dict[str, list[float]] = {n: [] for n in names}
    plans: dict[str, list[int]] = {}
    for _ in range(rounds):
        for name in names:
            over = overrides_of(name)
            over = {k: v for k, v in over.items() if not k.startswith("init.")}  # the init costs no time per step
            spec = parse_spec(spec_data(over, base_extra, 0), file=str(SPEC))
            stages = spec.training.stages
            plans[name] = [st.steps for st in stages] or [spec.training.steps]
            total = 0.0
            for st in stages or [None]:
                data = spec_data(over, base_extra, 0)
                tasks = (st.tasks if st is not None and st.tasks else None) or list(spec.tasks)
                data["training"].update(stages=[{"tasks": tasks, "steps": steps + 1, "lr": 1e-3}], progress=False)
                one = parse_spec(data, file=str(SPEC))
                trainer = mmcore.Trainer(mmcore.build(one), one.tasks, one.training)
                trainer.train_step()  # warm-up
                t0 = time.perf_counter()
                for _ in range(steps):
                    trainer.train_step()
                total += (time.perf_counter() - t0) / steps * (st.steps if st is not None else spec.training.steps)
            per[name].append(total / sum(plans[name]))
    first = sum(per[names[0]])
    return {
        "seconds_per_step": per,
        "plan_steps": plans,
        "ratio": {n: round(sum(v) / first, 3) for n, v in per.items()},
        "threads": torch.get_num_threads(),
        "load_average": round(os.getloadavg()[0], 2),
        "note": "shared machine, under load: only the ratios mean something",
    }


BEGIN, END = (
    "<!-- ablate_main: begin (written by bench/ablate_main.py --write-docs) -->",
    "<!-- ablate_main: end -->",
)


def table(results: list[dict]) -> str:
    """Markdown tables of the results, one per tag (round), in the order they were run."""
    return tables_by_round(
        results,
        "| setting | overrides | seed | steps x batch | caption | transcription | match | s/step (under load) |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|",
        lambda r, ov: "\n".join(_row(r, ov, arm) for arm in (None, "raw") if arm is None or arm in r),
    )


def _row(r: dict, ov: str, arm: str | None) -> str:
    """One table row: the run's figures, or (``arm="raw"``) those of its trained weights without
    the ``training.ema`` averages."""
    if r.get("baseline"):
        return (
            f"| {r['setting']} | (same split) | | | {100 * r['caption_exact_match']:.1f} % | "
            f"{100 * r['transcribe_exact_match']:.1f} % | {100 * r['match_accuracy']:.1f} % | |"
        )
    m = r if arm is None else r[arm]
    setting = r["setting"] if arm is None else f"{r['setting']}, raw weights of the same run"
    match = f"{100 * m['match_accuracy']:.1f} %"
    if (b := m.get("match_breakdown")) is not None:  # round 16 on: where the errors fall (match_breakdown)
        match += f" ({b['errors']} wrong, {b['errors_on_named_pairs']} of them named right; names compared: {b['composed_correct']})"
    return (
        f"| {setting} | {ov} | {r['seed']} | {'+'.join(map(str, r['stages']))} x {r['batch_size']} | "
        f"{100 * m['caption_exact_match']:.1f} % | {100 * m['transcribe_exact_match']:.1f} % | "
        f"{match} | {r['seconds_per_step']:.3f} |"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_ablation_options(p, RESULTS)
    p.add_argument("--base-plan", choices=sorted(BASE_PLANS), help="an earlier round's [[training.stages]] as base")
    p.add_argument(
        "--step-time",
        action="store_true",
        help=f"time the --only settings' training steps side by side (first = reference) -> {STEP_TIMES.name}",
    )
    p.add_argument(
        "--on",
        choices=sorted(SPLIT_DIRS),
        default="eval",
        help="validation: train on the training split's fit part, score on its validation part (validation_data)",
    )
    p.add_argument(
        "--record-baseline",
        action="store_true",
        help="append the classical baselines' figures on the --on split as rows (before the runs)",
    )
    args = p.parse_args(argv)
    if args.write_docs:
        write_docs(json.loads(Path(args.out).read_text()), BEGIN, END, table)
        return 0
    if args.list:
        print_settings(SETTINGS)
        return 0
    sys.path.insert(0, str(ROOT / "examples" / "recipes"))
    import digits_av

    from mmcore.checkpoint import atomic_write_text

    if not (DATA / "match_eval.jsonl").exists():
        digits_av.main(["--out", str(DATA)])
    for name in args.only or list(SETTINGS):
        path = overrides_of(name).get("tasks.match.train")
        if path in PAIRS_DATA and not (SPEC.parent / path).exists():
            digits_av.main(["--out", str((SPEC.parent / path).parent), "--pairs-per-image", str(PAIRS_DATA[path])])
    if args.on == "validation":
        print(json.dumps(validation_data()), flush=True)
    if args.record_baseline:
        results = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else []
        atomic_write_text(Path(args.out), json.dumps([*results, *baseline_rows(args.on, args.tag)], indent=1) + "\n")
    base_extra = parse_base(args.base)
    if args.base_plan:
        base_extra = {"training.stages": BASE_PLANS[args.base_plan], **base_extra}
    if args.step_time:
        r = {"tag": args.tag, **plan_step_time(args.only or ["base"], base_extra)}
        print(json.dumps(r), flush=True)
        times = json.loads(STEP_TIMES.read_text()) if STEP_TIMES.exists() else []
        atomic_write_text(STEP_TIMES, json.dumps([*times, r], indent=1) + "\n")
        return 0
    run_settings(
        args.only or list(SETTINGS),
        args.seeds,
        lambda name, seed: run_one(name, overrides_of(name), base_extra, seed, args.on),
        args.out,
        args.tag,
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
