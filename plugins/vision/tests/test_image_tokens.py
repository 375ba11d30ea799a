"""encoder:vision.palette: images <-> palette token ids, the processor, the encoder."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mmcore_vision.image_tokens import ImageTokenEmbedding, ImageTokenProcessor, PaletteTokenizer
from mmcore_vision.image_tokens_config import PaletteTokensConfig
from PIL import Image
from pydantic import ValidationError

from mmcore.errors import InputError, ModelDirError


def palette_image(tok: PaletteTokenizer, ids: np.ndarray) -> np.ndarray:
    """The uint8 image whose pixels are the palette colours ``ids`` (S*S,)."""
    return tok.decode_array(ids)


@pytest.mark.parametrize(("size", "channels", "levels"), [(8, 1, 4), (8, 1, 17), (5, 1, 2), (4, 3, 4), (3, 1, 256)])
def test_palette_images_round_trip_exactly(size, channels, levels):
    tok = PaletteTokenizer(size, channels, levels)
    proc = ImageTokenProcessor({"image_size": size, "channels": channels, "levels": levels})
    rng = np.random.default_rng(0)
    ids = rng.integers(0, tok.palette_size, tok.num_pixels)
    arr = palette_image(tok, ids)
    assert arr.dtype == np.uint8 and arr.shape == ((size, size) if channels == 1 else (size, size, 3))
    out = proc(arr)["ids"]
    assert out[0].item() == proc.image_id and out[1:].tolist() == ids.tolist()
    # through a PNG file and back: identical pixels
    img = proc.decode(out[1:])
    assert img.mode == ("L" if channels == 1 else "RGB") and img.size == (size, size)
    assert np.array_equal(np.asarray(img), arr)


def test_sklearn_digit_levels_are_exact_with_17_levels(tmp_path):
    # load_digits stores 17 grey levels 0..16; written as round(v * 255 / 16) they are palette colours.
    levels = np.arange(17).repeat(4)[:64].reshape(8, 8)
    px = np.rint(levels * 255 / 16).astype(np.uint8)
    path = tmp_path / "d.png"
    Image.fromarray(px, mode="L").save(path)
    proc = ImageTokenProcessor({"image_size": 8, "levels": 17})
    ids = proc(str(path))["ids"]
    assert ids[1:].tolist() == levels.reshape(-1).tolist()
    assert np.array_equal(np.asarray(proc.decode(ids[1:])), px)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 256), st.lists(st.floats(0.0, 1.0), min_size=9, max_size=9))
def test_quantisation_picks_the_nearest_level(levels, values):
    tok = PaletteTokenizer(3, 1, levels)
    x = torch.tensor(values, dtype=torch.float32).view(1, 3, 3)
    ids = tok.encode_pixels(x)
    assert ((ids >= 0) & (ids < levels)).all()
    err = (ids.float() / (levels - 1) - x.view(-1)).abs()
    assert bool((err <= 0.5 / (levels - 1) + 1e-6).all())


def test_vocabulary_and_special_ids():
    proc = ImageTokenProcessor({"image_size": 8, "levels": 4})
    assert (proc.vocab_size, proc.image_id, proc.pad_id, proc.eos_id) == (6, 4, 5, None)
    assert proc.output_ids == range(4) and proc.num_pixels == 64 and proc.max_tokens == 65
    rgb = ImageTokenProcessor({"image_size": 4, "channels": 3, "levels": 3})
    assert (rgb.tokenizer.palette_size, rgb.vocab_size) == (27, 29)
    pal = rgb.tokenizer.palette
    assert pal.shape == (27, 3) and len({tuple(c) for c in pal}) == 27
    assert pal[0].tolist() == [0, 0, 0] and pal[26].tolist() == [255, 255, 255] and pal[1].tolist() == [0, 0, 128]
    # any image becomes <image> + S*S palette ids
    ids = proc(np.random.default_rng(1).random((20, 30)).astype(np.float32))["ids"]
    assert ids.shape == (65,) and ids[0] == 4 and bool((ids[1:] < 4).all())


def test_other_sizes_are_resized_and_colours_converted():
    proc = ImageTokenProcessor({"image_size": 4, "levels": 2, "interpolation": "nearest"})
    big = np.zeros((8, 8, 3), dtype=np.uint8)
    big[:, 4:] = 255  # right half white
    ids = proc(big)["ids"][1:].view(4, 4)
    assert ids[:, :2].eq(0).all() and ids[:, 2:].eq(1).all()
    pil = Image.fromarray(big).convert("RGBA")
    assert proc(pil)["ids"].tolist() == proc(big)["ids"].tolist()


def test_prompts_and_collate():
    proc = ImageTokenProcessor({"image_size": 2, "levels": 4})
    a = proc({"prompt": []})
    b = proc({"prompt": [3, 1]})
    c = proc(np.zeros((2, 2), dtype=np.uint8))
    assert a["ids"].tolist() == [4] and b["ids"].tolist() == [4, 3, 1]
    batch = proc.collate([a, None, b, c])
    assert batch["ids"].tolist() == [[4, 5, 5, 5, 5], [5, 5, 5, 5, 5], [4, 3, 1, 5, 5], [4, 0, 0, 0, 0]]
    assert batch["mask"].sum(1).tolist() == [1, 0, 3, 5]


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ({"prompt": [7]}, "pixel ids are integers 0..3"),
        ({"prompt": [True]}, "pixel ids"),
        ({"prompt": "abc"}, "must be a list of pixel ids"),
        ({"prompt": [0] * 5}, "an image has 4"),
        ({"target": []}, "expects an image, or"),
        (np.zeros((2, 2, 7)), "not an image"),
        (3.5, "an image must be"),
        (b"", "empty bytes"),
        ("/no/such/file.png", "no such file"),
    ],
)
def test_bad_values_raise_input_errors_that_say_where(value, match):
    proc = ImageTokenProcessor({"image_size": 2, "levels": 4})
    with pytest.raises(InputError, match=match) as err:
        proc(value, where="train.jsonl:3 field 'image'")
    assert "train.jsonl:3" in str(err.value)


@pytest.mark.parametrize(
    ("ids", "match"),
    [
        ([0, 1, 2], "is 4 ids, got 3"),
        ([0, 1, 2, 4], r"got \[4\]"),
        ([0, 1, 2, -1], "palette colours"),
        ([[0, 1], [2, 3]], "flat"),
    ],
)
def test_decode_rejects_what_is_not_an_image(ids, match):
    proc = ImageTokenProcessor({"image_size": 2, "levels": 4})
    with pytest.raises(InputError, match=match):
        proc.decode(ids)


def test_options_are_validated():
    with pytest.raises(ValidationError, match="4096"):
        PaletteTokensConfig(channels=3, levels=17)
    with pytest.raises(ValidationError):
        PaletteTokensConfig(levels=1)
    with pytest.raises(ValidationError):
        PaletteTokensConfig(image_size=0)
    assert PaletteTokensConfig(channels=3, levels=16).levels == 16


def test_save_load_and_pickle(tmp_path):
    proc = ImageTokenProcessor({"image_size": 4, "levels": 8, "resize": "pad"})
    proc(np.zeros((4, 4), dtype=np.uint8))  # builds the pixel reader
    again = pickle.loads(pickle.dumps(proc))
    assert again(np.ones((4, 4), dtype=np.uint8) * 255)["ids"].tolist() == [8] + [7] * 16
    names = proc.save(tmp_path)
    assert names == ["image_tokens.json"]
    fresh = ImageTokenProcessor({"image_size": 4, "levels": 8})
    fresh.load(tmp_path)
    assert fresh.config.resize == "pad"
    other = ImageTokenProcessor({"image_size": 4, "levels": 4})
    with pytest.raises(ModelDirError, match="levels is 8"):
        other.load(tmp_path)
    with pytest.raises(ModelDirError, match="missing"):
        fresh.load(tmp_path / "nowhere")


def test_encoder_embeds_a_token_alone_as_in_the_whole_image():
    cfg = PaletteTokensConfig(image_size=3, levels=4)
    proc = ImageTokenProcessor(cfg)
    enc = ImageTokenEmbedding(cfg, width=16, processor=proc).eval()
    assert enc.vocab_size == 6 and enc.token_embedding.weight.shape == (6, 16) and enc.max_tokens == 10
    batch = proc.collate([proc(np.random.default_rng(0).random((3, 3)).astype(np.float32)) for _ in range(2)])
    whole = enc(batch)
    assert whole.embeds.shape == (2, 10, 16) and whole.mask.all()
    for t in (0, 4, 9):
        one = enc({"ids": batch["ids"][:, t : t + 1], "offset": torch.tensor([t, t])})
        assert torch.equal(one.embeds[:, 0], whole.embeds[:, t])
    # the position matters: the same id at another position embeds differently
    moved = enc({"ids": batch["ids"][:, 4:5], "offset": torch.tensor([3, 3])})
    assert not torch.equal(moved.embeds[:, 0], whole.embeds[:, 4])
    with pytest.raises(InputError, match="past the image's 10 tokens"):
        enc({"ids": batch["ids"][:, :1], "offset": torch.tensor([10, 0])})
    plain = ImageTokenEmbedding(PaletteTokensConfig(image_size=3, levels=4, position_embedding=False), width=16)
    assert plain.position_embedding is None
    assert torch.equal(plain({"ids": batch["ids"][:, 4:5]}).embeds[:, 0], plain(batch).embeds[:, 4])
