"""Training and evaluation as a user lives them (issue 18, data half): every bad record located
and counted once, misspelled fields caught before the first step, JSON errors at the right
column, `mmcore eval` a user can dig into, `--set`/`--seed` overrides, and the smaller items
(checksum advice, the manifest's components, the advice for an unpublished plugin)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_training import sentiment_records, spec_dict, write_manifest

import mmcore
from mmcore.cli import main, make_parser
from mmcore.data import BadRecord, Collator, DataError, ManifestDataset
from mmcore.evaluate import evaluate_dir

CLS = {"cls": {"component": "classify", "num_classes": 2}}


def _cls_spec(tmp_path: Path, data: Path, **training) -> dict:
    task = {"cls": {"objective": "classification", "train": str(data)}}
    return spec_dict(tmp_path, task, {"steps": 2, "batch_size": 8, **training}, heads=CLS)


# --- data errors located, always ---------------------------------------------------------


def test_a_record_without_its_label_is_skipped_once_or_stops_the_run_naming_file_line_and_field(tmp_path, manager):
    recs = sentiment_records(8)
    del recs[3]["label"]  # line 4: the issue's "head 'x' found no targets in the batch"
    data = write_manifest(tmp_path / "d.jsonl", recs)
    _, result = mmcore.trainer.train(mmcore.parse_spec(_cls_spec(tmp_path, data)))
    # skipped, and counted once although both steps (two epochs of 8 records) meet it
    assert result.bad_records == {"cls": 1}
    with pytest.raises(DataError, match=rf"{data}:4 field 'label': missing: the task's objective reads its target"):
        mmcore.trainer.train(mmcore.parse_spec(_cls_spec(tmp_path, data, on_bad_record="error")))


def test_a_misspelled_field_fails_before_the_first_step_with_the_suggestion(tmp_path, manager):
    # a target field misspelled in every record
    recs = [{"text": r["text"], "lable": r["label"]} for r in sentiment_records(8)]
    data = write_manifest(tmp_path / "d.jsonl", recs)
    spec = mmcore.parse_spec(_cls_spec(tmp_path, data))
    with pytest.raises(DataError) as err:
        mmcore.Trainer(mmcore.build(spec), spec.tasks, spec.training, out_dir=tmp_path / "run")
    msg = str(err.value)
    assert "tasks.cls.train: field 'label'" in msg and "is in none of the first 8 records" in msg
    assert "did you mean 'lable'?" in msg and "['lable', 'text']" in msg
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # no step ran

    # an input misspelled in every record (the issue's `chemm` for `chem`): the run would train without it
    two = _cls_spec(
        tmp_path,
        write_manifest(
            tmp_path / "c.jsonl",
            [{"text": r["text"], "chemm": "C1=CC", "label": r["label"]} for r in sentiment_records(8)],
        ),
    )
    two["encoders"]["chem"] = {"component": "text.bytes", "max_length": 32}
    two["encoders"]["text"]["max_length"] = 32
    spec = mmcore.parse_spec(two)
    with pytest.raises(DataError, match=r"field 'chem' \(an input of the model\) is in none .*did you mean 'chemm'"):
        mmcore.Trainer(mmcore.build(spec), spec.tasks, spec.training)

    # an input no task's records hold at all (no close match): its encoder would never train
    two["tasks"]["cls"]["train"] = str(data.parent / "d2.jsonl")
    write_manifest(data.parent / "d2.jsonl", sentiment_records(8))
    spec = mmcore.parse_spec(two)
    with pytest.raises(DataError, match=r"the model's input \['chem'\] is in none of the first 100 records"):
        mmcore.Trainer(mmcore.build(spec), spec.tasks, spec.training)


def test_a_json_error_names_the_file_line_and_the_column_in_that_line(tmp_path, manager):
    model = mmcore.build(spec_dict(tmp_path, {}))
    data = tmp_path / "m.jsonl"
    data.write_text('{"text": "ok"}\n\n{"text": "a",\n{"text": "b" "c"}\n')
    ds = ManifestDataset(data, model.processors, {"text": "text"})
    # a record cut short: the parser's own message says "line 2 column 1" (past the newline)
    assert str(ds[1]) == f"{data}:3: not valid JSON: Expecting property name enclosed in double quotes at column 14"
    assert str(ds[2]) == f"{data}:4: not valid JSON: Expecting ',' delimiter at column 14"


def test_preprocess_reads_a_record_as_the_loader_does(tmp_path, manager):
    model = mmcore.build(spec_dict(tmp_path, {}))
    records = [{"text": "a cat", "target": "EINE KATZE"}, {"text": "dog", "target": "HUND"}]
    data = write_manifest(tmp_path / "p.jsonl", records)
    ds = ManifestDataset(data, model.processors, {"text": "text"})
    loaded, bad = Collator(model.processors)([ds[0], ds[1]])
    direct = model.preprocess(records)
    assert not bad and direct.inputs.keys() == loaded.inputs.keys()
    for k, v in loaded.inputs["text"].items():  # the target is part of the text: a prompt/target pair
        assert torch.equal(direct.inputs["text"][k], v), k
    assert int(direct.inputs["text"]["mask"][1].sum()) == len("dog") + len("HUND") + 3  # bos, sep, eos
    # declared targets are checked the same way too
    from mmcore.types import TargetField

    with pytest.raises(mmcore.errors.InputError, match="record 1 field 'label': missing"):
        model.preprocess([{"text": "a", "label": 1}, {"text": "b"}], targets=[TargetField("label", "integer")])


# --- evaluation a user can dig into -----------------------------------------------------------


@pytest.fixture(scope="module")
def manager_module():
    """The ``manager`` fixture for a module-scoped fixture (a fresh plugin manager, restored after)."""
    from mmcore import plugins

    with pytest.MonkeyPatch.context() as mp:
        for var in (plugins.ENV_DISABLE_AUTOLOAD, plugins.ENV_STRICT, plugins.ENV_BLOCK):
            mp.delenv(var, raising=False)
        old = plugins.reset_manager(plugins.PluginManager())
        yield
        plugins.reset_manager(old)


@pytest.fixture(scope="module")
def caption_model(tmp_path_factory, manager_module):
    tmp = tmp_path_factory.mktemp("eval")
    pairs = [{"text": w, "target": w.upper()} for w in ["cat", "dog", "bird", "fish"] * 4]
    data = write_manifest(tmp / "pairs.jsonl", pairs)
    spec = spec_dict(tmp, {"tr": {"objective": "prefix_lm", "train": str(data)}}, {"steps": 4, "batch_size": 8})
    mmcore.trainer.train(mmcore.parse_spec(spec), out_dir=tmp / "m")
    return tmp / "m", data, pairs


def test_eval_writes_every_prediction_and_reference_and_clamps_lengths(caption_model, tmp_path, manager):
    model_dir, data, pairs = caption_model
    preds = tmp_path / "preds.jsonl"
    with pytest.warns(UserWarning, match=r"max_new_tokens 500 is more than the context length 64 leaves"):
        res = evaluate_dir(model_dir, data, max_new_tokens=500, predictions=preds)
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [r["reference"] for r in rows] == [p["target"] for p in pairs]
    assert [r["where"] for r in rows] == [f"{data}:{i + 1}" for i in range(len(pairs))]
    assert all(isinstance(r["prediction"], str) for r in rows)
    assert res["metrics"]["exact_match"] == pytest.approx(sum(r["exact"] for r in rows) / len(rows))
    assert res["predictions"] == str(preds) and res["metrics"]["references"] == len(pairs)


def test_eval_reads_the_reference_from_the_field_named(caption_model, tmp_path, manager):
    model_dir, _, _ = caption_model
    texts = write_manifest(tmp_path / "texts.jsonl", [{"text": w} for w in ["CAT", "DOG"]])
    with pytest.raises(mmcore.MMCoreError, match="no record has a reference .* in field 'target'.*--reference-field"):
        evaluate_dir(model_dir, texts, max_new_tokens=4)
    preds = tmp_path / "p.jsonl"
    assert main(["eval", str(model_dir), str(texts), "--reference-field", "text", "--max-new-tokens", "4",
                 "--predictions", str(preds)]) == 0  # fmt: skip
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [r["reference"] for r in rows] == ["CAT", "DOG"]


def test_eval_predictions_of_a_classifier_name_each_record_and_class(tmp_path, manager):
    data = write_manifest(tmp_path / "d.jsonl", sentiment_records(8))
    spec = _cls_spec(tmp_path, data)
    spec["tasks"]["cls"]["labels"] = ["neg", "pos"]
    mmcore.trainer.train(mmcore.parse_spec(spec), out_dir=tmp_path / "m")
    preds = tmp_path / "p.jsonl"
    res = evaluate_dir(tmp_path / "m", data, predictions=preds)
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [r["reference"] for r in rows] == [["neg", "pos"][r["label"]] for r in sentiment_records(8)]
    assert {r["prediction"] for r in rows} <= {"neg", "pos"}
    assert res["metrics"]["accuracy"] == pytest.approx(sum(r["exact"] for r in rows) / 8)


# --- overrides ---------------------------------------------------------------------------------


def test_set_and_seed_override_the_spec_are_validated_and_recorded(tmp_path, manager, capsys):
    data = write_manifest(tmp_path / "d.jsonl", sentiment_records(8))
    spec_file = tmp_path / "s.toml"
    spec_file.write_text(mmcore.spec.to_toml(_cls_spec(tmp_path, data)))
    out = tmp_path / "m"
    args = ["train", str(spec_file), "--out", str(out), "--set", "training.lr=1e-3", "--set", "tasks.cls.weight=2"]
    assert main([*args, "--set", "training.schedule=constant", "--seed", "3"]) == 0
    saved = mmcore.load(out).spec
    assert saved.training.lr == 1e-3 and saved.training.seed == 3 and saved.training.schedule == "constant"
    assert saved.tasks["cls"].weight == 2.0
    assert "lr = 0.001" in (out / "spec.toml").read_text()
    capsys.readouterr()
    assert main(["train", str(spec_file), "--set", "training.lrr=1e-3"]) == 1
    assert "unknown option 'lrr' for training; did you mean 'lr'?" in capsys.readouterr().err
    assert main(["train", str(spec_file), "--set", "tasks.clss.weight=2"]) == 1
    assert "the spec has no section [tasks.clss]; did you mean 'tasks.cls'?" in capsys.readouterr().err
    assert main(["train", str(spec_file), "--set", "training.lr=fast"]) == 1
    assert "[training.lr]" in capsys.readouterr().err


def test_train_help_describes_spec():
    sub = next(a for a in make_parser(with_plugins=False)._actions if a.dest == "command")
    text = sub.choices["train"].format_help()
    assert "a TOML spec file" in text and "--set KEY=VALUE" in text and "--seed" in text


# --- the smaller items -------------------------------------------------------------------------


def test_a_checksum_mismatch_says_what_to_do_and_no_verify_loads_with_a_warning(
    caption_model, tmp_path, manager, capsys
):
    import shutil

    model_dir = tmp_path / "m"
    shutil.copytree(caption_model[0], model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["sha256"]["spec.toml"] = "0" * 64  # what a file changed since saving looks like
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(mmcore.errors.WeightsError, match=r"What to do: .*resumes from .*checkpoints.*--no-verify"):
        mmcore.load(model_dir)
    assert main(["generate", str(model_dir), "--prompt", "cat", "--max-new-tokens", "2", "--no-verify"]) == 0
    assert "loading without checking its files against the manifest's checksums" in capsys.readouterr().err
    # every command that loads a model directory takes it, explain and export included
    record = json.dumps({"text": "cat"})
    assert main(["explain", str(model_dir), record]) == 1
    assert "What to do" in capsys.readouterr().err
    assert main(["explain", str(model_dir), record, "--no-verify"]) == 0
    assert "loading without checking" in capsys.readouterr().err
    for command in ("eval", "generate", "quantize", "export", "explain"):
        assert (
            "--no-verify"
            in make_parser(with_plugins=False)._subparsers._group_actions[0].choices[command].format_help()
        )


def test_the_manifest_lists_a_component_once_and_advice_for_an_unpublished_plugin(tmp_path, manager, monkeypatch):
    from mmcore.errors import ModelDirError
    from mmcore.provenance import check

    spec = spec_dict(tmp_path, {})
    spec["encoders"]["title"] = {"component": "text.bytes", "max_length": 16}
    spec["encoders"]["text"]["max_length"] = 48
    out = mmcore.save(mmcore.build(spec), tmp_path / "m")
    comps = json.loads((out / "manifest.json").read_text())["distributions"]["mmcore-text"]["components"]
    assert comps == ["encoder:text.bytes"]

    saved = {"distributions": {"mmcore-tabular": {"version": "0.1.0", "origin": "file:///src/mmcore-tabular"}}}
    with pytest.raises(ModelDirError, match=r"installed from file:///src/mmcore-tabular: pip install '/src/mmcore-tab"):
        check(saved, "m", mmcore.__version__)
    with pytest.raises(ModelDirError, match=r"not a published mmcore plugin .* from where you got it"):
        check({"distributions": {"mmcore-tabular": {"version": "0.1.0"}}}, "m", mmcore.__version__)
    # a first-party plugin (the catalog lists it): the pinned install is the advice
    catalog = tmp_path / "registry.toml"
    catalog.write_text('[plugins.tabular]\ndistribution = "mmcore-tabular"\ncomponents = []\n')
    monkeypatch.setenv("MMCORE_CATALOG", str(catalog))
    with pytest.raises(
        ModelDirError, match=r'mmcore-tabular 0.1.0 is not installed: pip install "mmcore-tabular==0.1.0"$'
    ):
        check({"distributions": {"mmcore-tabular": {"version": "0.1.0"}}}, "m", mmcore.__version__)


def test_a_record_without_a_required_input_is_a_bad_record_naming_the_field(tmp_path, manager):
    spec = spec_dict(tmp_path, {})
    spec["encoders"]["title"] = {"component": "text.bytes", "max_length": 16}
    spec["encoders"]["text"]["max_length"] = 48
    model = mmcore.build(spec)
    data = write_manifest(tmp_path / "m.jsonl", [{"text": "ok", "title": "a"}, {"title": "only a title"}])
    mods = {"text": "text", "title": "text"}
    ds = ManifestDataset(data, model.processors, mods, targets=(), required=["text"])  # as an lm task reads it
    assert not isinstance(ds[0], BadRecord)
    assert str(ds[1]) == f"{data}:2 field 'text': missing: the task reads this input; the record has ['title']"
    assert not isinstance(ManifestDataset(data, model.processors, mods, targets=())[1], BadRecord)


def test_a_model_naming_an_unknown_component_says_where_its_plugin_came_from(tmp_path, manager):
    """The second way a missing plugin shows (the spec names a component no installed plugin
    provides, e.g. loaded with ``check_versions=False``) gives the same advice as the version check."""
    from mmcore.errors import ModelDirError

    out = mmcore.save(mmcore.build(spec_dict(tmp_path, {})), tmp_path / "m")
    spec_text = (out / "spec.toml").read_text()
    (out / "spec.toml").write_text(spec_text.replace('"text.bytes"', '"tabular.bytes"'))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["components"]["encoder:tabular.bytes"] = "mmcore-tabular 0.1.0"
    manifest["distributions"]["mmcore-tabular"] = {"version": "0.1.0", "origin": "file:///src/mmcore-tabular"}
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        ModelDirError, match=r"encoder:tabular.bytes \(it is not a published .* from file:///src/mmcore-tab"
    ):
        mmcore.load(out, verify=False, check_versions=False)
