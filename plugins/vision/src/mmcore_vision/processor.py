"""The :class:`ImageProcessor` shared by the vision encoders: any image -> a normalised (C, S, S) tensor.

Pipeline of one sample::

    value (path | bytes | PIL image | numpy HxW/HxWxC | torch CxHxW)
      -> header checked (size <= max_pixels) BEFORE decoding, then decoded
      -> EXIF orientation applied, colour mode converted, alpha composited over white
      -> float (channels, H, W) in [0, 1]
      -> training and 'crop' augmentation: random resized crop to (H, W)
         otherwise: resize ('crop' | 'squash' | 'pad') to (H, W), deterministic
      -> training only, each if ``augment`` names it: random shift, rotation, horizontal flip
         (at (H, W), after the resize: a shift moves whole pixels of the image the encoder reads);
         with ``augment_prob`` < 1 an image is augmented with that probability, else left clean
      -> (x - mean) / std  ->  {"pixels": (C, H, W) float32}

(H, W) is ``image_size`` (one number: a square). A batch: ``collate`` -> ``{"pixels": (B, C, H, W) float32, "present": (B,) bool}``. A
record without an image (a ``None`` sample) gets zero pixels and ``present`` False; the
encoder turns ``present`` into its token mask (its token count is fixed, so there is no
per-token mask to pad), giving that record an all-False mask row.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import IO, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from mmcore import InputError, ModelDirError, Processor, open_regular, regular_file_problem

from .config import IMAGENET_MEAN, IMAGENET_STD, ImageOptions, augmentations, size_hw

__all__ = ["ImageProcessor", "PROCESSOR_FILE", "default_mean_std"]

PROCESSOR_FILE = "image_processor.json"
PROCESSOR_KIND = "mmcore_vision.image"
FORMAT_VERSION = 1
#: ITU-R 601-2 luma weights (what Pillow's convert("L") uses).
LUMA = (0.299, 0.587, 0.114)
#: float pixel values this far outside [0, 1] are rounding noise, clamped; further is an error.
_FLOAT_TOLERANCE = 1e-3

# File signatures, to tell "corrupt PNG" from "not an image at all".
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
#: The raster formats decoded (Pillow format names), passed to ``Image.open(formats=...)``:
#: every other format Pillow knows is refused unread, among them EPS/PostScript and PDF
#: (whose plugins start the external Ghostscript interpreter) and the rarer raster formats.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
_EXTENSIONS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".gif": "GIF",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".webp": "WEBP",
}


def _at(where: str) -> str:
    return f"{where}: " if where else ""


def _sniff(prefix: bytes) -> str | None:
    for sig, fmt in _SIGNATURES:
        if prefix.startswith(sig):
            return fmt
    if prefix[:4] == b"RIFF" and prefix[8:12] == b"WEBP":
        return "WEBP"
    return None


def default_mean_std(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet mean/std for ``channels`` (1: their luma-weighted average)."""
    return to_channels(IMAGENET_MEAN, channels), to_channels(IMAGENET_STD, channels)


def to_channels(values: Sequence[float], channels: int) -> tuple[float, ...]:
    """Per-channel statistics for ``channels``: RGB stats -> one luma-weighted value, one -> repeated."""
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        return values
    if channels == 1 and len(values) == 3:
        return (sum(w * v for w, v in zip(LUMA, values, strict=True)),)
    if len(values) == 1:
        return values * channels
    raise ValueError(f"cannot turn {len(values)} per-channel values into {channels}")


