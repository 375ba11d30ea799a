"""Fuzzing what a manifest and its media files can hold.

* Manifests: lines of bad JSON, non-objects, missing and mistyped fields, paths that leave
  the manifest's folder (relative, absolute, through a symlink, in an audio ``{"path"}``
  dict), missing files, FIFOs and devices. Every record becomes a sample or a
  :class:`mmcore.data.BadRecord` naming the manifest file and line; nothing raises.
* Record values of every shape (strings, lists, ``path`` and ``bytes`` nested at any
  depth, ``bytes`` holding a path or base64): an audit hook records every file opened,
  and none outside the manifest's folder may be.
* Media, through the vision and audio plugins' processors: valid PNG/JPEG/GIF/BMP/WAV/FLAC
  files cut short, with bytes flipped or inserted, empty, under the wrong extension,
  declaring enormous sizes or durations in their headers; arrays with NaN/Inf, odd shapes,
  dtypes, sample rates and channel counts. Each either yields finite features of the
  documented shape or raises :class:`mmcore.InputError` naming the record and the file.
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fuzzing import fuzz, record
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import mmcore
from mmcore.data import BadRecord, Collator, ManifestDataset
from mmcore.errors import InputError

WHERE = "m.jsonl:7 field 'x'"


@pytest.fixture(scope="module")
def model():
    from mmcore import plugins

    pm = plugins.PluginManager()
    spec = {
        "spec_version": 1,
        "backbone": {"width": 32, "depth": 1, "heads": 2, "context_length": 600},
        "encoders": {
            "image": {
                "component": "vision.patch",
                "image_size": 16,
                "patch_size": 4,
                "dim": 32,
                "depth": 1,
                "heads": 2,
            },
            "audio": {
                "component": "audio.whisper",
                "n_mels": 16,
                "n_fft": 64,
                "hop_length": 32,
                "max_seconds": 2.0,
                "dim": 32,
                "depth": 1,
                "heads": 2,
                "max_frames": 1024,
            },
            "text": {"component": "text.bytes", "max_length": 32},
        },
        "heads": {"lm": {"component": "lm"}},
    }
    return mmcore.build(spec, registry=pm.registry)


# --- media builders ---------------------------------------------------------------------


def image_bytes(fmt: str, w: int, h: int, mode: str, seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4, "P": 1, "1": 1}[mode]
    arr = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    img = Image.fromarray(arr[:, :, 0] if channels == 1 else arr, "L" if channels == 1 else mode)
    if mode in ("P", "1"):
        img = img.convert(mode)
    if fmt == "JPEG" and img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def png_declaring(w: int, h: int) -> bytes:
    """A PNG whose IHDR declares w x h (valid CRC) followed by a tiny IDAT: a decompression bomb's header."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)  # noqa: E731
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def jpeg_declaring(w: int, h: int) -> bytes:
    """A real JPEG with its SOF0 frame size patched to w x h."""
    data = bytearray(image_bytes("JPEG", 8, 8, "RGB", 0))
    i = data.index(b"\xff\xc0")
    data[i + 5 : i + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def audio_bytes(fmt: str, rate: int, channels: int, frames: int, seed: int, subtype: str | None = None) -> bytes:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    data = (rng.standard_normal((frames, channels)) * 0.3).clip(-1, 1).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, data, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def wav_declaring(frames: int, rate: int = 16000, channels: int = 1) -> bytes:
    """A WAV header that declares ``frames`` frames (sizes patched) with a few real samples."""
    data = bytearray(audio_bytes("WAV", rate, channels, 64, 1, "PCM_16"))
    i = data.index(b"data")
    size = min(frames * 2 * channels, 0xFFFFFFFE)
    data[i + 4 : i + 8] = struct.pack("<I", size)
    data[4:8] = struct.pack("<I", min(size + 36, 0xFFFFFFFE))
    return bytes(data)


def corrupt(data: bytes, draw: Any) -> bytes:
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 3), label="corruptions")):
        op = draw(st.sampled_from(["truncate", "flip", "insert", "zero_span", "keep_header"]), label="op")
        n = len(data)
        if n == 0:
            break
        i = draw(st.integers(0, n - 1), label="at")
        if op == "truncate":
            del data[i:]
        elif op == "flip":
            data[i] ^= draw(st.integers(1, 255), label="xor")
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8), label="bytes")
        elif op == "zero_span":
            j = min(n, i + draw(st.integers(1, 64), label="len"))
            data[i:j] = bytes(j - i)
        else:
            del data[min(n, draw(st.integers(8, 64), label="keep")) :]
    return bytes(data)


