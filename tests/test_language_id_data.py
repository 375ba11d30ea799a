"""examples/recipes/language_id.py's splits and its unlabelled pretraining text, on catalogs the test writes."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

LANGS = ["de", "fr", "es", "it", "pt"]


def write_mo(path: Path, messages: dict[str, str]) -> None:
    """A GNU gettext catalog (.mo, little-endian, no hash table) holding ``messages`` (msgid -> msgstr)."""
    entries = sorted({"": "Content-Type: text/plain; charset=UTF-8\n", **messages}.items())
    ids = [k.encode() for k, _ in entries]
    strs = [v.encode() for _, v in entries]
    n = len(entries)
    start = 28 + 16 * n  # header, then the two tables of (length, offset)
    ids_at, strs_at, blob = [], [], b""
    for s in ids:
        ids_at.append((len(s), start + len(blob)))
        blob += s + b"\0"
    for s in strs:
        strs_at.append((len(s), start + len(blob)))
        blob += s + b"\0"
    head = struct.pack("<7I", 0x950412DE, 0, n, 28, 28 + 8 * n, 0, 0)
    tables = b"".join(struct.pack("<2I", *p) for p in ids_at + strs_at)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head + tables + blob)


def test_unlabelled_text_leaves_every_held_out_string_out(tmp_path):
    """The masked-LM text (langid_unlabelled.txt) holds the training strings and the strings past each
    language's draw, and none of the held-out strings, not even one another language's catalog also has."""
    shared = [f"a product name shared by every catalog, model {i:03d}" for i in range(40)]
    catalogs = {
        lang: {f"msg {i}": f"{lang} translated message number {i:04d} of the test catalog" for i in range(150)}
        for lang in LANGS
    }
    for lang, msgs in catalogs.items():
        msgs.update({f"shared {i}": s for i, s in enumerate(shared)})
        write_mo(tmp_path / "locale" / lang / "LC_MESSAGES" / "test.mo", msgs)
    out = tmp_path / "data"
    cmd = [
        sys.executable,
        str(ROOT / "examples" / "recipes" / "language_id.py"),
        "--locale-dir",
        str(tmp_path / "locale"),
    ]
    cmd += ["--out", str(out), "--per-language", "100", "--train-per-language", "150"]
    subprocess.run(cmd, check=True, capture_output=True, cwd=tmp_path)

    def texts(name: str) -> list[str]:
        return [json.loads(line)["text"] for line in (out / name).read_text(encoding="utf-8").splitlines()]

    train, held = texts("langid_train.jsonl"), set(texts("langid_eval.jsonl"))
    unlabelled = (out / "langid_unlabelled.txt").read_text(encoding="utf-8").splitlines()
    everything = {s for msgs in catalogs.values() for s in msgs.values()}
    assert held & set(shared), "the test needs a shared string among the held-out ones"
    assert not held & set(unlabelled), "held-out strings in the pretraining text"
    assert set(unlabelled) == everything - held  # the training strings and the rest of each catalog
    assert set(train) <= set(unlabelled) and len(unlabelled) == len(set(unlabelled))
