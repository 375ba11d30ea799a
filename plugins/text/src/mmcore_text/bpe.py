"""Byte-level BPE with the ``tokenizers`` library: :class:`BPETokenizer` and :func:`train_bpe`.

A byte-level BPE tokenizer maps the UTF-8 bytes of the text to 256 symbols (GPT-2's
byte-to-unicode table) and merges frequent pairs of them, so every string is encodable
and ``decode(encode(s)) == s`` holds for every valid Unicode string.

Special tokens. The tokenizer always has :data:`SPECIAL_TOKENS` as *special* tokens:
``<pad>``, ``<bos>``, ``<eos>``, ``<mask>``, ``<sep>`` and the modality boundaries
``<image>``, ``</image>``, ``<audio>``, ``</audio>``. :func:`train_bpe` gives them ids
0-8; a tokenizer.json that lacks some of them gets them appended (the vocabulary grows;
:attr:`BPETokenizer.added_special_tokens` lists them). GPT-2's ``<|endoftext|>``, when
present, is the ``<eos>`` (no ``<eos>`` is added then).

Roles instead of appended tokens. A published tokenizer (Llama 3's) already holds its own
special tokens inside the checkpoint's vocabulary; appending :data:`SPECIAL_TOKENS` would
push the vocabulary past the embedding's rows. ``BPETokenizer(..., roles={"bos":
"<|begin_of_text|>", "eos": "<|end_of_text|>"})`` maps mmcore's roles (:data:`ROLES`) onto
special tokens the file already has and appends nothing. Rules for roles left out:
``pad`` is ``eos`` (as Hugging Face does); ``mask``, ``sep`` and the modality boundaries
have no id (``None``), and what needs them (masked-LM, a prompt/target sample, an image
input) is refused with an error naming the option.

Special tokens exist only as ids: the text ``"<eos>"`` in a record is encoded as plain
text (``Tokenizer.encode_special_tokens = True``), so record text cannot inject them.

This module imports ``tokenizers`` but not torch.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from mmcore import InputError, atomic_write_text

from ._common import TokenizerBase
from .config import ROLES, roles_problem

__all__ = [
    "BPETokenizer",
    "train_bpe",
    "SPECIAL_TOKENS",
    "ROLES",
    "EOS_ALIASES",
    "MIN_VOCAB_SIZE",
    "TOKENIZER_JSON",
]

log = logging.getLogger(__name__)

#: The special tokens every :class:`BPETokenizer` has, in the order they are added.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<pad>",
    "<bos>",
    "<eos>",
    "<mask>",
    "<sep>",
    "<image>",
    "</image>",
    "<audio>",
    "</audio>",
)
#: Normalizers a byte-fallback (sentencepiece kind) tokenizer may have with ``roles``.
PIECE_NORMALIZERS = frozenset({"NFC", "Prepend", "Replace"})
#: Tokens that serve as ``<eos>``, by preference: ours, then GPT-2's.
EOS_ALIASES: tuple[str, ...] = ("<eos>", "<|endoftext|>")
#: The smallest vocabulary :func:`train_bpe` accepts: the 256 byte symbols and the special tokens.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
TOKENIZER_JSON = "tokenizer.json"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, the alphabet of byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


_UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}


def _components(node: Any, kind: str) -> list[dict[str, Any]]:
    """The parts of a serialized pre-tokenizer or decoder: itself, or a Sequence's members."""
    if not isinstance(node, dict):
        return []
    if node.get("type") == "Sequence":
        parts = node.get(kind) or []
        return [p for p in parts if isinstance(p, dict)]
    return [node]


