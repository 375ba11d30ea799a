"""The image + text recipe (examples/recipes/image_text_fusions.py): which spec each fusion's run
is (the resampler with the script's number of latents, the other two fusions without that option),
and that bench/recipe_times.py times those same runs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from conftest import load_script

recipe = load_script("examples/recipes/image_text_fusions.py")
digits_av = load_script("examples/recipes/digits_av.py")
rt = load_script("bench/recipe_times.py")
NAMES = ["zero", "one", "two", "three"]


def _spec(fusion: str, latents: int = recipe.RESAMPLER_LATENTS, own=recipe.FUSION_SETS):
    import mmcore

    return mmcore.load_spec(recipe.SPEC, overrides=recipe.fusion_overrides(fusion, latents, own))


@pytest.mark.parametrize("fusion", recipe.FUSIONS)
def test_each_fusion_is_the_spec_with_that_fusion_and_only_the_resampler_sets_latents(fusion):
    spec = _spec(fusion)
    assert spec.fusion.component == fusion
    if fusion == "resampler":
        assert spec.fusion.options.num_latents == recipe.RESAMPLER_LATENTS
        assert _spec(fusion, 8).fusion.options.num_latents == 8
    else:
        assert not hasattr(spec.fusion.options, "num_latents")


def test_an_unknown_fusion_is_an_error_that_names_the_recipes_fusions():
    with pytest.raises(ValueError, match="'perceiver'.*early, cross_attention, resampler"):
        recipe.fusion_overrides("perceiver")


def test_a_fusions_own_settings_reach_that_fusion_alone():
    """``--fusion-set FUSION:KEY=VALUE`` (and the script's FUSION_SETS) change one fusion's spec, after its
    component and latents; the other fusions train the spec as it is."""
    own = recipe.fusion_sets(
        ["resampler:training.lr=1e-3", "resampler:fusion.depth=1", "cross_attention:fusion.heads=8"]
    )
    assert own["resampler"] == ("training.lr=1e-3", "fusion.depth=1")
    resampler = _spec("resampler", own=own)
    assert (resampler.training.lr, resampler.fusion.options.depth, resampler.fusion.options.num_latents) == (1e-3, 1, 4)
    assert _spec("cross_attention", own=own).fusion.options.heads == 8
    assert _spec("cross_attention", own=own).training.lr == _spec("early", own=own).training.lr == 2e-3
    assert recipe.fusion_sets([]) == recipe.FUSION_SETS
    with pytest.raises(ValueError, match="'perceiver'"):
        recipe.fusion_sets(["perceiver:training.lr=1e-3"])
    with pytest.raises(ValueError, match="FUSION:KEY=VALUE"):
        recipe.fusion_sets(["training.lr=1e-3"])


def test_the_timing_script_times_the_runs_the_recipe_makes():
    """bench/recipe_times.py's image_text_fusions runs resolve to the specs the recipe script trains."""
    import tomllib

    from mmcore.spec import parse_spec

    trainings = rt.RECIPES["image_text_fusions"].trainings
    assert [t.label for t in trainings] == list(recipe.FUSIONS)
    for training in trainings:
        data = tomllib.loads(recipe.SPEC.read_text())
        for key, value in training.overrides.items():
            rt._set(data, key, value)
        timed = parse_spec(data, file=str(recipe.SPEC))
        assert timed.fusion == _spec(training.label).fusion, f"{training.label}: timed {timed.fusion}"


def _data(tmp_path):
    gen = torch.Generator().manual_seed(0)
    rows = {}
    (tmp_path / "img").mkdir()
    for split, n in (("train", 8), ("eval", 4)):
        rows[split] = []
        for i in range(n):
            name = f"img/{split}{i}.png"
            (tmp_path / name).write_bytes(digits_av.png_gray((torch.rand(16, 16, generator=gen) * 255).int().tolist()))
            rows[split].append({"image": name, "target": NAMES[i % 4]})
        (tmp_path / f"caption_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[split]))
    return rows


def test_a_run_trains_the_resampler_with_the_latents_it_is_given(tmp_path):
    rows = _data(tmp_path)
    tiny = [
        f'tasks.caption.train="{tmp_path / "caption_train.jsonl"}"',
        f'tasks.caption.eval="{tmp_path / "caption_eval.jsonl"}"',
        "training.batch_size=4",
        "training.warmup_steps=1",
        "training.log_every=1",
    ]
    own = {"resampler": ("training.lr=1e-3",)}
    out = recipe.run("resampler", tmp_path, rows["eval"], 2, tiny, seed=0, latents=3, own=own)
    assert out["num_latents"] == 3 and out["steps"] == 2
    assert out["lr"] == 1e-3 and out["fusion_set"] == ["training.lr=1e-3"]
    assert 0.0 <= out["exact_match"] <= 1.0 and len(out["examples"]) == 4
    early = recipe.run("early", tmp_path, rows["eval"], 1, tiny, seed=0, own=own)
    assert "num_latents" not in early and "fusion_set" not in early and early["lr"] == 2e-3


def _rows(prefix: str, n: int) -> list[dict]:
    return [{"image": f"img/{prefix}{i:04d}.png", "target": NAMES[i % 4]} for i in range(n)]


def test_the_validation_split_is_deterministic_disjoint_and_cut_from_the_training_rows_only():
    """About a fifth of the training rows, chosen by the image's file name alone (the same rows whatever
    their order), disjoint from the fit rows, together exactly the training rows, in their order."""
    train = _rows("t", 1000)
    fit, val = recipe.validation_split(train)
    fit_names, val_names = {r["image"] for r in fit}, {r["image"] for r in val}
    assert not fit_names & val_names and len(fit) + len(val) == len(train)
    assert fit_names | val_names == {r["image"] for r in train}
    assert 0.15 < len(val) / len(train) < 0.25, len(val)
    again_fit, again_val = recipe.validation_split(list(reversed(train)))
    assert {r["image"] for r in again_val} == val_names and {r["image"] for r in again_fit} == fit_names
    assert fit == [r for r in train if r["image"] in fit_names]
    # salted: the unsalted hash of the names would pick other rows
    unsalted = {
        r["image"]
        for r in train
        if int(hashlib.sha256(r["image"].encode()).hexdigest(), 16) % 1000 < recipe.VALIDATION_FRACTION * 1000
    }
    assert unsalted != val_names
    with pytest.raises(ValueError, match="between 0 and 1"):
        recipe.validation_split(train, 1.0)


def test_on_validation_the_spec_trains_on_the_fit_part_and_is_scored_on_the_validation_part(tmp_path):
    import mmcore

    train, test = _rows("t", 200), _rows("e", 50)
    assert recipe.split_for("eval", tmp_path, train, test) == (train, test, [])
    fit, val, sets = recipe.split_for("validation", tmp_path, train, test)
    assert (fit, val) == recipe.validation_split(train)
    assert recipe.rows(tmp_path / "caption_fit.jsonl") == fit
    assert recipe.rows(tmp_path / "caption_validation.jsonl") == val
    assert not {r["image"] for r in fit + val} & {r["image"] for r in test}
    spec = mmcore.load_spec(recipe.SPEC, overrides=sets)
    assert Path(spec.tasks["caption"].train) == tmp_path / "caption_fit.jsonl"
    assert Path(spec.tasks["caption"].eval) == tmp_path / "caption_validation.jsonl"
    with pytest.raises(ValueError, match="'test'.*eval, validation"):
        recipe.split_for("test", tmp_path, train, test)


def test_main_on_validation_gives_the_baselines_and_the_runs_the_same_split(tmp_path, monkeypatch):
    """The results file's baselines are fitted on the fit part and scored on the validation part, the
    runs caption the validation part with the spec pointed at those files (before the user's --set),
    and the held-out rows reach neither."""
    data = tmp_path / "data" / "digits_av"
    data.mkdir(parents=True)
    train, test = _rows("t", 100), _rows("e", 30)
    for split, part in (("train", train), ("eval", test)):
        (data / f"caption_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    seen = {}
    monkeypatch.setattr(recipe, "EXAMPLES", tmp_path)
    monkeypatch.setattr(recipe, "baselines", lambda d, tr, te: seen.update(baselines=(tr, te)) or {"b": 1})

    def fake_run(fusion, d, scored, steps, overrides, seed, latents, own):
        seen.setdefault("runs", []).append((scored, list(overrides)))
        seen["own"] = own
        return {"fusion": fusion, "seed": seed}

    monkeypatch.setattr(recipe, "run", fake_run)
    out = tmp_path / "r.json"
    report = recipe.main(
        ["--on", "validation", "--fusions", "early", "--seeds", "0", "--set", "x=1", "--out", str(out)]
    )
    fit, val = recipe.validation_split(train)
    assert seen["baselines"] == (fit, val)
    [(scored, overrides)] = seen["runs"]
    assert scored == val
    assert overrides == [
        f'tasks.caption.train="{data / "caption_fit.jsonl"}"',
        f'tasks.caption.eval="{data / "caption_validation.jsonl"}"',
        "x=1",
    ]
    assert report["on"] == "validation" and json.loads(out.read_text())["on"] == "validation"
    assert f"{len(fit)} training, {len(val)} validation" in report["data"]
    assert seen["own"] == recipe.FUSION_SETS and report["fusion_sets"] == {}
    report = recipe.main(["--fusions", "early", "--seeds", "0", "--out", str(out), "--fusion-set", "early:y=2"])
    assert seen["baselines"] == (train, test) and seen["runs"][-1] == (test, [])
    assert seen["own"]["early"] == ("y=2",) and report["fusion_sets"] == {"early": ["y=2"]}
