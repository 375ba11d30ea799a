"""English -> Spanish translation on real text: the operating system's translated messages.

Debian (and most Linux distributions) install each program's translations as gettext
catalogs, /usr/share/locale/<lang>/LC_MESSAGES/*.mo: English message ids next to their
human translations. This recipe reads every Spanish catalog with Python's gettext parser
and keeps the pairs a small model can learn from, one translation per English message (the
most frequent across catalogs, ties broken alphabetically):

* **held-out pairs** are drawn from clean messages only: 3-60 characters with a translation
  of at most 80, single line, no printf placeholders (``%s``), keyboard accelerators
  (``_File``, ``&Open``) or message contexts, a translation that differs from the source.
  The 400 with the smallest hash of their English text are held out;
* **training pairs** are every other usable message: up to 100 characters (translations up to
  140), placeholders allowed when both sides hold the same ones (``%s``, ``%d``, ``{name}``,
  ...), keyboard accelerators removed from both sides (``_Open File`` -> ``Open File``). No
  training pair has the English text of a held-out pair.

* ``mt_train.jsonl`` / ``mt_eval.jsonl``: ``{"text": "<English>", "target": "<Spanish>"}``, the
  manifest form of conditional generation (the text is the prompt, the target what the model
  learns to write after it; ``mmcore eval --generate`` scores generations against the targets);
* ``mt_corpus.txt``: both sides of the training pairs, one message a line. The spec's
  tokenizer, ``examples/tokenizers/translation_en_es/tokenizer.json`` (a byte-level BPE
  vocabulary of 2,000 tokens shared by English and Spanish; a subword model needs about a third
  of the positions a byte model needs, so it trains faster), was trained on the clean training
  pairs of an earlier version of this recipe and ships with the project, so the spec validates
  before any data exists and trained models stay comparable. ``--train-tokenizer`` trains a new
  one on ``mt_corpus.txt`` (as ``mmcore tokenizer train`` does) into the data folder; point the
  spec's ``tokenizer`` there to use it;
* ``baselines.json``: counts and the BLEU/chrF of copying the English source unchanged (many
  UI strings share names, numbers and technical terms with their translation, so copying
  scores above zero; a model must beat it), also written to the committed results file
  ``examples/results/translation_baselines.json`` (its ``figures`` are what docs/tasks.md quotes).

    python examples/recipes/translation.py
    mmcore train examples/translation.toml --out runs/translation
    mmcore eval runs/translation examples/data/translation/mt_eval.jsonl --max-new-tokens 64 --num-beams 4

``--train DIR`` also trains the spec into DIR (``--steps N`` overrides its step count, to fit a
budget), scores the 400 held-out pairs greedy and with 4 beams (``predictions_*.jsonl`` in DIR:
every translation next to its reference) and writes ``examples/results/translation.json``:
mmcore's BLEU, chrF and exact match beside the copy-the-source baseline of the same pairs.
"""

from __future__ import annotations

import argparse
import gettext
import hashlib
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

TOKENIZER = Path(__file__).resolve().parent.parent / "tokenizers" / "translation_en_es" / "tokenizer.json"
_PLACEHOLDER = re.compile(r"%|\{\w*\}|\$\w|\\")
_ACCEL = re.compile(r"(^|[^\w])[_&]\w|\w_\w*[A-Z]")
_ACCEL_MARK = re.compile(r"[_&](?=\w)")  # the marker itself: the first _ or & before a letter
_FORMAT = re.compile(r"%(?:\d+\$)?[-+ #0]*\d*(?:\.\d+)?(?:hh|h|ll|l|L|z|j|t)?[diouxXeEfFgGcsp%]|\{\w*\}|\$\{?\w+\}?")


def clean(text: str) -> str:
    return " ".join(text.split())


def usable(src: str, tgt: str) -> bool:
    if not (3 <= len(src) <= 60 and 1 <= len(tgt) <= 80) or src == tgt:
        return False
    if any(_PLACEHOLDER.search(t) or _ACCEL.search(t) or "\x04" in t for t in (src, tgt)):
        return False
    return 0.4 <= len(tgt) / len(src) <= 3.0 and any(c.isalpha() for c in src)


def strip_accelerator(text: str) -> str:
    """``_Open File`` / ``&Open File`` / ``Arc_hivo`` -> without the keyboard-accelerator marker."""
    return _ACCEL_MARK.sub("", text, count=1)


