"""Augmentations one by one, the box filter, non-square images and the conv stem (vision plugin)."""

from __future__ import annotations

import pytest
import torch
from mmcore_vision.config import PatchEncoderConfig, augmentations
from mmcore_vision.patch import PatchEncoder
from mmcore_vision.processor import ImageProcessor
from pydantic import ValidationError


def proc(**kw) -> ImageProcessor:
    kw.setdefault("channels", 1)
    kw.setdefault("mean", [0.0])
    kw.setdefault("std", [1.0])
    return ImageProcessor(kw)


def digit() -> torch.Tensor:
    """A (1, 16, 16) asymmetric picture: an 'L' whose mirror image and rotations differ from it."""
    x = torch.zeros(1, 16, 16)
    x[0, 3:13, 5] = 1.0
    x[0, 12, 5:11] = 1.0
    return x


def draws(p: ImageProcessor, x: torch.Tensor, n: int = 24) -> list[torch.Tensor]:
    return [p(x)["pixels"] for _ in range(n)]


def test_augment_true_is_crop_and_flip_and_names_are_checked():
    assert augmentations(True) == ("crop", "flip") and augmentations(False) == () and augmentations([]) == ()
    assert augmentations(["flip", "shift"]) == ("shift", "flip")  # applied in a fixed order
    with pytest.raises(ValidationError, match="augment"):
        PatchEncoderConfig(augment=["mirror"])
    with pytest.raises(ValidationError, match="once"):
        PatchEncoderConfig(augment=["shift", "shift"])


@pytest.mark.parametrize("names", [["shift"], ["rotate"], ["crop"], ["flip"], ["shift", "rotate"]])
def test_each_augmentation_only_while_training(names):
    x = digit()
    p = proc(image_size=16, augment=names)
    plain = proc(image_size=16)(x)["pixels"]
    assert all(torch.equal(y, plain) for y in draws(p, x, 5))  # evaluation: deterministic, no augmentation
    p.training = True
    outs = draws(p, x)
    assert sum(not torch.equal(y, plain) for y in outs) >= 6  # training: varied


def test_shift_translates_without_flipping_or_rotating():
    x = digit()
    p = proc(image_size=16, augment=["shift"], augment_shift=0.125)
    p.training = True
    seen = set()
    for y in draws(p, x, 40):
        # the stroke's pixel count is kept (its border never reaches the edge within 2 px) and it
        # equals the input moved by some (dy, dx) with |dy|, |dx| <= 2: neither mirrored nor turned
        match = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(y, torch.roll(x, (dy, dx), dims=(1, 2)))
        ]
        assert match, "a shifted image is the input translated by at most 2 pixels"
        seen.add(match[0])
    assert len(seen) >= 5 and not any(torch.equal(y, x.flip(-1)) for y in draws(p, x, 20))


def test_flip_only_when_named():
    x = digit()
    flips = proc(image_size=16, augment=["flip"])
    flips.training = True
    outs = draws(flips, x, 30)
    assert any(torch.equal(y, x.flip(-1)) for y in outs) and any(torch.equal(y, x) for y in outs)
    for names in (["shift"], ["rotate"], ["shift", "rotate"]):
        p = proc(image_size=16, augment=names, augment_rotate=5.0)
        p.training = True
        assert not any(torch.allclose(y, x.flip(-1), atol=0.05) for y in draws(p, x, 30)), names


def test_rotation_is_small_and_keeps_the_ink():
    x = digit()
    p = proc(image_size=16, augment=["rotate"], augment_rotate=10.0)
    p.training = True
    for y in draws(p, x, 10):
        assert abs(float(y.sum() - x.sum())) < 0.15 * float(x.sum())  # a small turn, not a crop
    assert max(float((y - x).abs().max()) for y in draws(p, x, 10)) > 0.3  # it does move pixels


def test_augmentation_is_deterministic_under_a_seed():
    x = digit()
    p = proc(image_size=16, augment=["crop", "shift", "rotate", "flip"], augment_scale=(0.5, 1.0))
    p.training = True
    torch.manual_seed(3)
    a = draws(p, x, 8)
    torch.manual_seed(3)
    b = draws(p, x, 8)
    torch.manual_seed(4)
    c = draws(p, x, 8)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not all(torch.equal(u, v) for u, v in zip(a, c, strict=True))


def test_augment_prob_leaves_that_share_of_the_images_clean():
    x = digit()
    plain = proc(image_size=16)(x)["pixels"]
    never = proc(image_size=16, augment=["shift", "rotate"], augment_prob=0.0)
    never.training = True
    assert all(torch.equal(y, plain) for y in draws(never, x, 20))  # 0: every image clean
    half = proc(image_size=16, augment=["shift", "rotate"], augment_prob=0.5)
    half.training = True
    torch.manual_seed(0)
    clean = sum(torch.equal(y, plain) for y in draws(half, x, 200))
    assert 60 <= clean <= 140  # about half (a clean draw of the augmentations themselves is rare)
    always = proc(image_size=16, augment=["shift", "rotate"])  # default 1: no image left clean by it
    always.training = True
    torch.manual_seed(0)
    assert sum(torch.equal(y, plain) for y in draws(always, x, 200)) < 20
    with pytest.raises(ValidationError, match="augment_prob"):
        PatchEncoderConfig(augment_prob=1.5)


