"""Text generation: greedy, sampling (temperature, top-k, top-p) and beam search, with the
backbone's preallocated KV cache.

The prompt (any modalities plus a text prefix) is encoded and fused once, moved from
right- to left-padding so every sample's last real token sits at the end, and run through
the backbone, filling the cache. Each new token is embedded by the text encoder (plus the
fusion's per-input embedding), run through the backbone for that one position against the
cache, and projected by the LM head: the cost of a step does not grow with the prompt
beyond attention over the cache.

    out = mmcore.generate(model, batch, mmcore.GenerationConfig(max_new_tokens=20, num_return_sequences=5,
                                                                do_sample=True, top_k=50, seed=0))
    texts = [model.processors["text"].decode(ids) for ids in out]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import MMCoreError
from .types import Batch, Tokens

__all__ = ["GenerationConfig", "generate", "generate_stream", "generate_for_records", "to_left_padding"]


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding options.

    Attributes:
        max_new_tokens: tokens to generate at most per sequence.
        min_new_tokens: eos and stop tokens are forbidden before this many tokens.
        do_sample: sample (with temperature, top-k, top-p) instead of picking the most likely token.
        temperature, top_k, top_p: sampling filters (top_k 0 and top_p 1.0 disable them).
        num_beams: beam search with this many beams (1: greedy or sampling).
        length_penalty: beam search ranks finished sequences by ``logprob / length ** length_penalty``.
        num_return_sequences: sequences per prompt (at most ``num_beams`` with beam search).
        repetition_penalty: >1 discourages tokens already generated (CTRL: positive logits are
            divided by it, negative ones multiplied).
        eos_id: end of sequence (default: the text processor's ``eos_id``).
        stop_tokens: more token ids that end a sequence (kept out of the output, like eos).
        stop_strings: a sequence ends once its decoded text contains one of these; the text is
            cut before it.
        seed: seed of the sampling generator (None: torch's global RNG).
        use_cache: use the KV cache (False recomputes the whole sequence at every step; for tests).
    """

    max_new_tokens: int = 32
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 1
    length_penalty: float = 1.0
    num_return_sequences: int = 1
    repetition_penalty: float = 1.0
    eos_id: int | None = None
    stop_tokens: tuple[int, ...] = field(default_factory=tuple)
    stop_strings: tuple[str, ...] = field(default_factory=tuple)
    seed: int | None = None
    use_cache: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.num_beams < 1 or self.num_return_sequences < 1:
            raise ValueError("num_beams and num_return_sequences must be >= 1")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise ValueError(
                f"beam search returns at most num_beams ({self.num_beams}) sequences, "
                f"asked for {self.num_return_sequences}"
            )
        if self.num_beams > 1 and self.do_sample:
            raise ValueError("beam search with sampling is not supported: set do_sample = false or num_beams = 1")
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.repetition_penalty <= 0:
            raise ValueError("temperature > 0, 0 < top_p <= 1, top_k >= 0 and repetition_penalty > 0 are required")


