"""Ablation of the text recipes: what makes a small GPT learn real text within minutes.

Each run trains one recipe's spec (``--recipe``: language_id, topics, mlm, lm) for a FIXED
number of steps (``--steps``), from one setting changed against the base (one factor at a
time), then reads the trainer's final held-out evaluation (the whole eval set for the
classifiers). Runs go one after the other in this process; results are appended to
``bench/results_ablate_text.json`` (one entry per run: metric, steps, seconds under whatever
load the machine had) and ``docs/tuning.md`` quotes that file.

    OMP_NUM_THREADS=1 python bench/ablate_text.py --recipe language_id --steps 400 --only base lr=3e-3
    python bench/ablate_text.py --write-docs      # docs/tuning.md's text tables, from the results file

A setting is a name from ``SETTINGS`` or inline dotted overrides (``training.lr=0.003,backbone.depth=2``,
JSON values). ``--on validation`` trains on the training split's fit part and scores on its validation
part (``VALIDATION``; examples/recipes/stdlib_text.py writes them), so settings are chosen without the
eval split; ``--record-baseline`` appends the classical baselines' figures on the same split as rows.
``--lengths`` counts the texts longer than the spec's ``max_length`` in tokens (bench/results_text_lengths.json). ``bpe=N`` reads the text with a byte-level BPE tokenizer of N tokens trained on
the recipe's training split only (``mmcore_text.train_bpe``), written under the data folder; with
``bpe_text="pretrain"`` on the first stage's corpus instead, less the paragraphs of the split scored.
The recipe's data must exist (``python examples/recipes/language_id.py`` /
``python examples/recipes/stdlib_text.py``).
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
sys.path.insert(0, str(ROOT / "bench"))
from ablate_digits import parse_setting, run_settings, tables_by_round  # noqa: E402
from ablate_digits import write_docs as write_tables  # noqa: E402

RESULTS = ROOT / "bench" / "results_ablate_text.json"
#: ``--lengths``: per recipe, how many texts are longer than the spec's max_length
LENGTHS = ROOT / "bench" / "results_text_lengths.json"

#: recipe -> (spec, task, metric key in the trainer's eval)
RECIPES: dict[str, tuple[str, str, str]] = {
    "language_id": ("language_id.toml", "language", "accuracy"),
    "topics": ("stdlib_topics.toml", "topics", "accuracy"),
    "mlm": ("stdlib_mlm.toml", "pretrain", "masked_accuracy"),
    "lm": ("stdlib_lm.toml", "pretrain", "perplexity"),
}

#: recipe -> (fit file, validation file): the training split cut in two (``--on validation``), relative to examples/
VALIDATION: dict[str, tuple[str, str]] = {
    "topics": ("data/stdlib/topics_train_fit.jsonl", "data/stdlib/topics_val.jsonl"),
}
#: the classical baselines' figures, per split, in the recipe's data folder's baselines.json (recipe -> file, keys)
BASELINES: dict[str, tuple[str, dict[str, str]]] = {
    "topics": (
        "data/stdlib/baselines.json",
        {"eval": "topics_classical", "validation": "topics_classical_validation"},
    ),
}
#: options of a setting that are not spec keys
OPTIONS = ("bpe", "bpe_text", "pretrain_steps", "label_stage_only", "on")

#: setting name -> overrides (dotted key -> value) on the base spec.
SETTINGS: dict[str, dict[str, object]] = {
    "base": {},
    "lr=5e-4": {"training.lr": 5e-4},
    "lr=1e-3": {"training.lr": 1e-3},
    "lr=3e-3": {"training.lr": 3e-3},
    "lr=6e-3": {"training.lr": 6e-3},
    "schedule=linear": {"training.schedule": "linear"},
    "schedule=cosine": {"training.schedule": "cosine"},
    "dropout=0": {"backbone.dropout": 0.0},
    "dropout=0.1": {"backbone.dropout": 0.1},
    "pooling=last": {"heads.*.pooling": "last"},
    "pooling=mean": {"heads.*.pooling": "mean"},
    "batch=16": {"training.batch_size": 16},
    "batch=64": {"training.batch_size": 64},
    "depth=1": {"backbone.depth": 1},
    "depth=2": {"backbone.depth": 2},
    "width=64": {"backbone.width": 64, "backbone.heads": 2},
    "width=256": {"backbone.width": 256, "backbone.heads": 8},
    "max_length=64": {"encoders.text.max_length": 64, "backbone.context_length": 64},
    "max_length=48": {"encoders.text.max_length": 48, "backbone.context_length": 48},
    "bpe=2000": {"bpe": 2000},
    "bpe=4000": {"bpe": 4000},
    "bpe=8000": {"bpe": 8000},
    "label_smoothing=0.1": {"heads.*.label_smoothing": 0.1},
    "weight_decay=0.1": {"training.weight_decay": 0.1},
    "positions=rope": {"backbone.positions": "rope"},
    "positions=learned": {"backbone.positions": "learned"},
    # language ID: a masked-LM stage on the catalogs' unlabelled strings (langid_unlabelled.txt: every string
    # but the held-out ones), then the labels (3,000 steps) read bidirectionally, as the topics recipe does
    "langid_pretrain=mlm": {
        "heads.lm": {"component": "lm"},
        "tasks.pretrain": {"objective": "mlm", "head": "lm", "train": "data/language_id/langid_unlabelled.txt"},
        "tasks.language.head": "language",
        "tasks.language.attention": "bidirectional",
        "training.steps": None,
        "training.stages": [
            {"name": "pretrain", "tasks": ["pretrain"], "steps": 1000},
            {"name": "language", "tasks": ["language"], "steps": 3000, "reset_optimizer": True},
        ],
    },
    # topics: the labelled stage keeps the masked-LM task beside the labels (one task a step, drawn by the tasks'
    # weights, so 800 steps hold about 400 of each), against the labels alone memorising the training paragraphs
    "topics_stage2+mlm": {"training.stages.1.tasks": ["topics", "pretrain"], "training.stages.1.steps": 800},
    # topics: the classify head keeps each feature's maximum over the paragraph's tokens instead of their mean
    "topics_pooling=max": {"heads.topic.pooling": "max"},
    # topics: max pooling and dropout 0.2 on the pooled vector (the head's own dropout: the labelled stage alone)
    "topics_pooling=max,dropout=0.2": {"heads.topic.pooling": "max", "heads.topic.dropout": 0.2},
    # topics: the first stage on 2.2x the unlabelled text (examples/recipes/stdlib_text.py writes the file)
    "topics_pretrain=more": {"tasks.pretrain.train": "data/stdlib/corpus_topics_pretrain_more.txt"},
    # topics: the larger corpus read for twice the steps (about as many passes over it as the spec's 800 over its own)
    "topics_pretrain=more,1600": {
        "tasks.pretrain.train": "data/stdlib/corpus_topics_pretrain_more.txt",
        "training.stages.0.steps": 1600,
    },
    # topics: autoregressive pretraining (the lm head predicts the next token, causal attention) instead of masked LM
    "topics_pretrain=lm": {"tasks.pretrain.objective": "lm"},
    # topics: token masking augmentation of the labelled paragraphs (the text encoder's augment_mask: each token
    # of a training paragraph becomes <mask> with this probability, afresh each read; the corpus stage is not masked)
    "topics_augment_mask=0.1": {"encoders.text.augment_mask": 0.1},
    "topics_augment_mask=0.2": {"encoders.text.augment_mask": 0.2},
    "topics_augment_mask=0.3": {"encoders.text.augment_mask": 0.3},
    # topics: a 4,000-token BPE tokenizer trained on the first stage's corpus (corpus_topics_pretrain.txt: 3,193
    # paragraphs, not the 1,460 labelled ones), less the paragraphs of the split scored (validation or eval)
    "topics_bpe=4000,pretrain": {"bpe": 4000, "bpe_text": "pretrain"},
    "topics_bpe=1000,pretrain": {"bpe": 1000, "bpe_text": "pretrain"},
    # topics: the first stage's masked LM predicts 30 % of the tokens instead of 15 % (more signal a step from
    # the small corpus; 40 % beat 15 % for BERT-size models in Wettig et al., 2023)
    "topics_mlm_probability=0.3": {"tasks.pretrain.mlm_probability": 0.3},
    # topics: a wider model (192 instead of 128, 6 heads of 32), both stages: about 2x the spec's arithmetic
    "topics_width=192": {"backbone.width": 192, "backbone.heads": 6},
    # topics: both objectives in the first stage, one drawn a step (so 800 steps hold about 400 of each), one lm head
    "topics_pretrain=mlm+lm": {
        "tasks.pretrain_lm": {"objective": "lm", "head": "lm", "train": "data/stdlib/corpus_topics_pretrain.txt"},
        "training.stages.0.tasks": ["pretrain", "pretrain_lm"],
    },
}


def set_dotted(d: dict, key: str, value: object) -> None:
    """Set ``a.b.c`` in nested dicts; ``*`` matches every key at that level."""
    *path, last = key.split(".")
    for i, k in enumerate(path):
        if k == "*":
            for sub in d.values():
                set_dotted(sub, ".".join(path[i + 1 :] + [last]), value)
            return
        d = d[int(k)] if isinstance(d, list) else d.setdefault(k, {})  # a list: an index (training.stages.0)
    if value is None:  # remove the key (e.g. a stage's option)
        d.pop(last, None)
    else:
        d[last] = value


def read_texts(path: Path) -> list[str]:
    """A JSONL manifest's ``text`` fields, or a text file's lines."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".jsonl":
        return [json.loads(line)["text"] for line in lines if line.strip()]
    return lines


