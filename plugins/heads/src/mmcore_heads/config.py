"""Options of the ``lm`` and ``classify`` heads (pydantic only, no torch)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from mmcore import ComponentConfig

__all__ = ["LMHeadConfig", "ClassificationHeadConfig"]

#: Both heads' ``label_smoothing`` option.
_LABEL_SMOOTHING = Field(
    0.0,
    ge=0.0,
    lt=1.0,
    description="Label smoothing of the training cross-entropy (0: none). In eval mode the loss is the plain "
    "cross-entropy, so evaluation losses and perplexities stay comparable across settings.",
)


class LMHeadConfig(ComponentConfig):
    """Options of ``head:lm``: a language-model head over one input's tokens (text, or image tokens)."""

    input: str = Field(
        "text",
        description="The encoder input (its [encoders.<name>] key) whose tokens this head predicts: a text input, "
        "or an image-token input such as vision.palette (text-to-image). Its encoder must own a token vocabulary "
        "(vocab_size, and token_embedding when tie = true).",
    )
    tie: bool = Field(
        True,
        description="Tie the output projection to the input's token embedding (logits = hidden @ "
        "token_embedding.weight.T, as in GPT-2); false: a separate projection 'proj'.",
    )
    bias: bool = Field(False, description="Add a learned bias per vocabulary entry to the logits.")
    weight: float = Field(1.0, ge=0.0, description="This head's weight in the model's total loss.")
    label_smoothing: float = _LABEL_SMOOTHING


class ClassificationHeadConfig(ComponentConfig):
    """Options of ``head:classify``: one label per sample from the pooled hidden states."""

    num_classes: int = Field(..., ge=2, description="Number of classes C; labels are 0 .. C-1.")
    pooling: Literal["last", "mean", "max", "first"] = Field(
        "last",
        description="How the fused sequence becomes one vector: 'last' real token (it has seen the whole "
        "sequence under causal attention), 'mean' of the real tokens, 'max' of each feature over the real "
        "tokens (padding never wins: the strongest evidence anywhere in the sequence), or 'first' real token.",
    )
    hidden: int | None = Field(
        None, gt=0, description="Hidden width of a two-layer MLP classifier (GELU); default: one linear layer."
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the pooled vector (and the MLP's hidden).")
    label: str = Field("label", description="Key of the labels in the batch's targets ((B,) long, 0 .. C-1).")
    class_weights: list[float] | None = Field(
        None,
        description="Per-class weights of the cross-entropy, one per class (for imbalanced data); default: equal.",
    )
    weight: float = Field(1.0, ge=0.0, description="This head's weight in the model's total loss.")
    label_smoothing: float = _LABEL_SMOOTHING

    @model_validator(mode="after")
    def _check_class_weights(self) -> "ClassificationHeadConfig":
        w = self.class_weights
        if w is None:
            return self
        if len(w) != self.num_classes:
            raise ValueError(
                f"class_weights has {len(w)} entr{'y' if len(w) == 1 else 'ies'} but num_classes is "
                f"{self.num_classes}: give one weight per class"
            )
        bad = [x for x in w if not math.isfinite(x) or x < 0]
        if bad:
            raise ValueError(f"class_weights must be finite and >= 0; got {bad}")
        if not any(x > 0 for x in w):
            raise ValueError("class_weights are all zero; at least one class needs a positive weight")
        return self


class RegressionHeadConfig(ComponentConfig):
    """Options of ``head:regress``: one or several numeric outputs per sample from the pooled hidden states."""

    outputs: int = Field(1, ge=1, description="Number of numeric outputs K per sample.")
    field: str = Field(
        "y",
        description="The record field (and batch target) holding the targets: a number when outputs = 1, else a "
        "list of outputs numbers.",
    )
    pooling: Literal["last", "mean", "max", "first"] = Field(
        "mean", description="How the fused sequence becomes one vector (as for head:classify: last, mean, max, first)."
    )
    hidden: int | None = Field(
        None, gt=0, description="Hidden width of a two-layer MLP (GELU); default: one linear layer."
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the pooled vector (and the MLP's hidden).")
    standardize: bool = Field(
        True,
        description="Learn on standardised targets: the regression objective sets each output's mean and standard "
        "deviation from the training set before training; they are stored with the head's weights (model "
        "directory), and predictions are in the targets' own units.",
    )
    weight: float = Field(1.0, ge=0.0, description="This head's weight in the model's total loss.")


class RegressionObjectiveConfig(ComponentConfig):
    """Options of ``objective:regression`` (``[tasks.<name>] options = {...}``)."""

    loss: Literal["mse", "mae"] = Field(
        "mse", description="Training loss on the standardised targets: squared ('mse') or absolute ('mae') error."
    )


class FeaturesEncoderConfig(ComponentConfig):
    """Options of ``encoder:features``: a fixed-length vector of numbers per record (tabular data)."""

    features: int = Field(..., ge=1, description="How many numbers each record's field holds.")
    bias_std: float = Field(
        1.0,
        gt=0,
        description="Initial standard deviation of each feature's bias b_k (its identity). Against a small weight "
        "it keeps a token's normalised value close to linear in x_k at the start, so the model begins near a "
        "linear model (diabetes: validation R² 0.43 -> 0.52 against 0.02 for both; docs/tasks.md).",
    )
    weight_std: float = Field(
        0.1,
        gt=0,
        description="Initial standard deviation of each feature's weight w_k (the direction its value moves the token).",
    )
