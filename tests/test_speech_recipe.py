"""The speech recipe (examples/recipes/speech_words.py): its data and its missing-tool message."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from conftest import EXAMPLES

sys.path.insert(0, str(EXAMPLES / "recipes"))
import speech_words as recipe  # noqa: E402


def test_a_missing_espeak_ng_is_reported_with_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr(recipe.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit) as exc:
        recipe.make_data(tmp_path)
    assert "espeak-ng is not installed" in str(exc.value) and "apt-get install espeak-ng" in str(exc.value)
    assert not (tmp_path / "train.jsonl").exists()


@pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (Debian: apt-get install espeak-ng)"
)
def test_whole_voices_are_held_out_and_the_clips_read(tmp_path, manager):
    import mmcore

    stats = recipe.make_data(tmp_path, takes=2, eval_voices=3, accents=["en-us", "en"], utterances=["seven", "go up"])
    rows = {s: [json.loads(x) for x in (tmp_path / f"{s}.jsonl").read_text().splitlines()] for s in ("train", "eval")}
    train_voices, eval_voices = {r["voice"] for r in rows["train"]}, {r["voice"] for r in rows["eval"]}
    assert len(eval_voices) == 3 and len(train_voices) == 13 and not train_voices & eval_voices
    assert len(rows["train"]) == 13 * 2 * 2 and len(rows["eval"]) == 3 * 2
    assert stats["eval"]["held_out_voices"] == sorted(eval_voices)
    proc = mmcore.build(mmcore.load_spec(EXAMPLES / "speech_words.toml")).processors["audio"]
    for r in rows["train"][:4] + rows["eval"][:2]:
        features = proc(str(tmp_path / r["audio"]))["features"]  # within the spec's max_seconds
        assert features.shape[0] == 40 and features.shape[1] > 10  # real speech (> 0.3 s), not an empty file


def test_the_speech_tuning_table_is_its_ablation_results_file():
    """docs/tuning.md's speech table is what bench/ablate_speech.py --write-docs writes from its results file."""
    from conftest import ROOT

    mod = _ablate_speech()
    results = json.loads((ROOT / "bench" / "results_ablate_speech.json").read_text())
    page = (ROOT / "docs" / "tuning.md").read_text()
    written = page.split(mod.BEGIN, 1)[1].split(mod.END, 1)[0]
    assert written.strip() == mod.table(results).strip(), "run `python bench/ablate_speech.py --write-docs`"
    assert any(r["setting"] == "base" for r in results)


