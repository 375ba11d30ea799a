"""Text generation with the backbone's KV cache.

The prompt (any modalities plus a text prefix) is encoded and fused once, turned from
right- to left-padding so every sample's last real token sits at the end, and run through
the backbone filling a preallocated cache. Each new token is then embedded by the text
encoder (and the fusion's per-input embedding), run through the backbone for that one
position, and projected by the LM head: the cost of a step does not grow with the prompt
beyond attention over the cache.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import MMCoreError
from .types import Batch, Tokens

__all__ = ["GenerationConfig", "generate", "generate_for_records", "to_left_padding"]


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding options.

    Attributes:
        max_new_tokens: tokens to generate at most per sequence.
        do_sample: sample (temperature, top-k, top-p) instead of greedy decoding.
        temperature, top_k, top_p: sampling filters (top_k 0 and top_p 1.0 disable them).
        num_return_sequences: sequences per prompt.
        eos_id: stop a sequence at this token (default: the text processor's eos).
        seed: seed of sampling (None: torch's global RNG).
    """

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_return_sequences: int = 1
    eos_id: int | None = None
    seed: int | None = None


def to_left_padding(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Move each row's real (right-padded) entries to the end: (B, L, ...) and (B, L)."""
    B, L = mask.shape
    n = mask.sum(1, keepdim=True)  # (B, 1)
    src = (torch.arange(L, device=mask.device).unsqueeze(0) - (L - n)) % L  # (B, L)
    idx = src.view(B, L, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, idx), mask.gather(1, src)


def _text_input(model: Any, name: str | None) -> str:
    texts = [k for k, e in model.encoders.items() if getattr(e, "modality", "") == "text"]
    if name is not None:
        if name not in model.encoders:
            raise MMCoreError(f"no input {name!r}; inputs: {list(model.encoders)}")
        return name
    if len(texts) != 1:
        raise MMCoreError(f"say which text input to generate (inputs: {list(model.encoders)})")
    return texts[0]


def _lm_head(model: Any, text: str, head: str | None) -> Any:
    if head is not None:
        return model.heads[head]
    for h in model.heads.values():
        if getattr(h, "input", None) == text and hasattr(h, "project"):
            return h
    raise MMCoreError(f"the model has no LM head over {text!r}; heads: {list(model.heads)}")


def _filter(logits: Tensor, cfg: GenerationConfig) -> Tensor:
    if cfg.temperature != 1.0:
        logits = logits / max(cfg.temperature, 1e-6)
    if cfg.top_k:
        kth = logits.topk(min(cfg.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > cfg.top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def _expand(batch: Batch, n: int) -> Batch:
    if n == 1:
        return batch
    return Batch(
        {k: {kk: vv.repeat_interleave(n, 0) for kk, vv in v.items()} for k, v in batch.inputs.items()},
        {k: v.repeat_interleave(n, 0) for k, v in batch.targets.items()},
        batch.meta,
    )


@torch.no_grad()
def generate_stream(
    model: Any,
    batch: Batch,
    config: GenerationConfig = GenerationConfig(),
    *,
    text_input: str | None = None,
    head: str | None = None,
    mode: str | None = None,
) -> Iterator[Tensor]:
    """Yield the next token of every sequence, (B * num_return_sequences,), step by step."""
    model.eval()
    text = _text_input(model, text_input)
    lm = _lm_head(model, text, head)
    proc = model.processors.get(text)
    eos = config.eos_id if config.eos_id is not None else getattr(proc, "eos_id", None)
    batch = _expand(batch, config.num_return_sequences)
    seq = model.fuse(batch)
    x, mask = to_left_padding(seq.embeds, seq.mask)  # (B, L, D), (B, L)
    B, L, _ = x.shape
    total = L + config.max_new_tokens
    ctx_len = model.backbone.config.context_length
    if total > ctx_len:
        raise MMCoreError(
            f"prompt ({L} positions) + max_new_tokens ({config.max_new_tokens}) exceeds the context length {ctx_len}"
        )
    cache = model.backbone.new_cache(B, total)
    gen = torch.Generator(device=x.device).manual_seed(config.seed) if config.seed is not None else None
    hidden = model.backbone(
        embeds=x, mask=mask, mode=mode, prefix_len=seq.prefix_len, padding_side="left", cache=cache, context=seq.context
    )  # (B, L, D)
    last = hidden[:, -1]  # (B, D)
    done = torch.zeros(B, dtype=torch.bool, device=x.device)
    pad = getattr(proc, "pad_id", 0)
    encoder = model.encoders[text]
    projector = model.projectors[text] if text in model.projectors else None
    for _ in range(config.max_new_tokens):
        logits = lm.project(last).float()  # (B, V)
        if config.do_sample:
            probs = _filter(logits, config).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=gen).squeeze(1)
        else:
            nxt = logits.argmax(-1)
        if eos is not None:
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        yield nxt
        if eos is not None:
            done |= nxt == eos
            if bool(done.all()):
                return
        ids = nxt.unsqueeze(1)  # (B, 1)
        tok = encoder({"ids": ids, "mask": torch.ones_like(ids, dtype=torch.bool)})
        emb = tok.embeds if projector is None else projector(tok.embeds)
        emb = model.fusion.embed_step(text, Tokens(emb, tok.mask)) if hasattr(model.fusion, "embed_step") else emb
        h = model.backbone(embeds=emb, cache=cache, context=seq.context)  # (B, 1, D)
        last = h[:, -1]


def generate(model: Any, batch: Batch, config: GenerationConfig = GenerationConfig(), **kwargs: Any) -> list[list[int]]:
    """New token ids per sequence (``num_return_sequences`` consecutive rows per prompt), eos cut."""
    proc = model.processors.get(_text_input(model, kwargs.get("text_input")))
    eos = config.eos_id if config.eos_id is not None else getattr(proc, "eos_id", None)
    steps = list(generate_stream(model, batch, config, **kwargs))
    if not steps:
        return [[] for _ in range(batch.size * config.num_return_sequences)]
    out = torch.stack(steps, 1).tolist()  # (B, T)
    result = []
    for row in out:
        if eos is not None and eos in row:
            row = row[: row.index(eos)]
        result.append(row)
    return result


def generate_for_records(
    model: Any,
    records: Sequence[Mapping[str, Any]],
    *,
    base: str | Path | None = None,
    text_input: str = "text",
    max_new_tokens: int = 64,
    batch_size: int = 16,
) -> list[str]:
    """Greedy continuations for records whose text (if any) is the prompt; relative paths resolve against ``base``."""
    texts = []
    for i in range(0, len(records), batch_size):
        chunk = []
        for r in records[i : i + batch_size]:
            rec = {}
            for k, v in r.items():
                if k in model.encoders and k != text_input and isinstance(v, str) and base is not None:
                    v = str(Path(base) / v)
                rec[k] = v
            rec[text_input] = {"prompt": r.get(text_input) or ""}
            chunk.append(rec)
        batch = model.preprocess(chunk, targets=())
        ids = generate(model, batch, GenerationConfig(max_new_tokens=max_new_tokens), text_input=text_input)
        proc = model.processors[text_input]
        texts += [proc.decode(row) for row in ids]
    return texts
