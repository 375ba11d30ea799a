"""A short soak in the default run: 150 training steps (a checkpoint every 30 steps, metrics every
50) and 60 generation calls in this process. After the warm-up (30 steps and 30
generations) open file descriptors may not grow at all and resident memory by less than
48 MiB. ``bench/soak.py`` runs the long version (5000 steps, 1000 generations)."""

from __future__ import annotations

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

import soak  # noqa: E402


def test_short_soak_keeps_memory_and_file_descriptors_flat(tmp_path, manager):
    res = soak.soak(150, 60, warmup=30, out=tmp_path, quiet=True, checkpoint_every=30)
    assert res["checkpoints"] == ["step-00000120", "step-00000150"]  # 5 written, 2 kept
    assert res["fd_growth_after_warmup"] <= 0, res
    assert res["rss_growth_after_warmup_mib"] < 48, res