def check_image(proc: Any, value: Any, surface: str) -> None:
    try:
        out = proc(value, where=WHERE)
    except InputError as exc:
        assert WHERE in str(exc), exc
        if isinstance(value, (str, os.PathLike)):
            assert str(value) in str(exc), exc
        record(surface, "rejected")
        return
    px = out["pixels"]
    assert tuple(px.shape) == proc.output_shape and px.dtype == torch.float32
    assert bool(torch.isfinite(px).all())
    record(surface, "accepted")


def check_audio(proc: Any, value: Any, surface: str) -> None:
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # clipping warnings: a warning, not a failure
            out = proc(value, where=WHERE)
    except InputError as exc:
        assert WHERE in str(exc), exc
        if isinstance(value, (str, os.PathLike)):
            assert str(value) in str(exc), exc
        record(surface, "rejected")
        return
    f = out["features"]
    assert f.dim() == 2 and f.shape[0] == proc.n_mels and f.shape[1] >= 1 and f.dtype == torch.float32
    assert bool(torch.isfinite(f).all())
    record(surface, "accepted")


IMAGE_FORMATS = st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "TIFF"])
IMAGE_MODES = st.sampled_from(["L", "RGB", "RGBA", "P", "1"])
EXTENSIONS = st.sampled_from([".png", ".jpg", ".gif", ".bmp", ".wav", ".flac", ".txt", ""])


# --- images ------------------------------------------------------------------------------


@fuzz(30)
@given(
    fmt=IMAGE_FORMATS,
    w=st.integers(1, 40),
    h=st.integers(1, 40),
    mode=IMAGE_MODES,
    seed=st.integers(0, 2**16),
    ext=EXTENSIONS,
    data=st.data(),
)
def test_corrupted_image_files(model, tmp_path_factory, fmt, w, h, mode, seed, ext, data):
    proc = model.processors["image"]
    raw = image_bytes(fmt, w, h, mode, seed)
    bad = corrupt(raw, data.draw) if data.draw(st.booleans(), label="corrupt") else raw
    path = tmp_path_factory.mktemp("img") / f"x{ext}"
    path.write_bytes(bad)
    check_image(proc, str(path), "media: image files")
    check_image(proc, bad, "media: image bytes")


@fuzz(20)
@given(
    w=st.sampled_from([0, 1, 65535, 100_000, 2**31 - 1, 2**32 - 1]),
    h=st.sampled_from([0, 1, 65535, 100_000, 2**31 - 1, 2**32 - 1]),
    kind=st.sampled_from(["png", "jpeg"]),
)
def test_image_headers_declaring_enormous_sizes_are_refused_before_decoding(model, tmp_path_factory, w, h, kind):
    proc = model.processors["image"]
    if kind == "jpeg":
        w, h = min(w, 65535), min(h, 65535)
        raw = jpeg_declaring(w, h)
    else:
        raw = png_declaring(w, h)
    path = tmp_path_factory.mktemp("bomb") / f"bomb.{kind}"
    path.write_bytes(raw)
    check_image(proc, str(path), "media: image bombs")
    if w * h > proc.max_pixels:
        with pytest.raises(InputError, match=r"bomb|max_pixels|corrupt|truncated|not an image"):
            proc(str(path), where=WHERE)