def _ablate_speech():
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("_bench_ablate_speech", ROOT / "bench" / "ablate_speech.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_second_seed_is_trained_from_the_same_spec_and_reported_beside_the_first(monkeypatch):
    """--train's other seeds: the spec with only training.seed replaced, each seed's figure in the results."""
    import mmcore
    from mmcore.trainer import TrainResult

    seen = []

    class Recorder:
        def __init__(self, model, tasks, training, out_dir=None, resume=True):
            seen.append((training.seed, training.steps, out_dir))

        def fit(self):
            return TrainResult(steps=seen[-1][1], final_loss=0.1, eval={"transcribe": {"loss": 0.02}})

    monkeypatch.setattr(mmcore, "Trainer", Recorder)
    monkeypatch.setattr(recipe, "score", lambda model, data: {"exact_match": 0.5 if len(seen) == 1 else 0.75})
    spec = mmcore.load_spec(EXAMPLES / "speech_words.toml")
    first = recipe.train_and_evaluate(EXAMPLES, spec, None)
    other = recipe.train_and_evaluate(EXAMPLES, spec, None, seed=spec.training.seed + 7)
    assert [s for s, _, _ in seen] == [spec.training.seed, spec.training.seed + 7]
    assert seen[0][1:] == seen[1][1:] == (spec.training.steps, None)  # nothing else changed
    assert (first["seed"], other["seed"]) == (spec.training.seed, spec.training.seed + 7)
    figures = recipe.figures({"logistic regression": 0.9}, first, [other])
    assert figures == {"mmcore": "50.0 %", f"mmcore, seed {other['seed']}": "75.0 %", "logistic regression": "90.0 %"}


def test_with_ema_the_figure_is_the_averaged_weights_and_raw_the_trained_ones(monkeypatch):
    """training.ema: the recipe's figure is the averages' (what the trainer evaluates and saves), ``raw``
    the same run's trained weights', and the model holds the trained weights again afterwards."""
    import torch

    import mmcore
    from mmcore.ema import EMA
    from mmcore.trainer import TrainResult

    class Averaging:  # trains every weight to 1.0 and never updates the averages: they stay the init
        def __init__(self, model, tasks, training, out_dir=None, resume=True):
            self.model, self.ema = model, EMA(model, training.ema)

        def fit(self):
            with torch.no_grad():
                for q in self.model.parameters():
                    q.fill_(1.0)
            return TrainResult(steps=1, final_loss=0.1, eval={"transcribe": {"loss": 0.02}})

    def trained(model) -> bool:
        return all(bool((q == 1.0).all()) for q in model.parameters())

    models = []
    monkeypatch.setattr(mmcore, "Trainer", Averaging)
    monkeypatch.setattr(
        recipe, "score", lambda model, data: models.append(model) or {"exact_match": 1.0 if trained(model) else 0.5}
    )
    spec = mmcore.load_spec(EXAMPLES / "speech_words.toml")
    assert spec.training.ema is not None  # the spec averages (docs/tuning.md, speech round 5)
    result = recipe.train_and_evaluate(EXAMPLES, spec, None)
    assert result["exact_match"] == 0.5 and result["raw"] == {"exact_match": 1.0}
    assert len(models) == 2 and trained(models[0])  # the trained weights are back after scoring the averages


def test_the_recipes_runs_become_rows_of_the_ablation_table():
    """bench/ablate_speech.py --from-recipe: one row per seed of examples/results/speech_words.json."""
    mod = _ablate_speech()
    run = {"steps": 4800, "batch_size": 32, "eval_loss": 0.01, "train_seconds_under_load": 120.0, "threads": 1}
    recipe_results = {
        "mmcore": {**run, "seed": 0, "exact_match": 0.99722},
        "other_seeds": [{**run, "seed": 1, "exact_match": 1.0}],
    }
    rows = mod.recipe_rows(recipe_results)
    assert [(r["seed"], r["exact_match"]) for r in rows] == [(0, 0.9972), (1, 1.0)]
    text = mod.table([{**r, "tag": "round 3"} for r in rows])
    assert "| 0 | 4800 | 99.7 % |" in text and "| 1 | 4800 | 100.0 % |" in text
    miss = [{"voice": "v", "target": "on", "transcript": "one"}]
    recipe_results["other_seeds"][0].update(misses=[], raw={"exact_match": 0.975, "misses": miss})  # with ema
    rows = mod.recipe_rows(recipe_results)
    assert rows[1]["raw"] == {"exact_match": 0.975, "misses": ["on -> one"]} and rows[1]["misses"] == []
    assert "raw" not in rows[0] and "misses" not in rows[0]
    text = mod.table([{**r, "tag": "round 5"} for r in rows])
    assert "| final (speech_words.py --train) | (base) | 1 | 4800 | 100.0 % | 0.010 |" in text
    assert "| final (speech_words.py --train), raw weights of the same run | (base) | 1 | 4800 | 97.5 % | - |" in text
    assert text.count("raw weights") == 1


def test_the_misses_of_a_saved_model_are_written_by_utterance(tmp_path, monkeypatch):
    """bench/ablate_speech.py --misses: only the wrong transcripts, counted per utterance."""
    import mmcore

    mod = _ablate_speech()
    rows = [
        {"voice": "a", "audio": "1.wav", "target": "up", "transcript": "go up"},
        {"voice": "b", "audio": "2.wav", "target": "up", "transcript": "up"},
        {"voice": "c", "audio": "3.wav", "target": "up", "transcript": "go"},
        {"voice": "c", "audio": "4.wav", "target": "seven two", "transcript": "seven"},
    ]
    monkeypatch.setattr(mmcore, "load", lambda path: "model")
    monkeypatch.setattr(recipe, "transcribe", lambda model, data: rows)
    monkeypatch.setitem(sys.modules, "speech_words", recipe)
    monkeypatch.setattr(mod, "greedy_steps", lambda model, shown: [[[r["audio"], 0.9, "x", 0.1]] for r in shown])
    mod.write_misses(tmp_path / "run", tmp_path / "misses.json")
    written = json.loads((tmp_path / "misses.json").read_text())
    assert written["exact_match"] == 0.25 and written["misses_by_utterance"] == {"up": 2, "seven two": 1}
    assert [m["audio"] for m in written["misses"]] == ["1.wav", "3.wav", "4.wav"]
    assert all(m["steps"][0][0] == m["audio"] for m in written["misses"])  # each with its own steps
    assert [m["audio"] for m in written["every 'up'"]] == ["1.wav", "3.wav", "2.wav"]  # misses first
    assert all(m["steps"][0][0] == m["audio"] for m in written["every 'up'"])


@pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (Debian: apt-get install espeak-ng)"
)
def test_the_greedy_steps_are_the_greedy_transcript_with_its_probabilities(tmp_path):
    """--misses' token-by-token view decodes what generation decodes, with the top-2 probabilities."""
    import torch

    import mmcore
    from mmcore.generation import GenerationConfig, generate
    from mmcore.prompting import prompt_records

    mod = _ablate_speech()
    recipe.make_data(tmp_path, takes=1, eval_voices=1, accents=["en-us"], utterances=["up", "go up"])
    rows = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()][:3]
    torch.manual_seed(0)
    model = mmcore.build(mmcore.load_spec(EXAMPLES / "speech_words.toml"))
    with torch.no_grad():  # random weights large enough that the greedy tokens differ from step to step
        for q in model.parameters():
            q.normal_(0, 0.5)
    steps = mod.greedy_steps(model, rows, base=tmp_path, max_new_tokens=6)
    recs = [{"audio": str(tmp_path / r["audio"]), "text": ""} for r in rows]
    batch = model.preprocess(prompt_records(model, recs, text_input="text", separator=True), targets=())
    ids = generate(model, batch, GenerationConfig(max_new_tokens=6), text_input="text")
    proc, ends = model.processors["text"], {model.processors["text"].eos_id}
    assert len({tuple(row) for row in ids}) > 1 or len(set(ids[0])) > 1  # not one token everywhere
    for st, row in zip(steps, ids, strict=True):
        names = [mod.token_name(proc, int(i), ends) for i in row]
        assert [t for t, *_ in st] == names[: len(st)] and 1 <= len(st) <= 6
        assert all(1 >= p1 >= p2 >= 0 for _, p1, _, p2 in st)
