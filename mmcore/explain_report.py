"""The report of :func:`mmcore.explain.explain`: :class:`Explanation` (the JSON summary) and its
figure (:func:`figure`, :func:`plot`), split from explain.py (which computes it)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["Explanation", "figure", "plot"]


@dataclass
class Explanation:
    """The result of :func:`explain`. ``summary()`` is the JSON report; ``save()`` writes it and the figure."""

    head: str
    kind: str  # "classification" or "lm"
    target: dict[str, Any]
    logprob: float
    mode: str | None
    modalities: dict[str, dict[str, Any]]
    attention: dict[str, dict[str, Any]]
    images: dict[str, Any] = field(default_factory=dict, repr=False)  # input -> (C, H, W) pixels for the figure

    def summary(self) -> dict[str, Any]:
        return {
            "head": self.head,
            "kind": self.kind,
            "target": self.target,
            "logprob": self.logprob,
            "mode": self.mode,
            "modalities": self.modalities,
            "attention": self.attention,
        }

    def save(self, directory: str | Path) -> dict[str, str]:
        """Write ``explain.json`` and ``explain.png`` into ``directory``; returns their paths."""
        from .io import atomic_write_text

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(d / "explain.json", json.dumps(self.summary(), indent=2) + "\n")
        plot(self, d / "explain.png")
        return {"json": str(d / "explain.json"), "png": str(d / "explain.png")}


# --- the figure -------------------------------------------------------------------------------------


def figure(report: Explanation) -> Any:
    """The report as a matplotlib figure (what :func:`plot` saves).

    Top row: one bar chart per method, each on its own axis (the log-probability drop when an
    input is occluded, and gradient x input, whose scales differ by orders of magnitude: on a
    shared axis the smaller one's bars would be invisible). Then, per recorded layer, one panel
    per input in the self-attended sequence (an image's attention as a heat map over it, text
    per token, audio per frame group); inputs outside it (cross-attention memory) are named in
    the figure's title instead of getting an empty panel."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = list(report.modalities)
    layers = list(report.attention)
    shown = [m for m in names if any(report.attention[layer].get(m) is not None for layer in layers)]
    layers = layers if shown else []
    cols = max(2, len(shown))  # grid columns: each top chart spans half, each attention panel one
    fig = plt.figure(figsize=(4.2 * cols, 3.2 * (1 + len(layers))))
    grid = fig.add_gridspec(1 + len(layers), 2 * cols)
    x = list(range(len(names)))
    what = report.target.get("label") or report.target.get("index", report.target.get("text", ""))
    charts = [
        (
            "occlusion",
            [(report.modalities[m]["occlusion"] or {}).get("delta", float("nan")) for m in names],
            "logprob drop when removed",
            "tab:blue",
        ),
        ("grad_x_input", [report.modalities[m]["grad_x_input"] for m in names], "gradient x input", "tab:orange"),
    ]
    for k, (gid, values, label, color) in enumerate(charts):
        ax = fig.add_subplot(grid[0, k * cols : (k + 1) * cols])
        missing = [i for i, v in enumerate(values) if not math.isfinite(v)]  # not occludable: said, not drawn
        ax.bar(x, [0.0 if i in missing else v for i, v in enumerate(values)], width=0.6, color=color, gid=gid)
        for i in missing:
            ax.text(i, 0, "n/a", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x, names)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_title(label, fontsize=8)
    fig.suptitle(
        f"{report.head}: target {str(what)[:30]!r}, logprob {report.logprob:.3g}"
        + (
            f" ({', '.join(m for m in names if m not in shown)}: not in the self-attended sequence)"
            if report.attention and len(shown) < len(names)
            else ""
        ),
        fontsize=9,
    )
    for r, layer in enumerate(layers, start=1):
        for c, m in enumerate(shown):
            span = 2 * cols // len(shown)
            ax = fig.add_subplot(grid[r, c * span : (c + 1) * span])
            entry = report.attention[layer].get(m)
            ax.set_title(f"{layer}: attention to {m}", fontsize=8)
            if entry is None:
                ax.text(0.5, 0.5, "not in the self-attended sequence", ha="center", va="center", fontsize=7)
                ax.axis("off")
            elif "grid" in entry:
                img = report.images.get(m)
                g = torch.tensor(entry["grid"])
                if img is not None:
                    h, w = img.shape[1:]
                    ax.imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if img.shape[0] == 1 else None)
                    heat = F.interpolate(g[None, None], size=(h, w), mode="nearest")[0, 0]
                    ax.imshow(heat.numpy(), cmap="inferno", alpha=0.55)
                else:
                    ax.imshow(g.numpy(), cmap="inferno")
                ax.axis("off")
            elif "tokens" in entry:
                ax.bar(range(len(entry["weights"])), entry["weights"])
                ax.set_xticks(
                    range(len(entry["tokens"])),
                    [t if t.strip() else repr(t) for t in entry["tokens"]],
                    rotation=90,
                    fontsize=6,
                )
            else:
                ax.plot(entry["weights"])
                ax.set_xlabel("token (frame group)", fontsize=7)
    fig.tight_layout()
    return fig


def plot(report: Explanation, path: str | Path) -> None:
    """Write :func:`figure` of the report to ``path`` (PNG, atomically)."""
    import matplotlib.pyplot as plt

    from .io import atomic_write

    fig = figure(report)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)
