"""Images written by the tests (Pillow), and crafted file headers."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def gradient(w: int = 48, h: int = 40) -> np.ndarray:
    """An (h, w, 3) uint8 image that differs everywhere (so crops and flips show)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], axis=-1).astype(np.uint8)


def write(path: Path, arr: np.ndarray | None = None, *, mode: str | None = None, **save: object) -> Path:
    img = Image.fromarray(gradient() if arr is None else arr)
    if mode is not None:
        img = img.convert(mode)
    img.save(path, **save)
    return path


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR declares ``width`` x ``height`` RGB pixels (with next to no pixel data).

    Opening it reads the header only; decoding it would need width * height * 3 bytes.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
