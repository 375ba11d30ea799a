"""A training run as a user watches it: interrupts that save (real SIGINT/SIGTERM on a real
``mmcore train``), the live bar under a real pseudo-terminal, the plain lines, positions/s,
TensorBoard event files, the loss plot."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, single_thread_env, torchrun, train_cmd

import mmcore
from mmcore.errors import MMCoreError
from mmcore.interrupts import GracefulStop, TrainingInterrupted
from mmcore.trainer import Trainer

CORPUS = (ROOT / "mmcore" / "errors.py").read_text()


def _data(tmp: Path) -> tuple[Path, Path]:
    corpus = tmp / "corpus.txt"
    corpus.write_text(CORPUS)
    cls = tmp / "cls.jsonl"
    cls.write_text("".join(json.dumps({"text": f"item {i} " * (i % 4 + 1), "label": i % 3}) + "\n" for i in range(24)))
    return corpus, cls


def _spec_toml(tmp: Path, training: str, evals: bool = False) -> Path:
    """Two tasks (mlm and classification) on a tiny model with dropout: every piece of state counts."""
    corpus, cls = _data(tmp)
    spec = tmp / "spec.toml"
    ev = (f'eval = "{corpus}"\n', f'eval = "{cls}"\n') if evals else ("", "")
    spec.write_text(
        'spec_version = 1\nname = "ux"\n'
        "[backbone]\nwidth = 16\ndepth = 1\nheads = 2\ncontext_length = 32\ndropout = 0.1\n"
        '[encoders.text]\ncomponent = "text.bytes"\nmax_length = 32\n'
        '[heads.lm]\ncomponent = "lm"\n[heads.cls]\ncomponent = "classify"\nnum_classes = 3\n'
        f"[training]\nbatch_size = 4\nlr = 3e-3\n{training}\n"
        f'[tasks.lm]\nobjective = "mlm"\ntrain = "{corpus}"\nhead = "lm"\n{ev[0]}'
        f'[tasks.cls]\nobjective = "classification"\ntrain = "{cls}"\nhead = "cls"\n{ev[1]}'
    )
    return spec


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


# --- interrupts ----------------------------------------------------------------------------------

STEPS = 40  # far more than the run can train before the signal arrives


@pytest.fixture(scope="module")
def interrupt_case(tmp_path_factory):
    """The spec and its uninterrupted run (the reference the resumed runs must equal). A
    DataLoader worker process reads the records: a terminal's Ctrl-C reaches it too."""
    tmp = tmp_path_factory.mktemp("interrupt")
    spec = _spec_toml(tmp, f"steps = {STEPS}\nlog_every = 1\nprogress = false\ncheckpoint_every = 0\nnum_workers = 1")
    ref = tmp / "ref"
    subprocess.run(train_cmd(spec, ref), check=True, env=single_thread_env(), capture_output=True, timeout=300)
    return spec, ref


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_finishes_the_step_saves_and_the_rerun_resumes_bit_exact(interrupt_case, tmp_path, sig, code):
    """SIGINT or SIGTERM mid-run, sent to the whole process group as a terminal's Ctrl-C (and a
    scheduler) does, DataLoader worker included: the run finishes its step, writes that step's
    checkpoint (checkpoint_every = 0: only the interrupt writes one), says how to resume, exits
    128 + signal; the same command then resumes there and ends with the uninterrupted run's
    weights, bit for bit."""
    spec, ref = interrupt_case
    out = tmp_path / "run"
    proc = subprocess.Popen(
        train_cmd(spec, out),
        env=single_thread_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    metrics, deadline = out / "metrics.jsonl", time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # some steps trained
        if metrics.is_file() and metrics.read_text().count('"loss"') >= 3:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-3000:]
    latest = out / "checkpoints" / "latest"
    assert latest.is_file(), err[-3000:]
    name = latest.read_text().strip()
    step = int(name.split("-")[1])
    assert 3 <= step < STEPS
    assert f"{signal.Signals(sig).name}: finishing step" in err
    assert (
        f"interrupted at step {step}; checkpoint saved to {out / 'checkpoints' / name}; "
        "run the same command to resume" in err
    )
    assert _metrics(out)[-1]["step"] == step  # the step in progress was finished and logged
    assert not (out / "model.safetensors").exists()  # an interrupted run is not a finished model

    res = subprocess.run(train_cmd(spec, out), env=single_thread_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resuming from {out / 'checkpoints' / name} at step {step}" in res.stderr
    a, b = mmcore.load(ref).state_dict(), mmcore.load(out).state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    last, last_r = _metrics(ref)[-1], _metrics(out)[-1]
    assert last["step"] == last_r["step"] == STEPS
    assert last["loss"] == last_r["loss"] and last["running"] == last_r["running"]  # running losses resumed too


def test_a_second_signal_stops_at_once_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGINT)
    with GracefulStop(lambda: 41, announce=False) as stop:
        assert signal.getsignal(signal.SIGINT) != before
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # the handler runs between two bytecodes of the main thread
        assert stop.signum == signal.SIGINT  # the first is only recorded
        with pytest.raises(TrainingInterrupted) as info:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
        assert info.value.exit_code == 130 and info.value.checkpoint is None and info.value.step == 41
        assert isinstance(info.value, KeyboardInterrupt)  # a script stops as at Ctrl-C
    assert signal.getsignal(signal.SIGINT) == before
    with GracefulStop(announce=False) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert stop.signum == signal.SIGTERM
    assert TrainingInterrupted(signal.SIGTERM, 3, None, "x").exit_code == 143


