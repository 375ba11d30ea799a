"""Tests of mmcore-heads: the lm and classify heads and the plugin hook."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mmcore_heads import plugin
from mmcore_heads.classify import ClassificationHead, pool
from mmcore_heads.config import ClassificationHeadConfig, LMHeadConfig
from mmcore_heads.lm import LMHead
from pydantic import ValidationError
from torch import nn

from mmcore.errors import InputError
from mmcore.interfaces import Head
from mmcore.registry import Component
from mmcore.types import Batch, FusedSequence

ROOT = Path(__file__).resolve().parents[1]
V, D = 11, 8


class TextEncoder(nn.Module):
    """Stand-in for a text encoder that owns a vocabulary (token_embedding, vocab_size)."""

    modality = "text"

    def __init__(self, vocab: int = V, width: int = D):
        super().__init__()
        self.vocab_size = vocab
        self.out_dim = width
        self.token_embedding = nn.Embedding(vocab, width)


class ImageEncoder(nn.Module):
    modality = "image"


def seq(mask: torch.Tensor, index: dict | None = None) -> FusedSequence:
    """A hand-built single-modality fused sequence (index None: identity)."""
    B, L = mask.shape
    return FusedSequence(
        embeds=torch.zeros(B, L, D),
        mask=mask,
        modality_ids=torch.zeros(B, L, dtype=torch.long),
        modalities=("text",),
        index=index if index is not None else {"text": None},
    )


def text_batch(ids: torch.Tensor, mask: torch.Tensor, prompt_len: torch.Tensor | None = None, **targets) -> Batch:
    inputs = {"ids": ids, "mask": mask}
    if prompt_len is not None:
        inputs["prompt_len"] = prompt_len
    return Batch(inputs={"text": inputs}, targets=dict(targets))


def lm(**options) -> tuple[LMHead, TextEncoder]:
    torch.manual_seed(0)
    enc = TextEncoder()
    return LMHead(LMHeadConfig(**options), width=D, encoders={"image": ImageEncoder(), "text": enc}), enc


# a small example: B=2, T=5; sample 1 has 3 real tokens
IDS = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 0, 0]])
MASK = torch.tensor([[True] * 5, [True, True, True, False, False]])


# --- lm head ------------------------------------------------------------------------


def test_lm_tied_logits_and_state_dict():
    head, enc = lm()
    assert isinstance(head, Head) and head.weight == 1.0
    hidden = torch.randn(2, 5, D)
    out = head(hidden, seq(MASK))
    assert out.logits.shape == (2, 5, V)
    assert torch.allclose(out.logits, hidden @ enc.token_embedding.weight.T)
    assert torch.equal(out.mask, MASK)
    assert head.tied_embedding is enc.token_embedding
    assert list(head.state_dict()) == [] and list(head.parameters()) == []
    # a model holding both: the embedding is stored once, under the encoder
    model = nn.ModuleDict({"encoders": nn.ModuleDict({"text": enc}), "heads": nn.ModuleDict({"lm": head})})
    assert list(model.state_dict()) == ["encoders.text.token_embedding.weight"]
    # load_state_dict(assign=True) replaces the encoder's parameter; the head sees the new one
    new = torch.randn(V, D)
    model.load_state_dict({"encoders.text.token_embedding.weight": new}, assign=True)
    assert torch.allclose(head(hidden, seq(MASK)).logits, hidden @ new.T)
    # gradients of the loss reach the shared embedding
    head(hidden, seq(MASK)).logits.sum().backward()
    assert enc.token_embedding.weight.grad is not None


def test_lm_tied_with_bias_and_untied():
    head, enc = lm(bias=True)
    assert list(head.state_dict()) == ["bias"] and head.bias.shape == (V,)
    untied, enc2 = lm(tie=False, bias=True)
    assert untied.tied_embedding is None
    assert sorted(untied.state_dict()) == ["proj.bias", "proj.weight"]
    hidden = torch.randn(2, 5, D)
    out = untied(hidden, seq(MASK))
    assert torch.allclose(out.logits, hidden @ untied.proj.weight.T + untied.proj.bias)


def test_lm_input_errors_list_available_inputs():
    with pytest.raises(ValueError, match=r"'caption'.*'image', 'text'"):
        LMHead(LMHeadConfig(input="caption"), width=D, encoders={"image": ImageEncoder(), "text": TextEncoder()})
    with pytest.raises(ValueError, match=r"'image'.*no token vocabulary.*with a vocabulary: text"):
        LMHead(LMHeadConfig(input="image"), width=D, encoders={"image": ImageEncoder(), "text": TextEncoder()})
    with pytest.raises(ValueError, match="tie = false"):
        LMHead(LMHeadConfig(), width=D, encoders={"text": TextEncoder(width=D + 1)})
    assert LMHead(LMHeadConfig(tie=False), width=D, encoders={"text": TextEncoder(width=3)}).proj.in_features == D


def test_lm_loss_matches_hand_computation():
    head, _ = lm()
    torch.manual_seed(1)
    logits = torch.randn(2, 5, V, requires_grad=True)
    out = head(torch.zeros(2, 5, D), seq(MASK))
    out.logits = logits
    loss = head.loss(out, text_batch(IDS, MASK))
    # by hand: sample 0 predicts 2,3,4,5 from positions 0..3; sample 1 predicts 7,8 from 0..1
    pred = torch.cat([logits[0, :4], logits[1, :2]])
    target = torch.tensor([2, 3, 4, 5, 7, 8])
    assert torch.allclose(loss, F.cross_entropy(pred, target))
    smooth, _ = lm(label_smoothing=0.1)
    assert torch.allclose(smooth.loss(out, text_batch(IDS, MASK)), F.cross_entropy(pred, target, label_smoothing=0.1))
    smooth.eval()  # evaluation reports the true negative log-likelihood: perplexity stays a perplexity
    assert torch.allclose(smooth.loss(out, text_batch(IDS, MASK)), F.cross_entropy(pred, target))
    loss.backward()
    assert logits.grad[1, 2:].abs().sum() == 0  # padding positions get no gradient


def test_lm_loss_ignores_padding_and_prompt():
    head, _ = lm()
    prompt_len = torch.tensor([3, 0])
    batch = text_batch(IDS, MASK, prompt_len)
    out = head(torch.zeros(2, 5, D), seq(MASK))
    out.logits = torch.randn(2, 5, V)
    base = head.loss(out, batch)
    # sample 0 counts target positions >= 3 (predicted from positions 2, 3); sample 1 all real
    pred = torch.cat([out.logits[0, 2:4], out.logits[1, :2]])
    assert torch.allclose(base, F.cross_entropy(pred, torch.tensor([4, 5, 7, 8])))
    changed = out.logits.clone()
    changed[0, :2] = 100 * torch.randn(2, V)  # prompt positions
    changed[0, 4] = 100 * torch.randn(V)  # last position predicts nothing
    changed[1, 2:] = 100 * torch.randn(3, V)  # padding
    out.logits = changed
    assert torch.allclose(head.loss(out, batch), base)
    ids2 = IDS.clone()
    ids2[1, 3:] = 9  # ids at padding do not matter either
    assert torch.allclose(head.loss(out, text_batch(ids2, MASK, prompt_len)), base)


def test_lm_loss_without_counted_tokens_is_zero_with_grad():
    head, _ = lm()
    logits = torch.randn(2, 5, V, requires_grad=True)
    out = head(torch.zeros(2, 5, D), seq(MASK))
    out.logits = logits
    loss = head.loss(out, text_batch(IDS, MASK, torch.tensor([5, 5])))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    one = torch.zeros(1, 1, dtype=torch.bool)
    empty = head(torch.zeros(1, 1, D, requires_grad=True), seq(one))
    zero = head.loss(empty, text_batch(torch.zeros(1, 1, dtype=torch.long), one))
    assert zero.item() == 0.0 and zero.grad_fn is not None and not torch.isnan(zero)
    assert head.loss(out, Batch(inputs={"image": {"pixels": torch.zeros(2, 3)}})) is None


def test_lm_labels_masked_lm_objective():
    head, _ = lm()
    out = head(torch.zeros(2, 5, D), seq(MASK))
    out.logits = torch.randn(2, 5, V)
    labels = torch.full((2, 5), -100)
    labels[0, 1], labels[0, 4], labels[1, 0] = 2, 5, 6
    labels[1, 3] = 0  # at padding: never counts
    loss = head.loss(out, text_batch(IDS, MASK, lm_labels=labels))
    pred = torch.stack([out.logits[0, 1], out.logits[0, 4], out.logits[1, 0]])
    assert torch.allclose(loss, F.cross_entropy(pred, torch.tensor([2, 5, 6])))
    with pytest.raises(InputError, match="lm_labels"):
        head.loss(out, text_batch(IDS, MASK, lm_labels=labels[:, :3]))


def test_lm_gathers_text_positions_from_index():
    head, enc = lm()
    # fused: [img, img, t0, t1, t2, pad] for sample 0; [img, t0, pad...] for sample 1
    index = torch.tensor([[2, 3, 4], [1, -1, -1]])
    fused_mask = torch.tensor([[True] * 5 + [False], [True, True] + [False] * 4])
    sequence = FusedSequence(
        embeds=torch.zeros(2, 6, D),
        mask=fused_mask,
        modality_ids=torch.zeros(2, 6, dtype=torch.long),
        modalities=("image", "text"),
        index={"image": torch.tensor([[0, 1], [0, -1]]), "text": index},
    )
    hidden = torch.randn(2, 6, D)
    out = head(hidden, sequence)
    assert out.logits.shape == (2, 3, V)
    assert torch.equal(out.mask, index >= 0)
    assert torch.allclose(out.logits[0], hidden[0, 2:5] @ enc.token_embedding.weight.T)
    assert torch.allclose(out.logits[1, 0], hidden[1, 1] @ enc.token_embedding.weight.T)
    ids = torch.tensor([[1, 2, 3], [4, 0, 0]])
    loss = head.loss(out, text_batch(ids, index >= 0))
    pred = out.logits[0, :2]
    assert torch.allclose(loss, F.cross_entropy(pred, torch.tensor([2, 3])))
    missing = head(hidden, seq(fused_mask, index={"image": None}))
    assert missing.logits.shape == (2, 0, V)


def test_lm_gradients_reach_all_parameters():
    for options in ({}, {"bias": True}, {"tie": False, "bias": True}):
        head, enc = lm(**options)
        hidden = torch.randn(2, 5, D, requires_grad=True)
        loss = head.loss(head(hidden, seq(MASK)), text_batch(IDS, MASK))
        loss.backward()
        params = list(head.parameters()) + ([enc.token_embedding.weight] if head.tie else [])
        assert params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params), options
        assert hidden.grad is not None


# --- classification head -----------------------------------------------------------

CMASK = torch.tensor([[True, True, True, False], [True, False, False, False], [True] * 4])


def classify(**options) -> ClassificationHead:
    torch.manual_seed(0)
    return ClassificationHead(ClassificationHeadConfig(**({"num_classes": 3} | options)), width=D)


def test_pooling_matches_manual():
    hidden = torch.randn(3, 4, D)
    last = pool(hidden, CMASK, "last")
    assert torch.equal(last, torch.stack([hidden[0, 2], hidden[1, 0], hidden[2, 3]]))
    assert torch.equal(pool(hidden, CMASK, "first"), hidden[:, 0])
    mean = pool(hidden, CMASK, "mean")
    manual = torch.stack([hidden[0, :3].mean(0), hidden[1, :1].mean(0), hidden[2].mean(0)])
    assert torch.allclose(mean, manual)
    left = torch.tensor([[False, True, True, False]])  # first/last real also off the edges
    assert torch.equal(pool(hidden[:1], left, "first"), hidden[:1, 1])
    assert torch.equal(pool(hidden[:1], left, "last"), hidden[:1, 2])
    none = torch.zeros(1, 4, dtype=torch.bool)
    assert torch.equal(pool(hidden[:1], none, "mean"), torch.zeros(1, D))
    assert torch.equal(pool(hidden[:1], none, "last"), hidden[:1, 0])


def test_max_pooling_is_masked_featurewise_max():
    hidden = torch.randn(3, 4, D)
    hidden[0, 3] = 100.0  # padding of row 0 (and row 1's) larger than any real state: it must never win
    hidden[1, 1:] = 100.0
    hidden[2, 0, 0], hidden[2, 3, 1] = 50.0, 60.0  # a feature's maximum at different positions
    got = pool(hidden, CMASK, "max")
    manual = torch.stack([hidden[0, :3].amax(0), hidden[1, 0], hidden[2].amax(0)])
    assert torch.equal(got, manual)
    assert got[2, 0] == 50.0 and got[2, 1] == 60.0
    assert not torch.allclose(got, pool(hidden, CMASK, "mean"))
    neg = -1.0 - torch.rand(1, 4, D)  # all negative: a max over padding zeros would give 0
    assert torch.equal(pool(neg, CMASK[:1], "max"), neg[0, :3].amax(0, keepdim=True))
    none = torch.zeros(1, 4, dtype=torch.bool)
    assert torch.equal(pool(hidden[:1], none, "max"), torch.zeros(1, D))
    bf = hidden.to(torch.bfloat16)  # under bf16 autocast the states arrive in bf16
    assert torch.equal(pool(bf, CMASK, "max"), manual.to(torch.bfloat16))


@pytest.mark.parametrize("pooling", ["last", "mean", "max", "first"])
def test_classify_forward(pooling):
    head = classify(pooling=pooling)
    hidden = torch.randn(3, 4, D)
    out = head(hidden, seq(CMASK))
    assert out.logits.shape == (3, 3)
    expected = head.classifier(pool(hidden, CMASK, pooling))
    assert torch.allclose(out.logits, expected)
    assert torch.equal(out.extra["pooled"], pool(hidden, CMASK, pooling))


def test_classify_mlp_and_gradients():
    head = classify(hidden=16, dropout=0.1)
    assert isinstance(head.classifier, nn.Sequential)
    hidden = torch.randn(3, 4, D)
    loss = head.loss(head(hidden, seq(CMASK)), Batch(inputs={}, targets={"label": torch.tensor([0, 2, 1])}))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def test_classify_loss_and_class_weights():
    head = classify(class_weights=[1.0, 2.0, 0.5], label_smoothing=0.1, label="y", weight=0.5)
    assert head.weight == 0.5 and "class_weights" not in head.state_dict()
    out = head(torch.randn(3, 4, D), seq(CMASK))
    y = torch.tensor([1, 0, 1])
    loss = head.loss(out, Batch(inputs={}, targets={"y": y}))
    w = torch.tensor([1.0, 2.0, 0.5])
    assert torch.allclose(loss, F.cross_entropy(out.logits, y, weight=w, label_smoothing=0.1))
    head.eval()
    assert torch.allclose(head.loss(out, Batch(inputs={}, targets={"y": y})), F.cross_entropy(out.logits, y, weight=w))
    plain = classify()
    out = plain(torch.randn(3, 4, D), seq(CMASK))
    assert torch.allclose(plain.loss(out, Batch(inputs={}, targets={"label": y})), F.cross_entropy(out.logits, y))
    assert plain.loss(out, Batch(inputs={}, targets={"other": y})) is None


def test_classify_class_weights_rebuilt_after_meta_build():
    # mmcore.load builds on the meta device, assigns the state dict, then calls reset_buffers()
    with torch.device("meta"):
        head = classify(class_weights=[1.0, 2.0, 0.5])
    state = classify(class_weights=[1.0, 2.0, 0.5]).state_dict()
    head.load_state_dict(state, assign=True)
    assert head.class_weights.is_meta
    head.to_empty(device="cpu", recurse=False)
    head.reset_buffers()
    assert head.class_weights.tolist() == [1.0, 2.0, 0.5]
    classify().reset_buffers()  # no class weights: nothing to do


def test_classify_bad_label_error():
    head = classify()
    out = head(torch.randn(3, 4, D), seq(CMASK))
    with pytest.raises(InputError) as err:
        head.loss(out, Batch(inputs={}, targets={"label": torch.tensor([0, 3, 1])}))
    msg = str(err.value)
    assert "'label'" in msg and "label 3" in msg and "[0, 2]" in msg
    with pytest.raises(InputError, match="-1"):
        head.loss(out, Batch(inputs={}, targets={"label": torch.tensor([-1, 0, 1])}))
    with pytest.raises(InputError, match="integer class labels"):
        head.loss(out, Batch(inputs={}, targets={"label": torch.tensor([0.0, 1.0, 1.0])}))


def test_classify_config_validation():
    with pytest.raises(ValidationError, match="num_classes"):
        ClassificationHeadConfig.model_validate({})
    with pytest.raises(ValidationError):
        ClassificationHeadConfig(num_classes=1)
    with pytest.raises(ValidationError, match="class_weights has 2 entries but num_classes is 3"):
        ClassificationHeadConfig(num_classes=3, class_weights=[1.0, 2.0])
    with pytest.raises(ValidationError, match="all zero"):
        ClassificationHeadConfig(num_classes=2, class_weights=[0.0, 0.0])
    with pytest.raises(ValidationError):
        ClassificationHeadConfig(num_classes=2, pooling="median")
    for model in (LMHeadConfig, ClassificationHeadConfig):
        for name, field in model.model_fields.items():
            assert field.description, (model.__name__, name)


# --- plugin -------------------------------------------------------------------------


def test_plugin_components_validate_minimal_options():
    comps = {c.key: c for c in plugin.mmcore_register_components()}
    assert sorted(comps) == ["encoder:features", "head:classify", "head:lm", "head:regress", "objective:regression"]
    assert all(isinstance(c, Component) for c in comps.values())
    assert isinstance(comps["head:lm"].config.model_validate({}), LMHeadConfig)
    assert comps["head:classify"].config.model_validate({"num_classes": 2}).pooling == "last"
    encoders = {"text": TextEncoder()}
    built = comps["head:lm"].build({}, width=D, encoders=encoders, backbone=None)
    assert isinstance(built, LMHead)
    built = comps["head:classify"].build({"num_classes": 4}, width=D, encoders=encoders, backbone=None)
    assert isinstance(built, ClassificationHead) and built.num_classes == 4


def test_plugin_manager_registers_it():
    from mmcore.plugins import PluginManager

    pm = PluginManager(autoload=False)
    pm.register(plugin, name="heads")
    assert [c.key for c in pm.registry.list("head:*")] == ["head:classify", "head:lm", "head:regress"]
    assert [c.key for c in pm.registry.list("objective:*") if c.plugin == "heads"] == ["objective:regression"]


def test_entry_point_declared():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "mmcore-heads"
    assert meta["project"]["entry-points"]["mmcore"] == {"heads": "mmcore_heads.plugin"}


def test_plugin_import_does_not_import_torch():
    code = (
        "import sys, mmcore_heads.plugin as p; comps = p.mmcore_register_components(); "
        "[c.config.model_validate({'num_classes': 2} if c.name == 'classify' else {'features': 3} "
        "if c.name == 'features' else {}) for c in comps]; "
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')); "
        "print('TORCH' if bad else 'OK')"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "OK"


def test_regress_head_predicts_in_target_units_and_learns_on_standardised_targets():
    from mmcore_heads.config import RegressionHeadConfig
    from mmcore_heads.regress import RegressionHead

    from mmcore import Batch, FusedSequence

    torch.manual_seed(0)
    head = RegressionHead(RegressionHeadConfig(outputs=2), width=D)
    ys = torch.tensor([[10.0, -1.0], [20.0, -3.0], [30.0, -5.0]])
    head.fit_standardisation(ys)
    torch.testing.assert_close(head.target_mean, torch.tensor([20.0, -3.0]))
    torch.testing.assert_close(head.target_std, ys.std(0, unbiased=False))
    hidden = torch.randn(3, 4, D)
    seq = FusedSequence(
        torch.zeros(3, 4, D),
        torch.ones(3, 4, dtype=torch.bool),
        torch.zeros(3, 4, dtype=torch.long),
        ("x",),
        {"x": None},
    )
    out = head(hidden, seq)
    z = out.extra["standardised"]
    torch.testing.assert_close(out.logits, z * head.target_std + head.target_mean)  # target units
    total, count = head.loss_terms(out, Batch({}, {"y": ys}))
    torch.testing.assert_close(total, (z - (ys - head.target_mean) / head.target_std).pow(2).sum())
    assert float(count) == 6
    assert "target_mean" in head.state_dict() and "target_std" in head.state_dict()  # saved with the model


def test_regress_head_offers_max_pooling():
    from mmcore_heads.config import RegressionHeadConfig
    from mmcore_heads.regress import RegressionHead

    head = RegressionHead(RegressionHeadConfig(pooling="max"), width=D)
    hidden = torch.randn(3, 4, D)
    hidden[0, 3] = 100.0  # padding
    out = head(hidden, seq(CMASK))
    assert torch.equal(out.extra["pooled"], pool(hidden, CMASK, "max"))
    assert out.extra["pooled"].amax() < 100.0


def _normalised_token_linearity(**options) -> float:
    """How linear in x (R² of a straight-line fit, over every token dimension) the layer-normalised
    tokens of ``encoder:features`` are, for x from -3 to 3: what the backbone's norms first see."""
    from mmcore_heads.config import FeaturesEncoderConfig
    from mmcore_heads.features import FeaturesEncoder

    torch.manual_seed(0)
    enc = FeaturesEncoder(FeaturesEncoderConfig(features=4, **options), width=32)
    x = torch.linspace(-3, 3, 61)
    with torch.no_grad():
        tokens = enc({"x": x[:, None].expand(-1, 4), "mask": torch.ones(61, 4, dtype=torch.bool)}).embeds
    t = F.layer_norm(tokens, (32,)).reshape(61, -1)
    line = torch.stack([x, torch.ones_like(x)], 1)
    residual = t - line @ torch.linalg.lstsq(line, t).solution
    return float(1 - residual.pow(2).sum() / (t - t.mean(0)).pow(2).sum())


def test_features_encoder_starts_near_linear_in_each_feature():
    """The default init (bias 1.0, weight 0.1) keeps a normalised token nearly linear in its value,
    so the model starts near a linear model; at 0.02 for both (the backbone's scale) the norm
    squashes the value towards its sign. The options set the scales they name."""
    from mmcore_heads.config import FeaturesEncoderConfig
    from mmcore_heads.features import FeaturesEncoder

    assert _normalised_token_linearity() > 0.97
    assert _normalised_token_linearity(bias_std=0.02, weight_std=0.02) < 0.9
    torch.manual_seed(0)
    enc = FeaturesEncoder(FeaturesEncoderConfig(features=64, bias_std=0.5, weight_std=0.05), width=64)
    assert enc.bias.std().item() == pytest.approx(0.5, rel=0.05)
    assert enc.weight.std().item() == pytest.approx(0.05, rel=0.05)
    with pytest.raises(ValidationError):
        FeaturesEncoderConfig(features=3, bias_std=0)
