"""The core's fusions: early (layout, index, missing inputs), cross_attention, resampler.

Non-text inputs come from a tiny in-test encoder (``test.vec``: a sequence of vectors),
registered as a plugin in code, so these tests need neither the vision nor the audio
plugin.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import make_plugin_module
from torch import nn

import mmcore
from mmcore import BackboneConfig, Batch, ComponentConfig, Tokens
from mmcore.builtin import CrossAttentionFusionConfig, EarlyFusionConfig, ResamplerFusionConfig
from mmcore.fusion import EarlyFusion
from mmcore.fusion_xattn import CrossAttentionFusion, CrossAttentionMemory, split_text_input
from mmcore.plugins import PluginManager
from mmcore.resampler import ResamplerFusion

W = 32
DIM = 12  # the vec encoder's width (!= W, so a projector is built)


# --- a tiny non-text modality --------------------------------------------------------------


class VecConfig(ComponentConfig):
    dim: int = DIM


class VecProcessor(mmcore.Processor):
    """A record field holding a list of ``dim``-vectors -> ``{"x": (B, N, dim), "mask": (B, N)}``."""

    modality = "vec"

    def __init__(self, config: VecConfig | None = None):
        self.dim = (config or VecConfig()).dim

    def __call__(self, value, *, where=""):
        return {"x": torch.tensor(value, dtype=torch.float32).reshape(-1, self.dim)}

    def collate(self, samples):
        n = max([s["x"].shape[0] for s in samples if s is not None], default=1)
        x = torch.zeros(len(samples), n, self.dim)
        mask = torch.zeros(len(samples), n, dtype=torch.bool)
        for i, s in enumerate(samples):
            if s is not None:
                x[i, : s["x"].shape[0]] = s["x"]
                mask[i, : s["x"].shape[0]] = True
        return {"x": x, "mask": mask}


class VecEncoder(mmcore.Encoder):
    modality = "vec"

    def __init__(self, config: VecConfig | None = None, *, processor=None):
        super().__init__()
        self.out_dim = (config or VecConfig()).dim
        self.lin = nn.Linear(self.out_dim, self.out_dim)

    def forward(self, inputs):
        return Tokens(torch.tanh(self.lin(inputs["x"])), inputs["mask"].to(torch.bool))


def _vec_components():
    return [
        mmcore.Component(
            kind="encoder",
            name="test.vec",
            modality="vec",
            config=VecConfig,
            factory=VecEncoder,
            processor=VecProcessor,
            description="Test-only: a sequence of vectors.",
        )
    ]


@pytest.fixture(scope="module")
def registry():
    pm = PluginManager(autoload=True, strict=False, blocked=())
    pm.register(make_plugin_module("mmcore_test_vec", _vec_components), name="test_vec")
    return pm.registry


def spec(fusion, *, vec=("image", "audio"), depth=2, text=True, **backbone):
    encoders = {n: {"component": "test.vec"} for n in vec}
    if text:
        encoders["text"] = {"component": "text.bytes", "max_length": 32}
    return {
        "spec_version": 1,
        "name": "fusion-test",
        "backbone": {"width": W, "depth": depth, "heads": 4, "context_length": 128, **backbone},
        "encoders": encoders,
        "fusion": fusion,
        "heads": {"lm": {"component": "lm"}} if text else {},
    }


def vecs(n, seed):
    return torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed)).tolist()


RECORDS = [
    {"image": vecs(3, 1), "audio": vecs(2, 2), "text": "a cat sat"},
    {"text": "no media at all here"},  # lacks every non-text input
    {"image": vecs(1, 3), "text": "dog"},
]


def set_gates(fusion, attn, ff):
    with torch.no_grad():
        for layer in fusion.inserts().values():
            layer.attn_gate.fill_(attn)
            layer.ff_gate.fill_(ff)


def lm_logits(model, batch):
    return model(batch, compute_loss=False).outputs["lm"].logits


def assert_grads_everywhere(model, batch):
    model.zero_grad()
    out = model(batch)
    out.loss.backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in params if p.grad is None]
    zero = [n for n, p in params if p.grad is not None and not bool(p.grad.ne(0).any())]
    bad = [n for n, p in params if p.grad is not None and not bool(p.grad.isfinite().all())]
    assert (missing, zero, bad) == ([], [], [])


def _nan_on_empty_rows_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False):
    """Reference attention that, like some GPU kernels, gives NaN for a query with no valid key."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    return torch.softmax(scores.masked_fill(~attn_mask, float("-inf")), dim=-1) @ v


