"""FSDP2 under torchrun on 2 CPU processes (gloo): sharded checkpoints written by every process
with torch.distributed.checkpoint, a SIGKILL between checkpoints, resume, and the
consolidation of a sharded checkpoint into an ordinary model directory (mmcore/sharded.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_faults import CHILD, _env

import mmcore
from mmcore.sharded import consolidate, is_sharded
from mmcore.trainer import train


def _spec(tmp: Path, extra: str = "") -> Path:
    data = tmp / "d.jsonl"
    data.write_text("".join(json.dumps({"text": f"record {i} " + "abc " * (1 + i % 5)}) + "\n" for i in range(32)))
    spec = tmp / "s.toml"
    spec.write_text(
        'spec_version = 1\nname = "fsdp"\n[backbone]\nwidth = 32\ndepth = 2\nheads = 4\ncontext_length = 64\n'
        '[encoders.text]\ncomponent = "text.bytes"\nmax_length = 64\n[heads.lm]\ncomponent = "lm"\n'
        "[training]\nsteps = 6\nbatch_size = 8\nlog_every = 1\ncheckpoint_every = 2\nkeep_checkpoints = 3\n"
        'progress = false\ndevice = "cpu"\ndistributed = "fsdp"\n'
        f'{extra}[tasks.lm]\nobjective = "lm"\ntrain = "{data}"\n'
    )
    return spec


def _torchrun(tmp: Path, spec: Path, out: Path, port: int, **env: str) -> subprocess.CompletedProcess:
    script = tmp / "child.py"
    script.write_text(CHILD)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    return subprocess.run(
        [*cmd, str(script), str(spec), str(out)], env=_env(**env), capture_output=True, text=True, timeout=300
    )


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5, msg=k)


def test_fsdp_sharded_checkpoint_sigkill_resume_and_consolidate(tmp_path):
    spec = _spec(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    train(mmcore.load_spec(spec), out_dir=one)  # one process: no sharding

    killed = _torchrun(tmp_path, spec, two, 29531, KILL_AT_STEP="5")  # both processes, before step 5
    assert killed.returncode != 0 and "exitcode  : -9" in killed.stderr, killed.stderr[-3000:]
    ckpts = two / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step-00000004"
    four = ckpts / "step-00000004"
    assert is_sharded(four) and not (four / "model.safetensors").exists()  # no process gathered the model
    assert sorted(p.name for p in (four / "sharded").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    state = json.loads((four / "trainer_state.json").read_text())
    assert state["world"] == 2 and state["step"] == 4 and state["format"] == "sharded"

    resumed = _torchrun(tmp_path, spec, two, 29532)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {four} at step 4" in resumed.stderr

    def losses(d: Path) -> list[float]:
        return [json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]

    assert len(losses(two)) == 6 and losses(two) == pytest.approx(losses(one), abs=1e-5)
    reference = mmcore.load(one).state_dict()
    _close(mmcore.load(two).state_dict(), reference)  # the final model directory (gathered on rank 0)
    out = consolidate(ckpts / "step-00000006", tmp_path / "consolidated")  # the last sharded checkpoint
    _close(mmcore.load(out).state_dict(), reference)
    # the checkpoint of step 4 holds the weights of step 4, not of the end
    early = mmcore.load(consolidate(four, tmp_path / "four")).state_dict()
    assert any(not torch.allclose(early[k], reference[k]) for k in reference)


def test_consolidate_refuses_an_ordinary_folder(tmp_path):
    with pytest.raises(mmcore.ModelDirError, match="not a sharded checkpoint"):
        consolidate(tmp_path, tmp_path / "out")


@pytest.mark.slow
def test_fsdp_with_lora_matches_one_process(tmp_path):
    """LoRA adapters under FSDP2: only the adapters train, and the final and consolidated
    weights match one process."""
    spec = _spec(tmp_path, extra='[backbone.lora]\nrank = 4\ntargets = ["qkv", "proj"]\n')
    one, two = tmp_path / "one", tmp_path / "two"
    train(mmcore.load_spec(spec), out_dir=one)
    res = _torchrun(tmp_path, spec, two, 29533)
    assert res.returncode == 0, res.stderr[-3000:]
    reference = mmcore.load(one).state_dict()
    assert any(".lora_A" in k for k in reference)
    _close(mmcore.load(two).state_dict(), reference)
    _close(mmcore.load(consolidate(two / "checkpoints" / "step-00000006", tmp_path / "c")).state_dict(), reference)


@pytest.mark.slow
def test_fsdp_resume_with_dropout_matches_an_uninterrupted_fsdp_run(tmp_path):
    """With dropout, the resumed run equals an uninterrupted 2-process run only if every process's
    random generator is restored from its rng-rank<R>.safetensors."""
    spec = _spec(tmp_path)
    text = spec.read_text().replace("context_length = 64\n", "context_length = 64\ndropout = 0.1\n", 1)
    spec.write_text(text)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert _torchrun(tmp_path, spec, whole, 29534).returncode == 0
    first = _torchrun(tmp_path, spec, killed, 29535, KILL_AT_STEP="5")
    assert first.returncode != 0 and "exitcode  : -9" in first.stderr, first.stderr[-3000:]
    resumed = _torchrun(tmp_path, spec, killed, 29536)
    assert resumed.returncode == 0 and "at step 4" in resumed.stderr, resumed.stderr[-3000:]
    a, b = mmcore.load(whole).state_dict(), mmcore.load(killed).state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
