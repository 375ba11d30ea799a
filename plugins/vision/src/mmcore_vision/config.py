"""Options of the ``vision.patch`` and ``vision.timm`` encoders and their image processor.

pydantic only (no torch, timm or Pillow), so listing plugins and validating a spec stay
fast. Both encoders share the image options of :class:`ImageOptions`; each adds its own.
Anything that needs timm (the model's own mean/std, its input size, whether the model
name exists) is resolved when the model is built, not here.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mmcore import ComponentConfig

__all__ = [
    "ImageOptions",
    "PatchEncoderConfig",
    "TimmEncoderConfig",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RESERVED_MODEL_ARGS",
    "augmentations",
    "size_hw",
]

#: ImageNet statistics (RGB), the default normalisation.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: ``timm.create_model`` arguments the encoder sets itself (or that would load weights
#: from the network or by pickle); ``model_args`` may not name them.
RESERVED_MODEL_ARGS = {
    "pretrained": "always False: give local weights with `weights`",
    "num_classes": "always 0: the classifier is removed",
    "in_chans": "set `channels` instead",
    "features_only": "use `features` instead",
    "pretrained_cfg": "not configurable here",
    "pretrained_cfg_overlay": "not configurable here",
    "pretrained_strict": "not configurable here",
    "checkpoint_path": "use `weights` (a .safetensors file) instead",
    "cache_dir": "nothing is downloaded",
    "scriptable": "not configurable here",
    "exportable": "not configurable here",
    "no_jit": "not configurable here",
}


def _finite(name: str, values: Any) -> None:
    if values is not None and not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} values must be finite numbers, got {list(values)}")


#: The augmentations in the order the processor applies them.
AUGMENTATIONS = ("crop", "shift", "rotate", "flip")


def augmentations(augment: bool | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``augment`` as the ordered names it switches on (true: crop and flip)."""
    if augment is True:
        return ("crop", "flip")
    if not augment:
        return ()
    unknown = [a for a in augment if a not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown[0]!r}: choose from {list(AUGMENTATIONS)}")
    return tuple(a for a in AUGMENTATIONS if a in augment)


