"""A Hugging Face folder's own tokenizer.json as ``text.bpe``'s tokenizer (mmcore/hf.py folders).

A tiny tokenizer shaped like Llama 3's is built with the ``tokenizers`` library (byte-level BPE
behind Llama 3's split pattern, its own special tokens inside the vocabulary, a post-processor that
prepends ``<|begin_of_text|>``) and saved beside a tiny random ``LlamaForCausalLM`` whose vocabulary
is exactly the tokenizer's. ``text.bpe``'s ``special_tokens`` option maps mmcore's roles onto the
file's tokens, so nothing is appended and the checkpoint's vocabulary fits.
"""

from __future__ import annotations

import json
import pickle

import pytest
import torch
import transformers  # a test dependency (the parity reference)
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

import mmcore
from mmcore.errors import InputError, MMCoreError, SpecError
from mmcore.hf import backbone_spec_toml

LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>"]
ROLES_TOML = 'special_tokens = {bos = "<|begin_of_text|>", eos = "<|end_of_text|>"}\n'
CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 2026, and we'll see 12345 foxes!",
    "Naïve café owners déjà vu: über straße, 東京 and Ελληνικά text.",
    "def encode(text):\n    return [ord(c) for c in text]  # comment\n",
] * 20
STRINGS = [
    "The lazy dog's 31415 naps.",
    "  leading spaces and\ttabs\n\nnewlines ",
    "déjà vu in 東京 ✓ 🙂",
    "<|end_of_text|> typed as text",
    "",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder with a Llama-3-shaped tokenizer.json and a tiny random LlamaForCausalLM of its vocabulary."""
    out = tmp_path_factory.mktemp("llama3")
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=360, min_frequency=2, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    bos = tok.token_to_id(SPECIALS[0])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SPECIALS[0]} $A", pair=f"{SPECIALS[0]} $A {SPECIALS[0]} $B", special_tokens=[(SPECIALS[0], bos)]
    )
    tok.save(str(out / "tokenizer.json"))
    vocab = tok.get_vocab_size(with_added_tokens=True)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=72,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            initializer_range=0.2,
            bos_token_id=bos,
            eos_token_id=tok.token_to_id(SPECIALS[1]),
            tie_word_embeddings=True,
        )
    ).eval()
    hf.save_pretrained(out)
    return out, hf, vocab


def _spec(tmp_path, folder, extra: str) -> str:
    hf_cfg = json.loads((folder / "config.json").read_text())
    spec = tmp_path / "spec.toml"
    spec.write_text(
        f"spec_version = 1\n[backbone]\n{backbone_spec_toml(hf_cfg)}\n"
        f'weights_from = {{path = "{folder}", format = "hf"}}\n'
        f'[encoders.text]\ncomponent = "text.bpe"\ntokenizer = "{folder / "tokenizer.json"}"\nmax_length = 48\n'
        f'{extra}[heads.lm]\ncomponent = "lm"\n'
    )
    return str(spec)


def test_special_tokens_map_roles_onto_the_folders_tokens_and_encode_like_transformers(folder, tmp_path):
    path, hf, vocab = folder
    ref = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
    bos, eos = ref.convert_tokens_to_ids(SPECIALS[:2])
    model = mmcore.build(_spec(tmp_path, path, ROLES_TOML)).eval()
    proc = model.processors["text"]
    # nothing appended: the vocabulary is the checkpoint's, the embedding loaded from the folder
    assert proc.vocab_size == vocab == proc.tokenizer.vocab_size
    assert proc.tokenizer.added_special_tokens == ()
    assert model.load_report["encoders.text"].loaded == ("token_embedding.weight",)
    assert (proc.bos_id, proc.eos_id, proc.pad_id) == (bos, eos, eos)  # pad: eos, as Hugging Face does
    assert proc.mask_id is None and proc.sep_id is None
    for s in STRINGS:
        ids = proc.encode(s)
        want = ref.encode(s, add_special_tokens=False, split_special_tokens=True)
        assert ids == want, s
        assert proc.decode(ids) == s == ref.decode(want) == proc.decode([bos, *ids, eos])
    assert len(proc.encode(STRINGS[0])) < len(STRINGS[0].encode())  # merges are used: not bytes
    # a sample is framed with the folder's own tokens; transformers prepends the same bos
    batch = model.preprocess([{"text": STRINGS[0]}], targets=())
    ids = batch.inputs["text"]["ids"]
    assert ids[0].tolist() == ref(STRINGS[0])["input_ids"] + [eos]
    with torch.no_grad():
        torch.testing.assert_close(model(batch).outputs["lm"].logits, hf(ids).logits, atol=1e-5, rtol=0)


def test_generation_decodes_with_the_folders_tokenizer(folder, tmp_path):
    path, hf, _ = folder
    ref = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
    model = mmcore.build(_spec(tmp_path, path, ROLES_TOML)).eval()
    proc = model.processors["text"]
    prompt = "The quick brown"
    batch = model.preprocess([{"text": {"prompt": prompt, "sep": False}}], targets=())
    ours = mmcore.generate(model, batch, mmcore.GenerationConfig(max_new_tokens=12, eos_id=-1))[0]
    ids = torch.tensor([ref(prompt)["input_ids"]])
    assert batch.inputs["text"]["ids"].tolist() == ids.tolist()
    with torch.no_grad():
        theirs = hf.generate(ids, do_sample=False, max_new_tokens=12, eos_token_id=None, pad_token_id=0)[
            0, ids.shape[1] :
        ]
    assert ours == theirs.tolist() and len(set(ours)) >= 4
    assert proc.decode(ours) == ref.decode(theirs, skip_special_tokens=True)


def test_without_special_tokens_the_appended_tokens_overflow_the_checkpoint(folder, tmp_path):
    path, _, vocab = folder
    with pytest.raises(SpecError, match=f"config.json vocab_size {vocab} .*special_tokens option"):
        mmcore.build(_spec(tmp_path, path, ""))


def test_special_tokens_errors_name_the_option(folder, tmp_path):
    path, _, _ = folder
    from mmcore_text.bpe import BPETokenizer

    with pytest.raises(InputError, match=r"special_tokens.eos = '</s>' is not a special token.*<\|end_of_text\|>"):
        BPETokenizer.from_file(path / "tokenizer.json", roles={"bos": SPECIALS[0], "eos": "</s>"})
    for bad, why in (({"bos": SPECIALS[0]}, "lacking: eos"), ({"bos": "a", "eos": "b", "cls": "c"}, "unknown roles")):
        with pytest.raises(SpecError, match=why):
            mmcore.build(_spec(tmp_path, path, f"special_tokens = {json.dumps(bad).replace(':', ' =')}\n"))
    model = mmcore.build(_spec(tmp_path, path, ROLES_TOML))
    with pytest.raises(InputError, match="special_tokens option"):
        model.preprocess([{"text": {"prompt": "a", "target": "b"}}])
    assert "<mask>" not in model.processors["text"].special_tokens  # what needs a mask token is refused
    corpus = tmp_path / "train.jsonl"
    corpus.write_text('{"text": "the lazy dog"}\n')
    spec = _spec(tmp_path, path, ROLES_TOML)
    with open(spec, "a") as f:
        f.write(f'[tasks.lm]\nobjective = "mlm"\ntrain = "{corpus}"\nhead = "lm"\n')
    with pytest.raises(MMCoreError, match="<mask>"):
        mmcore.build(spec)


def test_a_saved_model_keeps_the_roles(folder, tmp_path):
    path, _, vocab = folder
    model = mmcore.build(_spec(tmp_path, path, ROLES_TOML))
    mmcore.save(model, tmp_path / "saved")
    again = mmcore.load(tmp_path / "saved")
    proc = again.processors["text"]
    assert proc.vocab_size == vocab and proc.pad_id == proc.eos_id == model.processors["text"].eos_id
    assert proc.encode(STRINGS[2]) == model.processors["text"].encode(STRINGS[2])


def _qwen2_like() -> Tokenizer:
    """Byte-level BPE behind an NFC normalizer (Qwen2's layout)."""
    from tokenizers import normalizers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=360, min_frequency=2, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in ("<|endoftext|>", "<|im_start|>")])
    return tok


