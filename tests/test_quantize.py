"""int8 weight quantization (mmcore.quantize): layers, decoding, model directories."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

import mmcore
from mmcore.decode import state_of
from mmcore.errors import MMCoreError, WeightsError
from mmcore.generation import GenerationConfig, generate
from mmcore.quantize import Int8Linear, apply_quantization, quantize

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


def text_model(width: int = 64, depth: int = 2) -> mmcore.MultimodalGPT:
    torch.manual_seed(0)
    return mmcore.build(
        {
            "spec_version": 1,
            "name": "q-text",
            "backbone": {"width": width, "depth": depth, "heads": 4, "context_length": 64},
            "encoders": {"text": {"component": "text.bytes", "max_length": 64}},
            "heads": {"lm": {"component": "lm"}},
        }
    ).eval()


def image_text_model() -> mmcore.MultimodalGPT:
    torch.manual_seed(0)
    return mmcore.build(
        {
            "spec_version": 1,
            "name": "q-image-text",
            "backbone": {"width": 64, "depth": 2, "heads": 4, "context_length": 64},
            "encoders": {
                "image": {"component": "vision.patch", "image_size": 16, "patch_size": 4, "dim": 32, "depth": 1},
                "text": {"component": "text.bytes", "max_length": 32},
            },
            "heads": {"lm": {"component": "lm"}},
        }
    ).eval()


def test_int8_linear_matches_float_within_quantization_error() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(64, 48)
    q = Int8Linear.from_linear(lin)
    assert q.weight_int8.dtype == torch.int8 and q.weight_scale.shape == (48,)
    # per-row symmetric: the dequantized weight is within half a step of the float one
    err = (q.dequantized_weight() - lin.weight).abs()
    assert bool((err <= q.weight_scale[:, None] / 2 + 1e-7).all())
    x = torch.randn(3, 5, 64)
    with torch.no_grad():
        want = lin(x)
        got = q(x)  # the CPU kernel (activations quantized per call)
        dense = torch.nn.functional.linear(x, q.dequantized_weight(), q.bias)
    assert got.shape == (3, 5, 48)
    rel = (got - want).norm() / want.norm()
    assert rel < 0.03, rel
    assert (dense - want).norm() / want.norm() < 0.01
    # the step function of the decode path computes the same as the module
    fn, source = q.step_linear()
    assert source is q.weight_int8
    torch.testing.assert_close(fn(x[:, 0]), got[:, 0])


@pytest.mark.parametrize("shift", [0.0, 5.0, -5.0])
def test_float_emulation_of_the_int8_kernel_matches_it(shift) -> None:
    """dynamic_int8_linear (what torch.export traces, and other devices run) computes what the
    CPU kernel computes: activations quantized per call, not the dequantized weight's product."""
    from mmcore.quantize import dynamic_int8_linear

    for seed, (fan_in, fan_out, rows) in enumerate([(64, 48, 10), (257, 31, 3), (8, 300, 1)]):
        torch.manual_seed(seed)
        q = Int8Linear.from_linear(nn.Linear(fan_in, fan_out))
        x = torch.randn(rows, fan_in) * 3 + shift
        with torch.no_grad():
            kernel = q(x)
            got = dynamic_int8_linear(x, q.weight_int8, q.weight_scale, q.bias)
            dense = torch.nn.functional.linear(x, q.dequantized_weight(), q.bias)
        scale = kernel.abs().max()
        assert (got - kernel).abs().max() <= 1e-6 * scale
        assert (dense - kernel).abs().max() > 1e-4 * scale  # the dequantized product is not it
    zeros = torch.zeros(2, 8)
    assert torch.equal(dynamic_int8_linear(zeros, q.weight_int8[:, :8], q.weight_scale, q.bias), q.bias.expand(2, -1))


def test_quantize_replaces_backbone_linears_and_keeps_outputs_close() -> None:
    model = text_model()
    q = quantize(copy.deepcopy(model))
    names = q.quantization["modules"]
    assert len(names) == 2 * 4 and all(n.startswith("backbone.blocks.") for n in names)
    assert all(isinstance(q.get_submodule(n), Int8Linear) for n in names)
    assert not any(type(m) is nn.Linear for m in q.backbone.modules())
    # the tied LM head still reads the float embedding
    assert q.heads["lm"].tied_embedding is q.encoders["text"].token_embedding
    batch = model.preprocess([{"text": "int8 weights, float activations"}, {"text": "short"}])
    with torch.no_grad():
        lf = model(batch).outputs["lm"].logits
        lq = q(batch).outputs["lm"].logits
    rel = (lq - lf).norm() / lf.norm()
    assert 0 < rel < 0.05, rel
    with pytest.raises(MMCoreError, match="already quantized"):
        quantize(q)


