"""Fuzzing tokenizer.json files read by the text plugin's ``text.bpe`` processor.

A valid byte-level BPE tokenizer.json (trained here with :func:`train_bpe`) is mutated as
JSON (values of other types, deleted keys, other models, odd ids in the added tokens) and as
text. Each either gives a tokenizer that encodes and decodes text with ids inside its
vocabulary, or raises :class:`mmcore.InputError` naming the file; through a spec it becomes a
:class:`mmcore.SpecError` naming the section.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from fuzzing import fuzz, record
from hypothesis import given
from hypothesis import strategies as st

from mmcore.errors import InputError, SpecError
from mmcore.spec import parse_spec

SAMPLE = "Hello wörld <eos> \u00e9\u4e2d 123 \U0001f600"


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory) -> str:
    from mmcore_text.bpe import train_bpe

    d = tmp_path_factory.mktemp("tok")
    corpus = d / "c.txt"
    corpus.write_text((ROOT / "mmcore" / "spec.py").read_text())
    return train_bpe([corpus], 300, d).read_text()


_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(), st.text(max_size=8)),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=5,
)


def _paths(tree: Any, prefix: tuple = (), depth: int = 0) -> list[tuple]:
    out = [prefix]
    if depth > 3:
        return out
    if isinstance(tree, dict):
        for k, v in list(tree.items())[:40]:
            out += _paths(v, prefix + (k,), depth + 1)
    elif isinstance(tree, list):
        for i, v in enumerate(tree[:10]):
            out += _paths(v, prefix + (i,), depth + 1)
    return out


def _mutate(doc: dict, draw: Any) -> Any:
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3), label="edits")):
        path = draw(st.sampled_from(_paths(doc)), label="path")
        op = draw(st.sampled_from(["replace", "delete", "special_id", "model_type", "added", "vocab_id"]), label="op")
        if op == "model_type" and isinstance(doc, dict) and isinstance(doc.get("model"), dict):
            doc["model"]["type"] = draw(st.sampled_from(["BPE", "WordPiece", "Unigram", "WordLevel", "X", 3]))
        elif op == "special_id" and isinstance(doc, dict) and isinstance(doc.get("added_tokens"), list):
            tokens = doc["added_tokens"]
            if tokens and isinstance(tokens[0], dict):
                i = draw(st.integers(0, len(tokens) - 1), label="token")
                if isinstance(tokens[i], dict):
                    tokens[i]["id"] = draw(st.sampled_from([-1, 0, 5, 299, 300, 10**6, 2**31, 2**40]), label="id")
        elif op == "vocab_id" and isinstance(doc, dict) and isinstance(doc.get("model"), dict):
            vocab = doc["model"].get("vocab")
            if isinstance(vocab, dict) and vocab:
                key = draw(st.sampled_from(sorted(vocab)[:50] + ["zzq"]), label="token")
                vocab[key] = draw(st.sampled_from([-1, 0, 7, 299, 300, 4000, 10**6, 2**32 - 1, 2**40]), label="id")
        elif op == "added" and isinstance(doc, dict) and isinstance(doc.get("added_tokens"), list):
            doc["added_tokens"].append(
                {
                    "id": draw(st.sampled_from([3, 300, 301, 10**5])),
                    "content": draw(st.text(max_size=6)),
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": draw(st.booleans()),
                    "special": draw(st.booleans()),
                }
            )
        elif not path:
            continue
        else:
            parent = doc
            for p in path[:-1]:
                parent = parent[p]
            if op == "delete":
                del parent[path[-1]]
            else:
                parent[path[-1]] = draw(_JSON, label="value")
    return doc


def check_tokenizer(text: str, source: str, surface: str) -> None:
    from mmcore_text.bpe import BPETokenizer

    try:
        tok = BPETokenizer.from_str(text, source=source)
    except InputError as exc:
        assert str(exc).startswith(source), exc
        record(surface, "rejected")
        return
    ids = tok.encode(SAMPLE)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert isinstance(tok.decode(ids), str)
    assert {tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id, tok.sep_id} <= set(range(tok.vocab_size))
    record(surface, "accepted")


@fuzz(30)
@given(data=st.data())
def test_mutated_tokenizer_json(tokenizer_json, data):
    doc = _mutate(json.loads(tokenizer_json), data.draw)
    check_tokenizer(json.dumps(doc), "/x/tokenizer.json", "tokenizer.json (JSON edits)")


@fuzz(30)
@given(data=st.data())
def test_tokenizer_text_corrupted(tokenizer_json, data):
    text = tokenizer_json
    i = data.draw(st.integers(0, len(text)), label="at")
    j = data.draw(st.integers(i, min(len(text), i + 50)), label="to")
    text = text[:i] + data.draw(st.text(max_size=10), label="junk") + text[j:]
    if data.draw(st.booleans(), label="truncate"):
        text = text[: data.draw(st.integers(0, len(text)), label="cut")]
    check_tokenizer(text, "/x/tokenizer.json", "tokenizer.json (text edits)")


@fuzz(15)
@given(data=st.data())
def test_mutated_tokenizer_through_a_spec(tokenizer_json, tmp_path_factory, data):
    """Through the spec: the problem is a SpecError naming the encoder section and the file."""
    path = tmp_path_factory.mktemp("spec") / "tokenizer.json"
    path.write_text(json.dumps(_mutate(json.loads(tokenizer_json), data.draw)))
    spec = {"spec_version": 1, "encoders": {"text": {"component": "text.bpe", "tokenizer": str(path)}}}
    try:
        parse_spec(spec, file="s.toml")
        record("tokenizer.json (through a spec)", "accepted")
    except SpecError as exc:
        assert any(i.path.startswith("encoders.text") for i in exc.issues), exc
        assert str(path) in str(exc)
        record("tokenizer.json (through a spec)", "rejected")


def test_tokenizer_regressions(tokenizer_json, tmp_path):
    doc = json.loads(tokenizer_json)
    # an added token with an id far beyond the vocabulary: the embedding table would have 2**40 rows
    big = copy.deepcopy(doc)
    big["model"]["vocab"]["zzq"] = 2**32 - 1  # was accepted: vocab_size 2**32 (4 GiB table in starts_inside_char)
    with pytest.raises(InputError, match="/x/tokenizer.json"):
        from mmcore_text.bpe import BPETokenizer

        BPETokenizer.from_str(json.dumps(big), source="/x/tokenizer.json")
    for token in ("<eos>", "</audio>"):  # a vocabulary entry taking a special token's id: StopIteration, KeyError
        clash = copy.deepcopy(doc)
        clash["model"]["vocab"][token] = 0
        with pytest.raises(InputError, match="/x/tokenizer.json"):
            BPETokenizer.from_str(json.dumps(clash), source="/x/tokenizer.json")
    for text in ("[" * 100_000, "", "null", "[]", '{"model": 3}'):
        check_tokenizer(text, "/x/tokenizer.json", "tokenizer.json (regressions)")
    not_a_file = tmp_path / "dir"
    not_a_file.mkdir()
    spec = {"spec_version": 1, "encoders": {"text": {"component": "text.bpe", "tokenizer": str(not_a_file)}}}
    with pytest.raises(SpecError, match="not a regular file"):
        parse_spec(spec, file="s.toml")
    assert isinstance(Path(not_a_file), Path)
