"""The plugin system: discovery, registration in code, errors that name the plugin."""

from __future__ import annotations

import json
from types import ModuleType

import pytest
from conftest import run_python

import mmcore
from mmcore import plugins
from mmcore.builtin import LinearProjectorConfig
from mmcore.errors import DuplicateComponentError, PluginError, PluginLoadError, UnknownComponentError


def _head(name: str) -> mmcore.Component:
    return mmcore.Component(kind="head", name=name, config=LinearProjectorConfig, factory="x:y")


def test_installed_distribution_is_found_without_code_change(manager):
    comp = manager.registry.get("head", "fixture.mean")
    assert comp.distribution == "mmcore-fixture-plugin 0.0.1"
    assert comp.plugin == "fixture"
    names = [i.name for i in manager.plugins()]
    assert names[0] == "mmcore" and "fixture" in names


def test_core_components_come_through_the_same_hook(manager):
    impls = manager.pm.hook.mmcore_register_components.get_hookimpls()
    assert "mmcore" in [i.plugin_name for i in impls]
    assert manager.registry.get("fusion", "early").distribution.startswith("mmcore ")


def test_duplicate_names_are_an_error_naming_both_distributions(fake_ep, fake_dist, plugin_module):
    a = plugin_module("plug_a", lambda: [_head("dup.head")])
    b = plugin_module("plug_b", lambda: [_head("dup.head")])
    eps = [
        fake_ep("a", "plug_a", fake_dist("mmcore-a", "1.2"), lambda: a),
        fake_ep("b", "plug_b", fake_dist("mmcore-b", "3.4"), lambda: b),
    ]
    pm = plugins.PluginManager(autoload=False, entry_points=eps)
    with pytest.raises(DuplicateComponentError) as exc:
        _ = pm.registry
    msg = str(exc.value)
    assert "head:dup.head" in msg and "mmcore-a 1.2" in msg and "mmcore-b 3.4" in msg


def test_plugin_failing_at_import_is_reported_and_others_work(fake_ep, fake_dist, plugin_module):
    good = plugin_module("good", lambda: [_head("good.head")])

    def boom():
        raise ImportError("No module named 'missing_dependency'")

    eps = [
        fake_ep("broken", "broken_mod", fake_dist("mmcore-broken", "0.1"), boom),
        fake_ep("good", "good", fake_dist("mmcore-good"), lambda: good),
    ]
    pm = plugins.PluginManager(autoload=False, entry_points=eps)
    assert "head:good.head" in pm.registry
    (failure,) = pm.failures
    assert failure.entry_point == "broken = broken_mod"
    assert failure.distribution == "mmcore-broken 0.1"
    assert "missing_dependency" in str(failure) and "Traceback" in failure.traceback

    with pytest.raises(PluginLoadError, match="mmcore-broken 0.1.*missing_dependency"):
        plugins.PluginManager(autoload=False, strict=True, entry_points=eps)


def test_hook_that_raises_or_returns_wrong_type_names_the_plugin(fake_ep, fake_dist, plugin_module):
    def raises():
        raise RuntimeError("kaput")

    bad1 = plugin_module("bad1", raises)
    bad2 = plugin_module("bad2", lambda: {"not": "a list"})
    eps = [
        fake_ep("bad1", "bad1", fake_dist("mmcore-bad1"), lambda: bad1),
        fake_ep("bad2", "bad2", fake_dist("mmcore-bad2"), lambda: bad2),
    ]
    pm = plugins.PluginManager(autoload=False, entry_points=eps)
    assert "fusion:early" in pm.registry  # the rest still works
    msgs = sorted(str(f.error) for f in pm.failures)
    assert "'bad1' (mmcore-bad1 1.0) raised in mmcore_register_components: RuntimeError: kaput" in msgs[0]
    assert "'bad2' (mmcore-bad2 1.0)" in msgs[1] and "list of mmcore.Component" in msgs[1]
    strict = plugins.PluginManager(autoload=False, strict=True)
    strict.register(bad1, name="bad1")
    with pytest.raises(PluginError, match="bad1"):
        _ = strict.registry


def test_register_in_code():
    pm = plugins.PluginManager(autoload=False)
    pm.register(plugin_module_in_code(), name="notebook")
    comp = pm.registry.get("head", "nb.head")
    assert comp.plugin == "notebook" and comp.distribution is None
    pm.unregister("notebook")
    assert "head:nb.head" not in pm.registry


