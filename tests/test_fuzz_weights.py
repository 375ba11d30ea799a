"""Fuzzing model directories: weight files, their headers, manifests, specs and processor files.

A model directory from an untrusted source may have been crafted, checksums included, so
the checksums prove nothing and the parsers must hold on their own. Each fuzzed directory
is loaded with :func:`mmcore.load`: it either loads into a model that runs a forward pass,
or raises an :class:`mmcore.MMCoreError` naming the directory or the file. Raw safetensors
bytes are also read with :func:`mmcore.checkpoint.read_safetensors` directly.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from fuzzing import fuzz, record
from hypothesis import given
from hypothesis import strategies as st

import mmcore
from mmcore.checkpoint import read_safetensors
from mmcore.errors import MMCoreError, WeightsError

SPEC = {
    "spec_version": 1,
    "backbone": {"width": 16, "depth": 1, "heads": 2, "context_length": 32},
    "encoders": {"text": {"component": "text.bytes", "max_length": 32}},
    "heads": {"lm": {"component": "lm", "tie": True}, "cls": {"component": "classify", "num_classes": 3}},
}
DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "X9", "", 5]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("saved") / "model"
    mmcore.save(mmcore.build(SPEC), d)
    return d


def _copy(saved: Path, tmp_path_factory: Any) -> Path:
    d = tmp_path_factory.mktemp("case") / "model"
    shutil.copytree(saved, d)
    return d


def _reseal(d: Path) -> None:
    """Rewrite the manifest's checksums to match the files: what a crafted directory would do."""
    path = d / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
        sums = manifest["sha256"]
        for name in list(sums):
            p = d / name
            if p.is_file():
                sums[name] = hashlib.sha256(p.read_bytes()).hexdigest()
        path.write_text(json.dumps(manifest))
    except (ValueError, KeyError, TypeError, AttributeError, OSError):
        pass  # a manifest the fuzzer broke stays broken


def check_load(d: Path, surface: str, *, verify: bool = True) -> Any:
    """Load ``d``: a model that runs, or an MMCoreError naming the directory."""
    try:
        model = mmcore.load(d, verify=verify)
    except MMCoreError as exc:
        text = str(exc) + "".join(getattr(exc, "__notes__", []))
        assert str(d) in text, f"{type(exc).__name__} does not name the directory: {text}"
        assert "Traceback" not in text
        record(surface, "rejected")
        return None
    batch = model.preprocess([{"text": "hi", "label": 1}, {"text": "there", "label": 2}])
    out = model(batch)
    assert out.outputs["lm"].logits.shape[:1] == (2,)
    record(surface, "accepted")
    return model


def _split(raw: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _join(header: Any, data: bytes, *, declared: int | None = None, pad: bool = True) -> bytes:
    h = json.dumps(header).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h) if declared is None else declared) + h + data


_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**65), 2**65), st.floats(), st.text(max_size=10)),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=5,
)


def _mutate_header(header: dict, data: bytes, draw: Any) -> tuple[Any, bytes, dict]:
    header = copy.deepcopy(header)
    opts: dict = {}
    names = sorted(k for k in header if k != "__metadata__")
    for _ in range(draw(st.integers(1, 3), label="edits")):
        op = draw(
            st.sampled_from(
                [
                    "dtype",
                    "shape",
                    "offsets",
                    "drop_key",
                    "extra_key",
                    "rename_key",
                    "metadata",
                    "declared_size",
                    "truncate_data",
                    "junk_entry",
                ]
            ),
            label="op",
        )
        name = draw(st.sampled_from(names), label="tensor")
        entry = header.get(name)
        if op == "dtype" and isinstance(entry, dict):
            entry["dtype"] = draw(st.sampled_from(DTYPES), label="dtype")
        elif op == "shape" and isinstance(entry, dict):
            entry["shape"] = draw(
                st.one_of(
                    st.lists(st.integers(0, 70), max_size=3),
                    st.lists(st.integers(-(2**64), 2**64), max_size=3),
                    _JSON,
                ),
                label="shape",
            )
        elif op == "offsets" and isinstance(entry, dict) and len(entry.get("data_offsets", [])) == 2:
            a, b = entry["data_offsets"]
            entry["data_offsets"] = draw(
                st.sampled_from([[b, a], [a, b + 4], [0, len(data) + 8], [a, 2**63], [a - 4, b - 4], [a], "x"]),
                label="offsets",
            )
        elif op == "drop_key":
            header.pop(name, None)
        elif op == "extra_key":
            some = next((v for k, v in header.items() if k != "__metadata__"), {})
            header[draw(st.text(min_size=1, max_size=8), label="new")] = copy.deepcopy(some)
        elif op == "rename_key" and name in header:
            header[draw(st.text(min_size=1, max_size=8), label="renamed")] = header.pop(name)
        elif op == "metadata":
            meta = header.setdefault("__metadata__", {})
            key = draw(st.sampled_from(["aliases", "spec", "format", "quantization", "distributions", "x"]))
            meta[key] = draw(
                st.one_of(_JSON, st.just("{}"), st.just('{"a": "b"}'), st.just("[1]"), st.just('{"x": [1]}')),
                label="meta value",
            )
        elif op == "declared_size":
            opts["declared"] = draw(st.sampled_from([0, 1, 7, 2**31, 2**63, 2**64 - 1]), label="declared")
        elif op == "truncate_data":
            data = data[: draw(st.integers(0, max(0, len(data) - 1)), label="cut")]
        elif op == "junk_entry":
            header[name] = draw(_JSON, label="junk")
    return header, data, opts


