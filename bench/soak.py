"""Soak: many thousand training steps and a thousand generation calls in one process, with
resident memory and open file descriptors measured at the start and at the end.

    python bench/soak.py                      # 5000 steps, 1000 generations (a few minutes)
    python bench/soak.py --steps 300 --generations 100 --json out.json

The run trains a small text GPT (``text.bytes`` encoder, width 64, 2 layers) on mmcore's
own sources with the real :class:`mmcore.Trainer`: metrics appended every 50 steps, a
checkpoint every 500 (two kept), so the paths that open files and write directories run
hundreds of times. Then it samples ``--generations`` continuations of varying prompts.

Measures (from ``/proc/self/status`` and ``/proc/self/fd``):

* ``rss``: resident memory at the start (model built, nothing run), after the warm-up
  (``--warmup`` steps and generations: the allocator's caches, lazily imported modules and
  first-call buffers settle there), and at the end;
* ``fds``: open file descriptors at the same points.

Bounds (checked, exit status 1 when exceeded): RSS may grow by at most
``--rss-bound-mib`` (default 64 MiB) from the warm-up to the end, and the number of open
file descriptors may not grow at all (``--fd-bound``, default 0).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def rss_mib() -> float:
    """Resident set size of this process in MiB (VmRSS)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) - 1  # minus the descriptor listdir itself holds


def _spec(out: Path, steps: int, checkpoint_every: int) -> dict[str, Any]:
    corpus = out / "corpus.txt"
    corpus.write_text("\n".join(p.read_text() for p in sorted((ROOT / "mmcore").glob("*.py"))[:8]))
    return {
        "spec_version": 1,
        "name": "soak",
        "backbone": {"width": 64, "depth": 2, "heads": 4, "context_length": 64},
        "encoders": {"text": {"component": "text.bytes", "max_length": 64}},
        "heads": {"lm": {"component": "lm", "tie": True}},
        "training": {
            "steps": steps,
            "batch_size": 8,
            "lr": 1e-3,
            "log_every": 50,
            "checkpoint_every": checkpoint_every,
            "keep_checkpoints": 2,
            "progress": False,
        },
        "tasks": {"lm": {"objective": "lm", "train": str(corpus)}},
    }


def soak(
    steps: int,
    generations: int,
    warmup: int = 50,
    out: Path | None = None,
    quiet: bool = False,
    threads: int = 1,
    checkpoint_every: int = 500,
) -> dict:
    """Run the soak; returns the measurements (MiB and descriptor counts)."""

    import torch

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # a small model: more threads only contend on a shared machine
    try:
        return _soak(steps, generations, warmup, out, quiet, checkpoint_every)
    finally:
        torch.set_num_threads(old_threads)


def _soak(steps: int, generations: int, warmup: int, out: Path | None, quiet: bool, checkpoint_every: int) -> dict:
    import contextlib
    import io

    import torch

    import mmcore
    from mmcore.generation import GenerationConfig, generate
    from mmcore.trainer import Trainer

    torch.manual_seed(0)
    tmp = tempfile.TemporaryDirectory() if out is None else None
    out = Path(tmp.name) if tmp is not None else out
    spec = mmcore.parse_spec(_spec(out, steps, checkpoint_every))
    model = mmcore.build(spec)
    trainer = Trainer(model, spec.tasks, spec.training, out_dir=out / "run")
    start = {"rss": rss_mib(), "fds": open_fds()}
    prompts = ["def ", "class Spec", "import ", "    return ", "raise ", "# ", "for x in ", "from ."]
    cfg = GenerationConfig(max_new_tokens=16, do_sample=True, top_k=20, seed=0)
    sink = io.StringIO()

    def gen(i: int) -> None:
        batch = model.preprocess([{"text": {"prompt": prompts[i % len(prompts)] * (1 + i % 3)}}], targets=())
        generate(model, batch, cfg)

    t0 = time.perf_counter()
    with contextlib.redirect_stderr(sink) if quiet else contextlib.nullcontext():
        trainer.cfg = trainer.cfg.model_copy(update={"steps": warmup})
        trainer.fit()  # warm-up: the first steps, a checkpoint, the final save
        model.eval()
        with torch.no_grad():
            for i in range(min(warmup, generations)):
                gen(i)
        warm = {"rss": rss_mib(), "fds": open_fds()}
        trainer.cfg = trainer.cfg.model_copy(update={"steps": steps})
        trainer.fit()
        train_s = time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            for i in range(generations):
                gen(i)
    end = {"rss": rss_mib(), "fds": open_fds()}
    result = {
        "steps": steps,
        "generations": generations,
        "warmup": warmup,
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "rss_mib": {"start": round(start["rss"], 1), "warm": round(warm["rss"], 1), "end": round(end["rss"], 1)},
        "fds": {"start": start["fds"], "warm": warm["fds"], "end": end["fds"]},
        "rss_growth_after_warmup_mib": round(end["rss"] - warm["rss"], 1),
        "fd_growth_after_warmup": end["fds"] - warm["fds"],
        "checkpoints": sorted(p.name for p in (out / "run" / "checkpoints").iterdir() if p.is_dir()),
    }
    if tmp is not None:
        tmp.cleanup()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--generations", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--rss-bound-mib", type=float, default=64.0)
    ap.add_argument("--fd-bound", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    res = soak(args.steps, args.generations, args.warmup, quiet=True, threads=args.threads)
    res["bounds"] = {"rss_growth_mib": args.rss_bound_mib, "fd_growth": args.fd_bound}
    ok = res["rss_growth_after_warmup_mib"] <= args.rss_bound_mib and res["fd_growth_after_warmup"] <= args.fd_bound
    res["within_bounds"] = ok
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        from mmcore import atomic_write_text

        atomic_write_text(args.json, text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
