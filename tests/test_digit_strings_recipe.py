"""The digit-strings recipe (examples/recipes/digit_strings.py): its strips, its scoring, its spec."""

from __future__ import annotations

import json
import math
import sys
import tomllib

import numpy as np
from conftest import EXAMPLES

sys.path.insert(0, str(EXAMPLES / "recipes"))
import digit_strings as recipe  # noqa: E402


def _cells(path) -> list[bytes]:
    from PIL import Image

    px = np.asarray(Image.open(path).convert("L"))
    assert px.shape == (8, 32)
    return [px[:, 8 * i : 8 * (i + 1)].tobytes() for i in range(recipe.LENGTH)]


def test_each_strip_is_four_scans_of_its_caption_and_no_eval_scan_is_trained_on(tmp_path):
    from sklearn.datasets import load_digits

    stats = recipe.make(tmp_path, n_train=60, n_eval=30, seed=0)
    assert stats == {"train": 60, "eval": 30}
    digits = load_digits()
    scans: dict[bytes, set[int]] = {}  # a scan's pixels as the recipe writes them -> its labels
    for img, label in zip(digits.images, digits.target, strict=True):
        scans.setdefault(np.minimum(255, (img * 16).astype(int)).astype(np.uint8).tobytes(), set()).add(int(label))
    seen = {}
    for split in ("train", "eval"):
        rows = [json.loads(x) for x in (tmp_path / f"strings_{split}.jsonl").read_text().splitlines()]
        cells = [c for r in rows for c in _cells(tmp_path / r["image"])]
        for r, i in zip(rows, range(0, len(cells), recipe.LENGTH), strict=True):
            assert len(r["target"]) == recipe.LENGTH
            for digit, cell in zip(r["target"], cells[i : i + recipe.LENGTH], strict=True):
                assert int(digit) in scans[cell]  # the cell, left to right, is a scan of the caption's digit
        seen[split] = set(cells)
    assert not seen["train"] & seen["eval"]


def test_a_string_is_right_only_with_all_four_digits_and_a_short_reading_loses_its_missing_digits(
    tmp_path, monkeypatch
):
    import mmcore.generation

    rows = [
        {"image": "a.png", "target": "1234"},
        {"image": "b.png", "target": "1234"},
        {"image": "c.png", "target": "5678"},
    ]
    (tmp_path / "strings_eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    said = [" 1234", "12", "5679"]
    monkeypatch.setattr(mmcore.generation, "generate_for_records", lambda model, records, **kw: said)
    exact, digit = recipe.evaluate(None, tmp_path)
    assert exact == 1 / 3
    assert digit == (4 + 2 + 3) / 12


def test_the_recipes_spec_reads_a_strip_and_trains_a_step(tmp_path, manager):
    import torch

    import mmcore
    from mmcore.spec import parse_spec

    recipe.make(tmp_path, n_train=8, n_eval=4, seed=1)
    data = tomllib.loads(recipe.SPEC.read_text())
    data["tasks"]["read"] |= {
        "train": str(tmp_path / "strings_train.jsonl"),
        "eval": str(tmp_path / "strings_eval.jsonl"),
    }
    data["training"] |= {"batch_size": 4, "progress": False}
    spec = parse_spec(data, file=str(recipe.SPEC))
    torch.manual_seed(0)
    model = mmcore.build(spec)
    image = data["encoders"]["image"]
    (h, w), p = image["image_size"], image["patch_size"]
    assert model.encoders["image"].grid_shape == (h // p, w // p)  # the strip at its aspect ratio, not a square
    trainer = mmcore.Trainer(model, spec.tasks, spec.training)
    before = [t.detach().clone() for t in model.parameters()]
    out = trainer.train_step()
    assert out["task"] == "read" and math.isfinite(out["loss"]) and out["loss"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    model.eval()
    exact, digit = recipe.evaluate(model, tmp_path)
    assert 0.0 <= exact <= digit <= 1.0
