"""Supply chain: no pickle, no eval/exec, no dynamic imports of data-chosen names, no shell,
no network in the package; training and generation never open a connection.

The scan reads the AST of every module of ``mmcore`` and of the first-party plugins'
sources. Every hit must be listed in :data:`ALLOWED` with the reason it is safe; an
entry that no longer matches anything is an error too, so the list stays true.
"""

from __future__ import annotations

import ast
import socket
from dataclasses import dataclass

import pytest
import torch
from conftest import ROOT

import mmcore

SOURCES = [ROOT / "mmcore", *sorted((ROOT / "plugins").glob("*/src"))]

#: Modules whose import alone is a finding: deserialisers that run code, and network clients.
BANNED_MODULES = {
    "pickle": "unpickling runs code",
    "cPickle": "unpickling runs code",
    "_pickle": "unpickling runs code",
    "dill": "unpickling runs code",
    "cloudpickle": "unpickling runs code",
    "joblib": "joblib.load unpickles",
    "marshal": "code objects",
    "shelve": "pickle-backed",
    "socket": "network",
    "urllib.request": "network",
    "http.client": "network",
    "requests": "network",
    "httpx": "network",
    "urllib3": "network",
    "huggingface_hub": "downloads",
}
BANNED_CALLS = {
    "eval": "runs a string as code",
    "exec": "runs a string as code",
    "compile": "compiles a string to code",
    "os.system": "runs a shell",
    "os.popen": "runs a shell",
    "torch.load": "unpickles unless weights_only=True",
    "torch.hub.load": "downloads and runs code",
    "timm.create_model(pretrained=True)": "downloads weights",
    "numpy.load(allow_pickle=True)": "unpickles",
    "__import__(non-constant)": "imports a computed name",
    "importlib.import_module(non-constant)": "imports a computed name",
    "subprocess(shell=True)": "runs a shell",
}


@dataclass(frozen=True)
class Finding:
    file: str  # relative to the checkout
    function: str  # enclosing def (dotted), or "<module>"
    what: str  # a key of BANNED_CALLS, or "import <module>"
    line: int = 0

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.file, self.function, self.what)


#: (file, enclosing function, finding) -> why it is safe.
ALLOWED: dict[tuple[str, str, str], str] = {
    (
        "mmcore/__init__.py",
        "__getattr__",
        "importlib.import_module(non-constant)",
    ): "lazy attribute access: the module name comes from the constant _LAZY table of mmcore's own modules, "
    "and only for names in it",
    (
        "mmcore/registry.py",
        "_resolve",
        "importlib.import_module(non-constant)",
    ): "imports a component's factory reference ('package.module:callable'), which an installed plugin's "
    "mmcore_register_components hook returned; a spec only names a registered component and never supplies "
    "the reference",
    (
        "plugins/text/src/mmcore_text/__init__.py",
        "__getattr__",
        "importlib.import_module(non-constant)",
    ): "lazy attribute access from the plugin's constant table of its own modules",
    (
        "plugins/audio/src/mmcore_audio/__init__.py",
        "__getattr__",
        "importlib.import_module(non-constant)",
    ): "lazy attribute access from the plugin's constant table of its own modules",
    (
        "plugins/heads/src/mmcore_heads/__init__.py",
        "__getattr__",
        "importlib.import_module(non-constant)",
    ): "lazy attribute access from the plugin's constant table of its own modules",
    (
        "mmcore/testing/processors.py",
        "_pickled_copy",
        "import pickle",
    ): "the conformance kit checks the Processor contract 'picklable (DataLoader workers)': it unpickles only "
    "the bytes it has just pickled from the processor under test, never data read from a file",
}


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _kw_true(call: ast.Call, name: str) -> bool:
    for kw in call.keywords:
        if kw.arg == name:
            return not (isinstance(kw.value, ast.Constant) and not kw.value.value)
    return False


