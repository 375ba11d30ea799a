"""Regression tests of the threat model (docs/security.md): hostile inputs that once read files
outside a manifest's folder, exhausted memory or hung, each made by the test.

The cases that once exhausted memory or hung run in a fresh interpreter under a cap on its
address space (:func:`fuzzing.run_capped`) and a timeout, so a regression fails the test
instead of taking the machine.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from fuzzing import MiB, run_capped
from test_fuzz_data import audio_bytes, image_bytes
from test_fuzz_weights import _reseal

import mmcore
from mmcore.data import MAX_RECORD_BYTES, BadRecord, ManifestDataset
from mmcore.errors import InputError, SpecError

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("mmcore_audio", reason="the audio plugin reads the hostile audio records")
pytest.importorskip("mmcore_vision", reason="the vision plugin reads the hostile image records")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def media(tmp_path: Path) -> dict[str, Path]:
    """A manifest folder with a WAV, a PNG and a FIFO; outside it, a WAV, a PNG and a FIFO."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "ok.wav").write_bytes(audio_bytes("WAV", 16000, 1, 4000, 1, "PCM_16"))
    (data / "ok.png").write_bytes(image_bytes("PNG", 12, 10, "RGB", 1))
    os.mkfifo(data / "fifo")
    (tmp_path / "outside.wav").write_bytes(audio_bytes("WAV", 16000, 1, 4000, 2, "PCM_16"))
    (tmp_path / "outside.png").write_bytes(image_bytes("PNG", 12, 10, "RGB", 2))
    os.mkfifo(tmp_path / "outside_fifo")
    return {
        "root": tmp_path,
        "data": data,
        "wav": tmp_path / "outside.wav",
        "png": tmp_path / "outside.png",
        "fifo": tmp_path / "outside_fifo",
    }


# --- 1. every file reference in a record, whatever its shape -----------------------------

_CHILD_RECORDS = """
import json, os, sys
case = json.loads(os.environ["CASE"])
from mmcore.data import BadRecord, ManifestDataset
from mmcore_audio import AudioProcessor
from mmcore_vision.processor import ImageProcessor
procs = {
    "audio": AudioProcessor({"n_mels": 16, "n_fft": 64, "hop_length": 32, "max_seconds": 2.0}),
    "image": ImageProcessor({"image_size": 16}),
}
mods = {"audio": "audio", "image": "image"}
ds = ManifestDataset(case["manifest"], procs, mods, allow_outside=case["allow_outside"])
cap_memory(1024 * 1024 * 1024)
opened = []
sys.addaudithook(lambda event, args: opened.append(args[0]) if event == "open" else None)
out = []
for i in range(len(ds)):
    s = ds[i]
    out.append([s.where, s.field, s.reason] if isinstance(s, BadRecord) else [s["where"], None, None])
print(json.dumps({"samples": out, "opened": [os.fsdecode(p) for p in opened if isinstance(p, (str, bytes))]}))
"""


def _process(manifest: Path, allow_outside: bool = False) -> tuple[list[list], list[str]]:
    """Process every record in a capped child with an audit hook; (samples, files opened)."""
    case = json.dumps({"manifest": str(manifest), "allow_outside": allow_outside})
    out = json.loads(run_capped(_CHILD_RECORDS, timeout=90, env={"CASE": case}).splitlines()[-1])
    return out["samples"], out["opened"]


