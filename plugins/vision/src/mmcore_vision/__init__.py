"""mmcore-vision: image encoders for mmcore.

* ``encoder:vision.patch`` -- a small ViT-style encoder trained from scratch
  (:class:`mmcore_vision.patch.PatchEncoder`).
* ``encoder:vision.timm`` -- any timm model, random init or local safetensors weights
  (:class:`mmcore_vision.timm_encoder.TimmEncoder`).
* ``encoder:vision.palette`` -- an image tokenizer: one palette token per pixel and back
  (:mod:`mmcore_vision.image_tokens`), so an LM head over it generates images
  (:mod:`mmcore_vision.generate`: ``generate_images``, ``write_images``).

The first two read images through :class:`mmcore_vision.processor.ImageProcessor`. Importing this
package (or its ``plugin`` entry point) imports neither torch, timm nor Pillow; the
modules that need them are imported when a model is built.
"""

from importlib import metadata as _metadata

__version__ = _metadata.version("mmcore-vision")  # written once, in pyproject.toml
