"""Options of the ``text.bytes`` encoder and its processor (pydantic only, no torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mmcore.config import ComponentConfig

__all__ = ["ByteTextConfig"]


class ByteTextConfig(ComponentConfig):
    """Options of ``encoder:text.bytes``: how a record's text becomes token ids.

    ``max_length`` counts every token of a sample, special tokens included. Truncation
    cuts the text's bytes (never the special tokens) at a UTF-8 character boundary.
    """

    max_length: int = Field(
        256,
        ge=1,
        description="Most tokens per sample, including <bos>, <sep> and <eos>. Longer input is truncated "
        "as `truncation` says.",
    )
    truncation: Literal["right", "left", "error"] = Field(
        "right",
        description="What to do with text longer than max_length: 'right' drops the end, 'left' drops the "
        "beginning (special tokens are kept), 'error' rejects the record with an error naming it.",
    )
    add_bos: bool = Field(True, description="Start every sample with <bos>.")
    add_eos: bool = Field(True, description="End every sample with <eos> (so a language model learns where text ends).")

    @model_validator(mode="after")
    def _check_room(self) -> "ByteTextConfig":
        # A {"prompt", "target"} sample holds <bos>, <sep> and <eos>: leave room for them
        # and at least one byte of text.
        least = int(self.add_bos) + int(self.add_eos) + 2
        if self.max_length < least:
            raise ValueError(
                f"max_length ({self.max_length}) must be at least {least}: room for the special tokens "
                f"(<bos>: {self.add_bos}, <sep>, <eos>: {self.add_eos}) and one byte of text"
            )
        return self
