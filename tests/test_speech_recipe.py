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
        assert features.shape[0] == 40 and features.shape[1] > 20  # real speech, not an empty file


def test_the_speech_tuning_table_is_its_ablation_results_file():
    """docs/tuning.md's speech table is what bench/ablate_speech.py --write-docs writes from its results file."""
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("_bench_ablate_speech", ROOT / "bench" / "ablate_speech.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    results = json.loads((ROOT / "bench" / "results_ablate_speech.json").read_text())
    page = (ROOT / "docs" / "tuning.md").read_text()
    written = page.split(mod.BEGIN, 1)[1].split(mod.END, 1)[0]
    assert written.strip() == mod.table(results).strip(), "run `python bench/ablate_speech.py --write-docs`"
    assert any(r["setting"] == "base" for r in results)