def bpe_tokenizer(train_file: Path, vocab: int, without: Path | None = None) -> Path:
    """A byte-level BPE tokenizer of ``vocab`` tokens trained on ``train_file`` (cached beside it): a task's
    training file, or (``bpe_text = "pretrain"``) the first stage's corpus less every line that is, or whose first
    400 characters are, a text of ``without`` (the split a run scores on: the corpus holds the validation
    paragraphs, and the tokenizer must not learn from the text it is judged on)."""
    sys.path.insert(0, str(ROOT / "examples" / "recipes"))
    from language_id import train_tokenizer

    name = f"bpe{vocab}_{train_file.stem}" + (f"_without_{without.stem}" if without is not None else "")
    out = train_file.parent / name
    if (out / "tokenizer.json").exists():
        return out / "tokenizer.json"
    texts = read_texts(train_file)
    if without is not None:
        held = set(read_texts(without))
        texts = [t for t in texts if t not in held and t[:400] not in held]
    return train_tokenizer(texts, vocab, out)


def build_spec(recipe: str, steps: int, overrides: dict[str, object], seed: int) -> dict:
    data = tomllib.loads((ROOT / "examples" / RECIPES[recipe][0]).read_text())
    data.setdefault("training", {})
    data["training"].update({"log_every": 10**6, "seed": seed})
    if data["training"].get("stages"):  # as `mmcore train --steps`: the last stage's steps
        data["training"]["stages"][-1]["steps"] = steps
    else:
        data["training"]["steps"] = steps
    for k in ("checkpoint_every", "eval_every"):
        data["training"].pop(k, None)
    for k, v in copy.deepcopy(overrides).items():
        if k not in OPTIONS:
            set_dotted(data, k, v)
    on = overrides.get("on", "eval")
    if on == "validation":  # train on the fit part of the training split, score on its validation part
        if recipe not in VALIDATION:
            raise ValueError(f"recipe {recipe!r} has no validation split; --on validation takes {sorted(VALIDATION)}")
        task = data["tasks"][RECIPES[recipe][1]]
        task["train"], task["eval"] = VALIDATION[recipe]
    elif on != "eval":
        raise ValueError(f"'on' takes 'eval' or 'validation', got {on!r}")
    if "bpe" in overrides:
        enc = data["encoders"]["text"]
        enc["component"] = "text.bpe"
        task = data["tasks"][RECIPES[recipe][1]]
        if overrides.get("bpe_text", "task") == "pretrain":  # the first stage's corpus, less the scored split
            train_file, without = (
                ROOT / "examples" / data["tasks"]["pretrain"]["train"],
                ROOT / "examples" / task["eval"],
            )
        else:
            train_file, without = ROOT / "examples" / task["train"], None
        enc["tokenizer"] = str(bpe_tokenizer(train_file, int(overrides["bpe"]), without))
        enc.pop("vocab_size", None)
    elif "bpe_text" in overrides:
        raise ValueError("bpe_text names the text a bpe=N tokenizer is trained on: set bpe too")
    return data


