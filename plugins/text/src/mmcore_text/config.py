"""Options of the ``text.bytes`` and ``text.bpe`` encoders and their processors.

This module imports pydantic and mmcore's light modules only: no torch, and no
``tokenizers`` unless a :class:`BPETextConfig` is validated without ``vocab_size`` (then
the tokenizer file is read to learn its vocabulary size).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from mmcore import ComponentConfig

__all__ = [
    "ByteTextConfig",
    "BPETextConfig",
    "TextOptions",
    "ROLES",
    "REQUIRED_ROLES",
    "roles_problem",
    "roles_from_folder",
]

#: mmcore's special-token roles, as ``text.bpe``'s ``special_tokens`` option names them -> the
#: token that plays the role in a tokenizer mmcore makes.
ROLES: dict[str, str] = {
    "pad": "<pad>",
    "bos": "<bos>",
    "eos": "<eos>",
    "mask": "<mask>",
    "sep": "<sep>",
    "image": "<image>",
    "image_end": "</image>",
    "audio": "<audio>",
    "audio_end": "</audio>",
}
#: Roles ``special_tokens`` must name: every sample starts with bos, generation stops at eos.
REQUIRED_ROLES = ("bos", "eos")


def roles_problem(roles: Any) -> str | None:
    """What is wrong with a ``special_tokens`` mapping (role -> token string), or None."""
    if not isinstance(roles, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in roles.items()):
        return f"special_tokens must map role names to token strings, got {roles!r}"
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        return f"special_tokens has unknown roles {unknown}; valid roles: {', '.join(ROLES)}"
    lacking = [r for r in REQUIRED_ROLES if r not in roles]
    if lacking:
        return (
            f"special_tokens must name {' and '.join(REQUIRED_ROLES)} (lacking: {', '.join(lacking)}); "
            'e.g. special_tokens = {bos = "<|begin_of_text|>", eos = "<|end_of_text|>"}'
        )
    return None


#: The file beside a Hugging Face tokenizer.json that names its special tokens.
HF_TOKENIZER_CONFIG = "tokenizer_config.json"


def roles_from_folder(tokenizer: str) -> dict[str, str]:
    """``special_tokens = "auto"``: the roles named by the ``<role>_token`` entries (``bos_token``,
    ``eos_token``, ``pad_token``, ``mask_token``, ``sep_token``; a string or ``{content = ...}``)
    of the tokenizer_config.json beside ``tokenizer``. Raises ValueError naming the file when
    it is missing, not JSON, or names no bos or eos token."""
    import json

    path = os.path.join(os.path.dirname(os.path.abspath(tokenizer)), HF_TOKENIZER_CONFIG)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError as exc:
        raise ValueError(
            f'special_tokens = "auto" reads {path}, which is missing; name the roles instead, e.g. '
            'special_tokens = {bos = "<|begin_of_text|>", eos = "<|end_of_text|>"}'
        ) from exc
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read it as JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    roles = {}
    for role in ("pad", "bos", "eos", "mask", "sep"):
        value = data.get(f"{role}_token")
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str) and value:
            roles[role] = value
    lacking = [r for r in REQUIRED_ROLES if r not in roles]
    if lacking:
        raise ValueError(
            f"{path}: names no {' or '.join(f'{r}_token' for r in lacking)}; give the roles in the encoder's "
            "special_tokens option instead (bos and eos are required)"
        )
    return roles


class TextOptions(ComponentConfig):
    """The options every text processor of this plugin shares (framing and truncation)."""

    _unit: ClassVar[str] = "token"

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
    augment_mask: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Token masking augmentation, only while the processor is in training mode (a task's JSONL "
        "training records; packed text corpora, evaluation and inference read the text as is): each token of a "
        "plain-text sample (not <bos> or <eos>) becomes <mask> with this probability, drawn afresh every time the "
        "record is read, so a classifier cannot lean on a few memorised tokens. {prompt, target} samples are not "
        "masked. 0 (the default): off. Needs a <mask> token.",
    )

    @model_validator(mode="after")
    def _check_room(self) -> "TextOptions":
        # A {"prompt", "target"} sample holds <bos>, <sep> and <eos>: leave room for them
        # and at least one token of text.
        least = int(self.add_bos) + int(self.add_eos) + 2
        if self.max_length < least:
            raise ValueError(
                f"max_length ({self.max_length}) must be at least {least}: room for the special tokens "
                f"(<bos>: {self.add_bos}, <sep>, <eos>: {self.add_eos}) and one {self._unit} of text"
            )
        return self


class ByteTextConfig(TextOptions):
    """Options of ``encoder:text.bytes``: how a record's text becomes token ids.

    ``max_length`` counts every token of a sample, special tokens included. Truncation
    cuts the text's bytes (never the special tokens) at a UTF-8 character boundary.
    """

    _unit: ClassVar[str] = "byte"


class BPETextConfig(TextOptions):
    """Options of ``encoder:text.bpe``: a byte-level BPE tokenizer read from a tokenizer.json.

    ``tokenizer`` is a path; a relative path is resolved against the current working
    directory of the process that reads it (not against the spec file's folder).

    ``vocab_size`` is the number of rows of the token embedding. Left out, it is filled in
    from the tokenizer file when the options are validated, so a resolved spec (and the
    ``spec.toml`` of a saved model, which writes every option out) records it: a saved
    model is then rebuilt from its own directory (``processors/<input>/tokenizer.json``)
    without the original file. Set it explicitly to pad the table (e.g. to a multiple of
    64); it can never be smaller than the tokenizer's vocabulary.

    ``max_length`` counts tokens, special tokens included; truncation drops whole tokens
    (never the special tokens) and never splits a character.
    """

    tokenizer: str = Field(
        description="Path to a byte-level BPE tokenizer.json (`mmcore tokenizer train` writes one; GPT-2's "
        "layout works too). A relative path is resolved against the current working directory. Missing "
        "special tokens (<pad>, <bos>, <eos>, <mask>, <sep>, <image>, </image>, <audio>, </audio>) are added; "
        "GPT-2's <|endoftext|> serves as <eos>. With special_tokens, nothing is added.",
    )
    vocab_size: int | None = Field(
        None,
        ge=1,
        description="Rows of the token embedding. Default: the tokenizer's vocabulary size (special tokens "
        "included), read from `tokenizer` when the spec is validated and written into resolved and saved "
        "specs. May be larger than the tokenizer's vocabulary (padding), never smaller.",
    )
    special_tokens: dict[str, str] | Literal["auto"] | None = Field(
        None,
        description="mmcore's special-token roles mapped onto special tokens the tokenizer already has, e.g. "
        '{bos = "<|begin_of_text|>", eos = "<|end_of_text|>"} for Llama 3: then nothing is appended and the '
        "vocabulary stays the file's (a checkpoint's). Roles: pad, bos, eos, mask, sep, image, image_end, audio, "
        "audio_end; bos and eos are required. pad left out is eos; mask, sep and the modality boundaries left "
        "out have no id, and what needs them (the mlm objective, {prompt, target} samples, image or audio "
        'inputs) is refused. "auto": the roles the bos_token, eos_token, pad_token, mask_token and sep_token '
        "entries of the tokenizer_config.json beside `tokenizer` name, written into resolved and saved specs. "
        "Left out: the special tokens are appended as `tokenizer` says.",
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_vocab_size(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        path = data.get("tokenizer")
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
            data = {**data, "tokenizer": path}
        roles = data.get("special_tokens")
        if roles == "auto" and isinstance(path, str):
            roles = roles_from_folder(path)
            data = {**data, "special_tokens": roles}
        if roles is not None and roles_problem(roles):
            raise ValueError(roles_problem(roles))
        if data.get("vocab_size") is None and isinstance(path, str):
            from .bpe import BPETokenizer  # imports `tokenizers`, not torch

            data = {**data, "vocab_size": BPETokenizer.from_file(path, roles=roles).vocab_size}
        return data
