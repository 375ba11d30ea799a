"""Parity of the backbone with Hugging Face GPT-2, and the checkpoint conversion (mmcore/gpt2.py).

Everything is local: tiny randomly initialised GPT2LMHeadModels are saved to temp dirs. Decoding
parity runs `mmcore.generate` on a model composed from one (see `composed`) whose greedy output
varies with the prompt and the position.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers  # a test dependency (the parity reference): never skipped
from conftest import assert_greedy_matches_transformers
from safetensors.torch import load_file, save_file

from mmcore.backbone import GPT
from mmcore.config import BackboneConfig
from mmcore.gpt2 import (
    WeightsMismatchError,
    config_from_hf,
    hf_to_mmcore,
    load_gpt2_dir,
    mmcore_to_hf,
    save_gpt2_dir,
)

HF_CONFIG = dict(n_embd=64, n_layer=2, n_head=4, n_positions=128, vocab_size=1000)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """(path, model): a random GPT2LMHeadModel in eval mode, saved as safetensors."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        torch.manual_seed(0)
        # No bos/eos: GPT-2's 50256 is outside this vocabulary, and greedy decoding must run 20 steps.
        config = transformers.GPT2Config(**HF_CONFIG, bos_token_id=None, eos_token_id=None)
        model = transformers.GPT2LMHeadModel(config).eval()
        path = tmp_path_factory.mktemp("gpt2")
        model.save_pretrained(path, safe_serialization=True)
    assert (path / "model.safetensors").is_file()
    return path, model


def lm_logits(backbone: GPT, idx: torch.Tensor, **kwargs) -> torch.Tensor:
    return backbone(idx, **kwargs) @ backbone.wte.weight.T  # (B, L, V)


def prompt(B: int = 2, L: int = 9) -> torch.Tensor:
    return torch.randint(0, HF_CONFIG["vocab_size"], (B, L), generator=torch.Generator().manual_seed(3))


def copy_dir(src, dst, state: dict[str, torch.Tensor]):
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


# --- loading ----------------------------------------------------------------------------


def test_config_from_hf(hf_dir):
    path, _ = hf_dir
    config, vocab = config_from_hf(json.loads((path / "config.json").read_text()))
    assert vocab == 1000
    assert (config.width, config.depth, config.heads, config.context_length) == (64, 2, 4, 128)
    assert (config.mlp, config.positions, config.norm, config.bias, config.dropout) == (
        "gelu_tanh",
        "learned",
        "layernorm",
        True,
        0.0,
    )
    assert config.mlp_hidden == 256
    assert config_from_hf({"n_embd": 768, "n_inner": 1000, "n_head": 12})[0].mlp_hidden == 1000
    with pytest.raises(ValueError, match="activation_function 'relu'"):
        config_from_hf({"activation_function": "relu"})
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        config_from_hf({"scale_attn_by_inverse_layer_idx": True})


def test_logits_match_transformers(hf_dir):
    path, hf = hf_dir
    backbone, lm_head = load_gpt2_dir(path)
    assert lm_head is None  # tied
    assert not backbone.training
    idx = prompt()
    with torch.no_grad():
        expected = hf(idx).logits
        got = lm_logits(backbone, idx)
    assert got.shape == expected.shape == (2, 9, 1000)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def composed(tmp_path_factory):
    """(mmcore model, transformers model): a random GPT-2 over the byte vocabulary (264 ids),
    initialised with weights large enough that its greedy output varies with the prompt and
    the position, and the mmcore model a spec composes from its file (backbone in GPT-2
    layout, the text encoder's embedding from ``transformer.wte``, the LM head tied to it)."""
    import mmcore

    root = tmp_path_factory.mktemp("composed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        torch.manual_seed(0)
        config = transformers.GPT2Config(
            vocab_size=264, n_positions=64, n_embd=32, n_layer=2, n_head=4, initializer_range=0.3
        )
        config.bos_token_id = config.eos_token_id = None
        hf = transformers.GPT2LMHeadModel(config).eval()
        hf.save_pretrained(root / "gpt2", safe_serialization=True)
    spec = root / "spec.toml"
    spec.write_text(
        'spec_version = 1\n[backbone]\nwidth = 32\ndepth = 2\nheads = 4\ncontext_length = 64\nmlp = "gelu_tanh"\n'
        'weights_from = "gpt2/model.safetensors"\n'
        '[encoders.text]\ncomponent = "text.bytes"\nmax_length = 32\n'
        'weights_from = {path = "gpt2/model.safetensors", prefix = {"transformer.wte." = "token_embedding."}}\n'
        '[heads.lm]\ncomponent = "lm"\n'
    )
    return mmcore.build(spec).eval(), hf


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
def test_generate_on_a_left_padded_batch_matches_transformers(composed, use_cache):
    """``mmcore.generate`` on prompts of different lengths (left-padded inside generation), and
    on one prompt alone (no padding), gives transformers' greedy ``generate`` tokens on the same
    left-padded batch."""
    model, hf = composed
    assert_greedy_matches_transformers(model, hf, use_cache, "gpt2")


def test_gpt2model_layout_and_old_buffers_are_accepted(hf_dir, tmp_path):
    path, hf = hf_dir
    state = load_file(str(path / "model.safetensors"))
    bare = {k.removeprefix("transformer."): v for k, v in state.items()}  # GPT2Model layout
    bare["h.0.attn.bias"] = torch.ones(1, 1, 128, 128)  # buffer in old checkpoints
    bare["h.0.attn.masked_bias"] = torch.tensor(-1e4)
    backbone, _ = load_gpt2_dir(copy_dir(path, tmp_path / "bare", bare))
    idx = prompt()
    with torch.no_grad():
        torch.testing.assert_close(lm_logits(backbone, idx), hf(idx).logits, atol=1e-5, rtol=0)


# --- key conversion -----------------------------------------------------------------------


def test_key_conversion_round_trip(hf_dir):
    path, _ = hf_dir
    state = load_file(str(path / "model.safetensors"))
    converted = hf_to_mmcore(state)
    assert converted["blocks.0.attn.qkv.weight"].shape == (192, 64)  # Conv1D (64, 192) transposed
    assert converted["blocks.1.mlp.fc.weight"].shape == (256, 64)
    assert set(converted) == set(GPT(config_from_hf(HF_CONFIG)[0], vocab_size=1000).state_dict())
    back = mmcore_to_hf(converted)
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)
    prefixed = hf_to_mmcore(state, prefix="backbone.")
    assert "backbone.ln_f.weight" in prefixed
    assert set(mmcore_to_hf(prefixed | {"head.weight": torch.zeros(1)}, prefix="backbone.")) == set(state)
    with pytest.raises(WeightsMismatchError, match="inserts.0.w"):
        mmcore_to_hf(converted | {"inserts.0.w": torch.zeros(1)})


