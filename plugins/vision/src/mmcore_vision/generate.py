"""Text to image with ``encoder:vision.palette``: prompts in, PIL images out, PNG files written.

The core generates and decodes through the processor's declared capabilities
(:func:`mmcore.generate_outputs`, :func:`mmcore.write_outputs`); this module adds what is
particular to images: string prompts fill the model's text input, the image input is the
model's only image-token input with an LM head, and Pillow writes the files.

    from mmcore_vision.generate import generate_images, write_images
    images = generate_images(model, ["draw a seven"], mmcore.GenerationConfig(do_sample=True, seed=0))
    write_images(images, "seven.png", scale=8)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmcore import GenerationConfig, MMCoreError, generate_outputs, write_outputs

__all__ = ["image_inputs", "generate_images", "write_images", "save_image", "image_suffixes"]


def image_inputs(model: Any) -> list[str]:
    """Inputs whose tokens an LM head of ``model`` predicts and whose processor writes images
    (modality ``image`` and ``output_suffixes``, like ``vision.palette``)."""
    predicted = {h.input for h in model.heads.values() if h.input is not None}
    return [
        name
        for name, proc in model.processors.items()
        if name in predicted and proc.modality == "image" and proc.output_suffixes
    ]


def generate_images(
    model: Any,
    prompts: Sequence[str | Mapping[str, Any]],
    config: GenerationConfig | None = None,
    *,
    image_input: str | None = None,
    text_input: str | None = None,
    batch_size: int = 16,
) -> list[Any]:
    """Images for prompts, from a model whose LM head predicts image tokens (``vision.palette``).

    Args:
        prompts: strings (the text of each prompt: ``"draw a seven"``) or records with any
            of the model's inputs. Under the image input a record may hold
            ``{"prompt": [pixel ids]}``, the beginning of the image to continue; by default
            the image starts empty.
        config: the options of :func:`mmcore.generate` (greedy, sampling with temperature /
            top-k / top-p and ``seed``, beam search, ``num_return_sequences``,
            ``repetition_penalty``). ``max_new_tokens`` is replaced by the number of pixels
            each image lacks; end tokens, stop tokens and strings and ``min_new_tokens`` do not
            apply to images (MMCoreError).
        image_input: the image-token input to generate (default: the model's only one).
        text_input: the input a string prompt fills (default: the model's only text input).

    Returns:
        PIL images, ``num_return_sequences`` consecutive ones per prompt. Sampling draws
        only from the image's palette ids (the processor's ``output_ids``).
    """
    candidates = image_inputs(model)
    if image_input is None:
        if len(candidates) != 1:
            raise MMCoreError(
                "the model has no LM head over an image-token input (such as vision.palette); heads: "
                f"{list(model.heads)}"
                if not candidates
                else f"say which image input to generate (image_input=...): one of {candidates}"
            )
        image_input = candidates[0]
    if image_input not in candidates:
        raise MMCoreError(
            f"{image_input!r} is not an image-token input with an LM head; image-token inputs with one: {candidates}"
        )
    texts = [k for k, e in model.encoders.items() if e.modality == "text"]
    records: list[dict[str, Any]] = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            name = text_input or (texts[0] if len(texts) == 1 else None)
            if name is None or name not in model.encoders:
                raise MMCoreError(
                    f"prompt {i} is a string but the model has {'no' if not texts else 'several'} text inputs "
                    f"({texts}); give text_input=... or records"
                )
            records.append({name: p})
        elif isinstance(p, Mapping):
            records.append(dict(p))
        else:
            raise MMCoreError(f"prompt {i}: expected a string or a record (dict), got {type(p).__name__}")
    return generate_outputs(model, records, config, output_input=image_input, batch_size=batch_size)


def image_suffixes() -> tuple[str, ...]:
    """The file suffixes Pillow can write, ``.png`` first (then ``.bmp``, ``.jpg``, ...)."""
    from PIL import Image

    exts = sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE)
    return (".png", *(e for e in exts if e != ".png"))


def save_image(image: Any, path: Path, *, scale: int = 1) -> None:
    """Write a PIL image to ``path`` in the format its suffix names; ``scale`` > 1 enlarges it
    that many times with nearest-neighbour sampling (pixels stay sharp)."""
    from PIL import Image

    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise MMCoreError(f"{path}: cannot tell the image format from the suffix {Path(path).suffix!r}; use .png")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise MMCoreError(f"scale must be an integer >= 1, got {scale!r}")
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    image.save(path, format=fmt)


def write_images(images: Sequence[Any], out: str | Path, *, scale: int = 1) -> list[Path]:
    """Write PIL images to ``out`` (one image) or ``<stem>-1<suffix>`` ... ``<stem>-N<suffix>``
    (several); the format follows the suffix (``.png``). ``scale`` > 1 enlarges each image
    (:func:`save_image`). Each file is written atomically (:func:`mmcore.write_outputs`).
    Returns the paths written."""
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise MMCoreError(f"scale must be an integer >= 1, got {scale!r}")
    return write_outputs(
        images, out, lambda img, path: save_image(img, path, scale=scale), suffixes=image_suffixes(), what="image"
    )
