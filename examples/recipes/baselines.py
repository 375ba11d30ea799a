"""Classical baselines, computed on exactly the split a recipe trains and evaluates mmcore on.

Every figure a recipe reports stands next to at least one of these (docs/tasks.md shows
both; the recipe writes both to its results file under ``examples/results/``):

* :func:`image_classifiers`: logistic regression and an RBF SVM on raw pixels.
* :func:`tone_classifier`: logistic regression on the log-magnitude spectrum of a clip.
* :func:`match_by_composition`: two unimodal classifiers composed for "same digit?".
* :func:`text_classifiers`: character 1-4-gram tf-idf + multinomial naive Bayes, and word
  tf-idf + logistic regression.
* :class:`ByteNgram`: an interpolated (absolute-discounting) byte n-gram language model,
  for held-out perplexity; :func:`masked_byte_accuracy`: the cloze version (the byte
  between two contexts) for masked-LM accuracy.

scikit-learn and numpy only (the ``demo`` extra). Deterministic: fixed seeds, no network.
"""

from __future__ import annotations

import json
import math
import random
import wave
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


# --- images and tones ------------------------------------------------------------------


def load_pixels(paths: Sequence[str | Path]) -> np.ndarray:
    """(N, H*W) float in [0, 1] from grayscale image files (all the same size)."""
    from PIL import Image

    return np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.float32).ravel() / 255.0 for p in paths])


def image_classifiers(x_train: np.ndarray, y_train: Sequence, x_eval: np.ndarray, y_eval: Sequence) -> dict:
    """Held-out accuracy of logistic regression and an RBF SVM on pixels (and the fitted models)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC

    lr = LogisticRegression(max_iter=2000, C=1.0).fit(x_train, y_train)
    svm = CalibratedClassifierCV(SVC(kernel="rbf", C=10.0, gamma="scale"), ensemble=False).fit(x_train, y_train)
    return {
        "logistic_regression_pixels": float(np.mean(lr.predict(x_eval) == np.asarray(y_eval))),
        "rbf_svm_pixels": float(np.mean(svm.predict(x_eval) == np.asarray(y_eval))),
        "_models": {"lr": lr, "svm": svm},
    }


def tone_features(paths: Sequence[str | Path], n_fft: int = 512) -> np.ndarray:
    """(N, n_fft/2+1) log-magnitude spectrum of each 16-bit mono WAV (whole clip, zero-padded)."""
    rows = []
    for p in paths:
        with wave.open(str(p), "rb") as w:
            a = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
        frames = np.lib.stride_tricks.sliding_window_view(np.pad(a, (0, n_fft)), n_fft)[:: n_fft // 2]
        spec = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)).max(axis=0)
        rows.append(np.log1p(100 * spec))
    return np.stack(rows)


def tone_classifier(x_train: np.ndarray, y_train: Sequence, x_eval: np.ndarray, y_eval: Sequence) -> dict:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=3000).fit(x_train, y_train)
    return {"logistic_regression_spectrum": float(np.mean(clf.predict(x_eval) == np.asarray(y_eval))), "_model": clf}


def match_by_composition(p_image: np.ndarray, p_tone: np.ndarray, labels: Sequence[int]) -> float:
    """Accuracy of "same digit?" from two unimodal class posteriors: same when sum_d p(d|img) p(d|tone) > 1/2."""
    same = (p_image * p_tone).sum(axis=1) > 0.5
    return float(np.mean(same.astype(int) == np.asarray(labels)))


# --- text classification --------------------------------------------------------------


def text_classifiers(train: Sequence[str], y_train: Sequence, evals: Sequence[str], y_eval: Sequence) -> dict:
    """Char 1-4-gram tf-idf + multinomial NB, and word 1-2-gram tf-idf + logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.naive_bayes import MultinomialNB
    from sklearn.pipeline import make_pipeline

    out = {}
    for name, model in (
        (
            "char_1_4gram_tfidf_naive_bayes",
            make_pipeline(
                TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), sublinear_tf=True), MultinomialNB(alpha=0.01)
            ),
        ),
        (
            "word_tfidf_logistic_regression",
            make_pipeline(
                TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                LogisticRegression(C=10, max_iter=3000),
            ),
        ),
    ):
        pred = model.fit(list(train), list(y_train)).predict(list(evals))
        out[name] = {
            "accuracy": float(np.mean(pred == np.asarray(y_eval))),
            "macro_f1": float(f1_score(list(y_eval), pred, average="macro")),
        }
    return out


# --- byte n-gram language models --------------------------------------------------------

BOS, EOS, MASK = 257, 258, -1


def byte_units(line: str) -> list[int]:
    """A line as the byte tokenizer frames it: <bos>, UTF-8 bytes, <eos>."""
    return [BOS, *line.encode("utf-8"), EOS]


