"""bench/recipe_times.py's arithmetic and its list of recipe runs (the measuring itself is a bench
script, run on the idle machine; tests/test_docs.py checks the committed figures against it)."""

from __future__ import annotations

import tomllib

import pytest
from conftest import EXAMPLES, load_script

rt = load_script("bench/recipe_times.py")
RUNS = [(name, i, t) for name, r in rt.RECIPES.items() for i, t in enumerate(r.trainings)]


def test_a_stage_counts_its_first_pass_as_timed_and_the_rest_at_the_warm_rate():
    # the speech recipe's shape: 83 cold steps took 14.6 s, the other 1,717 at 0.0959 s each
    assert rt.stage_seconds(1800, 0.0959, 83, 14.6) == pytest.approx(14.6 + 1717 * 0.0959)
    assert rt.stage_seconds(400, 0.03) == pytest.approx(12.0)


def test_a_run_is_its_stages_plus_its_evaluations():
    stages = [{"seconds": 12.0}, {"seconds": 10.0}, {"seconds": 46.5}]
    assert rt.training_seconds(stages, 3, 0.5) == pytest.approx(70.0)


def test_a_recipe_counts_each_run_as_often_as_its_script_makes_it():
    runs = [{"times": 1, "estimated_train_seconds": 50.0}, {"times": 3, "estimated_train_seconds": 20.0}]
    assert rt.recipe_seconds(runs) == pytest.approx(110.0)


def test_an_override_of_none_removes_the_key():
    data = {"backbone": {"width": 96, "weights_from": {"path": "lm"}}}
    rt._set(data, "backbone.weights_from", None)
    rt._set(data, "backbone.lora.rank", 8)
    assert data == {"backbone": {"width": 96, "lora": {"rank": 8}}}


@pytest.mark.parametrize(("name", "i", "training"), RUNS, ids=[f"{n}-{t.label or t.spec}" for n, _, t in RUNS])
def test_every_run_the_script_times_is_a_valid_spec(name, i, training):
    """Each run is the recipe's spec with the script's changes: it validates, and the changes hold."""
    from mmcore.spec import parse_spec

    path = EXAMPLES / training.spec
    data = tomllib.loads(path.read_text())
    for key, value in training.overrides.items():
        rt._set(data, key, value)
    resolved = tomllib.loads(parse_spec(data, file=str(path)).to_toml())
    for key, value in training.overrides.items():
        if value is None:  # removed: the spec's default, whatever it is
            continue
        node: object = resolved
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(value, dict) and isinstance(node, dict):  # a table: the keys set, defaults beside them
            node = {k: node.get(k) for k in value}
        assert node == value, f"{name}: the spec as timed has {key} = {node!r}, the script sets {value!r}"