class BPETokenizer(TokenizerBase):
    """A byte-level BPE ``tokenizers.Tokenizer`` with the interface of the byte tokenizer.

    Build it with :meth:`from_file` (a tokenizer.json), :meth:`from_str` (its text) or
    ``BPETokenizer(tokenizers.Tokenizer)``. The tokenizer must be byte-level BPE
    (``models.BPE``, a ``ByteLevel`` pre-tokenizer without ``add_prefix_space`` and a
    ``ByteLevel`` decoder, no normalizer, no BPE dropout) and cover all 256 byte symbols;
    otherwise :class:`~mmcore.errors.InputError` names the source and the reason. With
    ``roles`` (a published tokenizer) an NFC normalizer and the sentencepiece kind (BPE with
    byte fallback over all 256 ``<0xXX>`` tokens) are accepted too; see :meth:`_check_layout`.
    Truncation and padding stored in the file are switched off (the processor does both).
    The wrapped tokenizer is copied, never modified.

    Picklable: it pickles as its JSON text and is rebuilt (with the same settings) on
    unpickling.

    Attributes:
        source: where it was read from (a path, or ``"<string>"``), for messages.
        added_special_tokens: the :data:`SPECIAL_TOKENS` that the source lacked and that
            were added (empty for a tokenizer :func:`train_bpe` wrote).
    """

    def __init__(self, tokenizer: Tokenizer, *, source: str = "<tokenizer>", roles: dict[str, str] | None = None):
        self.source = source
        self.roles = _check_roles(roles, source)
        text = tokenizer.to_str()
        self._setup(Tokenizer.from_str(text), json.loads(text))

    # --- construction ------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, roles: dict[str, str] | None = None) -> "BPETokenizer":
        """Read a tokenizer.json. A relative path is resolved against the current directory.
        ``roles``: see the module docstring (None: :data:`SPECIAL_TOKENS` are appended as needed).

        Raises :class:`~mmcore.errors.InputError` naming the file when it is missing,
        unreadable, not valid JSON, not a tokenizer the library can load, or not byte-level BPE.
        """
        path = os.path.abspath(os.fspath(path))
        if os.path.exists(path) and not os.path.isfile(path):  # a folder, /dev/zero, a FIFO: never read those
            raise InputError(f"{path}: not a regular file; a tokenizer.json is expected")
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError as exc:
            raise InputError(
                f"{path}: tokenizer file not found (relative paths are resolved against the current directory, "
                f"{os.getcwd()})"
            ) from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: cannot read the tokenizer file: {exc}") from exc
        return cls.from_str(text, source=path, roles=roles)

    @classmethod
    def from_str(cls, text: str, *, source: str = "<string>", roles: dict[str, str] | None = None) -> "BPETokenizer":
        """Build from the text of a tokenizer.json; errors name ``source``."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise InputError(f"{source}: not a valid tokenizer.json: invalid JSON: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            raise InputError(f"{source}: not a valid tokenizer.json: expected a JSON object with a 'model' table")
        try:
            tok = Tokenizer.from_str(text)
        except Exception as exc:  # the Rust library raises a bare Exception
            raise InputError(f"{source}: not a valid tokenizer.json: {exc}") from exc
        self = cls.__new__(cls)
        self.source = source
        self.roles = _check_roles(roles, source)
        self._setup(tok, data)
        return self

    def _setup(self, tok: Tokenizer, data: dict[str, Any]) -> None:
        self._check_layout(tok, data)
        tok.no_truncation()
        tok.no_padding()
        specials = {t.content: i for i, t in tok.get_added_tokens_decoder().items() if t.special}
        self.added_special_tokens: tuple[str, ...] = ()
        if self.roles is not None:  # the file's own special tokens take the roles: nothing is appended
            self._set_tokenizer(tok)
            return
        has_eos = any(name in specials for name in EOS_ALIASES)
        missing = [s for s in SPECIAL_TOKENS if s not in specials and not (s == "<eos>" and has_eos)]
        if missing:
            tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in missing])
            log.info("%s: added the special tokens %s", self.source, " ".join(missing))
        self.added_special_tokens = tuple(missing)
        self._set_tokenizer(tok)

    def _set_tokenizer(self, tok: Tokenizer) -> None:
        # Special-token text in the input stays text: "<eos>" typed by a user is not id <eos>.
        tok.encode_special_tokens = True
        self._tok = tok
        self._special = {t.content: i for i, t in sorted(tok.get_added_tokens_decoder().items()) if t.special}
        vocab = tok.get_vocab(with_added_tokens=True)
        self._vocab_size = max(vocab.values()) + 1 if vocab else 0
        # byte-level symbols are one character a byte, and a byte is at most one character of text
        self.max_token_chars = max(map(len, vocab), default=1)
        if self._vocab_size > 2 * len(vocab):  # the embedding table gets a row per id up to the largest
            raise InputError(
                f"{self.source}: token ids reach {self._vocab_size - 1} for {len(vocab)} tokens; ids must run from 0 "
                f"with few gaps (the embedding table would have {self._vocab_size} rows)"
            )
        self._inside: bytearray | None = None  # token id -> 1 when it starts inside a character
        if self.roles is not None:
            self._ids = self._role_ids(self.roles)
            return
        eos = next((name for name in EOS_ALIASES if name in self._special), None)
        lacking = [name for name in SPECIAL_TOKENS if name != "<eos>" and name not in self._special]
        if eos is None or lacking:  # a vocabulary entry took a special token's id
            raise InputError(
                f"{self.source}: the special tokens {lacking + ([] if eos else ['<eos>'])} have no id of their own "
                "(does the vocabulary give their ids to other tokens?)"
            )
        self._ids = {name: self._special[name] for name in SPECIAL_TOKENS if name != "<eos>"}
        self._ids["<eos>"] = self._special[eos]
        if len(set(self._ids.values())) != len(self._ids):
            raise InputError(f"{self.source}: special tokens share ids: {self._ids}")

    def _role_ids(self, roles: dict[str, str]) -> dict[str, int | None]:
        """``<role token>`` -> id from ``roles``; pad defaults to eos, other roles left out have none."""
        ids: dict[str, int | None] = {}
        for role, token in roles.items():
            if token not in self._special:
                known = ", ".join(list(self._special)[:12]) + (" ..." if len(self._special) > 12 else "")
                raise InputError(
                    f"{self.source}: special_tokens.{role} = {token!r} is not a special token of the tokenizer "
                    f"(its special tokens: {known or '(none)'})"
                )
            ids[ROLES[role]] = self._special[token]
        for token in SPECIAL_TOKENS:
            ids.setdefault(token, ids["<eos>"] if token == "<pad>" else None)
        return ids

    def _check_layout(self, tok: Tokenizer, data: dict[str, Any]) -> None:
        """Refuse what mmcore cannot use; set ``self._byte_fallback`` (the sentencepiece kind).

        Without ``roles``: byte-level BPE only, no normalizer. With ``roles`` (a published
        tokenizer, used exactly as the ``tokenizers`` library encodes and decodes it): also an
        NFC normalizer (Qwen2), and the sentencepiece kind (Llama 2, Mistral): BPE with byte
        fallback over all 256 ``<0xXX>`` tokens, a Metaspace pre-tokenizer or the
        Prepend/Replace("▁") normalizer."""
        problems = []
        self._byte_fallback = False
        if not isinstance(tok.model, models.BPE):
            problems.append(f"its model is {type(tok.model).__name__}, not BPE")
        elif data["model"].get("dropout") not in (None, 0, 0.0):
            problems.append("it uses BPE dropout (encoding would not be deterministic)")
        published = self.roles is not None
        norms = {str(n.get("type")) for n in _components(data.get("normalizer"), "normalizers")}
        if published and data["model"].get("byte_fallback"):
            self._byte_fallback = True
            if norms - PIECE_NORMALIZERS:
                problems.append(
                    f"its normalizers {sorted(norms - PIECE_NORMALIZERS)} are not among {sorted(PIECE_NORMALIZERS)}"
                )
            vocab = tok.get_vocab(with_added_tokens=False)
            no_piece = [b for b in range(256) if f"<0x{b:02X}>" not in vocab]
            if no_piece:
                problems.append(f"its byte fallback lacks {len(no_piece)} of the 256 <0xXX> tokens")
        else:
            if norms and not (published and norms <= {"NFC"}):
                problems.append(
                    "it has a normalizer, which alters text (decode(encode(text)) would differ from text)"
                    + ("" if published else "; with the special_tokens option an NFC normalizer is accepted")
                )
            levels = [
                p for p in _components(data.get("pre_tokenizer"), "pretokenizers") if p.get("type") == "ByteLevel"
            ]
            if not levels:
                problems.append(
                    "its pre-tokenizer is not ByteLevel"
                    + ("" if published else " (a sentencepiece kind needs the special_tokens option)")
                )
            elif any(p.get("add_prefix_space") for p in levels):
                problems.append(
                    "its ByteLevel pre-tokenizer adds a prefix space (decoding would not give the text back)"
                )
            if not any(d.get("type") == "ByteLevel" for d in _components(data.get("decoder"), "decoders")):
                problems.append("its decoder is not ByteLevel")
            if not problems:
                vocab = tok.get_vocab(with_added_tokens=False)
                lacking = [c for c in _UNICODE_TO_BYTE if c not in vocab]
                if lacking:
                    problems.append(
                        f"its vocabulary lacks {len(lacking)} of the 256 byte symbols, so some text cannot be "
                        "encoded (train with initial_alphabet=pre_tokenizers.ByteLevel.alphabet())"
                    )
        if problems:
            raise InputError(f"{self.source}: not a byte-level BPE tokenizer mmcore can use: " + "; ".join(problems))

    # --- pickling ------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "added": self.added_special_tokens,
            "roles": self.roles,
            "byte_fallback": self._byte_fallback,
            "json": self._tok.to_str(),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.source = state["source"]
        self.added_special_tokens = tuple(state["added"])
        self.roles = state.get("roles")
        self._byte_fallback = state.get("byte_fallback", False)
        self._set_tokenizer(Tokenizer.from_str(state["json"]))

    # --- vocabulary ----------------------------------------------------------------------

    @property
    def tokenizer(self) -> Tokenizer:
        """The wrapped ``tokenizers.Tokenizer`` (``encode_special_tokens`` is True)."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        """Number of token ids (1 + the largest id), special tokens included."""
        return self._vocab_size

    @property
    def pad_id(self) -> int:
        """The id of ``<pad>`` (with ``roles``: the pad role's token, else eos's)."""
        return self._ids["<pad>"]  # type: ignore[return-value]  # pad always has an id

    @property
    def bos_id(self) -> int:
        return self._ids["<bos>"]  # type: ignore[return-value]  # bos always has an id

    @property
    def eos_id(self) -> int:
        """The id of ``<eos>``, or of GPT-2's ``<|endoftext|>`` when the tokenizer has no ``<eos>``."""
        return self._ids["<eos>"]  # type: ignore[return-value]  # eos always has an id

    @property
    def mask_id(self) -> int | None:
        """The id of ``<mask>``; None when ``roles`` names no mask token."""
        return self._ids["<mask>"]

    @property
    def sep_id(self) -> int | None:
        """The id of ``<sep>``; None when ``roles`` names no sep token."""
        return self._ids["<sep>"]

    @property
    def special_tokens(self) -> dict[str, int]:
        """Every special token of the tokenizer, text -> id (a copy): :data:`SPECIAL_TOKENS`
        (``<eos>`` may be ``<|endoftext|>`` instead) and any others the file declares. With
        ``roles``, the roles that have an id are listed under their mmcore names too
        (``"<bos>"``: the id of ``<|begin_of_text|>``), so what asks for ``<mask>`` finds it or not."""
        out = dict(self._special)
        if self.roles is not None:
            out.update({name: i for name, i in self._ids.items() if i is not None and name not in out})
        return out

    def token_id(self, token: str) -> int | None:
        """The id of a token given as the tokenizer writes it (``"<image>"``, ``"Ġthe"``), or None."""
        return self._tok.token_to_id(token)

    def starts_inside_char(self, token_id: int) -> bool:
        """True when the token's first byte is a UTF-8 continuation byte (the token
        continues a character that the previous token began)."""
        if self._inside is None:
            table = bytearray(self._vocab_size)
            added = self._tok.get_added_tokens_decoder()
            for token, i in self._tok.get_vocab(with_added_tokens=False).items():
                if i in added or not token:
                    continue
                if self._byte_fallback:  # text pieces start characters; <0xXX> tokens are bytes
                    b = int(token[3:5], 16) if len(token) == 6 and token.startswith("<0x") else None
                else:
                    b = _UNICODE_TO_BYTE.get(token[0])
                table[i] = b is not None and b & 0xC0 == 0x80
            self._inside = table
        return 0 <= token_id < len(self._inside) and bool(self._inside[token_id])

    # --- encoding ------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added; special-token text stays text).

        A ``str`` that is not valid Unicode (lone surrogates) raises ``UnicodeEncodeError``.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        try:
            return self._tok.encode(text, add_special_tokens=False).ids
        except TypeError:
            text.encode("utf-8")  # raises UnicodeEncodeError for lone surrogates
            raise

    def _encode_many(self, texts: list[str]) -> list[list[int]]:
        try:
            return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]
        except TypeError:
            return [self.encode(t) for t in texts]  # re-raises, naming the bad text's problem

    def decode(self, ids: Sequence[int] | Any, skip_special: bool = True) -> str:
        """Ids (a sequence or a tensor) -> text. Special tokens are dropped, or written as
        their text (``"<eos>"``) when ``skip_special=False``. Byte sequences that are not
        valid UTF-8 (possible in generated ids) decode to U+FFFD. Ids outside the
        vocabulary raise ``ValueError``.
        """
        if hasattr(ids, "tolist"):
            ids = ids.reshape(-1).tolist()
        ids = [int(i) for i in ids]
        for i in ids:
            if not 0 <= i < self._vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {self._vocab_size})")
        return self._tok.decode(ids, skip_special_tokens=skip_special)

    # --- files ---------------------------------------------------------------------------

    def to_str(self) -> str:
        """The tokenizer.json text (special tokens that were added included)."""
        return self._tok.to_str(pretty=True)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the tokenizer.json to ``path`` atomically (temporary file, then rename)."""
        path = Path(path)
        atomic_write_text(path, self.to_str())
        return path

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self._vocab_size}, source={self.source!r})"


def _check_roles(roles: Any, source: str) -> dict[str, str] | None:
    """``roles`` checked (see :func:`~mmcore_text.config.roles_problem`): None or a copy."""
    if roles is None:
        return None
    problem = roles_problem(roles)
    if problem:
        raise InputError(f"{source}: {problem}")
    return dict(roles)


def train_bpe(
    files: Iterable[str | os.PathLike[str]],
    vocab_size: int,
    out_dir: str | os.PathLike[str],
    *,
    min_frequency: int = 2,
) -> Path:
    """Train a byte-level BPE tokenizer on text files and write ``out_dir/tokenizer.json``.

    Every byte is in the vocabulary (``initial_alphabet=ByteLevel.alphabet()``), and
    :data:`SPECIAL_TOKENS` get the ids 0-8. The vocabulary has at most ``vocab_size``
    tokens (fewer when the corpus has fewer pairs occurring ``min_frequency`` times). The
    file is written atomically. Returns its path.

    Raises :class:`~mmcore.errors.InputError` for no files, a missing or unreadable file,
    a ``vocab_size`` below :data:`MIN_VOCAB_SIZE` (256 bytes + 9 special tokens), a
    ``min_frequency`` below 1 or an ``out_dir`` that is not a directory.
    """
    paths = [Path(f) for f in files]
    if not paths:
        raise InputError("train_bpe: no training files given")
    for p in paths:
        if not p.is_file():
            raise InputError(f"{p}: training file not found" if not p.exists() else f"{p}: not a file")
        if not os.access(p, os.R_OK):
            raise InputError(f"{p}: training file is not readable")
    if vocab_size < MIN_VOCAB_SIZE:
        raise InputError(
            f"vocab size {vocab_size} is too small: a byte-level BPE vocabulary holds the 256 byte symbols and "
            f"{len(SPECIAL_TOKENS)} special tokens, so it needs at least {MIN_VOCAB_SIZE}"
        )
    if min_frequency < 1:
        raise InputError(f"min_frequency must be at least 1, got {min_frequency}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[AddedToken(s, special=True, normalized=False) for s in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    try:
        tok.train([str(p) for p in paths], trainer=trainer)
    except Exception as exc:  # e.g. a file that is not UTF-8 text
        names = ", ".join(map(str, paths))
        raise InputError(f"training a BPE tokenizer on {names} failed: {exc}") from exc
    out.mkdir(parents=True, exist_ok=True)
    path = out / TOKENIZER_JSON
    atomic_write_text(path, tok.to_str(pretty=True))
    return path
