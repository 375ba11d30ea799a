"""Fault injection: SIGKILL during training and checkpoint writing, a full disk while saving,
plugins whose factories fail or return the wrong type, DataLoader workers that die.

Kills come two ways: at a chosen file-system operation of the run (every ``os.replace``,
``os.fsync``, ``shutil`` copy/removal and safetensors write counts as one; a kill after a
safetensors write first cuts the file in half, a torn write), and from outside after a random
delay. After every kill the checkpoint that ``checkpoints/latest`` names must load, and once a
run completes its final weights must equal those of an uninterrupted run, bit for bit.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from torch import nn

import mmcore
from mmcore.checkpoint import read_safetensors
from mmcore.errors import MMCoreError, PluginError

#: Runs a spec's training in a child process; KILL_AT=n SIGKILLs it at file-system operation n,
#: KILL_AT_STEP=n just before it trains step n.
CHILD = r"""
import os, shutil, signal, sys
kill_at, active, n = int(os.environ.get("KILL_AT", "0")), [False], [0]

def tick(torn=None):
    if not active[0]:
        return
    n[0] += 1
    if n[0] == kill_at:
        if torn and os.path.isfile(torn):  # a torn write: half the file reached the disk
            with open(torn, "r+b") as f:
                f.truncate(os.path.getsize(torn) // 2)
        os.kill(os.getpid(), signal.SIGKILL)

def wrap(mod, name, torn=False):
    real = getattr(mod, name)
    def f(*a, **k):
        if not torn:
            tick()
        r = real(*a, **k)
        if torn:
            tick(str(a[1]) if len(a) > 1 else None)
        return r
    setattr(mod, name, f)

import safetensors.torch
for mod, name in ((os, "replace"), (os, "rename"), (os, "fsync"), (shutil, "rmtree"), (shutil, "copytree"),
                  (shutil, "copy2")):
    wrap(mod, name)
wrap(safetensors.torch, "save_file", torn=True)
import mmcore
from mmcore.trainer import Trainer, train
kill_step = int(os.environ.get("KILL_AT_STEP", "0"))  # SIGKILL just before training this step
if kill_step:
    real_step = Trainer.train_step
    def train_step(self):
        if self.step + 1 == kill_step:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_step(self)
    Trainer.train_step = train_step
active[0] = True
train(mmcore.load_spec(sys.argv[1]), out_dir=sys.argv[2])
active[0] = False
if os.environ.get("COUNT_FILE"):
    open(os.environ["COUNT_FILE"], "w").write(str(n[0]))
"""


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}
    env.pop("KILL_AT", None)
    env.pop("KILL_AT_STEP", None)
    env.update(extra)
    return env


def _spec(tmp: Path, steps: int = 6) -> Path:
    corpus = tmp / "corpus.txt"
    corpus.write_text((ROOT / "mmcore" / "errors.py").read_text())
    cls = tmp / "cls.jsonl"
    cls.write_text("".join(json.dumps({"text": f"item {i} " * (i % 4 + 1), "label": i % 3}) + "\n" for i in range(24)))
    spec = tmp / "spec.toml"
    spec.write_text(
        'spec_version = 1\nname = "faults"\n'
        "[backbone]\nwidth = 16\ndepth = 1\nheads = 2\ncontext_length = 32\ndropout = 0.1\n"
        '[encoders.text]\ncomponent = "text.bytes"\nmax_length = 32\n'
        '[heads.lm]\ncomponent = "lm"\n[heads.cls]\ncomponent = "classify"\nnum_classes = 3\n'
        f"[training]\nsteps = {steps}\nbatch_size = 4\ncheckpoint_every = 2\nkeep_checkpoints = 2\nlog_every = 1\n"
        "progress = false\n"
        f'[tasks.lm]\nobjective = "mlm"\ntrain = "{corpus}"\nhead = "lm"\n'
        f'[tasks.cls]\nobjective = "classification"\ntrain = "{cls}"\nhead = "cls"\n'
    )
    return spec


def _run(
    spec: Path, out: Path, *, kill_at: int = 0, count: Path | None = None, timeout: float = 300, kill_step: int = 0
) -> int:
    return _run_logged(spec, out, kill_at=kill_at, count=count, timeout=timeout, kill_step=kill_step).returncode


def _run_logged(
    spec: Path, out: Path, *, kill_at: int = 0, count: Path | None = None, timeout: float = 300, kill_step: int = 0
) -> subprocess.CompletedProcess:
    env = _env(KILL_AT=str(kill_at), KILL_AT_STEP=str(kill_step), **({"COUNT_FILE": str(count)} if count else {}))
    res = subprocess.run(
        [sys.executable, "-c", CHILD, str(spec), str(out)], env=env, capture_output=True, text=True, timeout=timeout
    )
    if kill_at == 0 and kill_step == 0:
        assert res.returncode == 0, res.stderr[-3000:]
    return res


def _check_latest(out: Path, metrics: bool = True) -> str | None:
    """The checkpoint `latest` names is complete and loads; returns its name."""
    latest = out / "checkpoints" / "latest"
    if not latest.is_file():
        return None
    name = latest.read_text().strip()
    d = out / "checkpoints" / name
    assert (d / "trainer_state.json").is_file(), f"latest names an incomplete checkpoint {name}"
    state = json.loads((d / "trainer_state.json").read_text())
    assert state["step"] == int(name.split("-")[1])
    mmcore.load(d)  # checksums verified
    tensors, _ = read_safetensors(d / "optimizer.safetensors")
    assert "rng.torch" in tensors
    assert not metrics or (out / "metrics.jsonl").is_file()  # nothing the run wrote before is lost
    return name


def _same_weights(a: Path, b: Path) -> None:
    sa, sb = mmcore.load(a).state_dict(), mmcore.load(b).state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _kill_and_resume(tmp: Path, op_kills: int, timed_kills: int, seed: int) -> list[str]:
    spec = _spec(tmp)
    ref, count = tmp / "ref", tmp / "count.txt"
    t0 = time.perf_counter()
    _run(spec, ref, count=count)
    ref_seconds = time.perf_counter() - t0
    total = int(count.read_text())
    assert total > 20  # checkpoints and the final save make many file operations
    rng = random.Random(seed)
    out, log, best = tmp / "killed", [], ""

    def check(what: str) -> None:
        nonlocal best
        latest = _check_latest(out) or ""
        assert latest >= best, f"{what}: the latest checkpoint went back from {best} to {latest or 'none'}"
        best = latest
        log.append(f"{what}: latest={latest or 'none'}")

    for k in rng.sample(range(1, total + 1), op_kills):
        rc = _run(spec, out, kill_at=k)
        if rc == 0:  # a resumed run has fewer operations left than k: it completed
            _same_weights(ref, out)
            log.append(f"op {k}/{total}: completed, same weights; starting over")
            shutil.rmtree(out)
            best = ""
            continue
        assert rc == -signal.SIGKILL, f"the run failed at operation {k} (rc {rc})"
        check(f"op {k}/{total}")
    for _ in range(timed_kills):  # from outside, at a random moment once training has begun
        launched = time.time()
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(spec), str(out)],
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        metrics, deadline = out / "metrics.jsonl", time.perf_counter() + ref_seconds * 3
        while time.perf_counter() < deadline and proc.poll() is None:
            if metrics.is_file() and metrics.stat().st_mtime > launched:  # fit() has (re)written it
                break
            time.sleep(0.02)
        delay = rng.uniform(0.0, 1.5)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        rc = proc.wait()
        check(f"{delay:.2f}s into training" + (" (had completed)" if rc == 0 else ""))
    _run(spec, out)  # completes, resuming from the last checkpoint
    _same_weights(ref, out)
    return log


def test_sigkill_during_training_and_checkpoint_writing_then_resume_matches(tmp_path):
    log = _kill_and_resume(tmp_path, op_kills=1, timed_kills=1, seed=1)
    assert len(log) == 2


def test_sigkill_between_checkpoints_resumes_every_piece_of_state(tmp_path):
    """SIGKILL after the checkpoint of step 4 and before the end (step 8), with dropout and two
    tasks: the rerun resumes from step 4 and ends with the uninterrupted run's weights, bit for
    bit, which needs the weights, the optimizer, the torch RNG (dropout) and every task's
    position in its data restored."""
    spec = _spec(tmp_path, steps=8)
    assert "dropout = 0.1" in spec.read_text() and spec.read_text().count("[tasks.") == 2
    ref, out = tmp_path / "ref", tmp_path / "killed"
    _run(spec, ref)
    killed = _run_logged(spec, out, kill_step=6)  # checkpoints at steps 2 and 4; killed before step 6
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert _check_latest(out) == "step-00000004"
    assert "step      5/8" in killed.stderr and "step      6/8" not in killed.stderr  # it trained past the checkpoint
    resumed = _run_logged(spec, out)
    assert f"resuming from {out / 'checkpoints' / 'step-00000004'} at step 4" in resumed.stderr
    assert "step      4/8" not in resumed.stderr and "step      5/8" in resumed.stderr
    _same_weights(ref, out)
    tasks = {json.loads(x).get("task") for x in (out / "metrics.jsonl").read_text().splitlines()}
    assert {"lm", "cls"} <= tasks  # both tasks trained


@pytest.mark.slow
def test_sigkill_many_times_then_resume_matches(tmp_path):
    seed = int(os.environ.get("MMCORE_FAULT_SEED", "7"))
    log = _kill_and_resume(tmp_path, op_kills=12, timed_kills=6, seed=seed)
    print("\n".join(log))
    assert len(log) == 18
    record = os.environ.get("MMCORE_FAULT_LOG")  # bench/results_faults_long.json: docs/security.md quotes it
    if record:
        from mmcore import atomic_write_text

        total = {int(x.split()[1].split("/")[1].rstrip(":")) for x in log if x.startswith("op ")}
        atomic_write_text(
            record,
            json.dumps(
                {
                    "command": "MMCORE_FAULT_LOG=bench/results_faults_long.json python -m pytest "
                    "tests/test_faults.py -k test_sigkill_many_times_then_resume_matches",
                    "seed": seed,
                    "kills": len(log),
                    "kills_at_file_operations": sum(x.startswith("op ") for x in log),
                    "timed_kills": sum(not x.startswith("op ") for x in log),
                    "file_operations_of_a_run": total.pop() if len(total) == 1 else sorted(total),
                    "completed_runs_bit_identical": True,  # _same_weights asserted it for each
                    "log": log,
                },
                indent=2,
            )
            + "\n",
        )


# --- a full disk -------------------------------------------------------------------------


def _trainer(tmp: Path, steps: int = 4):
    from mmcore.trainer import Trainer

    spec = mmcore.load_spec(_spec(tmp, steps=steps))
    torch.manual_seed(0)
    model = mmcore.build(spec)
    return Trainer(model, spec.tasks, spec.training, out_dir=tmp / "out")


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["weights", "fsync", "optimizer", "trainer_state"])
def test_full_disk_while_saving_a_checkpoint(tmp_path, monkeypatch, manager, where):
    """ENOSPC at any write of the second checkpoint: a clear error naming the folder; the first stays intact."""
    import safetensors.torch

    trainer = _trainer(tmp_path)
    trainer.train_step()
    trainer.train_step()
    first = trainer.save_checkpoint()
    assert first is not None and _check_latest(tmp_path / "out", metrics=False) == first.name
    before = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    trainer.train_step()
    trainer.train_step()
    calls = {"n": 0}
    real_save, real_fsync = safetensors.torch.save_file, os.fsync
    if where == "weights":  # the model weights: half written, then the disk is full

        def save_file(tensors, path, *a, **k):
            Path(path).write_bytes(b"\0" * 100)
            _enospc()

        monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    elif where == "fsync":
        monkeypatch.setattr(os, "fsync", _enospc)
    elif where == "optimizer":  # the second save_file of the checkpoint

        def save_file(tensors, path, *a, **k):
            calls["n"] += 1
            if calls["n"] == 2:
                _enospc()
            return real_save(tensors, path, *a, **k)

        monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    else:
        import mmcore.trainer_checkpoints as tr  # where the trainer writes its checkpoints

        monkeypatch.setattr(tr, "atomic_write_text", lambda *a, **k: _enospc())
    with pytest.raises(MMCoreError) as exc:
        trainer.save_checkpoint()
    msg = str(exc.value)
    assert "No space left on device" in msg and str(tmp_path / "out") in msg, msg
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    monkeypatch.setattr(os, "fsync", real_fsync)
    # the first checkpoint is untouched and still the latest; no temporary folders are left behind
    assert _check_latest(tmp_path / "out", metrics=False) == first.name
    after = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    for p, data in before.items():
        assert after.get(p) == data, p
    leftovers = [p.name for p in (tmp_path / "out" / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers


# --- plugins that fail while a model is built -------------------------------------------------


class _NotAModule:
    out_dim = 16


def _bad_plugin(fake_ep, fake_dist, plugin_module, kind: str, factory):
    from mmcore import Component, plugins
    from mmcore.config import ComponentConfig

    comps = {
        "encoder": Component("encoder", "bad.enc", ComponentConfig, factory, modality="text"),
        "fusion": Component("fusion", "bad_fusion", ComponentConfig, factory),
        "head": Component("head", "bad_head", ComponentConfig, factory),
    }
    mod = plugin_module("badplug", lambda: [comps[kind]])
    ep = fake_ep("badplug", "badplug:plugin", fake_dist("mmcore-badplug", "6.6"), loader=lambda: mod)
    pm = plugins.PluginManager()
    pm.load_entrypoints([ep])
    spec = {
        "spec_version": 1,
        "backbone": {"width": 16, "depth": 1, "heads": 2},
        "encoders": {"text": {"component": "bad.enc" if kind == "encoder" else "text.bytes"}},
        "fusion": {"component": "bad_fusion" if kind == "fusion" else "early"},
        "heads": {"h": {"component": "bad_head" if kind == "head" else "lm"}},
    }
    return pm, spec


def _raises(*a, **k):
    raise RuntimeError("kaput")


@pytest.mark.parametrize("kind", ["encoder", "fusion", "head"])
@pytest.mark.parametrize(
    "factory,match",
    [
        (_raises, "RuntimeError: kaput"),
        (lambda *a, **k: "a string", "returned str, not a torch.nn.Module"),
        (lambda *a, **k: None, "returned NoneType"),
        (lambda *a, **k: _NotAModule(), "returned _NotAModule"),
    ],
    ids=["raises", "str", "none", "not-a-module"],
)
def test_plugin_factory_failures_name_the_plugin(fake_ep, fake_dist, plugin_module, manager, kind, factory, match):

    pm, spec = _bad_plugin(fake_ep, fake_dist, plugin_module, kind, factory)
    with pytest.raises(PluginError, match=match) as exc:
        mmcore.build(spec, registry=pm.registry)
    assert "mmcore-badplug 6.6" in str(exc.value)


def test_plugin_fusion_inserts_and_processor_of_the_wrong_type_name_the_plugin(
    fake_ep, fake_dist, plugin_module, manager
):
    from mmcore import Component, plugins
    from mmcore.config import ComponentConfig
    from mmcore.fusion import EarlyFusion

    class BadInserts(EarlyFusion):
        def inserts(self):
            return {0: "not a layer"}

    def fusion(config, *, width, encoders, backbone):
        f = BadInserts.__new__(BadInserts)
        nn.Module.__init__(f)
        return f

    comps = [
        Component("fusion", "bad_fusion", ComponentConfig, fusion),
        Component(
            "encoder",
            "bad.enc",
            ComponentConfig,
            lambda config, **k: nn.Linear(2, 16),
            modality="text",
            processor=lambda config: "not a processor",
        ),
    ]
    mod = plugin_module("badplug", lambda: comps)
    ep = fake_ep("badplug", "badplug:plugin", fake_dist("mmcore-badplug", "6.6"), loader=lambda: mod)
    pm = plugins.PluginManager()
    pm.load_entrypoints([ep])
    base = {"spec_version": 1, "backbone": {"width": 16, "depth": 1, "heads": 2}, "heads": {"h": {"component": "lm"}}}
    for spec, match in (
        ({**base, "encoders": {"t": {"component": "text.bytes"}}, "fusion": {"component": "bad_fusion"}}, "inserts"),
        ({**base, "encoders": {"t": {"component": "bad.enc"}}}, "not a Processor"),
    ):
        with pytest.raises(PluginError, match=match) as exc:
            mmcore.build(spec, registry=pm.registry)
        assert "mmcore-badplug 6.6" in str(exc.value)


# --- DataLoader workers that die --------------------------------------------------------------


class ExitingProcessor:
    """Wraps a text processor; exits the process (as a crashing C extension would) on the text "BOOM"."""

    modality = "text"

    def __init__(self, inner):
        self.inner = inner
        self.training = False

    def __call__(self, value, *, where=""):
        import multiprocessing

        if value == "BOOM" and multiprocessing.parent_process() is not None:
            os._exit(3)
        return self.inner(value, where=where)

    def __getattr__(self, name):
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def _worker_trainer(tmp: Path, policy: str):
    from mmcore.trainer import Trainer

    recs = [{"text": f"record {i}", "label": i % 2} for i in range(8)]
    recs[5]["text"] = "BOOM"
    data = tmp / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    spec = mmcore.parse_spec(
        {
            "spec_version": 1,
            "backbone": {"width": 16, "depth": 1, "heads": 2, "context_length": 32},
            "encoders": {"text": {"component": "text.bytes", "max_length": 32}},
            "heads": {"cls": {"component": "classify", "num_classes": 2}},
        }
    )
    model = mmcore.build(spec)
    model.processors["text"] = ExitingProcessor(model.processors["text"])
    training = {"steps": 2, "batch_size": 8, "num_workers": 1, "on_bad_record": policy, "progress": False}
    task = {"cls": {"objective": "classification", "train": str(data)}}
    return Trainer(model, task, training), data


@pytest.mark.slow
def test_dying_worker_is_traced_to_its_record_and_skipped(tmp_path, manager):
    trainer, data = _worker_trainer(tmp_path, "skip")
    result = trainer.fit()
    assert result.steps == 2
    assert result.bad_records == {"cls": 1}  # the record, met in each of the 2 batches (8 records a batch), once
    assert trainer.tasks["cls"].excluded == {5: "processing this record killed the DataLoader worker process"}


def test_dying_worker_stops_the_run_naming_the_record(tmp_path, manager):
    trainer, data = _worker_trainer(tmp_path, "error")
    with pytest.raises(mmcore.trainer.DataError, match=rf"{data}:6: processing this record killed the DataLoader"):
        trainer.fit()
