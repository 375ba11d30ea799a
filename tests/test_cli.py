"""The command line: help without torch, exit codes, outputs."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import EXAMPLES, ROOT, run_python


def mmcore_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "mmcore", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def test_help_and_validate_do_not_import_torch():
    out = run_python(
        "import sys, contextlib, io\n"
        "from mmcore.cli import main\n"
        "try:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch' in sys.modules)\n"
        f"rc = main(['spec', 'validate', {str(EXAMPLES / 'text_lm.toml')!r}])\n"
        "print(rc, 'torch' in sys.modules)\n"
    )
    assert out.splitlines()[0] == "False"
    assert out.splitlines()[-1] == "0 False"


def test_spec_validate_exit_codes(tmp_path):
    ok = mmcore_cli("spec", "validate", *map(str, sorted(EXAMPLES.glob("*.toml"))))
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('spec_version = 1\n[encoders.text]\ncomponent = "text.byte"\n[backbone]\nheads = "x"\n')
    res = mmcore_cli("spec", "validate", str(bad))
    assert res.returncode == 1
    assert "[encoders.text.component]" in res.stderr and "[backbone.heads]" in res.stderr
    assert "Traceback" not in res.stderr


def test_spec_validate_build_checks_that_the_parts_fit(tmp_path):
    # --build reads the weights files' headers: a spec loading what its recipe makes
    # (examples/llava_digits.toml: a folder llava_digits.py exports) is built in tests/test_llava_recipe.py
    made = [p for p in sorted(EXAMPLES.glob("*.toml")) if "weights_from" not in p.read_text()]
    assert len(made) >= len(list(EXAMPLES.glob("*.toml"))) - 1
    ok = mmcore_cli("spec", "validate", "--build", *map(str, made))
    assert ok.returncode == 0, ok.stderr
    spec = tmp_path / "long.toml"  # valid on its own, but its text does not fit the context
    spec.write_text(
        "spec_version = 1\n[backbone]\nwidth = 32\ndepth = 1\nheads = 2\ncontext_length = 16\n"
        '[encoders.text]\ncomponent = "text.bytes"\nmax_length = 64\n[heads.lm]\ncomponent = "lm"\n'
    )
    assert mmcore_cli("spec", "validate", str(spec)).returncode == 0
    res = mmcore_cli("spec", "validate", "--build", str(spec))
    assert res.returncode == 1
    assert "context_length" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert "ok" not in res.stdout


def test_build_summary():
    res = mmcore_cli("build", str(EXAMPLES / "text_lm.toml"), "--summary")
    assert res.returncode == 0, res.stderr
    assert "encoders.text" in res.stdout and "backbone" in res.stdout and "total" in res.stdout


def test_plugins_lists_core_text_heads_and_uninstalled_catalog_entries(tmp_path):
    catalog = tmp_path / "registry.toml"
    catalog.write_text(
        (ROOT / "registry.toml").read_text()
        + '\n[plugins.video]\ndistribution = "mmcore-video"\npath = "plugins/video"\n'
        'components = ["encoder:video.frames"]\ndescription = "Video frames."\n'
    )
    res = mmcore_cli("plugins", env={"MMCORE_CATALOG": str(catalog)})
    assert res.returncode == 0, res.stderr
    for needle in (
        "mmcore  (mmcore 0.1.0)",
        "text  (mmcore-text",
        "heads  (mmcore-heads",
        "encoder:text.bytes",
        "head:lm",
        "fusion:early",
        "not installed",
        "mmcore-video",
        "pip install",
    ):
        assert needle in res.stdout, needle
    data = json.loads(mmcore_cli("plugins", "--json").stdout)
    assert {p["name"] for p in data["plugins"]} >= {"mmcore", "text", "heads"}


def test_errors_are_reported_without_traceback(tmp_path):
    res = mmcore_cli("build", str(tmp_path / "nope.toml"))
    assert res.returncode == 1 and "error:" in res.stderr and "Traceback" not in res.stderr


def test_spec_schema_is_json():
    res = mmcore_cli("spec", "schema")
    assert res.returncode == 0
    assert json.loads(res.stdout)["title"] == "mmcore spec"
