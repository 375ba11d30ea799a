"""Tests of the GPT backbone (mmcore/backbone.py): shapes, attention modes, padding, KV cache."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from mmcore.backbone import GPT, KVCache
from mmcore.config import BackboneConfig

V = 50  # vocabulary size of the test models


def make(seed: int = 0, vocab_size: int | None = V, **overrides) -> GPT:
    options = dict(width=32, depth=2, heads=4, context_length=32) | overrides
    torch.manual_seed(seed)
    return GPT(BackboneConfig(**options), vocab_size=vocab_size).eval()


def tokens(B: int, L: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(seed))


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> bool:
    return torch.allclose(a, b, atol=atol, rtol=0)


# --- construction and shapes --------------------------------------------------------


@pytest.mark.parametrize(
    "norm,positions,mlp,bias",
    list(
        itertools.product(
            ["layernorm", "rmsnorm"], ["learned", "rope", "none"], ["gelu", "gelu_tanh", "swiglu"], [True, False]
        )
    ),
)
def test_shapes_for_each_option(norm, positions, mlp, bias):
    model = make(norm=norm, positions=positions, mlp=mlp, bias=bias)
    h = model(tokens(2, 7))
    assert h.shape == (2, 7, 32)
    assert torch.isfinite(h).all()
    h2 = model(embeds=torch.randn(3, 5, 32))
    assert h2.shape == (3, 5, 32)
    names = dict(model.named_parameters())
    assert ("wpe.weight" in names) == (positions == "learned")
    fc_out = (2 if mlp == "swiglu" else 1) * model.config.mlp_hidden
    assert names["blocks.0.mlp.fc.weight"].shape == (fc_out, 32)
    assert names["blocks.1.attn.qkv.weight"].shape == (96, 32)
    assert ("blocks.0.attn.qkv.bias" in names) == bias
    # the rotary tables are non-persistent buffers: never in the state dict
    assert not any("rope" in k or k.endswith((".cos", ".sin")) for k in model.state_dict())


def test_backbone_without_vocab_needs_embeds():
    model = make(vocab_size=None)
    assert model.wte is None
    with pytest.raises(ValueError, match="no token embedding"):
        model(tokens(1, 4))
    assert model(embeds=torch.randn(1, 4, 32)).shape == (1, 4, 32)


def test_exactly_one_of_idx_or_embeds():
    model = make()
    with pytest.raises(ValueError, match="neither idx nor embeds"):
        model()
    with pytest.raises(ValueError, match="both idx and embeds"):
        model(tokens(1, 4), embeds=torch.randn(1, 4, 32))


def test_too_long_input():
    model = make()
    with pytest.raises(ValueError, match=r"40.*context_length 32"):
        model(tokens(1, 40))
    cache = model.new_cache(1, 32)
    model(tokens(1, 30), cache=cache)
    with pytest.raises(ValueError, match=r"30 cached \+ 5 new = 35.*context_length 32"):
        model(tokens(1, 5), cache=cache)


def test_invalid_arguments():
    model = make()
    with pytest.raises(ValueError, match="valid: causal, prefix, bidirectional"):
        model(tokens(1, 4), mode="sideways")
    # prefix mode without a prefix is causal attention
    x = tokens(1, 4)
    torch.testing.assert_close(model(x, mode="prefix"), model(x, mode="causal"))
    with pytest.raises(ValueError, match="prefix_len must be"):
        model(x, mode="prefix", prefix_len=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="mask must be"):
        model(tokens(2, 4), mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="padding_side"):
        model(tokens(1, 4), padding_side="middle")


def test_init_weights():
    model = make(depth=4, init_std=0.05)
    std = model.blocks[0].attn.qkv.weight.std().item()
    resid = torch.cat([b.attn.proj.weight.flatten() for b in model.blocks]).std().item()
    assert abs(std - 0.05) < 0.01
    assert abs(resid - 0.05 / (2 * 4) ** 0.5) < 0.005
    assert (model.blocks[0].attn.qkv.bias == 0).all()
    assert (model.ln_f.weight == 1).all()


def test_meta_device_then_init_weights():
    with torch.device("meta"):
        model = GPT(BackboneConfig(width=32, depth=2, heads=4, positions="rope"), vocab_size=V)
    assert model.wte.weight.is_meta
    model.to_empty(device="cpu")
    model.init_weights()
    assert torch.isfinite(model.eval()(tokens(1, 6))).all()
    reference = make(positions="rope", context_length=256)
    assert torch.equal(model.rope.cos, reference.rope.cos)


# --- attention modes ----------------------------------------------------------------


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_causal_mode(positions):
    model = make(positions=positions)
    idx = tokens(1, 8)
    changed = idx.clone()
    changed[0, 5] = (idx[0, 5] + 1) % V
    a, b = model(idx), model(changed)
    assert close(a[:, :5], b[:, :5])
    assert not close(a[:, 5:], b[:, 5:])


def test_prefix_mode():
    model = make()
    idx = tokens(1, 8)
    prefix = torch.tensor([4])
    base = model(idx, mode="prefix", prefix_len=prefix)
    inside = idx.clone()
    inside[0, 3] = (idx[0, 3] + 1) % V  # last prefix token
    after = idx.clone()
    after[0, 6] = (idx[0, 6] + 1) % V  # after the prefix
    h_inside = model(inside, mode="prefix", prefix_len=prefix)
    h_after = model(after, mode="prefix", prefix_len=prefix)
    assert not close(base[:, :3], h_inside[:, :3])  # earlier prefix tokens see the later one
    assert close(base[:, :6], h_after[:, :6])  # nothing before the change sees it
    assert not close(base[:, 6:], h_after[:, 6:])
    # an int prefix_len and the config default mode work too
    prefix_model = make(attention="prefix")
    assert close(prefix_model(idx, prefix_len=4), base)
    # prefix_len 0 is plain causal attention
    assert close(model(idx, mode="prefix", prefix_len=0), model(idx))


def test_bidirectional_mode():
    model = make(attention="bidirectional")
    idx = tokens(1, 8)
    changed = idx.clone()
    changed[0, 7] = (idx[0, 7] + 1) % V
    a, b = model(idx), model(changed)
    assert not (a - b).abs().amax(-1).lt(1e-6).any()  # every position changes


# --- padding --------------------------------------------------------------------------


def _lengths_batch(lengths, L, side):
    """(idx, mask) for a padded batch; returns also each sample's real tokens."""
    samples = [tokens(1, n, seed=10 + i)[0] for i, n in enumerate(lengths)]
    idx = torch.zeros(len(lengths), L, dtype=torch.long)
    mask = torch.zeros(len(lengths), L, dtype=torch.bool)
    for i, s in enumerate(samples):
        n = len(s)
        sl = slice(0, n) if side == "right" else slice(L - n, L)
        idx[i, sl], mask[i, sl] = s, True
    return idx, mask, samples


