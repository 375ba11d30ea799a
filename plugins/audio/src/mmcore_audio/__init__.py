"""mmcore-audio: the ``audio.whisper`` encoder (log-mel features and a Whisper-style encoder).

Importing this package (or :mod:`mmcore_audio.plugin`, the entry point) imports neither
torch nor soundfile; the names below that need them are loaded on first access.

Public names:

* :class:`AudioProcessorConfig`, :class:`WhisperAudioConfig` -- options
  (:mod:`mmcore_audio.config`).
* :class:`AudioProcessor`, :class:`AudioClippingWarning` -- :mod:`mmcore_audio.processor`.
* :class:`WhisperEncoder` -- the encoder module (:mod:`mmcore_audio.encoder`).
* :func:`resample`, :func:`mel_power`, :func:`log_mel`, :func:`mel_filterbank`,
  :func:`spec_augment` -- signal processing in torch (:mod:`mmcore_audio.dsp`).
"""

from __future__ import annotations

import importlib
from importlib import metadata as _metadata
from typing import Any

from .config import AudioProcessorConfig, WhisperAudioConfig

__version__ = _metadata.version("mmcore-audio")  # written once, in pyproject.toml

__all__ = [
    "AudioClippingWarning",
    "AudioProcessor",
    "AudioProcessorConfig",
    "WhisperAudioConfig",
    "WhisperEncoder",
    "log_mel",
    "mel_filterbank",
    "mel_power",
    "resample",
    "spec_augment",
    "__version__",
]

_LAZY = {
    "AudioProcessor": "mmcore_audio.processor",
    "AudioClippingWarning": "mmcore_audio.processor",
    "WhisperEncoder": "mmcore_audio.encoder",
    "resample": "mmcore_audio.dsp",
    "mel_power": "mmcore_audio.dsp",
    "log_mel": "mmcore_audio.dsp",
    "mel_filterbank": "mmcore_audio.dsp",
    "spec_augment": "mmcore_audio.dsp",
}


def __getattr__(name: str) -> Any:  # PEP 562: import torch-backed modules on first use
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