def test_file_references_of_every_shape_stay_in_the_manifest_folder(media):
    """Issue 21.1: ``bytes`` holding a path, a path beside a checked one, a path nested in
    ``bytes`` or ``array``, lists, FIFOs and devices: none opens a file outside the folder,
    each is a bad record at its own line naming the field, and nothing hangs."""
    out_wav, out_png, out_fifo = str(media["wav"]), str(media["png"]), str(media["fifo"])
    hostile = [
        {"audio": {"bytes": out_wav}},  # trained on the outside file with exit 0
        {"audio": {"path": "ok.wav", "bytes": out_wav}},  # the checked path passed, 'bytes' won
        {"audio": {"bytes": {"path": out_wav}}},
        {"audio": {"bytes": "/etc/passwd"}},  # opened: the error told whether it exists
        {"audio": {"bytes": "/dev/zero"}},
        {"audio": {"bytes": out_fifo}},  # hung training forever
        {"audio": {"array": {"path": out_wav}, "sample_rate": 16000}},
        {"audio": ["../outside.wav"]},
        {"image": {"bytes": out_png}},
        {"image": {"path": "../outside.png"}},
        {"audio": "fifo"},  # inside the folder, but a FIFO: reported as "file not found"
        {"audio": {"path": "fifo"}},
        {"audio": {"bytes": 12}},
    ]
    good = [
        {"audio": {"path": "ok.wav"}},
        {"audio": {"bytes": _b64((media["data"] / "ok.wav").read_bytes())}},
        {"image": {"bytes": _b64((media["data"] / "ok.png").read_bytes()), "path": None}},
        {"image": "ok.png", "audio": "ok.wav"},
    ]
    manifest = media["data"] / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in hostile + good))
    samples, opened = _process(manifest)
    # files the records named (imports and libraries the processors load are not their business)
    named = [os.path.realpath(p) for p in opened if p.startswith((str(media["root"]), "/etc", "/dev"))]
    inside = str(media["data"].resolve())
    assert named and all(p.startswith(inside + os.sep) for p in named), named
    for i, (where, field, reason) in enumerate(samples[: len(hostile)]):
        assert where == f"{manifest}:{i + 1}", (i, where)
        assert reason is not None, (i, hostile[i])
        assert field == next(iter(hostile[i])), (i, field, reason)
        assert "does not exist" not in reason and "ermission" not in reason, reason  # nothing was probed
    reasons = [s[2] for s in samples]
    assert "'bytes' is not base64" in reasons[0] and "'bytes' must be the file's content" in reasons[2]
    assert "leaves the manifest's folder" in reasons[6] and "leaves the manifest's folder" in reasons[7]
    assert reasons[10].startswith("path 'fifo': ") and "is a FIFO (named pipe), not a regular file" in reasons[10]
    assert reasons[11].startswith("path 'fifo': ")  # refused by the resolver, before any processor
    for j, sample in enumerate(samples[len(hostile) :]):
        assert sample[2] is None, (good[j], sample)


def test_allow_outside_lifts_only_the_folder_rule(media):
    """Resolution alone (no processor runs, so nothing can hang here): devices and FIFOs stay refused."""
    from mmcore.data import resolve_record

    mods = {"audio": "audio"}
    for value, says in (("/dev/zero", "is a character device"), (str(media["fifo"]), "is a FIFO (named pipe)")):
        with pytest.raises(InputError, match=re.escape(says + ", not a regular file")):
            resolve_record({"audio": value}, mods, media["data"], allow_outside=True)
    wav = {"audio": {"path": str(media["wav"])}}
    assert resolve_record(wav, mods, media["data"], allow_outside=True) == wav
    with pytest.raises(InputError, match="leaves the manifest's folder"):
        resolve_record(wav, mods, media["data"])


def test_processors_refuse_bytes_that_are_not_bytes(media):
    """In Python too, an audio or image dict's ``bytes`` is content, never a path."""
    from mmcore_audio import AudioProcessor
    from mmcore_vision.processor import ImageProcessor

    audio = AudioProcessor({"n_mels": 16, "n_fft": 64, "hop_length": 32})
    image = ImageProcessor({"image_size": 16})
    for proc, path in ((audio, media["wav"]), (image, media["png"])):
        for value in ({"bytes": str(path)}, {"bytes": {"path": str(path)}}, {"path": "x", "bytes": str(path)}):
            with pytest.raises(InputError, match="'bytes' must hold the file's content"):
                proc(value, where="r:1 field 'x'")
        with pytest.raises(InputError, match="is a FIFO"):  # not a hang
            proc({"path": str(media["fifo"])}, where="r:1 field 'x'")
        with pytest.raises(InputError, match="is a character device"):
            proc("/dev/zero", where="r:1 field 'x'")
    assert image({"bytes": media["png"].read_bytes()})["pixels"].shape == (3, 16, 16)


# --- 2. deep dotted keys in a spec or a model directory's spec.toml ---------------------

