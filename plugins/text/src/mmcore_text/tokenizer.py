"""The byte-level tokenizer and the :class:`TextProcessor` of ``encoder:text.bytes``.

Token ids::

    0 .. 255    the bytes of the UTF-8 encoding of the text
    256         <pad>    padding (never attended to, never predicted)
    257         <bos>    beginning of a sample
    258         <eos>    end of a sample
    259         <mask>   masked-out token (masked-LM objectives)
    260         <sep>    end of the prompt in a {"prompt", "target"} sample
    261 .. 263  reserved (see VOCAB_SIZE)

Special tokens exist only as ids: :meth:`ByteTokenizer.encode` never turns the text
``"<eos>"`` into the id 258 (it is five bytes), so record text cannot inject them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from mmcore.errors import InputError, ModelDirError
from mmcore.interfaces import Processor

from .config import ByteTextConfig

__all__ = ["ByteTokenizer", "TextProcessor", "SPECIAL_TOKENS", "VOCAB_SIZE", "TOKENIZER_FILE"]

NUM_BYTES = 256
SPECIAL_TOKENS: dict[str, int] = {"<pad>": 256, "<bos>": 257, "<eos>": 258, "<mask>": 259, "<sep>": 260}
# 261 ids are in use. The vocabulary is padded to 264, the next multiple of 8: the
# embedding table and a (tied or untied) output projection then have a row count that
# maps onto whole tensor-core tiles (fp16/bf16 matmuls want dimensions that are multiples
# of 8), and the spare ids 261-263 can become new special tokens later without changing
# the shape of a trained model's embedding. Reserved ids are never produced by encode().
VOCAB_SIZE = 264
RESERVED = {f"<reserved_{i - 261}>": i for i in range(261, VOCAB_SIZE)}
TOKENIZER_FILE = "tokenizer_config.json"
TOKENIZER_KIND = "mmcore_text.bytes"
FORMAT_VERSION = 1

_NAMES = {i: name for name, i in (SPECIAL_TOKENS | RESERVED).items()}


def _at(where: str) -> str:
    return f"{where}: " if where else ""


class ByteTokenizer:
    """UTF-8 bytes as tokens, plus special tokens. Stateless and picklable.

    ``decode(encode(s)) == s`` for every ``str`` that is valid Unicode (lone surrogates
    cannot be encoded as UTF-8 and raise ``UnicodeEncodeError``, a ``ValueError``).
    """

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    @property
    def pad_id(self) -> int:
        return SPECIAL_TOKENS["<pad>"]

    @property
    def bos_id(self) -> int:
        return SPECIAL_TOKENS["<bos>"]

    @property
    def eos_id(self) -> int:
        return SPECIAL_TOKENS["<eos>"]

    @property
    def mask_id(self) -> int:
        return SPECIAL_TOKENS["<mask>"]

    @property
    def sep_id(self) -> int:
        return SPECIAL_TOKENS["<sep>"]

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special token name -> id (a copy; reserved ids are not listed)."""
        return dict(SPECIAL_TOKENS)

    def encode(self, text: str) -> list[int]:
        """The UTF-8 bytes of ``text`` as ids 0..255 (no special tokens added)."""
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int] | Tensor, skip_special: bool = True) -> str:
        """Ids -> text. Byte runs decode as UTF-8 with ``errors="replace"`` (generated ids
        need not be valid UTF-8). Special and reserved ids are dropped, or written as their
        names (``"<eos>"``) when ``skip_special=False``. Ids outside the vocabulary raise
        ``ValueError``.
        """
        if isinstance(ids, Tensor):
            ids = ids.reshape(-1).tolist()
        out: list[str] = []
        run = bytearray()
        for i in ids:
            i = int(i)
            if 0 <= i < NUM_BYTES:
                run.append(i)
                continue
            if not NUM_BYTES <= i < VOCAB_SIZE:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {VOCAB_SIZE})")
            if run:
                out.append(run.decode("utf-8", errors="replace"))
                run = bytearray()
            if not skip_special:
                out.append(_NAMES[i])
        if run:
            out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={VOCAB_SIZE})"


def _is_continuation(b: int) -> bool:
    return b & 0xC0 == 0x80  # 0b10xxxxxx: inside a multi-byte UTF-8 character


