"""A procedurally generated image task that ships no files: coloured letters on 32x32 pictures.

Each picture is one of ten capital letters drawn with Pillow's built-in font
(``ImageFont.load_default(size)``), at a random size (font size 13-24 px), a random rotation
(up to 20 degrees either way), a random position (anywhere it fits whole), in a random
foreground colour on a random background colour (at least 0.3 apart in luminance, either
one the lighter), with a thin line of a third colour crossing half of the pictures (a
distractor) and Gaussian pixel noise (std 6/255). The class is the letter. Seeded: the same
``--seed`` writes the same files, byte for byte.

It is written as the docs describe an image classification task (docs/training.md,
"Records"): PNG files and JSONL manifests, one record a line, the image field holding a path
relative to the manifest and ``label`` the class name::

    {"image": "img/train_00000.png", "label": "K"}

    python bench/glyphs_data.py --out examples/data/glyphs     # 5,000 training, 1,000 held-out

``bench/ablate_glyphs.py`` makes the data itself when it is missing.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "data" / "glyphs"
#: the classes: ten capital letters, several of them alike in parts (E/F, K/X, M/N, R/P)
LETTERS = ("A", "E", "F", "K", "M", "N", "P", "R", "S", "X")
SIZE = 32


def _luma(c: tuple[int, int, int]) -> float:
    return (0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]) / 255


def _colours(rng: random.Random) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """A background and a foreground colour at least 0.3 apart in luminance."""
    while True:
        bg = tuple(rng.randrange(256) for _ in range(3))
        fg = tuple(rng.randrange(256) for _ in range(3))
        if abs(_luma(bg) - _luma(fg)) >= 0.3:
            return bg, fg  # type: ignore[return-value]


def render(letter: str, rng: random.Random):
    """One picture of ``letter`` (a 32x32 RGB ``PIL.Image``), every choice drawn from ``rng``."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=rng.randint(13, 24))
    mask = Image.new("L", (48, 48), 0)
    ImageDraw.Draw(mask).text((24, 24), letter, fill=255, font=font, anchor="mm")
    mask = mask.rotate(rng.uniform(-20, 20), resample=Image.BILINEAR, expand=False)
    mask = mask.crop(mask.getbbox())
    w, h = mask.size
    if w > SIZE or h > SIZE:
        mask = mask.resize((min(w, SIZE), min(h, SIZE)), Image.BILINEAR)
        w, h = mask.size
    bg, fg = _colours(rng)
    img = Image.new("RGB", (SIZE, SIZE), bg)
    if rng.random() < 0.5:  # a distractor: a thin line of a third colour
        line = tuple(rng.randrange(256) for _ in range(3))
        pts = [(rng.uniform(0, SIZE), rng.uniform(0, SIZE)) for _ in range(2)]
        ImageDraw.Draw(img).line(pts, fill=line, width=1)
    img.paste(Image.new("RGB", (w, h), fg), (rng.randint(0, SIZE - w), rng.randint(0, SIZE - h)), mask)
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 6, (SIZE, SIZE, 3))
    pixels = np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).round().astype(np.uint8)
    return Image.fromarray(pixels)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(DATA))
    p.add_argument("--train", type=int, default=5000)
    p.add_argument("--eval", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from mmcore import atomic_write_text

    out = Path(args.out)
    (out / "img").mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    for split, n in (("train", args.train), ("eval", args.eval)):
        rows = []
        for i in range(n):
            letter = LETTERS[i % len(LETTERS)]  # balanced classes
            name = f"img/{split}_{i:05d}.png"
            render(letter, rng).save(out / name)
            rows.append({"image": name, "label": letter})
        random.Random(f"{args.seed}-{split}").shuffle(rows)
        atomic_write_text(out / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {args.train} training and {args.eval} held-out pictures to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
