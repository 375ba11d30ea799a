"""Per-component training policy: train = full | frozen | lora, the freeze alias, LoRA adapters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mmcore
from mmcore.errors import SpecError
from mmcore.lora import LoRALinear, apply_lora, merge_lora
from mmcore.trainer import Trainer

CORPUS = "\n".join(f"the cat sat on mat number {i % 7} and the dog ran" for i in range(60)) + "\n"
RECORDS = [{"text": "the cat sat on the mat"}, {"text": "the dog ran"}]


def spec_dict(backbone=None, text=None, heads=None):
    return {
        "spec_version": 1,
        "name": "policy",
        "backbone": {"width": 32, "depth": 2, "heads": 4, "context_length": 64, **(backbone or {})},
        "encoders": {"text": {"component": "text.bytes", "max_length": 64, **(text or {})}},
        "heads": heads or {"lm": {"component": "lm"}},
    }


# --- the module -------------------------------------------------------------------------------


def test_lora_linear_starts_as_the_base_and_merges_exactly():
    base = nn.Linear(6, 5)
    lora = LoRALinear(base, rank=2, alpha=4.0)
    x = torch.randn(3, 6)
    assert torch.equal(lora(x), base(x))  # B = 0: no change at the start
    assert not base.weight.requires_grad and lora.lora_A.requires_grad and lora.lora_B.requires_grad
    with torch.no_grad():
        lora.lora_B.normal_()
    merged = lora.merge()
    assert type(merged) is nn.Linear
    torch.testing.assert_close(merged(x), lora(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lora.weight, merged.weight)  # .weight is the adapted weight
    assert not torch.equal(merged.weight, base.weight)


def test_apply_lora_wraps_targets_by_name_and_names_unknown_targets():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)))
    wrapped = apply_lora(model, rank=2, alpha=2, targets=["2.*"])
    assert wrapped == ["2.0", "2.1"] and isinstance(model[2][0], LoRALinear) and type(model[0]) is nn.Linear
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "2.0.lora_A",
        "2.0.lora_B",
        "2.1.lora_A",
        "2.1.lora_B",
    ]
    with pytest.raises(ValueError, match=r"\['nope'\] match no linear layer; the layers are: 0"):
        apply_lora(nn.Sequential(nn.Linear(2, 2)), rank=1, alpha=1, targets=["nope"])


# --- the spec ----------------------------------------------------------------------------------


def test_policy_keys_in_the_spec(manager):
    s = mmcore.parse_spec(spec_dict({"freeze": True}, {"freeze": True}))
    assert s.backbone_core.train == "frozen" and s.encoders["text"].train == "frozen" and s.encoders["text"].freeze
    toml = s.to_toml()
    assert 'train = "frozen"' in toml and "freeze" not in toml  # written in the new form
    again = mmcore.parse_spec(__import__("tomllib").loads(toml))
    assert again.backbone_core == s.backbone_core and again.encoders["text"].core == s.encoders["text"].core

    s = mmcore.parse_spec(spec_dict({"lora": {"rank": 2}}))  # lora alone means train = "lora"
    assert s.backbone_core.train == "lora" and s.backbone_core.lora.rank == 2
    s = mmcore.parse_spec(spec_dict({"train": "lora"}))  # defaults
    assert s.backbone_core.lora.targets == ["qkv", "proj"] and s.backbone_core.lora.alpha == 16

    bad = spec_dict(
        {"train": "full", "freeze": True},
        {"train": "full", "lora": {"rank": 2}},
        {"lm": {"component": "lm", "train": "sometimes", "freeze": "yes"}},
    )
    with pytest.raises(SpecError) as info:
        mmcore.parse_spec(bad)
    msg = str(info.value)
    assert "[backbone.freeze] freeze = true contradicts train = 'full'" in msg
    assert "[encoders.text] lora options are given but train = 'full'" in msg
    assert "[heads.lm.train]" in msg and "[heads.lm.freeze] must be true or false" in msg


def test_summary_shows_policies_and_what_trains(manager):
    model = mmcore.build(
        spec_dict({"train": "lora", "lora": {"rank": 2, "targets": ["attn.qkv"]}}, {"train": "frozen"})
    )
    rows = {r.part: r for r in model.summary().rows}
    assert rows["encoders.text"].train == "frozen" and rows["encoders.text"].trainable == 0
    bb = rows["backbone"]
    assert bb.train == "lora" and bb.trainable == bb.lora == 2 * (2 * 32 + 96 * 2)  # 2 blocks: A (2, 32), B (96, 2)
    assert set(bb.trainable_names) == {f"blocks.{i}.attn.qkv.lora_{x}" for i in (0, 1) for x in "AB"}
    table = str(model.summary())
    assert "backbone: blocks.*.attn.qkv.lora_A (2), blocks.*.attn.qkv.lora_B (2)" in table
    assert "encoders.text: nothing" in table and "lora" in table.splitlines()[1]


# --- training, merging, saving ----------------------------------------------------------------


def test_lora_backbone_trains_only_adapters_merges_and_round_trips(tmp_path, manager):
    corpus = tmp_path / "c.txt"
    corpus.write_text(CORPUS)
    spec = spec_dict({"train": "lora", "lora": {"rank": 4, "alpha": 8}})
    model = mmcore.build(spec)
    base = {k: v.clone() for k, v in model.backbone.state_dict().items() if "lora_" not in k}
    adapters = {k: v.clone() for k, v in model.backbone.state_dict().items() if "lora_" in k}
    assert len(adapters) == 2 * 3 * 2  # qkv, attn.proj, mlp.proj in 2 blocks, A and B each
    batch = model.preprocess(RECORDS)
    model.eval()
    with torch.no_grad():
        before = float(model(batch).loss)
    tr = Trainer(
        model,
        {"lm": {"objective": "lm", "train": str(corpus)}},
        {"steps": 20, "batch_size": 8, "lr": 1e-2, "progress": False, "warmup_steps": 0},
    )
    optimised = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert optimised == {id(p) for p in model.parameters() if p.requires_grad}
    assert not any(id(p) in optimised for k, p in model.backbone.named_parameters() if "lora_" not in k)
    tr.fit()
    after_state = model.backbone.state_dict()
    for k, v in base.items():
        assert torch.equal(after_state[k], v), f"{k} changed under LoRA"
    assert all(not torch.equal(after_state[k], v) for k, v in adapters.items() if k.endswith("lora_B"))
    model.eval()
    with torch.no_grad():
        out = model(batch)
    assert float(out.loss) < before - 0.5

    # save and load: exactly the same model, adapters included
    d = mmcore.save(model, tmp_path / "lora_model")
    again = mmcore.load(d).eval()
    assert isinstance(again.backbone.blocks[0].attn.qkv, LoRALinear)
    assert {n for n, p in again.backbone.named_parameters() if p.requires_grad} == set(adapters)  # resumable
    for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    with torch.no_grad():
        assert torch.equal(again(batch).outputs["lm"].logits, out.outputs["lm"].logits)

    # merged: plain linear layers, the same logits, saved and loaded as a plain model
    merge_lora(again)
    assert type(again.backbone.blocks[0].attn.qkv) is nn.Linear
    assert not any("lora_" in k for k in again.state_dict()) and again.spec.backbone_core.train == "full"
    with torch.no_grad():
        merged_logits = again(batch).outputs["lm"].logits
    torch.testing.assert_close(merged_logits, out.outputs["lm"].logits, rtol=1e-4, atol=1e-5)
    plain = mmcore.load(mmcore.save(again, tmp_path / "merged")).eval()
    with torch.no_grad():
        assert torch.equal(plain(batch).outputs["lm"].logits, merged_logits)


def test_frozen_backbone_leaves_the_fusions_inserted_layers_trainable(manager):
    spec = spec_dict({"train": "frozen"})
    spec["encoders"]["image"] = {
        "component": "vision.patch",
        "image_size": 16,
        "patch_size": 8,
        "dim": 16,
        "depth": 1,
        "heads": 2,
    }
    spec["fusion"] = {"component": "cross_attention", "every": 1}
    model = mmcore.build(spec)
    rows = {r.part: r for r in model.summary().rows}
    assert rows["backbone"].trainable == 0
    assert rows["fusion"].trainable == rows["fusion"].params > 0  # the inserted layers count as the fusion's
    assert all(p.requires_grad for p in model.backbone.inserts.parameters())
    # LoRA on the fusion reaches the layers it inserts
    spec["fusion"]["train"] = "lora"
    spec["fusion"]["lora"] = {"targets": ["xattn.q", "xattn.kv"], "rank": 2}
    model = mmcore.build(spec)
    fusion = {r.part: r for r in model.summary().rows}["fusion"]
    assert set(fusion.trainable_names) == {
        f"inserts.{b}.xattn.{m}.lora_{x}" for b in "01" for m in ("q", "kv") for x in "AB"
    }
    assert isinstance(model.backbone.inserts["0"].xattn.q, LoRALinear)
    spec["fusion"]["lora"] = {"targets": ["c_attn"], "rank": 2}
    with pytest.raises(SpecError, match=r"\[fusion.lora.targets\] \['c_attn'\] match no linear layer"):
        mmcore.build(spec)


def test_weight_decay_applies_to_matrices_not_to_biases_and_norms(tmp_path):
    """mmcore/trainer_optim.py: AdamW's two groups, matrices with training.weight_decay, vectors without."""
    corpus = tmp_path / "c.txt"
    corpus.write_text(CORPUS)
    model = mmcore.build(spec_dict())
    tr = Trainer(
        model,
        {"lm": {"objective": "lm", "train": str(corpus)}},
        {"steps": 1, "batch_size": 4, "lr": 1e-3, "weight_decay": 0.05, "progress": False},
    )
    groups = {g["weight_decay"]: {id(p) for p in g["params"]} for g in tr.optimizer.param_groups}
    params = dict(model.named_parameters())
    matrices = {id(p) for p in params.values() if p.dim() >= 2}
    vectors = {id(p) for p in params.values() if p.dim() < 2}
    assert len(tr.optimizer.param_groups) == 2 and matrices and vectors
    assert groups == {0.05: matrices, 0.0: vectors}
    assert any(k.endswith(".bias") for k, p in params.items() if id(p) in vectors)  # biases and norms: no decay
