# About 550 lines on purpose: greedy search, sampling and beam search share one KV cache, one
# prompt set-up and one set of stopping rules; prompt framing (prompting.py) and outputs other
# than text (outputs.py) already live in their own files.
"""Text generation: greedy, sampling (temperature, top-k, top-p) and beam search, with the
backbone's preallocated KV cache.

The prompt (any modalities plus a text prefix) is encoded and fused once, moved from
right- to left-padding so every sample's last real token sits at the end, and run through
the backbone, filling the cache. Each new token is embedded by the text encoder (plus the
fusion's per-input embedding), run through the backbone for that one position against the
cache, and projected by the LM head: the cost of a step does not grow with the prompt
beyond attention over the cache.

The prompt is attended the way the model was trained to read it (:func:`trained_attention`):
a model whose spec trains the LM head with ``prefix_lm`` (captioning, translation,
speech-to-text) attends its whole prompt bidirectionally, as in training, and each new token
causally; an ``lm``-trained model attends causally throughout. ``mode=`` overrides it.

    batch = model.preprocess(prompt_records(model, ["Return the"]), targets=())  # as `mmcore generate` frames it
    out = mmcore.generate(model, batch, mmcore.GenerationConfig(max_new_tokens=20, num_return_sequences=5,
                                                                do_sample=True, top_k=50, seed=0))
    texts = [model.processors["text"].decode(ids) for ids in out]

The generated input need not be text: any input whose encoder embeds token ids and has an LM
head can be continued, e.g. the image tokens of ``vision.palette`` (text-to-image). Its
processor may declare ``output_ids`` (the only ids generation may produce there: a logits
mask) and ``max_tokens`` (the most tokens the input holds); an encoder whose embedding depends
on a token's place inside its input sets ``takes_offset = True`` and then receives ``offset``,
the position inside the input of the token it embeds (others never see that key). Turning the
ids into an output value and a file is the processor's declared capability (``decode``,
``output_suffixes``, ``save_output``): :mod:`mmcore.outputs` calls it; mmcore-vision's
``generate_images`` wraps it for images:

    images = mmcore_vision.generate.generate_images(model, ["draw a seven"], GenerationConfig(do_sample=True, seed=0))
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import MMCoreError
from .prompting import _generated_input, prompt_records, prompt_separator, trained_attention
from .types import Batch, Tokens

__all__ = [
    "GenerationConfig",
    "generate",
    "generate_stream",
    "generate_for_records",
    "prompt_records",
    "prompt_separator",
    "trained_attention",
    "to_left_padding",
]


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding options.

    Attributes:
        max_new_tokens: tokens to generate at most per sequence.
        min_new_tokens: eos and stop tokens are forbidden before this many tokens.
        do_sample: sample (with temperature, top-k, top-p) instead of picking the most likely token.
        temperature, top_k, top_p: sampling filters (top_k 0 and top_p 1.0 disable them).
        num_beams: beam search with this many beams (1: greedy or sampling).
        length_penalty: beam search ranks sequences by ``logprob / length ** length_penalty``
            (the sum of their tokens' log-probabilities, ``<eos>`` included when finished, over
            that many tokens) and returns them best first (docs/tasks.md, "Generating from Python").
        num_return_sequences: sequences per prompt (at most ``num_beams`` with beam search).
        repetition_penalty: >1 discourages tokens already generated (CTRL: positive logits are
            divided by it, negative ones multiplied).
        eos_id: end of sequence (default: the text processor's ``eos_id``).
        stop_tokens: more token ids that end a sequence (kept out of the output, like eos).
        stop_strings: a sequence ends once its decoded text contains one of these; the text is
            cut before it.
        seed: seed of the sampling generator (None: torch's global RNG).
        use_cache: use the KV cache (False recomputes the whole sequence at every step; for tests).
        clamp: ``max_new_tokens`` beyond what the context (or the input's ``max_tokens``) leaves
            after a batch's prompt is cut to fit, with a warning (``mmcore eval``), instead of an error.
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
    clamp: bool = False

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


# --- the model as a next-token function ------------------------------------------------------


class _Decoder:
    """The model seen as a next-token function over a left-padded, cached sequence."""

    def __init__(self, model: Any, text_input: str | None, head: str | None, mode: str | None):
        self.model = model
        text_input, head = _generated_input(model, text_input, head)
        self.text = text_input
        self.head = model.heads[head]
        if mode is None:
            mode = trained_attention(model, head)
        self.proc = model.processors.get(text_input)
        self.encoder = model.encoders[text_input]
        self.projector = model.projectors[text_input] if text_input in model.projectors else None
        self.mode = mode
        self.backbone = model.backbone
        allowed = getattr(self.proc, "output_ids", None)
        self.allowed = None if allowed is None else torch.tensor(list(allowed), dtype=torch.long)
        self._keep: Tensor | None = None

    def embed(self, ids: Tensor, offset: Tensor | None = None) -> Tensor:
        """Token ids (B, T) -> the embeddings the fusion would give them (B, T, D).

        ``offset`` (B,): the position of ``ids[:, 0]`` inside the generated input, passed only
        to encoders that declare ``takes_offset = True``."""
        inputs = {"ids": ids, "mask": torch.ones_like(ids, dtype=torch.bool)}
        if offset is not None and getattr(self.encoder, "takes_offset", False):
            inputs["offset"] = offset
        tok = self.encoder(inputs)
        emb = tok.embeds if self.projector is None else self.projector(tok.embeds)
        step = getattr(self.model.fusion, "embed_step", None)
        return emb if step is None else step(self.text, Tokens(emb, tok.mask))

    def prompt(self, batch: Batch) -> tuple[Tensor, Tensor, Any, Any]:
        seq = self.model.fuse(batch)
        idx = seq.index.get(self.text, None) if isinstance(seq.index, dict) else None
        if idx is not None and idx.numel():
            # New tokens are appended after each row's last real position: the generated
            # input's tokens must end the prompt (rows without the input are free).
            last = idx.max(1).values  # (B,) -1 where the row lacks the input
            bad = (last >= 0) & (last != seq.mask.sum(1) - 1)
            if bool(bad.any()):
                raise MMCoreError(
                    f"generation continues input {self.text!r}, but the fusion puts other tokens after it in the "
                    f"prompt; make it the last input of the sequence (early fusion: order = [..., {self.text!r}]) "
                    "without boundary tokens (boundary_tokens = false)"
                )
        x, mask = to_left_padding(seq.embeds, seq.mask)  # (B, L, D), (B, L)
        return x, mask, seq.prefix_len, seq.context

    def count(self, batch: Batch) -> Tensor:
        """(B,) long: tokens of the generated input already in each prompt."""
        inp = batch.inputs.get(self.text) or {}
        if "mask" in inp:
            return inp["mask"].sum(1).long()
        if "ids" in inp:
            return torch.full((inp["ids"].shape[0],), inp["ids"].shape[1], dtype=torch.long, device=inp["ids"].device)
        return torch.zeros(batch.size, dtype=torch.long)

    def check_room(self, count: Tensor, max_new_tokens: int) -> None:
        """MMCoreError when the input cannot hold ``max_new_tokens`` more tokens (its processor's ``max_tokens``)."""
        cap = getattr(self.proc, "max_tokens", None)
        if not isinstance(cap, int) or count.numel() == 0:
            return
        have = int(count.max())
        if have + max_new_tokens > cap:
            raise MMCoreError(
                f"input {self.text!r} holds at most {cap} tokens and the prompt has {have}: max_new_tokens must be at "
                f"most {cap - have}, got {max_new_tokens}"
            )

    def fitted(self, cfg: GenerationConfig, count: Tensor, positions: int) -> GenerationConfig:
        """``cfg`` for a batch whose prompt takes ``positions`` (its text ``count`` tokens): checked
        (:meth:`check_room`, the context length), or with ``cfg.clamp`` its ``max_new_tokens`` cut
        to the room left, with a warning."""
        if not cfg.clamp:
            self.check_room(count, cfg.max_new_tokens)
            return cfg
        ctx_len = self.backbone.config.context_length
        room = ctx_len - positions
        cap = getattr(self.proc, "max_tokens", None)
        if isinstance(cap, int) and count.numel():
            room = min(room, cap - int(count.max()))
        if cfg.max_new_tokens <= room:
            return cfg
        if room < 1:
            raise MMCoreError(f"the prompt ({positions} positions) leaves no room in the context length {ctx_len}")
        warnings.warn(
            f"max_new_tokens {cfg.max_new_tokens} is more than the context length {ctx_len} leaves after this "
            f"prompt ({positions} positions); generating at most {room} tokens",
            stacklevel=2,
        )
        return replace(cfg, max_new_tokens=room, min_new_tokens=min(cfg.min_new_tokens, room))

    def logits(self, hidden_last: Tensor) -> Tensor:
        out = self.head.project(hidden_last).float()  # (B, V)
        if self.allowed is not None:  # only the ids the input's processor allows (e.g. an image's palette)
            if self._keep is None or self._keep.shape[0] != out.shape[-1] or self._keep.device != out.device:
                keep = torch.zeros(out.shape[-1], dtype=torch.bool, device=out.device)
                self._keep = keep.index_fill_(0, self.allowed.to(out.device), True)
            out = out.masked_fill(~self._keep, float("-inf"))
        return out


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
        self,
        dec: _Decoder,
        x: Tensor,
        mask: Tensor,
        prefix_len: Any,
        context: Any,
        total: int,
        use_cache: bool,
        offset: Tensor | None = None,
    ):
        self.dec, self.context, self.use_cache = dec, context, use_cache
        # (B,) position inside the generated input of the next token embedded; tracked only for
        # encoders that read it (takes_offset), so a text step does no extra work
        self.offset = offset if getattr(dec.encoder, "takes_offset", False) else None
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
            emb = self.dec.embed(new_ids.unsqueeze(1), self.offset)  # (B, 1, D)
            if self.offset is not None:
                self.offset = self.offset + 1
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
        if self.offset is not None:
            self.offset = self.offset[index]


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
    yield from _stream(_Decoder(model, text_input, head, mode), batch, cfg)