def train_pair(src: str, tgt: str) -> tuple[str, str] | None:
    """A training pair from a cleaned message: accelerators removed, placeholders checked."""
    if "\x04" in src:
        return None
    if _ACCEL.search(src):
        src, tgt = strip_accelerator(src), strip_accelerator(tgt)
    if not (3 <= len(src) <= 100 and 1 <= len(tgt) <= 140) or src == tgt or "\\" in src + tgt:
        return None
    if sorted(_FORMAT.findall(src)) != sorted(_FORMAT.findall(tgt)):  # a placeholder lost or added
        return None
    if _ACCEL.search(src) or _ACCEL.search(tgt) or not any(c.isalpha() for c in src):
        return None
    return (src, tgt) if 0.4 <= len(tgt) / len(src) <= 3.0 else None


def _most_frequent(seen: dict[str, Counter]) -> dict[str, str]:
    return {src: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] for src, c in seen.items()}


def pairs(lang: str, root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(clean pairs, the pool held-out pairs come from; training pairs), English -> translation."""
    clean_seen: dict[str, Counter] = defaultdict(Counter)
    train_seen: dict[str, Counter] = defaultdict(Counter)
    catalogs = sorted((root / lang / "LC_MESSAGES").glob("*.mo"))
    for mo in catalogs:
        try:
            with open(mo, "rb") as f:
                catalog = gettext.GNUTranslations(f)._catalog  # msgid -> msgstr
        except Exception:  # a damaged catalog: skip it, the others are enough
            continue
        for key, value in catalog.items():
            if not isinstance(key, str) or not isinstance(value, str) or "\n" in key or "\x04" in key:
                continue
            src, tgt = clean(key), clean(value)
            if usable(src, tgt):
                clean_seen[src][tgt] += 1
            pair = train_pair(src, tgt)
            if pair is not None:
                train_seen[pair[0]][pair[1]] += 1
    return _most_frequent(clean_seen), _most_frequent(train_seen)


def bucket(text: str, salt: str) -> int:
    return int(hashlib.sha256((salt + text).encode()).hexdigest(), 16)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--locale-dir", default="/usr/share/locale")
    p.add_argument("--lang", default="es", help="target language of the catalogs (default: es)")
    p.add_argument("--eval-size", type=int, default=400, help="held-out pairs (default: 400)")
    p.add_argument("--train-tokenizer", action="store_true", help="train a BPE tokenizer into OUT/bpe/ too")
    p.add_argument("--vocab-size", type=int, default=2000, help="BPE vocabulary (default: 2000)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "data" / "translation"))
    p.add_argument("--train", metavar="DIR", help="also train the spec into DIR and write the results file")
    p.add_argument("--steps", type=int, help="with --train: override the spec's training.steps")
    p.add_argument("--spec", default=str(Path(__file__).resolve().parent.parent / "translation.toml"))
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    table, train_table = pairs(args.lang, Path(args.locale_dir))
    if len(table) < 2 * args.eval_size:
        raise SystemExit(f"too few translated messages for {args.lang!r} under {args.locale_dir}: {len(table)}")
    order = sorted(table, key=lambda s: bucket(s, "split"))  # seeded shuffle, stable across machines
    held = order[: args.eval_size]
    held_keys = {h.casefold() for h in held}
    rows = {
        "eval": [{"text": src, "target": table[src]} for src in sorted(held, key=lambda s: bucket(s, "order"))],
        "train": [
            {"text": src, "target": train_table[src]}
            for src in sorted(train_table, key=lambda s: bucket(s, "order"))
            if src.casefold() not in held_keys
        ],
    }
    for split, rs in rows.items():
        tmp = out / f"mt_{split}.jsonl.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rs)
        tmp.replace(out / f"mt_{split}.jsonl")

    stats: dict[str, object] = {"language": args.lang, "train": len(rows["train"]), "eval": len(rows["eval"])}
    corpus = out / "mt_corpus.txt"
    with open(corpus, "w", encoding="utf-8") as f:
        for r in rows["train"]:
            f.write(r["text"] + "\n" + r["target"] + "\n")
    from mmcore_text.bpe import BPETokenizer, train_bpe  # the text plugin (pip install ./plugins/text)

    if args.train_tokenizer:
        tok = BPETokenizer.from_file(train_bpe([corpus], args.vocab_size, out / "bpe"))
    else:
        tok = BPETokenizer.from_file(TOKENIZER)
    stats["bpe_vocab_size"] = tok.vocab_size
    n_bytes = sum(len(r["text"].encode()) + len(r["target"].encode()) for r in rows["train"])
    n_bpe = sum(len(tok.encode(r["text"])) + len(tok.encode(r["target"])) for r in rows["train"])
    stats["bytes_per_bpe_token"] = round(n_bytes / n_bpe, 2)
    try:
        from mmcore.evaluate import text_metrics

        ev = rows["eval"]
        copy = text_metrics([r["text"] for r in ev], [r["target"] for r in ev])
        stats["copy_source_baseline"] = {k: round(v, 2) for k, v in copy.items()}
    except Exception as exc:  # sacrebleu missing: the data is still usable
        stats["copy_source_baseline"] = f"not computed: {exc}"
    from mmcore import atomic_write_text

    atomic_write_text(out / "baselines.json", json.dumps(stats, indent=2) + "\n")
    print(json.dumps(stats, indent=2))
    copy = stats["copy_source_baseline"]
    if isinstance(copy, dict):  # the copy baseline docs/tasks.md quotes, as a committed results file
        from baselines import write_results  # examples/recipes/baselines.py, beside this script

        stats["mt_eval_sha256"] = hashlib.sha256((out / "mt_eval.jsonl").read_bytes()).hexdigest()
        write_results(
            "translation_baselines",
            {"data": stats},
            {"copy BLEU": f"{copy['bleu']:.1f}", "copy chrF": f"{copy['chrf']:.1f}"},
        )
        if args.train:
            train_and_report(args.spec, args.train, args.steps, out / "mt_eval.jsonl", stats)


def commit_predictions(src: Path) -> Path:
    """Copy the 4-beam predictions (one JSON line per held-out pair: where, the English source,
    prediction, reference, exact) to examples/results/translation_predictions.jsonl, each ``where`` relative to the
    checkout, so the samples docs/tasks.md shows are checked against a committed file."""
    from mmcore import atomic_write_text

    root = Path(__file__).resolve().parents[2]
    rows, sources = [], {}
    for line in src.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        path, _, number = row["where"].rpartition(":")
        if path not in sources:
            sources[path] = Path(path).read_text(encoding="utf-8").splitlines()
        english = json.loads(sources[path][int(number) - 1])["text"]
        where = f"{Path(path).resolve().relative_to(root)}:{number}"
        rows.append(
            json.dumps(
                {"where": where, "source": english} | {k: v for k, v in row.items() if k != "where"}, ensure_ascii=False
            )
        )
    dst = root / "examples" / "results" / "translation_predictions.jsonl"
    atomic_write_text(dst, "\n".join(rows) + "\n")
    return dst


def train_and_report(spec_path: str, out_dir: str, steps: int | None, eval_file: Path, stats: dict) -> None:
    """Train the spec, score the held-out pairs greedy and with 4 beams, and write
    examples/results/translation.json (mmcore beside the copy baseline of the same pairs)."""
    import time

    import torch
    from baselines import write_results

    from mmcore.evaluate import evaluate_dir
    from mmcore.trainer import train

    t0 = time.perf_counter()
    _, result = train(spec_path, out_dir=out_dir, overrides={"steps": steps} if steps else None)
    train_seconds = time.perf_counter() - t0
    scores = {}
    for beams in (1, 4):
        t1 = time.perf_counter()
        res = evaluate_dir(
            out_dir,
            eval_file,
            max_new_tokens=64,
            num_beams=beams,
            predictions=Path(out_dir) / f"predictions_{beams}.jsonl",
        )
        scores[beams] = {**res["metrics"], "seconds": time.perf_counter() - t1}
    commit_predictions(Path(out_dir) / "predictions_4.jsonl")
    ev = result.eval.get("translate", {})
    copy = stats["copy_source_baseline"]
    figures = {"copy BLEU": f"{copy['bleu']:.1f}", "copy chrF": f"{copy['chrf']:.1f}"}
    for beams, label in ((1, "greedy"), (4, "4 beams")):
        m = scores[beams]
        figures[f"mmcore {label} BLEU"] = f"{m['bleu']:.1f}"
        figures[f"mmcore {label} chrF"] = f"{m['chrf']:.1f}"
        figures[f"mmcore {label} exact"] = f"{100 * m['exact_match']:.1f} %"
    if "perplexity" in ev:
        figures["mmcore held-out perplexity"] = f"{ev['perplexity']:.2f}"
    write_results(
        "translation",
        {
            "data": stats,
            "mmcore": {
                "steps": result.steps,
                "threads": torch.get_num_threads(),
                "train_seconds": train_seconds,
                "eval": ev,
                "greedy": scores[1],
                "beams_4": scores[4],
            },
        },
        figures,
    )


if __name__ == "__main__":
    main()
