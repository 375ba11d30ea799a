"""The docs are checked against the code: the spec reference, the plugin tutorial and its hook reference."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import ROOT

from mmcore.cli import read_catalog
from mmcore.docgen import spec_reference


def test_spec_reference_is_generated_from_the_models(manager):
    dists = {"mmcore"} | {e["distribution"] for e in read_catalog(ROOT / "registry.toml").values()}
    expected = spec_reference(manager.registry, dists)
    actual = (ROOT / "docs" / "spec.md").read_text()
    assert actual == expected, "docs/spec.md is stale: run `python -m mmcore.docgen`"


def tutorial_files() -> dict[str, str]:
    text = (ROOT / "docs" / "plugins.md").read_text()
    blocks = re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", text, flags=re.S)
    return {path: body for path, body in blocks}


def test_plugin_written_from_the_tutorial_installs_lists_and_builds(tmp_path):
    files = tutorial_files()
    assert {"pyproject.toml", "src/mmcore_series/plugin.py", "tests/test_series.py", "example.toml"} <= set(files)
    pkg = tmp_path / "mmcore-series"
    for rel, body in files.items():
        dst = (tmp_path if rel == "example.toml" else pkg) / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(body)
    site = tmp_path / "site"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(pkg),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    listed = subprocess.run([sys.executable, "-m", "mmcore", "plugins"], capture_output=True, text=True, env=env)
    assert "series  (mmcore-series 0.1.0)" in listed.stdout and "encoder:series.linear" in listed.stdout
    # the tutorial's own tests: the conformance kit on series.linear, and its bad-value test
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(pkg / "tests")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert tests.stdout.splitlines()[-1].startswith("2 passed")
    code = (
        "import mmcore\n"
        "model = mmcore.build('example.toml')\n"
        "batch = model.preprocess([{'series': [0.1, 0.5, 0.2], 'text': 'rising', 'label': 1},\n"
        "                          {'series': [0.9, 0.3], 'text': 'falling', 'label': 0}])\n"
        "out = model(batch)\n"
        "out.loss.backward()\n"
        "print(type(model.projectors['series']).__name__, tuple(out.outputs['label'].logits.shape))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "LinearProjector (2, 2)"


def test_hook_reference_is_generated_from_the_hookspecs():
    from mmcore import hookspecs
    from mmcore.docgen import plugins_doc

    text = (ROOT / "docs" / "plugins.md").read_text()
    assert text == plugins_doc(text), "the hook reference in docs/plugins.md is stale: run `python -m mmcore.docgen`"
    hooks = [n for n, f in vars(hookspecs).items() if hasattr(f, "mmcore_spec")]
    assert hooks and all(f"### `{n}(" in text for n in hooks)


def test_examples_doc_shows_current_summaries(manager):
    from mmcore.docgen import examples_doc

    assert (ROOT / "docs" / "examples.md").read_text() == examples_doc(ROOT), (
        "docs/examples.md is stale: run `python -m mmcore.docgen`"
    )


def test_task_figures_quote_the_results_files():
    """Every figure a recipe script wrote to examples/results/ is what docs/tasks.md shows."""
    import json

    page = (ROOT / "docs" / "tasks.md").read_text()
    files = sorted((ROOT / "examples" / "results").glob("*.json"))
    assert files, "no results files under examples/results"
    for path in files:
        figures = json.loads(path.read_text())["figures"]
        assert len(figures) >= 2, f"{path.name}: a figure needs its baseline beside it"
        missing = {k: v for k, v in figures.items() if f"| {v}" not in page and f"**{v}**" not in page}
        assert not missing, f"docs/tasks.md does not quote {path.name}: {missing} (rerun the recipe, update the page)"


def test_readme_quotes_the_main_jobs_results():
    import json

    readme = (ROOT / "README.md").read_text()
    figures = json.loads((ROOT / "examples" / "results" / "digits_av.json").read_text())["figures"]
    for key in ("caption mmcore", "transcribe mmcore", "match mmcore", "caption svm", "match composed"):
        assert f"{figures[key]}" in readme, (
            f"README.md does not quote {key} = {figures[key]} (examples/results/digits_av.json)"
        )