class TextProcessor(Processor):
    """Processor of ``encoder:text.bytes``: text -> byte ids framed by special tokens.

    Built by the registry as ``TextProcessor(config)`` (a :class:`ByteTextConfig`, a dict
    of its options, or None for the defaults). Holds plain Python attributes only, so it
    pickles (DataLoader workers).

    ``__call__(value, *, where="")`` accepts:

    * a ``str`` -> ``{"ids": (T,) long}``: ``[<bos>] text [<eos>]``;
    * a ``{"prompt": str, "target": str}`` dict (conditional generation) ->
      ``{"ids": (T,) long, "prompt_len": () long}`` with ids
      ``[<bos>] prompt <sep> target [<eos>]`` and ``prompt_len`` = the number of
      conditioning tokens (``<bos>``, the prompt and ``<sep>``): the target's first token
      is at position ``prompt_len``. Without ``"target"`` (or ``"target": None``) the
      sample is a generation prompt: ``[<bos>] prompt <sep>``, no ``<eos>``.

    Brackets are the ``add_bos``/``add_eos`` options. When a sample would exceed
    ``max_length``, ``truncation="right"`` drops bytes from the end (of the target first,
    then of the prompt), ``"left"`` from the beginning (of the prompt first), always at a
    UTF-8 character boundary and keeping the special tokens; ``"error"`` raises
    :class:`~mmcore.errors.InputError`. Anything else raises ``InputError`` naming
    ``where``, the type received and what is accepted.

    ``collate(samples)`` -> ``{"ids": (B, T) long, "mask": (B, T) bool, "prompt_len": (B,)
    long}``: right-padded with ``<pad>`` to the longest sample (T >= 1); ``None`` samples
    (records without this text) give all-False mask rows; ``prompt_len`` is 0 for samples
    without a prompt.
    """

    modality = "text"

    def __init__(self, config: ByteTextConfig | Mapping[str, Any] | None = None):
        if not isinstance(config, ByteTextConfig):
            config = ByteTextConfig.model_validate(dict(config or {}))
        self.tokenizer = ByteTokenizer()
        self._set_options(config)

    def _set_options(self, config: ByteTextConfig) -> None:
        self.max_length: int = config.max_length
        self.truncation: str = config.truncation
        self.add_bos: bool = config.add_bos
        self.add_eos: bool = config.add_eos

    @property
    def options(self) -> dict[str, Any]:
        """The processor's options, as a :class:`ByteTextConfig` dict."""
        return {
            "max_length": self.max_length,
            "truncation": self.truncation,
            "add_bos": self.add_bos,
            "add_eos": self.add_eos,
        }

    # --- vocabulary (delegated to the tokenizer) ---------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id

    @property
    def bos_id(self) -> int:
        return self.tokenizer.bos_id

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def mask_id(self) -> int:
        return self.tokenizer.mask_id

    @property
    def sep_id(self) -> int:
        return self.tokenizer.sep_id

    @property
    def special_tokens(self) -> dict[str, int]:
        return self.tokenizer.special_tokens

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: Sequence[int] | Tensor, skip_special: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special=skip_special)

    # --- one sample --------------------------------------------------------------------

    def __call__(self, value: Any, *, where: str = "") -> dict[str, Tensor]:
        if isinstance(value, str):
            content = self._bytes(value, where, "text")
            head = [self.bos_id] if self.add_bos else []
            tail = [self.eos_id] if self.add_eos else []
            kept, _ = self._truncate(content, len(head) + len(tail), where)
            return {"ids": torch.tensor(head + kept + tail, dtype=torch.long)}
        if isinstance(value, Mapping):
            return self._prompt_target(value, where)
        raise InputError(
            f"{_at(where)}text.bytes expects a str or a {{'prompt': str, 'target': str}} dict, "
            f"got {type(value).__name__}"
        )

    def _prompt_target(self, value: Mapping[Any, Any], where: str) -> dict[str, Tensor]:
        unknown = [k for k in value if k not in ("prompt", "target")]
        if unknown or "prompt" not in value:
            raise InputError(
                f"{_at(where)}text.bytes expects a dict with keys 'prompt' (str) and 'target' (str), got keys "
                f"{sorted(map(str, value))}"
            )
        prompt, target = value["prompt"], value.get("target")
        for key, v in (("prompt", prompt), ("target", target)):
            if not isinstance(v, str) and not (key == "target" and v is None):
                raise InputError(f"{_at(where)}text.bytes expects {key!r} to be a str, got {type(v).__name__}")
        p = self._bytes(prompt, where, "prompt")
        t = self._bytes(target, where, "target") if target is not None else []
        head = [self.bos_id] if self.add_bos else []
        tail = [self.eos_id] if self.add_eos and target is not None else []
        kept, start = self._truncate(p + t, len(head) + 1 + len(tail), where)
        # kept = (p + t)[start:start + len(kept)]; split it back at the prompt's end.
        n_prompt = min(max(len(p) - start, 0), len(kept))
        ids = head + kept[:n_prompt] + [self.sep_id] + kept[n_prompt:] + tail
        prompt_len = len(head) + n_prompt + 1
        return {
            "ids": torch.tensor(ids, dtype=torch.long),
            "prompt_len": torch.tensor(prompt_len, dtype=torch.long),
        }

    def _bytes(self, text: str, where: str, what: str) -> list[int]:
        try:
            return self.tokenizer.encode(text)
        except UnicodeEncodeError as exc:
            raise InputError(
                f"{_at(where)}the {what} is not valid Unicode text ({exc.reason} at character {exc.start})"
            ) from exc

    def _truncate(self, content: list[int], n_special: int, where: str) -> tuple[list[int], int]:
        """Cut ``content`` to fit ``max_length - n_special`` tokens; return (kept, start)."""
        budget = self.max_length - n_special
        if len(content) <= budget:
            return content, 0
        if self.truncation == "error":
            raise InputError(
                f"{_at(where)}text is {len(content) + n_special} tokens long (special tokens included), more than "
                f"max_length = {self.max_length}; shorten it, raise max_length or set truncation = 'right' or 'left'"
            )
        budget = max(budget, 0)
        if self.truncation == "right":
            end = budget
            while end > 0 and _is_continuation(content[end]):
                end -= 1  # do not split a character: content[end] must start one
            return content[:end], 0
        start = len(content) - budget
        while start < len(content) and _is_continuation(content[start]):
            start += 1
        return content[start:], start

    # --- a batch -----------------------------------------------------------------------

    def collate(self, samples: Sequence[Mapping[str, Tensor] | None]) -> dict[str, Tensor]:
        lengths = [0 if s is None else int(s["ids"].shape[0]) for s in samples]
        B, T = len(samples), max([1, *lengths])
        ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        prompt_len = torch.zeros(B, dtype=torch.long)
        for i, s in enumerate(samples):
            if s is None:
                continue
            if s["ids"].dim() != 1:
                raise InputError(
                    f"text.bytes collate: sample {i} has ids of shape {tuple(s['ids'].shape)}, expected (T,)"
                )
            ids[i, : lengths[i]] = s["ids"]
            if "prompt_len" in s:
                prompt_len[i] = s["prompt_len"]
        mask = torch.arange(T) < torch.tensor(lengths, dtype=torch.long).unsqueeze(1)
        return {"ids": ids, "mask": mask, "prompt_len": prompt_len}

    # --- files -------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> list[str]:
        """Write ``tokenizer_config.json`` (kind, vocabulary, special tokens, options)."""
        data = {
            "kind": TOKENIZER_KIND,
            "format_version": FORMAT_VERSION,
            "vocab_size": self.vocab_size,
            "num_bytes": NUM_BYTES,
            "special_tokens": self.special_tokens,
            "options": self.options,
        }
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, TOKENIZER_FILE), "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        return [TOKENIZER_FILE]

    def load(self, directory: str | os.PathLike[str]) -> None:
        """Read ``tokenizer_config.json``: check it describes this tokenizer, adopt its options.

        Raises :class:`~mmcore.errors.ModelDirError` when the file is missing, unreadable or
        describes another tokenizer or vocabulary.
        """
        path = os.path.join(directory, TOKENIZER_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError as exc:
            raise ModelDirError(f"{path}: missing; the text.bytes processor needs it") from exc
        except (OSError, ValueError) as exc:
            raise ModelDirError(f"{path}: unreadable: {exc}") from exc
        if not isinstance(data, dict):
            raise ModelDirError(f"{path}: expected a JSON object, got {type(data).__name__}")
        expected = {
            "kind": TOKENIZER_KIND,
            "format_version": FORMAT_VERSION,
            "vocab_size": self.vocab_size,
            "num_bytes": NUM_BYTES,
            "special_tokens": self.special_tokens,
        }
        for key, want in expected.items():
            if data.get(key) != want:
                raise ModelDirError(f"{path}: {key} is {data.get(key)!r}, this tokenizer has {want!r}")
        try:
            config = ByteTextConfig.model_validate(data.get("options", {}))
        except ValueError as exc:
            raise ModelDirError(f"{path}: invalid options: {exc}") from exc
        self._set_options(config)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"TextProcessor({opts})"
