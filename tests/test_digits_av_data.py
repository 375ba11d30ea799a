"""The main job's data script (examples/recipes/digits_av.py): more match pairs per training image
leave every other file, the eval pairs among them, as the default writes them."""

from __future__ import annotations

import json
import sys
from collections import Counter

from conftest import EXAMPLES

sys.path.insert(0, str(EXAMPLES / "recipes"))
import digits_av  # noqa: E402


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_more_pairs_per_image_keep_the_eval_pairs_and_the_first_four(tmp_path):
    four, eight = tmp_path / "four", tmp_path / "eight"
    digits_av.main(["--out", str(four), "--clips-per-digit", "5"])
    digits_av.main(["--out", str(eight), "--clips-per-digit", "5", "--pairs-per-image", "8"])
    for name in ("match_eval", "caption_train", "caption_eval", "transcribe_train", "transcribe_eval"):
        assert (four / f"{name}.jsonl").read_text() == (eight / f"{name}.jsonl").read_text(), name
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    first, more = (
        Counter(map(key, _rows(four / "match_train.jsonl"))),
        Counter(map(key, _rows(eight / "match_train.jsonl"))),
    )
    assert not first - more  # the default's pairs are all there
    rows = _rows(eight / "match_train.jsonl")
    images = {r["image"] for r in _rows(four / "caption_train.jsonl")}
    per_image = Counter(r["image"] for r in rows)
    assert set(per_image) == images and set(per_image.values()) == {8}
    assert sum(r["label"] for r in rows) == len(rows) // 2  # half of them match
    assert len({key(r) for r in rows}) > len(first)  # the extra four add tones the first four did not pair
