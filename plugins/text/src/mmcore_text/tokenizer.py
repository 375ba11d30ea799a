"""The text processors: :class:`TextProcessor` (``encoder:text.bytes``, with the byte-level
:class:`ByteTokenizer`) and :class:`BPETextProcessor` (``encoder:text.bpe``, with
:class:`~mmcore_text.bpe.BPETokenizer`). Both are :class:`TokenTextProcessor`: the framing,
truncation, collation and files are shared; only the tokenizer differs.

Byte tokenizer ids::

    0 .. 255    the bytes of the UTF-8 encoding of the text
    256         <pad>    padding (never attended to, never predicted)
    257         <bos>    beginning of a sample
    258         <eos>    end of a sample
    259         <mask>   masked-out token (masked-LM objectives)
    260         <sep>    end of the prompt in a {"prompt", "target"} sample
    261 .. 263  reserved (see VOCAB_SIZE)

Special tokens exist only as ids: :meth:`ByteTokenizer.encode` never turns the text
``"<eos>"`` into the id 258 (it is five bytes), so record text cannot inject them. The
BPE tokenizer keeps that rule.

This module imports torch; ``tokenizers`` is imported only when a BPE processor needs it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from mmcore import InputError, ModelDirError, Processor

from ._common import TokenizerBase, cut, precut
from .config import BPETextConfig, ByteTextConfig, TextOptions

__all__ = [
    "ByteTokenizer",
    "TokenTextProcessor",
    "TextProcessor",
    "BPETextProcessor",
    "SPECIAL_TOKENS",
    "VOCAB_SIZE",
    "TOKENIZER_FILE",
]

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


class ByteTokenizer(TokenizerBase):
    """UTF-8 bytes as tokens, plus special tokens. Stateless and picklable.

    ``decode(encode(s)) == s`` for every ``str`` that is valid Unicode (lone surrogates
    cannot be encoded as UTF-8 and raise ``UnicodeEncodeError``, a ``ValueError``).
    ``encode_batch(texts, max_length=None, padding=True)`` -> ``(ids, mask)`` pads a batch
    (see :meth:`~mmcore_text._common.TokenizerBase.encode_batch`).
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

    def starts_inside_char(self, token_id: int) -> bool:
        """True for UTF-8 continuation bytes (0b10xxxxxx): they never start a character."""
        return 0x80 <= token_id < 0xC0

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