@pytest.mark.parametrize("positions", ["learned", "rope"])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("mode", ["causal", "prefix", "bidirectional"])
def test_padded_batch_matches_samples_alone(positions, side, mode):
    model = make(positions=positions)
    idx, mask, samples = _lengths_batch([5, 8, 3], 8, side)
    kwargs = {"mode": mode}
    if mode == "prefix":
        kwargs["prefix_len"] = torch.tensor([2, 3, 2])
    h = model(idx, mask=mask, padding_side=side, **kwargs)
    assert torch.isfinite(h).all()  # padding rows too
    for i, s in enumerate(samples):
        alone_kwargs = dict(kwargs, prefix_len=kwargs["prefix_len"][i : i + 1]) if mode == "prefix" else kwargs
        alone = model(s[None], **alone_kwargs)[0]
        assert close(h[i][mask[i]], alone), (i, (h[i][mask[i]] - alone).abs().max())


def test_fully_padded_row_is_finite():
    model = make()
    idx = tokens(2, 6)
    mask = torch.tensor([[True] * 6, [False] * 6])
    for side in ("left", "right"):
        for mode in ("causal", "bidirectional"):
            assert torch.isfinite(model(idx, mask=mask, padding_side=side, mode=mode)).all()


# --- KV cache ---------------------------------------------------------------------------


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_cache_matches_full_forward(positions):
    model = make(positions=positions, mlp="swiglu")
    idx = tokens(2, 12)
    full = model(idx)
    cache = model.new_cache(2, 16)
    assert isinstance(cache, KVCache) and cache.k.shape == (2, 2, 4, 16, 8)
    parts = [model(idx[:, :7], cache=cache)]
    for t in range(7, 12):
        parts.append(model(idx[:, t : t + 1], cache=cache))
    assert cache.length == 12
    assert close(torch.cat(parts, 1), full)


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_cache_left_padded_batch(positions):
    model = make(positions=positions)
    prompt, mask, samples = _lengths_batch([3, 6], 6, "left")
    more = tokens(2, 4, seed=99)
    full_idx = torch.cat([prompt, more], 1)
    full_mask = torch.cat([mask, torch.ones(2, 4, dtype=torch.bool)], 1)
    full = model(full_idx, mask=full_mask, padding_side="left")
    cache = model.new_cache(2, 10)
    parts = [model(prompt, mask=mask, padding_side="left", cache=cache)]
    for t in range(4):
        parts.append(model(more[:, t : t + 1], cache=cache))
    stepped = torch.cat(parts, 1)
    assert close(stepped[full_mask], full[full_mask])
    # and each row equals that sample alone, unpadded
    for i, s in enumerate(samples):
        alone = model(torch.cat([s, more[i]])[None])[0]
        assert close(stepped[i][full_mask[i]], alone)


