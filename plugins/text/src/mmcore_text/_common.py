"""What the byte and the BPE tokenizer share: batch encoding and character-safe truncation.

Imports nothing heavy: torch is imported by :meth:`TokenizerBase.encode_batch` when it runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["TokenizerBase", "cut", "precut"]


def precut(text: str, budget: int, side: str, max_token_chars: int) -> str:
    """``text`` cut, before it is encoded, to the characters that can matter for keeping
    ``budget`` tokens from its start (``side="right"``) or end (``"left"``).

    A token covers at most ``max_token_chars`` characters, so ``budget + 1`` tokens need at
    most ``(budget + 1) * max_token_chars`` of them; twice that is kept, so a word cut at
    the edge (which a BPE tokenizer may split differently) lies beyond the tokens kept. The
    cost of encoding a record is then bounded by ``max_length``, not by the text's length;
    the kept tokens, and whether the text was too long, are those of the whole text.
    """
    keep = 2 * (max(budget, 0) + 1) * max(max_token_chars, 1)
    if len(text) <= keep:
        return text
    return text[-keep:] if side == "left" else text[:keep]


def cut(ids: list[int], budget: int, side: str, starts_inside_char: Any) -> tuple[list[int], int]:
    """Keep at most ``budget`` of ``ids``, from the start (``side="right"``: the end is
    dropped) or from the end (``"left"``), never splitting a UTF-8 character: a token for
    which ``starts_inside_char(id)`` is true is never the first one dropped (right) or
    kept (left). Returns ``(kept, start)`` with ``kept == ids[start:start + len(kept)]``.
    """
    budget = max(budget, 0)
    if len(ids) <= budget:
        return ids, 0
    if side == "right":
        end = budget
        while end > 0 and starts_inside_char(ids[end]):
            end -= 1  # ids[end] must start a character
        return ids[:end], 0
    start = len(ids) - budget
    while start < len(ids) and starts_inside_char(ids[start]):
        start += 1
    return ids[start:], start


class TokenizerBase:
    """Mixin of :class:`~mmcore_text.tokenizer.ByteTokenizer` and :class:`~mmcore_text.bpe.BPETokenizer`.

    Subclasses provide ``encode``, ``pad_id`` and ``starts_inside_char``, and may override
    ``_encode_many`` with a faster batch encoder.
    """

    @property
    def pad_id(self) -> int:
        """The id padding is filled with (each tokenizer says which)."""
        raise NotImplementedError

    #: The most characters of text one token covers (bounds the text encoded for ``max_length`` tokens).
    max_token_chars: int = 1

    def encode(self, text: str) -> list[int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def starts_inside_char(self, token_id: int) -> bool:  # pragma: no cover - abstract
        """True when the token's bytes begin inside a UTF-8 character (a continuation byte)."""
        raise NotImplementedError

    def _encode_many(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_batch(
        self,
        texts: Sequence[str],
        max_length: int | None = None,
        padding: bool | Literal["longest", "max_length"] = True,
    ) -> tuple["Tensor", "Tensor"]:
        """Encode several texts (no special tokens added) into one right-padded batch.

        Args:
            texts: a list (or other sequence) of strings; a lone ``str`` is a ``TypeError``.
            max_length: keep at most this many tokens of each text, dropping the end at a
                character boundary (so a row may hold fewer). None: no truncation.
            padding: ``True``/``"longest"`` pads to the longest row; ``"max_length"`` pads
                every row to ``max_length``; ``False`` pads nothing, so the rows must all
                have the same length (``ValueError`` otherwise).

        Returns:
            ``(ids, mask)``: ``ids`` (B, T) long, padded with ``pad_id``; ``mask`` (B, T)
            bool, True at real tokens. With padding, T >= 1 (as in ``collate``).
        """
        import torch

        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("encode_batch expects a list of str")
        if max_length is not None and max_length < 0:
            raise ValueError(f"max_length must be >= 0, got {max_length}")
        if padding not in (True, False, "longest", "max_length"):
            raise ValueError(f"padding must be True, False, 'longest' or 'max_length', got {padding!r}")
        if padding == "max_length" and max_length is None:
            raise ValueError("padding='max_length' needs max_length")
        if max_length is not None:  # encode only what can be kept: memory bounded by max_length
            texts = [precut(t, max_length, "right", self.max_token_chars) for t in texts]
        rows = self._encode_many(list(texts))
        if max_length is not None:
            rows = [cut(r, max_length, "right", self.starts_inside_char)[0] for r in rows]
        lengths = [len(r) for r in rows]
        if padding is False:
            if len(set(lengths)) > 1:
                raise ValueError(
                    f"padding=False needs texts of equal length in tokens, got lengths {lengths}; "
                    "use padding=True or 'max_length'"
                )
            T = lengths[0] if lengths else 0
        elif padding == "max_length":
            assert max_length is not None
            T = max(max_length, 1)
        else:
            T = max([1, *lengths])
        ids = torch.full((len(rows), T), self.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask = torch.arange(T) < torch.tensor(lengths, dtype=torch.long).reshape(-1, 1)
        return ids, mask