_CHILD_SPECS = """
import json
from mmcore.errors import SpecError
from mmcore.spec import parse_spec_text
from mmcore.plugins import get_registry
get_registry()  # imports the plugins (and torch) before the cap
deep = ".".join(["x"] * 100_000)  # 200 KB: under MAX_SPEC_BYTES, so the depth checks must catch it
texts = [
    deep + " = 1\\n",
    'spec_version = 1\\n\\n[encoders.image]\\ncomponent = "vision.patch"\\n' + deep + " = 1\\n",
    "[" + deep + "]\\n",
    "a = " + "{b = " * 10_000 + "1" + "}" * 10_000 + "\\n",
    "a = " + "[" * 100_000,
]
cap_memory(256 * 1024 * 1024)
for text in texts:
    try:
        parse_spec_text(text, file="hostile.toml")
    except SpecError as exc:
        print(json.dumps([[i.path, i.message] for i in exc.issues]))
    else:
        raise SystemExit("accepted a hostile spec")
import os, tempfile
from mmcore.spec import load_spec
with tempfile.TemporaryDirectory() as d:  # 8 GiB of zeros, sparse: no disk, but read whole it fills memory
    path = os.path.join(d, "spec.toml")
    with open(path, "wb") as f:
        f.truncate(8 << 30)
    try:
        load_spec(path)
    except SpecError as exc:
        print(json.dumps([[i.path, i.message] for i in exc.issues]))
"""


def test_deep_dotted_keys_are_refused_before_parsing():
    """Issue 21.2: ``x.x.x...`` of 100,000 parts (200 KB) needed more than 24 GB; under a
    256 MiB cap each form is now a SpecError naming the line and the key."""
    issues = [json.loads(line) for line in run_capped(_CHILD_SPECS, timeout=60).splitlines()]
    assert len(issues) == 6
    assert "larger than 262,144 bytes" in issues[5][0][1]  # read no further than the bound
    assert issues[0] == [["x.x.x.x... (17 parts)", issues[0][0][1]]] and issues[0][0][1].startswith("line 1: ")
    assert issues[1][0][0].startswith("encoders.image.x.x") and issues[1][0][1].startswith("line 5: ")
    assert "MAX_KEY_PARTS" in issues[2][0][1]
    assert "MAX_TOML_DEPTH" in issues[3][0][1] and "MAX_TOML_DEPTH" in issues[4][0][1]
    assert issues[4][0][0] == "a"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A tiny saved text model, copied by the tests that tamper with it."""
    spec = {"spec_version": 1, "backbone": {"width": 16, "depth": 1, "heads": 2, "context_length": 16}}
    spec["encoders"] = {"text": {"component": "text.bytes", "max_length": 16}}
    d = tmp_path_factory.mktemp("saved") / "model"
    mmcore.save(mmcore.build(spec), d)
    return d


_CHILD_LOAD = """
import json, os
import mmcore
import mmcore.checkpoint
from mmcore.plugins import get_registry
get_registry()  # imports the plugins (and torch) before the cap
cap_memory(512 * 1024 * 1024)
for d in json.loads(os.environ["CASE"]):
    try:
        mmcore.load(d)
    except mmcore.MMCoreError as exc:
        print(type(exc).__name__, str(exc)[:300].replace(chr(10), " "))
    else:
        raise SystemExit("loaded a hostile model directory")
"""


def test_hostile_model_directories_are_refused(saved, tmp_path):
    """Issue 21.2: a resealed 122 KB ``spec.toml`` made ``mmcore.load`` die with MemoryError; a
    processor file that is a FIFO (its checksum left out of a crafted manifest) hung it."""
    deep = tmp_path / "deep"
    shutil.copytree(saved, deep)
    (deep / "spec.toml").write_text(".".join(["x"] * 61_000) + " = 1\n" + (deep / "spec.toml").read_text())
    _reseal(deep)
    fifo = tmp_path / "fifo"
    shutil.copytree(saved, fifo)
    name = "processors/text/tokenizer_config.json"
    (fifo / name).unlink()
    os.mkfifo(fifo / name)
    manifest = json.loads((fifo / "manifest.json").read_text())
    del manifest["sha256"][name]
    (fifo / "manifest.json").write_text(json.dumps(manifest))
    out = run_capped(_CHILD_LOAD, timeout=90, env={"CASE": json.dumps([str(deep), str(fifo)])}).splitlines()
    assert out[0].startswith("SpecError") and "spec.toml" in out[0], out
    assert "line 1" in out[0] and "MAX_KEY_PARTS" in out[0], out
    assert out[1].startswith("ModelDirError") and "is a FIFO (named pipe), not a regular file" in out[1], out
    big = tmp_path / "big"
    shutil.copytree(saved, big)
    (big / "spec.toml").write_text("# " + "x" * (mmcore.spec.MAX_SPEC_BYTES + 10) + "\n")
    _reseal(big)
    with pytest.raises(mmcore.ModelDirError, match="larger than 262,144 bytes"):
        mmcore.load(big)


# --- 3. long manifest lines -----------------------------------------------------------

_CHILD_LINES = """
import json, os
case = json.loads(os.environ["CASE"])
from mmcore.data import BadRecord, ManifestDataset
from mmcore_text import TextProcessor
procs = {"text": TextProcessor({"max_length": 64})}
cap_memory(case["cap"])
for limit in case["limits"]:
    ds = ManifestDataset(case["manifest"], procs, {"text": "text"}, **({"max_record_bytes": limit} if limit else {}))
    out = []
    for i in range(len(ds)):
        s = ds[i]
        out.append([s.where, s.reason] if isinstance(s, BadRecord) else [s["where"], int(s["inputs"]["text"]["ids"].shape[0])])
    print(json.dumps(out))