#: ``mmcore train`` with steps slowed to 0.3 s, so that a second signal surely comes mid-step.
SLOW_STEPS = r"""
import sys, time
from mmcore.cli import main
from mmcore.trainer import Trainer
real = Trainer.train_step
def train_step(self):
    time.sleep(0.3)
    return real(self)
Trainer.train_step = train_step
sys.exit(main(["train", *sys.argv[1:]]))
"""


@pytest.mark.slow
def test_a_second_sigint_stops_a_real_run_at_once_without_saving(tmp_path):
    import threading

    spec = _spec_toml(tmp_path, "steps = 100\nlog_every = 1\nprogress = false\ncheckpoint_every = 0")
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_STEPS, str(spec), "--out", str(out)],
        env=single_thread_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()

    def wait_for(text: str) -> None:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not any(text in x for x in lines):
            time.sleep(0.01)

    wait_for("step      2/100")
    proc.send_signal(signal.SIGINT)
    wait_for("SIGINT: finishing step")
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    reader.join(timeout=10)
    err = "".join(lines)
    assert time.time() - t0 < 10, err  # at once: not after the run's remaining steps (30 s)
    assert "SIGINT again: stopped at once without saving" in err
    assert "checkpoint saved" not in err and not (out / "checkpoints").exists()


#: Under torchrun, only rank 1 gets SIGTERM (just before it trains step 3); both processes must
#: stop after the same step, write one checkpoint together and say so.
RANK_SIGNAL = r"""
import json, os, signal, sys
import mmcore
from mmcore.trainer import Trainer, TrainingInterrupted, train
import torch.distributed as dist

real = Trainer.train_step
def train_step(self):
    if self.step == 2 and self.rank == 1:
        os.kill(os.getpid(), signal.SIGTERM)
    return real(self)
Trainer.train_step = train_step
try:
    train(mmcore.load_spec(sys.argv[1]), out_dir=sys.argv[2])
    status = {"finished": True}
except TrainingInterrupted as exc:
    status = {"step": exc.step, "exit_code": exc.exit_code}
rank = dist.get_rank()
with open(os.path.join(sys.argv[2], f"status-{rank}.json"), "w") as f:
    json.dump(status, f)
"""


