"""Objectives as components: the regression task, the contract, and a third-party task plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import torchrun

import mmcore
from mmcore.config import TaskConfig
from mmcore.data import BadRecord, ManifestDataset
from mmcore.errors import MMCoreError, SpecError
from mmcore.objectives import make_objective, task_attention

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def regression_spec(tmp_path: Path, outputs: int = 1, head: str = "regress", **task: object) -> dict:
    heads = {"y": {"component": head, **({"outputs": outputs} if head == "regress" else {"num_classes": 2})}}
    return {
        "spec_version": 1,
        "name": "reg",
        "backbone": {"width": 16, "depth": 1, "heads": 2, "context_length": 16},
        "encoders": {"x": {"component": "features", "features": 3}},
        "heads": heads,
        "tasks": {"fit": {"objective": "regression", "train": str(tmp_path / "train.jsonl"), **task}},
    }


def rows(n: int, outputs: int = 1, offset: float = 0.0) -> list[dict]:
    out = []
    for i in range(n):
        x = [i / n, 1.0 - i / n, (i % 3) / 3]
        y = [100.0 + 40.0 * x[0] - 10.0 * x[2] + offset + k for k in range(outputs)]
        out.append({"x": x, "y": y[0] if outputs == 1 else y})
    return out


def test_regression_standardisation_is_learned_from_the_training_set_and_saved(tmp_path, manager):
    write(tmp_path / "train.jsonl", rows(12, outputs=2))
    write(tmp_path / "eval.jsonl", rows(6, outputs=2, offset=5.0))
    spec = mmcore.parse_spec(regression_spec(tmp_path, outputs=2, eval=str(tmp_path / "eval.jsonl")))
    training = {"steps": 2, "batch_size": 4, "progress": False}
    tr = mmcore.Trainer(mmcore.build(spec), spec.tasks, training, out_dir=tmp_path / "run")
    ys = torch.tensor([r["y"] for r in rows(12, outputs=2)], dtype=torch.float64)
    head = tr.model.heads["y"]
    torch.testing.assert_close(head.target_mean.double(), ys.mean(0), rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(head.target_std.double(), ys.std(0, unbiased=False), rtol=1e-5, atol=1e-4)
    tr.fit()
    back = mmcore.load(tmp_path / "run")  # the model directory keeps it: predictions in the targets' units
    torch.testing.assert_close(back.heads["y"].target_mean.double(), ys.mean(0), rtol=1e-6, atol=1e-4)
    # the eval metrics are those of the predictions, by hand (R² against the eval set's own mean)
    from mmcore.evaluate import evaluate_dir

    m = evaluate_dir(tmp_path / "run", tmp_path / "eval.jsonl")["metrics"]
    ev = rows(6, outputs=2, offset=5.0)
    with torch.no_grad():
        pred = back(back.preprocess(ev), compute_loss=False).outputs["y"].logits.double()
    y = torch.tensor([r["y"] for r in ev], dtype=torch.float64)
    sse = (pred - y).pow(2).sum(0)
    r2 = (1 - sse / (y - y.mean(0)).pow(2).sum(0)).mean()
    assert m["mse"] == pytest.approx(float(sse.mean()) / 6, rel=1e-4)
    assert m["mae"] == pytest.approx(float((pred - y).abs().mean()), rel=1e-4)
    assert m["r2"] == pytest.approx(float(r2), rel=1e-4, abs=1e-6)
    assert m["samples"] == 6 and "accuracy" not in m


def test_a_float_target_is_checked_by_the_objectives_declaration(tmp_path, manager):
    write(tmp_path / "train.jsonl", rows(4))
    spec = mmcore.parse_spec(regression_spec(tmp_path))
    model = mmcore.build(spec)
    obj = make_objective(spec.tasks["fit"], model, "fit")
    bad = write(tmp_path / "bad.jsonl", [{"x": [0, 0, 0], "y": 1.5}, {"x": [0, 0, 0], "y": "tall"}])
    ds = ManifestDataset(bad, model.processors, {"x": "features"}, targets=obj.targets())
    assert ds[0]["targets"] == {"y": [1.5]}  # a float is a target now, not "must be an integer"
    got = ds[1]
    assert isinstance(got, BadRecord) and got.where == f"{bad}:2" and got.field == "y"
    assert "number" in got.reason


def test_spec_validate_checks_the_objective_and_its_head(tmp_path, manager):
    with pytest.raises(SpecError) as err:
        mmcore.parse_spec(regression_spec(tmp_path, head="classify"))
    assert "tasks.fit.objective" in str(err.value) and "head:regress" in str(err.value)
    bad = regression_spec(tmp_path)
    bad["tasks"]["fit"]["objective"] = "regresion"
    with pytest.raises(SpecError, match="did you mean 'regression'"):
        mmcore.parse_spec(bad)
    bad["tasks"]["fit"].update(objective="regression", options={"loss": "huber"})
    with pytest.raises(SpecError, match=r"tasks\.fit\.options\.loss"):
        mmcore.parse_spec(bad)
    mmcore.parse_spec(regression_spec(tmp_path, options={"loss": "mae"}))


def test_the_task_config_decides_head_and_attention_from_the_registration(manager):
    assert task_attention(TaskConfig(objective="prefix_lm", train="a")) == "prefix"
    assert task_attention(TaskConfig(objective="mlm", train="a")) == "bidirectional"
    assert task_attention(TaskConfig(objective="regression", train="a")) is None
    assert task_attention(TaskConfig(objective="regression", train="a", attention="causal")) == "causal"
    with pytest.raises(MMCoreError, match="unknown objective 'nope'"):
        task_attention(TaskConfig(objective="nope", train="a"))


def test_mmcore_plugins_lists_objectives(manager):
    out = subprocess.run([str(BIN / "mmcore"), "plugins"], capture_output=True, text=True, check=True).stdout
    for key in ("objective:lm", "objective:mlm", "objective:prefix_lm", "objective:classification"):
        assert key in out
    assert "objective:regression" in out


@pytest.mark.slow
def test_an_external_task_plugin_trains_and_evaluates_through_the_cli(tmp_path):
    """A distribution outside plugins/ (tests/fixtures/external) brings an encoder, a head and an
    objective with its own metric; pip installs it; mmcore train and mmcore eval run on it."""
    site = tmp_path / "site"
    dist = ROOT / "tests" / "fixtures" / "external" / "mmcore-tabular-fixture"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target"]
    subprocess.run([*pip, str(site), str(dist)], check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    data = [{"v": [x, 0.5 - x, 1.0], "sign": 1 if x > 0.2 else -1} for x in [i / 10 - 0.4 for i in range(16)]]
    write(tmp_path / "train.jsonl", data)
    write(tmp_path / "eval.jsonl", data[::2])
    (tmp_path / "spec.toml").write_text(
        'spec_version = 1\nname = "signs"\n[backbone]\nwidth = 16\ndepth = 1\nheads = 2\ncontext_length = 8\n'
        '[encoders.v]\ncomponent = "tabfix.vector"\nsize = 3\n[heads.s]\ncomponent = "tabfix.score"\n'
        "[training]\nsteps = 30\nbatch_size = 8\nlr = 0.01\nprogress = false\n"
        '[tasks.signs]\nobjective = "tabfix.hinge"\ntrain = "train.jsonl"\neval = "eval.jsonl"\noptions = {margin = 1.0}\n',
        encoding="utf-8",
    )

    def mmcore_cli(*args: str) -> str:
        res = subprocess.run([str(BIN / "mmcore"), *args], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        return res.stdout

    assert "objective:tabfix.hinge" in mmcore_cli("plugins")
    assert "spec.toml: ok" in mmcore_cli("spec", "validate", "--build", "spec.toml")
    trained = mmcore_cli("train", "spec.toml", "--out", "run")
    assert "sign_agreement" in trained
    result = json.loads(mmcore_cli("eval", "run", "eval.jsonl"))
    assert result["objective"] == "tabfix.hinge"
    assert result["metrics"]["sign_agreement"] >= 0.75 and result["metrics"]["loss"] >= 0
    # the kit's objective checks pass for the plugin's objective, as for the core's
    code = "from mmcore.testing import check_component; print(check_component('objective:tabfix.hinge'))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0 and "5 checks passed" in res.stdout, res.stderr
    # no core file names it
    core = [p for p in (ROOT / "mmcore").rglob("*.py") if "tabfix" in p.read_text(encoding="utf-8")]
    assert not core


def test_the_task_plugin_walkthrough_quotes_the_installed_fixture():
    """docs/plugins.md's task plugin code is the fixture the external-plugin test installs and runs."""
    import re

    page = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    section = page[page.index("### A task plugin: a head and its objective") : page.index("## 4. The conformance kit")]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    src = ROOT / "tests" / "fixtures" / "external" / "mmcore-tabular-fixture" / "src" / "mmcore_tabular_fixture"
    files = (src / "plugin.py").read_text(encoding="utf-8") + (src / "parts.py").read_text(encoding="utf-8")
    assert len(blocks) == 2 and all(b in files for b in blocks)