# --- early fusion, without a backbone ------------------------------------------------------


def _tokens(lengths, n, seed):
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    mask = torch.arange(n).expand(B, n) < torch.tensor(lengths)[:, None]
    return Tokens(torch.randn(B, n, W, generator=g), mask)


def test_early_index_gathers_each_input_in_order_with_boundaries_only_where_present():
    fusion = EarlyFusion(EarlyFusionConfig(), W, ["image", "audio", "text"], {"text"})
    with torch.no_grad():
        fusion.modality_embedding.normal_()  # non-zero, to see it added
    lengths = {"image": [4, 0, 2], "audio": [1, 3, 0], "text": [5, 2, 4]}
    tokens = {"image": _tokens(lengths["image"], 4, 1), "audio": _tokens(lengths["audio"], 3, 2)}
    tokens["text"] = _tokens(lengths["text"], 5, 3)
    seq = fusion(tokens, Batch({"text": {"mask": tokens["text"].mask}}))

    has = {m: torch.tensor(lengths[m]) > 0 for m in lengths}
    real = {m: torch.tensor(lengths[m]) + (2 * has[m] if m != "text" else 0) for m in lengths}
    count = real["image"] + real["audio"] + real["text"]
    L = seq.embeds.shape[1]
    assert torch.equal(seq.mask, torch.arange(L).expand(3, L) < count[:, None])  # right-padded
    assert torch.equal(seq.prefix_len, real["image"] + real["audio"])  # only real tokens and boundaries
    assert seq.modalities == ("image", "audio", "text")
    for i, m in enumerate(seq.modalities):
        # every position of the input (its tokens and boundaries) is labelled with it, nothing else is
        assert torch.equal((seq.modality_ids == i).sum(1), real[m])
        idx, tmask = seq.index[m], tokens[m].mask
        assert torch.equal(idx >= 0, tmask)
        gathered = seq.gather(seq.embeds, m)
        expected = tokens[m].embeds + fusion.modality_embedding[i]
        assert torch.equal(gathered[tmask], expected[tmask])
        assert torch.equal(seq.modality_ids.gather(1, idx.clamp(min=0))[tmask], torch.full_like(idx, i)[tmask])
    # inputs are laid out in order: image < audio < text, in every sample
    for b in range(3):
        pos = [seq.index[m][b][seq.index[m][b] >= 0] for m in seq.modalities]
        flat = torch.cat(pos)
        assert torch.equal(flat, flat.sort().values) and len(set(flat.tolist())) == len(flat)
    # boundaries sit right around a present input (they are per input: no modality embedding added)
    for k, m in enumerate(fusion.bounded):
        for b in range(3):
            n = lengths[m][b]
            if n == 0:
                continue
            first, last = int(seq.index[m][b, 0]), int(seq.index[m][b, n - 1])
            torch.testing.assert_close(seq.embeds[b, first - 1], fusion.boundary[k, 0])
            torch.testing.assert_close(seq.embeds[b, last + 1], fusion.boundary[k, 1])


