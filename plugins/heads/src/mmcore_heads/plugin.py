"""The ``mmcore`` entry point of mmcore-heads: registers ``head:lm`` and ``head:classify``.

Imports only the options models and mmcore's light modules (pydantic, pluggy): no torch.
The factories are lazy ``"module:callable"`` references, imported when a model is built.
"""

from __future__ import annotations

from mmcore import Component, hookimpl

from .config import ClassificationHeadConfig, LMHeadConfig

__all__ = ["mmcore_register_components"]


@hookimpl
def mmcore_register_components() -> list[Component]:
    return [
        Component(
            kind="head",
            name="lm",
            config=LMHeadConfig,
            factory="mmcore_heads.lm:LMHead",
            description="Language-model head over a text input's tokens (next-token or masked-LM loss), tied by default.",
        ),
        Component(
            kind="head",
            name="classify",
            config=ClassificationHeadConfig,
            factory="mmcore_heads.classify:ClassificationHead",
            description="Pool the hidden states (last, mean or first token) and classify into num_classes labels.",
            # `num_classes` is required: options for mmcore's conformance kit (mmcore.testing)
            extra={"conformance": {"options": {"num_classes": 3}}},
        ),
    ]