def size_hw(image_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``image_size`` as (height, width)."""
    if isinstance(image_size, int):
        return (image_size, image_size)
    return (int(image_size[0]), int(image_size[1]))


class ImageOptions(ComponentConfig):
    """Image preprocessing options, shared by every vision encoder (flat in its spec section)."""

    image_size: int | tuple[int, int] = Field(
        32,
        description="Size of the image the encoder reads, in pixels: one number for a square, or "
        "[height, width] for another aspect ratio (a strip of characters, a page, a wide frame).",
    )
    resize: Literal["crop", "squash", "pad"] = Field(
        "crop",
        description="How an image becomes image_size x image_size: 'crop' resizes the shorter side to "
        "image_size and cuts the centre square; 'squash' resizes both sides (ignores the aspect ratio); "
        "'pad' resizes the longer side to image_size and pads the rest with the mean colour (0 after "
        "normalisation).",
    )
    interpolation: Literal["bilinear", "bicubic", "nearest", "area"] | None = Field(
        None,
        description="Resampling filter (antialiased when downscaling); 'area' is the box filter: each output "
        "pixel the mean of the input pixels it covers, so shrinking an upscaled scan gives back its pixels "
        "exactly (when upscaling it repeats pixels, like 'nearest'). Default: 'bilinear' for vision.patch, "
        "the model's own (timm pretrained_cfg) for vision.timm.",
    )
    mean: tuple[float, ...] | None = Field(
        None,
        description="Per-channel mean subtracted after scaling pixels to [0, 1]; one value per channel. "
        "Default: ImageNet's (vision.patch), the model's own pretrained_cfg mean (vision.timm).",
    )
    std: tuple[float, ...] | None = Field(
        None,
        description="Per-channel standard deviation the pixels are divided by (each > 0); one value per "
        "channel. Default: as for mean.",
    )
    channels: Literal[1, 3] = Field(
        3, description="3 for RGB, 1 for grayscale models; images are converted to this many channels."
    )
    augment: bool | list[Literal["crop", "flip", "shift", "rotate"]] = Field(
        False,
        description="Random augmentations, applied only while the processor is in training mode (training "
        "data); evaluation and inference stay deterministic. A list names each one to use: 'crop' (random "
        "resized crop, augment_scale), 'flip' (horizontal, wrong for digits and text), 'shift' (random "
        "translation, augment_shift), 'rotate' (small random rotation, augment_rotate). true means "
        "['crop', 'flip'] (natural photos); false or [] none.",
    )
    augment_shift: float = Field(
        0.125,
        ge=0,
        lt=1,
        description="'shift': largest translation, as a fraction of the image's height (vertical) and width "
        "(horizontal), applied after the resize to image_size: whole pixels of the image the encoder reads "
        "(0.125 of an 8x8 image: up to 1 pixel either way); edge pixels fill the uncovered border.",
    )
    augment_rotate: float = Field(
        10.0,
        ge=0,
        le=180,
        description="'rotate': largest rotation in degrees, either way, after the resize to image_size "
        "(bilinear resampling at that size); edge pixels fill.",
    )
    augment_prob: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Share of the training images that are augmented: each image, each time it is read, gets "
        "all of the augmentations augment names with this probability and is left clean otherwise (the "
        "deterministic resize, as at evaluation). 1: every image; lower keeps some of the training data as "
        "the model will see it at evaluation (small images, where any change is large).",
    )
    augment_scale: tuple[float, float] = Field(
        (0.08, 1.0),
        description="Range of the fraction of the image area the random resized crop keeps (0 < low <= high <= 1).",
    )
    max_pixels: int = Field(
        50_000_000,
        ge=1,
        description="Largest width x height accepted, checked from the file header before decoding "
        "(decompression-bomb guard). Pillow's own Image.MAX_IMAGE_PIXELS limit also applies.",
    )

    @field_validator("image_size", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        if v is None:
            return v
        if isinstance(v, list):
            v = tuple(v)
        if isinstance(v, tuple) and len(v) != 2:
            raise ValueError(f"image_size must be one number or [height, width], got {list(v)}")
        for s in v if isinstance(v, tuple) else (v,):
            if isinstance(s, bool) or not isinstance(s, int) or s < 1:
                raise ValueError(f"image_size values must be whole numbers >= 1, got {s!r}")
        if isinstance(v, tuple) and v[0] == v[1]:
            return v[0]  # [s, s] is the square s
        return v

    @field_validator("augment")
    @classmethod
    def _augment(cls, v: bool | list[str]) -> bool | list[str]:
        if isinstance(v, list) and len(set(v)) != len(v):
            raise ValueError(f"augment names each augmentation once, got {v}")
        return v

    @property
    def augmentations(self) -> tuple[str, ...]:
        """The augmentations ``augment`` selects, in the order they are applied."""
        return augmentations(self.augment)

    @field_validator("mean")
    @classmethod
    def _mean_finite(cls, v: tuple[float, ...] | None) -> tuple[float, ...] | None:
        _finite("mean", v)
        return v

    @field_validator("std")
    @classmethod
    def _std_positive(cls, v: tuple[float, ...] | None) -> tuple[float, ...] | None:
        _finite("std", v)
        if v is not None and any(s <= 0 for s in v):
            raise ValueError(f"every std value must be > 0, got {list(v)}")
        return v

    @field_validator("augment_scale")
    @classmethod
    def _scale_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        _finite("augment_scale", v)
        lo, hi = v
        if not (0 < lo <= hi <= 1):
            raise ValueError(f"augment_scale must satisfy 0 < low <= high <= 1, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _per_channel(self) -> "ImageOptions":
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None and len(v) != self.channels:
                raise ValueError(
                    f"{name} has {len(v)} values but channels = {self.channels}: give one value per channel"
                )
        return self


class PatchEncoderConfig(ImageOptions):
    """Options of ``encoder:vision.patch``: a small ViT-style encoder trained from scratch.

    The image is cut into (image_size / patch_size)^2 patches, each a token of width ``dim``.
    """

    image_size: int | tuple[int, int] = Field(
        32,
        description="Side of the square input image, or [height, width]; each divisible by patch_size. "
        "The patch grid and its position embedding follow the shape: (height / p) x (width / p) tokens.",
    )
    patch_size: int = Field(4, ge=1, description="Side of a square patch; each patch becomes one token.")
    stem: Literal["patch", "conv", "cnn"] = Field(
        "conv",
        description="How pixels become patch tokens: 'conv', 3x3 convolutions with GELU at full resolution before "
        "the patches (a small convolutional stem that sees across patch borders: +3 points of held-out caption "
        "accuracy on the digits at the same step budget, docs/tuning.md); 'cnn', a small convolutional network "
        "that also downsamples: stem_layers stages of a 3x3 convolution, ReLU and 2x2 max pooling (so patch_size "
        "must be divisible by 2 ** stem_layers). On 32x32 letters at random positions, angles and colours trained "
        "from scratch, every patch ViT setting and this stem read as 16 tokens stayed at chance; this stem read as "
        "one token (patch_size = the image side) under a mean-pooling head learned them (docs/tuning.md, 'A new "
        "image task', rounds 8-10; plugins/vision/README.md). 'patch', one linear map per patch (plain ViT).",
    )
    stem_layers: int = Field(
        1,
        ge=1,
        description="With stem = 'conv' or 'cnn': how many 3x3 convolutions run before the patches (each followed by "
        "GELU; with 'cnn' each a stage of convolution, ReLU and 2x2 max pooling). More layers see larger strokes "
        "before the image is cut into patches.",
    )
    stem_channels: int | None = Field(
        None,
        ge=1,
        description="The stem's channels. 'conv': every convolution's; unset, max(8, dim // 2). 'cnn': the first "
        "stage's, doubled at each later stage; unset, the last stage has dim and each earlier one half the next "
        "(at least 8): dim 128 over 3 stages is 32, 64, 128.",
    )
    stem_init: Literal["normal", "fan_in"] | None = Field(
        None,
        description="How the stem convolutions start. 'normal': truncated normal of std 0.02, "
        "as every other layer (a 3x3 convolution of one channel then passes on about a twentieth of its input's "
        "scale, less with each layer); 'fan_in': Kaiming normal, std sqrt(2 / fan_in), which keeps the scale "
        "through the stem's nonlinearities (with stem = 'conv', stem_layers = 2 on the main job's digits: caption "
        "96.5 % against 94.4 % at 'normal', mean of four runs and two, docs/tuning.md). Unset: 'fan_in' for "
        "stem = 'cnn', 'normal' for 'conv'.",
    )
    stem_norm: Literal["none", "batch"] | None = Field(
        None,
        description="Normalisation after each stem convolution. 'batch': batch norm (per-channel statistics of "
        "the training batch; running averages in eval mode, saved with the weights; images that are absent "
        "never reach it, and a frozen encoder keeps its statistics), as in a standard CNN; 'none': the "
        "convolution feeds its nonlinearity directly. On 32x32 letters at random positions, angles and colours, "
        "batch norm in a 'cnn' stem took the one-token model from 70.0 / 66.4 % to 80.7 / 69.9 % held-out "
        "after 800 steps (seeds 0 / 1) and four tokens from chance to 62.4 / 67.7 % (docs/tuning.md, 'A new "
        "image task', round 12). Unset: 'batch' for stem = 'cnn', "
        "'none' for 'conv' (the digit recipes' figures were measured without it).",
    )
    dim: int = Field(128, ge=1, description="Token width (the encoder's out_dim); divisible by heads.")
    depth: int = Field(2, ge=0, description="Number of pre-norm transformer blocks.")
    heads: int = Field(4, ge=1, description="Attention heads per block.")
    mlp_ratio: float = Field(4.0, gt=0, description="Hidden width of each block's MLP, as a multiple of dim.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on attention weights and block outputs.")

    @model_validator(mode="after")
    def _check_shapes(self) -> "PatchEncoderConfig":
        for side in dict.fromkeys(size_hw(self.image_size)):
            if side % self.patch_size:
                below = side - side % self.patch_size  # arithmetic: sizes may be huge
                near = [s for s in (below, below + self.patch_size) if s >= self.patch_size]
                raise ValueError(
                    f"image_size ({side}) must be divisible by patch_size ({self.patch_size}); "
                    f"e.g. image_size = {' or '.join(map(str, sorted(near)))}"
                )
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.stem == "patch" and self.stem_norm == "batch":
            raise ValueError("stem_norm = 'batch' normalises the stem's convolutions; stem = 'patch' has none")
        if self.stem == "cnn" and self.patch_size % 2**self.stem_layers:
            fits = max(i for i in range(self.stem_layers + 1) if self.patch_size % 2**i == 0)
            raise ValueError(
                f"stem = 'cnn' halves the image {self.stem_layers} times (stem_layers), so patch_size "
                f"({self.patch_size}) must be divisible by {2**self.stem_layers}; e.g. patch_size = "
                f"{2**self.stem_layers * max(1, self.patch_size // 2**self.stem_layers)}, or "
                + (f"stem_layers = {fits}" if fits else "stem = 'conv'")
            )
        return self

    @property
    def resolved_stem_init(self) -> Literal["normal", "fan_in"]:
        """``stem_init``, or its default for the stem: 'fan_in' for 'cnn', 'normal' otherwise."""
        if self.stem_init is not None:
            return self.stem_init
        return "fan_in" if self.stem == "cnn" else "normal"

    @property
    def resolved_stem_norm(self) -> Literal["none", "batch"]:
        """``stem_norm``, or its default for the stem: 'batch' for 'cnn', 'none' otherwise."""
        if self.stem_norm is not None:
            return self.stem_norm
        return "batch" if self.stem == "cnn" else "none"


class TimmEncoderConfig(ImageOptions):
    """Options of ``encoder:vision.timm``: any timm model, as a feature extractor.

    The model is built with ``timm.create_model(model, pretrained=False, num_classes=0,
    in_chans=channels, **model_args)``; nothing is downloaded. Whether ``model`` exists and
    which input sizes it takes are checked when the model is built.
    """

    model: str = Field(
        min_length=1,
        description="timm model name, e.g. 'resnet18' or 'vit_tiny_patch16_224' (see timm.list_models()).",
    )
    weights: str | None = Field(
        None,
        description="Local .safetensors file with the timm model's state dict (its own key names) to "
        "initialise from; relative paths are relative to the working directory. Only safetensors is "
        "accepted (never pickle). Classifier weights in the file are ignored.",
    )
    image_size: int | None = Field(  # type: ignore[assignment]  # None: the timm model's own size
        None,
        ge=1,
        description="Side of the square input image. Default: model_args.img_size, else the model's "
        "pretrained_cfg input size (e.g. 224).",
    )
    model_args: dict[str, bool | int | float | str] = Field(
        default_factory=dict,
        description="Extra keyword arguments for timm.create_model (JSON scalars only), e.g. "
        "{img_size = 32, patch_size = 8, drop_path_rate = 0.1}.",
    )
    features: Literal["last"] | int = Field(
        "last",
        description="Which features become tokens: 'last' (forward_features: the final feature map or token "
        "sequence) or the index of an intermediate stage/block (negative counts from the end, e.g. -2); "
        "layers after it are removed.",
    )
    drop_prefix_tokens: bool = Field(
        False,
        description="Drop the class/register tokens of ViT-style models (features = 'last'); CNN feature maps "
        "have none.",
    )

    @field_validator("weights")
    @classmethod
    def _safetensors_only(cls, v: str | None) -> str | None:
        if v is not None and not v.lower().endswith(".safetensors"):
            raise ValueError(
                f"weights {v!r}: only .safetensors files are accepted (.pth/.bin/.pt files are pickles, which can "
                "run code when loaded); convert it once with safetensors.torch.save_file(torch.load(path, "
                "weights_only=True), 'model.safetensors')"
            )
        return v

    @field_validator("features", mode="before")
    @classmethod
    def _features(cls, v: Any) -> Any:
        if v != "last" and (isinstance(v, bool) or not isinstance(v, int)):
            raise ValueError(f"features must be 'last' or a stage index (an integer), got {v!r}")
        return v

    @field_validator("model_args", mode="before")
    @classmethod
    def _scalars_only(cls, v: Any) -> Any:
        if isinstance(v, dict):
            for key, value in v.items():
                if not isinstance(value, (bool, int, float, str)):
                    raise ValueError(
                        f"model_args.{key} must be a JSON scalar (string, number or boolean), got "
                        f"{type(value).__name__} {value!r}"
                    )
        return v

    @field_validator("model_args")
    @classmethod
    def _model_args(cls, v: dict[str, object]) -> dict[str, object]:
        for key, value in v.items():
            if not key.isidentifier():
                raise ValueError(f"model_args key {key!r} is not a keyword argument name")
            if key in RESERVED_MODEL_ARGS:
                raise ValueError(f"model_args may not set {key!r}: {RESERVED_MODEL_ARGS[key]}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"model_args.{key} must be finite, got {value!r}")
        return v