def test_augment_prob_is_saved_and_read_back(tmp_path):
    p = proc(image_size=8, augment=["shift"], augment_prob=0.25)
    p.save(tmp_path)
    q = proc(image_size=8)
    q.load(tmp_path)
    assert q.augment_prob == 0.25 and q.options["augment_prob"] == 0.25


def test_shift_moves_whole_pixels_of_the_downscaled_image():
    """A 16x16 scan read at 8x8 (area filter): the shift runs after the downscale, so augment_shift
    0.125 moves the 8x8 image by whole pixels (at most 1), never by half a pixel of it (a blur)."""
    torch.manual_seed(0)
    small = (torch.rand(1, 8, 8) * 16).round() / 16  # 17 grey levels, as the digits
    big = small.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    p = proc(image_size=8, resize="squash", interpolation="area", augment=["shift"], augment_shift=0.125)
    p.training = True
    pad = torch.nn.functional.pad(small.unsqueeze(0), (1, 1, 1, 1), mode="replicate")[0]
    seen = set()
    for y in draws(p, big, 60):
        moves = [
            (dy, dx)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if torch.equal(y, pad[:, 1 - dy : 9 - dy, 1 - dx : 9 - dx])
        ]
        assert moves, "each augmented image is the 8x8 scan moved by whole pixels, edge pixels filling"
        seen.add(moves[0])
    assert len(seen) >= 6


def test_area_filter_undoes_a_pixel_doubling():
    torch.manual_seed(0)
    small = torch.rand(1, 8, 8)
    big = small.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # how the digits recipe upscales
    assert torch.allclose(proc(image_size=8, interpolation="area")(big)["pixels"], small, atol=1e-6)
    blurred = proc(image_size=8, interpolation="bilinear")(big)["pixels"]
    assert not torch.allclose(blurred, small, atol=1e-2)  # the antialiased bilinear filter mixes neighbours


def test_non_square_images_keep_their_aspect_ratio():
    strip = torch.rand(1, 10, 40)  # a row of four 10x10 characters
    p = proc(image_size=[8, 32], resize="pad")
    assert p.output_shape == (1, 8, 32) and p.image_size == [8, 32]
    out = p(strip)["pixels"]
    assert out.shape == (1, 8, 32)
    assert torch.allclose(out, proc(image_size=[8, 32], resize="squash")(strip)["pixels"])  # no padding needed
    square = proc(image_size=32, resize="pad")(strip)["pixels"]
    assert float((square == 0).float().mean()) > 0.7  # a square spends most pixels on padding
    # crop to a wide target keeps the centre band of a tall image
    tall = torch.zeros(1, 40, 40)
    tall[0, 15:25] = 1.0
    assert torch.equal(
        proc(image_size=[10, 40], resize="crop", interpolation="area")(tall)["pixels"], torch.ones(1, 10, 40)
    )
    p.training, p.augment = True, ["crop", "shift", "rotate"]
    assert all(y.shape == (1, 8, 32) for y in draws(p, strip, 6))


def test_patch_grid_follows_the_image_shape(tmp_path):
    cfg = PatchEncoderConfig(image_size=[8, 24], patch_size=4, channels=1, dim=16, heads=2, depth=1)
    enc = PatchEncoder(cfg, processor=ImageProcessor(cfg))
    assert enc.grid_shape == (2, 6) and enc.num_tokens == 12 and enc.pos_embed.shape == (1, 12, 16)
    p = ImageProcessor(cfg)
    pixels = torch.rand(3, 1, 8, 24)
    out = enc({"pixels": pixels})
    assert out.embeds.shape == (3, 12, 16)
    # row-major patches: changing the patch at row 1, column 4 changes token 1 * 6 + 4 most
    enc.eval()
    changed = pixels.clone()
    changed[:, :, 4:8, 16:20] += 1.0
    moved = (enc({"pixels": changed}).embeds - enc({"pixels": pixels}).embeds).abs().sum(-1)
    assert int(moved[0].argmax()) == 10
    with pytest.raises(ValidationError, match=r"image_size \(10\) must be divisible by patch_size \(4\)"):
        PatchEncoderConfig(image_size=[8, 10])
    with pytest.raises(ValueError, match="encoder reads"):
        PatchEncoder(cfg, processor=ImageProcessor(PatchEncoderConfig(image_size=[24, 8], channels=1)))
    p.save(str(tmp_path))
    q = ImageProcessor(cfg)
    q.load(str(tmp_path))
    assert q.options == p.options


def test_conv_stem():
    cfg = PatchEncoderConfig(image_size=16, patch_size=4, channels=1, dim=16, heads=2, depth=1, stem="conv")
    enc = PatchEncoder(cfg)
    assert enc.stem is not None and enc.patch_embed.in_channels == 8
    out = enc({"pixels": torch.rand(2, 1, 16, 16)})
    assert out.embeds.shape == (2, 16, 16)
    out.embeds.square().mean().backward()
    assert enc.stem[0].weight.grad is not None and enc.stem[0].weight.grad.abs().sum() > 0