class _Scanner(ast.NodeVisitor):
    def __init__(self, rel: str):
        self.rel = rel
        self.stack: list[str] = []
        self.aliases: dict[str, str] = {}  # local name -> dotted module/attribute it stands for
        self.found: list[Finding] = []

    def _add(self, what: str, node: ast.AST) -> None:
        fn = ".".join(self.stack) or "<module>"
        self.found.append(Finding(self.rel, fn, what, getattr(node, "lineno", 0)))

    def _def(self, node: ast.AST) -> None:
        self.stack.append(node.name)  # type: ignore[attr-defined]
        self.generic_visit(node)
        self.stack.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _def

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            if a.asname:
                self.aliases[a.asname] = a.name
            else:
                head = a.name.split(".")[0]
                self.aliases[head] = head
            self._check_module(a.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            hit = self._check_module(node.module, node)
            for a in node.names:
                self.aliases[a.asname or a.name] = f"{node.module}.{a.name}"
                if not hit:
                    self._check_module(f"{node.module}.{a.name}", node)

    def _check_module(self, name: str, node: ast.AST) -> bool:
        for banned in BANNED_MODULES:
            if name == banned or name.startswith(banned + "."):
                self._add(f"import {banned}", node)
                return True
        return False

    def visit_Call(self, node: ast.Call) -> None:
        name = _dotted(node.func)
        if name is not None:
            head, _, rest = name.partition(".")
            full = self.aliases.get(head, head) + (f".{rest}" if rest else "")
            full = {"np.load": "numpy.load"}.get(full, full)
            if full in ("eval", "exec", "compile", "os.system", "os.popen", "torch.load", "torch.hub.load"):
                self._add(full, node)
            elif full == "numpy.load" and _kw_true(node, "allow_pickle"):
                self._add("numpy.load(allow_pickle=True)", node)
            elif full == "timm.create_model" and _kw_true(node, "pretrained"):
                self._add("timm.create_model(pretrained=True)", node)
            elif full in ("__import__", "importlib.import_module"):
                args = node.args[:1]
                if not args or not isinstance(args[0], ast.Constant):
                    self._add(f"{full}(non-constant)", node)
            elif full.startswith("subprocess.") and _kw_true(node, "shell"):
                self._add("subprocess(shell=True)", node)
        self.generic_visit(node)


def scan_source(text: str, rel: str) -> list[Finding]:
    sc = _Scanner(rel)
    sc.visit(ast.parse(text, filename=rel))
    return sc.found


def scan_package() -> list[Finding]:
    out = []
    for base in SOURCES:
        for path in sorted(base.rglob("*.py")):
            if "build" in path.relative_to(ROOT).parts:
                continue
            rel = path.relative_to(ROOT).as_posix()
            out += scan_source(path.read_text(encoding="utf-8"), rel)
    return out


def test_scanner_catches_every_pattern():
    """The scanner itself works: each banned pattern in a snippet is found (else the scan proves nothing)."""
    snippet = """
import pickle
import socket as s
from urllib.request import urlopen
import numpy as np
import importlib, subprocess, torch, timm

def f(x, name):
    torch.load(x)
    np.load(x, allow_pickle=True)
    eval(x); exec(x); compile(x, "f", "exec")
    __import__(name)
    importlib.import_module(name)
    importlib.import_module("json")  # constant: fine
    subprocess.run(x, shell=True)
    subprocess.run([x])  # no shell: fine
    timm.create_model(name, pretrained=True)
    timm.create_model(name, pretrained=False)  # fine
    import os; os.system(x)
"""
    found = {f.what for f in scan_source(snippet, "x.py")}
    assert found == {
        "import pickle",
        "import socket",
        "import urllib.request",
        "torch.load",
        "numpy.load(allow_pickle=True)",
        "eval",
        "exec",
        "compile",
        "__import__(non-constant)",
        "importlib.import_module(non-constant)",
        "subprocess(shell=True)",
        "timm.create_model(pretrained=True)",
        "os.system",
    }


def test_package_has_only_justified_uses():
    findings = scan_package()
    assert len({f.file for f in findings} | {p.as_posix() for p in SOURCES}) > 1
    unjustified = [f for f in findings if f.key not in ALLOWED]
    assert not unjustified, "unjustified uses (fix them, or add them to ALLOWED with the reason):\n" + "\n".join(
        f"  {f.file}:{f.line} in {f.function}: {f.what} ({BANNED_CALLS.get(f.what) or 'banned module'})"
        for f in unjustified
    )
    stale = set(ALLOWED) - {f.key for f in findings}
    assert not stale, f"ALLOWED entries that match nothing any more (remove them): {sorted(stale)}"


def test_scan_covers_every_package_module():
    files = {p.relative_to(ROOT).as_posix() for base in SOURCES for p in base.rglob("*.py")}
    for must in ("mmcore/checkpoint.py", "mmcore/trainer.py", "plugins/vision/src/mmcore_vision/processor.py"):
        assert must in files
    assert len(files) >= 40


# --- no network -------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to resolve a name or open a connection is recorded and fails."""
    attempts: list[str] = []

    def refuse(what):
        def f(*args, **kwargs):
            attempts.append(f"{what}{args[1:2] if what == 'connect' else args[:1]}")
            raise OSError(f"network access during a test: {what}")

        return f

    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect_ex"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket, "gethostbyname", refuse("gethostbyname"))
    return attempts


def test_no_network_fixture_blocks(no_network):
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", 9))
    assert no_network


def test_training_saving_loading_and_generation_never_touch_the_network(tmp_path, no_network, manager):
    corpus = tmp_path / "c.txt"
    corpus.write_text((ROOT / "mmcore" / "errors.py").read_text())
    cls = tmp_path / "cls.jsonl"
    cls.write_text('{"text": "good", "label": 1}\n{"text": "bad", "label": 0}\n')
    spec = {
        "spec_version": 1,
        "backbone": {"width": 32, "depth": 1, "heads": 2, "context_length": 48},
        "encoders": {"text": {"component": "text.bytes", "max_length": 48}},
        "heads": {"lm": {"component": "lm"}, "cls": {"component": "classify", "num_classes": 2}},
        "training": {"steps": 4, "batch_size": 2, "log_every": 1, "checkpoint_every": 2, "progress": False},
        "tasks": {
            "lm": {"objective": "lm", "train": str(corpus), "eval": str(corpus), "head": "lm"},
            "cls": {"objective": "classification", "train": str(cls), "head": "cls"},
        },
    }
    from mmcore.trainer import train

    model, result = train(mmcore.parse_spec(spec), out_dir=tmp_path / "run")
    assert result.steps == 4
    loaded = mmcore.load(tmp_path / "run")
    batch = loaded.preprocess([{"text": {"prompt": "Error"}}], targets=())
    out = mmcore.generate(loaded, batch, mmcore.GenerationConfig(max_new_tokens=5, do_sample=True, seed=0))
    assert len(out) == 1 and len(out[0]) <= 5
    trained = model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in loaded.state_dict().items())
    assert no_network == [], f"network access attempted: {no_network}"
