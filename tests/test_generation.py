"""Generation: the KV cache changes nothing, beam search equals an exhaustive search, options work.

The model has random weights scaled so that greedy output depends on the prompt and the
position (:func:`vary`); tests assert that their reference output varies (:func:`varied`)."""

from __future__ import annotations

import pytest
import torch

import mmcore
from mmcore.generation import GenerationConfig, generate, generate_stream, to_left_padding

PROMPTS = [{"text": {"prompt": "Hello"}}, {"text": {"prompt": "A much longer prompt here"}}, {"text": {"prompt": ""}}]


def vary(m: mmcore.MultimodalGPT, std: float = 0.5, embed_norm: float = 2.0) -> mmcore.MultimodalGPT:
    """Random weights large enough that greedy output depends on the prompt and the position
    (the initialisation's small weights emit one token everywhere); token embeddings share one
    norm so that no token wins by its length alone. Norm layers keep their initial values."""
    with torch.no_grad():
        for name, p in m.named_parameters():
            if ".ln" not in name and "norm" not in name:
                p.normal_(0.0, std)
        emb = m.encoders["text"].token_embedding.weight
        emb.copy_(emb / emb.norm(dim=1, keepdim=True) * embed_norm)
    return m.eval()


def varied(rows: list[list[int]], at_least: int = 5) -> list[list[int]]:
    """``rows``, after checking that the reference output is not trivial (a test comparing two
    constant sequences cannot see a decode step attending to padding or off by one position)."""
    assert len({t for r in rows for t in r}) >= at_least, f"the reference output hardly varies: {rows}"
    return rows


@pytest.fixture(scope="module")
def model():
    from mmcore import plugins

    pm = plugins.PluginManager()
    torch.manual_seed(0)
    m = mmcore.build(
        {
            "spec_version": 1,
            "backbone": {"width": 32, "depth": 2, "heads": 4, "context_length": 96, "positions": "rope"},
            "encoders": {"text": {"component": "text.bytes", "max_length": 64}},
            "heads": {"lm": {"component": "lm"}},
        },
        registry=pm.registry,
    )
    return vary(m)


def batch_of(model, records):
    return model.preprocess(records, targets=())


def test_to_left_padding():
    x = torch.arange(6).view(2, 3)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    y, m = to_left_padding(x, mask)
    assert m.tolist() == [[False, True, True], [False, False, True]]
    assert y[0, 1:].tolist() == [0, 1] and y[1, 2].item() == 3


def test_greedy_with_cache_equals_without(model):
    b = batch_of(model, PROMPTS)
    cfg = GenerationConfig(max_new_tokens=12, eos_id=-1)
    assert varied(generate(model, b, cfg)) == generate(
        model, b, GenerationConfig(max_new_tokens=12, eos_id=-1, use_cache=False)
    )


def test_batched_left_padding_equals_one_prompt_at_a_time(model):
    cfg = GenerationConfig(max_new_tokens=10, eos_id=-1)
    together = varied(generate(model, batch_of(model, PROMPTS), cfg))
    alone = [generate(model, batch_of(model, [p]), cfg)[0] for p in PROMPTS]
    assert together == alone


def test_beam_search_with_one_beam_is_greedy(model):
    b = batch_of(model, PROMPTS)
    greedy = varied(generate(model, b, GenerationConfig(max_new_tokens=10, eos_id=-1)))
    beam = generate(model, b, GenerationConfig(max_new_tokens=10, eos_id=-1, num_beams=1))
    assert beam == greedy


def test_beam_search_returns_ranked_distinct_sequences(model):
    b = batch_of(model, PROMPTS[:2])
    out = generate(model, b, GenerationConfig(max_new_tokens=6, num_beams=4, num_return_sequences=3, eos_id=-1))
    assert len(out) == 6
    assert len({tuple(x) for x in out[:3]}) == 3


# --- beam search against an exhaustive search ----------------------------------------------------

#: a tiny vocabulary for beam search: two bytes and eos (the processor's ``output_ids``)
TINY = (ord("a"), ord("b"))
DEPTH = 4  # max_new_tokens: 16 unfinished and 15 finished hypotheses per prompt