_SHARDED_EVAL = """
import json, os, sys
import torch, torch.distributed as dist
import mmcore
from mmcore.data import ManifestDataset
from mmcore.evaluate import evaluate_task
from mmcore.objectives import make_objective

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
spec = mmcore.parse_spec(json.loads(sys.argv[1]))
torch.manual_seed(0)
model = mmcore.build(spec).eval()
obj = make_objective(spec.tasks["fit"], model, "fit")
ds = ManifestDataset(spec.tasks["fit"].train, model.processors, {"x": "features"}, targets=obj.targets())
obj.setup(model, ds.iter_targets())
out = {"sharded": evaluate_task(model, obj, ds, model.processors, batch_size=2, rank=rank, world=world)}
if rank == 0:
    out["whole"] = evaluate_task(model, obj, ds, model.processors, batch_size=2)
    print(json.dumps(out))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_metric_states_are_summed_across_processes(tmp_path, manager):
    """Two processes each score their share of the records; the summed metric states give the
    metrics one process gets on all of them (R² is not a mean of per-process R²s)."""
    write(tmp_path / "train.jsonl", rows(7, outputs=2))
    (tmp_path / "eval.py").write_text(_SHARDED_EVAL, encoding="utf-8")
    spec = regression_spec(tmp_path, outputs=2)
    res = torchrun(tmp_path / "eval.py", json.dumps(spec), port=29547)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["sharded"]["samples"] == got["whole"]["samples"] == 7
    for k in ("loss", "mse", "mae", "r2"):
        assert got["sharded"][k] == pytest.approx(got["whole"][k], rel=1e-5, abs=1e-7), k
