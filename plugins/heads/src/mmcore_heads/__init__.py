"""mmcore-heads: the ``lm``, ``classify`` and ``regress`` heads, the ``regression`` objective and
the ``features`` encoder (a vector of numbers per record).

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

from .config import (
    ClassificationHeadConfig,
    FeaturesEncoderConfig,
    LMHeadConfig,
    RegressionHeadConfig,
    RegressionObjectiveConfig,
)

__version__ = _metadata.version("mmcore-heads")  # written once, in pyproject.toml

__all__ = [
    "LMHeadConfig",
    "ClassificationHeadConfig",
    "RegressionHeadConfig",
    "RegressionObjectiveConfig",
    "FeaturesEncoderConfig",
    "LMHead",
    "ClassificationHead",
    "RegressionHead",
    "RegressionObjective",
    "FeaturesEncoder",
    "FeaturesProcessor",
    "__version__",
]

_LAZY = {
    "LMHead": "mmcore_heads.lm",
    "ClassificationHead": "mmcore_heads.classify",
    "RegressionHead": "mmcore_heads.regress",
    "RegressionObjective": "mmcore_heads.regress",
    "FeaturesEncoder": "mmcore_heads.features",
    "FeaturesProcessor": "mmcore_heads.features",
}


def __getattr__(name: str) -> Any:  # PEP 562: import torch-backed modules on first use
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