def exhaustive(model, prompt: str, allowed: list[int], eos: int, depth: int, length_penalty: float):
    """Every hypothesis of at most ``depth`` tokens over ``allowed`` with its beam score
    (summed log-probability, renormalised over ``allowed``, divided by length ** penalty;
    a finished hypothesis counts its eos), best first. Scored by full forward passes of the
    model, independently of generation's cache and bookkeeping."""
    import itertools

    base = batch_of(model, [{"text": {"prompt": prompt}}])
    ids = base.inputs["text"]["ids"]  # (1, P), no padding
    P = ids.shape[1]
    seqs = list(itertools.product(allowed, repeat=depth))
    full = torch.cat([ids.expand(len(seqs), P), torch.tensor(seqs)], 1)
    inputs = {"ids": full, "mask": torch.ones_like(full, dtype=torch.bool)}
    inputs["prompt_len"] = base.inputs["text"]["prompt_len"].expand(len(seqs))
    with torch.no_grad():
        logits = model(mmcore.Batch({"text": inputs}), compute_loss=False).outputs["lm"].logits
    logp = logits[:, P - 1 : P - 1 + depth][..., allowed].log_softmax(-1)  # (N, depth, |allowed|)
    col = {t: i for i, t in enumerate(allowed)}
    scored: dict[tuple[int, ...], float] = {}
    for n, seq in enumerate(seqs):
        total = 0.0
        for t, tok in enumerate(seq):
            total += float(logp[n, t, col[tok]])
            if tok == eos:
                scored.setdefault(seq[:t], total / (t + 1) ** length_penalty)
                break
        else:
            scored[seq] = total / depth**length_penalty
    return sorted(scored.items(), key=lambda kv: kv[1], reverse=True)


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
@pytest.mark.parametrize("length_penalty", [1.0, 0.0, 2.0])
def test_beam_search_finds_the_exhaustive_ranking(model, monkeypatch, use_cache, length_penalty):
    """With as many beams as candidates, beam search is an exhaustive search: its hypotheses
    are the best ones in order, scored with the length penalty."""
    proc = model.processors["text"]
    eos = proc.eos_id
    allowed = [*TINY, eos]
    monkeypatch.setattr(proc, "output_ids", allowed, raising=False)
    prompts = ["Hello", "A much longer prompt here"]
    beams = 2 ** (DEPTH - 1) * len(allowed)  # every live hypothesis of the last step, times each token
    n = 10
    cfg = GenerationConfig(
        max_new_tokens=DEPTH,
        num_beams=beams,
        num_return_sequences=n,
        length_penalty=length_penalty,
        use_cache=use_cache,
    )
    got = generate(model, batch_of(model, [{"text": {"prompt": p}} for p in prompts]), cfg)
    for i, prompt in enumerate(prompts):
        ranking = exhaustive(model, prompt, allowed, eos, DEPTH, length_penalty)
        scores = [s for _, s in ranking]
        assert min(a - b for a, b in zip(scores[:n], scores[1 : n + 1], strict=True)) > 1e-5  # no near-ties
        # the reference is not trivial: finished and unfinished hypotheses, both tokens, among the best
        top = [list(h) for h, _ in ranking[:n]]
        assert {len(h) for h in top} > {DEPTH} and {t for h in top for t in h} == set(TINY)
        assert got[i * n : (i + 1) * n] == top, (prompt, length_penalty)
    # the length penalty changes the winner on these prompts
    rankings = {lp: [exhaustive(model, p, allowed, eos, DEPTH, lp)[0][0] for p in prompts] for lp in (0.0, 2.0)}
    assert rankings[0.0] != rankings[2.0]


def test_beam_search_with_few_beams_keeps_the_best_prefixes(model, monkeypatch):
    """Two beams: the result is a hypothesis of the exhaustive list, at least as good as greedy."""
    proc = model.processors["text"]
    allowed = [*TINY, proc.eos_id]
    monkeypatch.setattr(proc, "output_ids", allowed, raising=False)
    b = batch_of(model, [{"text": {"prompt": "Hello"}}])
    ranking = dict(exhaustive(model, "Hello", allowed, proc.eos_id, DEPTH, 1.0))
    greedy = generate(model, b, GenerationConfig(max_new_tokens=DEPTH))[0]
    for use_cache in (True, False):
        two = generate(model, b, GenerationConfig(max_new_tokens=DEPTH, num_beams=2, use_cache=use_cache))[0]
        assert ranking[tuple(two)] >= ranking[tuple(greedy)] - 1e-6