class ByteNgram:
    """Interpolated absolute-discounting n-gram model over byte units (vocabulary 264).

    ``p(t | h) = max(c(h,t) - d, 0) / c(h) + d * n1(h) / c(h) * p(t | h[1:])``, down to a
    uniform distribution; the standard smoothed n-gram LM (Ney, Essen and Kneser, 1994).
    """

    def __init__(self, lines: Sequence[str], order: int = 5, discount: float = 0.75, vocab: int = 264):
        self.order, self.d, self.vocab = order, discount, vocab
        self.counts: list[dict[tuple, Counter]] = [defaultdict(Counter) for _ in range(order)]
        for line in lines:
            u = byte_units(line)
            for i in range(1, len(u)):
                for k in range(order):
                    if i - k < 0:
                        break
                    self.counts[k][tuple(u[i - k : i])][u[i]] += 1

    def prob(self, history: Sequence[int], t: int) -> float:
        p = 1.0 / self.vocab
        for k in range(self.order):
            if k > len(history):
                break
            h = tuple(history[len(history) - k :]) if k else ()
            c = self.counts[k].get(h)
            if not c:
                break
            total = sum(c.values()) if not hasattr(c, "_total") else c._total
            p = max(c.get(t, 0) - self.d, 0) / total + self.d * len(c) / total * p
        return p

    def perplexity(self, lines: Sequence[str]) -> float:
        """Per-token perplexity over every token but each line's <bos> (as the lm head scores)."""
        for level in self.counts:  # cache totals
            for c in level.values():
                c._total = sum(c.values())  # type: ignore[attr-defined]
        nll, n = 0.0, 0
        for line in lines:
            u = byte_units(line)
            for i in range(1, len(u)):
                nll -= math.log(self.prob(u[max(0, i - self.order + 1) : i], u[i]))
                n += 1
        return math.exp(nll / n)


def masked_byte_accuracy(
    train: Sequence[str], evals: Sequence[str], probability: float = 0.15, context: int = 2, seed: int = 0
) -> dict:
    """Cloze n-gram: predict each masked byte from up to ``context`` bytes on each side.

    The eval lines are masked like the mlm objective does (``probability`` of the byte units,
    <bos>/<eos> included, chosen at random); a masked neighbour is unknown to the baseline too.
    The prediction backs off from (left k, right k) to (left k-1, right k-1) ... to the most
    frequent byte. Returns accuracy over masked positions and the most-frequent-byte accuracy.
    """
    tables: list[dict[tuple, Counter]] = [defaultdict(Counter) for _ in range(context + 1)]
    for line in train:
        u = byte_units(line)
        for i in range(len(u)):
            for k in range(context + 1):
                key = (tuple(u[max(0, i - k) : i]), tuple(u[i + 1 : i + 1 + k]))
                tables[k][key][u[i]] += 1
    best = {k: {key: c.most_common(1)[0][0] for key, c in tbl.items()} for k, tbl in enumerate(tables)}
    top = best[0][((), ())]
    rng = random.Random(seed)
    right = right_top = total = 0
    for line in evals:
        u = byte_units(line)
        masked = [rng.random() < probability for _ in u]
        seen = [MASK if m else t for t, m in zip(u, masked, strict=True)]
        for i, m in enumerate(masked):
            if not m:
                continue
            total += 1
            right_top += u[i] == top
            guess = top
            for k in range(context, 0, -1):
                left, rightc = tuple(seen[max(0, i - k) : i]), tuple(seen[i + 1 : i + 1 + k])
                if MASK in left or MASK in rightc:
                    continue
                g = best[k].get((left, rightc))
                if g is not None:
                    guess = g
                    break
            right += u[i] == guess
    return {
        f"cloze_{context}+{context}_byte_ngram": right / total,
        "most_frequent_byte": right_top / total,
        "masked_positions": total,
    }


def public(d: dict) -> dict:
    """``d`` without the fitted models (keys starting with ``_``), for a JSON results file."""
    return {k: (public(v) if isinstance(v, dict) else v) for k, v in d.items() if not k.startswith("_")}


# --- results files ------------------------------------------------------------------------

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"


def pct(x: float) -> str:
    """A fraction as docs/tasks.md prints it: ``0.9637`` -> ``"96.4 %"``."""
    return f"{100 * x:.1f} %"


def write_results(name: str, results: dict, figures: dict[str, str]) -> Path:
    """Write ``examples/results/<name>.json``: the raw ``results`` and the ``figures`` docs quote.

    ``figures`` maps a row label to the exact text docs/tasks.md shows for it (tests/test_docs.py
    checks that the page quotes each one).
    """
    from mmcore import atomic_write_text

    path = RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"figures": figures, **results}, indent=2, default=float) + "\n")
    print(f"results -> {path}")
    return path


def add_other_seeds_option(parser, when: str = "--train") -> None:
    """The recipes' ``--other-seeds`` option: the seeds :func:`other_seeds` trains the spec from again."""
    parser.add_argument(
        "--other-seeds",
        type=int,
        nargs="*",
        default=[1],
        help=f"with {when}: also train the spec from these seeds (the results file's spread; default: 1)",
    )


def other_seeds(spec, seeds: Sequence[int], task: str, metric: str = "accuracy") -> list[dict]:
    """Train ``spec`` again from each of ``seeds`` (no output folder), for the results file's spread.

    Each run is the recipe with only ``training.seed`` changed (initialisation, data order, masking);
    returns one ``{"seed", <the task's eval metrics>, "final_train_loss", "train_seconds_under_load"}`` per seed.
    """
    import dataclasses
    import time

    import torch

    import mmcore

    out = []
    for seed in seeds:
        run = dataclasses.replace(spec, training=spec.training.model_copy(update={"seed": seed}))
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        model = mmcore.build(run)
        result = mmcore.Trainer(model, run.tasks, run.training, resume=False).fit()
        ev = result.eval[task]
        out.append(
            {
                "seed": seed,
                **ev,
                "final_train_loss": result.final_loss,
                "train_seconds_under_load": time.perf_counter() - t0,
            }
        )
        print(f"seed {seed}: {metric} {ev[metric]:.4f}", flush=True)
    return out
