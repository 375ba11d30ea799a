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


def test_every_topics_setting_builds_a_valid_spec(monkeypatch):
    """Each named topics setting, on either split, is a spec mmcore accepts (a typo in a dotted key or a
    task the stage names but the spec lacks fails here, not an hour into an ablation)."""
    from mmcore.spec import parse_spec

    spec_tokenizer = str(at.ROOT / "examples" / "tokenizers" / "stdlib_topics" / "tokenizer.json")
    monkeypatch.setattr(at, "bpe_tokenizer", lambda *a: spec_tokenizer)  # no tokenizer trained here

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


def test_bpe_text_pretrain_trains_on_the_corpus_less_the_scored_split(tmp_path, monkeypatch):
    """``bpe_text = "pretrain"``: the tokenizer reads the first stage's corpus, less every line that is (or starts
    with the 400 characters of) a paragraph of the split the run scores on; a plain ``bpe=N`` reads the task's
    training file; ``bpe_text`` without ``bpe`` is refused."""
    import sys
    import types

    data = tmp_path / "examples" / "data" / "stdlib"
    data.mkdir(parents=True)
    long_val = "v" * 450
    lines = ["kept one", "val paragraph", long_val, "kept two"]
    (data / "corpus_topics_pretrain.txt").write_text("\n".join(lines) + "\n")
    rows = [{"text": "val paragraph", "label": "text"}, {"text": long_val[:400], "label": "text"}]
    (data / "topics_val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "topics_train_fit.jsonl").write_text(json.dumps({"text": "fit paragraph", "label": "text"}) + "\n")
    seen = {}

    def fake_train(texts, vocab, out):
        seen[out.name] = (texts, vocab)
        return out / "tokenizer.json"

    monkeypatch.setitem(sys.modules, "language_id", types.SimpleNamespace(train_tokenizer=fake_train))
    (tmp_path / "examples" / "stdlib_topics.toml").write_text((at.ROOT / "examples" / "stdlib_topics.toml").read_text())
    monkeypatch.setattr(at, "ROOT", tmp_path)
    spec = at.build_spec("topics", 400, {"on": "validation", **at.SETTINGS["topics_bpe=4000,pretrain"]}, 0)
    name = "bpe4000_corpus_topics_pretrain_without_topics_val"
    assert seen[name] == (["kept one", "kept two"], 4000)
    assert spec["encoders"]["text"]["tokenizer"] == str(data / name / "tokenizer.json")
    at.build_spec("topics", 400, {"on": "validation", "bpe": 3000}, 0)
    assert seen["bpe3000_topics_train_fit"] == (["fit paragraph"], 3000)
    with pytest.raises(ValueError, match="set bpe too"):
        at.build_spec("topics", 400, {"bpe_text": "pretrain"}, 0)