def baseline_rows(recipe: str, on: str) -> list[dict]:
    """The classical baselines' figures on split ``on`` (eval or validation) as result rows, read from the
    baselines.json the recipe's data script wrote (the same paragraphs the model is trained and scored on)."""
    if recipe not in BASELINES:
        raise ValueError(f"recipe {recipe!r} has no classical baselines file; known: {sorted(BASELINES)}")
    file, keys = BASELINES[recipe]
    if on not in keys:
        raise ValueError(f"'on' takes {sorted(keys)}, got {on!r}")
    path = ROOT / "examples" / file
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the recipe's data script (examples/recipes/stdlib_text.py)")
    figures = json.loads(path.read_text())
    if keys[on] not in figures:
        raise KeyError(f"{path} has no {keys[on]!r}: rerun examples/recipes/stdlib_text.py to write it")
    metric = RECIPES[recipe][2]
    return [
        {"recipe": recipe, "setting": name, "overrides": {"on": on}, "metric": metric, "value": round(v[metric], 6)}
        for name, v in figures[keys[on]].items()
    ]


def token_lengths(recipe: str) -> dict:
    """How many of the recipe's training and eval texts the spec's text encoder cuts (longer than ``max_length``
    tokens, its framing included): whether a longer context could see more of a paragraph than it does."""
    import mmcore

    spec_file, task, _ = RECIPES[recipe]
    spec = mmcore.load_spec(ROOT / "examples" / spec_file)
    proc = mmcore.build(spec).processors["text"]
    limit, framing = proc.max_length, int(proc.add_bos) + int(proc.add_eos)
    out = {"recipe": recipe, "max_length": limit, "framing_tokens": framing}
    for split in ("train", "eval"):
        path = ROOT / "examples" / getattr(spec.tasks[task], split)
        texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        n = sorted(len(proc.tokenizer.encode(t)) + framing for t in texts)
        out[split] = {
            "texts": len(n),
            "longer_than_max_length": sum(x > limit for x in n),
            "median_tokens": n[len(n) // 2],
            "max_tokens": n[-1],
        }
    return out


def pretraining_corpus(eval_file: Path) -> Path:
    """The stdlib corpus's training text without the paragraphs a classifier is evaluated on.

    The topic paragraphs are split by paragraph, the corpus by module, so corpus_train.txt holds
    most topic eval paragraphs; pretraining on them would show the model its eval text.
    """
    held = {json.loads(line)["text"] for line in eval_file.read_text(encoding="utf-8").splitlines() if line.strip()}
    src = ROOT / "examples" / "data" / "stdlib" / "corpus_train.txt"
    kept = [line for line in src.read_text(encoding="utf-8").splitlines() if line[:400] not in held]
    out = src.parent / f"corpus_train_without_{eval_file.stem}.txt"
    out.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return out


def pretrain(data: dict, task: str, steps: int, seed: int, spec_file: Path):
    """Pretrain the classifier spec's encoder and backbone with the ``lm`` objective (its own heads and tasks
    swapped for an LM head on the stdlib corpus, minus the task's eval text); returns the trained model."""
    import mmcore
    from mmcore.spec import parse_spec

    lm = copy.deepcopy(data)
    lm["heads"] = {"lm": {"component": "lm"}}
    eval_file = spec_file.parent / data["tasks"][task]["eval"]
    lm["tasks"] = {"pretrain": {"objective": "lm", "train": str(pretraining_corpus(eval_file))}}
    lm["training"] = {"steps": steps, "batch_size": data["training"].get("batch_size", 16), "seed": seed}
    lm["training"]["log_every"] = 10**6
    spec = parse_spec(lm, file=str(spec_file))
    model = mmcore.build(spec)
    mmcore.Trainer(model, spec.tasks, spec.training).fit()
    return model


def pretraining_encoders(data: dict, tasks: list[str]) -> dict:
    """``data``'s encoders as the ``tasks`` (the earlier stages') read them: when every one of them trains on a
    packed text corpus (not a JSONL manifest), without the text encoders' ``augment_mask``, which only masks
    JSONL training records, so a labelled stage with and without it starts from the same cached weights."""
    encoders = copy.deepcopy(data["encoders"])
    if all(not str(data["tasks"][t]["train"]).endswith(".jsonl") for t in tasks):
        for enc in encoders.values():
            enc.pop("augment_mask", None)
    return encoders


def staged_pretrained(data: dict, seed: int, spec_file: Path):
    """The weights after every stage but the last of a staged spec (``data``), trained once per seed and cached.

    ``label_stage_only = true`` runs only the last stage from these weights (with the stage's own settings, a
    fresh optimizer), so settings of the labelled stage are compared on the same pretrained model, for a
    fraction of the time. The cache (safetensors, under the data folder) is keyed by everything the earlier
    stages read: backbone, encoders, heads, their tasks, the training section and the seed.
    """
    import hashlib

    import torch
    from safetensors.torch import load_file, save_file

    import mmcore
    from mmcore.spec import parse_spec

    stages = data["training"]["stages"]
    early = [t for st in stages[:-1] for t in st.get("tasks", [])]
    key_src = {
        "backbone": data["backbone"],
        "encoders": pretraining_encoders(data, early),
        "heads": {h: data["heads"][h] for h in {data["tasks"][t].get("head") for t in early} if h in data["heads"]},
        "tasks": {t: data["tasks"][t] for t in early},
        # training.ema changes what is evaluated and saved, not the weights the earlier stages train
        "training": {k: v for k, v in data["training"].items() if k not in ("stages", "ema")},
        "stages": stages[:-1],
        "seed": seed,
    }
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:16]
    cache = spec_file.parent / "data" / "pretrained_cache" / f"{spec_file.stem}_{key}.safetensors"
    if not cache.exists():
        pre = copy.deepcopy(data)
        pre["training"]["stages"] = stages[:-1]
        torch.manual_seed(seed)
        spec = parse_spec(pre, file=str(spec_file))
        model = mmcore.build(spec)
        mmcore.Trainer(model, spec.tasks, spec.training).fit()
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        os.replace(tmp, cache)
    return load_file(str(cache))


