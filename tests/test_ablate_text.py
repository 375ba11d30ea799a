"""bench/ablate_text.py's choices without training: the validation split it scores on, the baseline
rows it records beside the runs, and their table rows (the runs themselves are bench work)."""

from __future__ import annotations

import json

import pytest
from conftest import load_script

at = load_script("bench/ablate_text.py")


def test_on_validation_trains_on_the_fit_part_and_scores_on_the_validation_part():
    ev = at.build_spec("topics", 400, {}, 0)
    val = at.build_spec("topics", 400, {"on": "validation", "label_stage_only": True}, 0)
    assert ev["tasks"]["topics"]["train"] == "data/stdlib/topics_train.jsonl"
    assert ev["tasks"]["topics"]["eval"] == "data/stdlib/topics_eval.jsonl"
    assert (val["tasks"]["topics"]["train"], val["tasks"]["topics"]["eval"]) == at.VALIDATION["topics"]
    fit, held = at.VALIDATION["topics"]
    assert fit != held and "eval" not in fit + held
    # the first stage reads the same text either way (its cached weights serve both), and no option leaks in
    assert val["tasks"]["pretrain"] == ev["tasks"]["pretrain"]
    assert val["training"]["stages"][:-1] == ev["training"]["stages"][:-1]
    assert not set(at.OPTIONS) & set(val)
    with pytest.raises(ValueError, match="'on' takes 'eval' or 'validation'"):
        at.build_spec("topics", 400, {"on": "test"}, 0)
    with pytest.raises(ValueError, match="no validation split"):
        at.build_spec("mlm", 400, {"on": "validation"}, 0)


def test_baseline_rows_read_the_split_asked_for(tmp_path, monkeypatch):
    data = tmp_path / "examples" / "data" / "stdlib"
    data.mkdir(parents=True)
    nb = "char_1_4gram_tfidf_naive_bayes"
    (data / "baselines.json").write_text(
        json.dumps(
            {
                "topics_classical": {nb: {"accuracy": 0.82, "macro_f1": 0.8}},
                "topics_classical_validation": {nb: {"accuracy": 0.875, "macro_f1": 0.86}},
            }
        )
    )
    monkeypatch.setattr(at, "ROOT", tmp_path)
    (val,) = at.baseline_rows("topics", "validation")
    (ev,) = at.baseline_rows("topics", "eval")
    assert (val["setting"], val["value"], val["overrides"]) == (nb, 0.875, {"on": "validation"})
    assert ev["value"] == 0.82
    assert at.row_cells(val, '`on = "validation"`') == f'| {nb} | `on = "validation"` | - | - | - | 87.5 % | - | - |'
    with pytest.raises(ValueError, match="'on' takes"):
        at.baseline_rows("topics", "test")
    (data / "baselines.json").write_text(json.dumps({"topics_classical": {}}))
    with pytest.raises(KeyError, match="topics_classical_validation"):
        at.baseline_rows("topics", "validation")


def test_every_topics_setting_builds_a_valid_spec():
    """Each named topics setting, on either split, is a spec mmcore accepts (a typo in a dotted key or a
    task the stage names but the spec lacks fails here, not an hour into an ablation)."""
    from mmcore.spec import parse_spec

    names = [n for n in at.SETTINGS if n.startswith("topics_")]
    assert {"topics_pretrain=lm", "topics_pretrain=mlm+lm", "topics_pretrain=more,1600"} <= set(names)
    for name in names:
        for on in ("eval", "validation"):
            data = at.build_spec("topics", 400, {**at.SETTINGS[name], "on": on, "label_stage_only": True}, 0)
            spec = parse_spec(data, file=str(at.ROOT / "examples" / "stdlib_topics.toml"))
            assert [s.name for s in spec.training.stages] == ["pretrain", "topics"], name
            assert set(spec.training.stages[0].tasks) <= set(spec.tasks), name


def test_augment_mask_shares_the_cached_first_stage_only_when_that_stage_reads_a_corpus():
    """The text encoder's augment_mask masks JSONL training records only, so the topics spec's first stage (a
    text corpus) is the same with and without it, and its cached weights are shared; a first stage on a JSONL
    manifest would be masked too, and keeps augment_mask in its key."""
    data = at.build_spec("topics", 400, {"encoders.text.augment_mask": 0.2}, 0)
    assert data["encoders"]["text"]["augment_mask"] == 0.2
    early = data["training"]["stages"][0]["tasks"]
    assert at.pretraining_encoders(data, early) == at.build_spec("topics", 400, {}, 0)["encoders"]
    assert data["encoders"]["text"]["augment_mask"] == 0.2  # the spec itself keeps it
    data["tasks"]["pretrain"]["train"] = "data/stdlib/topics_train.jsonl"
    assert at.pretraining_encoders(data, early)["text"]["augment_mask"] == 0.2