def test_early_input_absent_from_the_batch_and_text_only_fast_path():
    fusion = EarlyFusion(EarlyFusionConfig(), W, ["image", "audio", "text"], {"text"})
    tokens = {"audio": _tokens([0, 2], 2, 1), "text": _tokens([3, 1], 3, 2)}
    seq = fusion(tokens, Batch({"text": {}}))
    assert set(seq.index) == {"audio", "text"}
    assert torch.equal(seq.mask.sum(1), torch.tensor([3, 1 + 2 + 2]))
    assert torch.equal(seq.prefix_len, torch.tensor([0, 4]))
    only_text = fusion({"text": tokens["text"]}, Batch({"text": {}}))
    assert only_text.index == {"text": None} and only_text.embeds.shape == (2, 3, W)


@pytest.mark.parametrize("kind", ["early", "resampler", "cross_attention"])
def test_embed_step_gives_a_generated_token_its_fused_embedding(kind):
    """What generation feeds through the KV cache for a new text token equals its fused embedding."""
    bb = BackboneConfig(width=W, heads=4, depth=2)
    enc = _stub_encoders("image", "text")
    if kind == "early":
        fusion = EarlyFusion.from_config(EarlyFusionConfig(), width=W, encoders=enc)
    elif kind == "resampler":
        fusion = ResamplerFusion.from_config(
            ResamplerFusionConfig(num_latents=2, depth=1), width=W, encoders=enc, backbone=bb
        )
    else:
        fusion = CrossAttentionFusion.from_config(CrossAttentionFusionConfig(), width=W, encoders=enc, backbone=bb)
    for p in fusion.parameters():
        torch.nn.init.normal_(p)  # non-zero modality embeddings
    image, text = _tokens([2, 0], 2, 1), _tokens([4, 4], 4, 2)
    seq = fusion({"image": image, "text": text}, Batch({"text": {}}))
    step = fusion.embed_step("text", Tokens(text.embeds[:, 3:], text.mask[:, 3:]))  # (B, 1, D)
    torch.testing.assert_close(seq.gather(seq.embeds, "text")[:, 3:], step)


# --- resampler, without a backbone -------------------------------------------------------


def _stub_encoders(*names):
    return {n: SimpleNamespace(modality="text" if n == "text" else "vec") for n in names}


def test_resampler_token_counts_masks_and_layout(monkeypatch):
    import mmcore.fusion_xattn as fx

    # attention that gives NaN where a query has no valid key: latents are keys too, so none
    monkeypatch.setattr(fx, "F", SimpleNamespace(scaled_dot_product_attention=_nan_on_empty_rows_sdpa))
    cfg = ResamplerFusionConfig(num_latents=4, latents={"audio": 3}, depth=1)
    bb = BackboneConfig(width=W, heads=4)
    fusion = ResamplerFusion.from_config(cfg, width=W, encoders=_stub_encoders("image", "audio", "text"), backbone=bb)
    lengths = {"image": [5, 0, 2], "audio": [1, 6, 0], "text": [4, 2, 3]}
    tokens = {m: _tokens(ls, max(ls), seed) for seed, (m, ls) in enumerate(lengths.items())}
    res = fusion.resample(tokens)
    assert res["image"].embeds.shape == (3, 4, W) and res["audio"].embeds.shape == (3, 3, W)
    assert torch.equal(res["image"].mask, torch.tensor([[True] * 4, [False] * 4, [True] * 4]))
    assert torch.equal(res["audio"].mask, torch.tensor([[True] * 3, [True] * 3, [False] * 3]))
    assert all(bool(t.embeds.isfinite().all()) for t in res.values())
    assert res["text"] is tokens["text"]

    seq = fusion(tokens, Batch({"text": {}}))
    expected = torch.tensor([(4 + 2) + (3 + 2) + 4, (3 + 2) + 2, (4 + 2) + 3])
    assert torch.equal(seq.mask.sum(1), expected)
    assert torch.equal(seq.prefix_len, expected - torch.tensor(lengths["text"]))
    i = fusion.early.order.index("image")
    got = seq.gather(seq.embeds, "image")[res["image"].mask]
    want = res["image"].embeds[res["image"].mask] + fusion.early.modality_embedding[i]
    torch.testing.assert_close(got, want)

    # padding never matters: change the padded input tokens, same output
    noisy = Tokens(torch.where(tokens["image"].mask[..., None], tokens["image"].embeds, 1e4), tokens["image"].mask)
    torch.testing.assert_close(fusion.resample({"image": noisy})["image"].embeds, res["image"].embeds)


