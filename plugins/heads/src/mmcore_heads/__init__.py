"""mmcore-heads: the ``lm`` and ``classify`` heads.

Importing this package (or :mod:`mmcore_heads.plugin`, the entry point) does not import
torch; the torch-backed names below are loaded on first access.

Public names:

* :class:`LMHeadConfig`, :class:`ClassificationHeadConfig` -- options (:mod:`mmcore_heads.config`).
* :class:`LMHead` -- :mod:`mmcore_heads.lm`.
* :class:`ClassificationHead` -- :mod:`mmcore_heads.classify`.
"""

from __future__ import annotations

import importlib
from importlib import metadata as _metadata
from typing import Any

from .config import ClassificationHeadConfig, LMHeadConfig

__version__ = _metadata.version("mmcore-heads")  # written once, in pyproject.toml

__all__ = ["LMHeadConfig", "ClassificationHeadConfig", "LMHead", "ClassificationHead", "__version__"]

_LAZY = {"LMHead": "mmcore_heads.lm", "ClassificationHead": "mmcore_heads.classify"}


def __getattr__(name: str) -> Any:  # PEP 562: import torch-backed modules on first use
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
