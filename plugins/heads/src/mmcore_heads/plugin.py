"""The ``mmcore`` entry point of mmcore-heads: registers ``head:lm``, ``head:classify``,
``head:regress``, ``objective:regression`` and ``encoder:features`` (numbers of tabular data).

Imports only the options models and mmcore's light modules (pydantic, pluggy): no torch.
The factories are lazy ``"module:callable"`` references, imported when a model is built.
"""

from __future__ import annotations

from mmcore import Component, hookimpl

from .config import (
    ClassificationHeadConfig,
    FeaturesEncoderConfig,
    LMHeadConfig,
    RegressionHeadConfig,
    RegressionObjectiveConfig,
)

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
            description="Pool the hidden states (last, mean, max or first token) and classify into num_classes labels.",
            # `num_classes` is required: options for mmcore's conformance kit (mmcore.testing)
            extra={"conformance": {"options": {"num_classes": 3}}},
        ),
        Component(
            kind="head",
            name="regress",
            config=RegressionHeadConfig,
            factory="mmcore_heads.regress:RegressionHead",
            description="Pool the hidden states and predict one or several numbers, on targets standardised "
            "with the training set's mean and deviation (stored with the model).",
        ),
        Component(
            kind="objective",
            name="regression",
            config=RegressionObjectiveConfig,
            factory="mmcore_heads.regress:RegressionObjective",
            heads=("regress",),
            description="Numeric targets (a number or a list) for head:regress; MSE, MAE and R².",
            # what mmcore's conformance kit trains it on: numbers in, a number out
            extra={
                "conformance": {
                    "spec": {
                        "encoders": {"x": {"component": "features", "features": 3}},
                        "heads": {"y": {"component": "regress"}},
                    },
                    "records": [{"x": [i, 1.0 - i, 0.5], "y": 2.0 * i + 1} for i in range(6)],
                }
            },
        ),
        Component(
            kind="encoder",
            name="features",
            config=FeaturesEncoderConfig,
            factory="mmcore_heads.features:FeaturesEncoder",
            processor="mmcore_heads.features:FeaturesProcessor",
            modality="features",
            description="A fixed-length list of numbers per record (tabular data), one token per feature.",
            extra={"conformance": {"options": {"features": 3}}},
        ),
    ]
