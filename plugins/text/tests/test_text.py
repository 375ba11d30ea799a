"""Tests of mmcore-text: the byte tokenizer, TextProcessor, TokenEmbedding and the plugin hook."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mmcore_text import plugin
from mmcore_text.config import ByteTextConfig
from mmcore_text.encoder import TokenEmbedding
from mmcore_text.tokenizer import TOKENIZER_FILE, ByteTokenizer, TextProcessor
from pydantic import ValidationError

from mmcore.errors import InputError, ModelDirError
from mmcore.interfaces import Encoder, Processor
from mmcore.registry import Component
from mmcore.types import Tokens

ROOT = Path(__file__).resolve().parents[1]
BOS, EOS, SEP, PAD = 257, 258, 260, 256


def proc(**options) -> TextProcessor:
    return TextProcessor(ByteTextConfig(**options))


def ids(sample) -> list[int]:
    return sample["ids"].tolist()


# --- tokenizer ----------------------------------------------------------------------


@settings(max_examples=200, deadline=None, database=None)
@given(st.text())
def test_decode_encode_round_trip(s):
    tok = ByteTokenizer()
    encoded = tok.encode(s)
    assert all(0 <= i < 256 for i in encoded)
    assert tok.decode(encoded) == s


@settings(max_examples=100, deadline=None, database=None)
@given(st.text())
def test_processor_round_trip_with_specials(s):
    p = proc(max_length=10_000)
    out = ids(p(s))
    assert out[0] == BOS and out[-1] == EOS
    assert p.decode(out) == s


def test_special_tokens():
    tok = ByteTokenizer()
    assert tok.special_tokens == {"<pad>": 256, "<bos>": 257, "<eos>": 258, "<mask>": 259, "<sep>": 260}
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id, tok.sep_id) == (256, 257, 258, 259, 260)
    assert tok.vocab_size == 264 and tok.vocab_size % 8 == 0
    # special names in the text are plain bytes, never special ids
    assert tok.encode("<eos>") == list(b"<eos>")
    assert tok.decode([BOS, *b"hi", SEP, *b"yo", EOS, PAD, 261]) == "hiyo"
    assert tok.decode([BOS, *b"hi", EOS], skip_special=False) == "<bos>hi<eos>"
    assert tok.decode([261, 263], skip_special=False) == "<reserved_0><reserved_2>"
    assert tok.decode(torch.tensor([[104, 105]])) == "hi"
    with pytest.raises(ValueError, match="264"):
        tok.decode([264])


def test_decode_invalid_utf8_replaces():
    tok = ByteTokenizer()
    assert tok.decode([0xFF, 104]) == "\ufffdh"
    euro = list("€".encode())  # 3 bytes
    assert tok.decode(euro[:2]) == "\ufffd"
    # a special token in the middle of a character splits it
    assert tok.decode([euro[0], SEP, *euro[1:]]).count("\ufffd") >= 2


def test_processor_properties():
    p = proc()
    assert isinstance(p, Processor) and p.modality == "text"
    assert (p.vocab_size, p.pad_id, p.bos_id, p.eos_id, p.mask_id) == (264, 256, 257, 258, 259)
    assert p.special_tokens["<sep>"] == 260
    out = p("hé")
    assert out["ids"].dtype == torch.long and out["ids"].shape == (5,)
    assert ids(out) == [BOS, *"hé".encode(), EOS]
    assert set(out) == {"ids"}
    assert ids(proc(add_bos=False, add_eos=False)("ab")) == [97, 98]
    assert ids(proc(add_bos=False)("")) == [EOS]


def test_augment_mask_masks_training_copies_only():
    """``augment_mask``: a training copy replaces about that fraction of a plain-text sample's tokens (never
    <bos>/<eos>) by <mask>, afresh each read; the processor itself, {prompt, target} samples and 0 leave text be."""
    import copy

    text = "the quick brown fox jumps over the lazy dog " * 20  # 880 bytes
    p = proc(max_length=1000, augment_mask=0.3)
    plain = ids(p(text))
    assert plain == ids(proc(max_length=1000)(text))  # not training: the text as is
    train = copy.copy(p)
    train.training = True
    torch.manual_seed(0)
    a, b = ids(train(text)), ids(train(text))
    for out in (a, b):
        assert len(out) == len(plain) and out[0] == BOS and out[-1] == EOS
        masked = [i for i, (x, y) in enumerate(zip(out, plain, strict=True)) if x != y]
        assert all(out[i] == 259 for i in masked)  # changed tokens became <mask>, nothing else
        assert 0.25 < len(masked) / (len(plain) - 2) < 0.35
    assert a != b  # drawn afresh each read
    pair = {"prompt": "ab" * 20, "target": "cd" * 20}
    assert ids(train(pair)) == ids(p(pair))
    off = copy.copy(proc(max_length=1000))
    off.training = True
    assert ids(off(text)) == plain
    assert p.options["augment_mask"] == 0.3 and "augment_mask" not in proc().options
    for bad in (-0.1, 1.0):
        with pytest.raises(ValidationError):
            ByteTextConfig(augment_mask=bad)


# --- truncation ---------------------------------------------------------------------


def test_truncation_right_and_left():
    s = "abcdefghij"
    assert ids(proc(max_length=6)(s)) == [BOS, *b"abcd", EOS]
    assert ids(proc(max_length=6, truncation="left")(s)) == [BOS, *b"ghij", EOS]
    assert ids(proc(max_length=12)(s)) == [BOS, *s.encode(), EOS]  # exactly fits


def test_truncation_keeps_whole_characters():
    s = "a€€"  # 1 + 3 + 3 bytes
    right = proc(max_length=7)(s)  # budget 5: "a€" (4 bytes), not a split "€"
    assert ids(right) == [BOS, *"a€".encode(), EOS]
    left = proc(max_length=7, truncation="left")(s)  # budget 5: "€" (3 bytes)
    assert ids(left) == [BOS, *"€".encode(), EOS]
    assert "\ufffd" not in right and proc().decode(left["ids"]) == "€"


def test_truncation_error_names_where_length_and_limit():
    p = proc(max_length=5, truncation="error")
    assert ids(p("abc")) == [BOS, *b"abc", EOS]
    with pytest.raises(InputError) as err:
        p("abcdef", where="train.jsonl:3 field 'text'")
    msg = str(err.value)
    assert "train.jsonl:3 field 'text'" in msg and "8 tokens" in msg and "max_length = 5" in msg


def test_config_validation():
    assert ByteTextConfig.model_validate({}) == ByteTextConfig(
        max_length=256, truncation="right", add_bos=True, add_eos=True
    )
    with pytest.raises(ValidationError, match="max_length"):
        ByteTextConfig(max_length=3)
    assert ByteTextConfig(max_length=2, add_bos=False, add_eos=False).max_length == 2
    with pytest.raises(ValidationError):
        ByteTextConfig(truncation="middle")
    with pytest.raises(ValidationError):
        ByteTextConfig(max_len=3)  # unknown keys are errors
    for name, field in ByteTextConfig.model_fields.items():
        assert field.description, name


# --- prompt / target ----------------------------------------------------------------


def test_prompt_target():
    p = proc()
    out = p({"prompt": "ab", "target": "xyz"})
    assert ids(out) == [BOS, 97, 98, SEP, *b"xyz", EOS]
    assert out["prompt_len"].shape == () and out["prompt_len"].dtype == torch.long
    assert int(out["prompt_len"]) == 4  # <bos> a b <sep>
    assert ids(out)[int(out["prompt_len"])] == ord("x")  # first target token
    gen = p({"prompt": "ab"})  # generation prompt: no target, no <eos>
    assert ids(gen) == [BOS, 97, 98, SEP] and int(gen["prompt_len"]) == 4
    nobos = proc(add_bos=False)({"prompt": "", "target": "q"})
    assert ids(nobos) == [SEP, ord("q"), EOS] and int(nobos["prompt_len"]) == 1
    plain = p({"prompt": "ab", "sep": False})  # a continuation prompt (lm-trained models): no <sep>, no <eos>
    assert ids(plain) == [BOS, 97, 98] and int(plain["prompt_len"]) == 3
    assert ids(proc(max_length=4, truncation="left")({"prompt": "abcde", "sep": False})) == [BOS, *b"cde"]
    with pytest.raises(InputError, match="'sep' is true or false"):
        p({"prompt": "ab", "target": "x", "sep": False})


def test_prompt_target_truncation():
    pair = {"prompt": "abcd", "target": "wxyz"}
    right = proc(max_length=9)(pair)  # 3 specials -> 6 bytes: prompt kept, target cut at its end
    assert ids(right) == [BOS, *b"abcd", SEP, *b"wx", EOS] and int(right["prompt_len"]) == 6
    left = proc(max_length=9, truncation="left")(pair)  # prompt cut at its start
    assert ids(left) == [BOS, *b"cd", SEP, *b"wxyz", EOS] and int(left["prompt_len"]) == 4
    short = proc(max_length=6)(pair)  # 3 bytes: the prompt only
    assert ids(short) == [BOS, *b"abc", SEP, EOS] and int(short["prompt_len"]) == 5
    far_left = proc(max_length=6, truncation="left")(pair)  # 3 bytes of the target, empty prompt
    assert ids(far_left) == [BOS, SEP, *b"xyz", EOS] and int(far_left["prompt_len"]) == 2
    with pytest.raises(InputError, match="11 tokens"):
        proc(max_length=9, truncation="error")(pair, where="r1")


def test_bad_input_errors_name_where_and_type():
    p = proc()
    with pytest.raises(InputError) as err:
        p(42, where="data.jsonl:7 field 'text'")
    msg = str(err.value)
    assert "data.jsonl:7 field 'text'" in msg and "int" in msg and "str" in msg and "prompt" in msg
    with pytest.raises(InputError, match="got keys"):
        p({"question": "a"}, where="r")
    with pytest.raises(InputError, match="'target' to be a str, got int"):
        p({"prompt": "a", "target": 3}, where="r")
    with pytest.raises(InputError, match="r: .*not valid Unicode"):
        p("a\ud800", where="r")
    assert issubclass(InputError, ValueError)


# --- collate ------------------------------------------------------------------------


def test_collate_pads_right_and_masks():
    p = proc()
    batch = p.collate([p("ab"), None, p({"prompt": "x", "target": "yz"}), p("")])
    assert set(batch) == {"ids", "mask", "prompt_len"}
    B, T = batch["ids"].shape
    assert (B, T) == (4, 6) and batch["ids"].dtype == torch.long and batch["mask"].dtype == torch.bool
    assert batch["ids"][0].tolist() == [BOS, 97, 98, EOS, PAD, PAD]
    assert batch["mask"][0].tolist() == [True] * 4 + [False] * 2
    assert not batch["mask"][1].any() and (batch["ids"][1] == PAD).all()
    assert batch["mask"][2].all()
    assert batch["ids"][3].tolist()[:2] == [BOS, EOS] and batch["mask"][3].sum() == 2
    assert batch["prompt_len"].tolist() == [0, 0, 3, 0]
    assert batch["prompt_len"].dtype == torch.long


def test_collate_all_none_and_empty():
    p = proc(add_bos=False, add_eos=False)
    batch = p.collate([None, None])
    assert batch["ids"].shape == (2, 1) and not batch["mask"].any()
    empty = p.collate([p(""), None])
    assert empty["ids"].shape == (2, 1) and not empty["mask"].any()
    assert p.collate([])["ids"].shape == (0, 1)


# --- pickling and files -------------------------------------------------------------


def test_pickle_round_trip():
    p = proc(max_length=32, truncation="left", add_eos=False)
    q = pickle.loads(pickle.dumps(p))
    assert q.options == p.options
    for value in ["hello", {"prompt": "a", "target": "b"}, "x" * 100]:
        a, b = p(value), q(value)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_save_load(tmp_path):
    p = proc(max_length=64, truncation="error")
    assert p.save(str(tmp_path)) == [TOKENIZER_FILE]
    data = json.loads((tmp_path / TOKENIZER_FILE).read_text())
    assert data["vocab_size"] == 264 and data["special_tokens"]["<eos>"] == 258
    assert data["options"] == {"max_length": 64, "truncation": "error", "add_bos": True, "add_eos": True}
    q = proc()
    q.load(str(tmp_path))
    assert q.options == p.options
    masked = proc(augment_mask=0.2)
    masked.save(str(tmp_path / "masked"))
    q.load(str(tmp_path / "masked"))
    assert q.augment_mask == 0.2 and q.options == masked.options
    data["special_tokens"]["<eos>"] = 1
    (tmp_path / TOKENIZER_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelDirError, match="special_tokens"):
        q.load(str(tmp_path))
    with pytest.raises(ModelDirError, match="missing"):
        q.load(os.path.join(tmp_path, "nowhere"))


# --- encoder ------------------------------------------------------------------------


def test_token_embedding_shapes():
    p = proc()
    enc = TokenEmbedding(ByteTextConfig(), width=16, processor=p)
    assert isinstance(enc, Encoder) and enc.modality == "text"
    assert enc.out_dim == 16 and enc.vocab_size == 264
    assert enc.token_embedding.weight.shape == (264, 16)
    assert 0.01 < enc.token_embedding.weight.std().item() < 0.03
    batch = p.collate([p("hello"), None, p("hi")])
    out = enc(batch)
    assert isinstance(out, Tokens)
    assert out.embeds.shape == (3, 7, 16) and out.mask.shape == (3, 7) and out.mask.dtype == torch.bool
    assert torch.equal(out.mask, batch["mask"])
    assert torch.equal(out.embeds[0, 0], enc.token_embedding.weight[BOS])
    assert list(enc.state_dict()) == ["token_embedding.weight"]
    assert TokenEmbedding(None, width=8).vocab_size == 264  # no processor: the byte vocabulary


# --- plugin -------------------------------------------------------------------------


def test_plugin_components_validate_defaults():
    comps = plugin.mmcore_register_components()
    assert [c.key for c in comps] == ["encoder:text.bytes", "encoder:text.bpe"]
    assert all(c.modality == "text" for c in comps)
    c = comps[0]
    assert isinstance(c, Component) and c.modality == "text"
    assert isinstance(c.config.model_validate({}), ByteTextConfig)
    processor = c.load_processor()(c.config.model_validate({}))
    encoder = c.build({}, width=8, processor=processor, encoders={})
    assert isinstance(encoder, TokenEmbedding) and encoder.out_dim == 8
    assert encoder(processor.collate([processor("ok")])).embeds.shape == (1, 4, 8)


def test_plugin_manager_registers_it():
    from mmcore.plugins import PluginManager

    pm = PluginManager(autoload=False)
    pm.register(plugin, name="text")
    assert pm.registry.get("encoder", "text.bytes").plugin == "text"


def test_entry_point_declared():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "mmcore-text"
    assert meta["project"]["entry-points"]["mmcore"] == {"text": "mmcore_text.plugin"}


def test_plugin_import_does_not_import_torch_or_tokenizers():
    # text.bpe with vocab_size given (as in a resolved or saved spec) reads no file.
    code = (
        "import sys, argparse, mmcore_text.plugin as p; comps = p.mmcore_register_components(); "
        "opts = {'text.bpe': {'tokenizer': 'nowhere/tokenizer.json', 'vocab_size': 300}}; "
        "[c.config.model_validate(opts.get(c.name, {})) for c in comps]; "
        "p.mmcore_add_commands(subparsers=argparse.ArgumentParser().add_subparsers()); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'tokenizers')); "
        "print(bad if bad else 'OK')"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "OK"