@fuzz(30)
@given(
    arr=hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, np.bool_, np.int32, np.float16]),
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=12),
        elements=None,
    ),
    as_tensor=st.booleans(),
)
def test_image_arrays_of_any_shape_dtype_and_values(model, arr, as_tensor):
    proc = model.processors["image"]
    value = arr
    if as_tensor and arr.dtype not in (np.uint16,):
        value = torch.from_numpy(np.ascontiguousarray(arr))
    check_image(proc, value, "media: image arrays")


def test_image_nan_inf_zero_length_and_directory(model, tmp_path):
    proc = model.processors["image"]
    for bad in (np.full((4, 4, 3), np.nan, np.float32), np.full((4, 4), np.inf, np.float32)):
        with pytest.raises(InputError, match="NaN or infinite"):
            proc(bad, where=WHERE)
    empty = tmp_path / "e.png"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        proc(str(empty), where=WHERE)
    with pytest.raises(InputError, match="directory"):
        proc(str(tmp_path), where=WHERE)
    wav_named_png = tmp_path / "sound.png"
    wav_named_png.write_bytes(audio_bytes("WAV", 8000, 1, 100, 0))
    with pytest.raises(InputError, match="not an image"):
        proc(str(wav_named_png), where=WHERE)


# --- audio -------------------------------------------------------------------------------


AUDIO_FORMATS = st.sampled_from([("WAV", "PCM_16"), ("WAV", "FLOAT"), ("WAV", "PCM_U8"), ("FLAC", "PCM_16")])


@fuzz(30)
@given(
    fmt=AUDIO_FORMATS,
    rate=st.sampled_from([8000, 11025, 16000, 22050, 44100, 48000]),
    channels=st.integers(1, 6),
    frames=st.integers(1, 3000),
    seed=st.integers(0, 2**16),
    ext=EXTENSIONS,
    data=st.data(),
)
def test_corrupted_audio_files(model, tmp_path_factory, fmt, rate, channels, frames, seed, ext, data):
    proc = model.processors["audio"]
    raw = audio_bytes(fmt[0], rate, channels, frames, seed, fmt[1])
    bad = corrupt(raw, data.draw) if data.draw(st.booleans(), label="corrupt") else raw
    path = tmp_path_factory.mktemp("aud") / f"x{ext}"
    path.write_bytes(bad)
    check_audio(proc, str(path), "media: audio files")
    check_audio(proc, bad, "media: audio bytes")


@fuzz(20)
@given(
    frames=st.sampled_from([10**6, 10**8, 2**31, 2**32 - 1]),
    rate=st.sampled_from([1, 8000, 16000]),
    channels=st.sampled_from([1, 2]),
)
def test_audio_headers_declaring_enormous_durations_are_refused(model, tmp_path_factory, frames, rate, channels):
    proc = model.processors["audio"]
    path = tmp_path_factory.mktemp("long") / "long.wav"
    path.write_bytes(wav_declaring(frames, rate, channels))
    with pytest.raises(InputError) as exc:
        proc(str(path), where=WHERE)
    assert WHERE in str(exc.value) and str(path) in str(exc.value)
    record("media: audio bombs", "rejected")


@fuzz(30)
@given(
    arr=hnp.arrays(
        dtype=st.sampled_from([np.float32, np.float64, np.int16, np.int32, np.uint8, np.int8, np.int64, np.complex64]),
        shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=400),
        elements=None,
    ),
    rate=st.one_of(
        st.sampled_from([None, 0, -1, True, 1, 7, 8000, 16000, 44100, 192000, 2**31, 2**40]), st.floats(), st.text()
    ),
)
def test_audio_arrays_with_any_rate_shape_dtype_and_values(model, arr, rate):
    proc = model.processors["audio"]
    value: Any = arr if rate is None else {"array": arr, "sample_rate": rate}
    check_audio(proc, value, "media: audio arrays")


