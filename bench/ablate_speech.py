"""Ablation of the speech recipe: what makes a small GPT transcribe unheard voices.

Each run trains ``examples/speech_words.toml``'s model for a FIXED number of steps (``--steps``;
default: the spec's), from one setting changed against the base (the committed spec plus
``--base``), then greedy-transcribes the 360 held-out clips (12 voices the model never heard)
and reports the share transcribed exactly. Runs go one after the other in this process;
results are appended to ``bench/results_ablate_speech.json`` (one entry per run: exact match,
steps, seconds under whatever load the machine had) and ``docs/tuning.md`` quotes that file.

    OMP_NUM_THREADS=1 python bench/ablate_speech.py --steps 800 --tag "round 1" --only base schedule=linear
    python bench/ablate_speech.py --write-docs      # docs/tuning.md's speech table, from the results file
    python bench/ablate_speech.py --from-recipe --tag "round 3"   # rows for the runs of speech_words.py --train
    python bench/ablate_speech.py --misses runs/speech_words   # what a saved model gets wrong, token by token
    python bench/ablate_speech.py --misses runs/speech_words_seed1 --misses-out bench/results_speech_misses_seed1.json
    python bench/ablate_speech.py --onset-probe    # no GPT: onset-cut training copies vs the baseline

``--from-recipe`` runs nothing: it appends the recipe script's own runs (every seed it trained, read from
``examples/results/speech_words.json``) as rows, so the final setting's figures are not trained twice.

A setting is a name from ``SETTINGS`` or inline dotted overrides (``training.lr=0.003,backbone.depth=2``,
JSON values). The recipe's data must exist (``python examples/recipes/speech_words.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "examples" / "recipes"))
from ablate_digits import (  # noqa: E402
    add_ablation_options,
    parse_base,
    parse_setting,
    print_settings,
    run_settings,
    tables_by_round,
)
from ablate_digits import write_docs as write_tables  # noqa: E402
from ablate_text import set_dotted  # noqa: E402

SPEC = ROOT / "examples" / "speech_words.toml"
DATA = ROOT / "examples" / "data" / "speech_words"
RESULTS = ROOT / "bench" / "results_ablate_speech.json"
A = "encoders.audio."

#: setting name -> overrides (dotted key -> value) on the base spec.
SETTINGS: dict[str, dict[str, object]] = {
    "base": {},
    "steps=1600": {"training.steps": 1600},
    "lr=1e-3": {"training.lr": 1e-3},
    "lr=3e-3": {"training.lr": 3e-3},
    "schedule=linear": {"training.schedule": "linear"},
    "label_smoothing=0.1": {"heads.lm.label_smoothing": 0.1},
    "no_augmentation": {
        A + "shift_seconds": 0.0,
        A + "gain_db": 0.0,
        A + "noise_snr_db": None,
        A + "spec_augment": False,
        A + "speed_perturb": 0.0,
    },
    "no_spec_augment": {A + "spec_augment": False},
    "speed_perturb=0.1": {A + "speed_perturb": 0.1},
    "speed_perturb=0.2": {A + "speed_perturb": 0.2},
    "hop=480": {A + "hop_length": 480, A + "max_frames": 67},
    "n_mels=64": {A + "n_mels": 64},
    "encoder_depth=3": {A + "depth": 3},
    "width=128": {"backbone.width": 128, A + "dim": 128},
    "dropout=0.1": {"backbone.dropout": 0.1, A + "dropout": 0.1},
    "spec_augment=strong": {
        A + "freq_masks": 2,
        A + "freq_mask_width": 8,
        A + "time_masks": 2,
        A + "time_mask_width": 15,
    },
    "batch=64": {"training.batch_size": 64},
    # round 5: half the clips unshifted, where evaluation sees them (a word at the first sample only moves later)
    "shift_prob=0.5": {A + "shift_prob": 0.5},
    # round 5's setting (now in the spec), for --step-cost
    "ema+label_smoothing": {"training.ema": 0.999, "heads.lm.label_smoothing": 0.1},
}


def build_spec(steps: int | None, overrides: dict[str, object], seed: int) -> dict:
    data = tomllib.loads(SPEC.read_text())
    data["training"].update({"log_every": 10**6, "seed": seed})
    if steps:
        data["training"]["steps"] = steps
    for k, v in overrides.items():
        set_dotted(data, k, v)
    return data


def run_one(name: str, overrides: dict, steps: int | None, base_extra: dict, seed: int) -> dict:
    import speech_words

    from mmcore.spec import parse_spec

    data = build_spec(steps, {**base_extra, **overrides}, seed)
    spec = parse_spec(data, file=str(SPEC))
    mm = speech_words.train_and_evaluate(DATA, spec, None)
    return {"setting": name, "overrides": overrides, "base": base_extra, **run_fields(mm)}


RECIPE_RESULTS = ROOT / "examples" / "results" / "speech_words.json"


def recipe_rows(recipe: dict) -> list[dict]:
    """One row per seed the recipe script trained (``mmcore`` and ``other_seeds`` of its results file):
    the committed spec as it stands, so no overrides; with ``training.ema``, also the run's raw arm
    (:func:`run_fields`)."""
    return [
        {"setting": "final (speech_words.py --train)", "overrides": {}, "base": {}, **run_fields(run)}
        for run in [recipe["mmcore"], *recipe.get("other_seeds", [])]
    ]


def run_fields(run: dict) -> dict:
    """A result row's figures from one run of ``speech_words.train_and_evaluate``. With ``training.ema``
    the run's trained weights are scored too: ``raw`` (the spec without ema, since the averages never
    feed back; the trainer evaluated only the averages, so it has no eval loss); ``misses`` lists the
    held-out clips each arm got wrong, as ``target -> transcript``."""
    out = {
        "seed": run["seed"],
        "steps": run["steps"],
        "batch_size": run["batch_size"],
        "exact_match": round(run["exact_match"], 4),
        "eval_loss": round(run["eval_loss"], 4),
        "train_seconds": run["train_seconds_under_load"],
        "threads": run["threads"],
    }
    if "misses" in run:
        out["misses"] = [f"{m['target']} -> {m['transcript']}" for m in run["misses"]]
    if "raw" in run:
        out["raw"] = {"exact_match": round(run["raw"]["exact_match"], 4)}
        if "misses" in run["raw"]:
            out["raw"]["misses"] = [f"{m['target']} -> {m['transcript']}" for m in run["raw"]["misses"]]
    return out


MISSES = ROOT / "bench" / "results_speech_misses.json"


def token_name(proc, i: int, ends: set[int]) -> str:
    """A generated token as :func:`greedy_steps` shows it: ``<eos>`` for an end, its text, or
    ``<id N>`` when it has none on its own (a byte of a multi-byte character)."""
    if i in ends:
        return "<eos>"
    text = proc.decode([i], skip_special=False)
    return text if text and text != "\ufffd" else f"<id {i}>"


def greedy_steps(model, rows: list[dict], base: Path = DATA, max_new_tokens: int = 16) -> list[list[list]]:
    """Each record's greedy decoding step by step: ``[chosen, p, runner-up, p]`` per generated token
    (characters; ``<eos>`` for the end), the model's probabilities after the clip (and the tokens chosen
    before). What a miss looked like to the model: a confident wrong first letter, or a late end."""
    import torch

    from mmcore.generation import GenerationConfig, _Decoder, _enders, _Runner
    from mmcore.prompting import prompt_records

    recs = [{"audio": str(base / r["audio"]), "text": ""} for r in rows]
    batch = model.preprocess(prompt_records(model, recs, text_input="text", separator=True), targets=())
    model.eval()
    dec = _Decoder(model, "text", None, None)
    enders = _enders(dec, GenerationConfig(), torch.device("cpu"))
    ends = set() if enders is None else set(enders.tolist())

    def name(i: int) -> str:
        return token_name(dec.proc, i, ends)

    out: list[list[list]] = [[] for _ in rows]
    with torch.no_grad():
        x, mask, prefix_len, context = dec.prompt(batch)
        runner = _Runner(dec, x, mask, prefix_len, context, x.shape[1] + max_new_tokens, True, dec.count(batch))
        done = torch.zeros(len(rows), dtype=torch.bool)
        last = runner.step(None)
        for _ in range(max_new_tokens):
            probs = dec.logits(last).softmax(-1)
            top = probs.topk(2, -1)
            for i in torch.nonzero(~done).flatten().tolist():
                (a, b), (pa, pb) = top.indices[i].tolist(), top.values[i].tolist()
                out[i].append([name(a), round(pa, 4), name(b), round(pb, 4)])
            nxt = top.indices[:, 0]
            done |= torch.isin(nxt, enders) if enders is not None else torch.zeros_like(done)
            if bool(done.all()):
                break
            last = runner.step(nxt)
    return out


def write_misses(model_dir: Path, out: Path = MISSES, also: str = "up") -> dict:
    """The held-out clips a saved model (``mmcore.load``) transcribes wrongly, by utterance, each with
    its greedy steps (:func:`greedy_steps`); and the steps of every held-out clip of ``also``."""
    from collections import Counter

    import speech_words

    import mmcore

    model = mmcore.load(model_dir)
    rows = speech_words.transcribe(model, DATA)
    misses = [r for r in rows if r["transcript"] != r["target"]]
    keys = ("voice", "audio", "target", "transcript")
    shown = misses + [r for r in rows if r["target"] == also and r not in misses]
    steps = greedy_steps(model, shown)
    result = {
        "model": str(model_dir),
        "clips": len(rows),
        "exact_match": round(1 - len(misses) / len(rows), 4),
        "misses_by_utterance": dict(Counter(r["target"] for r in misses).most_common()),
        "misses": [{**{k: r[k] for k in keys}, "steps": st} for r, st in zip(misses, steps, strict=False)],
        f"every {also!r}": [
            {**{k: r[k] for k in keys}, "steps": st} for r, st in zip(shown, steps, strict=False) if r["target"] == also
        ],
    }
    mmcore.atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["misses_by_utterance"]))
    return result


ONSET = ROOT / "bench" / "results_speech_onset_cut.json"


def onset_cut_probe(out: Path = ONSET, seconds: float = 0.1) -> dict:
    """Does training on clips whose onset was cut teach a classifier to hear "up" as a clipped "go up"?

    No GPT trained: the recipe's baseline (logistic regression on log-mel mean+std+4 segments, the
    spec's own processor) fitted on the training clips as they are, plus a copy of each clip (a) with
    its first ``seconds`` cut and the length kept (the time shift before this round, k < 0) or (b)
    delayed by ``seconds`` of silence (the shift now); each scored on the held-out clips, with its
    confusions (target -> prediction)."""
    from collections import Counter

    import numpy as np
    import speech_words
    import torch
    from mmcore_audio import dsp
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import mmcore

    proc = mmcore.build(mmcore.load_spec(SPEC)).processors["audio"]
    c, k = proc.config, round(seconds * proc.config.sample_rate)

    def feats(rows: list[dict], edit) -> np.ndarray:
        out = []
        for r in rows:
            f = proc.log_mel(edit(proc.signal(str(DATA / r["audio"]))))  # as the processor gives them
            out.append(speech_words.statistics(f))
        return np.stack(out)

    train, held = ([json.loads(x) for x in (DATA / f"{s}.jsonl").read_text().splitlines()] for s in ("train", "eval"))
    ytr, yev = [r["target"] for r in train], np.array([r["target"] for r in held])
    lead: dict[str, list[float]] = {}
    for r in train + held:
        wave = proc.signal(str(DATA / r["audio"]))
        lead.setdefault(r["target"], []).append(1000 * dsp.leading_silence(wave) / c.sample_rate)
    xev, clean = feats(held, lambda w: w), feats(train, lambda w: w)
    copies = {
        "as they are": None,
        f"+ a copy with the first {seconds:g} s cut (length kept)": lambda w: torch.cat([w[k:], w.new_zeros(k)]),
        f"+ a copy delayed by {seconds:g} s of silence": lambda w: torch.cat([w.new_zeros(k), w]),
    }
    result: dict = {
        "what": onset_cut_probe.__doc__.split("\n")[0],
        "leading_silence_ms (min, max over all clips; dsp.leading_silence)": {
            u: [round(min(v), 1), round(max(v), 1)] for u, v in sorted(lead.items(), key=lambda kv: max(kv[1]))
        },
        "clips": len(held),
        "runs": {},
    }
    for name, edit in copies.items():
        x, y = (clean, ytr) if edit is None else (np.vstack([clean, feats(train, edit)]), ytr * 2)
        pred = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000)).fit(x, y).predict(xev)
        wrong = Counter(f"{a} -> {b}" for a, b in zip(yev, pred, strict=True) if a != b)
        result["runs"][name] = {
            "exact_match": round(float((pred == yev).mean()), 4),
            "confusions": dict(wrong.most_common()),
        }
        print(f"{name}: {(pred == yev).mean():.1%} {dict(wrong)}")
    mmcore.atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    return result


STEP_COST = ROOT / "bench" / "results_speech_step_cost.json"


def step_cost(setting: str, out: Path = STEP_COST, steps: int = 15, rounds: int = 6, warmup: int = 100) -> dict:
    """Seconds per optimizer step of the spec against the spec without ``setting`` (its overrides set to
    off: ``training.ema`` none, label smoothing 0), alternated ``rounds`` times in one process on the
    same thread, so that the machine's load falls on both alike; the medians' ratio is what the setting
    adds to the training time (the budget's idle estimate of the spec without it times that ratio)."""
    import statistics
    import time

    import torch

    import mmcore
    from mmcore.spec import parse_spec

    off = {"training.ema": None, "heads.lm.label_smoothing": 0.0}
    trainers = {}
    for arm, overrides in ((setting, {}), ("without", {k: off[k] for k in SETTINGS[setting]})):
        spec = parse_spec(build_spec(None, overrides, 0), file=str(SPEC))
        torch.manual_seed(0)
        trainers[arm] = mmcore.Trainer(mmcore.build(spec), spec.tasks, spec.training, out_dir=None, resume=False)
    for t in trainers.values():  # past the first pass's decoding of the clips it reads
        for _ in range(warmup):
            t.train_step()
    seconds: dict[str, list[float]] = {arm: [] for arm in trainers}
    for _ in range(rounds):
        for arm, t in trainers.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                t.train_step()
            seconds[arm].append(round((time.perf_counter() - t0) / steps, 4))
    med = {arm: statistics.median(v) for arm, v in seconds.items()}
    result = {
        "what": step_cost.__doc__.split("\n")[0],
        "setting": setting,
        "overrides": SETTINGS[setting],
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
        "seconds_per_step": seconds,
        "median": med,
        "ratio": round(med[setting] / med["without"], 4),
    }
    mmcore.atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return result


BEGIN, END = (
    "<!-- ablate_speech: begin (written by bench/ablate_speech.py --write-docs) -->",
    "<!-- ablate_speech: end -->",
)


def table(results: list[dict]) -> str:
    """The speech tables: a row per run, and for a run with ``training.ema`` a second row for its
    trained weights (``raw``: no eval loss of their own)."""

    def row(r: dict, ov: str, raw: bool = False) -> str:
        name, match, loss = r["setting"], r["exact_match"], f"{r['eval_loss']:.3f}"
        if raw:
            name, match, loss = f"{name}, raw weights of the same run", r["raw"]["exact_match"], "-"
        return (
            f"| {name} | {ov} | {r['seed']} | {r['steps']} | {100 * match:.1f} % | {loss} | "
            f"{r['train_seconds'] / 60:.1f} |"
        )

    return tables_by_round(
        results,
        "| setting | overrides | seed | steps | exact match (360 clips) | eval loss | train minutes (under load) |\n"
        "|---|---|---:|---:|---:|---:|---:|",
        lambda r, ov: "\n".join([row(r, ov)] + ([row(r, ov, raw=True)] if "raw" in r else [])),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=None, help="steps per run (default: the spec's)")
    add_ablation_options(p, RESULTS, write_docs_help="rewrite docs/tuning.md's speech table")
    p.add_argument(
        "--from-recipe",
        action="store_true",
        help=f"append the runs of `speech_words.py --train` (every seed in {RECIPE_RESULTS.name}) as rows, tagged",
    )
    p.add_argument(
        "--misses",
        metavar="MODEL_DIR",
        help=f"transcribe the held-out clips with a saved model; write the ones it gets wrong to {MISSES.name}",
    )
    p.add_argument(
        "--onset-probe",
        action="store_true",
        help=f'no GPT: does a classifier trained on onset-cut clips confuse "up"? writes {ONSET.name}',
    )
    p.add_argument(
        "--step-cost",
        metavar="SETTING",
        help=f"seconds per step of the spec with and without SETTING (ema, label smoothing), alternated; {STEP_COST.name}",
    )
    p.add_argument("--misses-out", default=str(MISSES), help="where --misses writes (default: %(default)s)")
    args = p.parse_args(argv)
    if args.step_cost:
        step_cost(args.step_cost)
        return 0
    if args.onset_probe:
        onset_cut_probe()
        return 0
    if args.misses:
        write_misses(Path(args.misses), Path(args.misses_out))
        return 0
    if args.write_docs:
        write_tables(json.loads(Path(args.out).read_text()), BEGIN, END, table)
        return 0
    if args.from_recipe:
        rows = recipe_rows(json.loads(RECIPE_RESULTS.read_text()))
        run_settings(["final"], list(range(len(rows))), lambda name, i: rows[i], Path(args.out), args.tag)
        return 0
    if args.list:
        print_settings(SETTINGS)
        return 0
    if not (DATA / "eval.jsonl").exists():
        sys.exit(f"no data in {DATA}: run python examples/recipes/speech_words.py first")
    base_extra = parse_base(args.base)
    out = Path(args.out)

    run_settings(
        args.only or list(SETTINGS),
        args.seeds,
        lambda name, seed: run_one(name, parse_setting(name, SETTINGS), args.steps, base_extra, seed),
        out,
        args.tag,
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
