"""[training] values a spec leaves unset: derived from the model and the run, and printed."""

from __future__ import annotations

import pytest
from test_training import CORPUS, spec_dict

import mmcore
from mmcore.config import TrainingConfig, derived_lr, resolve_training
from mmcore.spec import parse_spec
from mmcore.trainer import Trainer


def test_unset_lr_and_warmup_are_derived_and_printed(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text(CORPUS)
    data = spec_dict(tmp_path, {"lm": {"objective": "lm", "train": str(corpus)}}, {"steps": 40})
    del data["training"]["lr"]
    spec = parse_spec(data)
    assert spec.training.lr is None and spec.training.warmup_steps is None
    trainer = Trainer(mmcore.build(spec), spec.tasks, spec.training)
    assert data["backbone"]["width"] == 32  # 0.2 / 32 is above the cap
    assert trainer.cfg.lr == 3e-3 and trainer.cfg.warmup_steps == 2
    err = capsys.readouterr().err
    assert "lr 0.003 (0.2 / backbone width 32" in err and "warmup_steps 2 (5 % of 40 steps" in err
    assert trainer.plan.lr(0) == pytest.approx(3e-3 / 2) and trainer.plan.lr(2) == pytest.approx(3e-3)


def test_derived_lr_scales_with_width_and_explicit_values_win():
    assert derived_lr(96) == pytest.approx(0.2 / 96) and derived_lr(256) == pytest.approx(0.2 / 256)
    assert derived_lr(8192) == 1e-4 and derived_lr(16) == 3e-3 and derived_lr(None) == 1e-3
    cfg, notes = resolve_training(TrainingConfig(lr=5e-4, warmup_steps=7, steps=1000), 96)
    assert (cfg.lr, cfg.warmup_steps, notes) == (5e-4, 7, [])
    cfg, notes = resolve_training(TrainingConfig(steps=10_000), 128)
    assert cfg.lr == pytest.approx(0.2 / 128) and cfg.warmup_steps == 200 and len(notes) == 2


def test_stages_after_the_first_run_at_half_the_derived_lr():
    """With [[training.stages]] and no training.lr, later stages without their own lr go on at
    half the derived rate (the first keeps it; a stage's own lr and a set training.lr win)."""
    stages = [{"tasks": ["a"]}, {}, {"lr": 5e-3}, {"name": "last"}]
    cfg, notes = resolve_training(TrainingConfig(steps=400, stages=stages), 100)
    assert [s.lr for s in cfg.stages] == [None, pytest.approx(1e-3), 5e-3, pytest.approx(1e-3)]
    assert cfg.lr == pytest.approx(2e-3)
    assert any("lr 0.001 in stage-2, last (half the derived lr" in n for n in notes)
    from mmcore.schedule import plan_stages

    assert [s.lr for s in plan_stages(cfg, ["a", "b"])] == pytest.approx([2e-3, 1e-3, 5e-3, 1e-3])
    cfg, _ = resolve_training(TrainingConfig(steps=400, lr=3e-3, stages=stages), 100)
    assert [s.lr for s in cfg.stages] == [None, None, 5e-3, None] and cfg.lr == 3e-3
