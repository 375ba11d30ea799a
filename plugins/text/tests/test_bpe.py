"""Tests of text.bpe: BPETokenizer, train_bpe and its CLI command, BPETextProcessor, and a
model with a BPE text encoder saved and loaded without its original tokenizer file."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mmcore_text.bpe import MIN_VOCAB_SIZE, SPECIAL_TOKENS, BPETokenizer, train_bpe
from mmcore_text.config import BPETextConfig
from mmcore_text.encoder import TokenEmbedding
from mmcore_text.tokenizer import TOKENIZER_FILE, BPETextProcessor, ByteTokenizer
from pydantic import ValidationError
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

import mmcore
from mmcore.errors import InputError, ModelDirError, SpecError
from mmcore.spec import parse_spec

CORPUS = (
    "The quick brown fox jumps over the lazy dog.\n"
    "Tokenizers merge frequent pairs of bytes; the merges make common words single tokens.\n"
    "Multimodal models read text, images and audio. Café, naïve, façade, jalapeño.\n"
    "日本語のテキストも少し。Ελληνικά κείμενα. Русский текст.\n"
    "  indented line\twith a tab, and the end of the line\n"
) * 20
TYPED_SPECIALS = [*SPECIAL_TOKENS, "<|endoftext|>"]


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bpe")
    corpus = d / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    return train_bpe([corpus], 400, d / "tok")


@pytest.fixture(scope="module")
def tok(tok_path) -> BPETokenizer:
    return BPETokenizer.from_file(tok_path)


@pytest.fixture(scope="module")
def gpt2_path(tmp_path_factory) -> Path:
    """A tokenizer.json in GPT-2's layout, written by the tokenizers library."""
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.post_processor = processors.ByteLevel(trim_offsets=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=350,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    t.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    path = tmp_path_factory.mktemp("gpt2") / "tokenizer.json"
    t.save(str(path))
    return path


def proc(path, **options) -> BPETextProcessor:
    return BPETextProcessor(BPETextConfig(tokenizer=str(path), **options))


def ids(sample) -> list[int]:
    return sample["ids"].tolist()


# --- tokenizer ----------------------------------------------------------------------


@settings(max_examples=200, deadline=None, database=None)
@given(st.text())
def test_decode_encode_round_trip(tok, s):
    encoded = tok.encode(s)
    assert all(0 <= i < tok.vocab_size for i in encoded)
    assert tok.decode(encoded) == s


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(st.one_of(st.text(max_size=8), st.sampled_from(TYPED_SPECIALS)), max_size=6).map("".join))
def test_special_token_text_round_trips_as_text(tok, s):
    encoded = tok.encode(s)
    assert not set(encoded) & set(tok.special_tokens.values())
    assert tok.decode(encoded) == s


@settings(max_examples=50, deadline=None, database=None)
@given(st.text())
def test_processor_round_trip_with_specials(tok_path, s):
    p = proc(tok_path, max_length=100_000)
    out = ids(p(s))
    assert out[0] == p.bos_id and out[-1] == p.eos_id
    assert p.decode(out) == s


def test_trained_special_tokens(tok):
    assert tok.special_tokens == {name: i for i, name in enumerate(SPECIAL_TOKENS)}
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id, tok.sep_id) == (0, 1, 2, 3, 4)
    assert tok.token_id("<image>") == 5 and tok.token_id("</audio>") == 8
    assert tok.added_special_tokens == ()
    assert MIN_VOCAB_SIZE <= tok.vocab_size <= 400
    # special names typed in text are text, never special ids
    assert tok.eos_id not in tok.encode("<eos>") and tok.decode(tok.encode("a<eos>b")) == "a<eos>b"
    hi = tok.encode("hi")
    assert tok.decode([tok.bos_id, *hi, tok.sep_id, tok.eos_id, tok.pad_id]) == "hi"
    assert tok.decode([tok.bos_id, *hi, tok.eos_id], skip_special=False) == "<bos>hi<eos>"
    assert tok.decode(torch.tensor([[tok.bos_id, *hi]])) == "hi"
    with pytest.raises(ValueError, match=str(tok.vocab_size)):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError):
        tok.decode([-1])
    with pytest.raises(UnicodeEncodeError):
        tok.encode("a\ud800")


