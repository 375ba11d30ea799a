"""``encoder:vision.patch``: a small ViT-style image encoder, trained from scratch.

Shapes (B = batch, C = channels, (H, W) = image_size, p = patch_size, N = (H / p) * (W / p),
D = dim)::

    pixels (B, C, H, W) --stem--> (B, S, H/s, W/s) --Conv2d(k=p/s, stride=p/s)--> (B, D, H/p, W/p)
        --rearrange--> (B, N, D) + position embedding (1, N, D)

where the stem is nothing ("patch": S = C, s = 1), stem_layers x [3x3 conv, GELU] ("conv":
s = 1) or stem_layers x [3x3 conv, ReLU, 2x2 max pool] ("cnn": s = 2 ** stem_layers), with a
BatchNorm2d after each convolution when ``stem_norm`` resolves to "batch" (absent images are
left out of the stem, so they never reach its statistics).
        --depth x [x + attn(norm(x)); x + mlp(norm(x))]--> final norm --> Tokens (B, N, D)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from mmcore import Encoder, Tokens

from .config import PatchEncoderConfig, size_hw

__all__ = ["PatchEncoder", "Block", "token_mask"]


def token_mask(inputs: dict[str, Tensor], batch: int, tokens: int, device: torch.device) -> Tensor:
    """(B, N) bool token mask from the collated ``present`` (B,): all-False rows for missing images."""
    present = inputs.get("present")
    if present is None:
        return torch.ones(batch, tokens, dtype=torch.bool, device=device)
    present = present.to(device=device, dtype=torch.bool)
    if present.shape != (batch,):
        raise ValueError(f"inputs['present'] has shape {tuple(present.shape)}, expected ({batch},)")
    return present.unsqueeze(1).expand(batch, tokens).contiguous()


def check_pixels(pixels: Any, channels: int, size: tuple[int, int] | None, who: str) -> Tensor:
    """Validate collated pixels: a float (B, C, H, W) tensor of the expected channels (and size)."""
    if not isinstance(pixels, Tensor) or pixels.dim() != 4:
        got = tuple(pixels.shape) if isinstance(pixels, Tensor) else type(pixels).__name__
        raise ValueError(f"{who}: inputs['pixels'] must be a (B, C, H, W) tensor, got {got}")
    if pixels.shape[1] != channels or (size is not None and tuple(pixels.shape[2:]) != size):
        want = f"(B, {channels}, {size[0]}, {size[1]})" if size else f"(B, {channels}, H, W)"
        raise ValueError(
            f"{who}: inputs['pixels'] has shape {tuple(pixels.shape)}, expected {want}: were they made by this "
            "encoder's processor?"
        )
    return pixels


class Attention(nn.Module):
    """Multi-head self-attention over all tokens (no mask: an image's tokens are all real)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:  # (B, N, D) -> (B, N, D)
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(rearrange(y, "b h n d -> b n (h d)"))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``; (B, N, D) -> (B, N, D)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        hidden = max(1, int(dim * mlp_ratio))
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.mlp(self.norm2(x)))