def test_resampler_rejects_latents_for_unknown_or_text_inputs():
    bb = BackboneConfig(width=W, heads=4)
    enc = _stub_encoders("image", "text")
    for bad in ({"text": 4}, {"photo": 4}):
        with pytest.raises(ValueError, match="not non-text encoder inputs"):
            ResamplerFusion.from_config(ResamplerFusionConfig(latents=bad), width=W, encoders=enc, backbone=bb)
    with pytest.raises(ValueError, match="positive"):
        ResamplerFusionConfig(latents={"image": 0})


# --- cross-attention fusion --------------------------------------------------------------


def xattn_model(registry, **options):
    return mmcore.build(spec({"component": "cross_attention", **options}), registry=registry).eval()


def text_only_twin(registry, model):
    """A text-only model (early fusion, plain GPT) with ``model``'s backbone and text weights."""
    ref = mmcore.build(spec({"component": "early"}, vec=()), registry=registry).eval()
    res = model.load_state_dict(ref.state_dict(), strict=False)
    assert res.unexpected_keys == []
    assert all(
        k.startswith(("encoders.image", "encoders.audio", "projectors.", "fusion.", "backbone.inserts."))
        for k in res.missing_keys
    )
    return ref


def test_cross_attention_sequence_is_the_text_and_memory_the_rest(registry):
    model = xattn_model(registry)
    batch = model.preprocess(RECORDS)
    seq = model.fuse(batch)
    text = model.encoders["text"](batch.inputs["text"])
    assert torch.equal(seq.embeds, text.embeds) and torch.equal(seq.mask, text.mask)
    assert seq.index == {"text": None} and seq.modalities == ("text",)
    mem = seq.context
    assert isinstance(mem, CrossAttentionMemory) and mem.inputs == ("image", "audio")
    assert mem.embeds.shape == (3, 3 + 2, W)
    assert mem.mask.tolist() == [[True] * 5, [False] * 5, [True, False, False, False, False]]
    assert mem.has_memory.tolist() == [True, False, True]
    assert mem.select(torch.tensor([2, 2, 1])).has_memory.tolist() == [True, True, False]  # beam search
    assert sorted(model.fusion.inserts()) == [0, 1]
    assert all(model.backbone.inserts[str(i)] is layer for i, layer in model.fusion.inserts().items())

    deeper = mmcore.build(spec({"component": "cross_attention", "every": 2}, depth=4), registry=registry)
    assert sorted(deeper.fusion.inserts()) == [1, 3] and sorted(deeper.backbone.inserts) == ["1", "3"]
    with pytest.raises(mmcore.PluginError, match="every = 3 exceeds the backbone depth"):
        mmcore.build(spec({"component": "cross_attention", "every": 3}), registry=registry)
    with pytest.raises(mmcore.PluginError, match=r"fusion heads \(3\) must divide the backbone width \(32\)"):
        mmcore.build(spec({"component": "cross_attention", "heads": 3}), registry=registry)


def test_cross_attention_needs_exactly_one_text_input(registry):
    two = spec({"component": "cross_attention"}, vec=("image",))
    two["encoders"]["caption"] = {"component": "text.bytes"}
    with pytest.raises(mmcore.PluginError, match=r"exactly one text input.*image \(vec\), text \(text\), caption"):
        mmcore.build(two, registry=registry)
    with pytest.raises(ValueError, match="found 0"):
        split_text_input(_stub_encoders("image"), "cross_attention")


