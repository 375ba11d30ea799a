"""The backbone's single-token decode step (``GPT._decode_step``) against the general path.

``GPT.forward`` takes the lean step when a cache is given and the input is one token per
row with no mask, positions or prefix_len (what generation does after the prompt). Passing
an all-True ``mask`` computes the same thing through the general path, which is the
reference here: hidden states, cache contents and greedy tokens must agree.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

import mmcore
from mmcore.backbone import GPT, Block
from mmcore.config import BackboneConfig
from mmcore.decode import state_of
from mmcore.generation import GenerationConfig, generate

V = 50
OPTIONS = list(
    itertools.product(
        ["layernorm", "rmsnorm"], ["learned", "rope", "none"], ["gelu", "gelu_tanh", "swiglu"], [True, False]
    )
)


def make(inserts=None, vocab_size: int | None = V, **overrides) -> GPT:
    options = dict(width=32, depth=2, heads=4, context_length=32) | overrides
    torch.manual_seed(0)
    model = GPT(BackboneConfig(**options), vocab_size=vocab_size, inserts=inserts).eval()
    with torch.no_grad():  # non-trivial norms and biases, so every parameter shows in the output
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")) or name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def left_padded_prompt(lengths=(3, 6, 1), L=6, seed=1):
    """idx (B, L) and mask (B, L) with each row's tokens at the end."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, V, (len(lengths), L), generator=g)
    mask = torch.zeros(len(lengths), L, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, L - n :] = True
    return idx, mask


class CountBlockCalls:
    """Counts Block.forward calls (the general path calls every block as a module; the step does not)."""

    def __init__(self, monkeypatch):
        self.n = 0
        original = Block.forward

        def counting(block, *args, **kwargs):
            self.n += 1
            return original(block, *args, **kwargs)

        monkeypatch.setattr(Block, "forward", counting)


def run_both(model, idx, mask, steps, context=None, **step_kwargs):
    """Fill two caches with the prompt, then feed ``steps (B, T)`` one token at a time: through
    the fast step (no mask) and through the general path (an all-True mask). Returns both
    outputs (B, T, D) and both caches."""
    B, L = idx.shape
    fast_cache = model.new_cache(B, L + steps.shape[1])
    slow_cache = model.new_cache(B, L + steps.shape[1])
    model(idx, mask=mask, padding_side="left", cache=fast_cache, context=context)
    model(idx, mask=mask, padding_side="left", cache=slow_cache, context=context)
    fast, slow = [], []
    ones = torch.ones(B, 1, dtype=torch.bool)
    for t in range(steps.shape[1]):
        fast.append(model(steps[:, t : t + 1], cache=fast_cache, context=context, **step_kwargs))
        slow.append(model(steps[:, t : t + 1], mask=ones, cache=slow_cache, context=context, **step_kwargs))
    return torch.cat(fast, 1), torch.cat(slow, 1), fast_cache, slow_cache


def assert_same_cache(a, b):
    assert a.length == b.length
    assert torch.equal(a.key_mask, b.key_mask)
    torch.testing.assert_close(a.k, b.k, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.v, b.v, atol=1e-5, rtol=0)


# --- hidden states --------------------------------------------------------------------------