def run_one(recipe: str, name: str, overrides: dict, steps: int, seed: int) -> dict:
    import torch

    import mmcore
    from mmcore.spec import parse_spec

    spec_file, task, metric = RECIPES[recipe]
    data = build_spec(recipe, steps, overrides, seed)
    stages = data["training"].get("stages") or []
    torch.manual_seed(seed)
    spec = parse_spec(data, file=str(ROOT / "examples" / spec_file))
    t0 = time.perf_counter()
    pretrained = None
    if overrides.get("pretrain_steps"):
        pretrained = pretrain(data, task, int(overrides["pretrain_steps"]), seed, ROOT / "examples" / spec_file)
    state = None
    if overrides.get("label_stage_only"):  # the earlier stages' weights, cached; train the last stage alone
        state = staged_pretrained(data, seed, ROOT / "examples" / spec_file)
        data["training"]["stages"] = stages = stages[-1:]
        data["training"]["stages"][0]["reset_optimizer"] = False  # a new run: the optimizer starts fresh anyway
        spec = parse_spec(data, file=str(ROOT / "examples" / spec_file))
        t0 = time.perf_counter()  # the time of the last stage alone
    torch.manual_seed(seed)
    model = mmcore.build(spec)
    if state is not None:
        model.load_state_dict(state)
    if pretrained is not None:  # encoders and backbone from the LM, a fresh head (as finetune_topics.py does)
        shared = {k: v for k, v in pretrained.state_dict().items() if k.startswith(("encoders.", "backbone."))}
        model.load_state_dict(shared, strict=False)
    result = mmcore.Trainer(model, spec.tasks, spec.training).fit()
    train_s = time.perf_counter() - t0
    ev = result.eval[task]
    return {
        "recipe": recipe,
        "setting": name,
        "overrides": overrides,
        "seed": seed,
        "steps": spec.training.steps,
        **({"stages": {st.get("name", str(i)): st["steps"] for i, st in enumerate(stages)}} if stages else {}),
        "batch_size": spec.training.batch_size,
        "metric": metric,
        "value": round(float(ev[metric]), 4),
        "final_loss": round(result.final_loss, 4),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(train_s, 1),
        "threads": torch.get_num_threads(),
    }