def test_gpt2_layout_loads_and_gets_the_missing_specials(gpt2_path):
    raw = Tokenizer.from_file(str(gpt2_path))
    t = BPETokenizer.from_file(gpt2_path)
    eot = raw.token_to_id("<|endoftext|>")
    assert t.eos_id == eot and "<eos>" not in t.special_tokens  # <|endoftext|> serves as <eos>
    assert t.added_special_tokens == tuple(s for s in SPECIAL_TOKENS if s != "<eos>")
    assert t.vocab_size == raw.get_vocab_size() + 8  # the vocabulary grew by the added specials
    assert set(t.special_tokens) == set(t.added_special_tokens) | {"<|endoftext|>"}
    text = "The fox <|endoftext|> naïve 日本 <eos>"
    assert eot not in t.encode(text) and t.decode(t.encode(text)) == text
    p = proc(gpt2_path)
    assert p.vocab_size == t.vocab_size
    out = ids(p("fox"))
    assert out[0] == t.bos_id and out[-1] == eot and p.decode(out) == "fox"
    # the source file is left as it was
    assert raw.get_vocab_size() == Tokenizer.from_file(str(gpt2_path)).get_vocab_size()


def test_malformed_tokenizer_json_names_the_file(tmp_path, tok_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"version": "1.0", "model": {', encoding="utf-8")
    with pytest.raises(InputError, match=r"broken\.json: .*invalid JSON"):
        BPETokenizer.from_file(bad)
    data = json.loads(tok_path.read_text())
    data["model"]["merges"] = 42  # valid JSON, but not a tokenizer the library can read
    bad.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"broken\.json: not a valid tokenizer\.json"):
        BPETokenizer.from_file(bad)
    with pytest.raises(InputError, match=r"nothere\.json: tokenizer file not found"):
        BPETokenizer.from_file(tmp_path / "nothere.json")
    # loadable, but not byte-level BPE: named with the reason
    wl = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    wl.save(str(bad))
    with pytest.raises(InputError, match=r"broken\.json: not a byte-level BPE .*model is WordLevel"):
        BPETokenizer.from_file(bad)
    nfc = Tokenizer.from_file(str(tok_path))
    nfc.normalizer = normalizers.NFC()
    nfc.save(str(bad))
    with pytest.raises(InputError, match="normalizer"):
        BPETokenizer.from_file(bad)
    # in a spec or a config, the same message
    with pytest.raises(ValidationError, match=r"broken\.json"):
        BPETextConfig(tokenizer=str(bad))


# --- train_bpe and the command ------------------------------------------------------


def test_train_bpe_errors(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("some text\n")
    with pytest.raises(InputError, match="missing.txt: training file not found"):
        train_bpe([tmp_path / "missing.txt"], 300, tmp_path / "out")
    with pytest.raises(InputError, match=f"at least {MIN_VOCAB_SIZE}"):
        train_bpe([corpus], MIN_VOCAB_SIZE - 1, tmp_path / "out")
    with pytest.raises(InputError, match="no training files"):
        train_bpe([], 300, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    path = train_bpe([corpus], MIN_VOCAB_SIZE, tmp_path / "out")  # the smallest vocabulary: bytes + specials
    assert BPETokenizer.from_file(path).vocab_size == MIN_VOCAB_SIZE
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["tokenizer.json"]  # no temporary left


def mmcore_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mmcore", *args], capture_output=True, text=True, cwd=cwd, env=os.environ.copy()
    )


def test_cli_tokenizer_train(tmp_path):
    (tmp_path / "a.txt").write_text(CORPUS, encoding="utf-8")
    (tmp_path / "b.txt").write_text("more text, more merges\n" * 5, encoding="utf-8")
    res = mmcore_cli("tokenizer", "train", "a.txt", "b.txt", "--vocab-size", "320", "--out", "tok", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    t = BPETokenizer.from_file(tmp_path / "tok" / "tokenizer.json")
    assert f"vocab size: {t.vocab_size}" in res.stdout and "tokenizer.json" in res.stdout
    assert t.vocab_size == 320 and t.decode(t.encode("more text")) == "more text"
    res = mmcore_cli("tokenizer", "train", "nope.txt", "--vocab-size", "320", "--out", "t2", cwd=tmp_path)
    assert res.returncode == 1 and "error: nope.txt: training file not found" in res.stderr
    res = mmcore_cli("tokenizer", "train", "a.txt", "--vocab-size", "100", "--out", "t2", cwd=tmp_path)
    assert res.returncode == 1 and f"at least {MIN_VOCAB_SIZE}" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "t2").exists()


# --- processor ----------------------------------------------------------------------


def test_processor_frames_and_truncates_whole_characters(tok_path, tok):
    p = proc(tok_path)
    assert p.modality == "text" and p.vocab_size == tok.vocab_size
    assert (p.pad_id, p.bos_id, p.eos_id, p.sep_id) == (0, 1, 2, 4)
    hello = tok.encode("the quick")
    assert ids(p("the quick")) == [1, *hello, 2]
    out = p({"prompt": "the", "target": " quick"})
    assert ids(out) == [1, *tok.encode("the"), 4, *tok.encode(" quick"), 2]
    assert int(out["prompt_len"]) == 2 + len(tok.encode("the"))
    # "𝄞" is not in the corpus: four byte tokens, three of them continuation bytes
    clef = tok.encode("𝄞")
    assert len(clef) == 4 and [tok.starts_inside_char(i) for i in clef] == [False, True, True, True]
    a = tok.encode("a")
    right = proc(tok_path, max_length=2 + len(a) + 3)("a𝄞")
    assert ids(right) == [1, *a, 2]  # three of the four tokens would fit; the character is dropped whole
    left = proc(tok_path, max_length=2 + 4, truncation="left")("a𝄞")
    assert ids(left) == [1, *clef, 2]
    with pytest.raises(InputError, match="r1: text is"):
        proc(tok_path, max_length=4, truncation="error")("the quick brown fox", where="r1")
    with pytest.raises(InputError, match="r2: text.bpe expects a str"):
        p(3, where="r2")
    with pytest.raises(InputError, match="r3: the text is not valid Unicode"):
        p("a\ud800", where="r3")
    batch = p.collate([p("hi"), None])
    assert batch["ids"][1].tolist() == [0] * batch["ids"].shape[1] and not batch["mask"][1].any()


def test_processor_pickles_without_touching_the_file(tmp_path, tok_path):
    path = tmp_path / "tokenizer.json"
    shutil.copy(tok_path, path)
    p = proc(path, max_length=16, truncation="left")
    before = p("typed <eos> stays text")
    q = pickle.loads(pickle.dumps(p))
    path.unlink()  # the pickled processor carries its tokenizer
    after = q("typed <eos> stays text")
    assert torch.equal(before["ids"], after["ids"]) and q.options == p.options
    assert q.eos_id not in after["ids"][1:-1].tolist()
    t = pickle.loads(pickle.dumps(q.tokenizer))
    assert t.encode("<eos>") == q.tokenizer.encode("<eos>") != [q.eos_id]
    assert t.vocab_size == q.tokenizer.vocab_size and t.special_tokens == q.tokenizer.special_tokens


def test_vocab_size_padding_and_mismatch(tok_path, tok):
    cfg = BPETextConfig(tokenizer=str(tok_path))
    assert cfg.vocab_size == tok.vocab_size  # filled in from the file
    padded = proc(tok_path, vocab_size=tok.vocab_size + 3)
    assert padded.vocab_size == tok.vocab_size + 3
    hi = tok.encode("hi")
    assert padded.decode([*hi, tok.vocab_size, tok.vocab_size + 2]) == "hi"
    assert padded.decode([*hi, tok.vocab_size + 1], skip_special=False) == "hi<reserved_1>"
    with pytest.raises(ValueError):
        padded.decode([tok.vocab_size + 3])
    small = proc(tok_path, vocab_size=tok.vocab_size - 1)
    assert small.vocab_size == tok.vocab_size - 1  # building never reads the file ...
    with pytest.raises(InputError, match="more than vocab_size"):
        small("text")  # ... its first use does
    enc = TokenEmbedding(padded_cfg := BPETextConfig(tokenizer=str(tok_path), vocab_size=512), width=8)
    assert enc.vocab_size == 512 == padded_cfg.vocab_size  # no processor: the config's rows


def test_processor_save_load(tmp_path, tok_path, gpt2_path):
    p = proc(tok_path, max_length=64, truncation="error")
    saved = tmp_path / "saved"
    assert p.save(saved) == ["tokenizer.json", TOKENIZER_FILE]
    meta = json.loads((saved / TOKENIZER_FILE).read_text())
    assert meta["kind"] == "mmcore_text.bpe" and meta["vocab_size"] == p.vocab_size
    assert meta["special_tokens"]["<eos>"] == 2 and meta["options"]["truncation"] == "error"
    # a processor whose configured file no longer exists adopts the saved tokenizer and options
    q = BPETextProcessor(BPETextConfig(tokenizer=str(tmp_path / "gone.json"), vocab_size=p.vocab_size))
    q.load(saved)
    assert q.options == p.options and torch.equal(q("the fox")["ids"], p("the fox")["ids"])
    # without load, the missing file is reported on first use, with a hint
    r = BPETextProcessor(BPETextConfig(tokenizer=str(tmp_path / "gone.json"), vocab_size=p.vocab_size))
    with pytest.raises(InputError, match="gone.json: tokenizer file not found") as err:
        r("x")
    assert any("processors/<input>/tokenizer.json" in n for n in err.value.__notes__)
    # another tokenizer's directory is refused
    other = tmp_path / "other"
    proc(gpt2_path).save(other)
    with pytest.raises(ModelDirError, match="more than vocab_size|vocab_size is"):
        q.load(other)
    (saved / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelDirError, match=r"saved/tokenizer\.json: .*invalid JSON"):
        q.load(saved)
    with pytest.raises(ModelDirError, match="missing"):
        q.load(tmp_path / "nowhere")


# --- encode_batch ---------------------------------------------------------------------


@pytest.mark.parametrize("which", ["bytes", "bpe"])
def test_encode_batch(which, tok):
    t = ByteTokenizer() if which == "bytes" else tok
    texts = ["the quick brown fox", "", "naïve"]
    ids, mask = t.encode_batch(texts)
    rows = [t.encode(s) for s in texts]
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids.shape == (3, max(map(len, rows))) and mask.sum(1).tolist() == [len(r) for r in rows]
    for i, r in enumerate(rows):
        assert ids[i, : len(r)].tolist() == r and (ids[i, len(r) :] == t.pad_id).all()
    ids, mask = t.encode_batch(texts, max_length=3)  # the end is dropped, never inside a character
    assert ids.shape[1] <= 3
    for i, s in enumerate(texts):
        kept = t.decode(ids[i][mask[i]])
        assert s.startswith(kept) and "\ufffd" not in kept
    if which == "bytes":
        assert t.decode(ids[2][mask[2]]) == "na"  # "naï": the 2-byte "ï" does not fit in 3
    ids, mask = t.encode_batch(texts, max_length=5, padding="max_length")
    assert ids.shape == (3, 5)
    ids, mask = t.encode_batch(["fox", "fox"], padding=False)
    assert mask.all() and ids.shape[0] == 2
    with pytest.raises(ValueError, match="equal length"):
        t.encode_batch(["a", "a long one"], padding=False)
    with pytest.raises(TypeError):
        t.encode_batch("not a list")
    assert t.encode_batch([])[0].shape == (0, 1)


# --- a model: build, save, delete the tokenizer, load -----------------------------------


def bpe_spec(tokenizer: str) -> dict:
    return {
        "spec_version": 1,
        "name": "bpe-lm",
        "backbone": {"width": 32, "depth": 1, "heads": 2, "context_length": 64},
        "encoders": {"text": {"component": "text.bpe", "tokenizer": tokenizer, "max_length": 48}},
        "heads": {"lm": {"component": "lm"}},
    }


def test_model_save_load_without_the_original_tokenizer(tmp_path, tok_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(tok_path, work / "tokenizer.json")
    monkeypatch.chdir(work)  # a relative path resolves against the current directory
    model = mmcore.build(bpe_spec("tokenizer.json"))
    vocab = BPETokenizer.from_file(tok_path).vocab_size
    assert model.encoders["text"].vocab_size == vocab
    assert model.spec.encoders["text"].options.vocab_size == vocab
    records = [{"text": "the quick brown fox"}, {"text": "naïve <eos> text"}]
    model.eval()
    with torch.no_grad():
        expected = model(model.preprocess(records)).outputs["lm"].logits
    mmcore.save(model, tmp_path / "model")
    assert f"vocab_size = {vocab}" in (tmp_path / "model" / "spec.toml").read_text()
    assert (tmp_path / "model" / "processors" / "text" / "tokenizer.json").is_file()

    (work / "tokenizer.json").unlink()  # the original is gone
    monkeypatch.chdir(tmp_path)
    loaded = mmcore.load(tmp_path / "model")
    loaded.eval()
    with torch.no_grad():
        got = loaded(loaded.preprocess(records)).outputs["lm"].logits
    assert torch.equal(got, expected)
    p = loaded.processors["text"]
    assert p.decode(p("naïve <eos> text")["ids"]) == "naïve <eos> text"
    # a fresh spec naming the missing file is an error naming it
    with pytest.raises(SpecError, match="tokenizer.json: tokenizer file not found"):
        parse_spec(bpe_spec("tokenizer.json"))
