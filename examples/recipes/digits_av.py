"""Digits in three modalities: images, sound and words, from data available offline.

* **Images**: the handwritten digits scikit-learn ships (1,797 scans, 8x8, from 43 writers;
  the UCI "Optical Recognition of Handwritten Digits" test set), upscaled to 16x16 PNGs.
* **Sound**: each digit as a telephone keypad tone (DTMF, ITU-T Q.23): the sum of a row
  frequency (697, 770, 852, 941 Hz) and a column frequency (1209, 1336, 1477 Hz) of the
  digit's key. Every clip is synthesised with its own variation: duration 120-280 ms,
  onset 0-60 ms, +/-2 % frequency drift, random level, relative gain of the two tones, and
  white noise at 5-20 dB SNR; 8 kHz, 16-bit WAV.
* **Words**: the digit's English name ("seven").

Records (JSONL, paths relative to the manifest):

* ``caption_{train,eval}.jsonl``: ``{"image": "img/0001.png", "target": "seven"}``
* ``transcribe_{train,eval}.jsonl``: ``{"audio": "wav/0001.wav", "target": "seven"}``
* ``match_{train,eval}.jsonl``: ``{"image": ..., "audio": ..., "text": "same digit?", "label": 1}``
  -- does the tone name the digit in the picture? Half the pairs match; neither input alone
  says anything about the label (chance is 50 %). Training pairs each image with
  ``--pairs-per-image`` tones (half matching); eval pairs each eval image once.

Images and sounds are split between train and eval (no eval image or clip is seen in training).

    python examples/recipes/digits_av.py --out examples/data/digits_av
"""

from __future__ import annotations

import argparse
import json
import math
import random
import struct
import wave
import zlib
from pathlib import Path

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# DTMF keypad: digit -> (row Hz, column Hz)
DTMF = {
    1: (697, 1209),
    2: (697, 1336),
    3: (697, 1477),
    4: (770, 1209),
    5: (770, 1336),
    6: (770, 1477),
    7: (852, 1209),
    8: (852, 1336),
    9: (852, 1477),
    0: (941, 1336),
}
RATE = 8000


def png_gray(pixels: list[list[int]]) -> bytes:
    """A grayscale PNG from rows of 0..255 values (standard library only)."""
    h, w = len(pixels), len(pixels[0])
    raw = b"".join(b"\x00" + bytes(row) for row in pixels)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def dtmf_clip(digit: int, rng: random.Random) -> bytes:
    """16-bit mono WAV bytes of one varied DTMF tone for ``digit``."""
    lo, hi = DTMF[digit]
    drift = 1 + rng.uniform(-0.02, 0.02)
    dur = rng.uniform(0.12, 0.28)
    onset = rng.uniform(0.0, 0.06)
    total = 0.35
    level = rng.uniform(0.2, 0.6)
    twist = rng.uniform(0.6, 1.0)
    snr_db = rng.uniform(5, 20)
    noise = level / math.sqrt(2) / (10 ** (snr_db / 20))
    ph1, ph2 = rng.uniform(0, 2 * math.pi), rng.uniform(0, 2 * math.pi)
    frames = []
    for i in range(int(total * RATE)):
        t = i / RATE
        s = rng.gauss(0, noise)
        if onset <= t < onset + dur:
            s += (
                level
                * 0.5
                * (math.sin(2 * math.pi * lo * drift * t + ph1) + twist * math.sin(2 * math.pi * hi * drift * t + ph2))
            )
        frames.append(struct.pack("<h", max(-32767, min(32767, int(s * 32767)))))
    import io

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(b"".join(frames))
    return buf.getvalue()


#: Pairs per training image drawn from the recipe's main random stream (see ``draw_pairs``).
FIRST_PAIRS = 4


def draw_pairs(
    images: list[tuple[str, int]],
    by_digit: dict[int, list[str]],
    reps: range,
    rng: random.Random,
    pairs: list[dict] | None = None,
) -> list[dict]:
    """Match pairs ``reps`` of each image (pair ``r`` of image ``j`` matches when ``j + r`` is even,
    else its tone is of another digit), a tone clip of the digit drawn for each; added to ``pairs``
    (or a new list), the whole shuffled with ``rng``."""
    pairs = list(pairs or [])
    for j, (img, y) in enumerate(images):
        for r in reps:
            same = (j + r) % 2 == 0
            other = y if same else rng.choice([d for d in range(10) if d != y])
            pairs.append(
                {"image": img, "audio": rng.choice(by_digit[other]), "text": "same digit?", "label": int(same)}
            )
    rng.shuffle(pairs)
    return pairs


