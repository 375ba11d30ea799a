"""bench/ablate_main.py's error breakdown of the main job's match, and the generated names it reads
(examples/demo.py's ``exact_match(predictions=...)``), on hand-made pairs with stubbed models: the
breakdown is arithmetic over names and verdicts, so no training is needed to check it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from conftest import load_script

import mmcore.evaluate
import mmcore.generation

am = load_script("bench/ablate_main.py")
demo = load_script("examples/demo.py")

TRUTH = {"img/a.png": "one", "img/b.png": "two", "img/c.png": "four", "wav/x.wav": "one"}
TRUTH |= {"wav/y.wav": "two", "wav/z.wav": "five", "wav/w.wav": "three", "wav/q.wav": "six"}
# the model's own names: picture b misread as "three", tone q misheard as "seven"
NAMES = {
    "caption": {"img/a.png": "one", "img/b.png": "three", "img/c.png": "four"},
    "transcribe": {
        "wav/x.wav": "one",
        "wav/y.wav": "two",
        "wav/z.wav": "five",
        "wav/w.wav": "three",
        "wav/q.wav": "seven",
    },
}
# (image, tone, label, the match head right?)
PAIRS = [
    ("img/a.png", "wav/x.wav", 1, False),  # wrong although both names are right: the head's own error
    ("img/b.png", "wav/y.wav", 1, False),  # wrong on the misread picture
    ("img/c.png", "wav/z.wav", 0, True),
    ("img/b.png", "wav/w.wav", 0, True),  # right, where comparing the names ("three" = "three") is wrong
    ("img/c.png", "wav/q.wav", 0, False),  # wrong on the misheard tone (the names' comparison is right)
    ("img/b.png", "wav/x.wav", 0, False),  # wrong on the misread picture again
]


def write(data, name: str, rows: list[dict]) -> None:
    (data / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_match_breakdown_counts_where_the_errors_fall(tmp_path, monkeypatch):
    write(tmp_path, "match_eval.jsonl", [{"image": i, "audio": a, "label": y} for i, a, y, _ in PAIRS])
    write(tmp_path, "caption_eval.jsonl", [{"image": k, "target": v} for k, v in TRUTH.items() if k.startswith("img")])
    write(
        tmp_path, "transcribe_eval.jsonl", [{"audio": k, "target": v} for k, v in TRUTH.items() if k.startswith("wav")]
    )
    monkeypatch.setattr(am, "DATA", tmp_path)

    def fake_evaluate(model, objective, dataset, processors, *, batch_size, predictions):
        predictions.extend({"exact": ok} for *_, ok in PAIRS)

    monkeypatch.setattr(mmcore.evaluate, "evaluate_task", fake_evaluate)

    class Trainer:
        tasks = {"match": type("Task", (), {"objective": None, "eval": None})()}

    out = am.match_breakdown(SimpleNamespace(processors={}), Trainer(), NAMES)
    assert (out["pairs"], out["errors"]) == (6, 4)
    assert out["errors_on_named_pairs"] == 1
    assert out["errors_on_misnamed_pictures"] == 2
    assert out["composed_correct"] == 4 and out["composed_accuracy"] == round(4 / 6, 4)
    assert out["caption_misses"] == ["img/b.png"]
    assert [(e["image"], e["audio"]) for e in out["error_pairs"]] == [
        ("img/a.png", "wav/x.wav"),
        ("img/b.png", "wav/y.wav"),
        ("img/c.png", "wav/q.wav"),
        ("img/b.png", "wav/x.wav"),
    ]


def test_exact_match_hands_back_each_generated_name_by_input(tmp_path, monkeypatch):
    write(tmp_path, "caption_eval.jsonl", [{"image": k, "target": v} for k, v in TRUTH.items() if k.startswith("img")])
    write(
        tmp_path, "transcribe_eval.jsonl", [{"audio": k, "target": v} for k, v in TRUTH.items() if k.startswith("wav")]
    )
    said = {**NAMES["caption"], **NAMES["transcribe"]}

    def fake_generate(model, records, *, base, config, batch_size):
        return [" " + said[next(iter(r.values()))] + "\n" for r in records]  # generated text keeps its spaces

    monkeypatch.setattr(mmcore.generation, "generate_for_records", fake_generate)
    names: dict = {}
    acc = demo.exact_match(None, tmp_path, predictions=names)
    assert names == NAMES
    assert acc == {"caption_exact_match": 2 / 3, "transcribe_exact_match": 4 / 5}
    assert demo.exact_match(None, tmp_path) == acc  # without the dict, the same figures


# --- the validation split (bench/ablate_main.py --on validation) -----------------------------------------------


def _rows(folder, name: str) -> list[dict]:
    return [json.loads(line) for line in (folder / name).read_text().splitlines()]


def _validation_split(tmp_path, monkeypatch, name: str = "val"):
    """validation_data on the recipe's real data (10 tones per digit to keep it quick); the baselines
    replaced by a stub that records which images, tones and pairs it was handed to train and score on."""
    import sys

    sys.path.insert(0, str(am.ROOT / "examples" / "recipes"))
    import digits_av

    real = digits_av.main
    monkeypatch.setattr(digits_av, "main", lambda argv: real([*argv, "--clips-per-digit", "10"]))
    seen: dict = {}

    def fake_baselines(out):
        seen.update({f: _rows(out, f) for f in ("caption_train.jsonl", "caption_eval.jsonl", "match_eval.jsonl")})
        return {
            "caption": {"rbf_svm_pixels": 0.5, "logistic_regression_pixels": 0.25},
            "transcribe": {"logistic_regression_spectrum": 1.0},
            "match": {
                "rbf_svm_pixels_x_logistic_regression_spectrum": 0.75,
                "logistic_regression_pixels_x_logistic_regression_spectrum": 0.125,
            },
        }

    monkeypatch.setattr(digits_av, "baselines", fake_baselines)
    out = tmp_path / name
    stats = am.validation_data(out)
    return out, stats, seen, real


def test_validation_split_is_cut_from_training_only_and_disjoint(tmp_path, monkeypatch):
    out, stats, seen, real = _validation_split(tmp_path, monkeypatch)
    orig = tmp_path / "orig"
    real(["--out", str(orig), "--clips-per-digit", "10"])  # the recipe's own split, for comparison
    eval_files = {r["image"] for r in _rows(orig, "caption_eval.jsonl")} | {
        r["audio"] for r in _rows(orig, "transcribe_eval.jsonl")
    }
    for task, field in (("caption", "image"), ("transcribe", "audio")):
        train = [r[field] for r in _rows(orig, f"{task}_train.jsonl")]
        fit = [r[field] for r in _rows(out, f"{task}_train.jsonl")]
        val = [r[field] for r in _rows(out, f"{task}_eval.jsonl")]
        assert sorted(fit + val) == sorted(train)  # the training split, cut in two
        assert not set(fit) & set(val) and not (set(fit) | set(val)) & eval_files
        assert 0.1 < len(val) / len(train) < 0.3
        assert all(am.held_for_validation(f) for f in val) and not any(am.held_for_validation(f) for f in fit)
    fit_img = {r["image"]: r["target"] for r in _rows(out, "caption_train.jsonl")}
    val_img = {r["image"]: r["target"] for r in _rows(out, "caption_eval.jsonl")}
    fit_wav = {r["audio"]: r["target"] for r in _rows(out, "transcribe_train.jsonl")}
    val_wav = {r["audio"]: r["target"] for r in _rows(out, "transcribe_eval.jsonl")}
    for file, imgs, wavs, per in (
        ("match_train.jsonl", fit_img, fit_wav, 4),
        ("match_eval.jsonl", val_img, val_wav, 1),
    ):
        pairs = _rows(out, file)
        assert len(pairs) == per * len(imgs) and {p["image"] for p in pairs} == set(imgs)
        assert all(p["audio"] in wavs for p in pairs)  # tones of the same part only
        assert all(p["label"] == int(imgs[p["image"]] == wavs[p["audio"]]) for p in pairs)
        assert abs(sum(p["label"] for p in pairs) - len(pairs) / 2) <= 1
    assert stats["validation"] == {"images": len(val_img), "clips": len(val_wav), "pairs": len(val_img)}
    # the baselines were handed the fit part to train on and the validation part to score on
    assert seen["caption_train.jsonl"] == _rows(out, "caption_train.jsonl")
    assert seen["caption_eval.jsonl"] == _rows(out, "caption_eval.jsonl")
    assert seen["match_eval.jsonl"] == _rows(out, "match_eval.jsonl")


def test_validation_split_is_deterministic(tmp_path, monkeypatch):
    a, *_ = _validation_split(tmp_path, monkeypatch, "a")
    b, *_ = _validation_split(tmp_path, monkeypatch, "b")
    for f in ("caption", "transcribe", "match"):
        for split in ("train", "eval"):
            assert (a / f"{f}_{split}.jsonl").read_bytes() == (b / f"{f}_{split}.jsonl").read_bytes()
    assert json.loads((a / "baselines.json").read_text())["caption"]["rbf_svm_pixels"] == 0.5


def test_spec_and_baseline_rows_on_the_validation_split(tmp_path, monkeypatch):
    on_eval = am.spec_data({}, {}, 3)
    on_val = am.spec_data({}, {}, 3, "validation")
    assert on_val["training"]["seed"] == 3
    for name, task in on_val["tasks"].items():
        for split in ("train", "eval"):
            assert task[split] == on_eval["tasks"][name][split].replace("data/digits_av/", "data/digits_av_validation/")
            assert task[split].startswith("data/digits_av_validation/")
    with pytest.raises(ValueError, match="no validation split"):
        am.spec_data(am.SETTINGS["pairs_per_image=8"], {}, 0, "validation")
    with pytest.raises(ValueError, match="'on' takes"):
        am.spec_data({}, {}, 0, "test")
    monkeypatch.setattr(am, "VALIDATION_DATA", tmp_path)
    (tmp_path / "baselines.json").write_text(
        json.dumps(
            {
                "caption": {"rbf_svm_pixels": 0.9, "logistic_regression_pixels": 0.8},
                "transcribe": {"logistic_regression_spectrum": 1.0},
                "match": {
                    "rbf_svm_pixels_x_logistic_regression_spectrum": 0.7,
                    "logistic_regression_pixels_x_logistic_regression_spectrum": 0.6,
                },
            }
        )
    )
    svm, lr = am.baseline_rows("validation", "t")
    assert (svm["caption_exact_match"], svm["match_accuracy"], svm["on"], svm["baseline"]) == (
        0.9,
        0.7,
        "validation",
        True,
    )
    assert (lr["caption_exact_match"], lr["match_accuracy"], lr["tag"]) == (0.8, 0.6, "t")
    assert "| 90.0 % | 100.0 % | 70.0 % |" in am.table([svm])
