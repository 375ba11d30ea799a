"""The loss plot written at the end of training (``loss.png``).

Uses matplotlib when installed (``pip install mmcore[plot]``); otherwise draws the curves
into a plain PNG with the standard library (no labels), so a plot is always written.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_history", "write_png"]


def _series(history: Sequence[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for h in history:
        if "loss" in h and "task" in h:
            out.setdefault(f"train {h['task']}", []).append((int(h["step"]), float(h["loss"])))
        for task, m in (h.get("eval") or {}).items():
            if "loss" in m:
                out.setdefault(f"eval {task}", []).append((int(h["step"]), float(m["loss"])))
    return out


def plot_history(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Plot training and evaluation loss per task against the step; returns the file."""
    from .io import atomic_write_bytes

    path = Path(path)
    series = _series(history)
    try:
        import io

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        for name, pts in series.items():
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="o" if name.startswith("eval") else None, markersize=3, label=name)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        if series:
            ax.legend()
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png")
        plt.close(fig)
        atomic_write_bytes(path, buf.getvalue())
    except ImportError:
        atomic_write_bytes(path, _draw(series))
    return path


_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def _draw(series: dict[str, list[tuple[int, float]]], w: int = 640, h: int = 360) -> bytes:
    px = [[(255, 255, 255)] * w for _ in range(h)]
    pts = [p for s in series.values() for p in s]
    if pts:
        x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
        y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
        x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
        m = 20

        def to_px(x: float, y: float) -> tuple[int, int]:
            return int(m + (x - x0) / (x1 - x0) * (w - 2 * m)), int(h - m - (y - y0) / (y1 - y0) * (h - 2 * m))

        for i in range(m, w - m):
            px[h - m][i] = (0, 0, 0)
        for j in range(m, h - m + 1):
            px[j][m] = (0, 0, 0)
        for k, s in enumerate(series.values()):
            c = _COLOURS[k % len(_COLOURS)]
            prev = None
            for x, y in s:
                cur = to_px(x, y)
                if prev is not None:
                    n = max(abs(cur[0] - prev[0]), abs(cur[1] - prev[1]), 1)
                    for t in range(n + 1):
                        xx = prev[0] + (cur[0] - prev[0]) * t // n
                        yy = prev[1] + (cur[1] - prev[1]) * t // n
                        if 0 <= xx < w and 0 <= yy < h:
                            px[yy][xx] = c
                prev = cur
    return write_png(px)


def write_png(rows: Sequence[Sequence[tuple[int, int, int]]]) -> bytes:
    """Encode RGB rows as a PNG file."""
    h, w = len(rows), len(rows[0])
    raw = b"".join(b"\x00" + bytes(v for rgb in row for v in rgb) for row in rows)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
