"""bench/ablate_main.py's error breakdown of the main job's match, and the generated names it reads
(examples/demo.py's ``exact_match(predictions=...)``), on hand-made pairs with stubbed models: the
breakdown is arithmetic over names and verdicts, so no training is needed to check it."""

from __future__ import annotations

import json
from types import SimpleNamespace

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
