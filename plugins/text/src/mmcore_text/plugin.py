"""The ``mmcore`` entry point of mmcore-text: registers ``encoder:text.bytes``.

Imports only the options model and mmcore's light modules (pydantic, pluggy): no torch,
so ``mmcore plugins`` and ``mmcore spec validate`` stay fast. The factories are lazy
``"module:callable"`` references, imported when a model is built.
"""

from __future__ import annotations

from mmcore.hookspecs import hookimpl
from mmcore.registry import Component

from .config import ByteTextConfig

__all__ = ["mmcore_register_components"]


@hookimpl
def mmcore_register_components() -> list[Component]:
    return [
        Component(
            kind="encoder",
            name="text.bytes",
            modality="text",
            config=ByteTextConfig,
            factory="mmcore_text.encoder:TokenEmbedding",
            processor="mmcore_text.tokenizer:TextProcessor",
            description="UTF-8 byte tokenizer (256 bytes + specials, vocab 264) and a learned token embedding.",
        )
    ]