def to_left_padding(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Move each row's real (right-padded) entries to the end: (B, L, ...) and (B, L)."""
    B, L = mask.shape
    n = mask.sum(1, keepdim=True)  # (B, 1)
    src = (torch.arange(L, device=mask.device).unsqueeze(0) - (L - n)) % L  # (B, L)
    idx = src.view(B, L, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, idx), mask.gather(1, src)


# --- pieces of the model that generation needs ------------------------------------------------


class _Decoder:
    """The model seen as a next-token function over a left-padded, cached sequence."""

    def __init__(self, model: Any, text_input: str | None, head: str | None, mode: str | None):
        self.model = model
        texts = [k for k, e in model.encoders.items() if getattr(e, "modality", "") == "text"]
        if text_input is None:
            if len(texts) != 1:
                raise MMCoreError(f"say which text input to generate (text_input=...); inputs: {list(model.encoders)}")
            text_input = texts[0]
        if text_input not in model.encoders:
            raise MMCoreError(f"no input {text_input!r}; inputs: {list(model.encoders)}")
        self.text = text_input
        if head is None:
            head = next(
                (
                    n
                    for n, h in model.heads.items()
                    if getattr(h, "input", None) == text_input and hasattr(h, "project")
                ),
                None,
            )
        if head is None or head not in model.heads or not hasattr(model.heads[head], "project"):
            raise MMCoreError(f"the model has no LM head over {text_input!r}; heads: {list(model.heads)}")
        self.head = model.heads[head]
        self.proc = model.processors.get(text_input)
        self.encoder = model.encoders[text_input]
        self.projector = model.projectors[text_input] if text_input in model.projectors else None
        self.mode = mode
        self.backbone = model.backbone

    def embed(self, ids: Tensor) -> Tensor:
        """Token ids (B, T) -> the embeddings the fusion would give them (B, T, D)."""
        tok = self.encoder({"ids": ids, "mask": torch.ones_like(ids, dtype=torch.bool)})
        emb = tok.embeds if self.projector is None else self.projector(tok.embeds)
        step = getattr(self.model.fusion, "embed_step", None)
        return emb if step is None else step(self.text, Tokens(emb, tok.mask))

    def prompt(self, batch: Batch) -> tuple[Tensor, Tensor, Any, Any]:
        seq = self.model.fuse(batch)
        x, mask = to_left_padding(seq.embeds, seq.mask)  # (B, L, D), (B, L)
        return x, mask, seq.prefix_len, seq.context

    def logits(self, hidden_last: Tensor) -> Tensor:
        return self.head.project(hidden_last).float()  # (B, V)


def _expand(t: Any, n: int) -> Any:
    if n == 1 or t is None:
        return t
    if isinstance(t, Tensor):
        return t.repeat_interleave(n, 0)
    if hasattr(t, "__dataclass_fields__"):
        from dataclasses import fields, replace

        return replace(t, **{f.name: _expand(getattr(t, f.name), n) for f in fields(t)})
    return t


class _Runner:
    """Feeds a (possibly cached) sequence to the backbone one step at a time."""

    def __init__(
        self, dec: _Decoder, x: Tensor, mask: Tensor, prefix_len: Any, context: Any, total: int, use_cache: bool
    ):
        self.dec, self.context, self.use_cache = dec, context, use_cache
        ctx_len = dec.backbone.config.context_length
        if total > ctx_len:
            raise MMCoreError(
                f"prompt ({x.shape[1]} positions) + max_new_tokens ({total - x.shape[1]}) exceeds the "
                f"context length {ctx_len}"
            )
        self.x, self.mask, self.prefix_len = x, mask, prefix_len
        self.cache = dec.backbone.new_cache(x.shape[0], total) if use_cache else None
        self.first = True

    def step(self, new_ids: Tensor | None) -> Tensor:
        """Hidden state of the last position after appending ``new_ids`` (B,) (None: the prompt)."""
        bb = self.dec.backbone
        if new_ids is not None:
            emb = self.dec.embed(new_ids.unsqueeze(1))  # (B, 1, D)
            if not self.use_cache:
                self.x = torch.cat([self.x, emb], 1)
                self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], 1)
        if self.use_cache and not self.first:
            h = bb(embeds=emb, cache=self.cache, context=self.context)  # (B, 1, D)
        else:
            h = bb(
                embeds=self.x,
                mask=self.mask,
                mode=self.dec.mode,
                prefix_len=self.prefix_len,
                padding_side="left",
                cache=self.cache,
                context=self.context,
            )  # (B, L, D)
        self.first = False
        return h[:, -1]

    def reorder(self, index: Tensor) -> None:
        if self.cache is not None:
            self.cache.reorder(index)
        else:
            self.x, self.mask = self.x[index], self.mask[index]
        self.context = _select(self.context, index)


def _select(t: Any, index: Tensor) -> Any:
    if t is None:
        return None
    if isinstance(t, Tensor):
        return t.index_select(0, index)
    if hasattr(t, "__dataclass_fields__"):
        from dataclasses import fields, replace

        return replace(t, **{f.name: _select(getattr(t, f.name), index) for f in fields(t)})
    return t


# --- logits processing ---------------------------------------------------------------------------


