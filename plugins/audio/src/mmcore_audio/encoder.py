"""The ``audio.whisper`` encoder: log-mel features -> a sequence of audio tokens, Whisper-style."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcore import Encoder, InputError, Tokens

from .config import WhisperAudioConfig

__all__ = ["WhisperEncoder", "AttentionBlock", "sinusoids"]


def sinusoids(length: int, channels: int, *, device: Any = None, max_timescale: float = 10000.0) -> Tensor:
    """Whisper's encoder positions: (length, channels) float32, sines then cosines.

    Timescales are geometric from 1 to ``max_timescale``; ``channels`` must be even.
    """
    half = channels // 2
    inc = math.log(max_timescale) / max(half - 1, 1)
    inv = torch.exp(-inc * torch.arange(half, dtype=torch.float32, device=device))
    t = torch.arange(length, dtype=torch.float32, device=device)[:, None] * inv[None, :]
    return torch.cat([t.sin(), t.cos()], dim=1)


class AttentionBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``.

    ``forward(x: (B, N, D), attend: (B, 1, 1, N) bool)``: ``attend`` is True at the keys
    each query may attend to (the real tokens). One ``scaled_dot_product_attention`` call
    for the whole batch.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        hidden = max(1, int(round(mlp_ratio * dim)))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, attend: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attend, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, N, d/H)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, n, d)))
        return x + self.drop(self.mlp(self.ln2(x)))


class WhisperEncoder(Encoder):
    """Log-mel features -> audio tokens: Whisper's encoder, at a configurable size.

    Built as ``WhisperEncoder(config, *, width=None, processor=None)``; ``width`` (the
    backbone's) is not used: the tokens have width ``config.dim`` (``out_dim``) and the
    model inserts a projector when it differs from the backbone's.

    ``forward({"features": (B, n_mels, T), "mask": (B, T) bool, "frames": (B,) long})``
    -> ``Tokens(embeds=(B, ceil(T / 2), dim), mask=(B, ceil(T / 2)) bool)``:

    * ``conv1`` (kernel 3, stride 1) and ``conv2`` (kernel 3, stride 2), each followed by
      GELU: token j is centred on frame 2j and is real iff frame 2j is real, i.e. a
      sample with F real frames has ceil(F / 2) real tokens. Features and ``conv1``'s
      outputs are zeroed at padded frames, so the convolutions see exactly the zero
      padding they would see for the sample alone: padding never changes real tokens.
    * positions: sinusoids (computed on the fly; no buffers) or a learned table of
      ``ceil(max_frames / 2)`` rows;
    * ``depth`` :class:`AttentionBlock` s attending only to real tokens (a key padding
      mask); ``ln_post``. Padded token rows are zero.

    ``mask`` defaults to ``frames`` (or all True when neither is given). A sample without
    audio (all-False mask row) gets an all-False token row. More than ``max_frames``
    frames raise :class:`~mmcore.errors.InputError`.
    """

    modality = "audio"

    def __init__(self, config: WhisperAudioConfig | None = None, *, width: int | None = None, processor: Any = None):
        super().__init__()
        cfg = config if config is not None else WhisperAudioConfig()
        self.config = cfg
        self.n_mels = cfg.n_mels
        self.out_dim = cfg.dim
        self.max_frames = cfg.max_frames
        # conv2 (stride 2, padding 1) turns T frames into ceil(T / 2) tokens; the longest clip the
        # processor accepts (max_seconds) gives this many, which the builder checks against the
        # backbone's context length.
        self.max_tokens = math.ceil(cfg.max_frames_needed / 2)
        self.conv1 = nn.Conv1d(cfg.n_mels, cfg.dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(cfg.dim, cfg.dim, kernel_size=3, stride=2, padding=1)
        self.position_embedding: nn.Parameter | None = None
        if cfg.positions == "learned":
            self.position_embedding = nn.Parameter(torch.randn(math.ceil(cfg.max_frames / 2), cfg.dim) * 0.02)
        self.blocks = nn.ModuleList(
            AttentionBlock(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.depth)
        )
        self.ln_post = nn.LayerNorm(cfg.dim)

    def forward(self, inputs: dict[str, Tensor]) -> Tokens:
        x = inputs["features"]
        if x.dim() != 3 or x.shape[1] != self.n_mels:
            raise InputError(
                f"audio.whisper expects features of shape (B, {self.n_mels}, T), got {tuple(x.shape)}; "
                "was the batch made by this encoder's processor (same n_mels)?"
            )
        b, _, t = x.shape
        if t > self.max_frames:
            raise InputError(
                f"audio.whisper got {t} feature frames, more than max_frames = {self.max_frames}; lower the "
                "processor's max_seconds or raise max_frames"
            )
        x = x.to(self.conv1.weight.dtype)  # collate makes float32; the model may run in bf16
        mask = self._mask(inputs, b, t, x.device)  # (B, T)
        frame_mask = mask.unsqueeze(1)  # (B, 1, T)
        h = torch.where(frame_mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
        h = F.gelu(self.conv1(h))
        h = torch.where(frame_mask, h, torch.zeros((), dtype=h.dtype, device=h.device))
        h = F.gelu(self.conv2(h)).transpose(1, 2)  # (B, N, dim), N = ceil(T / 2)
        n = h.shape[1]
        tokens_mask = mask[:, ::2]  # token j is real iff frame 2j is
        if self.position_embedding is not None:
            h = h + self.position_embedding[:n].to(h.dtype)
        else:
            h = h + sinusoids(n, self.out_dim, device=h.device).to(h.dtype)
        # Keys: the real tokens; a sample without any (no audio) attends to all of its
        # padding instead, so no softmax row is empty (its output is zeroed below).
        attend = (tokens_mask | ~tokens_mask.any(dim=1, keepdim=True))[:, None, None, :]
        for block in self.blocks:
            h = block(h, attend)
        h = self.ln_post(h)
        h = torch.where(tokens_mask.unsqueeze(-1), h, torch.zeros((), dtype=h.dtype, device=h.device))
        return Tokens(embeds=h, mask=tokens_mask)

    @staticmethod
    def _mask(inputs: dict[str, Tensor], b: int, t: int, device: torch.device) -> Tensor:
        mask = inputs.get("mask")
        if mask is not None:
            if tuple(mask.shape) != (b, t):
                raise InputError(f"audio.whisper: mask has shape {tuple(mask.shape)}, expected {(b, t)}")
            return mask.to(device=device, dtype=torch.bool)
        frames = inputs.get("frames")
        if frames is not None:
            return torch.arange(t, device=device) < frames.to(device).view(b, 1)
        return torch.ones(b, t, dtype=torch.bool, device=device)

    def extra_repr(self) -> str:
        c = self.config
        return f"n_mels={c.n_mels}, out_dim={c.dim}, depth={c.depth}, heads={c.heads}, positions={c.positions!r}"