def test_quantized_generation_uses_the_lean_step_and_matches_the_general_path() -> None:
    q = quantize(text_model())
    batch = q.preprocess([{"text": {"prompt": "abc"}}, {"text": {"prompt": "a longer prompt"}}], targets=())
    cfg = GenerationConfig(max_new_tokens=12, eos_id=-1)
    fast = generate(q, batch, cfg)
    slow = generate(q, batch, GenerationConfig(max_new_tokens=12, eos_id=-1, use_cache=False))
    assert fast == slow
    # the decode step takes the lean path, with the int8 layers' functions, and computes what
    # the general path computes (an all-True mask forces the general path)
    bb = q.backbone
    torch.manual_seed(5)
    prompt, step = torch.randn(1, 3, 64), torch.randn(1, 1, 64)
    with torch.no_grad():
        c1, c2 = bb.new_cache(1, 8), bb.new_cache(1, 8)
        bb(embeds=prompt, cache=c1)
        bb(embeds=prompt, cache=c2)
        a = bb(embeds=step, cache=c1)
        b = bb(embeds=step, mask=torch.ones(1, 1, dtype=torch.bool), cache=c2)
    plan = state_of(c1).plan
    assert plan is not None and not isinstance(plan.layers[0].qkv_wt, torch.Tensor)
    assert state_of(c2).owner is None
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_save_load_roundtrip_int8_safetensors(tmp_path) -> None:
    model = text_model(width=128)
    mmcore.save(model, tmp_path / "float")
    q = quantize(copy.deepcopy(model))
    mmcore.save(q, tmp_path / "int8")
    d = tmp_path / "int8"
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["quantization"]["method"] == "int8-weight-per-channel"
    with safe_open(str(d / "model.safetensors"), framework="pt") as f:
        assert f.get_tensor("backbone.blocks.0.attn.qkv.weight_int8").dtype == torch.int8
        assert f.get_tensor("backbone.blocks.0.attn.qkv.weight_scale").dtype == torch.float32
        assert "backbone.blocks.0.attn.qkv.weight" not in f.keys()
        assert json.loads(f.metadata()["quantization"])["modules"] == q.quantization["modules"]
    size_f = (tmp_path / "float" / "model.safetensors").stat().st_size
    size_q = (d / "model.safetensors").stat().st_size
    assert size_q < 0.45 * size_f, (size_q, size_f)
    back = mmcore.load(d)
    assert back.quantization == q.quantization
    assert isinstance(back.backbone.blocks[1].mlp.proj, Int8Linear)
    batch = model.preprocess([{"text": "round trip"}])
    with torch.no_grad():
        torch.testing.assert_close(back(batch).outputs["lm"].logits, q(batch).outputs["lm"].logits, rtol=0, atol=0)
    cfg = GenerationConfig(max_new_tokens=6, eos_id=-1)
    prompt = back.preprocess([{"text": {"prompt": "ro"}}], targets=())
    assert generate(back, prompt, cfg) == generate(q, prompt, cfg)


def test_multimodal_encoders_are_quantized(tmp_path) -> None:
    model = image_text_model()
    q = quantize(copy.deepcopy(model))
    names = q.quantization["modules"]
    assert any(n.startswith("encoders.image.blocks.") for n in names)
    assert "projectors.image.proj" in names  # the linear projector 32 -> 64
    assert isinstance(q.encoders["image"].patch_embed, nn.Conv2d)  # convolutions stay float
    records = [{"image": torch.rand(3, 16, 16), "text": "a picture"}, {"text": "no picture"}]
    batch = model.preprocess(records)
    with torch.no_grad():
        lf, lq = model(batch).outputs["lm"].logits, q(batch).outputs["lm"].logits
    assert (lq - lf).norm() / lf.norm() < 0.05
    mmcore.save(q, tmp_path / "m")
    back = mmcore.load(tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(back(batch).outputs["lm"].logits, lq, rtol=0, atol=0)


def test_bad_quantization_records_are_reported() -> None:
    model = text_model()
    with pytest.raises(WeightsError, match="unknown quantization record"):
        apply_quantization(model, {"method": "int4", "modules": []})
    with pytest.raises(WeightsError, match="does not exist"):
        apply_quantization(model, {"method": "int8-weight-per-channel", "modules": ["backbone.nothing"]})
    with pytest.raises(MMCoreError, match="unknown part"):
        quantize(model, parts=("everything",))


def test_cli_quantize(tmp_path, capsys) -> None:
    from mmcore.cli import main

    mmcore.save(text_model(), tmp_path / "float")
    assert main(["quantize", str(tmp_path / "float"), "--out", str(tmp_path / "q")]) == 0
    out = capsys.readouterr().out
    assert "int8" in out and "8 linear layers" in out
    assert isinstance(mmcore.load(tmp_path / "q").backbone.blocks[0].attn.qkv, Int8Linear)