@pytest.mark.parametrize("lengths", [(3, 6, 1), (6, 6, 6)], ids=["left-padded", "unpadded"])
@pytest.mark.parametrize("norm,positions,mlp,bias", OPTIONS)
def test_step_equals_general_path_for_every_option(norm, positions, mlp, bias, lengths):
    model = make(norm=norm, positions=positions, mlp=mlp, bias=bias)
    idx, mask = left_padded_prompt(lengths)
    steps = torch.randint(0, V, (3, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        fast, slow, fast_cache, slow_cache = run_both(model, idx, mask, steps)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
    assert_same_cache(fast_cache, slow_cache)
    assert state_of(fast_cache).plan is not None  # the step really ran
    assert state_of(fast_cache).padded == (min(lengths) < 6)

    # ... and each row equals its sample alone, unpadded and uncached
    for i in range(3):
        alone = torch.cat([idx[i][mask[i]], steps[i]])[None]
        with torch.no_grad():
            full = model(alone)[0, -steps.shape[1] :]
        torch.testing.assert_close(fast[i], full, atol=1e-5, rtol=0)


LLAMA_FAMILY = dict(norm="rmsnorm", positions="rope", mlp="swiglu", bias=False, mlp_hidden=40)


@pytest.mark.parametrize(
    "options",
    [
        dict(kv_heads=2),
        dict(kv_heads=1, qkv_bias=True),
        dict(kv_heads=2, rope_layout="interleaved"),
        dict(kv_heads=4, rope_scaling={"type": "llama3", "factor": 4.0, "original_context_length": 16}),
        dict(kv_heads=2, rope_scaling={"type": "linear", "factor": 2.0}, rope_layout="interleaved"),
    ],
    ids=["gqa", "mqa-qkv-bias", "gqa-interleaved", "llama3-scaling", "linear-scaling-interleaved"],
)
def test_step_equals_general_path_for_the_llama_family_options(options):
    """Grouped-query attention (the cache holds kv_heads heads), both rotary layouts and scalings,
    a q/k/v bias alone: the decode step equals the general path, and each row its sample alone."""
    model = make(**LLAMA_FAMILY, **options)
    idx, mask = left_padded_prompt()
    steps = torch.randint(0, V, (3, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        fast, slow, fast_cache, slow_cache = run_both(model, idx, mask, steps)
    assert fast_cache.k.shape[2] == options["kv_heads"]
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
    assert_same_cache(fast_cache, slow_cache)
    assert state_of(fast_cache).plan is not None  # the step really ran
    for i in range(3):
        alone = torch.cat([idx[i][mask[i]], steps[i]])[None]
        with torch.no_grad():
            full = model(alone)[0, -steps.shape[1] :]
        torch.testing.assert_close(fast[i], full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("positions", ["learned", "rope"])
@torch.no_grad()
def test_padding_written_after_steps_is_seen(positions):
    # Steps over an unpadded cache need no mask; a later general-path chunk with padding
    # (here in the middle of the sequence) must switch the mask and positions back on.
    model = make(positions=positions)
    idx = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(8))
    chunk_mask = torch.tensor([[True, True], [False, True]])
    ones = torch.ones(2, 1, dtype=torch.bool)
    cache, ref = model.new_cache(2, 9), model.new_cache(2, 9)
    outs = {id(cache): [], id(ref): []}
    for c, step_mask in ((cache, None), (ref, ones)):
        model(idx[:, :3], cache=c)
        outs[id(c)].append(model(idx[:, 3:4], mask=step_mask, cache=c))
        outs[id(c)].append(model(idx[:, 4:6], mask=chunk_mask, padding_side="left", cache=c))
        outs[id(c)] += [model(idx[:, t : t + 1], mask=step_mask, cache=c) for t in range(6, 9)]
    assert state_of(cache).padded and state_of(cache).checked == 9
    torch.testing.assert_close(torch.cat(outs[id(cache)], 1), torch.cat(outs[id(ref)], 1), atol=1e-5, rtol=0)
    assert_same_cache(cache, ref)


def test_step_skips_the_block_modules(monkeypatch):
    model = make()
    idx, mask = left_padded_prompt()
    cache = model.new_cache(3, 8)
    with torch.no_grad():
        model(idx, mask=mask, padding_side="left", cache=cache)
        calls = CountBlockCalls(monkeypatch)
        model(idx[:, :1], cache=cache)
        assert calls.n == 0
        model(idx[:, :1], mask=torch.ones(3, 1, dtype=torch.bool), cache=cache)
        assert calls.n == model.config.depth


@pytest.mark.parametrize("attention", ["prefix", "bidirectional"])
def test_step_in_every_attention_mode(attention):
    # One query after the cache sees every real cached key in every mode.
    model = make(attention=attention, positions="rope")
    idx, mask = left_padded_prompt()
    steps = torch.randint(0, V, (3, 4), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        fast, slow, fast_cache, slow_cache = run_both(model, idx, mask, steps)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
    assert_same_cache(fast_cache, slow_cache)


def test_grad_mode_uses_the_general_path(monkeypatch):
    # The step is an inference path; with grad mode on the modules run (same values).
    model = make(positions="rope", mlp="swiglu")
    idx, mask = left_padded_prompt()
    steps = torch.randint(0, V, (3, 3), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        fast = run_both(model, idx, mask, steps)[0]
    calls = CountBlockCalls(monkeypatch)
    grad, slow, grad_cache, _ = run_both(model, idx, mask, steps)
    assert calls.n == 2 * 2 * (1 + 3) and state_of(grad_cache).owner is None
    assert grad.requires_grad
    torch.testing.assert_close(grad, fast, atol=1e-5, rtol=0)
    with torch.inference_mode():
        inference = run_both(model, idx, mask, steps)[0]
    torch.testing.assert_close(inference, fast, atol=0, rtol=0)


def test_step_with_embeds_and_no_token_embedding():
    model = make(vocab_size=None, positions="learned")
    x = torch.randn(2, 5, 32)
    cache = model.new_cache(2, 7)
    with torch.no_grad():
        model(embeds=x[:, :3], cache=cache)
        parts = [model(embeds=x[:, t : t + 1], cache=cache) for t in range(3, 5)]
        full = model(embeds=x)
    torch.testing.assert_close(torch.cat(parts, 1), full[:, 3:], atol=1e-5, rtol=0)


def test_step_in_bfloat16():
    model = make(positions="rope").to(torch.bfloat16)
    idx, mask = left_padded_prompt()
    steps = torch.randint(0, V, (3, 3), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        fast, slow, _, _ = run_both(model, idx, mask, steps)
    assert fast.dtype == torch.bfloat16
    torch.testing.assert_close(fast, slow, atol=0, rtol=0)  # the same ops: bit for bit


# --- inserts, reorder, reset ------------------------------------------------------------------


class AddContext(nn.Module):
    """A dummy insert: ``x + tanh(lin(context))`` broadcast over positions; records its calls."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.calls = 0

    def forward(self, x, context):
        self.calls += 1
        return x + torch.tanh(self.lin(context))[:, None, :]  # (B, L, D)


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_step_runs_inserts_with_the_context(positions):
    torch.manual_seed(0)
    inserts = {0: AddContext(32), 1: AddContext(32)}
    model = make(inserts=inserts, positions=positions)
    context = torch.randn(3, 32)
    idx, mask = left_padded_prompt()
    steps = torch.randint(0, V, (3, 4), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        fast, slow, fast_cache, slow_cache = run_both(model, idx, mask, steps, context=context)
        plain = run_both(make(positions=positions), idx, mask, steps)[0]
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
    assert_same_cache(fast_cache, slow_cache)
    assert all(m.calls == 2 + 2 * 4 for m in inserts.values())  # 2 prompts + 4 steps on each path
    assert not torch.allclose(fast, plain, atol=1e-3)  # the inserts did change the output


def test_step_after_reorder_and_reset():
    model = make(positions="rope")
    idx, mask = left_padded_prompt()
    cache = model.new_cache(3, 10)
    ref = model.new_cache(3, 10)
    index = torch.tensor([2, 2, 0, 1])
    ones = torch.ones(4, 1, dtype=torch.bool)
    with torch.no_grad():
        for c in (cache, ref):
            model(idx, mask=mask, padding_side="left", cache=c)
            c.reorder(index)
        nxt = torch.randint(0, V, (4, 1))
        torch.testing.assert_close(model(nxt, cache=cache), model(nxt, mask=ones, cache=ref), atol=1e-5, rtol=0)
        cache.reset()
        assert state_of(cache).owner is None and not state_of(cache).padded and state_of(cache).checked == 0
        model(idx[index], cache=cache)
        full = model(torch.cat([idx[index], nxt], 1))
        torch.testing.assert_close(model(nxt, cache=cache)[:, 0], full[:, -1], atol=1e-5, rtol=0)


@torch.no_grad()
def test_padding_rewritten_after_a_rollback_is_seen():
    # Rewinding cache.length (e.g. speculative decoding) and rewriting slots with padding.
    model = make()
    idx = torch.randint(0, V, (2, 6), generator=torch.Generator().manual_seed(9))
    ones = torch.ones(2, 1, dtype=torch.bool)
    cache, ref = model.new_cache(2, 6), model.new_cache(2, 6)
    for c in (cache, ref):
        model(idx[:, :3], cache=c)
    for t in range(3, 5):
        model(idx[:, t : t + 1], cache=cache)
        model(idx[:, t : t + 1], mask=ones, cache=ref)
    chunk_mask = torch.tensor([[True, True], [True, False]])
    for c in (cache, ref):
        c.length = 3
        model(idx[:, 3:5], mask=chunk_mask, cache=c)
    torch.testing.assert_close(
        model(idx[:, 5:6], cache=cache), model(idx[:, 5:6], mask=ones, cache=ref), atol=1e-5, rtol=0
    )
    assert state_of(cache).padded


@torch.no_grad()
def test_step_sees_weights_updated_in_place():
    # The step reads copies of the linear weights (CPU); an in-place update (an optimizer step,
    # load_state_dict) must reach it.
    model = make()
    idx = torch.randint(0, V, (2, 6), generator=torch.Generator().manual_seed(7))
    ones = torch.ones(2, 1, dtype=torch.bool)
    cache, ref = model.new_cache(2, 6), model.new_cache(2, 6)
    for c in (cache, ref):
        model(idx[:, :4], cache=c)
    model(idx[:, 4:5], cache=cache)  # builds the plan
    model(idx[:, 4:5], mask=ones, cache=ref)
    model.blocks[1].mlp.fc.weight.mul_(3.0)
    model.load_state_dict({"blocks.0.attn.qkv.weight": model.blocks[0].attn.qkv.weight * 0.5}, strict=False)
    torch.testing.assert_close(
        model(idx[:, 5:6], cache=cache), model(idx[:, 5:6], mask=ones, cache=ref), atol=1e-5, rtol=0
    )


# --- when the general path runs instead ----------------------------------------------------


@torch.no_grad()
def test_training_with_dropout_uses_the_general_path(monkeypatch):
    model = make(dropout=0.5).train()
    cache = model.new_cache(2, 6)
    model(torch.randint(0, V, (2, 4)), cache=cache)
    calls = CountBlockCalls(monkeypatch)
    model(torch.randint(0, V, (2, 1)), cache=cache)
    assert calls.n == 2
    model.eval()  # dropout off: the step applies
    model(torch.randint(0, V, (2, 1)), cache=cache)
    assert calls.n == 2


def test_hooks_and_non_stock_modules_use_the_general_path(monkeypatch):
    seen = []
    model = make()
    model.blocks[1].mlp.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    cache = model.new_cache(1, 4)
    with torch.no_grad():
        model(torch.randint(0, V, (1, 2)), cache=cache)
        model(torch.randint(0, V, (1, 1)), cache=cache)
    assert seen == [(1, 2, 32), (1, 1, 32)]  # the hook saw the step too

    class MyNorm(nn.LayerNorm):
        pass

    model = make()
    model.blocks[0].ln_2 = MyNorm(32)
    cache = model.new_cache(1, 4)
    calls = CountBlockCalls(monkeypatch)
    with torch.no_grad():
        model(torch.randint(0, V, (1, 2)), cache=cache)
        model(torch.randint(0, V, (1, 1)), cache=cache)
    assert calls.n == 4 and state_of(cache).plan is None


@torch.no_grad()
def test_compiled_forward_steps_through_the_general_path():
    # Under torch.compile the general path runs (it captures as one graph); same values.
    model = make(positions="rope")
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=False)
    idx = torch.randint(0, V, (2, 6), generator=torch.Generator().manual_seed(10))
    cache = model.new_cache(2, 6)
    compiled(idx[:, :5], cache=cache)
    step = compiled(idx[:, 5:6], cache=cache)
    assert state_of(cache).owner is None
    torch.testing.assert_close(step[:, 0], model(idx)[:, 5], atol=1e-5, rtol=0)


def test_step_errors_match_the_general_path():
    model = make()
    cache = model.new_cache(2, 4)
    with torch.no_grad():
        model(torch.randint(0, V, (2, 4)), cache=cache)
        with pytest.raises(ValueError, match="cache holds 4"):
            model(torch.randint(0, V, (2, 1)), cache=cache)
        cache = model.new_cache(2, 4)
        with pytest.raises(ValueError, match="batch size 2"):
            model(torch.randint(0, V, (3, 1)), cache=cache)


# --- greedy generation ----------------------------------------------------------------------

PROMPTS = [{"text": {"prompt": "Hi"}}, {"text": {"prompt": "A longer prompt, left padded"}}, {"text": {"prompt": ""}}]


@pytest.mark.parametrize(
    "backbone",
    [
        {"positions": "learned", "mlp": "gelu_tanh"},
        {"positions": "rope", "mlp": "swiglu", "norm": "rmsnorm", "bias": False},
        {"positions": "none", "mlp": "gelu"},
    ],
    ids=["gpt2", "llama", "nopos"],
)
def test_greedy_tokens_identical_with_and_without_the_step(backbone, monkeypatch):
    from mmcore import plugins

    torch.manual_seed(0)
    model = mmcore.build(
        {
            "spec_version": 1,
            "backbone": {"width": 32, "depth": 2, "heads": 4, "context_length": 96, **backbone},
            "encoders": {"text": {"component": "text.bytes", "max_length": 64}},
            "heads": {"lm": {"component": "lm"}},
        },
        registry=plugins.PluginManager().registry,
    ).eval()
    batch = model.preprocess(PROMPTS, targets=())
    cfg = GenerationConfig(max_new_tokens=16, eos_id=-1)
    fast = generate(model, batch, cfg)
    no_cache = generate(model, batch, GenerationConfig(max_new_tokens=16, eos_id=-1, use_cache=False))
    monkeypatch.setattr(GPT, "_step_plan", lambda self, cache: None)  # force the general path
    slow = generate(model, batch, cfg)
    beams = generate(copy.deepcopy(model), batch, GenerationConfig(max_new_tokens=6, num_beams=3, eos_id=-1))
    monkeypatch.undo()
    assert fast == slow == no_cache
    assert generate(model, batch, GenerationConfig(max_new_tokens=6, num_beams=3, eos_id=-1)) == beams
