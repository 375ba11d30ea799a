"""Fuzzing specs: random mutations of every example spec either validate or raise a
:class:`mmcore.SpecError` that names the file and the section of every problem.

Two kinds of mutation: of the parsed tables (a value replaced by one of another type or
range, a key deleted, renamed or added, a component swapped for another or for a Python
path) and of the TOML text itself (spans deleted, junk inserted, lines swapped or cut).
A spec that validates must also survive its round trip: ``to_toml()`` parses back to the
same resolved spec.

Deep structures (dotted keys and table headers of up to 100,000 parts, inline tables and
arrays nested thousands deep, quoted parts) are put into the example specs and parsed under
a cap on this process's memory, so one that exhausts memory fails the test.
"""

from __future__ import annotations

import copy
import json
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLES
from fuzzing import MiB, fuzz, memory_cap, record
from hypothesis import given
from hypothesis import strategies as st

from mmcore.errors import SpecError
from mmcore.spec import parse_spec, parse_spec_text

SPECS = sorted(EXAMPLES.glob("*.toml"))
COMPONENTS = [
    "text.bytes",
    "text.bpe",
    "vision.patch",
    "vision.timm",
    "audio.whisper",
    "early",
    "cross_attention",
    "resampler",
    "lm",
    "classify",
    "linear",
    "mlp",
    # a spec names registered components only: Python paths must be rejected, never imported
    "os:system",
    "os.system",
    "builtins:eval",
    "subprocess.run",
    "../../etc/passwd",
    "",
]
SCALARS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2, 3, 7, 64, 2**31, 2**63 - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(COMPONENTS),
    st.sampled_from(["causal", "prefix", "bidirectional", "rope", "learned", "auto", "cpu", "fp16", "lm", "mlm"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
KEYS = st.one_of(
    st.text(max_size=10),
    st.sampled_from(
        ["component", "freeze", "projector", "width", "depth", "heads", "max_length", "objective", "train", "head"]
    ),
)


def _paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += _paths(v, prefix + (i,))
    return out


def _get(tree: Any, path: tuple) -> Any:
    for p in path:
        tree = tree[p]
    return tree


def _mutate(data: dict, draw: Any) -> dict:
    data = copy.deepcopy(data)
    for _ in range(draw(st.integers(1, 3), label="mutations")):
        paths = _paths(data)
        path = draw(st.sampled_from(paths), label="path")
        op = draw(st.sampled_from(["replace", "delete", "rename", "add", "component"]), label="op")
        target = _get(data, path)
        if op == "add" and isinstance(target, dict):
            target[draw(KEYS, label="key")] = draw(VALUES, label="value")
        elif op == "component" and isinstance(target, dict):
            target["component"] = draw(st.sampled_from(COMPONENTS), label="component")
        elif not path:
            continue  # the root itself: only add/component apply
        else:
            parent, last = _get(data, path[:-1]), path[-1]
            if op == "delete":
                del parent[last]
            elif op == "rename" and isinstance(parent, dict):
                new = draw(KEYS, label="new key")
                parent[new] = parent.pop(last)
            else:
                parent[last] = draw(VALUES, label="value")
    return data


def _text_mutate(text: str, draw: Any) -> str:
    junk = st.text(alphabet=st.sampled_from(list("[]{}=\"'.,#\n\\ -+_0123456789aeinrstxz\u00e9\x00")), max_size=12)
    for _ in range(draw(st.integers(1, 3), label="edits")):
        n = len(text)
        op = draw(st.sampled_from(["delete", "insert", "truncate", "swap_lines", "dup_line"]), label="op")
        i = draw(st.integers(0, n), label="at")
        if op == "delete":
            j = draw(st.integers(i, min(n, i + 20)), label="to")
            text = text[:i] + text[j:]
        elif op == "insert":
            text = text[:i] + draw(junk, label="junk") + text[i:]
        elif op == "truncate":
            text = text[:i]
        else:
            lines = text.split("\n")
            a = draw(st.integers(0, len(lines) - 1), label="line")
            if op == "dup_line":
                lines.insert(a, lines[a])
            else:
                b = draw(st.integers(0, len(lines) - 1), label="other line")
                lines[a], lines[b] = lines[b], lines[a]
            text = "\n".join(lines)
    return text


def _json(spec: Any) -> str:
    return json.dumps(spec.to_dict(), sort_keys=True, default=repr)


def check_outcome(call: Any, file: str, surface: str) -> Any:
    """Run ``call``: a Spec, or a SpecError naming ``file`` and a section for every issue."""
    try:
        spec = call()
    except SpecError as exc:
        text = str(exc)
        assert exc.issues, text
        assert exc.file == file and text.startswith(file), text
        for issue in exc.issues:
            assert issue.file == file, issue
            assert issue.message.strip(), issue
            # problems not tied to one section: the file itself is unparsable or not a table
            assert issue.path or issue.message.startswith(
                ("invalid TOML", "a spec must be a table", "the spec is longer", "line ")
            ), issue
        assert "Traceback" not in text
        record(surface, "rejected")
        return None
    record(surface, "accepted")
    # A valid spec survives its round trip (every option written out, then read back).
    again = parse_spec_text(spec.to_toml(), file=file)
    assert _json(again) == _json(spec)
    return spec


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
@fuzz(15)
@given(data=st.data())
def test_mutated_spec_tables_validate_or_name_the_section(path: Path, data: Any) -> None:
    original = tomllib.loads(path.read_text(encoding="utf-8"))
    mutated = _mutate(original, data.draw)
    check_outcome(lambda: parse_spec(mutated, file=str(path)), str(path), "spec (tables)")


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
@fuzz(10)
@given(data=st.data())
def test_mutated_spec_text_validates_or_names_the_section(path: Path, data: Any) -> None:
    text = _text_mutate(path.read_text(encoding="utf-8"), data.draw)
    check_outcome(lambda: parse_spec_text(text, file=str(path)), str(path), "spec (TOML text)")


def test_every_example_spec_is_fuzzed():
    assert len(SPECS) >= 8
    for p in SPECS:  # the unmutated examples validate (else the fuzzing starts from errors)
        assert check_outcome(lambda p=p: parse_spec_text(p.read_text(), file=str(p)), str(p), "spec (examples)")


@pytest.mark.parametrize(
    "text",
    [
        "a = " + "[" * 100_000,  # tomllib recurses per level: was a RecursionError
        "a = " + "{x = " * 5_000,
        "spec_version = 1\n[encoders.x]\ncomponent = 'os:system'\n",
        "spec_version = 1\n[encoders.x]\ncomponent = 'text.bytes'\nmax_length = nan\n",
        "\x00\x01",
        "spec_version = 1\nencoders = 3\nheads = [1]\nfusion = 'early'\ntasks = {t = 5}\n",
        # heads not a table while a task needs one: was a TypeError from len()/join()
        "spec_version = 1\nheads = 1\n[encoders.text]\ncomponent = 'text.bytes'\n"
        "[tasks.t]\nobjective = 'lm'\ntrain = 'x.txt'\n",
        # image_size that patch_size does not divide, huge: the hint listed every multiple (hung)
        "spec_version = 1\n[encoders.i]\ncomponent = 'vision.patch'\nimage_size = 9223372036854775807\n"
        "patch_size = 3\n",
        # an empty key: the issue had no section path
        'spec_version = 1\n"" = 1\n[encoders.text]\ncomponent = "text.bytes"\n',
        # a tokenizer "file" that never ends
        "spec_version = 1\n[encoders.text]\ncomponent = 'text.bpe'\ntokenizer = '/dev/zero'\n",
    ],
    ids=[
        "deep-array",
        "deep-table",
        "python-path",
        "nan",
        "binary",
        "wrong-types",
        "heads-not-a-table",
        "huge-image-size",
        "empty-key",
        "dev-zero-tokenizer",
    ],
)
def test_hostile_spec_texts_are_spec_errors(text: str) -> None:
    assert (
        check_outcome(lambda: parse_spec_text(text, file="hostile.toml"), "hostile.toml", "spec (regressions)") is None
    )


def test_nan_and_inf_options_are_rejected_or_round_trip():
    """Floats that TOML allows (nan, inf) either fail validation or survive the round trip."""
    for v in (math.nan, math.inf, -math.inf):
        data = {
            "spec_version": 1,
            "backbone": {"width": 32, "depth": 1, "heads": 2, "dropout": v},
            "encoders": {"text": {"component": "text.bytes"}},
            "training": {"lr": v},
        }
        assert check_outcome(lambda d=data: parse_spec(d, file="f.toml"), "f.toml", "spec (regressions)") is None


def test_names_and_strings_tomls_cannot_write_bare_survive_the_round_trip():
    """to_toml quoted keys by str.isalnum (so '¹' or 'é' went out bare: unreadable TOML) and
    left DEL unescaped in strings; a saved model's spec.toml must always read back."""
    data = {
        "spec_version": 1,
        "name": 'a\x7fb\\c"d\n\te\x00',
        "backbone": {"width": 32, "depth": 1, "heads": 2},
        "encoders": {"text": {"component": "text.bytes"}},
        "heads": {"\u00b9": {"component": "lm"}, "h\u00e9ad": {"component": "lm"}, "a b": {"component": "lm"}},
    }
    spec = check_outcome(lambda: parse_spec(data, file="f.toml"), "f.toml", "spec (regressions)")
    assert set(spec.heads) == {"\u00b9", "h\u00e9ad", "a b"} and spec.name == data["name"]


# --- deep structures ------------------------------------------------------------------------

_DEPTHS = st.one_of(st.integers(1, 40), st.sampled_from([15, 16, 17, 31, 32, 33, 64, 1000, 30_000, 100_000]))
_PART = st.sampled_from(["x", "a_b", "'lit.eral'", '"q.uo\\"te"', "0", "-"])


@st.composite
def deep_toml(draw: Any) -> str:
    """One deep construct: a dotted key, a table header, nested inline tables or arrays."""
    n = draw(_DEPTHS, label="depth")
    part = draw(_PART, label="part")
    form = draw(st.sampled_from(["key", "header", "array-of-tables", "inline", "array", "mixed"]), label="form")
    if form == "key":
        return ".".join([part] * n) + " = 1\n"
    if form in ("header", "array-of-tables"):
        b = "[[" if form == "array-of-tables" else "["
        return f"{b}{'.'.join([part] * n)}{b.replace('[', ']')}\nk = 1\n"
    if form == "inline":
        return "k = " + f"{{{part} = " * n + "1" + "}" * n + "\n"
    if form == "array":
        return "k = " + "[" * n + "1" + "]" * n + "\n"
    return f"k.{part} = " + "[{a.b = " * n + "1" + "}]" * n + "\n"


@pytest.mark.parametrize("path", SPECS[:3], ids=[p.stem for p in SPECS[:3]])
@fuzz(12)
@given(data=st.data())
def test_deep_keys_and_nesting_are_refused_within_bounded_memory(path: Path, data: Any) -> None:
    text = path.read_text(encoding="utf-8")
    deep = data.draw(deep_toml(), label="deep")
    where = data.draw(st.sampled_from(["start", "end", "section"]), label="where")
    if where == "start":
        text = deep + text
    elif where == "end":
        text = text + "\n" + deep
    else:  # inside the first component section, whose keys are options
        head = text.index("[encoders.")
        line_end = text.index("\n", head) + 1
        text = text[:line_end] + deep + text[line_end:]
    with memory_cap(256 * MiB):  # 100,000 parts once needed more than 24 GB
        check_outcome(lambda: parse_spec_text(text, file=str(path)), str(path), "spec (deep keys and nesting)")