def test_cross_attention_starts_as_the_text_model_and_learns_to_use_memory(registry):
    model = xattn_model(registry)
    ref = text_only_twin(registry, model)
    batch = model.preprocess(RECORDS)
    base = lm_logits(ref, batch)
    assert torch.equal(lm_logits(model, batch), base)  # zero gates: exactly the text model

    set_gates(model.fusion, attn=1.0, ff=0.0)
    out = lm_logits(model, batch)
    assert bool(out.isfinite().all())
    changed = (out - base).abs().amax(dim=(1, 2))
    assert changed[0] > 1e-4 and changed[2] > 1e-4  # samples with memory attend to it
    torch.testing.assert_close(out[1], base[1])  # no memory: no cross-attention update, no NaN

    set_gates(model.fusion, attn=1.0, ff=1.0)
    assert bool(lm_logits(model, batch).isfinite().all())
    text_only = model.preprocess([{"text": r["text"]} for r in RECORDS])  # no non-text input at all
    assert "image" not in text_only.inputs
    seq = model.fuse(text_only)
    assert seq.context.embeds.shape == (3, 0, W)
    assert bool(lm_logits(model, text_only).isfinite().all())


def test_cross_attention_no_nan_for_samples_without_memory_whatever_the_kernel(registry, monkeypatch):
    import mmcore.fusion_xattn as fx

    monkeypatch.setattr(fx, "F", SimpleNamespace(scaled_dot_product_attention=_nan_on_empty_rows_sdpa))
    model = xattn_model(registry).train()
    set_gates(model.fusion, attn=0.5, ff=0.5)
    batch = model.preprocess(RECORDS)  # record 1 has no memory
    out = model(batch)
    assert bool(out.outputs["lm"].logits.isfinite().all())
    out.loss.backward()
    assert all(bool(p.grad.isfinite().all()) for p in model.parameters() if p.grad is not None)


def test_cross_attention_kv_cache_matches_full_forward_with_memory(registry):
    model = xattn_model(registry, every=1)
    set_gates(model.fusion, attn=0.8, ff=0.5)
    seq = model.fuse(model.preprocess(RECORDS))
    bb = model.backbone
    with torch.no_grad():
        full = bb(embeds=seq.embeds, mask=seq.mask, context=seq.context)
        B, L, _ = seq.embeds.shape
        cache = bb.new_cache(B, L)
        steps = [(0, 4)] + [(j, j + 1) for j in range(4, L)]
        inc = torch.cat(
            [bb(embeds=seq.embeds[:, a:b], mask=seq.mask[:, a:b], cache=cache, context=seq.context) for a, b in steps],
            dim=1,
        )
    torch.testing.assert_close(inc[seq.mask], full[seq.mask], atol=1e-5, rtol=1e-4)


def test_cross_attention_gradients_state_dict_and_freeze(registry, tmp_path):
    from safetensors.torch import save_file

    model = xattn_model(registry).train()
    batch = model.preprocess(RECORDS)
    # At init tanh(0) = 0 blocks the signal into the inserted layers; only the gates learn.
    model(batch).loss.backward()
    for layer in model.fusion.inserts().values():
        assert layer.attn_gate.grad.abs().item() > 0 and layer.ff_gate.grad.abs().item() > 0
        assert not bool(layer.xattn.q.weight.grad.ne(0).any())
    set_gates(model.fusion, attn=0.5, ff=0.5)
    assert_grads_everywhere(model, batch)

    state = model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))  # refuses shared
    assert [k for k in state if k.startswith("fusion.")] == ["fusion.modality_embedding"]
    assert len([k for k in state if ".inserts." in k]) == 2 * len(model.backbone.inserts["0"].state_dict())
    assert sum(v.numel() for v in state.values()) == sum(p.numel() for p in model.parameters())

    layer = model.fusion.inserts()[0]
    layer.reset_parameters()
    assert layer.attn_gate.item() == 0 and layer.ff_gate.item() == 0

    frozen_spec = spec({"component": "cross_attention", "freeze": True})
    frozen = mmcore.build(frozen_spec, registry=registry)
    assert not any(p.requires_grad for layer in frozen.fusion.inserts().values() for p in layer.parameters())
    assert all(p.requires_grad for p in frozen.backbone.blocks.parameters())


