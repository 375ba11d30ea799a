"""Real text that ships with Python: the standard library's docstrings.

Writes, under --out (default: examples/data/stdlib):

* ``corpus_train.txt`` / ``corpus_eval.txt`` -- one docstring paragraph a line, split by
  module (about 10 % of the modules are held out, so the eval text is unseen prose);
* ``topics_train.jsonl`` / ``topics_eval.jsonl`` -- topic classification: a docstring
  paragraph and the domain of the module it documents (text, network, concurrency,
  numbers); a seeded random 20 % of the paragraphs are held out;
* ``topics_train_fit.jsonl`` / ``topics_val.jsonl`` -- the training paragraphs split again for
  choosing settings without the eval split (``validation_split``: a salted hash of the text puts
  about 20 % of them in ``topics_val.jsonl``); ``bench/ablate_text.py --on validation`` trains on
  the first and scores on the second. The pretraining text keeps the validation paragraphs
  (they are training paragraphs); it never holds an eval paragraph;
* ``corpus_topics_pretrain.txt`` -- ``corpus_train.txt`` without the topic eval paragraphs:
  the unlabelled text the topics spec pretrains on before it learns the labels;
* ``corpus_topics_pretrain_more.txt`` -- more of the English technical prose Python ships:
  ``corpus_topics_pretrain.txt``, ``corpus_eval.txt``, the docstrings of the standard
  library's submodules (``email.mime.text``, ``xml.dom.pulldom``, ...) and the language
  reference's text (``pydoc_data.topics``), one paragraph a line, without any paragraph that
  is, contains or lies inside a topic eval paragraph: 2.2x the unlabelled text, measured as
  the topics pretraining in docs/tuning.md (rounds 11-12; it did not help, so the spec keeps
  ``corpus_topics_pretrain.txt``; the lm/mlm recipes read ``corpus_train.txt`` / ``corpus_eval.txt``);
* ``baselines.json`` -- the unigram perplexity of the eval corpus under the training
  corpus' byte frequencies (add-one smoothing, the byte tokenizer's framing) and the
  majority-class accuracy of the topic eval set, and the classical baselines
  (examples/recipes/baselines.py): an interpolated 5-gram byte language model's perplexity,
  a cloze byte n-gram's masked-byte accuracy, tf-idf classifiers of the topics.

    python examples/recipes/stdlib_text.py
    python examples/recipes/stdlib_text.py --train mlm runs/stdlib_mlm    # and the results file
    python examples/recipes/stdlib_text.py --train lm runs/stdlib_lm
    python examples/recipes/stdlib_text.py --train topics runs/stdlib_topics

``--train topics DIR`` trains examples/stdlib_topics.toml into DIR (its two stages: masked-LM
pretraining on ``corpus_topics_pretrain.txt``, then the labels) and writes
``examples/results/stdlib_topics.json`` beside the topic baselines. Its BPE tokenizer
(``examples/tokenizers/stdlib_topics/tokenizer.json``, 2,000 tokens) was trained on
``topics_train.jsonl`` only; ``--train-tokenizer`` retrains it.

``--train {lm,mlm} DIR`` also trains examples/stdlib_{lm,mlm}.toml into DIR and writes
``examples/results/stdlib_{lm,mlm}.json``: mmcore's held-out figure next to the baselines'.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import json
import math
import sys
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling recipe modules
import splits  # noqa: E402
from splits import in_fraction  # noqa: E402

SKIP = {
    "antigravity",
    "this",
    "idlelib",
    "tkinter",
    "turtledemo",
    "test",
    "lib2to3",
    "ensurepip",
    "pydoc_data",
    "turtle",
    "pydoc",
}
#: the topics spec's tokenizer: 2,000 byte-level BPE tokens trained on topics_train.jsonl only
TOPICS_TOKENIZER = Path(__file__).resolve().parent.parent / "tokenizers" / "stdlib_topics" / "tokenizer.json"
TOPICS = {
    "text": [
        "re",
        "string",
        "textwrap",
        "difflib",
        "unicodedata",
        "codecs",
        "html",
        "html.parser",
        "csv",
        "shlex",
        "stringprep",
        "gettext",
        "locale",
        "xml.dom.minidom",
        "xml.etree.ElementTree",
    ],
    "network": [
        "socket",
        "ssl",
        "http.client",
        "http.server",
        "http.cookiejar",
        "urllib.request",
        "urllib.parse",
        "smtplib",
        "ftplib",
        "poplib",
        "imaplib",
        "email.message",
        "email.utils",
        "ipaddress",
        "socketserver",
        "xmlrpc.client",
        "mailbox",
    ],
    "concurrency": [
        "threading",
        "asyncio",
        "asyncio.tasks",
        "asyncio.events",
        "asyncio.streams",
        "multiprocessing",
        "multiprocessing.pool",
        "concurrent.futures",
        "queue",
        "subprocess",
        "sched",
        "selectors",
        "signal",
        "asyncio.locks",
        "asyncio.queues",
    ],
    "numbers": [
        "math",
        "cmath",
        "statistics",
        "decimal",
        "fractions",
        "random",
        "numbers",
        "operator",
        "itertools",
        "functools",
        "heapq",
        "bisect",
        "array",
    ],
}


def docstrings(module_name: str) -> list[str]:
    """Paragraphs (>= 60 characters) of the docstrings of a module, its classes and their methods."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            mod = importlib.import_module(module_name)
    except Exception:
        return []
    # Dedupe by the text itself: inspect.getdoc returns a fresh string each call, so ids would
    # be reused after garbage collection and drop docstrings at random (run-to-run drift).
    seen: set[str] = set()
    out: list[str] = []

    def add(obj: object) -> None:
        doc = inspect.getdoc(obj)
        if not doc or doc in seen:
            return
        seen.add(doc)
        out.extend(paragraphs(doc))

    add(mod)
    for _, obj in sorted(inspect.getmembers(mod), key=lambda kv: kv[0]):
        if getattr(obj, "__module__", None) != mod.__name__:
            continue
        if inspect.isfunction(obj) or inspect.isclass(obj):
            add(obj)
        if inspect.isclass(obj):
            for _, meth in sorted(vars(obj).items(), key=lambda kv: kv[0]):
                if inspect.isfunction(meth):
                    add(meth)
    return out


