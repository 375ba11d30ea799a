"""CI runs the linters: ``ruff check``, ``ruff format --check`` and ``mypy`` (configured in
pyproject.toml: what it checks is written there) on the core and the first-party plugins.

They run from the test suite because CI runs ``python3 dev.py test`` and nothing else; both are
in the ``test`` extra. A failure prints the linter's own report.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_SOURCES = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("plugins/*/src"))
LINTED = ["mmcore", "plugins", "tests"]


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_ruff_check() -> None:
    done = run("ruff", "check", "--no-cache", *LINTED)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format() -> None:
    done = run("ruff", "format", "--check", "--no-cache", *LINTED)
    assert done.returncode == 0, "run `ruff format mmcore plugins tests`:\n" + done.stdout + done.stderr


@pytest.mark.slow
def test_mypy() -> None:
    assert len(PLUGIN_SOURCES) == 4, PLUGIN_SOURCES
    done = run("mypy", "mmcore", *PLUGIN_SOURCES)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found" in done.stdout