# --- export -------------------------------------------------------------------------------


def test_export_reloads_in_transformers(hf_dir, tmp_path):
    path, hf = hf_dir
    backbone, _ = load_gpt2_dir(path)
    out = tmp_path / "export"
    save_gpt2_dir(backbone, out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]  # no temp files left
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    idx = prompt()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(idx).logits, hf(idx).logits, atol=1e-5, rtol=0)
    # and back into mmcore again
    again, lm_head = load_gpt2_dir(out)
    assert lm_head is None
    assert all(
        torch.equal(a, b) for a, b in zip(again.state_dict().values(), backbone.state_dict().values(), strict=True)
    )


def test_export_untied_head(hf_dir, tmp_path):
    path, _ = hf_dir
    backbone, _ = load_gpt2_dir(path)
    head = torch.randn(1000, 64, generator=torch.Generator().manual_seed(5))
    out = tmp_path / "untied"
    save_gpt2_dir(backbone, out, lm_head_weight=head)
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    idx = prompt()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(idx).logits, backbone(idx) @ head.T, atol=1e-5, rtol=0)
    _, lm_head = load_gpt2_dir(out)
    assert lm_head is not None and torch.equal(lm_head, head)


def test_export_rejects_non_gpt2_backbones(tmp_path):
    rope = GPT(BackboneConfig(width=32, depth=2, heads=4, positions="rope", mlp="swiglu"), vocab_size=10)
    with pytest.raises(ValueError, match="positions='rope'.*mlp='swiglu'"):
        save_gpt2_dir(rope, tmp_path / "x")
    with pytest.raises(ValueError, match="without wte"):
        save_gpt2_dir(GPT(BackboneConfig(width=32, depth=2, heads=4, mlp="gelu_tanh")), tmp_path / "y")


# --- errors -------------------------------------------------------------------------------


def test_missing_key(hf_dir, tmp_path):
    path, _ = hf_dir
    state = load_file(str(path / "model.safetensors"))
    del state["transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(WeightsMismatchError, match=r"missing \(1\): transformer\.h\.1\.mlp\.c_fc\.bias") as err:
        load_gpt2_dir(copy_dir(path, tmp_path / "missing", state))
    assert err.value.missing == ["transformer.h.1.mlp.c_fc.bias"]
    assert err.value.unexpected == [] and err.value.mismatched == []


def test_unexpected_key(hf_dir, tmp_path):
    path, _ = hf_dir
    state = load_file(str(path / "model.safetensors"))
    state["transformer.h.0.attn.q_norm.weight"] = torch.ones(64)
    with pytest.raises(WeightsMismatchError, match=r"unexpected \(1\): transformer\.h\.0\.attn\.q_norm\.weight") as err:
        load_gpt2_dir(copy_dir(path, tmp_path / "unexpected", state))
    assert err.value.unexpected == ["transformer.h.0.attn.q_norm.weight"]


def test_wrong_shape_and_all_errors_listed(hf_dir, tmp_path):
    path, _ = hf_dir
    state = load_file(str(path / "model.safetensors"))
    state["transformer.wpe.weight"] = torch.zeros(64, 64)
    del state["transformer.ln_f.bias"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(
        WeightsMismatchError, match=r"transformer\.wpe\.weight: expected \(128, 64\), found \(64, 64\)"
    ) as err:
        load_gpt2_dir(copy_dir(path, tmp_path / "shape", state))
    assert err.value.mismatched == [("transformer.wpe.weight", (128, 64), (64, 64))]
    assert err.value.missing == ["transformer.ln_f.bias"]
    assert err.value.unexpected == ["transformer.extra.weight"]
    assert isinstance(err.value, ValueError)


def test_pickle_only_directory_is_refused(hf_dir, tmp_path):
    path, _ = hf_dir
    shutil.copy(path / "config.json", tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin.*safetensors"):
        load_gpt2_dir(tmp_path)
