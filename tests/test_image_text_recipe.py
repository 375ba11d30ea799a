"""The image + text recipe (examples/recipes/image_text_fusions.py): which spec each fusion's run
is (the resampler with the script's number of latents, the other two fusions without that option),
and that bench/recipe_times.py times those same runs."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import load_script

recipe = load_script("examples/recipes/image_text_fusions.py")
digits_av = load_script("examples/recipes/digits_av.py")
rt = load_script("bench/recipe_times.py")
NAMES = ["zero", "one", "two", "three"]


def _spec(fusion: str, latents: int = recipe.RESAMPLER_LATENTS):
    import mmcore

    return mmcore.load_spec(recipe.SPEC, overrides=recipe.fusion_overrides(fusion, latents))


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
    out = recipe.run("resampler", tmp_path, rows["eval"], 2, tiny, seed=0, latents=3)
    assert out["num_latents"] == 3 and out["steps"] == 2
    assert 0.0 <= out["exact_match"] <= 1.0 and len(out["examples"]) == 4
    assert "num_latents" not in recipe.run("early", tmp_path, rows["eval"], 1, tiny, seed=0)