def test_sampling_is_seeded_and_returns_several_sequences(model):
    b = batch_of(model, PROMPTS[:1])
    cfg = GenerationConfig(
        max_new_tokens=20,
        do_sample=True,
        top_k=50,
        top_p=0.95,
        temperature=1.2,
        num_return_sequences=5,
        seed=7,
        eos_id=-1,
    )
    a, c = generate(model, b, cfg), generate(model, b, cfg)
    assert a == c and len(a) == 5 and len({tuple(x) for x in a}) > 1
    top1 = GenerationConfig(max_new_tokens=8, do_sample=True, top_k=1, seed=1, eos_id=-1)
    assert generate(model, b, top1) == generate(model, b, GenerationConfig(max_new_tokens=8, eos_id=-1))


def test_stop_tokens_min_tokens_and_repetition_penalty(model):
    b = batch_of(model, PROMPTS[:1])
    free = varied(generate(model, b, GenerationConfig(max_new_tokens=10, eos_id=-1)))[0]
    stop = free[3]
    cut = generate(model, b, GenerationConfig(max_new_tokens=10, eos_id=-1, stop_tokens=(stop,)))[0]
    assert cut == free[: free.index(stop)]
    forced = generate(model, b, GenerationConfig(max_new_tokens=10, eos_id=free[0], min_new_tokens=5))[0]
    assert len(forced) >= 5 and free[0] not in forced[:5]
    rep = generate(model, b, GenerationConfig(max_new_tokens=30, eos_id=-1, repetition_penalty=100.0))[0]
    assert len(set(rep)) > len(rep) * 0.8  # a huge penalty all but forbids repeats


def test_stop_strings_cut_the_text(model):
    from mmcore.generation import _cut_stop_string

    proc = model.processors["text"]
    ids = proc.encode("hello world, and more")
    assert proc.decode(_cut_stop_string(ids, proc, [", and"])) == "hello world"
    assert _cut_stop_string(ids, proc, ["absent"]) == ids


def test_streaming_yields_the_same_tokens(model):
    b = batch_of(model, PROMPTS)
    cfg = GenerationConfig(max_new_tokens=8, eos_id=-1)
    streamed = varied(torch.stack(list(generate_stream(model, b, cfg)), 1).tolist())
    assert streamed == generate(model, b, cfg)


def test_too_long_is_a_clear_error(model):
    with pytest.raises(mmcore.MMCoreError, match="exceeds the context length 96"):
        generate(model, batch_of(model, PROMPTS), GenerationConfig(max_new_tokens=90))


def test_encoders_see_only_the_keys_their_processor_makes(model):
    """``offset`` goes only to encoders that declare ``takes_offset`` (a strict third-party
    encoder that rejects unknown keys keeps working)."""
    from mmcore.generation import _Decoder

    enc = model.encoders["text"]
    seen: list[set[str]] = []
    handle = enc.register_forward_pre_hook(lambda mod, args: seen.append(set(args[0])))
    try:
        generate(model, batch_of(model, [{"text": "ab"}]), GenerationConfig(max_new_tokens=4))
        _Decoder(model, "text", None, None).embed(torch.tensor([[97]]), torch.tensor([3]))
    finally:
        handle.remove()
    assert len(seen) >= 2 and all(keys <= {"ids", "mask", "prompt_len"} for keys in seen), seen


def _prefix_model(tasks: dict) -> mmcore.MultimodalGPT:
    from mmcore import plugins

    torch.manual_seed(1)
    spec = {
        "spec_version": 1,
        "backbone": {"width": 32, "depth": 2, "heads": 4, "context_length": 96},
        "encoders": {"text": {"component": "text.bytes", "max_length": 64}},
        "heads": {"lm": {"component": "lm"}},
        "tasks": tasks,
    }
    m = mmcore.build(spec, registry=plugins.PluginManager().registry).eval()
    with torch.no_grad():  # larger random weights than the init: attention that depends on what it sees
        for p in m.parameters():
            p.normal_(0.0, 0.3)
    return m