@pytest.mark.slow
def test_under_torchrun_every_process_stops_after_the_same_step(tmp_path):
    corpus, _ = _data(tmp_path)
    spec = tmp_path / "s.toml"
    spec.write_text(
        'spec_version = 1\nname = "ddp"\n[backbone]\nwidth = 16\ndepth = 1\nheads = 2\ncontext_length = 32\n'
        '[encoders.text]\ncomponent = "text.bytes"\nmax_length = 32\n[heads.lm]\ncomponent = "lm"\n'
        '[training]\nsteps = 40\nbatch_size = 4\nlr = 1e-3\nlog_every = 1\nprogress = false\ndevice = "cpu"\n'
        f'[tasks.lm]\nobjective = "lm"\ntrain = "{corpus}"\n'
    )
    script, out = tmp_path / "rank_signal.py", tmp_path / "out"
    script.write_text(RANK_SIGNAL)
    res = torchrun(script, str(spec), str(out), port=29523, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    status = [json.loads((out / f"status-{r}.json").read_text()) for r in (0, 1)]
    assert status == [{"step": 3, "exit_code": 143}] * 2  # rank 0 got no signal and stopped with rank 1
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000003"
    state = json.loads((out / "checkpoints" / "step-00000003" / "trainer_state.json").read_text())
    assert state["world"] == 2 and state["step"] == 3
    assert res.stderr.count("interrupted at step 3; checkpoint saved to") == 1  # said once, by rank 0


# --- progress: the bar on a terminal, the lines elsewhere -----------------------------------------


def _screen(raw: str, width: int) -> list[str]:
    """The screen a terminal shows after ``raw``: carriage returns, newlines, cursor up and
    erase-line (what tqdm writes), printable characters overwriting in place."""
    lines, row, col = [""], 0, 0
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\x1b":
            m = re.match(r"\x1b\[(\d*)([A-Za-z])", raw[i:])
            if m:
                n = int(m.group(1) or 1)
                if m.group(2) == "A":
                    row = max(row - n, 0)
                elif m.group(2) == "K":
                    lines[row] = lines[row][:col]
                i += m.end()
                continue
        if ch == "\r":
            col = 0
        elif ch == "\n":
            row, col = row + 1, 0
            if row == len(lines):
                lines.append("")
        elif ch.isprintable():
            if col == width:  # autowrap
                row, col = row + 1, 0
                if row == len(lines):
                    lines.append("")
            line = lines[row].ljust(col)
            lines[row] = line[:col] + ch + line[col + 1 :]
            col += 1
        i += 1
    return [x.rstrip() for x in lines]


def _run_in_pty(cmd: list[str], rows: int = 40, cols: int = 120, timeout: float = 120) -> str:
    """Run ``cmd`` with stdin, stdout and stderr on a new pseudo-terminal; everything it wrote."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env={**single_thread_env(), "TERM": "xterm"})
    os.close(slave)
    chunks, deadline = [], time.time() + timeout
    while time.time() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its side
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=30) == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_a_terminal_shows_a_live_bar_with_eval_results_above_it(tmp_path):
    spec = _spec_toml(tmp_path, "steps = 40\nlog_every = 5\neval_every = 20\neval_batches = 2", evals=True)
    raw = _run_in_pty(train_cmd(spec, tmp_path / "out"), cols=120)
    screen = _screen(raw, 120)
    (tmp_path / "screen.txt").write_text("\n".join(screen))
    bars = [i for i, line in enumerate(screen) if line.startswith("train ")]
    assert bars, "\n".join(screen)
    final = screen[bars[-1]]
    assert re.match(
        r"train 40/40 \|█+\| \[\d\d:\d\d<00:00\] loss lm \d+\.\d{3} cls \d+\.\d{3}  lr \d\.\de-\d\d  ", final
    ), final
    assert final.endswith(" pos/s")
    evals = [i for i, line in enumerate(screen) if re.match(r"step +20  eval  lm: loss", line)]
    assert evals and evals[0] < bars[-1]  # printed above the bar, which went on below it
    assert not any(re.match(r"step +\d+/40", line) for line in screen)  # no plain lines on a terminal
    frames = {int(n) for n in re.findall(r"train (\d+)/40", raw)}
    assert frames & set(range(1, 40)), sorted(frames)  # the bar moved while training (live)
    assert "  positions/s: real positions of the fused sequences per second, all processes together;" in screen


def test_without_a_terminal_each_line_has_every_tasks_running_loss(tmp_path, manager, capsys):
    spec = mmcore.load_spec(_spec_toml(tmp_path, "steps = 8\nlog_every = 2\nprogress = true"))
    Trainer(mmcore.build(spec), spec.tasks, spec.training, out_dir=tmp_path / "out").fit()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if re.match(r"step +\d+/8", line)]
    assert len(lines) == 4, err
    hist = [h for h in _metrics(tmp_path / "out") if "loss" in h]
    for line, h in zip(lines, hist, strict=True):
        assert h["running"] and set(h["running"]) <= {"lm", "cls"}
        want = " ".join(f"{t} {v:.4f}" for t, v in h["running"].items())
        assert f"loss {want}  lr {h['lr']:.2e}  " in line and "positions/s  ETA " in line, line
    assert set(hist[-1]["running"]) == {"lm", "cls"}  # after 8 steps both tasks have trained
    assert "running loss per task, lr, positions/s\n  positions/s: real positions of the fused sequences" in err


def test_running_loss_is_the_bias_corrected_moving_average_of_each_tasks_losses(tmp_path, manager):
    spec = mmcore.load_spec(_spec_toml(tmp_path, "steps = 12\nlog_every = 1\nprogress = false"))
    Trainer(mmcore.build(spec), spec.tasks, spec.training, out_dir=tmp_path / "out").fit()
    hist = [h for h in _metrics(tmp_path / "out") if "loss" in h]
    avg: dict[str, float] = {}
    n: dict[str, int] = {}
    for h in hist:
        t = h["task"]
        avg[t] = 0.9 * avg.get(t, 0.0) + 0.1 * h["loss"]
        n[t] = n.get(t, 0) + 1
        for task in avg:
            assert h["running"][task] == pytest.approx(avg[task] / (1 - 0.9 ** n[task]), abs=1e-5)
    assert len(avg) == 2


def test_positions_count_every_inputs_fused_positions(tmp_path, manager):
    """positions: the fused sequence's real positions, the image's patches included (not only
    the text tokens, which is what the log counted for one task and not another before)."""
    from PIL import Image

    records = []
    for i in range(8):
        Image.new("L", (8, 8), color=i * 30).save(tmp_path / f"{i}.png")
        records.append({"image": f"{i}.png", "target": ["zero", "one"][i % 2]})
    (tmp_path / "cap.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    spec = mmcore.parse_spec(
        {
            "spec_version": 1,
            "name": "cap",
            "backbone": {"width": 16, "depth": 1, "heads": 2, "context_length": 64},
            "encoders": {
                "image": {
                    "component": "vision.patch",
                    "image_size": 8,
                    "patch_size": 2,
                    "channels": 1,
                    "dim": 16,
                    "depth": 1,
                },
                "text": {"component": "text.bytes", "max_length": 16},
            },
            "heads": {"lm": {"component": "lm"}},
            "training": {"steps": 1, "batch_size": 4, "progress": False},
            "tasks": {"cap": {"objective": "prefix_lm", "train": str(tmp_path / "cap.jsonl")}},
        }
    )
    tr = Trainer(mmcore.build(spec), spec.tasks, spec.training)
    seen = []
    real = tr._next_batch

    def recording(task):
        batch = real(task)
        seen.append(batch)
        return batch

    tr._next_batch = recording
    last = tr.train_step()
    text = int(seen[0].inputs["text"]["mask"].sum())
    patches = 4 * (8 // 2) ** 2  # four images of 16 patches each
    assert last["positions"] >= text + patches  # plus boundary tokens


# --- TensorBoard ----------------------------------------------------------------------------------


def test_tensorboard_event_files_hold_the_logged_scalars(tmp_path, manager):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec = mmcore.load_spec(
        _spec_toml(
            tmp_path,
            'steps = 6\nlog_every = 2\neval_every = 3\neval_batches = 1\nprogress = false\nlog_to = ["jsonl", "tensorboard"]',
            evals=True,
        )
    )
    out = tmp_path / "out"
    Trainer(mmcore.build(spec), spec.tasks, spec.training, out_dir=out).fit()
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    hist = _metrics(out)
    train = [h for h in hist if "loss" in h]

    def scalars(tag: str) -> list[tuple[int, float]]:
        return [(e.step, e.value) for e in acc.Scalars(tag)]

    assert scalars("train/lr") == [(h["step"], pytest.approx(h["lr"], rel=1e-6)) for h in train]
    assert scalars("train/positions_per_s") == [
        (h["step"], pytest.approx(h["positions_per_s"], rel=1e-5)) for h in train
    ]
    for task in ("lm", "cls"):
        assert scalars(f"train/{task}/running_loss") == [
            (h["step"], pytest.approx(h["running"][task], rel=1e-5)) for h in train if task in h["running"]
        ]
        evals = [(h["step"], pytest.approx(h["eval"][task]["loss"], rel=1e-5)) for h in hist if "eval" in h]
        assert len(evals) == 2 and scalars(f"eval/{task}/loss") == evals
    assert "eval/cls/accuracy" in tags and any(t.startswith("train/") and t.endswith("/loss") for t in tags)


def test_tensorboard_is_off_by_default_and_its_absence_is_a_clear_error(tmp_path, manager, monkeypatch):
    spec = mmcore.load_spec(_spec_toml(tmp_path, "steps = 2\nprogress = false"))
    assert spec.training.log_to == ["jsonl"]
    Trainer(mmcore.build(spec), spec.tasks, spec.training, out_dir=tmp_path / "a").fit()
    assert not (tmp_path / "a" / "tensorboard").exists()
    only_tb = spec.training.model_copy(update={"log_to": ["tensorboard"]})
    Trainer(mmcore.build(spec), spec.tasks, only_tb, out_dir=tmp_path / "b").fit()
    assert list((tmp_path / "b" / "tensorboard").glob("events.out.tfevents.*"))
    assert not (tmp_path / "b" / "metrics.jsonl").exists()  # jsonl left out of log_to
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    with pytest.raises(MMCoreError, match=r'pip install "mmcore\[tensorboard\]"'):
        Trainer(mmcore.build(spec), spec.tasks, only_tb, out_dir=tmp_path / "c").fit()
    with pytest.raises(Exception, match="log_to"):
        spec.training.model_validate({"log_to": ["wandb"]})


# --- the plot -----------------------------------------------------------------------------------


def test_the_loss_plot_has_axes_legend_a_colour_per_task_and_the_lr(tmp_path, manager):
    from mmcore.plot import figure

    spec = mmcore.load_spec(
        _spec_toml(
            tmp_path, "steps = 12\nlog_every = 1\neval_every = 6\neval_batches = 1\nprogress = false", evals=True
        )
    )
    out = tmp_path / "out"
    Trainer(mmcore.build(spec), spec.tasks, spec.training, out_dir=out).fit()
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = figure(_metrics(out))
    ax, lr_ax = fig.axes
    assert ax.get_xlabel() == "step" and ax.get_ylabel() == "loss" and lr_ax.get_ylabel() == "learning rate"
    lines = {line.get_label(): line for line in ax.get_lines()}
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    for task in ("lm", "cls"):
        raw, run, ev = lines[f"{task} train (steps)"], lines[f"{task} train (running)"], lines[f"{task} eval"]
        assert raw.get_color() == run.get_color() == ev.get_color()  # one colour per task
        assert raw.get_alpha() < 0.5 and run.get_alpha() in (None, 1)  # raw faint, smoothed solid
        assert ev.get_marker() == "o" and ev.get_linestyle() == "--" and run.get_marker() in ("None", None, "")
        assert {f"{task} train (running)", f"{task} eval"} <= set(legend)
    assert lines["lm train (running)"].get_color() != lines["cls train (running)"].get_color()
    assert "learning rate" in legend
    lr = [h["lr"] for h in _metrics(out) if "lr" in h]
    assert list(lr_ax.get_lines()[0].get_ydata()) == lr


def test_without_matplotlib_no_plot_is_written_and_the_run_says_so(tmp_path, manager, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    spec = mmcore.load_spec(_spec_toml(tmp_path, "steps = 2\nprogress = false"))
    Trainer(mmcore.build(spec), spec.tasks, spec.training, out_dir=tmp_path / "out").fit()
    assert not (tmp_path / "out" / "loss.png").exists()
    assert 'loss.png not written: matplotlib is not installed (pip install "mmcore[plot]")' in capsys.readouterr().err