class TokenTextProcessor(Processor):
    """What :class:`TextProcessor` and :class:`BPETextProcessor` share: text -> token ids
    framed by special tokens, truncation, collation, and the processor files.

    A subclass sets ``name`` (the component, for messages), ``kind`` (written to
    ``tokenizer_config.json``) and gives the tokenizer: an object with ``encode``,
    ``decode``, ``starts_inside_char``, ``vocab_size`` and the ``*_id`` properties.

    ``__call__(value, *, where="")`` accepts:

    * a ``str`` -> ``{"ids": (T,) long}``: ``[<bos>] text [<eos>]``;
    * a ``{"prompt": str, "target": str}`` dict (conditional generation) ->
      ``{"ids": (T,) long, "prompt_len": () long}`` with ids
      ``[<bos>] prompt <sep> target [<eos>]`` and ``prompt_len`` = the number of
      conditioning tokens (``<bos>``, the prompt and ``<sep>``): the target's first token
      is at position ``prompt_len``. Without ``"target"`` (or ``"target": None``) the
      sample is a generation prompt: ``[<bos>] prompt <sep>``, no ``<eos>``;
    * ``{"prompt": str, "sep": False}``: a generation prompt for a model that continues plain
      text (trained with the ``lm`` objective on strings): ``[<bos>] prompt``, no ``<sep>``, no
      ``<eos>``, ``prompt_len`` its length. :func:`mmcore.generation.prompt_records` chooses
      between the two forms from the model's tasks.

    Brackets are the ``add_bos``/``add_eos`` options. When a sample would exceed
    ``max_length``, ``truncation="right"`` drops tokens from the end (of the target first,
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
    name: ClassVar[str] = "text"
    kind: ClassVar[str] = ""

    def __init__(self, tokenizer: Any, config: TextOptions):
        self._tokenizer = tokenizer
        self._set_options(config)

    def _set_options(self, config: TextOptions) -> None:
        self.max_length: int = config.max_length
        self.truncation: str = config.truncation
        self.add_bos: bool = config.add_bos
        self.add_eos: bool = config.add_eos
        self.augment_mask: float = config.augment_mask

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def options(self) -> dict[str, Any]:
        """The framing and truncation options (``max_length``, ``truncation``, ``add_bos``, ``add_eos``), and
        ``augment_mask`` when it is on (so a processor without augmentation saves what it always did)."""
        out: dict[str, Any] = {
            "max_length": self.max_length,
            "truncation": self.truncation,
            "add_bos": self.add_bos,
            "add_eos": self.add_eos,
        }
        if self.augment_mask:
            out["augment_mask"] = self.augment_mask
        return out

    # --- vocabulary (delegated to the tokenizer) ---------------------------------------

    @property
    def vocab_size(self) -> int:  # type: ignore[override]  # a read-only property for a declared capability
        return self.tokenizer.vocab_size

    @property
    def pad_id(self) -> int:  # type: ignore[override]  # a read-only property for a declared capability
        return self.tokenizer.pad_id

    @property
    def bos_id(self) -> int:  # type: ignore[override]  # a read-only property for a declared capability
        return self.tokenizer.bos_id

    @property
    def eos_id(self) -> int:  # type: ignore[override]  # a read-only property for a declared capability
        return self.tokenizer.eos_id

    @property
    def mask_id(self) -> int:  # type: ignore[override]  # a read-only property for a declared capability
        return self.tokenizer.mask_id

    @property
    def sep_id(self) -> int:  # type: ignore[override]  # a read-only property for a declared capability
        return self.tokenizer.sep_id

    @property
    def special_tokens(self) -> dict[str, int]:  # type: ignore[override]  # a read-only property for a declared capability
        return self.tokenizer.special_tokens

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: Sequence[int] | Tensor, skip_special: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special=skip_special)

    def encode_batch(
        self, texts: Sequence[str], max_length: int | None = None, padding: Any = True
    ) -> tuple[Tensor, Tensor]:
        """The tokenizer's ``encode_batch``: texts -> ``(ids, mask)``, no special tokens added."""
        return self.tokenizer.encode_batch(texts, max_length=max_length, padding=padding)

    # --- one sample --------------------------------------------------------------------

    def __call__(self, value: Any, *, where: str = "") -> dict[str, Tensor]:
        if isinstance(value, str):
            head = [self.bos_id] if self.add_bos else []
            tail = [self.eos_id] if self.add_eos else []
            content = self._ids(value, where, "text", self.max_length - len(head) - len(tail))
            kept, _ = self._truncate(content, len(head) + len(tail), where)
            if self.training and self.augment_mask > 0 and kept:
                kept = self._masked(kept, where)
            return {"ids": torch.tensor(head + kept + tail, dtype=torch.long)}
        if isinstance(value, Mapping):
            return self._prompt_target(value, where)
        raise InputError(
            f"{_at(where)}{self.name} expects a str or a {{'prompt': str, 'target': str}} dict, "
            f"got {type(value).__name__}"
        )

    def _masked(self, ids: list[int], where: str) -> list[int]:
        """``ids`` with each token replaced by <mask> with probability ``augment_mask`` (torch's global
        generator, seeded per DataLoader worker): the ``augment_mask`` option, training copies only."""
        mask_id = self.mask_id
        if mask_id is None:
            raise InputError(f"{_at(where)}{self.name}: augment_mask needs a <mask> token, and the tokenizer has none")
        t = torch.tensor(ids, dtype=torch.long)
        return torch.where(torch.rand(t.shape) < self.augment_mask, mask_id, t).tolist()

    def _prompt_target(self, value: Mapping[Any, Any], where: str) -> dict[str, Tensor]:
        unknown = [k for k in value if k not in ("prompt", "target", "sep")]
        if unknown or "prompt" not in value:
            raise InputError(
                f"{_at(where)}{self.name} expects a dict with keys 'prompt' (str) and 'target' (str) (or 'sep': "
                f"false instead of a target), got keys {sorted(map(str, value))}"
            )
        prompt, target = value["prompt"], value.get("target")
        sep = value.get("sep", True)
        if not isinstance(sep, bool) or (not sep and target is not None):
            raise InputError(
                f"{_at(where)}{self.name}: 'sep' is true or false, and false only in a generation prompt (no "
                f"'target'); got sep = {sep!r}" + (" with a target" if target is not None else "")
            )
        for key, v in (("prompt", prompt), ("target", target)):
            if not isinstance(v, str) and not (key == "target" and v is None):
                raise InputError(f"{_at(where)}{self.name} expects {key!r} to be a str, got {type(v).__name__}")
        head = [self.bos_id] if self.add_bos else []
        tail = [self.eos_id] if self.add_eos and target is not None else []
        if sep and self.sep_id is None:
            raise InputError(
                f"{_at(where)}{self.name}: a {{'prompt', 'target'}} sample is joined by <sep>, and the tokenizer "
                'has none: name one in the encoder\'s special_tokens option (sep = "<|...|>"), or give a '
                "generation prompt as {'prompt': ..., 'sep': false}"
            )
        mid = [self.sep_id] if sep else []
        budget = self.max_length - len(head) - len(mid) - len(tail)
        p = self._ids(prompt, where, "prompt", budget)
        t = self._ids(target, where, "target", budget) if target is not None else []
        kept, start = self._truncate(p + t, len(head) + len(mid) + len(tail), where)
        # kept = (p + t)[start:start + len(kept)]; split it back at the prompt's end.
        n_prompt = min(max(len(p) - start, 0), len(kept))
        ids = head + kept[:n_prompt] + mid + kept[n_prompt:] + tail
        prompt_len = len(head) + n_prompt + len(mid)
        return {
            "ids": torch.tensor(ids, dtype=torch.long),
            "prompt_len": torch.tensor(prompt_len, dtype=torch.long),
        }

    def _ids(self, text: str, where: str, what: str, budget: int) -> list[int]:
        """Token ids of ``text``, of which at most ``budget`` will be kept (see :func:`precut`:
        only the text that can matter is encoded, so a huge field costs no more than a short one)."""
        chars = getattr(self.tokenizer, "max_token_chars", None)
        if chars is not None:
            text = precut(text, budget, "left" if self.truncation == "left" else "right", chars)
        try:
            return self.tokenizer.encode(text)
        except UnicodeEncodeError as exc:
            raise InputError(
                f"{_at(where)}the {what} is not valid Unicode text ({exc.reason} at character {exc.start})"
            ) from exc

    def _truncate(self, content: list[int], n_special: int, where: str) -> tuple[list[int], int]:
        """Cut ``content`` to fit ``max_length - n_special`` tokens; return (kept, start)."""
        budget = self.max_length - n_special
        if len(content) > budget and self.truncation == "error":
            raise InputError(
                f"{_at(where)}text is at least {len(content) + n_special} tokens long (special tokens included), more than "
                f"max_length = {self.max_length}; shorten it, raise max_length or set truncation = 'right' or 'left'"
            )
        return cut(content, budget, self.truncation, self.tokenizer.starts_inside_char)

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
                    f"{self.name} collate: sample {i} has ids of shape {tuple(s['ids'].shape)}, expected (T,)"
                )
            ids[i, : lengths[i]] = s["ids"]
            if "prompt_len" in s:
                prompt_len[i] = s["prompt_len"]
        mask = torch.arange(T) < torch.tensor(lengths, dtype=torch.long).unsqueeze(1)
        return {"ids": ids, "mask": mask, "prompt_len": prompt_len}

    # --- files -------------------------------------------------------------------------

    def _describe(self, tokenizer: Any) -> dict[str, Any]:
        """What ``tokenizer_config.json`` records about the vocabulary (checked on load)."""
        return {"vocab_size": self.vocab_size, "special_tokens": tokenizer.special_tokens}

    def _save_tokenizer(self, directory: str) -> list[str]:
        """Write the tokenizer's own files, if any; return their names."""
        return []

    def _load_tokenizer(self, directory: str) -> Any:
        """Read the tokenizer that :meth:`_save_tokenizer` wrote (ModelDirError if unusable)."""
        return self.tokenizer

    def save(self, directory: str | os.PathLike[str]) -> list[str]:
        """Write ``tokenizer_config.json`` (kind, vocabulary, special tokens, options) and the
        tokenizer's own files (text.bpe: ``tokenizer.json``); return their names."""
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        files = self._save_tokenizer(directory)
        data = {**self._describe(self.tokenizer), "options": self.options}
        return [*files, *self.write_json(directory, TOKENIZER_FILE, self.kind, FORMAT_VERSION, data)]

    def load(self, directory: str | os.PathLike[str]) -> None:
        """Read what :meth:`save` wrote: check it describes this processor's vocabulary, then
        adopt its tokenizer and options.

        Raises :class:`~mmcore.errors.ModelDirError` when a file is missing, unreadable or
        describes another tokenizer or vocabulary; the processor is then unchanged.
        """
        directory = os.fspath(directory)
        path = os.path.join(directory, TOKENIZER_FILE)
        data = self.read_json(directory, TOKENIZER_FILE, self.kind, FORMAT_VERSION, f"the {self.name} processor")
        tokenizer = self._load_tokenizer(directory)
        for key, want in self._describe(tokenizer).items():
            if data.get(key) != want:
                raise ModelDirError(f"{path}: {key} is {data.get(key)!r}, this tokenizer has {want!r}")
        try:
            config = TextOptions.model_validate(data.get("options", {}))
        except ValueError as exc:
            raise ModelDirError(f"{path}: invalid options: {exc}") from exc
        self._tokenizer = tokenizer
        self._set_options(config)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({opts})"


