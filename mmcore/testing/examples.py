"""Example raw values per modality: what the kit feeds a component's Processor.

A Processor may provide its own with an ``examples()`` method (a list of raw values as
a record would hold them, of different sizes where the modality has a size); the
kit's ``values=`` argument overrides both. These defaults cover the first-party
modalities: text (strings), image (generated Pillow images, or arrays without Pillow)
and audio (generated waveforms with their sample rate).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["example_values", "DEFAULT_MODALITIES"]

DEFAULT_MODALITIES = ("text", "image", "audio")


def example_values(modality: str, processor: Any = None) -> list[Any] | None:
    """Raw values for ``modality``: the processor's ``examples()`` if it has one, else the
    kit's defaults for text, image and audio, else None (the caller must give values)."""
    own = getattr(processor, "examples", None)  # mmcore.Processor.examples(); None: the defaults below
    values = own() if callable(own) else None
    if values is not None:
        return list(values)
    if modality == "text":
        return ["hi", "a longer sentence, with ünïcödé and 数字 in it", "mid-length text"]
    if modality == "image":
        return [_image(40, 32, 0), _image(24, 48, 1), _image(32, 32, 2, gray=True)]
    if modality == "audio":
        rate = int(getattr(processor, "sample_rate", 16000))
        return [_tone(0.25, rate, 440.0), _tone(0.12, rate, 220.0), _tone(0.4, rate, 330.0)]
    return None


def _image(width: int, height: int, seed: int, gray: bool = False) -> Any:
    """A gradient-and-stripes picture: a PIL image when Pillow is installed, else an HxWx3 uint8 array."""
    import numpy as np

    y, x = np.mgrid[0:height, 0:width]
    r = (x * 255 // max(width - 1, 1)).astype(np.uint8)
    g = (y * 255 // max(height - 1, 1)).astype(np.uint8)
    b = (((x // (4 + seed)) + (y // 3)) % 2 * 200).astype(np.uint8)
    arr = np.stack([r, g, b], axis=-1)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is there wherever the vision plugin is
        return arr[..., 0] if gray else arr
    img = Image.fromarray(arr, mode="RGB")
    return img.convert("L") if gray else img


def _tone(seconds: float, rate: int, freq: float) -> dict[str, Any]:
    """``{"array": float32 mono samples, "sample_rate": rate}``: a tone with a little noise, not clipped."""
    import numpy as np

    n = max(1, int(seconds * rate))
    t = np.arange(n, dtype=np.float64) / rate
    rng = np.random.default_rng(int(freq))
    wave = 0.4 * np.sin(2 * math.pi * freq * t) + 0.02 * rng.standard_normal(n)
    return {"array": wave.astype(np.float32), "sample_rate": rate}