def plugin_module_in_code():
    from conftest import make_plugin_module

    return make_plugin_module("nb", lambda: [_head("nb.head")])


def test_unknown_component_suggests_close_matches(manager):
    with pytest.raises(UnknownComponentError) as exc:
        manager.registry.get("fusion", "erly")
    assert exc.value.matches == ["early"]
    assert "did you mean 'early'" in str(exc.value) and "registered fusions" in str(exc.value)


def test_env_var_disables_autoload(monkeypatch):
    monkeypatch.setenv(plugins.ENV_DISABLE_AUTOLOAD, "1")
    pm = plugins.PluginManager()
    assert "fusion:early" in pm.registry  # the core's own components stay
    assert "head:fixture.mean" not in pm.registry
    monkeypatch.setenv(plugins.ENV_DISABLE_AUTOLOAD, "0")
    assert "head:fixture.mean" in plugins.PluginManager().registry


def test_env_var_blocks_one_plugin(monkeypatch):
    monkeypatch.setenv(plugins.ENV_BLOCK, "fixture")
    pm = plugins.PluginManager()
    assert "head:fixture.mean" not in pm.registry
    assert "fusion:early" in pm.registry


def test_registry_lists_and_filters(manager):
    keys = [c.key for c in manager.registry.list("projector:*")]
    assert keys == ["projector:linear", "projector:mlp"]
    assert all(c.kind == "encoder" for c in manager.registry.list("encoder:*"))


def test_component_record_is_validated():
    with pytest.raises(PluginError, match="kind 'widget'"):
        mmcore.Component(kind="widget", name="a", config=LinearProjectorConfig, factory="x:y")
    with pytest.raises(PluginError, match="dotted identifiers"):
        mmcore.Component(kind="head", name="bad name", config=LinearProjectorConfig, factory="x:y")
    with pytest.raises(PluginError, match="modality"):
        mmcore.Component(kind="encoder", name="e", config=LinearProjectorConfig, factory="x:y")


def test_broken_factory_reference_names_the_plugin():
    comp = mmcore.Component(
        kind="head",
        name="h",
        config=LinearProjectorConfig,
        factory="no_such_module_xyz:f",
        plugin="p",
        distribution="mmcore-p 1.0",
    )
    with pytest.raises(PluginError, match="head:h.*mmcore-p 1.0.*no_such_module_xyz"):
        comp.load_factory()


def test_model_built_hook_errors_name_the_plugin(manager, plugin_module):
    def mmcore_model_built(model):
        raise ValueError("bad model")

    manager.register(plugin_module("watcher", mmcore_model_built=mmcore_model_built), name="watcher")
    with pytest.raises(PluginError, match="'watcher'.*mmcore_model_built: ValueError: bad model"):
        manager.call_model_built(object(), None)


HEAVY = [
    "torch",
    "timm",
    "tokenizers",
    "soundfile",
    "PIL",
    "transformers",
    "mmcore_text.encoder",
    "mmcore_heads.lm",
    "mmcore_fixture_plugin.heavy",
]