@torch.no_grad()
def _stream(dec: _Decoder, batch: Batch, cfg: GenerationConfig) -> Iterator[Tensor]:
    dec.model.eval()
    x, mask, prefix_len, context = dec.prompt(batch)
    count = dec.count(batch).to(x.device)
    cfg = dec.fitted(cfg, count, x.shape[1])
    n = cfg.num_return_sequences
    x, mask, prefix_len, context = _expand(x, n), _expand(mask, n), _expand(prefix_len, n), _expand(context, n)
    B = x.shape[0]
    runner = _Runner(
        dec, x, mask, prefix_len, context, x.shape[1] + cfg.max_new_tokens, cfg.use_cache, _expand(count, n)
    )
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
def _beam_search(dec: _Decoder, batch: Batch, cfg: GenerationConfig) -> list[list[int]]:
    dec.model.eval()
    x, mask, prefix_len, context = dec.prompt(batch)
    count = dec.count(batch).to(x.device)
    cfg = dec.fitted(cfg, count, x.shape[1])
    B, K = x.shape[0], cfg.num_beams
    x, mask, prefix_len, context = _expand(x, K), _expand(mask, K), _expand(prefix_len, K), _expand(context, K)
    runner = _Runner(
        dec, x, mask, prefix_len, context, x.shape[1] + cfg.max_new_tokens, cfg.use_cache, _expand(count, K)
    )
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
    dec = _Decoder(model, text_input, head, mode)
    if cfg.stop_strings and getattr(dec.proc, "modality", "text") != "text":
        raise MMCoreError(f"stop_strings apply to text; the generated input {dec.text!r} is not text")
    if cfg.num_beams > 1:
        rows = _beam_search(dec, batch, cfg)
    else:
        steps = list(_stream(dec, batch, cfg))
        rows = torch.stack(steps, 1).tolist() if steps else [[] for _ in range(batch.size * cfg.num_return_sequences)]
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
            rec[text_input] = r.get(text_input) or ""
            chunk.append(rec)
        # prompt/target records: every objective reads such a pair as <bos> prompt <sep> target
        batch = model.preprocess(prompt_records(model, chunk, text_input=text_input, separator=True), targets=())
        ids = generate(model, batch, cfg, text_input=text_input)
        texts += [proc.decode(row) for row in ids]
    return texts
