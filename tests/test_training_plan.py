"""Training plans: stages, the time budget, the best model, early stopping and weight averages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import ROOT

import mmcore
from mmcore.cli import main as cli_main
from mmcore.config import TrainingConfig, resolve_training
from mmcore.ema import EMA
from mmcore.errors import MMCoreError, SpecError
from mmcore.schedule import lr_at, plan_stages, with_steps
from mmcore.selection import Monitor
from mmcore.trainer import Trainer

BACKBONE = {"width": 32, "depth": 2, "heads": 4, "context_length": 64}
CORPUS = (ROOT / "mmcore" / "spec.py").read_text()


def _spec(tmp: Path, training: dict, tasks: tuple[str, ...] = ("a",), **task_extra) -> dict:
    corpus = tmp / "corpus.txt"
    corpus.write_text(CORPUS)
    return {
        "spec_version": 1,
        "name": "plan",
        "backbone": BACKBONE,
        "encoders": {"text": {"component": "text.bytes", "max_length": 64}},
        "heads": {"lm": {"component": "lm"}},
        "training": {"batch_size": 4, "lr": 3e-3, "log_every": 1, "progress": False, **training},
        "tasks": {
            t: {"objective": "lm" if i % 2 == 0 else "mlm", "train": str(corpus), "eval": str(corpus), **task_extra}
            for i, t in enumerate(tasks)
        },
    }


def _trainer(tmp: Path, training: dict, out: str | None = "out", tasks=("a",), **kw) -> Trainer:
    spec = mmcore.parse_spec(_spec(tmp, training, tasks))
    torch.manual_seed(0)
    return Trainer(mmcore.build(spec), spec.tasks, spec.training, out_dir=tmp / out if out else None, **kw)


def _history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _scripted(trainer: Trainer, values: dict[int, float]) -> None:
    """Replace evaluation by a scripted loss per step (the trainer's handling is under test)."""
    trainer.evaluate = lambda max_batches=None: {"a": {"loss": values[trainer.step]}}


def _resume_from(src: Path, step: int, dst: Path) -> None:
    """A run directory as if the run had been killed right after its checkpoint at ``step``."""
    name = f"step-{step:08d}"
    (dst / "checkpoints").mkdir(parents=True)
    shutil.copytree(src / "checkpoints" / name, dst / "checkpoints" / name)
    (dst / "checkpoints" / "latest").write_text(name + "\n")


def _same_weights(a: Path, b: Path) -> None:
    sa, sb = mmcore.load(a).state_dict(), mmcore.load(b).state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# --- model selection ---------------------------------------------------------------------------


def test_monitor_modes_min_delta_and_patience():
    cfg = TrainingConfig(monitor="m.accuracy", patience=2, min_delta=0.05)
    m = Monitor.from_config(cfg, ["x", "m"])
    assert (m.task, m.metric, m.mode) == ("m", "accuracy", "max")  # auto: higher is better for accuracy
    seen = [m.update({"m": {"accuracy": v}}, step) for step, v in enumerate([0.5, 0.54, 0.6, 0.58, 0.64])]
    assert seen == [True, False, True, False, False]  # 0.54 and 0.64 are within min_delta
    assert m.best == 0.6 and m.best_step == 2 and m.bad == 2 and m.exhausted  # counted since the best
    loss = Monitor.from_config(TrainingConfig(), ["first", "second"])
    assert (loss.task, loss.metric, loss.mode) == ("first", "loss", "min")
    assert [loss.update({"first": {"loss": v}}, 0) for v in (2.0, float("nan"), 1.0)] == [True, False, True]
    assert Monitor.from_config(TrainingConfig(), []) is None
    with pytest.raises(MMCoreError, match="task 'b' has no eval set"):
        Monitor.from_config(TrainingConfig(monitor="b.loss"), ["a"])
    with pytest.raises(MMCoreError, match="no metric 'acc'.*loss"):
        Monitor.from_config(TrainingConfig(monitor="a.acc"), ["a"]).update({"a": {"loss": 1.0}}, 0)
    with pytest.raises(ValueError, match="TASK.METRIC"):
        TrainingConfig(monitor="accuracy")


LOSSES = {2: 3.0, 4: 3.5, 6: 2.0, 8: 2.5, 10: 2.2, 12: 1.0, 14: 0.5}


def test_best_model_and_early_stopping(tmp_path, manager):
    # Scripted evaluations: the best loss is at step 6; patience 2 then stops at step 10.
    tr = _trainer(tmp_path, {"steps": 16, "eval_every": 2, "checkpoint_every": 2, "keep_checkpoints": 9, "patience": 2})
    _scripted(tr, LOSSES)
    result = tr.fit()
    out = tmp_path / "out"
    assert result.steps == 10 and result.stop_reason == "early_stopping"
    assert result.best == {"monitor": "a.loss", "mode": "min", "best": 2.0, "best_step": 6, "bad": 2}
    _same_weights(out / "best", out / "checkpoints" / "step-00000006")  # best/ holds the step-6 model
    assert json.loads((out / "best" / "eval.json").read_text())["step"] == 6
    _same_weights(out, out / "checkpoints" / "step-00000010")  # the final model is the last one


def test_resume_restores_the_best_and_the_patience_exactly(tmp_path, manager):
    cfg = {"steps": 16, "eval_every": 2, "checkpoint_every": 2, "keep_checkpoints": 9, "patience": 2, "ema": 0.9}
    full = _trainer(tmp_path, cfg, "full")
    _scripted(full, LOSSES)
    a = full.fit()
    _resume_from(tmp_path / "full", 8, tmp_path / "resumed")  # one evaluation without improvement so far
    again = _trainer(tmp_path, cfg, "resumed")
    _scripted(again, LOSSES)
    b = again.fit()
    assert (b.steps, b.stop_reason, b.best) == (a.steps, a.stop_reason, a.best) == (10, "early_stopping", a.best)
    assert b.best["bad"] == 2 and b.best["best_step"] == 6
    _same_weights(tmp_path / "full", tmp_path / "resumed")  # weights and their averages, bit for bit


# --- weight averages -------------------------------------------------------------------------------


def test_ema_follows_the_formula_and_restores_the_trained_weights():
    lin = torch.nn.Linear(2, 1)
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    model = torch.nn.Sequential(lin, frozen)
    ema = EMA(model, 0.5)
    assert ema.names == ["0.weight", "0.bias"]  # frozen weights are not averaged
    start = lin.weight.detach().clone()
    with torch.no_grad():
        lin.weight.add_(1.0)
    ema.update()  # d = min(0.5, 1/10) = 0.1
    expected = 0.1 * start + 0.9 * (start + 1.0)
    assert torch.allclose(ema.shadow[0], expected)
    with torch.no_grad():
        lin.weight.add_(1.0)
    ema.update()  # d = min(0.5, 2/11)
    d = 2 / 11
    expected = d * expected + (1 - d) * (start + 2.0)
    assert torch.allclose(ema.shadow[0], expected)
    with ema.applied():
        assert torch.allclose(lin.weight, expected)
    assert torch.equal(lin.weight, start + 2.0)


def test_ema_is_what_evaluation_and_the_saved_model_use(tmp_path, manager):
    tr = _trainer(tmp_path, {"steps": 6, "ema": 0.8, "eval_batches": 2})
    result = tr.fit()
    raw = {k: v.clone() for k, v in tr.model.state_dict().items()}
    saved = mmcore.load(tmp_path / "out").state_dict()
    averaged = dict(zip(tr.ema.names, tr.ema.shadow, strict=True))
    key = "backbone.blocks.0.attn.qkv.weight"
    assert torch.equal(saved[key], averaged[key]) and not torch.equal(saved[key], raw[key])
    assert torch.equal(tr.model.state_dict()[key], raw[key])  # training weights restored after saving
    again = tr.evaluate(2)
    assert again["a"]["loss"] == pytest.approx(result.eval["a"]["loss"])
    with torch.no_grad():  # evaluating the raw weights gives another loss
        tr.ema = None
        assert tr.evaluate(2)["a"]["loss"] != pytest.approx(result.eval["a"]["loss"], abs=1e-6)


# --- stages -----------------------------------------------------------------------------------------


STAGES = [
    {"name": "warm", "tasks": ["b"], "steps": 4, "lr": 1e-2, "warmup_steps": 2},
    {"steps": 6},
]


def test_stages_without_steps_share_the_runs_steps(tmp_path):
    """A curriculum written without numbers: stages that leave steps out split training.steps, in
    proportion to their tasks' summed weights (a stage of one task gets a third of what a stage
    of that task and one of weight 2 gets); a TrainingConfig made outside a spec knows no
    weights and splits equally."""
    spec = mmcore.parse_spec(_spec(tmp_path, {"stages": [{"tasks": ["b"]}, {}]}, ("a", "b")))
    assert [s.steps for s in spec.training.stages] == [500, 1000] and spec.training.steps == 1500
    data = _spec(tmp_path, {"steps": 900, "stages": [{"tasks": ["b"]}, {"tasks": ["a"]}, {}]}, ("a", "b"))
    data["tasks"]["a"]["weight"] = 2.0
    spec = mmcore.parse_spec(data)
    assert [s.steps for s in spec.training.stages] == [150, 300, 450] and spec.training.steps == 900
    data["training"]["stages"][1]["steps"] = 100  # set steps are kept; the others share the rest
    assert [s.steps for s in mmcore.parse_spec(data).training.stages] == [200, 100, 600]
    cfg = TrainingConfig(steps=1200, stages=[{"tasks": ["a"], "steps": 401}, {}, {}])
    assert [s.steps for s in cfg.stages] == [401, 400, 399] and cfg.steps == 1200
    assert [s.steps for s in plan_stages(resolve_training(cfg, 64)[0], ["a"])] == [401, 400, 399]
    with pytest.raises(SpecError, match=r"leaves 0 steps for the 1 stage\(s\) without steps \(training.stages\[1\]\)"):
        mmcore.parse_spec(_spec(tmp_path, {"steps": 2, "stages": [{"steps": 2}, {}]}, ("a", "b")))


def test_stages_validate_against_the_tasks(tmp_path):
    with pytest.raises(SpecError, match="steps = 5 but the stages hold 10 steps"):
        mmcore.parse_spec(_spec(tmp_path, {"steps": 5, "stages": STAGES}, ("a", "b")))
    with pytest.raises(SpecError) as exc:
        mmcore.parse_spec(_spec(tmp_path, {"stages": STAGES, "monitor": "d.loss"}, ("a", "c")))
    assert "[training.stages.0.tasks] no task named 'b' (tasks: a, c)" in str(exc.value)
    assert "[training.monitor] no task named 'd' (tasks: a, c)" in str(exc.value)
    mmcore.parse_spec(_spec(tmp_path, {"stages": STAGES, "monitor": "b.loss"}, ("a", "b")))  # all named
    cfg = TrainingConfig(stages=[{"tasks": ["a", "nope"], "steps": 3}])
    assert cfg.steps == 3
    with pytest.raises(MMCoreError, match=r"stages\[0\].tasks: no task named 'nope'; tasks: a, b"):
        plan_stages(cfg, ["a", "b"])
    longer = with_steps(TrainingConfig(stages=STAGES), 20)
    assert [s.steps for s in longer.stages] == [4, 20] and longer.steps == 24
    with pytest.raises(MMCoreError, match="steps = 7 but"):
        plan_stages(TrainingConfig(stages=STAGES).model_copy(update={"steps": 7}), ["a", "b"])


def test_a_plan_needs_a_resolved_config():
    """lr and warmup_steps left unset are derived by resolve_training (as the Trainer does); a plan
    from an unresolved config is an error naming the field, not a stage whose lr is None."""
    with pytest.raises(MMCoreError, match=r"training.lr is not set.*resolve_training"):
        plan_stages(TrainingConfig(steps=10), ["a"])
    with pytest.raises(MMCoreError, match=r"training.warmup_steps is not set"):
        plan_stages(TrainingConfig(steps=10, lr=1e-3), ["a"])
    # stage 1 sets its own lr and warmup, stage 2 takes the run's: an error only for stage 2's
    with pytest.raises(MMCoreError, match=r"training.lr is not set"):
        plan_stages(TrainingConfig(stages=STAGES), ["a", "b"])
    cfg, _ = resolve_training(TrainingConfig(stages=STAGES, max_time="10s"), 64)
    stages = plan_stages(cfg, ["a", "b"])
    # a later stage without its own lr goes on at half the derived one (test_training_defaults.py)
    assert [(s.lr, s.warmup_steps) for s in stages] == [(1e-2, 2), (cfg.lr / 2, cfg.warmup_steps)]
    assert [s.deadline for s in stages] == [4.0, 10.0]
    unvalidated = TrainingConfig.model_construct(**{**dict(cfg), "max_time": "10s"})
    with pytest.raises(MMCoreError, match=r"training.max_time '10s' was not validated"):
        plan_stages(unvalidated, ["a", "b"])


def test_stages_run_in_order_with_their_tasks_and_schedules(tmp_path, manager):
    tr = _trainer(tmp_path, {"stages": STAGES, "warmup_steps": 3, "schedule": "linear"}, tasks=("a", "b"))
    result = tr.fit()
    steps = [h for h in _history(tmp_path / "out") if "loss" in h]
    assert result.steps == 10 and [h["step"] for h in steps] == list(range(1, 11))
    assert {h["task"] for h in steps[:4]} == {"b"} and {h["task"] for h in steps[4:]} == {"a", "b"}
    lrs = [h["lr"] for h in steps]
    assert lrs[:2] == pytest.approx([5e-3, 1e-2])  # stage 1: its own lr and warmup
    assert lrs[4:7] == pytest.approx([1e-3, 2e-3, 3e-3])  # stage 2: training.lr's warmup from the start
    assert lrs[3] == pytest.approx(1e-2 - 0.9e-2 * 1 / 2)  # linear decay over stage 1's last 2 steps
    qkv = tr.model.backbone.blocks[0].attn.qkv.weight
    assert int(tr.optimizer.state[qkv]["step"]) == 10  # one optimizer throughout


def test_a_stage_may_start_with_a_fresh_optimizer(tmp_path, manager):
    stages = [STAGES[0], {**STAGES[1], "reset_optimizer": True}]
    tr = _trainer(tmp_path, {"stages": stages}, None, tasks=("a", "b"))
    tr.fit()
    qkv = tr.model.backbone.blocks[0].attn.qkv.weight
    assert int(tr.optimizer.state[qkv]["step"]) == 6  # AdamW's count restarted with stage 2


def test_resume_mid_stage_matches_an_uninterrupted_run(tmp_path, manager):
    cfg = {"stages": STAGES, "checkpoint_every": 3, "keep_checkpoints": 9}
    _trainer(tmp_path, cfg, "full", tasks=("a", "b")).fit()
    for step in (3, 6):  # in stage 1, in stage 2
        _resume_from(tmp_path / "full", step, tmp_path / f"r{step}")
        resumed = _trainer(tmp_path, cfg, f"r{step}", tasks=("a", "b"))
        resumed.fit()
        _same_weights(tmp_path / "full", tmp_path / f"r{step}")
        tail = [h for h in _history(tmp_path / f"r{step}") if "loss" in h]
        full = [h for h in _history(tmp_path / "full") if "loss" in h]
        assert len(tail) == 10 - step
        assert [(h["task"], h["lr"], h["loss"]) for h in tail] == [(h["task"], h["lr"], h["loss"]) for h in full[step:]]


def test_mmcore_train_runs_the_stages_of_a_spec_file(tmp_path, manager):
    spec = _spec(tmp_path, {"stages": STAGES}, ("a", "b"))
    path = tmp_path / "s.toml"
    path.write_text(mmcore.parse_spec(spec).to_toml())
    assert mmcore.load_spec(path).training.stages[0].tasks == ["b"]  # the TOML round trip keeps the plan
    assert cli_main(["train", str(path), "--out", str(tmp_path / "o"), "--steps", "2"]) == 0
    steps = [h for h in _history(tmp_path / "o") if "loss" in h]
    assert len(steps) == 6 and {h["task"] for h in steps[:4]} == {"b"}  # --steps sets the last stage's length


# --- the time budget -------------------------------------------------------------------------------


def _timed(make, *args, **kw) -> Trainer:
    """A trainer on a fake clock under which every training step takes one second."""
    clock = {"t": 0.0}
    tr = make(*args, clock=lambda: clock["t"], **kw)
    step = tr.train_step

    def timed_step():
        out = step()
        clock["t"] += 1.0
        return out

    tr.train_step = timed_step
    return tr


def test_durations_parse():
    assert TrainingConfig(max_time="10m").max_time == 600
    assert TrainingConfig(max_time="1.5h").max_time == 5400
    assert TrainingConfig(max_time=" 90s").max_time == 90 and TrainingConfig(max_time="45").max_time == 45
    for bad in ("ten minutes", "-5m", 0):
        with pytest.raises(ValueError, match="max_time|duration"):
            TrainingConfig(max_time=bad)


def test_max_time_stops_cleanly_with_the_schedule_over_the_budget(tmp_path, manager):
    tr = _timed(_trainer, tmp_path, {"steps": 100, "max_time": 5.5, "eval_batches": 2})
    result = tr.fit()
    assert result.steps == 6 and result.stop_reason == "max_time"  # after step 6, 6 s >= 5.5 s
    out = tmp_path / "out"
    assert (out / "checkpoints" / "step-00000006").is_dir() and "a" in json.loads((out / "eval.json").read_text())
    lrs = [h["lr"] for h in _history(out) if "loss" in h]
    cfg = tr.cfg
    expected = [lr_at(cfg, tr.plan.stages[0], s, s / 5.5) for s in range(6)]
    assert lrs == pytest.approx(expected)
    assert lrs[-1] < 0.25 * cfg.lr < lr_at(cfg, tr.plan.stages[0], 5)  # decayed over the budget, not over 100 steps


def test_with_a_time_budget_the_warmup_ends_by_time_too():
    """A run slower than planned (fewer steps in its budget than training.steps) still reaches its
    peak rate once warmup_steps / steps of the time has passed, not only after warmup_steps steps."""
    cfg = TrainingConfig(steps=1500, lr=1e-3, warmup_steps=75, max_time=120)
    (stage,) = plan_stages(cfg, ["a"])
    assert lr_at(cfg, stage, 9) == pytest.approx(1e-3 * 10 / 75)  # no budget: by steps alone
    assert lr_at(cfg, stage, 9, 0.025) == pytest.approx(0.5e-3)  # half of the warmup's time: half the rate
    assert lr_at(cfg, stage, 9, 0.05) == pytest.approx(1e-3)  # its time is up at step 10: the peak
    assert lr_at(cfg, stage, 9, 0.525) == pytest.approx(1e-3 - 0.9e-3 * 0.5)  # then decays over the time left
    assert lr_at(cfg, stage, 60, 0.01) == pytest.approx(1e-3 * 61 / 75)  # a fast run: by steps, as before


def test_max_time_shares_the_budget_among_stages(tmp_path, manager):
    cfg = {"stages": [{"tasks": ["b"], "steps": 10}, {"steps": 30}], "max_time": 8.0}
    tr = _timed(_trainer, tmp_path, cfg, tasks=("a", "b"))
    result = tr.fit()
    steps = [h for h in _history(tmp_path / "out") if "loss" in h]
    assert result.steps == 8 and result.stop_reason == "max_time"
    assert {h["task"] for h in steps[:2]} == {"b"}  # stage 1 ends at its deadline, 8 * 10/40 = 2 s
    assert steps[2]["lr"] == pytest.approx(lr_at(tr.cfg, tr.plan.stages[1], 0, 0.0))  # stage 2's schedule from 0