class TextProcessor(TokenTextProcessor):
    """Processor of ``encoder:text.bytes``: text -> UTF-8 byte ids framed by special tokens.

    Built by the registry as ``TextProcessor(config)`` (a :class:`ByteTextConfig`, a dict
    of its options, or None for the defaults). Holds plain Python attributes only, so it
    pickles (DataLoader workers). Inputs, truncation (at UTF-8 character boundaries),
    ``collate`` and files: see :class:`TokenTextProcessor`. ``save`` writes
    ``tokenizer_config.json`` only (the byte vocabulary is fixed).
    """

    name = "text.bytes"
    kind = TOKENIZER_KIND

    def __init__(self, config: ByteTextConfig | Mapping[str, Any] | None = None):
        if not isinstance(config, ByteTextConfig):
            config = ByteTextConfig.model_validate(dict(config or {}))
        super().__init__(ByteTokenizer(), config)

    def _describe(self, tokenizer: Any) -> dict[str, Any]:
        return {"vocab_size": VOCAB_SIZE, "num_bytes": NUM_BYTES, "special_tokens": tokenizer.special_tokens}


class BPETextProcessor(TokenTextProcessor):
    """Processor of ``encoder:text.bpe``: text -> byte-level BPE ids framed by special tokens.

    Built by the registry as ``BPETextProcessor(config)`` (a :class:`BPETextConfig` or a
    dict of its options). Inputs, truncation (whole tokens, never inside a character),
    ``collate``: see :class:`TokenTextProcessor`.

    The tokenizer is read lazily. ``vocab_size`` (the embedding's rows) comes from the
    config, which holds it once validated, so building a model never reads the tokenizer
    file. The file named by ``config.tokenizer`` (made absolute against the current
    directory at construction) is read on first use (encoding, a special id, ``save``);
    :meth:`load` instead adopts the ``tokenizer.json`` saved in a processor directory and
    never reads the configured path. That is how :func:`mmcore.load` works when the
    original tokenizer file is gone. A tokenizer with more ids than ``vocab_size`` is an
    :class:`~mmcore.errors.InputError` (on first use) or a ``ModelDirError`` (on load).

    Picklable (DataLoader workers): the tokenizer pickles as its JSON text. Ids in
    ``[tokenizer.vocab_size, vocab_size)`` (embedding padding) decode as nothing, or as
    ``<reserved_k>`` with ``skip_special=False``.
    """

    name = "text.bpe"
    kind = "mmcore_text.bpe"

    def __init__(self, config: BPETextConfig | Mapping[str, Any]):
        if not isinstance(config, BPETextConfig):
            config = BPETextConfig.model_validate(dict(config))
        self.tokenizer_path = os.path.abspath(config.tokenizer)
        self._vocab_size = config.vocab_size
        self._roles = config.special_tokens
        super().__init__(None, config)
        if self._vocab_size is None:  # a config made with model_construct: read the file now
            self._vocab_size = self.tokenizer.vocab_size

    @property
    def tokenizer(self) -> Any:
        """The :class:`~mmcore_text.bpe.BPETokenizer` (read from ``tokenizer_path`` on first use)."""
        if self._tokenizer is None:
            from .bpe import BPETokenizer

            try:
                tok = BPETokenizer.from_file(self.tokenizer_path, roles=self._roles)
            except InputError as exc:
                exc.add_note(
                    f"the {self.name} processor reads its tokenizer file on first use; a saved model's processor "
                    "uses the copy in its directory instead (processors/<input>/tokenizer.json, read by mmcore.load)"
                )
                raise
            if self._vocab_size is not None and tok.vocab_size > self._vocab_size:
                raise InputError(
                    f"{self.tokenizer_path}: the tokenizer has {tok.vocab_size} token ids, more than vocab_size = "
                    f"{self._vocab_size} (the embedding's rows); was the file replaced after the spec was resolved? "
                    f"Set vocab_size to at least {tok.vocab_size} or leave it out"
                )
            self._tokenizer = tok
        return self._tokenizer

    @property
    def vocab_size(self) -> int:  # type: ignore[override]  # a read-only property for a declared capability
        """Rows of the token embedding: the config's ``vocab_size`` (>= the tokenizer's)."""
        assert self._vocab_size is not None
        return self._vocab_size

    def decode(self, ids: Sequence[int] | Tensor, skip_special: bool = True) -> str:
        tok = self.tokenizer
        if isinstance(ids, Tensor):
            ids = ids.reshape(-1).tolist()
        ids = [int(i) for i in ids]
        n = tok.vocab_size
        if all(i < n for i in ids):
            return tok.decode(ids, skip_special=skip_special)
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            if n <= i < self.vocab_size:
                if run:
                    out.append(tok.decode(run, skip_special=skip_special))
                    run = []
                if not skip_special:
                    out.append(f"<reserved_{i - n}>")
            else:
                run.append(i)  # ids past vocab_size: the tokenizer raises ValueError
        if run:
            out.append(tok.decode(run, skip_special=skip_special))
        return "".join(out)

    def _describe(self, tokenizer: Any) -> dict[str, Any]:
        return {
            "vocab_size": self.vocab_size,
            "tokenizer_vocab_size": tokenizer.vocab_size,
            "special_tokens": tokenizer.special_tokens,
        }

    def _save_tokenizer(self, directory: str) -> list[str]:
        from .bpe import TOKENIZER_JSON

        self.tokenizer.save(os.path.join(directory, TOKENIZER_JSON))
        return [TOKENIZER_JSON]

    def _load_tokenizer(self, directory: str) -> Any:
        from .bpe import TOKENIZER_JSON, BPETokenizer

        path = os.path.join(directory, TOKENIZER_JSON)
        if not os.path.isfile(path):
            raise ModelDirError(f"{path}: missing; the {self.name} processor needs it")
        try:
            tok = BPETokenizer.from_file(path, roles=self._roles)
        except InputError as exc:
            raise ModelDirError(str(exc)) from exc
        if tok.vocab_size > self.vocab_size:
            raise ModelDirError(
                f"{path}: the tokenizer has {tok.vocab_size} token ids, more than vocab_size = {self.vocab_size} "
                "in the spec (the embedding's rows)"
            )
        return tok

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"BPETextProcessor(tokenizer={self.tokenizer_path!r}, vocab_size={self._vocab_size}, {opts})"
