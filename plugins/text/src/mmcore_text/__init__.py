"""mmcore-text: the ``text.bytes`` encoder (UTF-8 byte tokenizer and token embedding).

Importing this package (or :mod:`mmcore_text.plugin`, the entry point) does not import
torch; the torch-backed names below are loaded on first access.

Public names:

* :class:`ByteTextConfig` -- options of ``encoder:text.bytes`` (:mod:`mmcore_text.config`).
* :class:`ByteTokenizer`, :class:`TextProcessor` -- :mod:`mmcore_text.tokenizer`.
* :class:`TokenEmbedding` -- the encoder module (:mod:`mmcore_text.encoder`).
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import ByteTextConfig

__version__ = "0.1.0"

__all__ = ["ByteTextConfig", "ByteTokenizer", "TextProcessor", "TokenEmbedding", "__version__"]

_LAZY = {
    "ByteTokenizer": "mmcore_text.tokenizer",
    "TextProcessor": "mmcore_text.tokenizer",
    "TokenEmbedding": "mmcore_text.encoder",
}


def __getattr__(name: str) -> Any:  # PEP 562: import torch-backed modules on first use
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
