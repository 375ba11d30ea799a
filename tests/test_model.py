"""Composition from a spec and from Python objects; model directories."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import EXAMPLES

import mmcore
from mmcore.errors import ModelDirError, WeightsError

SPEC = EXAMPLES / "text_lm.toml"
RECORDS = [{"text": "hello world"}, {"text": "a longer second record"}]


def tiny_spec(**backbone):
    bb = {"width": 32, "depth": 2, "heads": 4, "context_length": 64, **backbone}
    return {
        "spec_version": 1,
        "name": "tiny",
        "backbone": bb,
        "encoders": {"text": {"component": "text.bytes", "max_length": 64}},
        "heads": {"lm": {"component": "lm"}},
    }


def test_build_from_spec_summary_and_repr(manager):
    model = mmcore.build(SPEC)
    assert isinstance(model, torch.nn.Module) and isinstance(model, mmcore.MultimodalGPT)
    s = model.summary()
    parts = [r.part for r in s.rows]
    assert parts == ["encoders.text", "fusion", "backbone", "heads.lm"]
    assert s.params == sum(p.numel() for p in model.parameters())
    table = str(s)
    assert "text.bytes" in table and "trainable" in table and "early" in table
    assert "GPT(" in repr(model) and "EarlyFusion(" in repr(model)


def test_forward_loss_and_gradients(manager):
    model = mmcore.build(tiny_spec())
    batch = model.preprocess(RECORDS)
    out = model(batch)
    assert out.hidden.shape[:2] == batch.inputs["text"]["ids"].shape
    assert out.outputs["lm"].logits.shape[-1] == model.encoders["text"].vocab_size
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_freeze_from_spec(manager):
    spec = tiny_spec()
    spec["encoders"]["text"]["freeze"] = True
    model = mmcore.build(spec)
    rows = {r.part: r for r in model.summary().rows}
    assert rows["encoders.text"].trainable == 0 and rows["encoders.text"].frozen > 0
    assert rows["backbone"].trainable == rows["backbone"].params


def test_compose_from_python_objects_matches_spec_build(manager):
    spec_model = mmcore.build(tiny_spec())
    cfg = mmcore.BackboneConfig(width=32, depth=2, heads=4, context_length=64)
    comp = manager.registry.get("encoder", "text.bytes")
    processor = comp.load_processor()(comp.config(max_length=64))
    enc = mmcore.build_component("encoder", "text.bytes", {"max_length": 64}, width=32, processor=processor)
    fusion = mmcore.build_component("fusion", "early", width=32, encoders={"text": enc})
    head = mmcore.build_component("head", "lm", width=32, encoders={"text": enc})
    model = mmcore.MultimodalGPT(mmcore.GPT(cfg), {"text": enc}, fusion, {"lm": head}, processors={"text": processor})
    model.load_state_dict(spec_model.state_dict())
    batch = model.preprocess(RECORDS)
    model.eval(), spec_model.eval()
    torch.testing.assert_close(model(batch).outputs["lm"].logits, spec_model(batch).outputs["lm"].logits)


def test_save_load_round_trip_is_exact(tmp_path, manager):
    model = mmcore.build(tiny_spec(positions="rope", mlp="swiglu")).eval()
    d = mmcore.save(model, tmp_path / "m")
    assert sorted(p.name for p in d.iterdir()) == ["manifest.json", "model.safetensors", "processors", "spec.toml"]
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["components"]["encoder:text.bytes"].startswith("mmcore-text ")
    loaded = mmcore.load(d).eval()
    batch = model.preprocess(RECORDS)
    assert torch.equal(model(batch).outputs["lm"].logits, loaded(batch).outputs["lm"].logits)
    assert loaded.spec == model.spec
    # tied weights stay tied after loading
    assert loaded.heads["lm"].tied_embedding is loaded.encoders["text"].token_embedding


def test_save_keeps_other_files_and_overwrites_atomically(tmp_path, manager):
    model = mmcore.build(tiny_spec())
    d = mmcore.save(model, tmp_path / "m")
    (d / "metrics.jsonl").write_text("{}\n")
    mmcore.save(model, d)
    assert (d / "metrics.jsonl").read_text() == "{}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary folders left


def test_truncated_or_tampered_weights_are_refused(tmp_path, manager):
    model = mmcore.build(tiny_spec())
    d = mmcore.save(model, tmp_path / "m")
    w = d / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="model.safetensors .content differs"):
        mmcore.load(d)
    w.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(WeightsError, match="model.safetensors"):
        mmcore.load(d)
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        mmcore.load(d, verify=False)


def test_weights_that_do_not_match_the_spec_list_keys_and_shapes(tmp_path, manager):
    from safetensors.torch import save_file

    from mmcore.checkpoint import FORMAT, _sha256

    model = mmcore.build(tiny_spec())
    d = mmcore.save(model, tmp_path / "m")
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("heads.")}
    state.pop("backbone.ln_f.weight")
    state["backbone.wpe.weight"] = torch.zeros(3, 3)
    state["extra.thing"] = torch.zeros(1)
    save_file(state, str(d / "model.safetensors"), metadata={"format": FORMAT})
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["sha256"]["model.safetensors"] = _sha256(d / "model.safetensors")
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(WeightsError) as exc:
        mmcore.load(d)
    msg = str(exc.value)
    assert "missing (1): backbone.ln_f.weight" in msg
    assert "unexpected (1): extra.thing" in msg
    assert "shape of backbone.wpe.weight: model has [64, 32], file has [3, 3]" in msg


def test_missing_plugin_says_what_to_install(tmp_path, monkeypatch):
    from mmcore import plugins

    monkeypatch.delenv(plugins.ENV_DISABLE_AUTOLOAD, raising=False)
    pm = plugins.PluginManager()
    old = plugins.reset_manager(pm)
    try:
        d = mmcore.save(mmcore.build(tiny_spec()), tmp_path / "m")
        monkeypatch.setenv(plugins.ENV_BLOCK, "text")
        with pytest.raises(ModelDirError, match=r'encoder:text.bytes \(pip install "mmcore-text==0.1.0"\)'):
            mmcore.load(d, registry=plugins.PluginManager().registry)
    finally:
        plugins.reset_manager(old)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(ModelDirError, match="not a model directory"):
        mmcore.load(tmp_path)
