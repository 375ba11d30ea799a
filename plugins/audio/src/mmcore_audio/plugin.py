"""The ``mmcore`` entry point of mmcore-audio: registers ``encoder:audio.whisper``.

Imports only the options model and mmcore's light modules (pydantic, pluggy): no torch,
no soundfile, so ``mmcore plugins`` and ``mmcore spec validate`` stay fast. The factories
are lazy ``"module:callable"`` references, imported when a model is built.
"""

from __future__ import annotations

from mmcore import Component, hookimpl

from .config import WhisperAudioConfig

__all__ = ["mmcore_register_components"]


@hookimpl
def mmcore_register_components() -> list[Component]:
    return [
        Component(
            kind="encoder",
            name="audio.whisper",
            modality="audio",
            config=WhisperAudioConfig,
            factory="mmcore_audio.encoder:WhisperEncoder",
            processor="mmcore_audio.processor:AudioProcessor",
            description="Audio files or arrays -> 16 kHz log-mel features -> Whisper-style conv + transformer "
            "encoder (ceil(frames / 2) tokens).",
        )
    ]
