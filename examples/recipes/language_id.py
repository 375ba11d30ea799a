"""Language identification on real text: the translated messages the operating system ships.

Debian (and most Linux distributions) install each program's translations as gettext
catalogs, /usr/share/locale/<lang>/LC_MESSAGES/*.mo. This recipe reads the translated
strings of five languages (de, fr, es, it, pt) with Python's gettext parser, keeps strings
of 20-300 characters, balances the classes, and writes a seeded 80/20 split:

* ``langid_train.jsonl`` / ``langid_eval.jsonl``: ``{"text": "...", "label": "de"}``
* ``baselines.json``: majority-class and chance accuracy of the eval split.

    python examples/recipes/language_id.py
    mmcore train examples/language_id.toml --out runs/language_id
"""

from __future__ import annotations

import argparse
import gettext
import hashlib
import json
from pathlib import Path

LANGS = ["de", "fr", "es", "it", "pt"]


def strings(lang: str, root: Path) -> list[str]:
    out = set()
    for mo in sorted((root / lang / "LC_MESSAGES").glob("*.mo")):
        try:
            with open(mo, "rb") as f:
                catalog = gettext.GNUTranslations(f)._catalog  # msgid -> msgstr
        except Exception:
            continue
        for key, value in catalog.items():
            if not key or not isinstance(value, str):
                continue
            text = " ".join(value.split())
            if 20 <= len(text) <= 300 and "%" not in text:
                out.add(text)
    return sorted(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--locale-dir", default="/usr/share/locale")
    p.add_argument("--per-language", type=int, default=1500)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "data" / "language_id"))
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = {"train": [], "eval": []}
    counts = {}
    for lang in LANGS:
        texts = strings(lang, Path(args.locale_dir))
        texts.sort(key=lambda t: hashlib.sha256(t.encode()).hexdigest())  # seeded shuffle
        texts = texts[: args.per_language]
        counts[lang] = len(texts)
        for t in texts:
            split = "eval" if int(hashlib.sha256(("split" + t).encode()).hexdigest(), 16) % 5 == 0 else "train"
            rows[split].append({"text": t, "label": lang})
    if min(counts.values()) < 100:
        raise SystemExit(f"too few translated strings under {args.locale_dir}: {counts}")
    for split, rs in rows.items():
        rs.sort(key=lambda r: hashlib.sha256(r["text"].encode()).hexdigest())
        with open(out / f"langid_{split}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rs)
    ev = [r["label"] for r in rows["eval"]]
    majority = max(ev.count(lang) for lang in LANGS) / len(ev)
    stats = {
        "strings_per_language": counts,
        "train": len(rows["train"]),
        "eval": len(ev),
        "majority_accuracy": majority,
        "chance_accuracy": 1 / len(LANGS),
    }
    (out / "baselines.json").write_text(json.dumps(stats, indent=2) + "\n")
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