def paragraphs(text: str) -> list[str]:
    """``text``'s blank-line separated paragraphs of >= 60 characters, whitespace joined, doctest lines dropped."""
    out = []
    for para in text.split("\n\n"):
        t = " ".join(para.split())
        if len(t) >= 60 and not t.startswith((">>>", "...")):
            out.append(t)
    return out


def submodules() -> list[str]:
    """The public submodules of the standard library's packages (not SKIP's, tests or ``__main__``), sorted."""
    import pkgutil

    names = []
    for name in sorted(sys.stdlib_module_names):
        if name in SKIP or name.startswith("_"):
            continue
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                mod = importlib.import_module(name)
        except Exception:
            continue
        for info in pkgutil.walk_packages(getattr(mod, "__path__", []), name + ".", onerror=lambda _: None):
            parts = info.name.split(".")[1:]
            if not any(p.startswith("_") or p in ("test", "tests", "idle_test") for p in parts):
                names.append(info.name)
    return sorted(names)


def more_pretraining_text(base: list[str], eval_texts: set[str]) -> list[str]:
    """``base`` and more unlabelled prose (submodules' docstrings, the language reference's topics), deduplicated
    in order, without a paragraph that equals, contains or lies inside one of ``eval_texts`` (topic eval text)."""
    import pydoc_data.topics

    extra = [t for name in submodules() for t in docstrings(name)]
    extra += [t for key in sorted(pydoc_data.topics.topics) for t in paragraphs(pydoc_data.topics.topics[key])]
    return without_eval_text([*base, *extra], eval_texts)


def without_eval_text(texts: list[str], eval_texts: set[str]) -> list[str]:
    """``texts`` in order, each once, without those that equal, contain or lie inside an eval text."""
    kept, seen = [], set()
    for t in texts:
        if t in seen or any(e in t or t in e for e in eval_texts):
            continue
        seen.add(t)
        kept.append(t)
    return kept


def held_out(name: str, fraction: float = 0.1) -> bool:
    return in_fraction(name, fraction)