def write_if_changed(path: Path, data: bytes) -> None:
    """Write ``data`` unless the file already holds it (a rerun leaves files that readers may be using alone)."""
    if not path.exists() or path.read_bytes() != data:
        path.write_bytes(data)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "data" / "digits_av"))
    p.add_argument("--clips-per-digit", type=int, default=60, help="sound clips per digit (80 %% train)")
    p.add_argument("--pairs-per-image", type=int, default=4, help="match pairs per training image")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from sklearn.datasets import load_digits

    out = Path(args.out)
    (out / "img").mkdir(parents=True, exist_ok=True)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    digits = load_digits()
    images = {"train": [], "eval": []}
    order = list(range(len(digits.target)))
    rng.shuffle(order)
    n_eval = len(order) // 5
    for rank, i in enumerate(order):
        label = int(digits.target[i])
        px = [[min(255, int(v * 16)) for v in row for _ in (0, 1)] for row in digits.images[i] for _ in (0, 1)]
        name = f"img/{i:04d}.png"
        write_if_changed(out / name, png_gray(px))
        images["eval" if rank < n_eval else "train"].append((name, label))
    clips = {"train": [], "eval": []}
    for d in range(10):
        for k in range(args.clips_per_digit):
            name = f"wav/{d}_{k:03d}.wav"
            write_if_changed(out / name, dtmf_clip(d, rng))
            clips["eval" if k < args.clips_per_digit // 5 else "train"].append((name, d))

    def write(name: str, rows: list[dict]) -> None:
        write_if_changed(out / name, "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8"))

    stats = {}
    for split in ("train", "eval"):
        write(f"caption_{split}.jsonl", [{"image": n, "target": WORDS[y]} for n, y in images[split]])
        write(f"transcribe_{split}.jsonl", [{"audio": n, "target": WORDS[y]} for n, y in clips[split]])
        by_digit: dict[int, list[str]] = {}
        for n, y in clips[split]:
            by_digit.setdefault(y, []).append(n)
        reps = args.pairs_per_image if split == "train" else 1
        # The first FIRST_PAIRS pairs of each image draw from the one stream; pairs beyond them from
        # their own, so more pairs per image leave the eval pairs (drawn after) as they are.
        pairs = draw_pairs(images[split], by_digit, range(min(reps, FIRST_PAIRS)), rng)
        if reps > FIRST_PAIRS:
            more = random.Random(f"{args.seed}-more-pairs")
            pairs = draw_pairs(images[split], by_digit, range(FIRST_PAIRS, reps), more, pairs)
        write(f"match_{split}.jsonl", pairs)
        stats[split] = {"images": len(images[split]), "clips": len(clips[split]), "pairs": len(pairs)}
    (out / "README.txt").write_text(__doc__ or "")
    print(json.dumps(stats))
    return stats


if __name__ == "__main__":
    main()


def baselines(out: str | Path) -> dict:
    """Classical baselines on this data's split (examples/recipes/baselines.py).

    caption: logistic regression and an RBF SVM on the training images' pixels (as the
    PNGs store them); transcribe: logistic regression on each clip's log spectrum; match:
    the image SVM and the tone classifier composed (same digit when the product of their
    posteriors, summed over digits, exceeds 1/2).
    """
    import numpy as np
    from baselines import (
        image_classifiers,
        load_pixels,
        match_by_composition,
        public,
        read_jsonl,
        tone_classifier,
        tone_features,
    )

    out = Path(out)
    words = {w: i for i, w in enumerate(WORDS)}
    cap = {s: read_jsonl(out / f"caption_{s}.jsonl") for s in ("train", "eval")}
    xs = {s: load_pixels([out / r["image"] for r in cap[s]]) for s in cap}
    ys = {s: [words[r["target"]] for r in cap[s]] for s in cap}
    img = image_classifiers(xs["train"], ys["train"], xs["eval"], ys["eval"])
    tr = {s: read_jsonl(out / f"transcribe_{s}.jsonl") for s in ("train", "eval")}
    fs = {s: tone_features([out / r["audio"] for r in tr[s]]) for s in tr}
    tone = tone_classifier(
        fs["train"], [words[r["target"]] for r in tr["train"]], fs["eval"], [words[r["target"]] for r in tr["eval"]]
    )
    match = read_jsonl(out / "match_eval.jsonl")
    x_match = load_pixels([out / r["image"] for r in match])
    p_tone = np.asarray(tone["_model"].predict_proba(tone_features([out / r["audio"] for r in match])))
    labels = [r["label"] for r in match]
    return {
        "caption": public(img),
        "transcribe": public(tone),
        "match": {
            f"{name}_pixels_x_logistic_regression_spectrum": match_by_composition(
                np.asarray(img["_models"][key].predict_proba(x_match)), p_tone, labels
            )
            for key, name in (("svm", "rbf_svm"), ("lr", "logistic_regression"))
        },
    }