"""


def test_long_lines_are_bad_records_and_long_texts_are_cut_before_encoding(tmp_path):
    """Issue 21.3: text.bytes turned a whole line into Python ints (~17 bytes a byte: a 1 GB
    line peaked at 11.2 GB). A line beyond max_record_bytes is now a bad record at its
    file:line, unread; a long text under the limit is cut before it is encoded, so a 40 MB
    prompt fits a 300 MiB cap (it needed more than 640 MB)."""
    manifest = tmp_path / "m.jsonl"
    big = MAX_RECORD_BYTES + 1000
    with open(manifest, "w") as f:
        f.write(json.dumps({"text": "short"}) + "\n\n")
        f.write('{"text": "' + "a" * big + '"}\n')
        f.write('{"target": "t", "text": "' + "\u00e9" * (20 * MiB) + '"}\n')  # 40 MB of UTF-8 as a prompt
    case = {"manifest": str(manifest), "cap": 300 * MiB, "limits": [0, 64 * MiB]}
    default, raised = (
        json.loads(line) for line in run_capped(_CHILD_LINES, timeout=120, env={"CASE": json.dumps(case)}).splitlines()
    )
    assert default[0] == [f"{manifest}:1", 7]
    assert default[1][0] == f"{manifest}:3" and f"more than max_record_bytes = {MAX_RECORD_BYTES:,}" in default[1][1]
    assert default[2][0] == f"{manifest}:4" and "max_record_bytes" in default[2][1]
    assert raised[1] == [f"{manifest}:3", 64] and raised[2] == [f"{manifest}:4", 63]  # 2-byte characters


def test_text_cut_before_encoding_gives_the_same_tokens(tmp_path):
    """The cut changes no result: every truncation side, prompt/target pairs, bytes and BPE
    (trained here on Python's own docstrings, so it has multi-character tokens)."""
    import builtins
    import random

    import mmcore_text.tokenizer as tokenizer_module
    from mmcore_text import TextProcessor
    from mmcore_text.bpe import train_bpe
    from mmcore_text.config import BPETextConfig
    from mmcore_text.tokenizer import BPETextProcessor

    corpus = tmp_path / "c.txt"
    docs = [getattr(builtins, n).__doc__ or "" for n in dir(builtins)]
    corpus.write_text("\n".join([*docs, "ab é€ ab ab abab é€é€"]) * 3, encoding="utf-8")
    tok = train_bpe([corpus], 400, tmp_path / "tok")
    rng = random.Random(0)
    pieces = ["a", "b", " ", "é", "€", "𝄞", "\n", "the ", "return ", "ab"]
    procs = [TextProcessor({"max_length": 12, "truncation": t}) for t in ("right", "left", "error")]
    procs += [
        BPETextProcessor(BPETextConfig(tokenizer=str(tok), max_length=12, truncation=t)) for t in ("right", "left")
    ]
    assert procs[-1].tokenizer.max_token_chars > 1
    for _ in range(200):
        s, t = ("".join(rng.choice(pieces) for _ in range(rng.randint(0, 30))) for _ in range(2))
        for proc in procs:
            got = [_outcome(proc, v) for v in (s, {"prompt": s, "target": t}, {"prompt": s})]
            orig = tokenizer_module.precut
            tokenizer_module.precut = lambda text, *a: text  # encode everything, as before
            try:
                want = [_outcome(proc, v) for v in (s, {"prompt": s, "target": t}, {"prompt": s})]
            finally:
                tokenizer_module.precut = orig
            assert got == want, (proc.truncation, s, t)


def _outcome(proc, value):
    try:
        out = proc(value)
    except InputError:
        return "error"
    return {k: v.tolist() for k, v in out.items()}


# --- 4. image formats ------------------------------------------------------------------

EPS = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 8 8
%%EndComments
0 0 moveto 8 8 lineto stroke
showpage
%%EOF
"""


def test_postscript_never_reaches_ghostscript(tmp_path, monkeypatch):
    """Issue 21.4: Pillow opens EPS (whatever the extension) and runs Ghostscript to decode it."""
    from mmcore_vision.processor import FORMATS, ImageProcessor
    from PIL import EpsImagePlugin, Image

    path = tmp_path / "photo.png"
    path.write_bytes(EPS)
    with Image.open(path) as img:  # without the allow-list Pillow takes it (and would run gs on load)
        assert img.format == "EPS"
    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append(a))
    proc = ImageProcessor({"image_size": 16})
    for value in (str(path), EPS, {"bytes": EPS}):
        with pytest.raises(InputError, match="accepted format .PNG, JPEG, GIF, BMP, TIFF, WEBP"):
            proc(value, where="m.jsonl:3 field 'image'")
    assert calls == []
    assert FORMATS == ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
    for fmt in FORMATS:  # every listed format still opens
        assert proc(image_bytes(fmt, 9, 7, "RGB", 0))["pixels"].shape == (3, 16, 16), fmt


# --- 5. a NUL byte in a path -----------------------------------------------------------


def test_nul_byte_in_a_path_is_a_bad_record_at_its_line_and_field(media):
    manifest = media["data"] / "m.jsonl"
    lines = ['{"image": "ok.png"}', "", '{"image": "ok\\u0000.png"}', '{"audio": {"path": "a\\u0000.wav"}}']
    manifest.write_text("\n".join(lines) + "\n")
    mods = {"image": "image", "audio": "audio"}
    from mmcore_audio import AudioProcessor
    from mmcore_vision.processor import ImageProcessor

    procs = {"image": ImageProcessor({"image_size": 16}), "audio": AudioProcessor({"n_mels": 16})}
    ds = ManifestDataset(manifest, procs, mods)
    assert not isinstance(ds[0], BadRecord)
    for i, line, field in ((1, 3, "image"), (2, 4, "audio")):
        bad = ds[i]
        assert isinstance(bad, BadRecord) and bad.where == f"{manifest}:{line}" and bad.field == field, bad
        assert "NUL byte" in bad.reason


# --- 6. the smaller points ---------------------------------------------------------------


def test_weights_from_a_device_or_a_folder_says_so(tmp_path):
    from mmcore.weights import plan_weights

    model = mmcore.build(
        {
            "spec_version": 1,
            "backbone": {"width": 16, "depth": 1, "heads": 2, "context_length": 16},
            "encoders": {"text": {"component": "text.bytes", "max_length": 16}},
        }
    )
    from mmcore.config import WeightsSource

    for path, says in (("/dev/zero", "is a character device"), (str(tmp_path), "is a directory")):
        plan = plan_weights(model, "backbone", WeightsSource(path=path))
        assert any(says in p and "no such file" not in p for p in plan.problems), plan.problems


def test_millions_of_unknown_keys_give_a_short_message():
    """Issue 21.6: each problem repeated the list of valid options (a message of tens of MB)."""
    keys = "".join(f"u{i} = 1\n" for i in range(20_000))
    text = 'spec_version = 1\n[encoders.text]\ncomponent = "text.bytes"\n' + keys
    with pytest.raises(SpecError) as info:
        mmcore.spec.parse_spec_text(text, file="s.toml")
    msg = str(info.value)
    assert len(info.value.issues) == 20_000
    assert msg.count("valid: max_length") == 1 and "... and 19950 more problems" in msg
    assert len(msg) < 10_000
    with pytest.raises(SpecError, match="longer than 262,144 characters"):  # millions: refused by size
        mmcore.spec.parse_spec_text(text * 20, file="s.toml")


def test_spec_files_that_are_not_regular_files_are_refused(tmp_path):
    os.mkfifo(tmp_path / "spec.toml")
    for path, says in ((tmp_path / "spec.toml", "is a FIFO"), (Path("/dev/zero"), "is a character device")):
        with pytest.raises(SpecError, match=says):
            mmcore.load_spec(path)


# --- the source and the docs ---------------------------------------------------------------


def test_tomllib_runs_in_one_place_only():
    """Every spec, spec.toml and catalog goes through mmcore.tomlfile.parse_toml and its bounds."""
    import ast

    calls = []
    for path in [*ROOT.glob("mmcore/**/*.py"), *ROOT.glob("plugins/*/src/**/*.py")]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                for sub in ast.walk(node):
                    f = sub.func if isinstance(sub, ast.Call) else None
                    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "tomllib":
                        if f.attr in ("load", "loads"):
                            calls.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert calls == ["mmcore/tomlfile.py:parse_toml"], calls


def test_security_doc_states_the_code_bounds():
    """docs/security.md's Bounds table gives each bound's default as the code sets it."""
    from mmcore_audio.config import AudioProcessorConfig
    from mmcore_audio.decode import MAX_SAMPLE_RATE
    from mmcore_vision.config import ImageOptions
    from mmcore_vision.processor import FORMATS

    from mmcore import spec, weights

    doc = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    rows = {line.split("|")[3].strip(): line.split("|")[2].strip() for line in doc.splitlines() if line.count("|") == 5}
    expected = {
        "`mmcore.spec.MAX_SPEC_BYTES`": f"{spec.MAX_SPEC_BYTES:,}",
        "`mmcore.spec.MAX_KEY_PARTS`": f"{spec.MAX_KEY_PARTS:,}",
        "`mmcore.spec.MAX_TOML_DEPTH`": f"{spec.MAX_TOML_DEPTH:,}",
        "`mmcore.SpecError.SHOWN`": f"{SpecError.SHOWN:,}",
        "`mmcore.data.MAX_RECORD_BYTES`; `ManifestDataset(max_record_bytes=...)`": f"{MAX_RECORD_BYTES:,}",
        "the vision encoders' `max_pixels` option": f"{ImageOptions.model_fields['max_pixels'].default:,}",
        "`mmcore_vision.processor.FORMATS`": ", ".join(FORMATS),
        "the audio encoder's `max_seconds` option": f"{AudioProcessorConfig.model_fields['max_seconds'].default:g}",
        "`mmcore_audio.decode.MAX_SAMPLE_RATE`": f"{MAX_SAMPLE_RATE:,}",
        "`mmcore.weights` (`_MAX_HEADER`)": f"{weights._MAX_HEADER:,}",
    }
    for where, value in expected.items():
        assert rows.get(where) == value, (where, rows.get(where), value)
    assert "64 megapixels" not in doc.replace("as 64 megapixels", "")  # the old, wrong figure
    assert f"(default {ImageOptions.model_fields['max_pixels'].default:,})" in doc


def test_records_given_to_explain_and_export_follow_the_same_rules(media):
    """``mmcore explain/export --record FILE:LINE`` resolve a record's files by the manifest rules."""
    from mmcore.data import resolve_record

    mods = {"audio": "audio", "image": "image", "text": "text"}
    base = media["data"]
    ok = resolve_record({"image": "ok.png", "text": "../not/a/path"}, mods, base)
    assert ok == {"image": str(base / "ok.png"), "text": "../not/a/path"}
    content = (base / "ok.wav").read_bytes()
    assert resolve_record({"audio": {"bytes": _b64(content)}}, mods, base) == {"audio": {"bytes": content}}
    for value, says in (
        ({"image": "../outside.png"}, "leaves the manifest's folder"),
        ({"audio": {"bytes": str(media["wav"])}}, "'bytes' is not base64"),
        ({"audio": "fifo"}, "is a FIFO"),
    ):
        with pytest.raises(InputError, match=says) as info:
            resolve_record(value, mods, base, where="m.jsonl:3")
        assert str(info.value).startswith(f"m.jsonl:3 field {next(iter(value))!r}: ")
    # typed on the command line (no file): resolved against the current folder, which it may leave
    assert resolve_record({"image": str(media["png"])}, mods) == {"image": str(media["png"])}
    with pytest.raises(InputError, match="is a FIFO"):
        resolve_record({"audio": str(media["fifo"])}, mods)


def test_a_processor_failure_is_located_at_its_line(tmp_path):
    """A processor's unexpected ValueError or OSError was reported at ``record <index>`` (record 1 for line 3)."""

    class Failing:
        def __call__(self, value, *, where=""):
            raise ValueError("embedded null byte")

    manifest = tmp_path / "m.jsonl"
    manifest.write_text('\n\n{"x": 1}\n')
    bad = ManifestDataset(manifest, {"x": Failing()}, {"x": "other"})[0]
    assert isinstance(bad, BadRecord) and bad.where == f"{manifest}:3", bad
