"""Parity of the backbone with Hugging Face Llama, Qwen2 and Mistral, and the folder conversion
(mmcore/hf.py): the model to follow is tests/test_gpt2_parity.py.

Everything is local: tiny random models of each family are built with transformers and saved
with ``save_pretrained`` (the Mistral one sharded) to temp folders. Each exercises what its
family adds: grouped-query attention (Llama 2 key/value heads for 4 query heads, Mistral, Qwen2
one key/value head), a feed-forward width that is no ratio of the width, Llama 3's rotary
scaling (on frequencies the tiny context reaches), Qwen2's bias on q/k/v only and its tied
head, untied heads elsewhere, a non-default RMSNorm epsilon and rotary base. The weights are
large enough (initializer_range) that greedy output varies with the prompt and the position.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers  # a test dependency (the parity reference): never skipped
from conftest import assert_greedy_matches_transformers

import mmcore
from mmcore.backbone import GPT
from mmcore.config import BackboneConfig
from mmcore.errors import SpecError
from mmcore.hf import backbone_spec_toml, config_from_hf, export_hf, load_hf_dir

VOCAB = 264  # the byte tokenizer's ids: a composed model's text.bytes encoder embeds them
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=72,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
    initializer_range=0.2,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)
FAMILIES = {
    "llama": dict(
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    ),
    "qwen2": dict(num_key_value_heads=1, rms_norm_eps=1e-6, tie_word_embeddings=True, rope_theta=1000.0),
    "mistral": dict(num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=False, sliding_window=None),
}
CLASSES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def make_family(family: str, path, seed: int = 0):
    config_cls, model_cls = CLASSES[family]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**COMMON, **FAMILIES[family])).eval()
    if family == "qwen2":  # random q/k/v biases (transformers initialises them at zero)
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.2)
    shard = {"max_shard_size": "40KB"} if family == "mistral" else {}
    model.save_pretrained(path, **shard)
    return model


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def hf_dir(request, tmp_path_factory):
    """(family, folder, transformers model)."""
    family = request.param
    path = tmp_path_factory.mktemp(family)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        model = make_family(family, path)
    return family, path, model


def prompt(B: int = 2, L: int = 40) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, L), generator=torch.Generator().manual_seed(3))


def logits_of(backbone: GPT, lm_head, idx, **kw):
    w = backbone.wte.weight if lm_head is None else lm_head
    return backbone(idx, **kw) @ w.T


# --- the folder -------------------------------------------------------------------------


def test_folders_are_as_described(hf_dir):
    family, path, _ = hf_dir
    names = sorted(p.name for p in path.iterdir())
    if family == "mistral":
        assert "model.safetensors.index.json" in names and "model.safetensors" not in names, names
        assert len([n for n in names if n.startswith("model-0000")]) >= 2, names  # sharded
    else:
        assert "model.safetensors" in names
    config, vocab, tied = config_from_hf(json.loads((path / "config.json").read_text()))
    assert (vocab, tied, config.mlp_hidden, config.kv_heads) == (
        VOCAB,
        family == "qwen2",
        72,
        FAMILIES[family]["num_key_value_heads"],
    )
    assert config.attn_bias == (family == "qwen2") and not config.bias
    assert (config.rope_scaling is not None) == (family == "llama")


def test_logits_match_transformers(hf_dir):
    family, path, hf = hf_dir
    backbone, lm_head = load_hf_dir(path)
    assert (lm_head is None) == (family == "qwen2")
    idx = prompt()
    with torch.no_grad():
        expected = hf(idx).logits
        got = logits_of(backbone, lm_head, idx)
    assert got.shape == expected.shape == (2, 40, VOCAB)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_left_padded_logits_match_transformers(hf_dir):
    """With left padding, positions restart at each row's first real token (as transformers'
    position ids from the attention mask do)."""
    family, path, hf = hf_dir
    backbone, lm_head = load_hf_dir(path)
    idx = prompt(3, 12)
    mask = torch.ones_like(idx, dtype=torch.bool)
    mask[0, :5] = False
    mask[2, :2] = False
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = hf(idx, attention_mask=mask.long(), position_ids=pos).logits
        got = logits_of(backbone, lm_head, idx, mask=mask, padding_side="left")
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-5, rtol=0)


# --- a composed model from a spec -----------------------------------------------------------


def spec_text(path, *, tied: bool, extra: str = "") -> str:
    hf = json.loads((path / "config.json").read_text())
    return (
        f"spec_version = 1\n[backbone]\n{backbone_spec_toml(hf)}\n{extra}"
        f'weights_from = {{path = "{path.name}", format = "hf"}}\n'
        '[encoders.text]\ncomponent = "text.bytes"\nmax_length = 32\n'
        f'[heads.lm]\ncomponent = "lm"\ntie = {str(tied).lower()}\n'
    )


@pytest.fixture(scope="module")
def composed(hf_dir):
    family, path, hf = hf_dir
    spec = path.parent / f"{family}.toml"
    spec.write_text(spec_text(path, tied=family == "qwen2"))
    return mmcore.build(spec).eval(), hf, family


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
def test_generate_on_a_left_padded_batch_matches_transformers(composed, use_cache):
    """``mmcore.generate`` on prompts of different lengths (left-padded inside generation; the
    decode step with grouped-query attention when cached) gives transformers' greedy tokens."""
    model, hf, family = composed
    assert_greedy_matches_transformers(model, hf, use_cache, family)