def validation_split(rows: list[dict], fraction: float = 0.2) -> tuple[list[dict], list[dict]]:
    """Training rows split into (fit, validation) for choosing settings without the eval split.

    A hash of each row's text decides, salted apart from the eval split's ``held_out(text, 0.2)`` (under
    which every training row already hashes to the upper 80 %), so the split is deterministic, holds
    about ``fraction`` of the rows and depends on nothing but the text.
    """
    return splits.validation_split(rows, "text", fraction)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "data" / "stdlib"))
    p.add_argument("--train", nargs=2, metavar=("RECIPE", "DIR"), help="lm, mlm or topics, and the model directory")
    from baselines import add_other_seeds_option

    add_other_seeds_option(p, "--train topics")
    p.add_argument(
        "--train-tokenizer",
        action="store_true",
        help=f"retrain the topics spec's BPE tokenizer into {TOPICS_TOKENIZER}",
    )
    args = p.parse_args()
    if args.train and args.train[0] not in ("lm", "mlm", "topics"):
        p.error(f"--train takes lm, mlm or topics, got {args.train[0]!r}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore")

    train, evals = [], []
    for name in sorted(sys.stdlib_module_names):
        if name in SKIP or name.startswith("_"):
            continue
        (evals if held_out(name) else train).extend(docstrings(name))
    (out / "corpus_train.txt").write_text("\n".join(train) + "\n", encoding="utf-8")
    (out / "corpus_eval.txt").write_text("\n".join(evals) + "\n", encoding="utf-8")

    rows_train, rows_eval = [], []
    for topic, modules in TOPICS.items():
        for m in modules:
            for t in docstrings(m):
                row = {"text": t[:400], "label": topic}
                (rows_eval if held_out(t, 0.2) else rows_train).append(row)
    with open(out / "topics_train.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows_train)
    with open(out / "topics_eval.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows_eval)
    rows_fit, rows_val = validation_split(rows_train)
    for name, rows in (("topics_train_fit.jsonl", rows_fit), ("topics_val.jsonl", rows_val)):
        with open(out / name, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    # The topics spec's pretraining text: the training corpus without the topic eval paragraphs
    # (the corpus is split by module, the topics by paragraph, so corpus_train.txt holds them).
    held = {r["text"] for r in rows_eval}
    pretrain = [t for t in train if t[:400] not in held]
    (out / "corpus_topics_pretrain.txt").write_text("\n".join(pretrain) + "\n", encoding="utf-8")
    more = more_pretraining_text(pretrain + evals, held)
    (out / "corpus_topics_pretrain_more.txt").write_text("\n".join(more) + "\n", encoding="utf-8")
    if args.train_tokenizer:
        from language_id import train_tokenizer

        print(f"tokenizer -> {train_tokenizer([r['text'] for r in rows_train], 2000, TOPICS_TOKENIZER.parent)}")

    # Baselines. Unigram over UTF-8 bytes plus the <bos>/<eos> framing of the byte tokenizer.
    def units(lines: list[str]) -> list[int]:
        ids = []
        for line in lines:
            ids += [257, *line.encode("utf-8"), 258]
        return ids

    counts = Counter(units(train))
    vocab = 264
    total = sum(counts.values()) + vocab
    ev = units(evals)
    # Perplexity over predicted tokens (every token but each document's <bos>), as the LM head scores.
    predicted = [t for t in ev if t != 257]
    nll = -sum(math.log((counts[t] + 1) / total) for t in predicted) / len(predicted)
    topic_counts = Counter(r["label"] for r in rows_eval)
    baselines = {
        "corpus_train_docs": len(train),
        "corpus_eval_docs": len(evals),
        "unigram_eval_perplexity": math.exp(nll),
        "uniform_perplexity": vocab,
        "topics_train": len(rows_train),
        "topics_eval": len(rows_eval),
        "topics_eval_counts": dict(topic_counts),
        "topics_train_fit": len(rows_fit),
        "topics_val": len(rows_val),
        "topics_val_counts": dict(Counter(r["label"] for r in rows_val)),
        "corpus_topics_pretrain_docs": len(pretrain),
        "corpus_topics_pretrain_more_docs": len(more),
        "majority_accuracy": max(topic_counts.values()) / len(rows_eval),
        "chance_accuracy": 1 / len(TOPICS),
        "python": sys.version.split()[0],
    }
    from baselines import ByteNgram, masked_byte_accuracy, text_classifiers

    baselines["byte_5gram_eval_perplexity"] = ByteNgram(train, order=5).perplexity(evals)
    baselines["masked_bytes"] = masked_byte_accuracy(train, evals)
    baselines["topics_classical"] = text_classifiers(
        [r["text"] for r in rows_train],
        [r["label"] for r in rows_train],
        [r["text"] for r in rows_eval],
        [r["label"] for r in rows_eval],
    )
    # the same classifiers trained on the fit split and scored on the validation split: what a setting
    # chosen with bench/ablate_text.py --on validation is read against
    baselines["topics_classical_validation"] = text_classifiers(
        [r["text"] for r in rows_fit],
        [r["label"] for r in rows_fit],
        [r["text"] for r in rows_val],
        [r["label"] for r in rows_val],
    )
    from mmcore import atomic_write_text

    atomic_write_text(out / "baselines.json", json.dumps(baselines, indent=2) + "\n")
    print(json.dumps(baselines, indent=2))
    if args.train:
        train_and_report(args.train[0], args.train[1], baselines, args.other_seeds if args.train[0] == "topics" else [])


def train_and_report(objective: str, out_dir: str, baselines: dict, seeds: list[int] = ()) -> None:
    """Train examples/stdlib_{objective}.toml, write examples/results/stdlib_{objective}.json.

    ``seeds``: train the spec again from each (no output folder); their figures go beside the spec's own.
    """
    import time

    import torch
    from baselines import other_seeds, pct, write_results

    import mmcore

    spec = mmcore.load_spec(Path(__file__).resolve().parent.parent / f"stdlib_{objective}.toml")
    t0 = time.perf_counter()
    torch.manual_seed(spec.training.seed)
    model = mmcore.build(spec)
    result = mmcore.Trainer(model, spec.tasks, spec.training, out_dir=out_dir, resume=False).fit()
    task = "topics" if objective == "topics" else "pretrain"
    ev = result.eval[task]
    train_seconds = time.perf_counter() - t0
    run = {
        "seed": spec.training.seed,
        "steps": result.steps,
        "stages": [{"name": s.name, "tasks": s.tasks, "steps": s.steps} for s in spec.training.stages],
        "stop_reason": result.stop_reason,
        "batch_size": spec.training.batch_size,
        "precision": spec.training.precision,
        "threads": torch.get_num_threads(),
        "train_seconds_under_load": train_seconds,
        "final_train_loss": result.final_loss,
        **ev,
    }

    def write(others: list[dict]) -> None:
        if objective == "topics":
            topics = baselines["topics_classical"]
            figures = {
                "majority": pct(baselines["majority_accuracy"]),
                "char n-gram naive Bayes": pct(topics["char_1_4gram_tfidf_naive_bayes"]["accuracy"]),
                "word tf-idf logistic regression": pct(topics["word_tfidf_logistic_regression"]["accuracy"]),
                "mmcore": pct(ev["accuracy"]),
                **{f"mmcore, seed {o['seed']}": pct(o["accuracy"]) for o in others},
            }
            base = {
                "majority": baselines["majority_accuracy"],
                "eval_counts": baselines["topics_eval_counts"],
                **topics,
            }
        elif objective == "lm":
            figures = {
                "unigram": f"{baselines['unigram_eval_perplexity']:.1f}",
                "byte 5-gram": f"{baselines['byte_5gram_eval_perplexity']:.2f}",
                "mmcore": f"{ev['perplexity']:.2f}",
            }
            base = {k: baselines[k] for k in ("unigram_eval_perplexity", "byte_5gram_eval_perplexity")}
        else:
            mb = baselines["masked_bytes"]
            figures = {
                "most frequent byte": pct(mb["most_frequent_byte"]),
                "cloze byte n-gram": pct(mb["cloze_2+2_byte_ngram"]),
                "mmcore": pct(ev["masked_accuracy"]),
            }
            base = mb
        write_results(
            f"stdlib_{objective}",
            {"mmcore": run, **({"other_seeds": others} if others else {}), "baselines": base},
            figures,
        )

    write([])  # the spec's own run first: a results file even if the other seeds are cut short
    if seeds:
        write(other_seeds(spec, seeds, task))


if __name__ == "__main__":
    main()
