"""The figures of docs/training.md, "Watching a run", from one real run.

Makes the digits data (examples/recipes/digits_av.py: images, keypad tones, the digits' names),
trains a small image + audio + text model on two tasks (captions, transcriptions) with
``mmcore train`` under a pseudo-terminal, and writes what the terminal showed at the end
(``docs/img/training_screen.txt``) and the run's ``loss.png`` (``docs/img/loss.png``); then runs
the same command again with its output to a pipe and writes its first step lines
(``docs/img/training_lines.txt``).

    python docs/img/training_figures.py            # about two minutes on two CPU cores
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "examples" / "recipes")]

from test_run_ux import _run_in_pty, _screen  # noqa: E402  (the pseudo-terminal the tests use)

SPEC = """\
spec_version = 1
name = "watch"

[backbone]
width = 64
depth = 2
heads = 4
context_length = 64

[encoders.image]
component = "vision.patch"
image_size = 16
patch_size = 4
channels = 1
mean = [0.5]
std = [0.5]
dim = 48
depth = 1

[encoders.audio]
component = "audio.whisper"
sample_rate = 8000
max_seconds = 0.4
n_fft = 200
hop_length = 80
n_mels = 32
dim = 48
depth = 1
max_frames = 40

[encoders.text]
component = "text.bytes"
max_length = 16

[heads.lm]
component = "lm"

[training]
steps = 300
batch_size = 16
lr = 2e-3
warmup_steps = 20
log_every = 10
eval_every = 100
eval_batches = 4
seed = 0

[tasks.caption]
objective = "prefix_lm"
head = "lm"
train = "{data}/caption_train.jsonl"
eval = "{data}/caption_eval.jsonl"

[tasks.transcribe]
objective = "prefix_lm"
head = "lm"
train = "{data}/transcribe_train.jsonl"
eval = "{data}/transcribe_eval.jsonl"
"""


def main() -> None:
    import digits_av

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "digits_av"
        digits_av.main(["--out", str(data), "--clips-per-digit", "30"])
        spec = Path(tmp) / "watch.toml"
        spec.write_text(SPEC.format(data=data))
        out = Path(tmp) / "run"
        cols = 120
        raw = _run_in_pty(
            [sys.executable, "-m", "mmcore", "train", str(spec), "--out", str(out)], cols=cols, timeout=900
        )
        screen = [line.replace(tmp, "/tmp") for line in _screen(raw, cols)]
        start = next(i for i, line in enumerate(screen) if line.startswith("logging every"))
        (ROOT / "docs" / "img" / "training_screen.txt").write_text("\n".join(screen[start:]).rstrip() + "\n")
        shutil.copy(out / "loss.png", ROOT / "docs" / "img" / "loss.png")
        piped = subprocess.run(
            [sys.executable, "-m", "mmcore", "train", str(spec), "--out", str(Path(tmp) / "piped")],
            capture_output=True,
            text=True,
            check=True,
        )
        lines = [line for line in piped.stderr.splitlines() if line.startswith("step ") and "/300" in line]
        (ROOT / "docs" / "img" / "training_lines.txt").write_text("\n".join(lines[:3]) + "\n")
    print("wrote docs/img/training_screen.txt, training_lines.txt and loss.png")


if __name__ == "__main__":
    main()