#: recipe -> its results file, written by the recipe script (examples/recipes/*.py --train)
RECIPE_RESULTS: dict[str, str] = {"language_id": "language_id.json", "topics": "stdlib_topics.json"}


def recipe_rows(recipe: str, setting: str) -> list[dict]:
    """Rows for the committed spec's own runs, read from the results file its recipe script wrote
    (the spec's seed and ``other_seeds``), so the recipe's final setting is in the table as run."""
    import mmcore

    spec_file, task, metric = RECIPES[recipe]
    spec = mmcore.load_spec(ROOT / "examples" / spec_file)
    res = json.loads((ROOT / "examples" / "results" / RECIPE_RESULTS[recipe]).read_text())
    parameters = sum(p.numel() for p in mmcore.build(spec).parameters())
    stages = {st.name or str(i): st.steps for i, st in enumerate(spec.training.stages)}
    runs = [res["mmcore"], *res.get("other_seeds", [])]
    return [
        {
            "recipe": recipe,
            "setting": setting,
            "overrides": {"recipe": f"examples/{spec_file}"},
            "seed": run["seed"],
            "steps": spec.training.steps,
            **({"stages": stages} if stages else {}),
            "batch_size": spec.training.batch_size,
            "metric": metric,
            "value": round(float(run[metric]), 6),  # 6 places: the table rounds as tasks.md does
            "final_loss": round(run["final_train_loss"], 4),
            "parameters": parameters,
            "train_seconds": round(run["train_seconds_under_load"], 1),
            "threads": res["mmcore"]["threads"],
        }
        for run in runs
    ]