def test_cache_prefix_mode():
    model = make(attention="prefix")
    idx = tokens(1, 9)
    full = model(idx, prefix_len=4)
    cache = model.new_cache(1, 9)
    parts = [model(idx[:, :5], cache=cache, prefix_len=4)]
    parts += [model(idx[:, t : t + 1], cache=cache, prefix_len=4) for t in range(5, 9)]
    assert close(torch.cat(parts, 1), full)


def test_cache_reorder_and_reset():
    model = make()
    idx = tokens(2, 6)
    cache = model.new_cache(2, 8)
    model(idx[:, :5], cache=cache)
    cache.reorder(torch.tensor([1, 1, 0]))
    assert cache.batch_size == 3
    step = model(idx[[1, 1, 0], 5:6], cache=cache)
    full = model(idx[[1, 1, 0]])
    assert close(step[:, 0], full[:, 5])
    cache.reset()
    assert cache.length == 0 and not cache.key_mask.any()
    assert close(model(idx[[1, 1, 0]], cache=cache), full)


def test_cache_errors():
    model = make()
    with pytest.raises(ValueError, match="exceeds context_length"):
        model.new_cache(1, 33)
    cache = model.new_cache(2, 8)
    with pytest.raises(ValueError, match="batch size 2"):
        model(tokens(3, 2), cache=cache)
    model(tokens(2, 6), cache=cache)
    with pytest.raises(ValueError, match="cache holds 8"):
        model(tokens(2, 3), cache=cache)


# --- inserts ----------------------------------------------------------------------------


class Recorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))
        self.seen: list[object] = []

    def forward(self, x, context):
        self.seen.append(context)
        return x * self.scale


def test_inserts_called_with_context():
    rec = Recorder()
    torch.manual_seed(0)
    model = GPT(BackboneConfig(width=32, depth=2, heads=4), vocab_size=V, inserts={0: rec}).eval()
    assert "inserts.0.scale" in dict(model.named_parameters())
    ctx = object()
    h = model(tokens(1, 4), context=ctx)
    assert rec.seen == [ctx]
    assert rec.scale.item() == 2.0  # init_weights leaves inserts alone
    plain = GPT(BackboneConfig(width=32, depth=2, heads=4), vocab_size=V).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("inserts")})
    assert not close(h, plain(tokens(1, 4)))


@pytest.mark.parametrize("bad", [2, -1, "0"])
def test_insert_index_validation(bad):
    with pytest.raises(ValueError, match=r"valid indices are integers 0\.\.1"):
        GPT(BackboneConfig(width=32, depth=2, heads=4), inserts={bad: nn.Identity()})


# --- dropout and compile ----------------------------------------------------------------


def test_dropout_only_in_training():
    model = make(dropout=0.5)
    idx = tokens(2, 6)
    assert close(model(idx), model(idx))
    model.train()
    assert not close(model(idx), model(idx))


def test_compile_fullgraph_matches_eager():
    # Inductor on CPU: ~15-20 s cold (C++ codegen), a few seconds with a warm cache. One model only.
    model = make(positions="rope")
    idx = tokens(2, 8)
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    with torch.no_grad():
        assert close(compiled(idx), model(idx))


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"mask": torch.tensor([[False, False, True, True, True, True]] * 2), "padding_side": "left"},
        {"mode": "prefix", "prefix_len": 3},
    ],
    ids=["causal", "left-padded", "prefix"],
)
def test_fullgraph_capture(kwargs):
    # Graph capture without code generation (fast): no graph breaks on these paths either.
    model = make(positions="learned")
    idx = tokens(2, 6)
    compiled = torch.compile(model, fullgraph=True, dynamic=False, backend="aot_eager")
    with torch.no_grad():
        assert close(compiled(idx, **kwargs), model(idx, **kwargs))
