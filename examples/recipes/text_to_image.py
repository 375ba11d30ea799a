"""Text to image on the handwritten digits scikit-learn ships: "draw a seven" -> an 8x8 digit.

Data (``--out``, default ``examples/data/text_to_image``): the 1,797 scans of
``sklearn.datasets.load_digits`` (8x8, 17 grey levels 0-16, from 43 writers) as 8x8 grey PNGs
(level v stored as round(v * 255 / 16)), a seeded 80/20 split, and JSONL manifests:

* ``train.jsonl`` / ``eval.jsonl``: ``{"text": "draw a seven", "image": "img/0007.png", "label": 7}``;
  each training image gets one of three phrasings ("draw a seven", "a handwritten seven",
  "the digit 7"), each eval image "draw a seven" ("draw an eight").

Evaluation (``--evaluate MODEL_DIR``) is independent of the generator: a classifier (an
RBF support-vector machine, scikit-learn) is trained on the REAL training images only and
labels the generated images; the figure is how often its label is the digit the prompt asked
for (chance: 10 %). The classifier's own accuracy on the real held-out images is reported too,
and how many generated images are exact copies of a training image (after quantisation).

    python examples/recipes/text_to_image.py
    mmcore train examples/text_to_image.toml --out runs/text_to_image
    python examples/recipes/text_to_image.py --evaluate runs/text_to_image --samples 10 \\
        --grid docs/img/text_to_image_grid.png
    mmcore generate runs/text_to_image --prompt "draw a seven" --out seven.png --do-sample --seed 0 --scale 8
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEMPLATES = ["draw {a} {word}", "a handwritten {word}", "the digit {digit}"]
HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent / "data" / "text_to_image"


def prompt(digit: int, template: str = TEMPLATES[0]) -> str:
    word = WORDS[digit]
    return template.format(a="an" if word == "eight" else "a", word=word, digit=digit)


def split(seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices into load_digits() of the training and the held-out images (seeded 80/20)."""
    from sklearn.datasets import load_digits

    n = len(load_digits().target)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_eval = n // 5
    return sorted(order[n_eval:]), sorted(order[:n_eval])


def prepare(out: Path, seed: int = 0) -> dict:
    """Write the PNGs and the manifests; return counts."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    (out / "img").mkdir(parents=True, exist_ok=True)
    train, held = split(seed)
    rng = random.Random(seed + 1)
    rows: dict[str, list[dict]] = {"train": [], "eval": []}
    for name, idx in (("train", train), ("eval", held)):
        for i in idx:
            label = int(digits.target[i])
            path = f"img/{i:04d}.png"
            px = np.rint(digits.images[i] * 255.0 / 16.0).astype(np.uint8)
            Image.fromarray(px, mode="L").save(out / path)
            template = rng.choice(TEMPLATES) if name == "train" else TEMPLATES[0]
            rows[name].append({"text": prompt(label, template), "image": path, "label": label})
    for name, rs in rows.items():
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rs)
    return {"train": len(rows["train"]), "eval": len(rows["eval"]), "data": str(out)}


def classifier(seed: int = 0):
    """An SVM trained on the real training images (17 levels, 0-16): (model, held-out accuracy)."""
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    digits = load_digits()
    train, held = split(seed)
    clf = SVC(gamma=0.001, C=10.0).fit(digits.data[train], digits.target[train])
    acc = float((clf.predict(digits.data[held]) == digits.target[held]).mean())
    return clf, acc


def to_features(img) -> list[float]:
    """A generated PIL image (8x8 grey, 0-255) -> the classifier's 64 features on the 0-16 scale."""
    import numpy as np

    return (np.asarray(img, dtype=np.float64).reshape(-1) * 16.0 / 255.0).tolist()


def grid(images: list, rows: int, cols: int, scale: int = 4, gap: int = 1):
    """rows x cols images (row-major) on one grey sheet, each enlarged ``scale`` times."""
    from PIL import Image

    w, h = images[0].width * scale, images[0].height * scale
    sheet = Image.new("L", (cols * (w + gap) + gap, rows * (h + gap) + gap), 128)
    for k, img in enumerate(images[: rows * cols]):
        r, c = divmod(k, cols)
        sheet.paste(img.resize((w, h), Image.Resampling.NEAREST), (gap + c * (w + gap), gap + r * (h + gap)))
    return sheet


