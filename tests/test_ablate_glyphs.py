"""bench/ablate_glyphs.py's two budgets (wall seconds, or a fixed step count with --steps) and its plain
PyTorch baselines (small_cnn with and without batch norm), on a few random pictures: no data files needed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import load_script

ag = load_script("bench/ablate_glyphs.py")


def test_small_cnn_batch_norm_is_what_cnn_bn_adds():
    plain, bn = ag.small_cnn(10), ag.small_cnn(10, batch_norm=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in bn) == 3
    assert all(m.bias is None for m in bn if isinstance(m, torch.nn.Conv2d))  # the norm's shift replaces it
    assert ag.CNNS == {"cnn": False, "cnn_bn": True}
    assert bn(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_spec_data_trains_for_steps_or_for_the_wall_budget():
    timed = ag.spec_data({}, seed=3, budget=120.0)["training"]
    assert timed["max_time"] == 120.0 and "steps" not in timed and timed["seed"] == 3
    counted = ag.spec_data({}, seed=3, budget=None, steps=800)["training"]
    assert counted["steps"] == 800 and "max_time" not in counted


@pytest.mark.parametrize("batch_norm", [False, True])
def test_run_cnn_stops_after_the_steps_it_was_given(monkeypatch, batch_norm):
    rng = np.random.default_rng(0)

    def split(name):  # 100 random 32x32 pictures (more than one batch of 64), labels 0-9
        return rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 100)

    monkeypatch.setattr(ag, "load_split", split)
    r = ag.run_cnn(0, None, batch_norm, steps=3)
    assert r["steps"] == 3 and r["budget_steps"] == 3 and r["budget_seconds"] is None
    assert r["setting"] == ("cnn_bn" if batch_norm else "cnn")
    row = ag.table([{**r, "tag": "t", "load_average": [1.0, 1.0]}])
    assert "| 3 steps | 3 x 64 |" in row


def test_main_runs_each_plain_cnn_for_the_steps_asked(monkeypatch, tmp_path):
    import json

    rng = np.random.default_rng(1)
    monkeypatch.setattr(ag, "ensure_data", lambda: None)
    monkeypatch.setattr(
        ag, "load_split", lambda name: (rng.integers(0, 256, (70, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 70))
    )
    threads = torch.get_num_threads()
    try:
        out = tmp_path / "runs.json"
        assert ag.main(["--steps", "2", "--only", "cnn", "cnn_bn", "--out", str(out), "--tag", "t"]) == 0
    finally:
        torch.set_num_threads(threads)
    runs = json.loads(out.read_text())
    assert [(r["setting"], r["steps"], r["budget_steps"]) for r in runs] == [("cnn", 2, 2), ("cnn_bn", 2, 2)]
    assert [r["parameters"] for r in runs] == [
        sum(p.numel() for p in ag.small_cnn(10, bn).parameters()) for bn in (False, True)
    ]