def test_listing_plugins_imports_no_heavy_dependency():
    out = run_python(
        "import sys, json, contextlib, io\n"
        "from mmcore.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as buf:\n"
        "    rc = main(['plugins'])\n"
        "assert rc == 0 and 'fixture.mean' in buf.getvalue(), buf.getvalue()\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    assert json.loads(out) == []


def test_plugins_add_cli_commands_and_errors_name_the_plugin(plugin_module):
    from mmcore.cli import make_parser

    def mmcore_add_commands(subparsers):
        p = subparsers.add_parser("hello", help="say hello")
        p.set_defaults(func=lambda args: 7)

    def clash(subparsers):
        subparsers.add_parser("plugins")

    pm = plugins.PluginManager(autoload=False)
    pm.register(plugin_module("greeter", mmcore_add_commands=mmcore_add_commands), name="greeter")
    pm.register(plugin_module("clasher", mmcore_add_commands=clash), name="clasher")
    old = plugins.reset_manager(pm)
    try:
        args = make_parser().parse_args(["hello"])
        assert args.func(args) == 7
        (failure,) = pm.failures
        assert "'clasher'" in str(failure.error) and "mmcore_add_commands" in str(failure.error)
    finally:
        plugins.reset_manager(old)


def test_strict_plugins_through_the_environment_variable(monkeypatch, fake_ep, fake_dist):
    def boom():
        raise ImportError("No module named 'missing_dependency'")

    eps = [fake_ep("broken", "broken_mod", fake_dist("mmcore-broken", "0.1"), boom)]
    monkeypatch.setenv(plugins.ENV_STRICT, "1")
    with pytest.raises(PluginLoadError, match="mmcore-broken 0.1.*missing_dependency"):
        plugins.PluginManager(autoload=False, entry_points=eps)
    monkeypatch.setenv(plugins.ENV_STRICT, "0")
    assert len(plugins.PluginManager(autoload=False, entry_points=eps).failures) == 1


# --- real installed distributions: one broken, one colliding ----------------------------------


@pytest.fixture(scope="module")
def private_site(tmp_path_factory):
    """tests/fixtures/private/* pip-installed into a private folder (used through PYTHONPATH)."""
    import subprocess
    import sys

    from conftest import ROOT

    site = tmp_path_factory.mktemp("site")
    dists = sorted(str(p.parent) for p in (ROOT / "tests" / "fixtures" / "private").glob("*/pyproject.toml"))
    assert len(dists) == 2
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target"]
    subprocess.run([*pip, str(site), *dists], check=True, capture_output=True, timeout=300)
    return site


def test_installed_broken_plugin_is_reported_and_strict_mode_refuses_it(private_site):
    env = {"PYTHONPATH": str(private_site), plugins.ENV_BLOCK: "fixture_collide"}
    code = """
from mmcore import plugins
pm = plugins.PluginManager()
assert "head:fixture.mean" in pm.registry and "encoder:text.bytes" in pm.registry  # the others work
(failure,) = pm.failures
print(failure.entry_point, "|", failure.distribution, "|", failure.error)
"""
    out = run_python(code, env=env)
    assert "fixture_broken = mmcore_fixture_broken.plugin | mmcore-fixture-broken 0.0.1 |" in out
    assert "mmcore_fixture_missing_dependency" in out
    strict = """
from mmcore import plugins
from mmcore.errors import PluginLoadError
try:
    plugins.PluginManager()
except PluginLoadError as exc:
    print("refused:", exc)
"""
    out = run_python(strict, env={**env, plugins.ENV_STRICT: "1"})
    assert out.startswith("refused:") and "mmcore-fixture-broken 0.0.1" in out


def test_installed_name_collision_names_both_distributions(private_site):
    code = """
from mmcore import plugins
from mmcore.errors import DuplicateComponentError
try:
    plugins.PluginManager().registry
except DuplicateComponentError as exc:
    print("collision:", exc)
"""
    out = run_python(code, env={"PYTHONPATH": str(private_site), plugins.ENV_BLOCK: "fixture_broken"})
    assert out.startswith("collision:") and "head:fixture.mean" in out
    assert "mmcore-fixture-plugin 0.0.1" in out and "mmcore-fixture-collide 0.0.2" in out


# --- the surface checks itself (check_pending, fewer arguments, model_built once) -----------------


def test_misspelled_or_unmarked_hook_is_reported_and_strict_mode_refuses_it(fake_ep, fake_dist, plugin_module):
    typo = plugin_module("typo", mmcore_register_component=lambda: [_head("typo.head")])  # no final "s"
    unmarked = ModuleType("unmarked")

    def mmcore_register_components():  # named like the hook, never decorated: pluggy ignores it
        return [_head("unmarked.head")]

    unmarked.mmcore_register_components = mmcore_register_components
    eps = [
        fake_ep("typo", "typo", fake_dist("mmcore-typo", "0.3"), lambda: typo),
        fake_ep("unmarked", "unmarked", fake_dist("mmcore-unmarked", "0.4"), lambda: unmarked),
    ]
    pm = plugins.PluginManager(autoload=False, entry_points=eps)
    by_plugin = {f.entry_point: f for f in pm.failures}
    assert set(by_plugin) == {"typo", "unmarked"}
    typo_msg, unmarked_msg = str(by_plugin["typo"]), str(by_plugin["unmarked"])
    assert by_plugin["typo"].hook == "mmcore_register_component"
    assert "'typo' (mmcore-typo 0.3)" in typo_msg and "matches no hook specification" in typo_msg
    assert "did you mean 'mmcore_register_components'?" in typo_msg
    assert "'unmarked' (mmcore-unmarked 0.4)" in unmarked_msg and "not marked with @mmcore.hookimpl" in unmarked_msg
    assert [str(f) for f in pm.check_pending()] == [str(f) for f in pm.failures]
    # the plugins' good parts still count, the rest of the registry works
    assert "fusion:early" in pm.registry and "head:typo.head" not in pm.registry

    with pytest.raises(PluginLoadError, match="mmcore_register_component.*did you mean"):
        plugins.PluginManager(autoload=False, strict=True, entry_points=eps[:1])
    strict = plugins.PluginManager(autoload=False, strict=True)
    with pytest.raises(PluginError, match="not marked with @mmcore.hookimpl"):
        strict.register(unmarked, name="unmarked")
    assert strict.pm.get_plugin("unmarked") is None  # refused, not half registered


def test_the_installed_plugins_have_no_pending_hooks():
    pm = plugins.PluginManager()
    assert pm.check_pending() == []
    assert not [f for f in pm.failures if f.hook is not None]


def test_mmcore_plugins_reports_a_misspelled_hook(plugin_module, capsys):
    from mmcore.cli import main

    pm = plugins.PluginManager(autoload=False)
    pm.register(plugin_module("typo", mmcore_model_bulit=lambda model: None), name="typo")
    old = plugins.reset_manager(pm)
    try:
        assert main(["plugins"]) == 0
        out = capsys.readouterr().out
        assert "plugin hooks that failed or match no hook specification:" in out
        assert "mmcore_model_bulit" in out and "did you mean 'mmcore_model_built'?" in out
        assert main(["plugins", "--json"]) == 0
        (failure,) = json.loads(capsys.readouterr().out)["failures"]
        assert failure["hook"] == "mmcore_model_bulit" and failure["entry_point"] == "typo"
    finally:
        plugins.reset_manager(old)


def test_every_hook_may_take_fewer_arguments(plugin_module):
    from mmcore.cli import make_parser

    calls = []
    mod = plugin_module(
        "quiet",
        lambda: [],
        mmcore_add_commands=lambda: calls.append("commands"),
        mmcore_model_built=lambda: calls.append("built"),
    )
    pm = plugins.PluginManager(autoload=False)
    pm.register(mod, name="quiet")
    old = plugins.reset_manager(pm)
    try:
        make_parser()
        pm.call_model_built(object(), None)
    finally:
        plugins.reset_manager(old)
    assert calls == ["commands", "built"] and pm.failures == []


def test_a_failing_hook_is_reported_as_that_hook_not_as_an_import(fake_ep, fake_dist, plugin_module):
    def raises():
        raise RuntimeError("kaput")

    bad = plugin_module("bad", raises)
    pm = plugins.PluginManager(
        autoload=False, entry_points=[fake_ep("bad", "bad", fake_dist("mmcore-bad"), lambda: bad)]
    )
    _ = pm.registry
    (failure,) = pm.failures
    assert failure.hook == "mmcore_register_components"
    assert not str(failure).startswith("Error importing") and "raised in mmcore_register_components" in str(failure)


def test_model_built_fires_once_per_user_visible_build(manager, plugin_module, tmp_path):
    seen = []

    def mmcore_model_built(model, spec):
        seen.append((next(model.parameters()).device.type, spec.name))

    manager.register(plugin_module("watch", mmcore_model_built=mmcore_model_built), name="watch")
    spec = {"name": "tiny", "spec_version": 1, "backbone": {"width": 32, "depth": 1, "heads": 2, "context_length": 16}}
    text = {"component": "text.bytes", "max_length": 12}
    spec |= {"encoders": {"text": text}, "heads": {"lm": {"component": "lm", "input": "text"}}}
    model = mmcore.build(spec, registry=manager.registry)  # a registry given: still called
    assert seen == [("cpu", "tiny")]
    mmcore.save(model, tmp_path / "m")
    seen.clear()
    mmcore.load(tmp_path / "m")  # once, with the weights in place: not on the meta skeleton
    assert seen == [("cpu", "tiny")]
    seen.clear()
    from mmcore.builder import validate_build

    validate_build(spec, registry=manager.registry)  # spec validate --build: not a user's model
    assert seen == []