def evaluate(
    model_dir: str,
    samples: int,
    seed: int,
    grid_path: str | None,
    temperature: float,
    top_k: int,
    template: str = TEMPLATES[0],
) -> dict:
    import numpy as np
    from mmcore_vision.generate import generate_images
    from sklearn.datasets import load_digits

    import mmcore
    from mmcore.generation import GenerationConfig

    t0 = time.perf_counter()
    clf, real_acc = classifier(seed=0)
    model = mmcore.load(model_dir)
    proc = model.processors["image"]
    digits = load_digits()
    train, held = split(0)
    # The classifier on real held-out images after the tokenizer's round trip (what a perfect
    # generator's images would look like at this number of grey levels).
    quant = [proc.decode(proc(np.rint(digits.images[i] * 255 / 16).astype(np.uint8))["ids"][1:]) for i in held]
    quant_acc = float((clf.predict([to_features(im) for im in quant]) == digits.target[held]).mean())
    train_keys = {
        proc(np.rint(digits.images[i] * 255 / 16).astype(np.uint8))["ids"][1:].numpy().tobytes() for i in train
    }
    cfg = GenerationConfig(
        do_sample=True, temperature=temperature, top_k=top_k, seed=seed, num_return_sequences=samples
    )
    t1 = time.perf_counter()
    images = generate_images(model, [prompt(d, template) for d in range(10)], cfg)
    gen_s = time.perf_counter() - t1
    want = np.repeat(np.arange(10), samples)
    pred = clf.predict([to_features(im) for im in images])
    per_digit = {WORDS[d]: float((pred[want == d] == d).mean()) for d in range(10)}
    copies = sum(proc(np.asarray(im))["ids"][1:].numpy().tobytes() in train_keys for im in images)
    result = {
        "model": model_dir,
        "prompts": [prompt(d, template) for d in range(10)],
        "samples_per_prompt": samples,
        "sampling": {"temperature": temperature, "top_k": top_k, "seed": seed},
        "accuracy": float((pred == want).mean()),
        "chance": 0.1,
        "per_digit": per_digit,
        "classifier_real_heldout_accuracy": real_acc,
        "classifier_quantised_heldout_accuracy": quant_acc,
        "exact_copies_of_training_images": copies,
        "generation_seconds": round(gen_s, 1),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if grid_path:
        Path(grid_path).parent.mkdir(parents=True, exist_ok=True)
        grid(images, 10, samples, scale=6).save(grid_path, optimize=True)
        result["grid"] = grid_path
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(DEFAULT_DATA), help="data folder to write")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (data) or of sampling (--evaluate)")
    p.add_argument("--evaluate", metavar="MODEL_DIR", help="generate for every digit and score with the classifier")
    p.add_argument("--samples", type=int, default=10, help="images per digit (--evaluate)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--template", default=TEMPLATES[0], help=f"prompt phrasing (--evaluate), one of {TEMPLATES}")
    p.add_argument("--grid", help="write the generated images here, one row per digit (--evaluate)")
    p.add_argument("--json", help="write the figures here too (--evaluate)")
    args = p.parse_args(argv)
    if args.evaluate:
        res = evaluate(args.evaluate, args.samples, args.seed, args.grid, args.temperature, args.top_k, args.template)
        if args.json:
            from mmcore import atomic_write_text

            atomic_write_text(Path(args.json), json.dumps(res, indent=2) + "\n")
    else:
        res = prepare(Path(args.out), args.seed)
        spec = HERE.parent / "text_to_image.toml"
        print(f"wrote {res['train']} training and {res['eval']} held-out records to {res['data']}", file=sys.stderr)
        print(f"next:\n  mmcore train {spec} --out runs/text_to_image", file=sys.stderr)
        print(f"  python {Path(__file__)} --evaluate runs/text_to_image", file=sys.stderr)
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
