"""mmcore/io.py: the one atomic writer and the safetensors helpers, used by the core and the plugins."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
import torch

import mmcore
from mmcore import io

ROOT = Path(__file__).resolve().parent.parent


def test_atomic_write_replaces_whole_and_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    io.atomic_write_text(target, "old\n")
    assert target.read_text() == "old\n"

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        io.atomic_write(target, half_then_fail)
    assert target.read_text() == "old\n"  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # no temporary left

    io.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_atomic_write_gives_the_permissions_of_open_and_the_target_suffix(tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    seen: list[str] = []
    io.atomic_write(tmp_path / "out.png", lambda tmp: (seen.append(tmp.name), tmp.write_bytes(b"png")))
    assert seen[0].startswith(".out.png.") and seen[0].endswith(".tmp.png")  # writers that pick by suffix
    mode = stat.S_IMODE((tmp_path / "out.png").stat().st_mode)
    assert mode == stat.S_IMODE(plain.stat().st_mode)  # not mkstemp's 0600


def test_safetensors_round_trip_and_checks(tmp_path: Path) -> None:
    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3, dtype=torch.long)}
    io.write_safetensors(tmp_path / "m.safetensors", state, {"format": "pt"})
    tensors, meta = io.read_safetensors(tmp_path / "m.safetensors")
    assert meta == {"format": "pt"} and torch.equal(tensors["w"], state["w"])
    io.check_state_dict(state, tensors)
    with pytest.raises(mmcore.WeightsError, match=r"(?s)missing \(1\): b.*shape of w"):
        io.check_state_dict(state, {"w": torch.zeros(3, 2)})
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(mmcore.WeightsError, match="bad.safetensors: not a readable safetensors file"):
        io.read_safetensors(tmp_path / "bad.safetensors")


def test_the_public_api_exports_the_io_helpers() -> None:
    for name in io.__all__:
        assert name in mmcore.__all__ and getattr(mmcore, name) is getattr(io, name)


def test_no_second_atomic_writer() -> None:
    """Renaming a temporary file over a target is done in mmcore/io.py only (checkpoint.py swaps
    whole model directories, which is a different operation)."""
    allowed = {"mmcore/io.py", "mmcore/checkpoint.py"}
    pattern = re.compile(r"os\.replace\(|\bmkstemp\(|\.replace\((path|target)\)|tmp\.replace\(")
    found = []
    sources = [*ROOT.joinpath("mmcore").rglob("*.py"), *ROOT.glob("plugins/*/src/**/*.py")]
    for path in sources:
        rel = path.relative_to(ROOT).as_posix()
        if rel in allowed:
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                found.append(f"{rel}:{i}: {line.strip()}")
    assert not found, "write files with mmcore.atomic_write (mmcore/io.py):\n" + "\n".join(found)
    assert os.path.exists(ROOT / "mmcore" / "io.py")
