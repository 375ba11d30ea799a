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


def _pct(x: float, digits: int) -> str:
    return f"{100 * x:.{digits}f} %"


def test_figures_in_the_docs_are_quoted_from_committed_results_files():
    """Every learning figure of the demo and of the int8 comparison that README.md, docs/tasks.md
    and bench/README.md quote is read from the results file a committed script wrote."""
    import json

    demo = json.loads((ROOT / "bench" / "results_demo.json").read_text())
    match = demo["tasks"]["match"]
    quant = json.loads((ROOT / "bench" / "results_quantize_demo.json").read_text())["results"]
    qmatch = quant["eval runs/demo match"]
    lm = json.loads((ROOT / "bench" / "results_quantize.json").read_text())["metric_change"]["results"]
    lm = lm["eval runs/stdlib_lm"]
    quotes = {
        "README.md": [
            f"captions ({_pct(demo['caption_exact_match'], 0)} exact), transcriptions "
            f"({_pct(demo['transcribe_exact_match'], 0)})",
            f"({_pct(demo['match_accuracy'], 0)}, chance 50 %)",
        ],
        "docs/tasks.md": [
            f"(359 unseen images) | {_pct(demo['caption_exact_match'], 1)} |",
            f"(120 unseen tones) | {_pct(demo['transcribe_exact_match'], 0)} |",
            f"(359 unseen pairs)** | **{_pct(match['accuracy'], 1)}** (macro-F1 {match['macro_f1']:.3f})",
        ],
        "bench/README.md": [
            f"| {qmatch['float_bytes'] / 1e6:.2f} MB | {qmatch['int8_bytes'] / 1e6:.2f} MB (2.8x) | accuracy "
            f"{_pct(qmatch['float']['accuracy'], 2)} | {_pct(qmatch['int8']['accuracy'], 2)}",
            f"perplexity {lm['float']['metrics']['perplexity']:.3f} | {lm['int8']['metrics']['perplexity']:.3f}",
        ],
    }
    assert match["accuracy"] == demo["match_accuracy"]
    # the int8 comparison evaluated the very model the demo figures describe
    assert abs(qmatch["float"]["accuracy"] - match["accuracy"]) < 1e-6
    for doc, wanted in quotes.items():
        text = " ".join((ROOT / doc).read_text().split())  # line breaks do not matter
        for q in wanted:
            assert q in text, f"{doc} does not quote {q!r} (bench/results_*.json)"
