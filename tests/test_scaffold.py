"""`mmcore new-plugin`: a generated plugin installs, lists, passes its own tests and composes from a spec.

The generated distributions are installed with ``pip install --no-deps --target`` into a
temporary folder and used through ``PYTHONPATH`` in subprocesses, so the shared
environment is never changed (as the tutorial test in test_docs.py does).
"""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import ROOT

from mmcore.cli import main
from mmcore.scaffold import KINDS, ScaffoldError, core_range, new_plugin, plugin_files

#: name -> kind of the plugins generated once for this module
PLUGINS = {"demo_depth": "encoder", "demo_mix": "fusion", "demo_score": "head"}
#: a distribution with several kinds, components named by the author: kind -> component
MIXED = {"encoder": "demo_tab.features", "head": "demo_tab.head", "objective": "demo_tab.hinge"}


def _env(site: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The three generated plugins, written by the command and pip-installed into a private folder."""
    base = tmp_path_factory.mktemp("scaffold")
    for name, kind in PLUGINS.items():
        assert main(["new-plugin", name, "--kind", kind, "--dir", str(base)]) == 0
    kinds = ["--kind", "encoder:demo_tab.features,head", "--kind", "objective:demo_tab.hinge"]
    assert main(["new-plugin", "demo_tab", *kinds, "--dir", str(base)]) == 0
    site = base / "site"
    res = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(site)]
        + [str(base / f"mmcore-{name}") for name in [*PLUGINS, "demo_tab"]],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    return base, site


def test_core_range_is_the_minor_series():
    assert core_range("0.1.0") == ">=0.1,<0.2"
    assert core_range("0.12.3") == ">=0.12,<0.13"
    assert core_range("1.4.2") == ">=1.4,<2"


def test_new_plugin_writes_a_complete_distribution(tmp_path):
    path = new_plugin("demo_depth", "encoder", tmp_path)
    assert path == tmp_path / "mmcore-demo_depth"
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "pyproject.toml",
        "src/mmcore_demo_depth/__init__.py",
        "src/mmcore_demo_depth/encoder.py",
        "src/mmcore_demo_depth/plugin.py",
        "tests/test_demo_depth.py",
    ]
    meta = tomllib.loads((path / "pyproject.toml").read_text())
    import mmcore

    assert meta["project"]["dependencies"] == [f"mmcore{core_range(mmcore.__version__)}"]
    assert meta["project"]["entry-points"]["mmcore"] == {"demo_depth": "mmcore_demo_depth.plugin"}
    assert "from mmcore.testing import check_component" in (path / "tests/test_demo_depth.py").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary folder is left behind"
    # every generated Python file is valid Python, and the registration module imports no torch
    for rel in files:
        if rel.endswith(".py"):
            compile((path / rel).read_text(), rel, "exec")
    assert "import torch" not in (path / "src/mmcore_demo_depth/plugin.py").read_text()


@pytest.mark.parametrize(
    ("name", "kind", "message"),
    [
        ("demo-depth", "encoder", "not a Python identifier"),
        ("1depth", "encoder", "not a Python identifier"),
        ("", "encoder", "empty"),
        ("class", "encoder", "keyword"),
        ("Depth", "encoder", "lower case"),
        ("depth", "projector", "unknown kind 'projector'"),
        ("depth", ["head", "head:depth.other"], "given twice"),
        ("depth", "head:Depth.Head", "dotted lower-case identifiers"),
        ("depth", [], "at least one --kind"),
        ("text", "encoder", "already installed"),  # mmcore_text is the text plugin's package
    ],
)
def test_bad_names_are_rejected_with_the_reason(tmp_path, name, kind, message):
    with pytest.raises(ScaffoldError, match=message):
        new_plugin(name, kind, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_directory_is_not_overwritten(tmp_path, capsys):
    (tmp_path / "mmcore-depth").mkdir()
    (tmp_path / "mmcore-depth" / "keep.txt").write_text("mine")
    assert main(["new-plugin", "depth", "--kind", "encoder", "--dir", str(tmp_path)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "mmcore-depth").iterdir()] == ["keep.txt"]
    assert main(["new-plugin", "demo-depth", "--kind", "head", "--dir", str(tmp_path)]) == 1
    assert "not a Python identifier" in capsys.readouterr().err


def test_templates_ship_as_package_data():
    """Every template file matches a package-data pattern of pyproject.toml (so wheels and sdists carry it)."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    globs = patterns["mmcore.templates"]
    root = ROOT / "mmcore" / "templates"
    templates = [p.relative_to(root).as_posix() for p in root.rglob("*.tmpl")]
    assert templates and all(
        any(fnmatch.fnmatch(t, g) and t.count("/") == g.count("/") for g in globs) for t in templates
    )
    used = {rel for kind in KINDS for rel in _rendered_templates(kind)}
    assert used == set(templates), "every template is used and every used template exists"


def _rendered_templates(kind: str) -> list[str]:
    plugin_files("x", kind)  # renders without a missing placeholder
    common = ["pyproject.toml", "README.md", "package_init.py", "plugin.py", "section.md", "test_plugin.py"]
    own = ["registration.py", "component.py", "usage.md", "options.md", "extra_tests.py"]
    return [*(f"common/{f}.tmpl" for f in common), *(f"{kind}/{f}.tmpl" for f in own)]


def test_generated_plugins_install_list_and_pass_their_own_tests(installed):
    base, site = installed
    listed = subprocess.run(
        [sys.executable, "-m", "mmcore", "plugins"], capture_output=True, text=True, env=_env(site), timeout=120
    )
    assert listed.returncode == 0, listed.stderr
    for name, kind in PLUGINS.items():
        assert f"{name}  (mmcore-{name} 0.1.0)" in listed.stdout
        assert f"{kind}:{name}.{kind}" in listed.stdout
    assert "demo_tab  (mmcore-demo_tab 0.1.0)" in listed.stdout
    for kind, component in MIXED.items():
        assert f"{kind}:{component}" in listed.stdout
    tests = [str(base / f"mmcore-{name}" / "tests") for name in [*PLUGINS, "demo_tab"]]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        capture_output=True,
        text=True,
        env=_env(site),
        cwd=base,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    # every generated test ran and passed (none failed or was skipped): 2 common tests per component,
    # 2 more for an encoder and 1 each for a fusion, a head and an objective; demo_tab has three
    # components (encoder, head, objective) in one distribution, each in its own test file
    written = sum(
        len(re.findall(r"^def test_", f.read_text(), re.M))
        for name in [*PLUGINS, "demo_tab"]
        for f in (base / f"mmcore-{name}" / "tests").glob("test_*.py")
    )
    assert written == 10 + 4 + 3 + 3
    assert sorted(p.name for p in (base / "mmcore-demo_tab" / "tests").iterdir()) == [
        "test_demo_tab_encoder.py",
        "test_demo_tab_head.py",
        "test_demo_tab_objective.py",
    ]
    last = run.stdout.splitlines()[-1]
    assert last.startswith(f"{written} passed in "), last


def test_generated_encoder_composes_with_the_text_plugin_and_the_lm_head(installed, tmp_path):
    _, site = installed
    (tmp_path / "spec.toml").write_text(
        "spec_version = 1\n"
        'name = "depth-captions"\n\n'
        "[backbone]\nwidth = 64\ndepth = 2\nheads = 4\ncontext_length = 1024\n\n"
        '[encoders.depth]\ncomponent = "demo_depth.encoder"\npatch_size = 2\ndim = 32\nmax_length = 64\n\n'
        '[encoders.text]\ncomponent = "text.bytes"\nmax_length = 64\n\n'
        '[heads.lm]\ncomponent = "lm"\n'
    )
    code = (
        "import mmcore, torch\n"
        "model = mmcore.build('spec.toml')\n"
        "batch = model.preprocess([{'depth': [0.1, 0.5, 0.2, 0.9, 1.5], 'text': 'far'},\n"
        "                          {'depth': [2.0, 1.0], 'text': 'a near wall'}])\n"
        "out = model(batch)\n"
        "assert torch.isfinite(out.loss)\n"
        "out.loss.backward()\n"
        "g = model.encoders['depth'].patch_embed.weight.grad\n"
        "print(type(model.projectors['depth']).__name__, model.encoders['depth'].out_dim, bool(g.abs().sum() > 0))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(site), cwd=tmp_path, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["LinearProjector", "32", "True"]


def test_the_spec_in_each_generated_readme_builds_and_runs(installed):
    """A reader copies the README's spec into spec.toml: it must build as written."""
    base, site = installed
    code = (
        "import re, sys, pathlib, mmcore, torch\n"
        "text = pathlib.Path(sys.argv[1]).read_text()\n"
        "spec = re.search(r'```toml\\n(.*?)```', text, re.S).group(1)\n"
        "pathlib.Path('spec.toml').write_text(spec)\n"
        "model = mmcore.build('spec.toml')\n"
        "print(type(model).__name__)\n"
    )
    for name in [*PLUGINS, "demo_tab"]:
        run = subprocess.run(
            [sys.executable, "-c", code, str(base / f"mmcore-{name}" / "README.md")],
            capture_output=True,
            text=True,
            env=_env(site),
            cwd=base,
            timeout=300,
        )
        assert run.returncode == 0, f"{name}: {run.stderr[-2000:]}"
        assert run.stdout.split() == ["MultimodalGPT"]


def test_a_mixed_plugin_has_one_registration_module_and_a_readme_of_what_was_generated(tmp_path):
    path = new_plugin("demo_tab", [f"{k}:{c}" for k, c in MIXED.items()], tmp_path)
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "pyproject.toml",
        "src/mmcore_demo_tab/__init__.py",
        "src/mmcore_demo_tab/encoder.py",
        "src/mmcore_demo_tab/head.py",
        "src/mmcore_demo_tab/objective.py",
        "src/mmcore_demo_tab/plugin.py",
        "tests/test_demo_tab_encoder.py",
        "tests/test_demo_tab_head.py",
        "tests/test_demo_tab_objective.py",
    ]
    plugin = (path / "src/mmcore_demo_tab/plugin.py").read_text()
    assert "import torch" not in plugin and plugin.count("@mmcore.hookimpl") == 1
    for rel in files:
        if rel.endswith(".py"):
            compile((path / rel).read_text(), rel, "exec")
    readme = (path / "README.md").read_text()
    assert "## What was generated" in readme
    for kind, component in MIXED.items():
        assert f"## `{kind}:{component}`" in readme and f"| `src/mmcore_demo_tab/{kind}.py` |" in readme
    # the objective is checked on the distribution's own head
    assert '"heads": {"cls": {"component": "demo_tab.head"}}' in plugin and 'heads=("demo_tab.head",)' in plugin