def example_images(height: int, width: int) -> list[Any]:
    """Made-up pictures (gradients and stripes): a ``height`` x ``width`` RGB PIL image, a wide
    RGB one and a grey tall array -- what :meth:`ImageProcessor.examples` gives export and the kit."""
    out: list[Any] = []
    for i, (h, w) in enumerate(((height, width), (24, 48), (40, 24))):
        y, x = np.mgrid[0:h, 0:w]
        r = (x * 255 // max(w - 1, 1)).astype(np.uint8)
        g = (y * 255 // max(h - 1, 1)).astype(np.uint8)
        b = (((x // (4 + i)) + (y // 3)) % 2 * 200).astype(np.uint8)
        arr = np.stack([r, g, b], axis=-1)
        out.append(arr[..., 0] if i == 2 else Image.fromarray(arr, mode="RGB"))
    return out


class ImageProcessor(Processor):
    """Processor of the vision encoders: an image -> ``{"pixels": (C, S, S) float32}``.

    Built as ``ImageProcessor(config)`` from the encoder's options (any
    :class:`~mmcore_vision.config.ImageOptions`, or a dict of them); keyword arguments
    ``image_size``, ``mean``, ``std`` and ``interpolation`` fill in what the options leave
    unset (the timm encoder passes the model's own values). Holds plain Python attributes
    only: it pickles and has no ``nn.Module`` state.

    ``__call__(value, *, where="")`` accepts

    * a path (``str`` or ``os.PathLike``) to a regular file in one of :data:`FORMATS` (PNG,
      JPEG, GIF, BMP, TIFF, WebP; the format is read from the content, not the extension;
      any other format, EPS/PostScript and PDF included, is refused before it is parsed,
      so no external interpreter ever starts; a folder, FIFO or device is refused unread),
    * ``bytes`` of such a file,
    * a dict ``{"bytes": ...}`` or ``{"path": ...}`` (as Hugging Face datasets write images;
      ``bytes`` is the content, never a path),
    * a ``PIL.Image.Image``,
    * a numpy array, HxW or HxWxC (C = 1, 2 gray+alpha, 3 or 4 RGBA), uint8 (0-255),
      uint16 (0-65535), bool, or float in [0, 1],
    * a torch tensor, CxHxW or HxW, with the same dtypes.

    Colour modes are converted (palette, 1-bit, gray, CMYK, YCbCr, 16-bit gray scaled by
    1/65535; alpha is composited over white) to ``channels`` (RGB -> gray with ITU-R
    601-2 luma weights). EXIF orientation is applied. The image size is checked against
    ``max_pixels`` from the header, before any pixel is decoded; Pillow's own
    ``Image.MAX_IMAGE_PIXELS`` guard is reported the same way. Every failure (missing,
    empty, truncated or corrupt file, not an image, NaN/Inf or out-of-range floats, a
    bad shape or dtype) raises :class:`mmcore.InputError` naming ``where``, the file and
    the reason.

    Random augmentation (``augment``) happens only while ``training`` is True and draws
    from torch's global generator (seeded per DataLoader worker); otherwise the output
    is a deterministic function of the input.
    """

    modality = "image"

    def __init__(
        self,
        config: ImageOptions | Mapping[str, Any] | None = None,
        *,
        image_size: int | tuple[int, int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        interpolation: str | None = None,
    ):
        if not isinstance(config, ImageOptions):
            config = ImageOptions.model_validate(dict(config or {}))
        size = config.image_size if config.image_size is not None else image_size
        if size is None:
            raise ValueError("ImageProcessor needs an image_size (the options leave it unset)")
        default_mean, default_std = default_mean_std(config.channels)
        self.training: bool = False
        self.height, self.width = size_hw(size)
        self.image_size: int | list[int] = self.height if self.height == self.width else [self.height, self.width]
        self.channels: int = int(config.channels)
        self.mean: tuple[float, ...] = to_channels(
            config.mean if config.mean is not None else mean if mean is not None else default_mean, self.channels
        )
        self.std: tuple[float, ...] = to_channels(
            config.std if config.std is not None else std if std is not None else default_std, self.channels
        )
        self.resize: str = config.resize
        self.interpolation: str = config.interpolation or interpolation or "bilinear"
        self.augment: bool | list[str] = config.augment if isinstance(config.augment, bool) else list(config.augment)
        self.augment_shift: float = float(config.augment_shift)
        self.augment_rotate: float = float(config.augment_rotate)
        self.augment_prob: float = float(config.augment_prob)
        self.augment_scale: tuple[float, float] = (float(config.augment_scale[0]), float(config.augment_scale[1]))
        self.max_pixels: int = int(config.max_pixels)
        self._check()

    def examples(self) -> list[Any]:
        """Made-up images (:func:`example_images`), the first of this processor's size."""
        return example_images(self.height, self.width)

    def _check(self) -> None:
        if self.interpolation not in ("bilinear", "bicubic", "nearest", "area"):
            raise ValueError(f"interpolation must be bilinear, bicubic, nearest or area, got {self.interpolation!r}")
        augmentations(self.augment)  # raises on a bad value
        if self.resize not in ("crop", "squash", "pad"):
            raise ValueError(f"resize must be crop, squash or pad, got {self.resize!r}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if len(v) != self.channels or not all(math.isfinite(x) for x in v):
                raise ValueError(f"{name} must be {self.channels} finite values, got {list(v)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be > 0, got {list(self.std)}")
        if not 0.0 <= self.augment_prob <= 1.0:
            raise ValueError(f"augment_prob must lie in [0, 1], got {self.augment_prob}")

    @property
    def options(self) -> dict[str, Any]:
        """The resolved preprocessing (what :meth:`save` writes)."""
        return {
            "image_size": self.image_size,
            "channels": self.channels,
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": self.resize,
            "interpolation": self.interpolation,
            "augment": self.augment,
            "augment_scale": list(self.augment_scale),
            "augment_shift": self.augment_shift,
            "augment_rotate": self.augment_rotate,
            "augment_prob": self.augment_prob,
            "max_pixels": self.max_pixels,
        }

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """(C, H, W): the shape of one sample's ``pixels``."""
        return (self.channels, self.height, self.width)

    # --- one sample ----------------------------------------------------------------------

    def __call__(self, value: Any, *, where: str = "") -> dict[str, Tensor]:
        x = self.to_tensor(value, where=where)  # (C, H, W) in [0, 1]
        x = self._geometry(x)  # (C, H, W)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        return {"pixels": ((x - mean) / std).contiguous()}

    def to_tensor(self, value: Any, *, where: str = "") -> Tensor:
        """Decode and colour-convert ``value``: (channels, H, W) float32 in [0, 1], original size."""
        if isinstance(value, Image.Image):
            return self._from_pil(value, where, "PIL image", ours=False)
        if isinstance(value, (str, os.PathLike)):
            return self._from_file(value, where)
        if isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
            if not data:
                raise InputError(f"{_at(where)}empty bytes: an image field holds no data")
            return self._decode(io.BytesIO(data), where, f"<{len(data)} bytes>", data[:16])
        if isinstance(value, Mapping):
            return self._from_mapping(value, where)
        if isinstance(value, np.ndarray):
            return self._from_array(value, where)
        if isinstance(value, torch.Tensor):
            return self._from_tensor(value, where)
        raise InputError(
            f"{_at(where)}an image must be a file path (str), bytes, a PIL image, a numpy array (HxW or HxWxC), "
            f"a torch tensor (CxHxW) or a dict {{'bytes': ...}} / {{'path': ...}}; got {type(value).__name__}"
        )

    def _from_mapping(self, value: Mapping[Any, Any], where: str) -> Tensor:
        data, path = value.get("bytes"), value.get("path")
        if data is not None:
            if not isinstance(data, (bytes, bytearray, memoryview)):  # never a path: 'path' names files
                raise InputError(
                    f"{_at(where)}an image dict's 'bytes' must hold the file's content (bytes), got "
                    f"{type(data).__name__}; name a file with 'path'"
                )
            return self.to_tensor(data, where=where)
        if path is not None:
            if not isinstance(path, (str, os.PathLike)):
                raise InputError(f"{_at(where)}an image dict's 'path' must be a file path, got {type(path).__name__}")
            return self._from_file(path, where)
        raise InputError(f"{_at(where)}an image dict needs 'bytes' or 'path'; got keys {sorted(map(str, value))}")

    # --- files -------------------------------------------------------------------------

    def _from_file(self, path: str | os.PathLike[str], where: str) -> Tensor:
        name = os.fsdecode(os.fspath(path))
        if "://" in name[:16]:
            raise InputError(f"{_at(where)}{name}: URLs are not fetched; download the image and give its path")
        problem = regular_file_problem(name)
        if problem is not None and problem.startswith(("no such file", "holds ")):
            raise InputError(f"{_at(where)}{name}: {problem}") from None
        if problem is not None and problem.startswith("is "):  # a folder, FIFO or device: never read
            raise InputError(f"{_at(where)}{name}: {problem}, not an image file") from None
        try:
            with open_regular(name) as f:
                if os.fstat(f.fileno()).st_size == 0:
                    raise InputError(f"{_at(where)}{name}: empty file (0 bytes), not an image")
                prefix = f.read(16)
                f.seek(0)
                return self._decode(f, where, name, prefix)
        except OSError as exc:  # raised by open() / read(), not by the decoder (that is wrapped)
            raise InputError(f"{_at(where)}{name}: cannot read: {exc.strerror or exc}") from None

    def _decode(self, fp: IO[bytes], where: str, label: str, prefix: bytes) -> Tensor:
        """Open (header only), check the size, then decode."""
        at = f"{_at(where)}{label}"
        sniffed = _sniff(prefix)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(fp, formats=FORMATS)  # EPS and PDF would start Ghostscript
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise InputError(f"{at}: refused before decoding by Pillow's decompression-bomb guard: {exc}") from None
        except UnidentifiedImageError:
            raise InputError(f"{at}: {self._not_an_image(label, sniffed)}") from None
        except Exception as exc:  # anything a format plugin raises while parsing the header
            what = f"truncated or corrupt {sniffed} file" if sniffed else "unreadable image"
            raise InputError(f"{at}: {what}: cannot parse its header ({type(exc).__name__}: {exc})") from None
        with img:
            return self._from_pil(img, where, label, ours=True)

    @staticmethod
    def _not_an_image(label: str, sniffed: str | None) -> str:
        ext = os.path.splitext(label)[1].lower() if not label.startswith("<") else ""
        accepted = ", ".join(FORMATS)
        if sniffed:
            return f"corrupt {sniffed} file: it starts like a {sniffed} but its header cannot be parsed"
        if ext in _EXTENSIONS:
            return (
                f"not an image: the content is not {_EXTENSIONS[ext]} (despite the {ext!r} extension) "
                f"nor any other accepted format ({accepted})"
            )
        what = f" (extension {ext!r})" if ext else ""
        return (
            f"not an image file{what} in an accepted format ({accepted}); other formats, EPS, PostScript and PDF "
            "among them, are refused unread"
        )

    def _check_size(self, size: tuple[int, int], where: str, label: str) -> None:
        w, h = size
        if w <= 0 or h <= 0:
            raise InputError(f"{_at(where)}{label}: has no pixels ({w}x{h})")
        if w * h > self.max_pixels:
            raise InputError(
                f"{_at(where)}{label}: {w}x{h} = {w * h:,} pixels is more than max_pixels = {self.max_pixels:,} "
                "(decompression-bomb guard; nothing was decoded). Raise max_pixels to accept larger images."
            )

    def _draft_size(self, size: tuple[int, int]) -> tuple[int, int] | None:
        """The smallest size JPEG draft decoding may reduce to without losing resolution we need."""
        if self.training and "crop" in augmentations(self.augment):
            return None  # a random crop may take a small region: keep full resolution
        w, h = size
        fw, fh = self.width / w, self.height / h
        f = min(fw, fh) if self.resize == "pad" else max(fw, fh)
        if f >= 0.5:
            return None
        return (math.ceil(w * f), math.ceil(h * f))

    # --- PIL images --------------------------------------------------------------------

    def _from_pil(self, img: Image.Image, where: str, label: str, *, ours: bool) -> Tensor:
        """Decode (unless loaded) and convert a PIL image; ``ours``: we opened it, so JPEG draft mode may be set."""
        at = f"{_at(where)}{label}"
        self._check_size(img.size, where, label)  # from the header: nothing decoded yet
        try:
            draft = self._draft_size(img.size) if ours and getattr(img, "format", None) == "JPEG" else None
            if draft is not None:
                img.draft(None, draft)
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img.load()
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise InputError(f"{at}: refused by Pillow's decompression-bomb guard: {exc}") from None
        except Exception as exc:  # truncated data, bad checksums, decoder errors
            fmt = getattr(img, "format", None) or "image"
            raise InputError(
                f"{at}: truncated or corrupt {fmt} data ({img.size[0]}x{img.size[1]}, mode {img.mode}): "
                f"{type(exc).__name__}: {exc}"
            ) from None
        img = _apply_orientation(img)
        mode = img.mode
        if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
            # 16-bit gray (PNG): scale 0..65535 -> 0..1 (Pillow's convert("L") would clip instead).
            arr = np.asarray(img).astype(np.float32)
            x = torch.from_numpy(np.clip(arr / 65535.0, 0.0, 1.0)).unsqueeze(0)
            return self._finish(x)
        if mode == "F":
            return self._from_array(np.asarray(img, dtype=np.float32), where, label)
        target = {"1": "L", "L": "L", "LA": "LA", "La": "LA", "RGBA": "RGBA", "RGBa": "RGBA", "PA": "RGBA"}.get(mode)
        if mode == "P":
            target = "RGBA" if "transparency" in img.info else "RGB"
        target = target or "RGB"  # RGB, CMYK, YCbCr, LAB, HSV, RGBX, ...
        try:
            if mode != target:
                img = img.convert(target)
            arr = np.array(img, dtype=np.uint8)
        except Exception as exc:
            raise InputError(f"{at}: cannot convert colour mode {mode} to {target}: {exc}") from None
        x = torch.from_numpy(arr)
        x = x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1)
        return self._finish(x.to(torch.float32).div_(255.0))

    # --- arrays ------------------------------------------------------------------------

    def _from_array(self, arr: np.ndarray, where: str, label: str = "array") -> Tensor:
        at = f"{_at(where)}{label}"
        if arr.ndim == 2:
            arr = arr[:, :, None]
        elif arr.ndim == 3:
            if arr.shape[-1] not in (1, 2, 3, 4):
                hint = (
                    "; it looks like CxHxW: numpy images are HxWxC, use arr.transpose(1, 2, 0)"
                    if arr.shape[0] in (1, 3, 4)
                    else ""
                )
                raise InputError(
                    f"{at}: shape {tuple(arr.shape)} is not an image: expected HxW or HxWxC with C = 1, 2, 3 or 4{hint}"
                )
        else:
            raise InputError(f"{at}: shape {tuple(arr.shape)} is not an image: expected HxW or HxWxC")
        self._check_size((arr.shape[1], arr.shape[0]), where, label)
        arr = _scale_numpy(arr, at)  # float32 in [0, 1]
        return self._finish(torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1))

    def _from_tensor(self, t: Tensor, where: str) -> Tensor:
        at = f"{_at(where)}tensor"
        if t.dim() == 2:
            t = t.unsqueeze(0)
        elif t.dim() == 3:
            if t.shape[0] not in (1, 2, 3, 4):
                hint = (
                    "; it looks like HxWxC: torch images are CxHxW, use t.permute(2, 0, 1)"
                    if t.shape[-1] in (1, 3, 4)
                    else ""
                )
                raise InputError(
                    f"{at}: shape {tuple(t.shape)} is not an image: expected CxHxW with C = 1, 2, 3 or 4, or HxW{hint}"
                )
        else:
            raise InputError(f"{at}: shape {tuple(t.shape)} is not an image: expected CxHxW or HxW")
        self._check_size((t.shape[2], t.shape[1]), where, "tensor")
        t = t.detach().to("cpu")
        if t.dtype == torch.uint8:
            return self._finish(t.to(torch.float32) / 255.0)
        if t.dtype == torch.bool:
            return self._finish(t.to(torch.float32))
        if t.is_floating_point():
            return self._finish(_check_float(t.to(torch.float32), at))
        raise InputError(f"{at}: dtype {t.dtype} is not supported: use uint8 (0-255) or float in [0, 1]")

    # --- colour -------------------------------------------------------------------------

    def _finish(self, x: Tensor) -> Tensor:
        """(C0, H, W) in [0, 1], C0 in 1..4 -> (channels, H, W): alpha over white, then channels."""
        c = x.shape[0]
        if c in (2, 4):  # gray+alpha, RGBA
            color, alpha = x[:-1], x[-1:]
            x = color * alpha + (1.0 - alpha)
        if x.shape[0] == self.channels:
            return x.contiguous()
        if self.channels == 3:  # gray -> RGB
            return x.expand(3, -1, -1).contiguous()
        w = torch.tensor(LUMA, dtype=x.dtype).view(3, 1, 1)
        return (x * w).sum(0, keepdim=True)

    # --- geometry -----------------------------------------------------------------------

    def _geometry(self, x: Tensor) -> Tensor:
        """(C, h, w) -> (C, H, W): a (random, in training) crop or the deterministic resize, then augmentations."""
        augs = augmentations(self.augment) if self.training else ()
        if augs and self.augment_prob < 1.0 and not bool(torch.rand(()) < self.augment_prob):
            augs = ()  # this time the image stays clean (no draw at augment_prob 1: the stream is unchanged)
        x = self._random_resized_crop(x) if "crop" in augs else self._fit(x)
        if "shift" in augs and self.augment_shift > 0:
            x = self._random_shift(x)
        if "rotate" in augs and self.augment_rotate > 0:
            x = self._random_rotate(x)
        if "flip" in augs and bool(torch.rand(()) < 0.5):
            x = x.flip(-1)
        return x

    def _fit(self, x: Tensor) -> Tensor:
        """The deterministic resize of ``resize`` to (H, W)."""
        sh, sw = self.height, self.width
        h, w = x.shape[-2:]
        if self.resize == "squash":
            return self._resize(x, sh, sw)
        if self.resize == "crop":  # scale to cover (H, W), cut the centre
            scale = max(sh / h, sw / w)
            ch, cw = min(h, max(1, round(sh / scale))), min(w, max(1, round(sw / scale)))
            top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
            return self._resize(x[:, top : top + ch, left : left + cw], sh, sw)
        scale = min(sh / h, sw / w)  # pad: fit inside (H, W), fill with the mean colour
        nh, nw = max(1, min(sh, round(h * scale))), max(1, min(sw, round(w * scale)))
        out = torch.tensor(self.mean, dtype=x.dtype).view(-1, 1, 1).repeat(1, sh, sw)
        top, left = (sh - nh) // 2, (sw - nw) // 2
        out[:, top : top + nh, left : left + nw] = self._resize(x, nh, nw)
        return out

    def _random_shift(self, x: Tensor) -> Tensor:
        """Translate by whole pixels, up to augment_shift of each side; edge pixels fill the border."""
        h, w = x.shape[-2:]
        mh, mw = int(self.augment_shift * h), int(self.augment_shift * w)
        dy = int(torch.randint(-mh, mh + 1, ())) if mh else 0
        dx = int(torch.randint(-mw, mw + 1, ())) if mw else 0
        if not dx and not dy:
            return x
        padded = F.pad(x.unsqueeze(0), (mw, mw, mh, mh), mode="replicate")[0]
        return padded[:, mh - dy : mh - dy + h, mw - dx : mw - dx + w].contiguous()

    def _random_rotate(self, x: Tensor) -> Tensor:
        """Rotate about the centre by up to augment_rotate degrees (bilinear; edge pixels fill)."""
        angle = math.radians(float(torch.empty(()).uniform_(-self.augment_rotate, self.augment_rotate)))
        h, w = x.shape[-2:]
        c, s = math.cos(angle), math.sin(angle)
        # affine_grid works in [-1, 1] coordinates per axis: correct for the aspect ratio.
        theta = torch.tensor([[c, -s * h / w, 0.0], [s * w / h, c, 0.0]], dtype=x.dtype).unsqueeze(0)
        grid = F.affine_grid(theta, [1, x.shape[0], h, w], align_corners=False)
        return F.grid_sample(x.unsqueeze(0), grid, mode="bilinear", padding_mode="border", align_corners=False)[0]

    def _random_resized_crop(self, x: Tensor) -> Tensor:
        """torchvision's RandomResizedCrop: area fraction in augment_scale, aspect in [3/4, 4/3] of (H, W)'s."""
        h, w = x.shape[-2:]
        area = h * w
        aspect = self.width / self.height
        lo, hi = math.log(3 / 4 * aspect), math.log(4 / 3 * aspect)
        for _ in range(10):
            target = area * float(torch.empty(()).uniform_(*self.augment_scale))
            ratio = math.exp(float(torch.empty(()).uniform_(lo, hi)))
            cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, ()))
                left = int(torch.randint(0, w - cw + 1, ()))
                break
        else:  # fall back to the largest centre crop with an allowed aspect ratio
            r = w / h
            if r < 3 / 4 * aspect:
                cw, ch = w, round(w / (3 / 4 * aspect))
            elif r > 4 / 3 * aspect:
                ch, cw = h, round(h * (4 / 3 * aspect))
            else:
                cw, ch = w, h
            top, left = (h - ch) // 2, (w - cw) // 2
        return self._resize(x[:, top : top + ch, left : left + cw], self.height, self.width)

    def _resize(self, x: Tensor, h: int, w: int) -> Tensor:
        if tuple(x.shape[-2:]) == (h, w):
            return x
        if self.interpolation == "nearest":
            return F.interpolate(x.unsqueeze(0), size=(h, w), mode="nearest-exact")[0]
        if self.interpolation == "area":  # box filter: the mean of the covered input pixels
            return F.interpolate(x.unsqueeze(0), size=(h, w), mode="area")[0]
        y = F.interpolate(x.unsqueeze(0), size=(h, w), mode=self.interpolation, align_corners=False, antialias=True)
        return y[0].clamp_(0.0, 1.0) if self.interpolation == "bicubic" else y[0]

    # --- a batch ------------------------------------------------------------------------

    def collate(self, samples: Sequence[Mapping[str, Tensor] | None]) -> dict[str, Tensor]:
        """Stack samples: ``{"pixels": (B, C, H, W) float32, "present": (B,) bool}``.

        ``None`` samples (records without an image) get zero pixels and ``present`` False.
        """
        shape = self.output_shape
        pixels = torch.zeros((len(samples), *shape), dtype=torch.float32)
        present = torch.zeros(len(samples), dtype=torch.bool)
        for i, s in enumerate(samples):
            if s is None:
                continue
            p = s.get("pixels") if isinstance(s, Mapping) else None
            if not isinstance(p, Tensor) or tuple(p.shape) != shape:
                got = tuple(p.shape) if isinstance(p, Tensor) else type(p).__name__
                raise InputError(
                    f"image collate: sample {i} has pixels {got}, expected {shape} (made by a processor with "
                    "other options?)"
                )
            pixels[i] = p
            present[i] = True
        return {"pixels": pixels, "present": present}

    # --- files --------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> list[str]:
        """Write ``image_processor.json``: the resolved preprocessing (size, channels, mean, std...)."""
        return self.write_json(str(directory), PROCESSOR_FILE, PROCESSOR_KIND, FORMAT_VERSION, dict(self.options))

    def load(self, directory: str | os.PathLike[str]) -> None:
        """Read ``image_processor.json`` and adopt its preprocessing.

        ``image_size`` and ``channels`` must match this processor's (the encoder's weights
        depend on them); mean, std, resize, interpolation and augmentation are taken from
        the file, so a saved model keeps the normalisation it was trained with.
        Raises :class:`~mmcore.errors.ModelDirError` when the file is missing or invalid.
        """
        path = os.path.join(directory, PROCESSOR_FILE)
        data = self.read_json(str(directory), PROCESSOR_FILE, PROCESSOR_KIND, FORMAT_VERSION, "the image processor")
        for key in ("image_size", "channels"):
            if _plain(data.get(key)) != _plain(getattr(self, key)):
                raise ModelDirError(
                    f"{path}: {key} is {data.get(key)!r} but the model's encoder takes {getattr(self, key)!r}"
                )
        old = dict(self.__dict__)
        try:
            self.mean = tuple(float(v) for v in data["mean"])
            self.std = tuple(float(v) for v in data["std"])
            self.resize = str(data["resize"])
            self.interpolation = str(data["interpolation"])
            augment = data["augment"]
            self.augment = augment if isinstance(augment, bool) else [str(a) for a in augment]
            self.augment_scale = (float(data["augment_scale"][0]), float(data["augment_scale"][1]))
            self.augment_shift = float(data.get("augment_shift", 0.125))  # absent in format-1 files before them
            self.augment_rotate = float(data.get("augment_rotate", 10.0))
            self.augment_prob = float(data.get("augment_prob", 1.0))  # absent in files before it: every image
            self.max_pixels = int(data["max_pixels"])
            self._check()
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            self.__dict__.clear()
            self.__dict__.update(old)
            raise ModelDirError(f"{path}: invalid preprocessing: {type(exc).__name__}: {exc}") from exc

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"ImageProcessor({opts})"


def _plain(v: Any) -> Any:
    """A size as JSON gives it back: tuples as lists."""
    return list(v) if isinstance(v, tuple) else v


def _apply_orientation(img: Image.Image) -> Image.Image:
    """Rotate/flip as the EXIF orientation tag says (phone photos); unreadable EXIF is ignored."""
    try:
        orientation = img.getexif().get(0x0112, 1)
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            return ImageOps.exif_transpose(img)
    except Exception:
        pass
    return img


def _scale_numpy(arr: np.ndarray, at: str) -> np.ndarray:
    """uint8 / uint16 / bool / float array -> float32 in [0, 1]."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.floating):
        return _check_float(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)), at).numpy()
    raise InputError(
        f"{at}: dtype {arr.dtype} is not supported: use uint8 (0-255), uint16 (0-65535) or float in [0, 1]"
    )


def _check_float(x: Tensor, at: str) -> Tensor:
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        n = int((~finite).sum())
        raise InputError(f"{at}: contains {n} NaN or infinite value{'s' if n != 1 else ''}")
    if x.numel():
        lo, hi = float(x.min()), float(x.max())
        if lo < -_FLOAT_TOLERANCE or hi > 1 + _FLOAT_TOLERANCE:
            raise InputError(
                f"{at}: float pixel values must lie in [0, 1], got [{lo:g}, {hi:g}] (for 0-255 data divide by 255 "
                "or pass uint8)"
            )
    return x.clamp(0.0, 1.0)
