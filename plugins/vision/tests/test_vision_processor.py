"""Tests of the ImageProcessor: inputs, colour modes, geometry, augmentation, guards, files."""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
import torch
from helpers_vision import gradient, png_header_only, write
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from mmcore_vision.config import IMAGENET_MEAN, IMAGENET_STD, ImageOptions, PatchEncoderConfig
from mmcore_vision.processor import PROCESSOR_FILE, ImageProcessor
from PIL import Image, ImageFile
from pydantic import ValidationError

from mmcore.errors import InputError, ModelDirError
from mmcore.interfaces import Processor

WHERE = "train.jsonl:7 field 'image'"


def proc(**options) -> ImageProcessor:
    return ImageProcessor(ImageOptions(**options))


def unnormalize(p: ImageProcessor, pixels: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(p.mean).view(-1, 1, 1)
    std = torch.tensor(p.std).view(-1, 1, 1)
    return pixels * std + mean


# --- formats and input kinds ---------------------------------------------------------


def test_png_and_jpeg_files(tmp_path):
    p = proc(image_size=16)
    assert isinstance(p, Processor) and p.modality == "image" and p.training is False
    png = write(tmp_path / "a.png")
    jpg = write(tmp_path / "b.jpg", quality=95)
    for path in (png, str(png), jpg):
        out = p(path, where=WHERE)
        assert set(out) == {"pixels"}
        assert out["pixels"].shape == (3, 16, 16) and out["pixels"].dtype == torch.float32
    # the JPEG is close to the lossless PNG
    assert (unnormalize(p, p(jpg)["pixels"]) - unnormalize(p, p(png)["pixels"])).abs().mean() < 0.03


def test_large_jpeg_reduced_decoding_matches_full_decoding(tmp_path):
    path = write(tmp_path / "big.jpg", gradient(640, 480), quality=95)
    p = proc(image_size=32)
    fast = p(path)["pixels"]  # JPEG draft mode: decoded at 1/4 scale (still >= 32 px)
    full = p(Image.open(path))["pixels"]  # a caller's PIL image is decoded in full
    assert (unnormalize(p, fast) - unnormalize(p, full)).abs().mean() < 0.02


def test_every_input_kind_gives_the_same_pixels(tmp_path):
    p = proc(image_size=24)
    arr = gradient()
    path = write(tmp_path / "g.png", arr)
    ref = p(path)["pixels"]
    same = [
        path.read_bytes(),
        bytearray(path.read_bytes()),
        Image.open(path),
        arr,
        arr.astype(np.float32) / 255,
        torch.from_numpy(arr).permute(2, 0, 1),
        torch.from_numpy(arr).permute(2, 0, 1).float() / 255,
    ]
    for value in same:
        torch.testing.assert_close(p(value)["pixels"], ref, atol=1e-5, rtol=0)


def test_normalisation_defaults_and_white():
    p = proc(image_size=8)
    assert p.mean == IMAGENET_MEAN and p.std == IMAGENET_STD and p.interpolation == "bilinear"
    white = p(np.full((8, 8, 3), 255, np.uint8))["pixels"]
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(white[:, 0, 0], expected)
    q = proc(image_size=8, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    assert torch.allclose(q(np.zeros((8, 8), np.uint8))["pixels"], torch.tensor(-2.0))


# --- colour modes ------------------------------------------------------------------------


def test_colour_modes_convert(tmp_path):
    p = proc(image_size=8)
    rgb = gradient()
    white = unnormalize(p, p(np.full((8, 8, 3), 255, np.uint8))["pixels"])
    cases = {
        "L": write(tmp_path / "l.png", rgb, mode="L"),
        "1": write(tmp_path / "one.png", rgb, mode="1"),
        "P": write(tmp_path / "p.png", rgb, mode="P"),
        "RGBA": write(tmp_path / "rgba.png", rgb, mode="RGBA"),
        "LA": write(tmp_path / "la.png", rgb, mode="LA"),
        "CMYK": write(tmp_path / "cmyk.jpg", rgb, mode="CMYK"),
        "I;16": write(tmp_path / "i16.png", (rgb[..., 0].astype(np.uint16) * 257)),
    }
    for mode, path in cases.items():
        assert Image.open(path).mode.startswith(mode[0]), (mode, Image.open(path).mode)
        out = p(path, where=WHERE)["pixels"]
        assert out.shape == (3, 8, 8) and torch.isfinite(out).all(), mode
        x = unnormalize(p, out)
        assert x.min() >= -1e-5 and x.max() <= 1 + 1e-5, mode
    # gray images become three equal channels
    gray = unnormalize(p, p(cases["L"])["pixels"])
    assert torch.allclose(gray[0], gray[1], atol=1e-6) and torch.allclose(gray[1], gray[2], atol=1e-6)
    # 16-bit gray is scaled by 1/65535 (not clipped at 255): it matches the 8-bit version
    i16 = unnormalize(p, p(cases["I;16"])["pixels"])
    r8 = unnormalize(p, p(rgb[..., 0])["pixels"])
    torch.testing.assert_close(i16, r8, atol=1e-4, rtol=0)
    # a fully transparent image is white (alpha composited over white), never black
    clear = np.zeros((6, 6, 4), np.uint8)
    torch.testing.assert_close(unnormalize(p, p(clear)["pixels"]), white)
    path = tmp_path / "clear.png"
    Image.fromarray(clear, "RGBA").save(path)
    torch.testing.assert_close(unnormalize(p, p(path)["pixels"]), white)
    # a palette image with a transparent index
    pal = Image.fromarray(rgb).convert("P")
    pal.info["transparency"] = 0
    buf = io.BytesIO()
    pal.save(buf, format="PNG", transparency=0)
    assert p(buf.getvalue())["pixels"].shape == (3, 8, 8)


def test_grayscale_processor():
    p = proc(image_size=8, channels=1)
    assert p.mean == pytest.approx((0.299 * 0.485 + 0.587 * 0.456 + 0.114 * 0.406,))
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    x = unnormalize(p, p(red)["pixels"])
    assert x.shape == (1, 8, 8) and torch.allclose(x, torch.tensor(0.299), atol=1e-5)
    assert p(np.zeros((8, 8), np.uint8))["pixels"].shape == (1, 8, 8)
    with pytest.raises(ValidationError, match="one value per channel"):
        PatchEncoderConfig(channels=1, mean=[0.5, 0.5, 0.5])


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)  # landscape: left half red, right half blue
    arr[:, :10, 0] = 255
    arr[:, 10:, 2] = 255
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.png"
    img.save(path, exif=exif)
    p = proc(image_size=8, resize="squash")
    x = unnormalize(p, p(path)["pixels"])
    assert x[0, 1, 4] > 0.9 and x[2, -2, 4] > 0.9  # now red on top, blue at the bottom


# --- geometry ------------------------------------------------------------------------


def test_resize_modes():
    arr = np.zeros((10, 30, 3), np.uint8)  # wide: red | green | blue thirds
    arr[:, :10, 0] = arr[:, 10:20, 1] = arr[:, 20:, 2] = 255
    crop = unnormalize(p := proc(image_size=10, resize="crop"), p(arr)["pixels"])
    assert torch.allclose(crop[1], torch.ones(10, 10), atol=1e-5)  # the centre square: all green
    squash = unnormalize(q := proc(image_size=12, resize="squash"), q(arr)["pixels"])
    assert squash[0, 5, 1] > 0.9 and squash[1, 5, 6] > 0.9 and squash[2, 5, 10] > 0.9
    pad = proc(image_size=12, resize="pad")
    out = pad(arr)["pixels"]  # 30x10 -> 12x4, centred: rows 4..7
    assert torch.allclose(out[:, :4], torch.tensor(0.0), atol=1e-6)  # padding is the mean: 0 after normalising
    assert torch.allclose(out[:, 8:], torch.tensor(0.0), atol=1e-6)
    assert unnormalize(pad, out)[0, 5, 1] > 0.9
    with pytest.raises(ValidationError):
        ImageOptions(resize="stretch")


def test_nearest_and_bicubic_stay_in_range():
    for interpolation in ("nearest", "bicubic"):
        p = proc(image_size=20, interpolation=interpolation)
        x = unnormalize(p, p(gradient(13, 7))["pixels"])
        assert x.min() >= -1e-5 and x.max() <= 1 + 1e-5


def test_augment_only_in_training_mode():
    arr = gradient(64, 48)
    plain = proc(image_size=16)
    p = proc(image_size=16, augment=True, augment_scale=[0.2, 0.5])
    ref = p(arr)["pixels"]
    assert torch.equal(ref, plain(arr)["pixels"])  # not training: the deterministic path
    assert all(torch.equal(p(arr)["pixels"], ref) for _ in range(3))
    p.training = True
    torch.manual_seed(0)
    first = [p(arr)["pixels"] for _ in range(4)]
    assert all(x.shape == (3, 16, 16) for x in first)
    assert any(not torch.equal(x, ref) for x in first) and not torch.equal(first[0], first[1])
    torch.manual_seed(0)
    again = [p(arr)["pixels"] for _ in range(4)]  # seeded: reproducible
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    p.training = False
    assert torch.equal(p(arr)["pixels"], ref)
    # without augment the training flag changes nothing
    plain.training = True
    assert torch.equal(plain(arr)["pixels"], ref)


# --- guards: decompression bombs -------------------------------------------------------


def test_decompression_bomb_is_refused_from_the_header(tmp_path, monkeypatch):
    def no_decoding(self, *args, **kwargs):
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    p = proc()
    # 8000 x 8000 = 64M pixels: more than max_pixels (50M), less than Pillow's own limit
    big = tmp_path / "big.png"
    big.write_bytes(png_header_only(8000, 8000))
    assert big.stat().st_size < 200
    with pytest.raises(InputError) as err:
        p(big, where=WHERE)
    msg = str(err.value)
    assert WHERE in msg and "big.png" in msg and "8000x8000" in msg and "max_pixels" in msg
    # 100000 x 100000: Pillow's own guard (Image.MAX_IMAGE_PIXELS) fires first, also as an InputError
    huge = png_header_only(100_000, 100_000)
    with pytest.raises(InputError, match=f"{WHERE}.*decompression-bomb"):
        p(huge, where=WHERE)
    # Pillow's warning (between its limit and twice it) is an InputError too
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(InputError, match="decompression-bomb"):
        proc(max_pixels=10**9)(png_header_only(40, 40), where=WHERE)
    # a small max_pixels applies to every kind of input
    monkeypatch.undo()
    small = proc(max_pixels=100)
    for value in (write(tmp_path / "g.png"), gradient(), torch.zeros(3, 20, 20)):
        with pytest.raises(InputError, match="max_pixels = 100"):
            small(value, where=WHERE)


# --- guards: bad files ---------------------------------------------------------------


def check_error(p: ImageProcessor, value, *fragments: str) -> str:
    with pytest.raises(InputError) as err:
        p(value, where=WHERE)
    assert type(err.value) is InputError and err.value.__cause__ is None
    msg = str(err.value)
    assert WHERE in msg, msg
    for f in fragments:
        assert f in msg, (f, msg)
    return msg


def test_bad_files_name_the_file_and_the_reason(tmp_path):
    p = proc()
    png = write(tmp_path / "ok.png", gradient(64, 64)).read_bytes()
    jpg = write(tmp_path / "ok.jpg", gradient(64, 64)).read_bytes()
    (tmp_path / "trunc.png").write_bytes(png[: len(png) // 2])
    check_error(p, tmp_path / "trunc.png", "trunc.png", "truncated or corrupt PNG")
    (tmp_path / "trunc.jpg").write_bytes(jpg[: len(jpg) // 2])
    check_error(p, tmp_path / "trunc.jpg", "trunc.jpg", "truncated or corrupt JPEG")
    (tmp_path / "noise.png").write_bytes(png[:8] + bytes(range(256)) * 4)
    check_error(p, tmp_path / "noise.png", "noise.png", "corrupt PNG")
    (tmp_path / "empty.png").write_bytes(b"")
    check_error(p, tmp_path / "empty.png", "empty.png", "empty file")
    (tmp_path / "notes.png").write_text("just some text, not pixels\n" * 3)
    check_error(p, tmp_path / "notes.png", "notes.png", "not an image", "'.png'")
    (tmp_path / "notes.txt").write_text("just some text\n")
    check_error(p, tmp_path / "notes.txt", "notes.txt", "not an image file", "'.txt'")
    check_error(p, tmp_path / "missing.png", "missing.png", "no such file")
    check_error(p, tmp_path, "is a directory")
    check_error(p, "https://example.com/cat.png", "URLs are not fetched")
    check_error(p, b"", "empty bytes")
    check_error(p, b"\x89PNG\r\n\x1a\n garbage", "corrupt PNG")
    # a PNG with a .jpg name is read by its content
    (tmp_path / "really_png.jpg").write_bytes(png)
    assert p(tmp_path / "really_png.jpg")["pixels"].shape == (3, 32, 32)


def test_bad_arrays_and_types():
    p = proc()
    nan = np.zeros((8, 8, 3), np.float32)
    nan[1, 2, 0] = np.nan
    check_error(p, nan, "1 NaN or infinite value")
    inf = torch.zeros(3, 8, 8)
    inf[0, 0, :2] = float("inf")
    check_error(p, inf, "2 NaN or infinite values")
    check_error(p, np.full((8, 8), 255.0), "[0, 1]", "255")
    check_error(p, np.zeros((3, 8, 8), np.uint8), "CxHxW", "transpose(1, 2, 0)")
    check_error(p, torch.zeros(8, 8, 3), "HxWxC", "permute(2, 0, 1)")
    check_error(p, np.zeros((8, 8), np.int64), "dtype int64")
    check_error(p, np.zeros((2, 8, 8, 3), np.uint8), "shape (2, 8, 8, 3)")
    check_error(p, np.zeros((0, 8), np.uint8), "no pixels")
    check_error(p, 42, "got int")
    assert p(np.ones((8, 8), bool))["pixels"].shape == (3, 32, 32)
    assert p(np.full((8, 8), 1.0005, np.float32))["pixels"].shape == (3, 32, 32)  # rounding noise is clamped


@settings(max_examples=25, deadline=None, database=None)
@given(
    hnp.arrays(
        np.uint8,
        st.tuples(st.integers(1, 40), st.integers(1, 40), st.sampled_from([1, 2, 3, 4])),
    ),
    st.sampled_from(["crop", "squash", "pad"]),
)
def test_any_uint8_array_gives_a_finite_fixed_shape(arr, resize):
    p = proc(image_size=12, resize=resize)
    out = p(arr)["pixels"]
    assert out.shape == (3, 12, 12) and torch.isfinite(out).all()


# --- collate ----------------------------------------------------------------------------


def test_collate_marks_missing_images():
    p = proc(image_size=8)
    batch = p.collate([p(gradient()), None, p(np.zeros((8, 8), np.uint8))])
    assert set(batch) == {"pixels", "present"}
    assert batch["pixels"].shape == (3, 3, 8, 8) and batch["pixels"].dtype == torch.float32
    assert batch["present"].tolist() == [True, False, True] and batch["present"].dtype == torch.bool
    assert (batch["pixels"][1] == 0).all()
    assert p.collate([None, None])["present"].tolist() == [False, False]
    assert p.collate([])["pixels"].shape == (0, 3, 8, 8)
    with pytest.raises(InputError, match=r"sample 1 has pixels \(3, 16, 16\), expected \(3, 8, 8\)"):
        p.collate([p(gradient()), proc(image_size=16)(gradient())])


# --- pickling and files -------------------------------------------------------------


def test_pickle_round_trip():
    p = proc(image_size=8, resize="pad", augment=True, mean=[0.1, 0.2, 0.3])
    q = pickle.loads(pickle.dumps(p))
    assert q.options == p.options and q.training is False
    assert torch.equal(q(gradient())["pixels"], p(gradient())["pixels"])


def test_save_load(tmp_path):
    p = proc(image_size=8, mean=[0.1, 0.2, 0.3], std=[0.5, 0.5, 0.5], resize="squash")
    assert p.save(str(tmp_path)) == [PROCESSOR_FILE]
    data = json.loads((tmp_path / PROCESSOR_FILE).read_text())
    assert data["mean"] == [0.1, 0.2, 0.3] and data["image_size"] == 8 and data["kind"] == "mmcore_vision.image"
    q = proc(image_size=8)
    q.load(str(tmp_path))
    assert q.options == p.options
    with pytest.raises(ModelDirError, match="image_size is 8 but the model's encoder takes 16"):
        proc(image_size=16).load(str(tmp_path))
    data["std"] = [0.5, 0.0, 0.5]
    (tmp_path / PROCESSOR_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelDirError, match="std"):
        q.load(str(tmp_path))
    assert q.options == p.options  # unchanged by the failed load
    with pytest.raises(ModelDirError, match="missing"):
        q.load(str(tmp_path / "nowhere"))
