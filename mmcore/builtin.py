"""The core's own components, registered through the same hook as any plugin's.

Only options models live here (pydantic, no torch); the modules they build are in
:mod:`mmcore.fusion` and :mod:`mmcore.projectors` and are imported when built.
"""

from __future__ import annotations

from pydantic import Field

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


class LinearProjectorConfig(ComponentConfig):
    """Options of the ``linear`` projector (one linear layer)."""

    bias: bool = Field(True, description="Use a bias term.")


class MLPProjectorConfig(ComponentConfig):
    """Options of the ``mlp`` projector (linear, GELU, linear; as in LLaVA-1.5)."""

    hidden: int | None = Field(None, gt=0, description="Hidden width; default: the output width.")
    bias: bool = Field(True, description="Use bias terms.")


@hookimpl
def mmcore_register_components() -> list[Component]:
    return [
        Component(
            kind="fusion",
            name="early",
            config=EarlyFusionConfig,
            factory="mmcore.fusion:EarlyFusion.from_config",
            description="Concatenate modalities in order with modality and boundary embeddings (default).",
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