def _process(logits: Tensor, seen: Tensor | None, step: int, cfg: GenerationConfig, enders: Tensor | None) -> Tensor:
    if cfg.repetition_penalty != 1.0 and seen is not None:
        penalised = torch.where(logits > 0, logits / cfg.repetition_penalty, logits * cfg.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if enders is not None and step < cfg.min_new_tokens:
        logits = logits.index_fill(1, enders, float("-inf"))
    return logits


def _seen(dec: _Decoder, rows: int, cfg: GenerationConfig, device: torch.device) -> Tensor | None:
    """(rows, V) bool: tokens generated so far, for the repetition penalty (None when off)."""
    if cfg.repetition_penalty == 1.0:
        return None
    vocab = getattr(dec.head, "vocab_size", None)
    if not isinstance(vocab, int):
        raise MMCoreError("repetition_penalty needs an LM head that exposes vocab_size")
    return torch.zeros(rows, vocab, dtype=torch.bool, device=device)


def _filter(logits: Tensor, cfg: GenerationConfig) -> Tensor:
    if cfg.temperature != 1.0:
        logits = logits / cfg.temperature
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


def _enders(dec: _Decoder, cfg: GenerationConfig, device: torch.device) -> Tensor | None:
    eos = cfg.eos_id if cfg.eos_id is not None else getattr(dec.proc, "eos_id", None)
    # Negative ids (eos_id=-1: "no end token") can never be generated.
    ids = [i for i in ([eos] if eos is not None else []) + list(cfg.stop_tokens) if i >= 0]
    return torch.tensor(ids, device=device, dtype=torch.long) if ids else None


# --- greedy and sampling -----------------------------------------------------------------------------


@torch.no_grad()
def generate_stream(
    model: Any,
    batch: Batch,
    config: GenerationConfig | None = None,
    *,
    text_input: str | None = None,
    head: str | None = None,
    mode: str | None = None,
) -> Iterator[Tensor]:
    """Greedy or sampled decoding, one step at a time: yields the new token of every
    sequence, ``(B * num_return_sequences,)`` long; finished sequences get the pad id."""
    cfg = config or GenerationConfig()
    if cfg.num_beams > 1:
        raise MMCoreError("streaming works with greedy and sampling decoding, not beam search")
    model.eval()
    dec = _Decoder(model, text_input, head, mode)
    x, mask, prefix_len, context = dec.prompt(batch)
    n = cfg.num_return_sequences
    x, mask, prefix_len, context = _expand(x, n), _expand(mask, n), _expand(prefix_len, n), _expand(context, n)
    B = x.shape[0]
    runner = _Runner(dec, x, mask, prefix_len, context, x.shape[1] + cfg.max_new_tokens, cfg.use_cache)
    enders = _enders(dec, cfg, x.device)
    pad = int(getattr(dec.proc, "pad_id", 0))
    gen = torch.Generator(device=x.device).manual_seed(cfg.seed) if cfg.seed is not None else None
    seen = _seen(dec, B, cfg, x.device)
    done = torch.zeros(B, dtype=torch.bool, device=x.device)
    last = runner.step(None)
    for step in range(cfg.max_new_tokens):
        logits = _process(dec.logits(last), seen, step, cfg, enders)  # (B, V)
        if cfg.do_sample:
            nxt = torch.multinomial(_filter(logits, cfg).softmax(-1), 1, generator=gen).squeeze(1)
        else:
            nxt = logits.argmax(-1)
        if enders is not None:  # finished sequences keep emitting padding
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        yield nxt
        if seen is not None:
            seen.scatter_(1, nxt.unsqueeze(1), True)
        if enders is not None:
            done |= torch.isin(nxt, enders)
            if bool(done.all()):
                return
        if step + 1 < cfg.max_new_tokens:
            last = runner.step(nxt)


# --- beam search ------------------------------------------------------------------------------------


@torch.no_grad()
def _beam_search(
    model: Any, batch: Batch, cfg: GenerationConfig, text_input: str | None, head: str | None, mode: str | None
) -> list[list[int]]:
    model.eval()
    dec = _Decoder(model, text_input, head, mode)
    x, mask, prefix_len, context = dec.prompt(batch)
    B, K = x.shape[0], cfg.num_beams
    x, mask, prefix_len, context = _expand(x, K), _expand(mask, K), _expand(prefix_len, K), _expand(context, K)
    runner = _Runner(dec, x, mask, prefix_len, context, x.shape[1] + cfg.max_new_tokens, cfg.use_cache)
    enders = _enders(dec, cfg, x.device)
    ender_set = set(enders.tolist()) if enders is not None else set()
    scores = torch.full((B, K), float("-inf"), device=x.device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    tokens = torch.zeros(B * K, 0, dtype=torch.long, device=x.device)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    closed = [False] * B
    seen = _seen(dec, B * K, cfg, x.device)
    last = runner.step(None)
    for step in range(cfg.max_new_tokens):
        logits = _process(dec.logits(last), seen, step, cfg, enders)
        logp = logits.log_softmax(-1)  # (B*K, V)
        V = logp.shape[-1]
        cand = (scores.view(-1, 1) + logp).view(B, K * V)  # (B, K*V)
        top, idx = cand.topk(min(2 * K, K * V), dim=1)  # (B, 2K)
        beam, tok = idx // V, idx % V
        new_scores = torch.full((B, K), float("-inf"), device=x.device)
        new_src = torch.zeros(B, K, dtype=torch.long, device=x.device)
        new_tok = torch.zeros(B, K, dtype=torch.long, device=x.device)
        top_l, beam_l, tok_l = top.tolist(), beam.tolist(), tok.tolist()
        for b in range(B):  # bookkeeping of finished hypotheses (outside the forward pass)
            kept = 0
            for j in range(top.shape[1]):
                s, k, t = top_l[b][j], beam_l[b][j], tok_l[b][j]
                if s == float("-inf"):
                    break
                if t in ender_set or closed[b]:
                    if not closed[b] and j < K:
                        hyp = tokens[b * K + k].tolist()
                        finished[b].append((s / max(1, len(hyp) + 1) ** cfg.length_penalty, hyp))
                    continue
                new_scores[b, kept], new_src[b, kept], new_tok[b, kept] = s, k, t
                kept += 1
                if kept == K:
                    break
            if len(finished[b]) >= K:
                best_alive = new_scores[b, 0].item() / (len(tokens[0]) + 1) ** cfg.length_penalty
                if max(f[0] for f in finished[b]) >= best_alive:
                    closed[b] = True
        if all(closed):
            break
        src = (new_src + torch.arange(B, device=x.device).unsqueeze(1) * K).view(-1)  # (B*K,)
        tokens = torch.cat([tokens[src], new_tok.view(-1, 1)], 1)
        scores = new_scores
        if seen is not None:
            seen = seen[src].scatter_(1, new_tok.view(-1, 1), True)
        if step + 1 < cfg.max_new_tokens:
            runner.reorder(src)
            last = runner.step(new_tok.view(-1))
    out: list[list[int]] = []
    for b in range(B):
        pool = list(finished[b])
        if not closed[b]:
            for k in range(K):
                if scores[b, k] > float("-inf"):
                    hyp = tokens[b * K + k].tolist()
                    pool.append((scores[b, k].item() / max(1, len(hyp)) ** cfg.length_penalty, hyp))
        pool.sort(key=lambda p: p[0], reverse=True)
        out += [h for _, h in pool[: cfg.num_return_sequences]]
    return out


# --- the entry point ----------------------------------------------------------------------------------


def generate(
    model: Any,
    batch: Batch,
    config: GenerationConfig | None = None,
    *,
    text_input: str | None = None,
    head: str | None = None,
    mode: str | None = None,
) -> list[list[int]]:
    """New token ids for every prompt of ``batch``: ``num_return_sequences`` consecutive
    lists per prompt, each cut before its eos / stop token / stop string."""
    cfg = config or GenerationConfig()
    if cfg.num_beams > 1:
        rows = _beam_search(model, batch, cfg, text_input, head, mode)
    else:
        steps = list(generate_stream(model, batch, cfg, text_input=text_input, head=head, mode=mode))
        rows = torch.stack(steps, 1).tolist() if steps else [[] for _ in range(batch.size * cfg.num_return_sequences)]
    dec = _Decoder(model, text_input, head, mode)
    eos = cfg.eos_id if cfg.eos_id is not None else getattr(dec.proc, "eos_id", None)
    enders = ({eos} if eos is not None else set()) | set(cfg.stop_tokens)
    out = []
    for row in rows:
        cut = next((i for i, t in enumerate(row) if t in enders), len(row))
        row = row[:cut]
        if cfg.stop_strings and dec.proc is not None:
            row = _cut_stop_string(row, dec.proc, cfg.stop_strings)
        out.append(row)
    return out


def _cut_stop_string(row: list[int], proc: Any, stops: Sequence[str]) -> list[int]:
    """The longest prefix of ``row`` whose text ends before the first stop string."""
    for i in range(1, len(row) + 1):
        text = proc.decode(row[:i])
        hits = [text.find(s) for s in stops if s and s in text]
        if hits:
            pos = min(hits)
            j = i - 1
            while j > 0 and len(proc.decode(row[:j])) > pos:
                j -= 1
            return row[:j]
    return row


def generate_for_records(
    model: Any,
    records: Sequence[Mapping[str, Any]],
    *,
    base: str | Path | None = None,
    text_input: str = "text",
    config: GenerationConfig | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 16,
) -> list[str]:
    """Continuations of records whose text (if any) is the prompt; relative paths resolve against ``base``."""
    cfg = config or GenerationConfig(max_new_tokens=max_new_tokens)
    texts = []
    proc = model.processors[text_input]
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
        ids = generate(model, batch, cfg, text_input=text_input)
        texts += [proc.decode(row) for row in ids]
    return texts
