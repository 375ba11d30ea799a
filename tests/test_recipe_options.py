"""The options the recipe scripts share (examples/recipes/baselines.py)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
from conftest import EXAMPLES, load_script

baselines = load_script("examples/recipes/baselines.py")


def test_other_seeds_default_to_seed_one_and_take_a_list():
    p = argparse.ArgumentParser()
    baselines.add_other_seeds_option(p)
    assert p.parse_args([]).other_seeds == [1]  # the docs' "seed 1" figures are the default run's
    assert p.parse_args(["--other-seeds", "2", "3"]).other_seeds == [2, 3]
    assert p.parse_args(["--other-seeds"]).other_seeds == []  # none: the spec's own seed only


@pytest.mark.parametrize("script", ["speech_words.py", "language_id.py", "stdlib_text.py"])
def test_each_recipe_that_reports_other_seeds_offers_the_option(script):
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "recipes" / script), "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--other-seeds" in out and "default: 1)" in " ".join(out.split())
