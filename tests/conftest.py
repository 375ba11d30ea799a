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


#: Every spec a test built with weights (``mmcore.build``, ``mmcore.train`` and whatever calls
#: them in this process), and whether ``spec validate --build`` agreed with the builder on it.
VALIDATED_SPECS: list[tuple[str, bool]] = []


def pytest_configure(config: pytest.Config) -> None:
    """Make every ``build`` of the test run also run what ``mmcore spec validate --build`` runs
    (:func:`mmcore.builder.validate_build`) on the same spec, and fail the build when the two
    disagree: a spec the builder accepts must validate, and one it rejects with a SpecError must
    be rejected. So the validator cannot drift from the builder on any spec the tests build or
    train (LoRA, ``weights_from``, fusions, heads). Loading a model directory (``weights=False``
    on the meta device) is left alone."""
    import functools

    from mmcore import builder as model_module

    build = model_module.build
    if getattr(build, "_checks_validator", False):
        return

    @functools.wraps(build)
    def build_and_validate(spec: Any, **kwargs: Any) -> Any:
        from mmcore.errors import SpecError

        device = kwargs.get("device")
        if not kwargs.get("weights", True) or (device is not None and str(device) == "meta"):
            return build(spec, **kwargs)
        name = str(getattr(spec, "file", None) or spec)[:80]
        registry = kwargs.get("registry")
        try:
            model = build(spec, **kwargs)
        except SpecError as exc:
            try:
                model_module.validate_build(spec, registry=registry)
            except SpecError:
                VALIDATED_SPECS.append((name, True))
                raise exc from None
            VALIDATED_SPECS.append((name, False))
            raise AssertionError(f"build rejects a spec that spec validate --build accepts:\n{exc}") from exc
        try:
            model_module.validate_build(model.spec, registry=registry)
        except SpecError as exc:
            VALIDATED_SPECS.append((name, False))
            raise AssertionError(f"spec validate --build rejects a spec that build accepts:\n{exc}") from exc
        VALIDATED_SPECS.append((name, True))
        return model

    build_and_validate._checks_validator = True  # type: ignore[attr-defined]
    model_module.build = build_and_validate


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


def load_script(relpath: str) -> ModuleType:
    """A script of the checkout (under bench/, tools/ or examples/recipes/), imported as a module
    named after its path, so a test can call its functions; registered in ``sys.modules`` since
    dataclasses look their module up."""
    import importlib.util

    name = "_script_" + relpath.replace("/", "_").removesuffix(".py")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / relpath)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def single_thread_env(**extra: str) -> dict[str, str]:
    """The environment for a child process of a test: one thread, unbuffered output."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def train_cmd(spec: Path, out: Path) -> list[str]:
    """``mmcore train SPEC --out OUT`` as a real process of this environment."""
    return [sys.executable, "-m", "mmcore", "train", str(spec), "--out", str(out)]


def torchrun(script: Path, *args: str, port: int, timeout: int = 300) -> Any:
    """Run ``script args`` under ``torch.distributed.run`` with 2 processes (gloo on CPU) on
    ``port``, one thread each; returns the CompletedProcess (stdout and stderr as text)."""
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    return subprocess.run(
        [*cmd, str(script), *args], env=single_thread_env(), capture_output=True, text=True, timeout=timeout
    )


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


def assert_greedy_matches_transformers(model: Any, hf: Any, use_cache: bool, label: str = "") -> None:
    """``mmcore.generate`` on a composed model (a ``text`` input, an LM head) against transformers'
    greedy ``generate`` on the same left-padded batch, for prompts of different lengths and for one
    prompt alone (no padding). The reference must vary (8 distinct tokens or more, a different
    continuation per prompt), so that a broken decoder cannot pass by emitting one token."""
    import torch

    import mmcore
    from mmcore.generation import to_left_padding

    pad = model.processors["text"].pad_id
    for prompts in (["Hello", "A much longer prompt", "", "xyz"], ["A much longer prompt"]):
        batch = model.preprocess([{"text": {"prompt": p}} for p in prompts], targets=())
        cfg = mmcore.GenerationConfig(max_new_tokens=16, eos_id=-1, use_cache=use_cache)
        ours = mmcore.generate(model, batch, cfg)
        ids, mask = to_left_padding(batch.inputs["text"]["ids"], batch.inputs["text"]["mask"])
        assert len(prompts) == 1 or not mask[:, 0].all()  # the batch is padded
        with torch.no_grad():
            theirs = hf.generate(
                ids.masked_fill(~mask, pad),
                attention_mask=mask.long(),
                do_sample=False,
                max_new_tokens=16,
                pad_token_id=pad,
            )[:, ids.shape[1] :].tolist()
        assert len({t for row in theirs for t in row}) >= 8, theirs  # the reference varies
        assert len({tuple(row) for row in theirs}) == len(prompts)
        assert ours == theirs, (label, prompts)