def test_build_reports_what_the_folder_filled(composed):
    model, _, family = composed
    report = model.load_report
    assert report["backbone"].format == "hf" and not report["backbone"].fresh
    assert report["encoders.text"].loaded == ("token_embedding.weight",)
    if family == "qwen2":  # tied: the head has nothing of its own; the file has no lm_head
        assert report["heads.lm"].source is None
    else:
        assert report["heads.lm"].loaded == ("proj.weight",)
    text = str(report)
    assert "(hf)" in text
    kv = FAMILIES[family]["num_key_value_heads"]
    assert f"heads 4 (key/value {kv}), feed-forward 72, vocabulary 264, context 64" in text, text


def test_mmcore_build_prints_the_loaded_sizes(hf_dir, capsys):
    from mmcore.cli import main

    family, path, _ = hf_dir
    spec = path.parent / f"{family}-cli.toml"
    spec.write_text(spec_text(path, tied=family == "qwen2"))
    assert main(["build", str(spec)]) in (0, None)
    out = capsys.readouterr().out
    assert f"{CLASSES[family][1].__name__}: width 32, depth 2" in out, out


def test_export_round_trip(composed, tmp_path):
    """export_hf writes a folder transformers loads with the same logits; sharded too."""
    model, hf, family = composed
    idx = prompt(2, 20)
    for shard in (None, 30_000):
        out = tmp_path / f"out-{shard}"
        export_hf(model, out, family=family, max_shard_size=shard)
        _, cls = CLASSES[family]
        again = cls.from_pretrained(out).eval()
        with torch.no_grad():
            torch.testing.assert_close(again(idx).logits, hf(idx).logits, atol=1e-5, rtol=0)
        assert (out / "model.safetensors.index.json").is_file() == (shard is not None)
        assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


# --- refusals ---------------------------------------------------------------------------


def test_a_spec_that_does_not_match_is_refused_listing_every_field(tmp_path):
    path = tmp_path / "llama"
    make_family("llama", path)
    hf = json.loads((path / "config.json").read_text())
    lines = backbone_spec_toml(hf).replace("width = 32", "width = 64").replace("kv_heads = 2", "kv_heads = 4")
    spec = tmp_path / "bad.toml"
    spec.write_text(
        f'spec_version = 1\n[backbone]\n{lines}\nweights_from = {{path = "{path}", format = "hf"}}\n'
        '[encoders.text]\ncomponent = "text.bytes"\n[heads.lm]\ncomponent = "lm"\n'
    )
    with pytest.raises(SpecError) as err:
        mmcore.build(spec)
    msg = str(err.value)
    assert "backbone.weights_from" in msg
    for field in ("width: spec 64, config.json 32", "kv_heads: spec 4, config.json 2", "LM head (heads.lm): spec tied"):
        assert field in msg, msg
    assert "width = 32" in msg  # the [backbone] lines that would match


def test_validate_build_reads_headers_only(hf_dir, tmp_path, monkeypatch):
    """`mmcore spec validate --build` checks the fit without reading a tensor."""
    import safetensors

    from mmcore.builder import validate_build

    family, path, _ = hf_dir
    spec = path.parent / f"{family}-validate.toml"
    spec.write_text(spec_text(path, tied=family == "qwen2"))

    def no_reads(*a, **k):
        raise AssertionError("a tensor was read")

    monkeypatch.setattr(safetensors, "safe_open", no_reads)
    validate_build(spec)


def test_unsupported_configs_are_named():
    base = {"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 1}
    base |= {"intermediate_size": 64, "vocab_size": 10}
    with pytest.raises(ValueError, match="rope scaling type 'yarn'"):
        config_from_hf(base | {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(ValueError, match="hidden_act = 'gelu'"):
        config_from_hf(base | {"hidden_act": "gelu"})
    with pytest.raises(ValueError, match="sliding_window = 16"):
        config_from_hf(base | {"model_type": "mistral", "sliding_window": 16})
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        config_from_hf(base | {"model_type": "gpt2"})
    linear, _, _ = config_from_hf(base | {"rope_scaling": {"type": "linear", "factor": 2.0}})
    assert linear.rope_scaling is not None and linear.rope_scaling.factor == 2.0


# --- backbone options on their own ----------------------------------------------------------


def test_interleaved_rope_is_half_rope_with_permuted_query_and_key_rows():
    """rope_layout = "interleaved" pairs entries (2i, 2i+1); permuting each head's q/k rows so that
    they land at (i, i + hd/2) gives the "half" model the same outputs."""
    torch.manual_seed(0)
    cfg = dict(width=32, depth=2, heads=4, kv_heads=2, positions="rope", norm="rmsnorm", mlp="swiglu", bias=False)
    cfg |= dict(init_std=0.3)
    inter = GPT(BackboneConfig(**cfg, rope_layout="interleaved"), vocab_size=50).eval()
    half = GPT(BackboneConfig(**cfg), vocab_size=50).eval()
    hd = 8
    perm = torch.cat([torch.arange(0, hd, 2), torch.arange(1, hd, 2)])  # half slot j <- interleaved entry perm[j]
    state = inter.state_dict()
    for i in range(2):
        w = state[f"blocks.{i}.attn.qkv.weight"]  # (32 + 16 + 16, 32)
        q, k, v = w.split((32, 16, 16))
        q = q.view(4, hd, 32)[:, perm].reshape(32, 32)
        k = k.view(2, hd, 32)[:, perm].reshape(16, 32)
        state[f"blocks.{i}.attn.qkv.weight"] = torch.cat([q, k, v])
    half.load_state_dict(state)
    idx = prompt(2, 16) % 50
    with torch.no_grad():
        a, b = inter(idx), half(idx)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        plain = GPT(BackboneConfig(**cfg), vocab_size=50).eval()
        plain.load_state_dict(inter.state_dict())
        assert (plain(idx) - a).abs().max() > 1e-2  # the layout matters


def test_config_fills_kv_heads_and_mlp_hidden():
    c = BackboneConfig(width=64, heads=8)
    assert (c.kv_heads, c.mlp_hidden, c.kv_width) == (8, 256, 64)
    c = BackboneConfig(width=64, heads=8, kv_heads=2, mlp_hidden=100)
    assert (c.kv_width, c.mlp_hidden, round(c.mlp_ratio * 64)) == (16, 100, 100)
    assert BackboneConfig(**c.model_dump()) == c  # a resolved spec reads back
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        BackboneConfig(width=64, heads=8, kv_heads=3)
    with pytest.raises(ValueError, match="disagree"):
        BackboneConfig(width=64, heads=8, mlp_ratio=2.0, mlp_hidden=100)
    cache = GPT(BackboneConfig(width=64, heads=8, kv_heads=2, depth=1), vocab_size=5).new_cache(3, 10)
    assert tuple(cache.k.shape) == (1, 3, 2, 10, 8)


def test_the_folders_tokenizer_json_is_the_text_encoders_tokenizer(tmp_path):
    """text.bpe reads a byte-level BPE tokenizer.json; pointed at the folder's own, its vocabulary
    is the checkpoint's and the spec builds, the embedding filled from the folder. A vocabulary that
    differs is refused with both sizes."""
    from mmcore_text.bpe import BPETokenizer, train_bpe

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 50)
    folder = tmp_path / "llama"
    train_bpe([corpus], 300, folder)  # writes folder/tokenizer.json
    vocab = BPETokenizer.from_file(folder / "tokenizer.json").vocab_size
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(**(COMMON | {"vocab_size": vocab}), num_key_value_heads=2, tie_word_embeddings=True)
    ).eval()
    hf.save_pretrained(folder)
    hf_cfg = json.loads((folder / "config.json").read_text())
    spec = tmp_path / "spec.toml"
    for rows, ok in ((None, True), (vocab + 8, False)):
        padded = "" if rows is None else f"vocab_size = {rows}\n"
        spec.write_text(
            f"spec_version = 1\n[backbone]\n{backbone_spec_toml(hf_cfg)}\n"
            f'weights_from = {{path = "{folder}", format = "hf"}}\n'
            f'[encoders.text]\ncomponent = "text.bpe"\ntokenizer = "{folder / "tokenizer.json"}"\nmax_length = 32\n{padded}'
            '[heads.lm]\ncomponent = "lm"\n'
        )
        if not ok:
            with pytest.raises(
                SpecError, match=f"vocabulary \\(encoders.text\\): spec {vocab + 8}, config.json vocab_size {vocab}"
            ):
                mmcore.build(spec)
            continue
        model = mmcore.build(spec).eval()
        assert model.load_report["encoders.text"].loaded == ("token_embedding.weight",)
        batch = model.preprocess([{"text": "the lazy fox"}], targets=())
        ids = batch.inputs["text"]["ids"]
        with torch.no_grad():
            ours = model(batch).outputs["lm"].logits  # (1, N, V): the tokenizer's ids through the folder's model
            theirs = hf(ids).logits
        assert ids.shape[1] >= 5
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_mmcore_export_hf_writes_a_folder_transformers_reads(composed, tmp_path, capsys):
    from mmcore.cli import main

    model, hf, family = composed
    mmcore.save(model, tmp_path / "model")
    out = tmp_path / "hf"
    assert main(["export", str(tmp_path / "model"), "--out", str(out), "--hf", family, "--max-shard-mb", "0.02"]) == 0
    assert json.loads(capsys.readouterr().out)["family"] == family
    again = CLASSES[family][1].from_pretrained(out).eval()
    idx = prompt(2, 20)
    with torch.no_grad():
        torch.testing.assert_close(again(idx).logits, hf(idx).logits, atol=1e-5, rtol=0)
    assert (out / "model.safetensors.index.json").is_file()
    other = "qwen2" if family != "qwen2" else "llama"  # the other family's q/k/v bias differs
    assert main(["export", str(tmp_path / "model"), "--out", str(tmp_path / "x"), "--hf", other]) != 0
    assert "qkv bias" in capsys.readouterr().err


def test_a_folder_without_safetensors_or_with_a_lying_index_is_refused(tmp_path):
    import shutil

    from mmcore.weights import folder_tensors

    path = tmp_path / "mistral"
    make_family("mistral", path)  # sharded
    bad = tmp_path / "pickles"
    bad.mkdir()
    shutil.copy(path / "config.json", bad / "config.json")
    (bad / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin: pickle checkpoints are never loaded"):
        load_hf_dir(bad)
    lying = tmp_path / "lying"
    shutil.copytree(path, lying)
    index = json.loads((lying / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (lying / shard).unlink()
    with pytest.raises(FileNotFoundError, match=f"missing from the folder: {shard}"):
        folder_tensors(lying)
    index["weight_map"]["model.norm.weight"] = "../elsewhere.safetensors"
    (lying / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="plain file names"):
        folder_tensors(lying)


def test_a_folder_given_without_format_hf_says_how(hf_dir, tmp_path):
    family, path, _ = hf_dir
    spec = tmp_path / "spec.toml"
    spec.write_text(spec_text(path, tied=family == "qwen2").replace('format = "hf"', 'format = "auto"'))
    spec.write_text(spec.read_text().replace(f'path = "{path.name}"', f'path = "{path}"'))
    with pytest.raises(SpecError, match="is a directory.*with format = 'hf'"):
        mmcore.build(spec)


def test_explanations_attention_maps_equal_transformers_with_grouped_query_attention(hf_dir):
    """explain's recorded attention (softmax(q k^T / sqrt(hd)), averaged over heads) reads the
    key/value head each query head shares: equal to transformers' eager attention weights."""
    from mmcore.explain import _AttentionRecorder

    family, path, _ = hf_dir
    backbone, _ = load_hf_dir(path)
    hf = CLASSES[family][1].from_pretrained(path, attn_implementation="eager").eval()
    idx = prompt(2, 12)
    rec = _AttentionRecorder(backbone, [0, 1])
    try:
        with torch.no_grad():
            backbone(idx)
            ref = hf(idx, output_attentions=True).attentions
    finally:
        rec.close()
    for i in (0, 1):
        torch.testing.assert_close(rec.maps[i], ref[i].mean(1), atol=1e-5, rtol=0)


def test_a_classifier_on_a_folders_backbone_leaves_its_lm_head_out(tmp_path):
    """Without an LM head in the spec, the folder's lm_head.weight is ignored (and said so); the
    backbone and the embedding load."""
    path = tmp_path / "llama"
    make_family("llama", path)
    hf = json.loads((path / "config.json").read_text())
    spec = tmp_path / "spec.toml"
    spec.write_text(
        f'spec_version = 1\n[backbone]\n{backbone_spec_toml(hf)}\nweights_from = {{path = "{path}", format = "hf"}}\n'
        '[encoders.text]\ncomponent = "text.bytes"\nmax_length = 32\n'
        '[heads.label]\ncomponent = "classify"\nnum_classes = 3\n'
    )
    report = mmcore.build(spec).load_report
    assert report["encoders.text"].loaded == ("token_embedding.weight",)
    assert ("lm_head.weight", "no LM head in the spec") in report["backbone"].ignored
