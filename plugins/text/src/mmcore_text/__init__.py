"""mmcore-text: the ``text.bytes`` and ``text.bpe`` encoders (tokenizer and token embedding).

Importing this package (or :mod:`mmcore_text.plugin`, the entry point) imports neither
torch nor ``tokenizers``; the names backed by them are loaded on first access.

Public names:

* :class:`ByteTextConfig`, :class:`BPETextConfig` -- options of ``encoder:text.bytes`` and
  ``encoder:text.bpe`` (:mod:`mmcore_text.config`).
* :class:`ByteTokenizer`, :class:`TextProcessor`, :class:`BPETextProcessor`,
  :class:`TokenTextProcessor` (their shared base) -- :mod:`mmcore_text.tokenizer`.
* :class:`BPETokenizer`, :func:`train_bpe` -- byte-level BPE with ``tokenizers``
  (:mod:`mmcore_text.bpe`).
* :class:`TokenEmbedding` -- the encoder module of both (:mod:`mmcore_text.encoder`).
"""

from __future__ import annotations

import importlib
from importlib import metadata as _metadata
from typing import Any

from .config import BPETextConfig, ByteTextConfig

__version__ = _metadata.version("mmcore-text")  # written once, in pyproject.toml

__all__ = [
    "BPETextConfig",
    "BPETextProcessor",
    "BPETokenizer",
    "ByteTextConfig",
    "ByteTokenizer",
    "TextProcessor",
    "TokenEmbedding",
    "TokenTextProcessor",
    "train_bpe",
    "__version__",
]

_LAZY = {
    "ByteTokenizer": "mmcore_text.tokenizer",
    "TextProcessor": "mmcore_text.tokenizer",
    "BPETextProcessor": "mmcore_text.tokenizer",
    "TokenTextProcessor": "mmcore_text.tokenizer",
    "BPETokenizer": "mmcore_text.bpe",
    "train_bpe": "mmcore_text.bpe",
    "TokenEmbedding": "mmcore_text.encoder",
}


def __getattr__(name: str) -> Any:  # PEP 562: import torch-backed modules on first use
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
