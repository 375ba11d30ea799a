"""Speech to text on synthesised speech: words and short phrases spoken by espeak-ng.

Makes the data of examples/speech_words.toml: 30 utterances (the ten digits, ten spoken
commands and ten two-word phrases), each spoken by many *voices* (an espeak-ng accent with
a voice variant, e.g. ``en-gb-scotland+f2``) at random speeds and pitches, as 16-bit WAV.
Whole voices are held out: no voice of the eval set speaks in the training set, so the
figures measure transcription of unheard speakers.

Then computes the classical baseline on the same split: logistic regression on log-mel
statistics (each band's mean and standard deviation over the clip, and its mean over four
equal time segments), features from the same audio processor the model uses. With
``--train`` it also trains the spec, generates a transcript for every held-out clip, and
writes both figures to examples/results/speech_words.json; then trains the same spec again from
each of ``--other-seeds`` (default: seed 1; only ``training.seed`` changes) and records each
seed's figure beside the first, rewriting the results file after every run.

    python examples/recipes/speech_words.py            # data + baseline
    python examples/recipes/speech_words.py --train    # + train, evaluate, write the results

espeak-ng is a Debian/Ubuntu package (``apt-get install espeak-ng``; macOS: ``brew install
espeak-ng``); the script says so and stops when it is missing.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent
DATA = EXAMPLES / "data" / "speech_words"
RESULTS = EXAMPLES / "results" / "speech_words.json"

DIGITS = "zero one two three four five six seven eight nine".split()
COMMANDS = "yes no up down left right on off stop go".split()
PHRASES = [
    "turn left",
    "turn right",
    "go up",
    "go down",
    "stop now",
    "yes please",
    "no thanks",
    "three five",
    "seven two",
    "nine one",
]
UTTERANCES = DIGITS + COMMANDS + PHRASES
ACCENTS = ["en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd"]
VARIANTS = ["m1", "m2", "m3", "m4", "f1", "f2", "f3", "f4"]
INSTALL = (
    "espeak-ng is not installed; this recipe synthesises its speech with it. Install it with "
    "`sudo apt-get install espeak-ng` (Debian/Ubuntu) or `brew install espeak-ng` (macOS), then run again."
)


def espeak() -> str:
    """The espeak-ng executable, or exit with how to install it."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        sys.exit(INSTALL)
    return exe


def make_data(
    out: Path,
    seed: int = 0,
    takes: int = 2,
    eval_voices: int = 12,
    accents: list[str] = ACCENTS,
    utterances: list[str] = UTTERANCES,
) -> dict:
    """Synthesise the clips and write train.jsonl / eval.jsonl (records: audio, target, voice).

    Every voice (accent + variant) says every utterance, ``takes`` times (once for the
    ``eval_voices`` held-out voices), each take at a random speed (120-210 words a minute)
    and pitch (25-75 of espeak-ng's 0-99).
    """
    exe = espeak()
    rng = random.Random(seed)
    voices = [f"{a}+{v}" for a in accents for v in VARIANTS]
    rng.shuffle(voices)
    held = set(voices[:eval_voices])
    (out / "wav").mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict]] = {"train": [], "eval": []}
    for vi, voice in enumerate(sorted(voices)):
        split = "eval" if voice in held else "train"
        for ui, text in enumerate(utterances):
            for take in range(takes if split == "train" else 1):
                speed, pitch = rng.randint(120, 210), rng.randint(25, 75)
                name = f"wav/v{vi:02d}_u{ui:02d}_{take}.wav"
                path = out / name
                if not path.is_file():
                    cmd = [exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text]
                    subprocess.run(cmd, check=True, capture_output=True)
                rows[split].append({"audio": name, "target": text, "voice": voice})
    for split, recs in rows.items():
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return {
        "train": {"clips": len(rows["train"]), "voices": len(voices) - len(held)},
        "eval": {"clips": len(rows["eval"]), "voices": len(held), "held_out_voices": sorted(held)},
    }


def _features(rows: list[dict], base: Path, spec_path: Path):
    """Log-mel statistics of each clip, from the spec's own audio processor."""
    import numpy as np

    import mmcore

    proc = mmcore.build(mmcore.load_spec(spec_path)).processors["audio"]
    return np.stack([statistics(proc(str(base / r["audio"]))["features"]) for r in rows])


def statistics(features):
    """One clip's (n_mels, T) log-mel features -> the baseline's vector: each band's mean and standard
    deviation over the clip, then its mean over each of four equal time segments (6 x n_mels)."""
    import numpy as np

    f = features.double()
    segments = [s.mean(1) for s in f.tensor_split(4, dim=1)]
    return np.concatenate([f.mean(1).numpy(), f.std(1).numpy(), *(s.numpy() for s in segments)])


