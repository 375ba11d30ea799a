#!/usr/bin/env python3
"""Set up the checkout's virtual environment and run the main job or the tests.

    python3 dev.py demo        # the main job (examples/demo.py)
    python3 dev.py test        # every test (the command CI runs)
    python3 dev.py test -k spec  # extra arguments go to pytest
    python3 dev.py shell       # print the command that activates the environment

The environment lives in .venv/ in the checkout. It is created on first use and
reinstalled whenever a pyproject.toml or requirements/constraints.txt changes, so
the commands work on a fresh machine with only Python 3.11+ and pip.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".mmcore-stamp"
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"
FIXTURES = sorted((ROOT / "tests" / "fixtures").glob("*/pyproject.toml"))


def plugin_dirs() -> list[Path]:
    return sorted(p.parent for p in (ROOT / "plugins").glob("*/pyproject.toml"))


def stamp(with_tests: bool) -> str:
    h = hashlib.sha256(str(with_tests).encode())
    for f in [ROOT / "pyproject.toml", CONSTRAINTS, *(d / "pyproject.toml" for d in plugin_dirs()), *FIXTURES]:
        h.update(str(f.relative_to(ROOT)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def run(cmd: list[str], **kw) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, **kw)


def ensure_env(with_tests: bool) -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may be started by an older Python
        sys.exit(f"mmcore needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"creating the virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    want = stamp(with_tests)
    have = STAMP.read_text() if STAMP.exists() else ""
    # A test environment also serves the demo; not the other way round.
    if have == want or (not with_tests and have == stamp(True)):
        return
    run([PY, "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    pkgs = ["-e", ".[dev]" if with_tests else ".[demo]"]
    import tomllib

    for d in plugin_dirs():
        extras = tomllib.loads((d / "pyproject.toml").read_text()).get("project", {}).get("optional-dependencies", {})
        rel = str(d.relative_to(ROOT))
        pkgs += ["-e", f"{rel}[test]" if with_tests and "test" in extras else rel]
    if with_tests:
        pkgs += [str(f.parent.relative_to(ROOT)) for f in FIXTURES]
    run([PY, "-m", "pip", "install", "--quiet", "-c", CONSTRAINTS, *pkgs])
    STAMP.write_text(want)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "shell"):
        print(__doc__)
        return 2
    cmd, rest = argv[0], argv[1:]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if cmd == "shell":
        print(f"source {BIN / 'activate'}")
        return 0
    ensure_env(with_tests=(cmd == "test"))
    if cmd == "test":
        return subprocess.run([str(PY), "-m", "pytest", *rest], cwd=ROOT, env=env).returncode
    return subprocess.run([str(PY), str(ROOT / "examples" / "demo.py"), *rest], cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