def test_audio_nan_inf_empty_and_wrong_types(model, tmp_path):
    proc = model.processors["audio"]
    for bad in (np.full(800, np.nan, np.float32), np.array([0.1, np.inf, 0.2] * 100, np.float32)):
        with pytest.raises(InputError, match="NaN or infinite"):
            proc(bad, where=WHERE)
    empty = tmp_path / "e.wav"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        proc(str(empty), where=WHERE)
    png_named_wav = tmp_path / "picture.wav"
    png_named_wav.write_bytes(image_bytes("PNG", 4, 4, "RGB", 0))
    with pytest.raises(InputError, match="cannot read audio"):
        proc(str(png_named_wav), where=WHERE)
    for value in ({"sample_rate": 16000}, {"array": [0.1] * 100, "sample_rate": "fast"}, 3.5, {"path": 5}):
        with pytest.raises(InputError):
            proc(value, where=WHERE)
    # a few samples at an absurd rate: resampling them needed a filter of 2**40 / 16000 taps (memory exhausted)
    with pytest.raises(InputError, match="sample rate of 1099511627776 Hz"):
        proc({"array": np.ones(300, np.float32) * 0.1, "sample_rate": 2**40}, where=WHERE)


# --- manifests ----------------------------------------------------------------------------


def _media_dir(root: Path) -> dict[str, str]:
    """A manifest folder with real media, plus files outside it and a symlink leading out."""
    (root / "data").mkdir()
    (root / "data" / "a.png").write_bytes(image_bytes("PNG", 12, 10, "RGB", 1))
    (root / "data" / "a.wav").write_bytes(audio_bytes("WAV", 16000, 1, 4000, 1, "PCM_16"))
    (root / "outside.png").write_bytes(image_bytes("PNG", 12, 10, "RGB", 2))
    (root / "outside.wav").write_bytes(audio_bytes("WAV", 16000, 1, 4000, 2, "PCM_16"))
    (root / "data" / "link.png").symlink_to(root / "outside.png")
    os.mkfifo(root / "data" / "fifo")  # opening one for reading waits for a writer: forever
    os.mkfifo(root / "outside_fifo")
    return {
        "ok_image": "a.png",
        "ok_audio": "a.wav",
        "escape_rel": "../outside.png",
        "escape_abs": str(root / "outside.png"),
        "escape_abs_audio": str(root / "outside.wav"),
        "escape_link": "link.png",
        "escape_audio": "../outside.wav",
        "missing": "nope.png",
        "dir": ".",
        "fifo": "fifo",
        "outside_fifo": str(root / "outside_fifo"),
        "device": "/dev/zero",
    }


_FIELD_VALUES = st.one_of(
    st.none(),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.text(max_size=20),
    st.lists(st.integers(-3, 3), max_size=5),
    st.dictionaries(st.sampled_from(["prompt", "target", "path", "array", "bytes", "x"]), st.text(max_size=5)),
)


@st.composite
def manifest_line(draw: Any, paths: dict[str, str]) -> str:
    kind = draw(st.sampled_from(["record", "record", "record", "junk", "json"]))
    if kind == "junk":
        return draw(st.text(alphabet=st.characters(blacklist_characters="\n\r"), max_size=30))
    if kind == "json":
        return json.dumps(draw(st.one_of(st.integers(), st.lists(st.integers(), max_size=3), st.text(max_size=5))))
    rec: dict[str, Any] = {}
    for field in ("text", "image", "audio", "label", "target"):
        choice = draw(st.sampled_from(["absent", "good", "path", "value"]))
        if choice == "absent":
            continue
        if choice == "good":
            rec[field] = {
                "text": "hello",
                "image": paths["ok_image"],
                "audio": paths["ok_audio"],
                "label": 1,
                "target": "t",
            }[field]
        elif choice == "path":
            p = draw(st.sampled_from(sorted(paths.values())))
            rec[field] = {"path": p} if field == "audio" and draw(st.booleans()) else p
        else:
            rec[field] = draw(_FIELD_VALUES)
    line = json.dumps(rec)
    if draw(st.integers(0, 9)) == 0:  # cut a line short
        line = line[: draw(st.integers(0, len(line)))]
    return line


