"""Shared fixtures for the core's tests."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture(autouse=True)
def _seed() -> None:
    import torch

    torch.manual_seed(0)


@pytest.fixture
def manager(monkeypatch: pytest.MonkeyPatch):
    """A fresh process-wide plugin manager (entry points loaded), restored afterwards."""
    from mmcore import plugins

    for var in (plugins.ENV_DISABLE_AUTOLOAD, plugins.ENV_STRICT, plugins.ENV_BLOCK):
        monkeypatch.delenv(var, raising=False)
    pm = plugins.PluginManager()
    old = plugins.reset_manager(pm)
    yield pm
    plugins.reset_manager(old)


@dataclass
class FakeDist:
    name: str
    version: str = "1.0"


@dataclass
class FakeEntryPoint:
    """Duck-typed importlib.metadata.EntryPoint: tests fake installed distributions."""

    name: str
    value: str
    dist: FakeDist | None
    loader: Callable[[], Any] = field(repr=False, default=lambda: None)
    group: str = "mmcore"

    def load(self) -> Any:
        return self.loader()


def make_plugin_module(name: str, components: Callable[[], list] | None = None, **hooks: Any) -> ModuleType:
    """A module object carrying hookimpls, as an installed plugin would."""
    import mmcore

    mod = ModuleType(name)
    if components is not None:

        @mmcore.hookimpl
        def mmcore_register_components():
            return components()

        mod.mmcore_register_components = mmcore_register_components
    for hook, fn in hooks.items():
        setattr(mod, hook, mmcore.hookimpl(fn))
    return mod


@pytest.fixture
def fake_ep():
    return FakeEntryPoint


@pytest.fixture
def fake_dist():
    return FakeDist


@pytest.fixture
def plugin_module():
    return make_plugin_module


def run_python(code: str, env: dict[str, str] | None = None) -> str:
    """Run ``code`` in a fresh interpreter of this environment; return stdout."""
    import subprocess

    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout
