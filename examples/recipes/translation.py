"""English -> Spanish translation on real text: the operating system's translated messages.

Debian (and most Linux distributions) install each program's translations as gettext
catalogs, /usr/share/locale/<lang>/LC_MESSAGES/*.mo: English message ids next to their
human translations. This recipe reads every Spanish catalog with Python's gettext parser
and keeps the pairs a small model can learn from:

* messages of 3-60 characters with a translation of at most 80 characters, single line, no
  printf placeholders (``%s``), keyboard accelerators (``_File``, ``&Open``) or message
  contexts, and a translation that differs from the source;
* one translation per English message (the most frequent across catalogs, ties broken
  alphabetically).

It writes a seeded split, by a hash of the English text, so a held-out message never
appears in training:

* ``mt_train.jsonl`` / ``mt_eval.jsonl``: ``{"text": "<English>", "target": "<Spanish>"}``, the
  manifest form of conditional generation (the text is the prompt, the target what the model
  learns to write after it; ``mmcore eval --generate`` scores generations against the targets);
* ``mt_corpus.txt``: both sides of the training pairs, one message a line. The spec's
  tokenizer, ``examples/tokenizers/translation_en_es/tokenizer.json`` (a byte-level BPE
  vocabulary of 2,000 tokens shared by English and Spanish; a subword model needs about a third
  of the positions a byte model needs, so it trains faster), was trained on this corpus and
  ships with the project, so the spec validates before any data exists. ``--train-tokenizer``
  trains it again (as ``mmcore tokenizer train`` does) into the data folder; point the spec's
  ``tokenizer`` there to use it;
* ``baselines.json``: counts and the BLEU/chrF of copying the English source unchanged (many
  UI strings share names, numbers and technical terms with their translation, so copying
  scores above zero; a model must beat it).

    python examples/recipes/translation.py
    mmcore train examples/translation.toml --out runs/translation
    mmcore eval runs/translation examples/data/translation/mt_eval.jsonl --max-new-tokens 64
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


def clean(text: str) -> str:
    return " ".join(text.split())


def usable(src: str, tgt: str) -> bool:
    if not (3 <= len(src) <= 60 and 1 <= len(tgt) <= 80) or src == tgt:
        return False
    if any(_PLACEHOLDER.search(t) or _ACCEL.search(t) or "\x04" in t for t in (src, tgt)):
        return False
    return 0.4 <= len(tgt) / len(src) <= 3.0 and any(c.isalpha() for c in src)


def pairs(lang: str, root: Path) -> dict[str, str]:
    seen: dict[str, Counter] = defaultdict(Counter)
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
                seen[src][tgt] += 1
    return {src: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] for src, c in seen.items()}


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
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    table = pairs(args.lang, Path(args.locale_dir))
    if len(table) < 2 * args.eval_size:
        raise SystemExit(f"too few translated messages for {args.lang!r} under {args.locale_dir}: {len(table)}")
    order = sorted(table, key=lambda s: bucket(s, "split"))  # seeded shuffle, stable across machines
    held = set(order[: args.eval_size])
    rows = {"train": [], "eval": []}
    for src in sorted(table, key=lambda s: bucket(s, "order")):
        rows["eval" if src in held else "train"].append({"text": src, "target": table[src]})
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
    (out / "baselines.json").write_text(json.dumps(stats, indent=2) + "\n")
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
