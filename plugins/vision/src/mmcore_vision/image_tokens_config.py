"""Options of ``encoder:vision.palette``, the image tokenizer (pydantic only: no torch, no Pillow)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mmcore import ComponentConfig

__all__ = ["PaletteTokensConfig", "MAX_PALETTE"]

#: Largest palette (levels ** channels) accepted: the output layer has one row per colour.
MAX_PALETTE = 4096
#: Largest image side: one token per pixel, so image_size ** 2 tokens per image.
MAX_IMAGE_SIZE = 64


class PaletteTokensConfig(ComponentConfig):
    """Options of ``encoder:vision.palette``: an image as one discrete token per pixel (Image GPT).

    Each pixel's value in [0, 1] is quantised per channel to ``levels`` evenly spaced values
    (level k stands for k / (levels - 1)); a pixel's token is its colour's index in the
    palette of ``levels ** channels`` colours. An image becomes ``<image>`` followed by its
    ``image_size ** 2`` pixel tokens in row-major order, and any such sequence decodes back
    to an image: an LM head over this input predicts images.
    """

    image_size: int = Field(
        8,
        ge=1,
        le=MAX_IMAGE_SIZE,
        description="Side of the square image in pixels; an image is image_size^2 tokens (plus <image>).",
    )
    channels: Literal[1, 3] = Field(1, description="1 for grey images, 3 for RGB; images are converted to this.")
    levels: int = Field(
        4,
        ge=2,
        le=256,
        description="Quantisation levels per channel; the palette has levels^channels colours (at most 4096). "
        "Images whose pixel values are palette colours round-trip exactly.",
    )
    resize: Literal["crop", "squash", "pad"] = Field(
        "crop",
        description="How an image of another size becomes image_size x image_size: 'crop' (centre square), "
        "'squash' (ignore the aspect ratio) or 'pad' (black borders, level 0).",
    )
    interpolation: Literal["bilinear", "bicubic", "nearest"] = Field(
        "bilinear", description="Resampling filter for images of another size (antialiased when downscaling)."
    )
    max_pixels: int = Field(
        50_000_000, ge=1, description="Largest width x height accepted, checked from the file header before decoding."
    )
    position_embedding: bool = Field(
        True,
        description="Add a learned embedding per token position inside the image (which pixel a token is), on "
        "top of the backbone's own positions.",
    )

    @model_validator(mode="after")
    def _check_palette(self) -> "PaletteTokensConfig":
        if self.levels**self.channels > MAX_PALETTE:
            raise ValueError(
                f"levels^channels = {self.levels}^{self.channels} = {self.levels**self.channels} colours is more than "
                f"{MAX_PALETTE}; with channels = 3 use levels <= 16"
            )
        return self