def _stem(config: PatchEncoderConfig) -> tuple[nn.Module | None, int, int]:
    """The stem before the patch embedding: (module or None, its output channels, its downsampling)."""
    if config.stem == "patch":
        return None, config.channels, 1
    layers: list[nn.Module] = []
    batch_norm = config.resolved_stem_norm == "batch"

    def conv(cin: int, cout: int) -> list[nn.Module]:  # a 3x3 convolution, batch-normed if asked (no bias then)
        if batch_norm:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)]
        return [nn.Conv2d(cin, cout, 3, padding=1)]

    if config.stem == "conv":  # 3x3 convolutions (each with GELU) see across patch borders first
        hidden = config.stem_channels or max(8, config.dim // 2)
        for i in range(config.stem_layers):
            layers += [*conv(config.channels if i == 0 else hidden, hidden), nn.GELU()]
        return nn.Sequential(*layers), hidden, 1
    # "cnn": stages of 3x3 conv, ReLU, 2x2 max pool; channels double each stage, the last one dim by default
    n = config.stem_layers
    first = config.stem_channels
    widths = [first * 2**i for i in range(n)] if first else [max(8, config.dim // 2 ** (n - 1 - i)) for i in range(n)]
    cin = config.channels
    for c in widths:
        layers += [*conv(cin, c), nn.ReLU(), nn.MaxPool2d(2)]
        cin = c
    return nn.Sequential(*layers), cin, 2**n


class PatchEncoder(Encoder):
    """Small ViT-style encoder: image patches -> tokens of width ``dim``.

    Built as ``PatchEncoder(config, *, width, processor)`` (``width``, the backbone's, is
    ignored: ``out_dim`` is ``config.dim`` and the model adds a projector when they
    differ; ``processor``, when given, must produce this encoder's input size).

    ``forward({"pixels": (B, C, H, W) float, "present": (B,) bool})`` ->
    ``Tokens(embeds=(B, N, dim), mask=(B, N) bool)`` with N = (H / patch_size) * (W /
    patch_size) in row-major patch order ((H, W) = ``image_size``; the grid need not be
    square, and the position embedding has one entry per grid cell). ``mask`` is ``present`` repeated over the tokens (all True
    when ``present`` is absent): a record without an image has an all-False row and
    zero embeddings. No loop over samples; deterministic in eval mode.

    Attributes:
        stem: None (``stem = "patch"``), or an ``nn.Sequential`` of ``stem_layers`` 3x3 convolutions,
            each followed by GELU (``"conv"``, full resolution, ``stem_channels`` channels, default
            ``max(8, dim // 2)``), or by ReLU and 2x2 max pooling (``"cnn"``: each stage halves the
            image; channels double from stage to stage up to ``dim``). ``stem_init = "fan_in"`` (the
            default for ``"cnn"``) starts them at Kaiming normal, otherwise std 0.02 like the rest.
            With ``stem_norm = "batch"`` (the default for ``"cnn"``) each convolution (then without
            bias) is followed by ``BatchNorm2d``: training batches set its statistics, only from the
            images that are present; its running averages are buffers, saved with the weights and
            used in eval mode; where its weight does not train (a frozen or LoRA encoder) it stays
            in eval mode, so training never moves them.
        patch_embed: ``Conv2d(stem's channels, dim, kernel_size=k, stride=k)``, ``k = patch_size``
            divided by how much the stem downsampled (``2 ** stem_layers`` for ``"cnn"``, else 1).
        grid_shape: (rows, columns) of patches.
        pos_embed: (1, N, dim) learned position embedding (normal init, std 0.02).
        blocks: ``depth`` pre-norm :class:`Block` s (attention through
            ``torch.nn.functional.scaled_dot_product_attention``).
        norm: final ``LayerNorm(dim)``.
    """

    modality = "image"

    def __init__(self, config: PatchEncoderConfig | None = None, *, width: int | None = None, processor: Any = None):
        super().__init__()
        self.config = config = config if config is not None else PatchEncoderConfig()
        height, width = size_hw(config.image_size)
        if processor is not None:
            want = (config.channels, height, width)
            got = tuple(getattr(processor, "output_shape", want))
            if got != want:
                raise ValueError(
                    f"vision.patch: the processor produces images of shape {got}, the encoder reads {want}"
                )
        self.image_size = config.image_size
        self.size = (height, width)
        self.patch_size = config.patch_size
        self.channels = config.channels
        self.grid_shape = (height // config.patch_size, width // config.patch_size)
        self.grid = self.grid_shape[0] if self.grid_shape[0] == self.grid_shape[1] else self.grid_shape
        self.num_tokens = self.grid_shape[0] * self.grid_shape[1]
        self.out_dim = config.dim
        if config.stem == "conv":
            # Registered and drawn before the stem, as before the "cnn" stem existed: the patch
            # embedding comes first in the module order, and a seeded build of a "conv" stem draws
            # the weights every committed figure of the conv-stem recipes was measured with (the
            # layer is replaced below; its draws are the ones that keep the stream).
            self.patch_embed = nn.Conv2d(
                config.channels, config.dim, kernel_size=config.patch_size, stride=config.patch_size
            )
        self.stem, stem_out, scale = _stem(config)
        kernel = config.patch_size // scale  # the stem has already reduced each side by `scale`
        self.patch_embed = nn.Conv2d(stem_out, config.dim, kernel_size=kernel, stride=kernel)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, config.dim))
        self.pos_drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            [Block(config.dim, config.heads, config.mlp_ratio, config.dropout) for _ in range(config.depth)]
        )
        self.norm = nn.LayerNorm(config.dim)
        # found once here, not on every forward (a plain tuple: the modules stay registered in the stem)
        self._batch_norms = tuple(m for m in self.stem.modules() if isinstance(m, nn.BatchNorm2d)) if self.stem else ()
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.stem is not None and self.config.resolved_stem_init == "fan_in":  # keeps the scale through it
            for m in self.stem.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    @property
    def batch_norms(self) -> tuple[nn.BatchNorm2d, ...]:
        """The stem's batch norms (none unless ``stem_norm`` resolves to "batch")."""
        return self._batch_norms

    def train(self, mode: bool = True) -> "PatchEncoder":
        """Set the training mode; batch norms whose weight does not train stay in eval mode.

        ``requires_grad_(False)`` (a frozen or LoRA encoder) stops the weights, not a
        training-mode batch norm's running statistics: those would still move.
        """
        super().train(mode)
        for bn in self.batch_norms:
            if mode and not bn.weight.requires_grad:
                bn.eval()
        return self

    def _embed(self, pixels: Tensor) -> Tensor:  # (B, C, H, W) -> (B, D, H/p, W/p)
        x = self.stem(pixels) if self.stem is not None else pixels
        return self.patch_embed(x)

    def forward(self, inputs: dict[str, Tensor]) -> Tokens:
        pixels = check_pixels(inputs.get("pixels"), self.channels, self.size, "vision.patch")
        x = pixels.to(self.pos_embed.dtype)
        mask = token_mask(inputs, x.shape[0], self.num_tokens, x.device)
        present = mask[:, 0]  # (B,)
        if not any(bn.training for bn in self.batch_norms) or bool(present.all()):
            x = self._embed(x)  # (B, D, H/p, W/p), row-major below
        else:  # absent images (zero pixels) must not reach training batch statistics (eval reads running ones)
            idx = present.nonzero().squeeze(1)
            out = x.new_zeros(x.shape[0], self.out_dim, *self.grid_shape)
            x = out.index_copy(0, idx, self._embed(x.index_select(0, idx))) if idx.numel() else out
        x = rearrange(x, "b d h w -> b (h w) d") + self.pos_embed  # (B, N, D)
        x = self.pos_drop(x)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return Tokens(embeds=x * mask.unsqueeze(-1).to(x.dtype), mask=mask)

    def extra_repr(self) -> str:
        return (
            f"image_size={self.image_size}, patch_size={self.patch_size}, grid={self.grid_shape[0]}x"
            f"{self.grid_shape[1]}, tokens={self.num_tokens}, "
            f"out_dim={self.out_dim}"
        )
