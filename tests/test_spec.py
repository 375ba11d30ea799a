"""The spec: validation with located errors, defaults written out, JSON Schema, safety."""

from __future__ import annotations

import sys
import tomllib

import jsonschema
import pytest
from conftest import EXAMPLES

from mmcore.errors import SpecError
from mmcore.schema import spec_json_schema
from mmcore.spec import load_spec, parse_spec, parse_spec_text

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.toml"))

MINIMAL = """
spec_version = 1
[encoders.text]
component = "text.bytes"
[heads.lm]
component = "lm"
"""


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_every_example_validates(path, manager):
    spec = load_spec(path)
    assert spec.encoders and spec.file == str(path)


def test_examples_exist():
    assert EXAMPLE_FILES, "examples/ has no spec"


def test_misspelled_component_and_wrong_type_are_both_reported(tmp_path, manager):
    f = tmp_path / "bad.toml"
    f.write_text(MINIMAL.replace('"text.bytes"', '"text.byts"') + '\n[backbone]\ndepth = "four"\n')
    with pytest.raises(SpecError) as exc:
        load_spec(f)
    issues = {i.path: i for i in exc.value.issues}
    assert set(issues) == {"encoders.text.component", "backbone.depth"}
    assert "did you mean 'text.bytes'" in issues["encoders.text.component"].message
    assert "valid integer" in issues["backbone.depth"].message and "'four'" in issues["backbone.depth"].message
    assert all(i.file == str(f) for i in exc.value.issues)
    assert str(f) in str(exc.value) and "2 problems" in str(exc.value)


def test_component_options_are_validated_by_the_component_model(manager):
    data = tomllib.loads(MINIMAL + "max_lenght = 3\n")
    data["encoders"]["text"]["max_lenght"] = 3
    data["heads"]["lm"]["tie"] = "maybe"
    with pytest.raises(SpecError) as exc:
        parse_spec(data)
    by_path = {i.path: i for i in exc.value.issues}
    assert "did you mean 'max_length'" in by_path["encoders.text.max_lenght"].message
    assert "max_length" in by_path["encoders.text.max_lenght"].hint
    assert "heads.lm.tie" in by_path


def test_unknown_section_and_missing_version(manager):
    with pytest.raises(SpecError) as exc:
        parse_spec({"encoders": {"text": {"component": "text.bytes"}}, "trainig": {}})
    paths = {i.path for i in exc.value.issues}
    assert {"spec_version", "trainig"} <= paths


def test_toml_syntax_error_names_the_file(tmp_path, manager):
    f = tmp_path / "broken.toml"
    f.write_text("spec_version = 1\n[encoders.text\n")
    with pytest.raises(SpecError, match="(?s)broken.toml.*invalid TOML.*line 2"):
        load_spec(f)


def test_resolved_spec_writes_every_default_and_round_trips(manager):
    spec = parse_spec_text(MINIMAL)
    text = spec.to_toml()
    data = tomllib.loads(text)
    assert data["backbone"]["width"] == 256 and data["backbone"]["norm"] == "layernorm"
    assert data["encoders"]["text"]["projector"]["component"] == "linear"
    assert data["fusion"]["component"] == "early"
    again = parse_spec_text(text)
    assert again == spec and again.to_toml() == text


def test_spec_never_imports_a_python_path(manager):
    before = set(sys.modules)
    with pytest.raises(SpecError):
        parse_spec_text(MINIMAL.replace('"text.bytes"', '"antigravity"').replace('"lm"', '"os:system"'))
    assert "antigravity" not in sys.modules and not (set(sys.modules) - before) & {"antigravity", "this"}


def test_json_schema_covers_every_component_and_accepts_examples(manager):
    schema = spec_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    text = str(schema)
    for comp in manager.registry:
        assert f"{comp.kind}:{comp.name}" in text
    validator = jsonschema.Draft202012Validator(schema)
    for path in EXAMPLE_FILES:
        data = tomllib.loads(path.read_text())
        errors = list(validator.iter_errors(data))
        assert not errors, (path, errors[0].message)
    bad = tomllib.loads(MINIMAL)
    bad["backbone"] = {"widht": 3}
    assert list(validator.iter_errors(bad))


def test_component_of_an_uninstalled_first_party_plugin_says_what_to_install(monkeypatch):
    from mmcore import plugins

    monkeypatch.setenv(plugins.ENV_BLOCK, "audio")
    reg = plugins.PluginManager().registry
    with pytest.raises(SpecError) as exc:
        load_spec(EXAMPLES / "audio_text.toml", registry=reg)
    (issue,) = exc.value.issues
    assert issue.path == "encoders.audio.component"
    assert "provided by mmcore-audio" in issue.hint and "pip install" in issue.hint


def test_without_lora_turns_every_lora_section_into_full_and_keeps_the_rest(manager):
    text = MINIMAL.replace('component = "text.bytes"', 'component = "text.bytes"\ntrain = "lora"')
    text += '[backbone]\nlora = {rank = 4}\n[fusion]\ncomponent = "early"\ntrain = "frozen"\n'
    text += '[encoders.text.projector]\ncomponent = "linear"\ntrain = "lora"\n'
    spec = parse_spec_text(text)
    before = spec.core_options()
    assert (
        before["backbone"].train == before["encoders.text"].train == before["encoders.text.projector"].train == "lora"
    )
    plain = spec.without_lora()
    after = plain.core_options()
    assert {k: v.train for k, v in after.items()} == {
        k: ("full" if v.train == "lora" else v.train) for k, v in before.items()
    }
    assert after["fusion"].train == "frozen" and all(v.lora is None for v in after.values())
    assert spec.core_options() == before  # the spec itself is unchanged
    assert parse_spec_text(plain.to_toml()) == plain