def test_generation_attends_the_prompt_as_the_model_was_trained():
    from mmcore.generation import trained_attention

    pairs = {"t": {"objective": "prefix_lm", "train": "pairs.jsonl"}}
    m = _prefix_model(pairs)
    assert trained_attention(m, "lm") == "prefix"
    b = batch_of(m, PROMPTS)
    cfg = GenerationConfig(max_new_tokens=8, eos_id=-1)
    default = generate(m, b, cfg)
    assert default == generate(m, b, cfg, mode="prefix")
    # the cache changes nothing in prefix mode either, beams included
    assert default == generate(m, b, GenerationConfig(max_new_tokens=8, eos_id=-1, use_cache=False))
    assert default == generate(m, b, GenerationConfig(max_new_tokens=8, eos_id=-1, num_beams=1))
    # the first new token is what a prefix-mode forward pass over the prompt predicts, on
    # prompts where the causal reading predicts another one
    differ = 0
    for text in ["abc", "hello world", "xyz xyz", "The quick brown fox", "0123456789", "aaaa bbbb", "q"]:
        one = batch_of(m, [{"text": {"prompt": text}}])
        last = one.inputs["text"]["prompt_len"][0] - 1
        pick = {md: int(m(one, mode=md).outputs["lm"].logits[0, last].argmax()) for md in ("prefix", "causal")}
        assert generate(m, one, GenerationConfig(max_new_tokens=1, eos_id=-1))[0][0] == pick["prefix"]
        differ += pick["prefix"] != pick["causal"]
    assert differ >= 1

    assert trained_attention(_prefix_model({"t": {"objective": "lm", "train": "c.txt"}}), "lm") == "causal"
    override = {"t": {"objective": "prefix_lm", "train": "p.jsonl", "attention": "causal"}}
    assert trained_attention(_prefix_model(override), "lm") == "causal"
    mixed = {"a": {"objective": "lm", "train": "c.txt"}, "b": {"objective": "prefix_lm", "train": "p.jsonl"}}
    assert trained_attention(_prefix_model(mixed), "lm") is None  # ambiguous: the backbone's default
    assert trained_attention(_prefix_model({}), "lm") is None


def test_generate_command_attention_flag(tmp_path, capsys):
    from mmcore.cli import main

    m = _prefix_model({"t": {"objective": "prefix_lm", "train": "pairs.jsonl"}})
    mmcore.save(m, tmp_path / "m")
    proc = m.processors["text"]
    cfg = GenerationConfig(max_new_tokens=4, eos_id=-1)
    for text in ["abc", "hello world", "xyz xyz", "The quick brown fox", "0123456789", "aaaa bbbb", "q"]:
        b = batch_of(m, [{"text": {"prompt": text}}])
        want = {md: generate(m, b, cfg, mode=md)[0] for md in ("prefix", "causal")}
        if want["prefix"] != want["causal"]:
            break
    assert want["prefix"] != want["causal"]
    got = {}
    for flag in (None, "prefix", "causal"):
        extra = ["--attention", flag] if flag else []
        argv = ["generate", str(tmp_path / "m"), "--prompt", text, "--max-new-tokens", "4", *extra]
        assert main(argv) == 0
        got[flag] = capsys.readouterr().out.rstrip("\n")
    assert got[None] == got["prefix"] == proc.decode(want["prefix"])
    assert got["causal"] == proc.decode(want["causal"])


@pytest.mark.parametrize("objective", ["lm", "prefix_lm"])
def test_cli_and_python_build_the_same_prompt_from_what_the_model_was_trained_on(
    objective, tmp_path, capsys, monkeypatch
):
    """`mmcore generate --prompt` and prompt_records (docs/tasks.md) give the same prompt ids and
    the same generation: '<bos> text' for an lm-trained model, '<bos> text <sep>' for prefix_lm."""
    from mmcore import generation
    from mmcore.cli import main
    from mmcore.generation import prompt_records, prompt_separator

    m = _prefix_model({"t": {"objective": objective, "train": "data.jsonl"}})
    proc = m.processors["text"]
    text = "hello world"
    assert prompt_separator(m, "lm") is (objective == "prefix_lm")
    batch = m.preprocess(prompt_records(m, [text]), targets=())
    body = [proc.bos_id, *proc.encode(text)]
    want_ids = body + [proc.sep_id] if objective == "prefix_lm" else body
    assert batch.inputs["text"]["ids"][0].tolist() == want_ids
    cfg = GenerationConfig(max_new_tokens=6, eos_id=-1)
    want = generate(m, batch, cfg)[0]
    # the other framing generates something else here: the test tells them apart
    other = m.preprocess(prompt_records(m, [text], separator=objective != "prefix_lm"), targets=())
    assert generate(m, other, cfg)[0] != want

    mmcore.save(m, tmp_path / "m")
    seen = []
    real = generation.generate

    def spy(model, b, *args, **kwargs):
        seen.append(b.inputs["text"]["ids"][0].tolist())
        return real(model, b, *args, **kwargs)

    monkeypatch.setattr(generation, "generate", spy)
    assert main(["generate", str(tmp_path / "m"), "--prompt", text, "--max-new-tokens", "6"]) == 0
    assert seen == [want_ids]
    out = capsys.readouterr().out.rstrip("\n")
    want_text = proc.decode(generate(m, batch, GenerationConfig(max_new_tokens=6))[0])
    assert out == want_text
