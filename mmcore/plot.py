"""The loss plot written at the end of training (``loss.png``), drawn with matplotlib.

matplotlib comes with ``python3 dev.py demo``/``test`` and with ``pip install "mmcore[plot]"``.
Without it no ``loss.png`` is written and the run says so (a plot without axes or a legend
would be read wrongly); ``metrics.jsonl`` holds every number.

What the figure shows (one colour per task):

* the training loss of the logged steps, faint (each logged step trained one task, so a task's
  raw points are the logged steps that trained it);
* the running loss per task that the run logged (``running`` in ``metrics.jsonl``: a moving
  average, see :mod:`mmcore.trainer_log`), a solid line;
* the evaluation loss, dashed with round markers;
* the learning rate on a second axis (right), grey and dotted.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["figure", "plot_history"]

Points = list[tuple[int, float]]


def _series(history: Sequence[dict[str, Any]]) -> dict[str, dict[str, Points]]:
    """``{"train": {task: pts}, "running": {...}, "eval": {...}, "lr": {"lr": pts}}``."""
    out: dict[str, dict[str, Points]] = {"train": {}, "running": {}, "eval": {}, "lr": {}}
    for h in history:
        step = int(h["step"])
        if "loss" in h and "task" in h:
            out["train"].setdefault(h["task"], []).append((step, float(h["loss"])))
        for task, v in (h.get("running") or {}).items():
            out["running"].setdefault(task, []).append((step, float(v)))
        for task, m in (h.get("eval") or {}).items():
            if "loss" in m:
                out["eval"].setdefault(task, []).append((step, float(m["loss"])))
        if "lr" in h:
            out["lr"].setdefault("lr", []).append((step, float(h["lr"])))
    return out


def figure(history: Sequence[dict[str, Any]]) -> Any:
    """The matplotlib ``Figure`` of a run's history (``metrics.jsonl`` entries); raises
    ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    s = _series(history)
    tasks = list(dict.fromkeys([*s["train"], *s["running"], *s["eval"]]))
    colours = matplotlib.colormaps["tab10"]
    fig = Figure(figsize=(8, 4.5), dpi=100)
    ax = fig.add_subplot()
    for i, task in enumerate(tasks):
        c = colours(i % 10)
        if task in s["train"]:
            ax.plot(
                *zip(*s["train"][task], strict=True), color=c, alpha=0.25, linewidth=1, label=f"{task} train (steps)"
            )
        if task in s["running"]:
            ax.plot(*zip(*s["running"][task], strict=True), color=c, linewidth=2, label=f"{task} train (running)")
        if task in s["eval"]:
            ax.plot(
                *zip(*s["eval"][task], strict=True),
                color=c,
                linestyle="--",
                marker="o",
                markersize=5,
                label=f"{task} eval",
            )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if s["lr"]:
        ax2 = ax.twinx()
        ax2.plot(*zip(*s["lr"]["lr"], strict=True), color="0.5", linestyle=":", linewidth=1.5, label="learning rate")
        ax2.set_ylabel("learning rate")
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        ax.legend(handles, labels, loc="upper right", fontsize="small")
    ax.set_title("training and evaluation loss per task")
    fig.tight_layout()
    return fig


def plot_history(history: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """Write :func:`figure` as a PNG; returns the file, or None when matplotlib is missing."""
    from .io import atomic_write_bytes

    try:
        fig = figure(history)
    except ImportError:
        return None
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path
