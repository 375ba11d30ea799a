"""The core's own components, registered through the same hook as any plugin's.

Only options models live here (pydantic, no torch); the modules they build are in
:mod:`mmcore.fusion`, :mod:`mmcore.fusion_xattn`, :mod:`mmcore.resampler` and
:mod:`mmcore.projectors`, and the objectives in :mod:`mmcore.objectives`; they are imported
when built.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from .config import ComponentConfig
from .hookspecs import hookimpl
from .registry import Component


class EarlyFusionConfig(ComponentConfig):
    """Options of the ``early`` fusion."""

    order: list[str] | None = Field(
        None,
        description="Encoder inputs in sequence order. Default: every non-text input in spec order, then the "
        "text (so the text is conditioned on the rest).",
    )
    modality_embeddings: bool = Field(
        True, description="Add a learned embedding per input to its tokens (zero-initialised)."
    )
    boundary_tokens: bool = Field(
        True, description="Put learned begin/end embeddings around each non-text modality's tokens."
    )


class CrossAttentionFusionConfig(ComponentConfig):
    """Options of the ``cross_attention`` fusion (Flamingo-style gated cross-attention)."""

    every: int = Field(
        1,
        gt=0,
        description="Insert a gated cross-attention layer after every `every`-th backbone block (1: after each "
        "block; 2: after the 2nd, 4th, ...). At most the backbone depth.",
    )
    heads: int | None = Field(
        None, gt=0, description="Attention heads of the inserted cross-attention; default: the backbone's."
    )
    mlp_ratio: float | None = Field(
        None,
        gt=0,
        description="Hidden width of each inserted feed-forward as a multiple of width; default: the backbone's.",
    )
    modality_embeddings: bool = Field(
        True,
        description="With several non-text inputs, add a learned embedding per input to its memory tokens.",
    )


class ResamplerFusionConfig(EarlyFusionConfig):
    """Options of the ``resampler`` fusion (Perceiver resampler, then early fusion)."""

    num_latents: int = Field(
        32, gt=0, description="Learned latent queries per non-text input: the tokens it contributes per sample."
    )
    latents: dict[str, int] = Field(
        default_factory=dict,
        description="Per-input number of latents overriding num_latents, e.g. {image = 64}; keys are non-text "
        "encoder inputs.",
    )
    depth: int = Field(2, gt=0, description="Resampler layers (cross-attention + feed-forward) per input.")
    heads: int | None = Field(
        None, gt=0, description="Attention heads of the resampler's cross-attention; default: the backbone's."
    )
    mlp_ratio: float | None = Field(
        None,
        gt=0,
        description="Hidden width of the resampler's feed-forward as a multiple of width; default: the backbone's.",
    )

    @field_validator("latents")
    @classmethod
    def _positive_latents(cls, v: dict[str, int]) -> dict[str, int]:
        bad = {k: n for k, n in v.items() if n <= 0}
        if bad:
            raise ValueError(f"latent counts must be positive; got {bad}")
        return v


class LinearProjectorConfig(ComponentConfig):
    """Options of the ``linear`` projector (one linear layer)."""

    bias: bool = Field(True, description="Use a bias term.")


class MLPProjectorConfig(ComponentConfig):
    """Options of the ``mlp`` projector (linear, GELU, linear; as in LLaVA-1.5)."""

    hidden: int | None = Field(None, gt=0, description="Hidden width; default: the output width.")
    bias: bool = Field(True, description="Use bias terms.")


class NoOptions(ComponentConfig):
    """The core objectives take no ``options``: they read the task's own keys (``label``,
    ``labels``, ``mlm_probability``, ``text_input``)."""


#: The core's objectives: (name, factory, heads they train, attention, reads text, special tokens, description)
_OBJECTIVES = (
    ("lm", "LMObjective", ("lm",), "causal", True, (), "Next-token prediction (causal attention); perplexity."),
    (
        "mlm",
        "MLMObjective",
        ("lm",),
        "bidirectional",
        True,
        ("<mask>",),
        "Masked-token prediction, 80/10/10 (bidirectional attention); perplexity and masked accuracy.",
    ),
    (
        "prefix_lm",
        "PrefixLMObjective",
        ("lm",),
        "prefix",
        True,
        ("<sep>",),
        "A target given a conditioning prefix (captioning, speech-to-text, translation); perplexity.",
    ),
    (
        "classification",
        "ClassificationObjective",
        ("classify",),
        None,
        False,
        (),
        "One integer label per record (task.label); cross-entropy; accuracy and macro-F1.",
    ),
)


#: What mmcore's conformance kit trains each core objective on (mmcore.testing.objective_kit):
#: the first-party text encoder and heads, as a user's spec would name them.
_TEXT = {"text": {"component": "text.bytes", "max_length": 32}}
_LM_KIT = {
    "spec": {"encoders": _TEXT, "heads": {"lm": {"component": "lm"}}},
    "records": [{"text": t} for t in ("hello world", "a b c", "multimodal", "the cat sat", "ok")],
}
_CONFORMANCE = {
    "lm": _LM_KIT,
    "mlm": _LM_KIT,
    "prefix_lm": {
        "spec": _LM_KIT["spec"],
        "records": [{"text": p, "target": t} for p, t in (("one", "1"), ("two", "2"), ("three", "3"), ("four", "4"))],
    },
    "classification": {
        "spec": {"encoders": _TEXT, "heads": {"c": {"component": "classify", "num_classes": 3}}},
        "records": [{"text": t, "label": y} for t, y in (("red", "r"), ("green", "g"), ("blue", "b"), ("rose", "r"))],
        "task": {"labels": ["r", "g", "b"]},
    },
}


@hookimpl
def mmcore_register_components() -> list[Component]:
    return [
        *(
            Component(
                kind="objective",
                name=name,
                config=NoOptions,
                factory=f"mmcore.objectives:{factory}",
                heads=heads,
                attention=attention,
                text=text,
                special_tokens=tokens,
                description=description,
                extra={"conformance": _CONFORMANCE[name]},
            )
            for name, factory, heads, attention, text, tokens, description in _OBJECTIVES
        ),
        Component(
            kind="fusion",
            name="early",
            config=EarlyFusionConfig,
            factory="mmcore.fusion:EarlyFusion.from_config",
            description="Concatenate modalities in order with modality and boundary embeddings (default).",
        ),
        Component(
            kind="fusion",
            name="cross_attention",
            config=CrossAttentionFusionConfig,
            factory="mmcore.fusion_xattn:CrossAttentionFusion.from_config",
            description="Text-only sequence; other inputs are memory for gated cross-attention layers "
            "inserted in the backbone (Flamingo).",
        ),
        Component(
            kind="fusion",
            name="resampler",
            config=ResamplerFusionConfig,
            factory="mmcore.resampler:ResamplerFusion.from_config",
            description="Learned latents resample each non-text input to a fixed number of tokens "
            "(Perceiver), then early fusion.",
        ),
        Component(
            kind="projector",
            name="linear",
            config=LinearProjectorConfig,
            factory="mmcore.projectors:LinearProjector",
            description="One linear layer from the encoder's width to the backbone's.",
        ),
        Component(
            kind="projector",
            name="mlp",
            config=MLPProjectorConfig,
            factory="mmcore.projectors:MLPProjector",
            description="Linear, GELU, linear from the encoder's width to the backbone's.",
        ),
    ]