def _manifest_case(model: Any, root: Path, lines: list[str], surface: str = "manifest records") -> None:
    manifest = root / "data" / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    mods = {k: e.modality for k, e in model.encoders.items()}
    try:
        ds = ManifestDataset(manifest, model.processors, mods)
    except mmcore.MMCoreError as exc:
        assert str(manifest) in str(exc)
        record("manifests" if surface == "manifest records" else surface, "rejected")
        return
    # line numbers of non-blank lines, 1-based, as the dataset reports them
    numbers = [i + 1 for i, line in enumerate(lines) if line.strip()]
    samples = []
    for i in range(len(ds)):
        s = ds[i]
        if isinstance(s, BadRecord):
            assert s.where == f"{manifest}:{numbers[i]}", (s, numbers[i])
            assert s.reason
            record(surface, "rejected")
            text = str(s)
            if "leaves the manifest's folder" in text and surface == "manifest records":
                record("manifest records: path escapes refused", "rejected")
        else:
            assert s["where"] == f"{manifest}:{numbers[i]}"
            record(surface, "accepted")
        samples.append(s)
    batch, bad = Collator(model.processors)(samples)
    assert len(bad) == sum(isinstance(s, BadRecord) for s in samples)
    if batch is not None:
        assert batch.size == len(samples) - len(bad)
    if surface == "manifest records":
        record("manifests", "accepted")


@fuzz(25)
@given(data=st.data())
def test_fuzzed_manifests_give_samples_or_located_bad_records(model, tmp_path_factory, data):
    root = tmp_path_factory.mktemp("man")
    paths = _media_dir(root)
    lines = data.draw(st.lists(manifest_line(paths), min_size=0, max_size=8), label="lines")
    _manifest_case(model, root, lines)


def test_paths_leaving_the_manifest_folder_are_refused(model, tmp_path):
    """Relative, absolute, symlinked and audio-dict paths outside the manifest's folder are bad records."""
    paths = _media_dir(tmp_path)
    manifest = tmp_path / "data" / "m.jsonl"
    recs = [
        {"image": paths["escape_rel"]},
        {"image": paths["escape_abs"]},
        {"image": paths["escape_link"]},
        {"audio": paths["escape_audio"]},
        {"audio": {"path": paths["escape_audio"]}},  # was read: dict values bypassed the check
        {"audio": {"path": str(tmp_path / "outside.wav")}},
        {"image": paths["ok_image"], "audio": {"path": paths["ok_audio"]}},
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in recs))
    mods = {k: e.modality for k, e in model.encoders.items()}
    ds = ManifestDataset(manifest, model.processors, mods)
    for i in range(6):
        assert isinstance(ds[i], BadRecord), (i, ds[i])
        assert "leaves the manifest's folder" in ds[i].reason and ds[i].where == f"{manifest}:{i + 1}"
    ok = ds[6]
    assert not isinstance(ok, BadRecord), ok
    assert ok["inputs"]["audio"]["features"].shape[0] == 16
    allowed = ManifestDataset(manifest, model.processors, mods, allow_outside=True)
    assert not isinstance(allowed[4], BadRecord), allowed[4]


def test_manifest_regressions(model, tmp_path):
    _media_dir(tmp_path)
    lines = [
        '{"text": "a", "label": 9223372036854775808}',
        '{"text": "b", "label": -1}',
        "[" * 100_000,
        '{"text": "' + "\ud800" + '"}',
        '{"text": {"prompt": 1}}',
        "{}",
        "null",
        "   ",
        "\x00",
    ]
    _manifest_case(model, tmp_path, lines)
    ds = ManifestDataset(tmp_path / "data" / "m.jsonl", model.processors, {"text": "text"})
    assert "must be a class index" in ds[0].reason  # 2**63 made the collator overflow
    assert "must be a class index" in ds[1].reason
    assert "nested too deeply" in ds[2].reason  # was a RecursionError escaping the data loader