def _llama2_like() -> Tokenizer:
    """Sentencepiece-style BPE (Llama 2 / Mistral): "▁" for spaces, byte fallback, no ByteLevel."""
    from tokenizers import normalizers

    tok = Tokenizer(models.BPE(byte_fallback=True, fuse_unk=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        min_frequency=2,
        special_tokens=["<unk>", "<s>", "</s>"],
        show_progress=False,
    )
    tok.train_from_iterator([t.replace(" ", "▁") for t in CORPUS[:3]] * 20, trainer)
    data = json.loads(tok.to_str())  # the 256 <0xXX> byte tokens are plain vocabulary, as in Llama 2's file
    vocab = data["model"]["vocab"]
    vocab.update({f"<0x{b:02X}>": len(vocab) + b for b in range(256)})
    return Tokenizer.from_str(json.dumps(data))


@pytest.mark.parametrize(
    "make, roles",
    [
        (_qwen2_like, {"bos": "<|im_start|>", "eos": "<|endoftext|>"}),
        (_llama2_like, {"bos": "<s>", "eos": "</s>"}),
    ],
    ids=["qwen2-nfc", "llama2-byte-fallback"],
)
def test_published_layouts_encode_and_decode_like_transformers(make, roles, tmp_path):
    from mmcore_text.bpe import BPETokenizer

    path = tmp_path / "tokenizer.json"
    make().save(str(path))
    with pytest.raises(InputError, match="special_tokens option"):  # without roles: still refused
        BPETokenizer.from_file(path)
    ours = BPETokenizer.from_file(path, roles=roles)
    ref = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    nfd = "cafe\u0301 de\u0301ja\u0300"  # NFC composes these; the sentencepiece kind keeps them
    for s in [*STRINGS[:3], nfd, "ǅ 日本日本"]:
        ids = ours.encode(s)
        assert ids == ref.encode(s, add_special_tokens=False), s
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    again = pickle.loads(pickle.dumps(ours))  # DataLoader workers: the roles and the layout survive
    assert (again.pad_id, again.bos_id, again.mask_id) == (ours.eos_id, ours.bos_id, None)
    if make is _llama2_like:
        assert any(ref.convert_ids_to_tokens(i).startswith("<0x") for i in ours.encode("日本"))  # byte fallback used
        ids = ours.encode("日本日本")
        inside = [again.starts_inside_char(i) for i in ids]
        assert inside == [False] + [False, True, True] * 4  # "▁", then 3 byte tokens a character
        assert ours.decode(ours.encode_batch(["日本日本"], max_length=5)[0][0]) == "日"  # never half a character
    else:
        assert ours.decode(ours.encode(nfd)) == "café déjà"  # normalized, as transformers does


def test_auto_reads_the_roles_from_tokenizer_config_json(folder, tmp_path):
    path, _, _ = folder
    with pytest.raises(SpecError, match="tokenizer_config.json, which is missing"):
        mmcore.build(_spec(tmp_path, path, 'special_tokens = "auto"\n'))
    (path / "tokenizer_config.json").write_text(
        json.dumps(
            {"bos_token": SPECIALS[0], "eos_token": {"content": SPECIALS[1], "special": True}, "pad_token": None}
        )
    )
    try:
        model = mmcore.build(_spec(tmp_path, path, 'special_tokens = "auto"\n'))
        proc = model.processors["text"]
        ref = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
        assert (proc.bos_id, proc.eos_id, proc.pad_id) == tuple(ref.convert_tokens_to_ids([*SPECIALS[:2], SPECIALS[1]]))
        # the resolved spec records the roles, so a saved model needs no tokenizer_config.json
        assert model.spec.encoders["text"].options.special_tokens == {"bos": SPECIALS[0], "eos": SPECIALS[1]}
        (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": SPECIALS[1]}))
        with pytest.raises(SpecError, match="names no bos_token"):
            mmcore.build(_spec(tmp_path, path, 'special_tokens = "auto"\n'))
    finally:
        (path / "tokenizer_config.json").unlink()