DOC = ROOT / "docs" / "tuning.md"


def markers(recipe: str) -> tuple[str, str]:
    return (
        f"<!-- ablate_text {recipe}: begin (written by bench/ablate_text.py --write-docs) -->",
        f"<!-- ablate_text {recipe}: end -->",
    )


def fmt(metric: str, value: float) -> str:
    return f"{value:.2f}" if metric == "perplexity" else f"{100 * value:.1f} %"


def steps_cell(r: dict) -> str:
    """``steps x batch``; a staged run's stages as ``800 + 400 x 16``."""
    steps = " + ".join(str(v) for v in r["stages"].values()) if r.get("stages") else str(r["steps"])
    return f"{steps} x {r['batch_size']}"


def table(results: list[dict]) -> str:
    """Markdown tables of one recipe's results, one per tag (round), in the order they were run."""
    metric = results[0]["metric"].replace("_", " ")
    return tables_by_round(
        results,
        f"| setting | overrides | seed | steps x batch | parameters | held-out {metric} | final train loss "
        "| train minutes (under load) |\n|---|---|---:|---:|---:|---:|---:|---:|",
        row_cells,
    )


def row_cells(r: dict, ov: str) -> str:
    """One result's table row; a classical baseline's row (``--record-baseline``) has its figure alone."""
    if "seed" not in r:
        return f"| {r['setting']} | {ov} | - | - | - | {fmt(r['metric'], r['value'])} | - | - |"
    return (
        f"| {r['setting']} | {ov} | {r['seed']} | {steps_cell(r)} | {r['parameters']:,} | "
        f"{fmt(r['metric'], r['value'])} | {r['final_loss']:.3f} | {r['train_seconds'] / 60:.1f} |"
    )


