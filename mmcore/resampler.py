"""Resampler fusion (Perceiver-style): a fixed number of tokens per non-text input.

For each non-text input, ``num_latents`` learned latent queries cross-attend to that
input's tokens through ``depth`` pre-norm layers (cross-attention + feed-forward), so an
image of 576 patches or an audio clip of 1500 frames enters the sequence as, say, 32
tokens. The resampled tokens (and the text, untouched) then go through an
:class:`~mmcore.fusion.EarlyFusion` built inside this fusion, which orders them and adds
modality and boundary embeddings.

Notation: B batch, N input tokens, K latents, D width.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .backbone import MLP, make_norm
from .builtin import ResamplerFusionConfig
from .config import BackboneConfig
from .fusion import EarlyFusion
from .fusion_xattn import CrossAttention, init_layer, layer_config
from .interfaces import Encoder, Fusion
from .types import Batch, FusedSequence, Tokens

__all__ = ["ResamplerLayer", "PerceiverResampler", "ResamplerFusion"]


class ResamplerLayer(nn.Module):
    """One pre-norm resampler layer: latents attend to ``[input; latents]``, then a feed-forward.

    ``latents + xattn(ln_q(latents), [ln_kv(x); ln_q(latents)])``, then
    ``latents + mlp(ln_2(latents))`` (as in Flamingo's Perceiver resampler, the latents
    are keys too, so every query always has a valid key: a sample without the input
    gives finite values, never NaN).
    """

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.ln_q = make_norm(config)
        self.ln_kv = make_norm(config)
        self.attn = CrossAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, latents: Tensor, x: Tensor, mask: Tensor) -> Tensor:
        """``latents (B, K, D)``, input ``x (B, N, D)``, ``mask (B, N)`` bool -> ``(B, K, D)``."""
        B, K, _ = latents.shape
        q = self.ln_q(latents)  # (B, K, D)
        kv = torch.cat([self.ln_kv(x), q], dim=1)  # (B, N + K, D)
        key_mask = torch.cat([mask, mask.new_ones(B, K)], dim=1)  # (B, N + K)
        latents = latents + self.attn(q, kv, key_mask)  # (B, K, D)
        return latents + self.mlp(self.ln_2(latents))  # (B, K, D)


class PerceiverResampler(nn.Module):
    """Tokens (B, N, D) of one input -> Tokens (B, K, D): K learned latents, ``depth`` layers.

    Attributes:
        latents: (K, D) learned queries, ``normal(0, init_std)``.
        layers: ``depth`` :class:`ResamplerLayer`.
        ln_out: final norm of the output tokens.

    ``forward(tokens)``: padding tokens are masked out (and zeroed, so non-finite padding
    cannot leak); the output mask is ``(B, K)``, all True for samples that have the input
    (any real token) and all False for those that do not.
    """

    def __init__(self, config: BackboneConfig, num_latents: int, depth: int) -> None:
        super().__init__()
        self.num_latents = int(num_latents)
        self.latents = nn.Parameter(torch.randn(self.num_latents, config.width) * config.init_std)
        self.layers = nn.ModuleList(ResamplerLayer(config) for _ in range(depth))
        self.ln_out = make_norm(config)
        init_layer(self.layers, config, depth)

    def forward(self, tokens: Tokens) -> Tokens:
        mask = tokens.mask.to(torch.bool)  # (B, N)
        x0 = tokens.embeds  # (B, N, D)
        x = torch.where(mask[..., None], x0, torch.zeros((), dtype=x0.dtype, device=x0.device))  # (B, N, D)
        B = x.shape[0]
        lat = self.latents.expand(B, -1, -1)  # (B, K, D)
        for layer in self.layers:
            lat = layer(lat, x, mask)  # (B, K, D)
        lat = self.ln_out(lat)  # (B, K, D)
        has = mask.any(dim=1, keepdim=True)  # (B, 1)
        return Tokens(embeds=lat, mask=has.expand(B, self.num_latents))

    def extra_repr(self) -> str:
        return f"num_latents={self.num_latents}"


class ResamplerFusion(Fusion):
    """``fusion:resampler``: resample each non-text input to a fixed token count, then early fusion.

    Args:
        config: :class:`~mmcore.builtin.ResamplerFusionConfig` (the early-fusion options
            plus the resampler's).
        early: the :class:`EarlyFusion` that lays the tokens out (held as ``early``).
        latents: input name -> number of latents, for every non-text input.
        backbone: the :class:`~mmcore.BackboneConfig` (norm, MLP type, heads, init).

    ``forward(tokens, batch)``: every input in ``resamplers`` becomes ``Tokens``
    (B, K_m, D) with mask "sample has the input"; the text passes through; the result
    is ``early(resampled, batch)``. So ``sequence.index[input]`` (B, K_m) points at the
    resampled tokens, and a sample contributes ``K_m`` (+2 boundary) tokens for each
    input it has, none for one it lacks.
    """

    def __init__(
        self,
        config: ResamplerFusionConfig,
        early: EarlyFusion,
        latents: Mapping[str, int],
        backbone: BackboneConfig,
    ) -> None:
        super().__init__()
        self.config = config
        self.early = early
        cfg = layer_config(backbone, config.heads, config.mlp_ratio)
        self.resamplers = nn.ModuleDict({m: PerceiverResampler(cfg, n, config.depth) for m, n in latents.items()})

    @classmethod
    def from_config(
        cls,
        config: ResamplerFusionConfig,
        *,
        width: int,
        encoders: Mapping[str, Encoder],
        backbone: BackboneConfig,
    ) -> "ResamplerFusion":
        early = EarlyFusion.from_config(config, width=width, encoders=encoders)
        others = [m for m in encoders if m not in early.text_inputs]
        unknown = sorted(set(config.latents) - set(others))
        if unknown:
            raise ValueError(
                f"resampler fusion: latents names {unknown}, which are not non-text encoder inputs; "
                f"non-text inputs are {others}"
            )
        return cls(config, early, {m: config.latents.get(m, config.num_latents) for m in others}, backbone)

    def resample(self, tokens: Mapping[str, Tokens]) -> dict[str, Tokens]:
        """Every resampled input's Tokens (B, K_m, D); others unchanged."""
        return {m: self.resamplers[m](t) if m in self.resamplers else t for m, t in tokens.items()}

    def forward(self, tokens: Mapping[str, Tokens], batch: Batch) -> FusedSequence:
        return self.early(self.resample(tokens), batch)

    def max_sequence_length(self, counts: Mapping[str, int | None]) -> int | None:
        """The early fusion's length with each resampled input at its number of latents."""
        return self.early.max_sequence_length(
            {m: int(self.resamplers[m].num_latents) if m in self.resamplers else n for m, n in counts.items()}
        )

    def embed_step(self, name: str, tokens: Tokens) -> Tensor:
        """New text tokens during generation (B, n, D): as the inner early fusion embeds them."""
        return self.early.embed_step(name, tokens)

    def extra_repr(self) -> str:
        return f"latents={ {m: r.num_latents for m, r in self.resamplers.items()} }"
