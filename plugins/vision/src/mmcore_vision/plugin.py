"""The ``mmcore`` entry point of mmcore-vision: registers ``encoder:vision.patch``, ``encoder:vision.timm``
and ``encoder:vision.palette`` (images as discrete tokens, which an LM head can predict).

Imports only the options models and mmcore's light modules (pydantic, pluggy): no torch,
timm or Pillow, so ``mmcore plugins`` and ``mmcore spec validate`` stay fast. The
factories are lazy ``"module:callable"`` references, imported when a model is built.
"""

from __future__ import annotations

from mmcore import Component, hookimpl

from .config import PatchEncoderConfig, TimmEncoderConfig
from .image_tokens_config import PaletteTokensConfig

__all__ = ["mmcore_register_components"]


@hookimpl
def mmcore_register_components() -> list[Component]:
    return [
        Component(
            kind="encoder",
            name="vision.patch",
            modality="image",
            config=PatchEncoderConfig,
            factory="mmcore_vision.patch:PatchEncoder",
            processor="mmcore_vision.processor:ImageProcessor",
            description="Small ViT-style image encoder trained from scratch: patch embedding, learned positions, "
            "pre-norm transformer blocks.",
        ),
        Component(
            kind="encoder",
            name="vision.timm",
            modality="image",
            config=TimmEncoderConfig,
            factory="mmcore_vision.timm_encoder:TimmEncoder",
            processor="mmcore_vision.timm_encoder:timm_processor",
            description="Any timm model as an image encoder (random init or local safetensors weights); its "
            "feature map or token sequence becomes the tokens.",
            # `model` is required: a small timm model for mmcore's conformance kit (mmcore.testing)
            extra={
                "conformance": {
                    "options": {
                        "model": "vit_tiny_patch16_224",
                        "model_args": {"img_size": 32, "patch_size": 8, "depth": 2},
                    }
                }
            },
        ),
        Component(
            kind="encoder",
            name="vision.palette",
            modality="image",
            config=PaletteTokensConfig,
            factory="mmcore_vision.image_tokens:ImageTokenEmbedding",
            processor="mmcore_vision.image_tokens:ImageTokenProcessor",
            description="Image tokenizer (Image GPT): one palette token per pixel, and back; an lm head over this "
            "input generates images.",
        ),
    ]