def write_docs(results: list[dict]) -> None:
    """docs/tuning.md's table of each recipe, between its markers (ablate_digits.write_docs)."""
    for recipe in dict.fromkeys(r["recipe"] for r in results):
        begin, end = markers(recipe)
        if begin not in DOC.read_text():
            raise SystemExit(f"{DOC}: no {begin!r} marker for recipe {recipe!r}; add the section first")
        rows = [r for r in results if r["recipe"] == recipe]
        write_tables(rows, begin, end, tables=table)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", choices=sorted(RECIPES), default="language_id")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--only", nargs="*", help="settings to run (default: all)")
    p.add_argument("--base", default="", help="overrides (name or k=v,...) applied to every run of this call")
    p.add_argument("--seeds", type=int, nargs="*", default=[0])
    p.add_argument("--tag", default="", help="label stored with each result (e.g. 'round 2')")
    p.add_argument("--list", action="store_true")
    p.add_argument("--write-docs", action="store_true", help="rewrite docs/tuning.md's tables from the results file")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument(
        "--record-recipe",
        metavar="SETTING",
        help="append the committed spec's runs from its results file (the recipe script's --train) as rows "
        "named SETTING, instead of training",
    )
    p.add_argument(
        "--on",
        choices=("eval", "validation"),
        default="eval",
        help="validation: train on the training split's fit part, score on its validation part (VALIDATION)",
    )
    p.add_argument(
        "--record-baseline",
        action="store_true",
        help="append the classical baselines' figures on the --on split (the data script's baselines.json) as rows",
    )
    p.add_argument("--lengths", action="store_true", help="count the texts longer than the spec's max_length, print")
    args = p.parse_args(argv)
    if args.lengths:
        from mmcore.checkpoint import atomic_write_text

        got = json.loads(LENGTHS.read_text()) if LENGTHS.exists() else {}
        got[args.recipe] = token_lengths(args.recipe)
        print(json.dumps(got[args.recipe], indent=1))
        atomic_write_text(LENGTHS, json.dumps(got, indent=1) + "\n")
        return 0
    if args.write_docs:
        write_docs(json.loads(Path(args.out).read_text()))
        return 0
    if args.list:
        for k, v in SETTINGS.items():
            print(f"{k:24} {v}")
        return 0
    base = parse_setting(args.base, SETTINGS) if args.base else {}
    if args.on != "eval":
        base = {**base, "on": args.on}
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else []
    from mmcore.checkpoint import atomic_write_text

    if args.record_recipe or args.record_baseline:
        rows = recipe_rows(args.recipe, args.record_recipe) if args.record_recipe else []
        for r in rows + (baseline_rows(args.recipe, args.on) if args.record_baseline else []):
            r["tag"] = args.tag
            print(json.dumps(r), flush=True)
            results.append(r)
        atomic_write_text(out, json.dumps(results, indent=1) + "\n")
        return 0
    run_settings(
        args.only or list(SETTINGS),
        args.seeds,
        lambda name, seed: run_one(args.recipe, name, {**base, **parse_setting(name, SETTINGS)}, args.steps, seed),
        out,
        args.tag,
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
