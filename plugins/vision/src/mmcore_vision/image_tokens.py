"""``encoder:vision.palette``: images as discrete tokens, one per pixel, and back (Image GPT).

Three parts:

* :class:`PaletteTokenizer` -- pixels in [0, 1] <-> token ids. Each channel is quantised to
  ``levels`` evenly spaced values; a pixel's id is its colour's index in the palette of
  ``P = levels ** channels`` colours (channel 0 most significant). Stateless and exact: an
  image whose pixels are palette colours (level k stored as ``round(k * 255 / (levels - 1))``)
  survives ``decode(encode(image))`` unchanged.
* :class:`ImageTokenProcessor` -- a record's image (path, bytes, PIL image, array, tensor)
  -> ``{"ids": [<image>, p_0, ..., p_{S*S-1}]}``; ``{"prompt": [p_0, ..., p_{k-1}]}`` (the
  beginning of an image, usually empty) -> ``{"ids": [<image>, p_0, ..., p_{k-1}]}``, the
  prompt from which generation continues. ``decode(ids)`` turns S*S generated ids back into
  a PIL image.
* :class:`ImageTokenEmbedding` -- the encoder: a token embedding (an LM head ties to it, so
  the head's vocabulary is this input's palette) plus a learned embedding per position inside
  the image.

Vocabulary (``V = P + 2``)::

    0 .. P-1   palette colours (the only ids an image's pixels take)
    P          <image>  starts every image's token sequence
    P + 1      <pad>    padding (never attended to, never predicted)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mmcore import Encoder, InputError, ModelDirError, Processor, Tokens

from .image_tokens_config import PaletteTokensConfig

__all__ = ["PaletteTokenizer", "ImageTokenProcessor", "ImageTokenEmbedding", "PROCESSOR_FILE"]

PROCESSOR_FILE = "image_tokens.json"
PROCESSOR_KIND = "mmcore_vision.palette"
FORMAT_VERSION = 1


def _at(where: str) -> str:
    return f"{where}: " if where else ""


class PaletteTokenizer:
    """Pixels <-> palette token ids for square images of ``image_size`` pixels.

    Attributes:
        palette_size: ``levels ** channels`` colours, ids ``0 .. palette_size - 1``.
        image_id: id of ``<image>`` (``palette_size``).
        pad_id: id of ``<pad>`` (``palette_size + 1``).
        vocab_size: ``palette_size + 2``.
        num_pixels: ``image_size ** 2`` tokens per image.
    """

    def __init__(self, image_size: int = 8, channels: int = 1, levels: int = 4):
        if image_size < 1 or channels not in (1, 3) or not 2 <= levels <= 256:
            raise ValueError(
                f"need image_size >= 1, channels 1 or 3, 2 <= levels <= 256; got {image_size}, {channels}, {levels}"
            )
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.levels = int(levels)
        self.palette_size = self.levels**self.channels
        self.image_id = self.palette_size
        self.pad_id = self.palette_size + 1
        self.vocab_size = self.palette_size + 2
        self.num_pixels = self.image_size**2

    @property
    def palette(self) -> np.ndarray:
        """(palette_size, channels) uint8: the colour of every pixel id."""
        ids = np.arange(self.palette_size)
        digits = [(ids // self.levels ** (self.channels - 1 - c)) % self.levels for c in range(self.channels)]
        levels = np.stack(digits, 1).astype(np.float64)
        return np.rint(levels * 255.0 / (self.levels - 1)).astype(np.uint8)

    def encode_pixels(self, x: Tensor) -> Tensor:
        """(channels, S, S) float in [0, 1] -> (S*S,) long palette ids, row-major."""
        if x.shape != (self.channels, self.image_size, self.image_size):
            raise ValueError(
                f"expected pixels of shape {(self.channels, self.image_size, self.image_size)}, got {tuple(x.shape)}"
            )
        q = torch.round(x.to(torch.float32).clamp(0.0, 1.0) * (self.levels - 1)).long()  # (C, S, S)
        ids = torch.zeros(self.image_size, self.image_size, dtype=torch.long)
        for c in range(self.channels):
            ids = ids * self.levels + q[c]
        return ids.reshape(-1)

    def check_ids(self, ids: Sequence[int] | Tensor | np.ndarray, what: str = "image token ids") -> np.ndarray:
        """``ids`` as an (S*S,) int64 array; InputError unless it is exactly S*S palette ids."""
        if isinstance(ids, Tensor):
            ids = ids.detach().cpu().numpy()
        arr = np.asarray(ids)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise InputError(f"{what}: expected a flat sequence of integers, got shape {arr.shape} {arr.dtype}")
        if arr.size != self.num_pixels:
            raise InputError(
                f"{what}: an image of {self.image_size}x{self.image_size} pixels is {self.num_pixels} ids, got "
                f"{arr.size}"
            )
        bad = arr[(arr < 0) | (arr >= self.palette_size)]
        if bad.size:
            raise InputError(
                f"{what}: ids must be palette colours 0..{self.palette_size - 1}; got {sorted(set(bad.tolist()))[:5]} "
                f"(<image> = {self.image_id}, <pad> = {self.pad_id} are not pixels)"
            )
        return arr.astype(np.int64)

    def decode_array(self, ids: Sequence[int] | Tensor | np.ndarray) -> np.ndarray:
        """S*S palette ids -> (S, S) uint8 (grey) or (S, S, 3) uint8 (RGB)."""
        arr = self.check_ids(ids)
        img = self.palette[arr].reshape(self.image_size, self.image_size, self.channels)
        return img[:, :, 0] if self.channels == 1 else img

    def decode(self, ids: Sequence[int] | Tensor | np.ndarray) -> Any:
        """S*S palette ids -> a PIL image (mode ``L`` or ``RGB``)."""
        from PIL import Image

        return Image.fromarray(self.decode_array(ids), mode="L" if self.channels == 1 else "RGB")

    def __repr__(self) -> str:
        return (
            f"PaletteTokenizer(image_size={self.image_size}, channels={self.channels}, levels={self.levels}, "
            f"vocab_size={self.vocab_size})"
        )


class ImageTokenProcessor(Processor):
    """Processor of ``encoder:vision.palette``: an image -> ``{"ids": (1 + S*S,) long}``.

    Built as ``ImageTokenProcessor(config)`` (a :class:`PaletteTokensConfig`, a dict of its
    options, or None). Plain Python attributes only: it pickles for DataLoader workers.

    ``__call__(value, *, where="")`` accepts what :class:`~mmcore_vision.processor.ImageProcessor`
    reads (a path, bytes, a PIL image, a numpy HxW/HxWxC array, a torch CxHxW tensor); the
    image is converted to ``channels``, brought to ``image_size`` (``resize``,
    ``interpolation``; an image of that size is used as is) and quantised. Result:
    ``[<image>, p_0 .. p_{S*S-1}]``.

    A generation prompt is a mapping ``{"prompt": [p_0, ..., p_{k-1}]}`` with k <= S*S palette
    ids (usually ``[]``): ``[<image>, p_0, ..., p_{k-1}]``; the model continues it.

    Bad values raise :class:`mmcore.InputError` naming ``where``.

    ``collate(samples)`` -> ``{"ids": (B, T) long, "mask": (B, T) bool}``, right-padded with
    ``<pad>``; a ``None`` sample (a record without this image) gets an all-False mask row.

    Generation reads ``output_ids`` (the ids a generated pixel may take: the palette) and
    ``eos_id`` (None: an image has no end token, it is ``num_pixels`` tokens long).
    """

    modality = "image"

    def __init__(self, config: PaletteTokensConfig | Mapping[str, Any] | None = None):
        if not isinstance(config, PaletteTokensConfig):
            config = PaletteTokensConfig.model_validate(dict(config or {}))
        self.config = config
        self.tokenizer = PaletteTokenizer(config.image_size, config.channels, config.levels)
        self.training: bool = False
        self._reader: Any = None

    # --- vocabulary ------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:  # type: ignore[override]  # a read-only property for a declared capability
        return self.tokenizer.vocab_size

    @property
    def pad_id(self) -> int:  # type: ignore[override]  # a read-only property for a declared capability
        return self.tokenizer.pad_id

    @property
    def image_id(self) -> int:
        """The ``<image>`` id that starts every image's tokens."""
        return self.tokenizer.image_id

    bos_id = image_id

    @property
    def eos_id(self) -> None:  # type: ignore[override]  # a read-only property for a declared capability
        """None: an image ends after ``num_pixels`` tokens, not at an end token."""
        return None

    @property
    def num_pixels(self) -> int:
        return self.tokenizer.num_pixels

    @property
    def max_tokens(self) -> int:  # type: ignore[override]  # a read-only property for a declared capability
        """Tokens of one whole image: ``<image>`` and ``num_pixels`` pixel ids."""
        return 1 + self.tokenizer.num_pixels

    @property
    def output_ids(self) -> range:  # type: ignore[override]  # a read-only property for a declared capability
        """The ids generation may produce for this input: the palette colours."""
        return range(self.tokenizer.palette_size)

    @property
    def options(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")

    def examples(self) -> list[Any]:
        """Made-up images (:func:`mmcore_vision.processor.example_images`), the first of this size."""
        from .processor import example_images

        return example_images(self.config.image_size, self.config.image_size)

    # --- one sample ------------------------------------------------------------------------

    def _pixel_reader(self) -> Any:
        """An ImageProcessor that decodes and resizes to (channels, S, S) in [0, 1] (no normalisation)."""
        if self._reader is None:
            from .processor import ImageProcessor

            c = self.config
            self._reader = ImageProcessor(
                {
                    "image_size": c.image_size,
                    "channels": c.channels,
                    "mean": [0.0] * c.channels,
                    "std": [1.0] * c.channels,
                    "resize": c.resize,
                    "interpolation": c.interpolation,
                    "max_pixels": c.max_pixels,
                }
            )
        return self._reader

    def pixels(self, value: Any, *, where: str = "") -> Tensor:
        """An image value -> (channels, S, S) float in [0, 1] (before quantisation)."""
        reader = self._pixel_reader()
        x = reader.to_tensor(value, where=where)
        return reader._geometry(x).clamp(0.0, 1.0)

    def __call__(self, value: Any, *, where: str = "") -> dict[str, Tensor]:
        if isinstance(value, Mapping):
            return {"ids": torch.tensor([self.image_id, *self._prompt(value, where)], dtype=torch.long)}
        ids = self.tokenizer.encode_pixels(self.pixels(value, where=where))
        return {"ids": torch.cat([torch.tensor([self.image_id]), ids])}

    def _prompt(self, value: Mapping[Any, Any], where: str) -> list[int]:
        if set(value) != {"prompt"}:
            raise InputError(
                f"{_at(where)}vision.palette expects an image, or {{'prompt': [pixel ids]}} to generate one; got a "
                f"mapping with keys {sorted(map(str, value))}"
            )
        prompt = value["prompt"]
        if isinstance(prompt, (str, bytes)) or not isinstance(prompt, Sequence):
            raise InputError(f"{_at(where)}'prompt' must be a list of pixel ids, got {type(prompt).__name__}")
        p = self.tokenizer.palette_size
        bad = [v for v in prompt if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < p]
        if bad:
            raise InputError(f"{_at(where)}'prompt' holds {bad[:5]!r}: pixel ids are integers 0..{p - 1}")
        if len(prompt) > self.num_pixels:
            raise InputError(f"{_at(where)}'prompt' has {len(prompt)} pixel ids; an image has {self.num_pixels}")
        return [int(v) for v in prompt]

    def decode(self, ids: Sequence[int] | Tensor) -> Any:
        """``num_pixels`` palette ids (a generated image, without ``<image>``) -> a PIL image."""
        return self.tokenizer.decode(ids)

    #: A generated image is written by Pillow in any format it saves (``.png`` and others).
    @property
    def output_suffixes(self) -> tuple[str, ...]:  # type: ignore[override]  # a read-only property for a declared capability
        from .generate import image_suffixes

        return image_suffixes()

    def save_output(self, value: Any, path: Path, *, scale: int = 1) -> None:
        """Write a generated image (a PIL image from :meth:`decode`) to ``path``; the suffix
        picks the format; ``scale`` enlarges it by nearest neighbour."""
        from .generate import save_image

        save_image(value, path, scale=scale)

    # --- a batch ---------------------------------------------------------------------------

    def collate(self, samples: Sequence[Mapping[str, Tensor] | None]) -> dict[str, Tensor]:
        lengths = [0 if s is None else int(s["ids"].shape[0]) for s in samples]
        B, T = len(samples), max([1, *lengths])
        ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        for i, s in enumerate(samples):
            if s is None:
                continue
            t = s["ids"]
            if t.dim() != 1 or lengths[i] > self.max_tokens:
                raise InputError(
                    f"vision.palette collate: sample {i} has ids of shape {tuple(t.shape)}, expected at most "
                    f"({self.max_tokens},)"
                )
            ids[i, : lengths[i]] = t
        mask = torch.arange(T) < torch.tensor(lengths, dtype=torch.long).unsqueeze(1)
        return {"ids": ids, "mask": mask}

    # --- files -----------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> list[str]:
        """Write ``image_tokens.json``: the options and the vocabulary they imply."""
        data = {"options": self.options, "vocab_size": self.vocab_size}
        return self.write_json(os.fspath(directory), PROCESSOR_FILE, PROCESSOR_KIND, FORMAT_VERSION, data)

    def load(self, directory: str | os.PathLike[str]) -> None:
        """Read ``image_tokens.json``; it must describe this processor's vocabulary
        (image_size, channels, levels), else :class:`~mmcore.errors.ModelDirError`."""
        directory = os.fspath(directory)
        path = os.path.join(directory, PROCESSOR_FILE)
        data = self.read_json(directory, PROCESSOR_FILE, PROCESSOR_KIND, FORMAT_VERSION, "the vision.palette processor")
        try:
            config = PaletteTokensConfig.model_validate(data.get("options", {}))
        except ValueError as exc:
            raise ModelDirError(f"{path}: invalid options: {exc}") from exc
        for key in ("image_size", "channels", "levels"):
            if getattr(config, key) != getattr(self.config, key):
                raise ModelDirError(
                    f"{path}: {key} is {getattr(config, key)!r} but the model's encoder takes {getattr(self.config, key)!r}"
                )
        self.config = config
        self.tokenizer = PaletteTokenizer(config.image_size, config.channels, config.levels)
        self._reader = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_reader": None}

    def __repr__(self) -> str:
        c = self.config
        return f"ImageTokenProcessor(image_size={c.image_size}, channels={c.channels}, levels={c.levels})"


class ImageTokenEmbedding(Encoder):
    """Image token ids -> embeddings of the backbone's width.

    Built as ``ImageTokenEmbedding(config, *, width, processor=None)``.

    Attributes:
        token_embedding: ``nn.Embedding(vocab_size, width)`` (normal, std 0.02); an ``lm`` head
            with ``input`` set to this input ties its output projection to it, so it predicts
            palette ids.
        position_embedding: ``(1 + S*S, width)`` learned, one row per token position inside
            the image (``<image>`` is position 0); absent with ``position_embedding = false``.
        vocab_size, out_dim (= width), max_tokens (= 1 + S*S).

    ``forward({"ids": (B, T) long, "mask": (B, T) bool, "offset": (B,) long optional})`` ->
    ``Tokens((B, T, width), mask)``. ``offset`` is the position inside the image of ``ids[:, 0]``
    (0 when absent); generation passes it when it feeds one new token at a time, so a token
    gets the embedding it has in a full forward. Positions past ``max_tokens`` raise
    :class:`mmcore.InputError`.
    """

    modality = "image"
    #: generation passes ``offset`` to encoders that set this (see :mod:`mmcore.generation`)
    takes_offset = True

    def __init__(self, config: PaletteTokensConfig | None = None, *, width: int, processor: Any = None):
        super().__init__()
        self.config = config if config is not None else PaletteTokensConfig()
        tok = PaletteTokenizer(self.config.image_size, self.config.channels, self.config.levels)
        self.vocab_size = int(processor.vocab_size) if processor is not None else tok.vocab_size
        self.max_tokens = 1 + tok.num_pixels
        self.out_dim = int(width)
        self.token_embedding = nn.Embedding(self.vocab_size, self.out_dim)
        nn.init.normal_(self.token_embedding.weight, mean=0.0, std=0.02)
        self.position_embedding: nn.Parameter | None
        if self.config.position_embedding:
            self.position_embedding = nn.Parameter(torch.randn(self.max_tokens, self.out_dim) * 0.02)
        else:
            self.position_embedding = None

    def forward(self, inputs: dict[str, Tensor]) -> Tokens:
        ids = inputs["ids"]
        mask = inputs.get("mask")
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.to(torch.bool)
        x = self.token_embedding(ids)  # (B, T, D)
        if self.position_embedding is not None:
            T = ids.shape[1]
            offset = inputs.get("offset")
            pos = torch.arange(T, device=ids.device).unsqueeze(0)  # (1, T)
            if offset is not None:
                pos = pos + offset.to(ids.device).reshape(-1, 1)  # (B, T)
                last = int(pos[:, -1].max()) if pos.numel() else 0
            else:
                last = T - 1
            if last >= self.max_tokens:
                raise InputError(
                    f"vision.palette: token position {last} is past the image's {self.max_tokens} tokens (<image> and "
                    f"{self.max_tokens - 1} pixels): generate at most the pixels that remain"
                )
            x = x + self.position_embedding[pos]
        return Tokens(embeds=x, mask=mask)

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"image_size={c.image_size}, channels={c.channels}, levels={c.levels}, vocab_size={self.vocab_size}, "
            f"out_dim={self.out_dim}"
        )