def test_cross_attention_save_load_round_trip(registry, tmp_path):
    model = xattn_model(registry)
    set_gates(model.fusion, attn=0.7, ff=-0.3)
    d = mmcore.save(model, tmp_path / "m")
    loaded = mmcore.load(d, registry=registry).eval()
    batch = model.preprocess(RECORDS)
    assert torch.equal(lm_logits(model, batch), lm_logits(loaded, batch))
    # the fusion still hands out the very layers the backbone owns (and loaded)
    assert all(loaded.backbone.inserts[str(i)] is layer for i, layer in loaded.fusion.inserts().items())
    assert loaded.fusion.inserts()[0].attn_gate.item() == pytest.approx(0.7)


# --- the other fusions, composed --------------------------------------------------------


@pytest.mark.parametrize("fusion", ["early", "resampler"])
def test_composed_gradients_and_missing_inputs(registry, fusion):
    options = {"num_latents": 4, "latents": {"audio": 2}, "depth": 1} if fusion == "resampler" else {}
    model = mmcore.build(spec({"component": fusion, **options}), registry=registry).train()
    batch = model.preprocess(RECORDS)
    assert_grads_everywhere(model, batch)
    seq = model.fuse(batch)
    # real tokens (+2 boundaries) of the inputs each record has: resampled to 4 / 2, or as given (3, 2; 0; 1)
    prefix = [4 + 2 + 2 + 2, 0, 4 + 2] if fusion == "resampler" else [3 + 2 + 2 + 2, 0, 1 + 2]
    n_text = batch.inputs["text"]["mask"].sum(1)
    assert seq.prefix_len.tolist() == prefix
    assert torch.equal(seq.mask.sum(1), torch.tensor(prefix) + n_text)
    text_only = model.preprocess([{"text": r["text"]} for r in RECORDS])
    out = model(text_only)
    assert out.sequence.index == {"text": None} and bool(out.loss.isfinite())


def test_resampler_save_load_round_trip(registry, tmp_path):
    model = mmcore.build(
        spec({"component": "resampler", "num_latents": 3, "latents": {"image": 5}, "depth": 1}), registry=registry
    ).eval()
    d = mmcore.save(model, tmp_path / "m")
    loaded = mmcore.load(d, registry=registry).eval()
    assert loaded.fusion.config.latents == {"image": 5}
    batch = model.preprocess(RECORDS)
    assert torch.equal(lm_logits(model, batch), lm_logits(loaded, batch))
    assert {m: r.num_latents for m, r in loaded.fusion.resamplers.items()} == {"image": 5, "audio": 3}


@pytest.mark.parametrize(
    ("fusion", "longest"),
    [
        ({"component": "early"}, 20 + 3 + 2),  # text, the three feature tokens and their two boundaries
        ({"component": "resampler", "num_latents": 4}, 20 + 4 + 2),  # the features resampled to 4 latents
        ({"component": "cross_attention"}, 20),  # only the text is in the sequence
    ],
)
def test_core_fusions_say_how_long_their_sequence_gets(fusion, longest, manager):
    """The core's fusions answer max_sequence_length as a plugin's does; the build checks it."""
    from mmcore.errors import SpecError

    def spec(ctx: int) -> dict:
        return {
            "spec_version": 1,
            "name": "ctx",
            "backbone": {"width": 16, "depth": 2, "heads": 2, "context_length": ctx},
            "encoders": {
                "x": {"component": "features", "features": 3},
                "text": {"component": "text.bytes", "max_length": 20},
            },
            "fusion": fusion,
            "heads": {"lm": {"component": "lm"}},
        }

    model = mmcore.build(spec(longest))
    assert model.fusion.max_sequence_length({"x": 3, "text": 20}) == longest
    with pytest.raises(SpecError, match=rf"backbone\.context_length.*{longest} positions"):
        mmcore.build(spec(longest - 1))
