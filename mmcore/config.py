"""Configuration models owned by the core.

These models import pydantic only (never torch), so validating a spec stays fast.
Component configuration models subclass :class:`ComponentConfig`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["ComponentConfig", "BackboneConfig"]


class ComponentConfig(BaseModel):
    """Base class of every component's options model.

    Unknown keys are errors (``extra="forbid"``): a typo in a spec is reported, never
    silently ignored. Subclasses add typed fields with defaults and a docstring per
    field (``Field(description=...)``); the descriptions appear in ``mmcore spec schema``
    and in docs/spec.md.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


class BackboneConfig(BaseModel):
    """The GPT backbone: a pre-norm decoder-only transformer owned by the core.

    Defaults describe a small GPT-2-like model that trains on a CPU.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- size -------------------------------------------------------------------
    width: int = Field(256, gt=0, description="Model width D (embedding size); divisible by heads.")
    depth: int = Field(4, gt=0, description="Number of transformer blocks.")
    heads: int = Field(4, gt=0, description="Attention heads per block.")
    context_length: int = Field(
        256, gt=0, description="Longest fused sequence (all modalities plus text) the model accepts."
    )
    # --- block options ----------------------------------------------------------
    norm: Literal["layernorm", "rmsnorm"] = Field("layernorm", description="Normalisation layer.")
    norm_eps: float = Field(1e-5, gt=0, description="Epsilon of the normalisation layers.")
    positions: Literal["learned", "rope", "none"] = Field(
        "learned", description="Learned absolute position embeddings (GPT-2), rotary (RoPE) or none."
    )
    rope_base: float = Field(10000.0, gt=0, description="Base frequency of rotary embeddings.")
    mlp: Literal["gelu", "gelu_tanh", "swiglu"] = Field(
        "gelu",
        description="Feed-forward type: GELU (exact), GELU with tanh approximation (GPT-2's 'gelu_new'), "
        "or SwiGLU (gated, as in LLaMA).",
    )
    mlp_ratio: float = Field(
        4.0, gt=0, description="Hidden width of the feed-forward as a multiple of width (SwiGLU: use ~8/3)."
    )
    bias: bool = Field(True, description="Bias in linear and normalisation layers (GPT-2: true).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on attention output, MLP and embeddings.")
    attention: Literal["causal", "prefix", "bidirectional"] = Field(
        "causal",
        description="Default attention mode: causal (next-token LM), prefix (bidirectional over the "
        "conditioning prefix, causal after it) or bidirectional (masked LM). Objectives may override it.",
    )
    init_std: float = Field(0.02, gt=0, description="Standard deviation of the normal weight initialisation.")

    @model_validator(mode="after")
    def _check_heads(self) -> "BackboneConfig":
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be divisible by heads ({self.heads})")
        if self.positions == "rope" and (self.width // self.heads) % 2:
            raise ValueError(f"rotary positions need an even head size; width/heads = {self.width // self.heads}")
        return self

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.mlp_ratio * self.width)
