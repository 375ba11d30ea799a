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


# A result file of a benchmark or a recipe (the JSON that docs quote figures from) is written
# whole or not at all: an interrupted run must not leave a half file that looks like a result.
# Caught: json.dump to an open file; write_text of json.dumps(...); write_text on, or open(..., "w")
# of, a path that ends in .json or is args.json. Not caught (data, not results): .jsonl records.
RESULT_WRITE = re.compile(
    r"\bjson\.dump\(|\.write_text\(\s*json\.dumps\(|json\b[\"')]*\.write_text\(|\bopen\([^)]*json\b[^)]*,\s*[\"']w"
)


def result_writes(text: str) -> list[int]:
    """The lines of ``text`` that write JSON results without the atomic writer."""
    return [text.count("\n", 0, m.start()) + 1 for m in RESULT_WRITE.finditer(text)]


def test_the_result_guard_sees_plain_writes() -> None:
    plain = (
        'with open(p, "w") as f:\n    json.dump(r, f)\n(out / "r.json").write_text(\n    json.dumps(r)\n)\n'
        'args.json.write_text(text)\nPath(args.json).write_text(text)\nwith open(args.json, "w") as f:\n'
    )
    assert result_writes(plain) == [2, 3, 6, 7, 8]
    atomic = (
        'atomic_write_text(out / "r.json", json.dumps(r) + "\\n")\nf.write(json.dumps(rec) + "\\n")\n'
        '(out / "train.jsonl").write_text(lines)\nwith open(out / f"{name}.jsonl", "w") as f:\n'
    )
    assert result_writes(atomic) == []


def test_bench_and_recipe_results_are_written_atomically() -> None:
    """bench/ and examples/ write their JSON results with mmcore.atomic_write_text (data files
    the recipes make, JSONL records written a line at a time, are not results)."""
    scripts = sorted([*ROOT.glob("bench/**/*.py"), *ROOT.glob("examples/**/*.py")])
    assert len(scripts) > 10, scripts
    found = [
        f"{path.relative_to(ROOT).as_posix()}:{line}"
        for path in scripts
        for line in result_writes(path.read_text(encoding="utf-8"))
    ]
    assert not found, "write result files with mmcore.atomic_write_text:\n" + "\n".join(found)
