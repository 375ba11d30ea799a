"""Stopping a run cleanly on SIGINT (Ctrl-C) and SIGTERM (what a cluster scheduler sends before it
kills a job).

While :class:`GracefulStop` is active, the first SIGINT or SIGTERM only records the signal and
says so on stderr; the trainer finishes the step it is in, writes a checkpoint and raises
:class:`TrainingInterrupted`. A second signal raises :class:`TrainingInterrupted` at once, without
saving (the last complete checkpoint stays the one ``checkpoints/latest`` names, as after a kill).

``TrainingInterrupted`` is a ``KeyboardInterrupt``: a script that calls ``Trainer.fit`` stops as
it would at Ctrl-C, and ``mmcore train`` exits with ``exit_code`` (128 + the signal: 130 for
SIGINT, 143 for SIGTERM), as shells and schedulers expect.

A terminal's Ctrl-C reaches every process of the foreground job, and a scheduler's SIGTERM every
process of the job: DataLoader workers ignore both (:func:`ignore_stop_signals`, their init
function), so the step being finished still gets its batches; a worker still ends when the main
process does (torch's watchdog). Handlers can be installed only in the main thread; elsewhere (a notebook's worker thread, say)
the signals keep their handlers and nothing is recorded.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

__all__ = ["GracefulStop", "TrainingInterrupted", "ignore_stop_signals"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """The run stopped on a signal. ``checkpoint``: the folder saved (None: nothing saved)."""

    def __init__(self, signum: int, step: int, checkpoint: str | None, message: str):
        super().__init__(message)
        self.signum, self.step, self.checkpoint = signum, step, checkpoint

    @property
    def exit_code(self) -> int:
        """128 + the signal number: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


class GracefulStop:
    """A context that records the first SIGINT/SIGTERM (``signum``) and raises on the second.

    ``step`` is read (a callable) only to say in the messages which step is being finished."""

    def __init__(self, step: Any = lambda: 0, announce: bool = True):
        self._step, self._announce = step, announce
        self.signum: int | None = None
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._saved[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._saved.items():
            signal.signal(s, h)
        self._saved.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            msg = f"{name} again: stopped at once without saving; the last checkpoint stays the latest"
            self._say(msg)
            raise TrainingInterrupted(signum, int(self._step()), None, msg)
        self.signum = signum
        self._say(
            f"{name}: finishing step {int(self._step()) + 1}, then saving a checkpoint "
            f"({'Ctrl-C' if signum == signal.SIGINT else 'the signal'} again stops at once without saving)"
        )

    def _say(self, msg: str) -> None:
        if self._announce:  # os.write: print() from a signal handler can re-enter a buffered write
            os.write(2, f"\n{msg}\n".encode())


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A DataLoader worker's init function: SIGINT and SIGTERM are the main process's to act on
    (a worker killed by them would fail the step the main process is finishing)."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