# --- record values of every shape ------------------------------------------------------------

_OPENED: list[str] | None = None  # files opened while a case runs (None: not watching)


def _watch(event: str, args: tuple) -> None:
    if event == "open" and _OPENED is not None and isinstance(args[0], (str, bytes)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_watch)  # cannot be removed; it records only while a case runs


def reference_values(paths: dict[str, str], contents: list[str]) -> st.SearchStrategy[Any]:
    """A non-text field's value in any shape: a path (inside, escaping, absolute, a symlink
    out, a FIFO, a device, a NUL byte), base64 content or junk under ``bytes``, a path under
    ``bytes``, ``path`` and ``bytes`` together, nested in lists and dicts at any depth."""
    outside = [p for p in paths.values() if os.path.isabs(p)]  # what a bypass would read, most often
    path = st.sampled_from([*sorted(paths.values()), *outside, *outside, "/etc/passwd", "a\x00.wav", ""])
    outside_path = st.sampled_from([*outside, "/etc/passwd"])
    in_bytes = st.one_of(outside_path, path, st.sampled_from([*contents, "", "!!", "AAAA"]), st.integers())
    leaf = st.one_of(path, st.none(), st.integers(-2, 70000), st.floats(allow_nan=True), st.booleans())

    def nest(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(
            st.lists(inner, max_size=3),
            st.fixed_dictionaries(
                {},
                optional={
                    "path": st.one_of(path, inner),
                    "bytes": st.one_of(in_bytes, inner),
                    "array": inner,
                    "sample_rate": st.integers(1, 48000),
                    "x": inner,
                },
            ),
        )

    nested = st.recursive(leaf, nest, max_leaves=8)
    return st.one_of(  # the shapes that once reached a file outside, then anything nested
        path,
        st.fixed_dictionaries({"bytes": in_bytes}),
        st.fixed_dictionaries({"path": path, "bytes": in_bytes}),
        st.fixed_dictionaries({"bytes": st.fixed_dictionaries({"path": st.one_of(outside_path, path)})}),
        st.fixed_dictionaries({"bytes": outside_path}),
        st.fixed_dictionaries({"path": st.one_of(outside_path, path)}),
        st.fixed_dictionaries({"array": nested, "sample_rate": st.integers(1, 48000)}),
        st.lists(path, min_size=1, max_size=3),
        nested,
    )


@fuzz(60)
@given(data=st.data())
def test_record_values_of_every_shape_open_nothing_outside_the_folder(model, tmp_path_factory, data):
    global _OPENED
    root = tmp_path_factory.mktemp("refs")
    paths = _media_dir(root)
    contents = [base64.b64encode((root / "data" / n).read_bytes()).decode() for n in ("a.png", "a.wav")]
    values = reference_values(paths, contents)

    def field(name: str, content: str) -> st.SearchStrategy[Any]:  # hostile, or a valid value of the field
        good = [name, {"path": name}, {"bytes": content}, {"bytes": content, "path": None}]
        return st.one_of(values, st.sampled_from(good))

    recs = data.draw(
        st.lists(
            st.fixed_dictionaries(
                {}, optional={"image": field("a.png", contents[0]), "audio": field("a.wav", contents[1])}
            ),
            min_size=1,
            max_size=6,
        ),
        label="records",
    )
    lines = [json.dumps(r) for r in recs]
    _OPENED = []
    try:
        _manifest_case(model, root, lines, "manifest record values (every shape)")
    finally:
        opened, _OPENED = _OPENED, None
    inside = str((root / "data").resolve()) + os.sep
    named = [os.path.realpath(p) for p in opened if p.startswith((str(root), "/etc", "/dev"))]
    assert all(p.startswith(inside) for p in named), (named, lines)