def baseline(data: Path, spec_path: Path) -> dict:
    """Logistic regression on log-mel statistics, trained on the training voices."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train = [json.loads(x) for x in (data / "train.jsonl").read_text().splitlines()]
    held = [json.loads(x) for x in (data / "eval.jsonl").read_text().splitlines()]
    xtr, xev = _features(train, data, spec_path), _features(held, data, spec_path)
    ytr, yev = [r["target"] for r in train], [r["target"] for r in held]
    out = {}
    n_mels = xtr.shape[1] // 6
    for name, cols in (("mean+std", slice(0, 2 * n_mels)), ("mean+std+4 segments", slice(None))):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000))
        clf.fit(xtr[:, cols], ytr)
        out[f"logistic regression on log-mel {name}"] = float((clf.predict(xev[:, cols]) == yev).mean())
    return out


def transcribe(model, data: Path) -> list[dict]:
    """Each held-out record (audio, target, voice) with the model's greedy ``transcript``."""
    from mmcore.generation import GenerationConfig, generate_for_records

    rows = [json.loads(x) for x in (data / "eval.jsonl").read_text().splitlines()]
    gen = GenerationConfig(max_new_tokens=16)
    model.eval()
    preds = generate_for_records(model, [{"audio": r["audio"]} for r in rows], base=data, config=gen, batch_size=64)
    return [{**r, "transcript": p.strip()} for p, r in zip(preds, rows, strict=True)]


def exact_match(model, data: Path) -> float:
    """Share of the held-out clips whose greedy transcript is exactly the utterance."""
    return score(model, data)["exact_match"]


def score(model, data: Path) -> dict:
    """The held-out figure (``exact_match``) and the clips it misses (``misses``: voice, target,
    transcript), so that a run without a saved model still says what it got wrong."""
    rows = transcribe(model, data)
    misses = [{k: r[k] for k in ("voice", "target", "transcript")} for r in rows if r["transcript"] != r["target"]]
    return {"exact_match": 1 - len(misses) / len(rows), "misses": misses}


def train_and_evaluate(data: Path, spec, out: Path | None, seed: int | None = None) -> dict:
    """Train ``spec`` (a path or a loaded spec; ``seed`` replaces its training seed), then transcribe
    the held-out clips. With ``training.ema`` the figure is the averaged weights' (those the trainer
    evaluates and saves) and ``raw`` holds the same run's trained weights' figure: the averages never
    feed back into training, so ``raw`` is what the spec without ``training.ema`` scores."""
    import dataclasses
    from contextlib import nullcontext

    import torch

    import mmcore

    spec = mmcore.load_spec(spec) if isinstance(spec, (str, Path)) else spec
    if seed is not None:
        spec = dataclasses.replace(spec, training=spec.training.model_copy(update={"seed": seed}))
    torch.manual_seed(spec.training.seed)
    model = mmcore.build(spec)
    t0 = time.perf_counter()
    trainer = mmcore.Trainer(model, spec.tasks, spec.training, out_dir=out, resume=False)
    result = trainer.fit()
    seconds = time.perf_counter() - t0
    ema = getattr(trainer, "ema", None)
    raw = {"raw": score(model, data)} if ema is not None else {}  # after fit() the model holds the trained weights
    with ema.applied() if ema is not None else nullcontext():
        scored = score(model, data)
    return {
        "seed": spec.training.seed,
        **scored,
        **raw,
        "eval_loss": result.eval["transcribe"]["loss"],
        "steps": result.steps,
        "batch_size": spec.training.batch_size,
        "threads": torch.get_num_threads(),
        "train_seconds_under_load": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(DATA), help="data folder")
    p.add_argument("--takes", type=int, default=2, help="takes per training voice and utterance")
    p.add_argument("--eval-voices", type=int, default=12, help="voices held out for evaluation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", action="store_true", help="also train examples/speech_words.toml and write results")
    p.add_argument("--model-out", default="runs/speech_words", help="model directory (with --train)")
    from baselines import add_other_seeds_option

    add_other_seeds_option(p)
    args = p.parse_args(argv)
    data = Path(args.out)
    stats = make_data(data, args.seed, args.takes, args.eval_voices)
    print(json.dumps(stats))
    spec_path = EXAMPLES / "speech_words.toml"
    base = baseline(data, spec_path)
    for k, v in base.items():
        print(f"baseline: {k}: {v:.1%} of {stats['eval']['clips']} clips by unheard voices")
    if not args.train:
        return 0
    mm = train_and_evaluate(data, spec_path, Path(args.model_out))
    print(f"mmcore: {mm['exact_match']:.1%} of held-out clips transcribed exactly")
    from baselines import write_results

    others: list[dict] = []
    while True:  # the results file is rewritten after every run: a long run keeps what finished
        write_results(
            RESULTS.stem,
            {"data": stats, "chance": 1 / len(UTTERANCES), "baselines": base, "mmcore": mm, "other_seeds": others},
            figures(base, mm, others),
        )
        if len(others) == len(args.other_seeds):
            return 0
        seed = args.other_seeds[len(others)]  # the same spec again, only training.seed changed, no output folder
        others.append(train_and_evaluate(data, spec_path, None, seed=seed))
        print(f"mmcore, seed {seed}: {others[-1]['exact_match']:.1%}")


def figures(base: dict[str, float], mm: dict, others: list[dict] = ()) -> dict[str, str]:
    """The rows docs/tasks.md shows: mmcore's exact match (each seed's) beside each baseline."""
    from baselines import pct

    return {
        "mmcore": pct(mm["exact_match"]),
        **{f"mmcore, seed {o['seed']}": pct(o["exact_match"]) for o in others},
        **{k: pct(v) for k, v in base.items()},
    }


if __name__ == "__main__":
    sys.exit(main())