@fuzz(25)
@given(data=st.data())
def test_raw_weight_bytes_corrupted(saved, tmp_path_factory, data):
    d = _copy(saved, tmp_path_factory)
    raw = bytearray((d / "model.safetensors").read_bytes())
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        op = data.draw(st.sampled_from(["truncate", "flip", "insert", "header_flip"]), label="op")
        n = len(raw)
        if n == 0:
            break
        hdr_end = min(n, 8 + struct.unpack("<Q", bytes(raw[:8]).ljust(8, b"\0"))[0] if n >= 8 else n)
        i = data.draw(st.integers(0, max(0, (hdr_end if op == "header_flip" else n) - 1)), label="at")
        if op == "truncate":
            del raw[i:]
        elif op in ("flip", "header_flip"):
            raw[i] ^= data.draw(st.integers(1, 255), label="xor")
        else:
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=16), label="bytes")
    (d / "model.safetensors").write_bytes(bytes(raw))
    try:
        read_safetensors(d / "model.safetensors")
        record("weights: raw safetensors", "accepted")
    except WeightsError as exc:
        assert str(d / "model.safetensors") in str(exc)
        record("weights: raw safetensors", "rejected")
    # unsealed: the checksum catches it
    if bytes(raw) != (saved / "model.safetensors").read_bytes():
        with pytest.raises(WeightsError, match="modified, truncated or are missing"):
            mmcore.load(d)
    _reseal(d)
    check_load(d, "weights: corrupted bytes (resealed dir)")


@fuzz(30)
@given(data=st.data())
def test_weight_headers_mutated(saved, tmp_path_factory, data):
    d = _copy(saved, tmp_path_factory)
    header, payload = _split((d / "model.safetensors").read_bytes())
    header, payload, opts = _mutate_header(header, payload, data.draw)
    (d / "model.safetensors").write_bytes(_join(header, payload, **opts))
    _reseal(d)
    check_load(d, "weights: mutated headers (resealed dir)")


@fuzz(25)
@given(data=st.data())
def test_model_directory_json_and_spec_files_mutated(saved, tmp_path_factory, data):
    d = _copy(saved, tmp_path_factory)
    target = data.draw(
        st.sampled_from(["manifest.json", "processors/text/tokenizer_config.json", "spec.toml"]), label="file"
    )
    path = d / target
    if target.endswith(".json"):
        doc = json.loads(path.read_text())
        for _ in range(data.draw(st.integers(1, 3), label="edits")):
            keys = list(doc) if isinstance(doc, dict) else []
            op = data.draw(st.sampled_from(["replace", "delete", "nested", "whole"]), label="op")
            if op == "whole" or not keys:
                doc = data.draw(_JSON, label="doc")
                continue
            key = data.draw(st.sampled_from(keys), label="key")
            if op == "delete":
                del doc[key]
            elif op == "nested" and isinstance(doc[key], dict) and doc[key]:
                sub = data.draw(st.sampled_from(sorted(doc[key])), label="sub")
                doc[key][sub] = data.draw(
                    st.one_of(_JSON, st.sampled_from(["../../etc/passwd", "/etc/passwd", "a\x00b", "0" * 64])),
                    label="value",
                )
            else:
                doc[key] = data.draw(_JSON, label="value")
        path.write_text(json.dumps(doc))
        if target == "processors/text/tokenizer_config.json":
            _reseal(d)
        elif data.draw(st.booleans(), label="reseal"):
            _reseal(d)
    else:
        text = path.read_text()
        i = data.draw(st.integers(0, len(text)), label="at")
        text = text[:i] + data.draw(st.text(max_size=10), label="insert") + text[i + data.draw(st.integers(0, 5)) :]
        path.write_text(text, errors="surrogatepass")
        _reseal(d)
    check_load(d, "model directories: manifest, spec, processor files")


def test_weight_regressions(saved, tmp_path):
    """Cases the fuzzing found, kept as regressions."""
    cases = {
        "aliases-list": {"aliases": "[1]"},
        "aliases-nonstring": {"aliases": '{"a": [1]}'},
        "aliases-number": {"aliases": "5"},
    }
    for name, meta_update in cases.items():
        d = tmp_path / name
        shutil.copytree(saved, d)
        header, payload = _split((d / "model.safetensors").read_bytes())
        header["__metadata__"].update(meta_update)
        (d / "model.safetensors").write_bytes(_join(header, payload))
        _reseal(d)
        assert check_load(d, "weights: regressions") is None, name
    # a tensor stored in another dtype (same bytes, e.g. F32 read as I32) never loads silently as that dtype
    d = tmp_path / "dtype"
    shutil.copytree(saved, d)
    header, payload = _split((d / "model.safetensors").read_bytes())
    key = "backbone.blocks.0.attn.qkv.weight"
    header[key]["dtype"] = "I32"
    (d / "model.safetensors").write_bytes(_join(header, payload))
    _reseal(d)
    with pytest.raises(WeightsError, match=f"dtype of {key}"):
        mmcore.load(d)
    # provenance records of the wrong type in a manifest: AttributeError, ValueError (empty name), TypeError
    for update in (
        {"components": 1, "distributions": None},
        {"distributions": {"": {"version": "1"}}},
        {"distributions": {"mmcore-text": {"version": 5}}},
    ):
        d = tmp_path / f"prov{len(str(update))}"
        shutil.copytree(saved, d)
        m = json.loads((d / "manifest.json").read_text())
        m.update(update)
        (d / "manifest.json").write_text(json.dumps(m))
        check_load(d, "weights: regressions")
    # a file name with a NUL byte or leaving the directory in the manifest
    for bad in ("a\x00b", "../outside"):
        d = tmp_path / f"manifest{len(bad)}"
        shutil.copytree(saved, d)
        m = json.loads((d / "manifest.json").read_text())
        m["sha256"][bad] = "0" * 64
        (d / "manifest.json").write_text(json.dumps(m))
        assert check_load(d, "weights: regressions") is None
