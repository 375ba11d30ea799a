"""Tests of the vision.patch and vision.timm encoders (tiny models, random init, CPU)."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers_vision import gradient, write
from mmcore_vision.config import PatchEncoderConfig, TimmEncoderConfig
from mmcore_vision.patch import PatchEncoder
from mmcore_vision.processor import ImageProcessor
from mmcore_vision.timm_encoder import TimmEncoder, timm_processor
from pydantic import ValidationError

from mmcore.errors import SpecError, WeightsError
from mmcore.interfaces import Encoder
from mmcore.types import Tokens

VIT = {"model": "vit_tiny_patch16_224", "model_args": {"img_size": 32, "patch_size": 8, "depth": 2}}


def batch_with_missing(tmp_path, p: ImageProcessor) -> dict[str, torch.Tensor]:
    """PNG, missing, JPEG: the two files written with Pillow."""
    png = write(tmp_path / "a.png")
    jpg = write(tmp_path / "b.jpg", gradient(30, 50))
    return p.collate([p(png, where="r0"), None, p(jpg, where="r2")])


def assert_every_parameter_gets_a_gradient(encoder: torch.nn.Module, batch: dict[str, torch.Tensor]) -> None:
    encoder.train()
    out = encoder(batch)
    (out.embeds * out.mask.unsqueeze(-1)).square().mean().backward()
    missing = [n for n, p in encoder.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing, f"no gradient reaches {missing}"


# --- vision.patch -----------------------------------------------------------------------


def test_patch_encoder_tokens_and_mask(tmp_path):
    cfg = PatchEncoderConfig(image_size=16, patch_size=4, dim=32, heads=4)
    p = ImageProcessor(cfg)
    enc = PatchEncoder(cfg, width=64, processor=p)
    assert isinstance(enc, Encoder) and enc.modality == "image"
    assert enc.out_dim == 32 and enc.num_tokens == 16
    batch = batch_with_missing(tmp_path, p)
    enc.eval()
    out = enc(batch)
    assert isinstance(out, Tokens)
    assert out.embeds.shape == (3, 16, 32) and out.mask.shape == (3, 16) and out.mask.dtype == torch.bool
    assert out.mask[0].all() and out.mask[2].all() and not out.mask[1].any()  # the missing image: all False
    assert (out.embeds[1] == 0).all() and out.embeds[0].abs().sum() > 0
    assert torch.equal(enc(batch).embeds, out.embeds)  # deterministic in eval mode
    # without "present" every image counts as real
    assert enc({"pixels": batch["pixels"]}).mask.all()
    with pytest.raises(ValueError, match=r"expected \(B, 3, 16, 16\)"):
        enc({"pixels": torch.zeros(2, 3, 32, 32)})


def test_patch_encoder_gradients_and_meta(tmp_path):
    cfg = PatchEncoderConfig(image_size=16, dim=32, depth=2, heads=2, dropout=0.1)
    p = ImageProcessor(cfg)
    enc = PatchEncoder(cfg, processor=p)
    assert_every_parameter_gets_a_gradient(enc, batch_with_missing(tmp_path, p))
    with torch.device("meta"):
        meta = PatchEncoder(cfg)
    meta.load_state_dict(enc.state_dict(), assign=True)
    enc.eval(), meta.eval()
    batch = batch_with_missing(tmp_path, p)
    assert torch.equal(meta(batch).embeds, enc(batch).embeds)


def test_patch_config_validation():
    with pytest.raises(ValidationError, match=r"image_size \(30\) must be divisible by patch_size \(4\)"):
        PatchEncoderConfig(image_size=30)
    with pytest.raises(ValidationError, match=r"dim \(30\) must be divisible by heads \(4\)"):
        PatchEncoderConfig(dim=30)
    with pytest.raises(ValidationError):
        PatchEncoderConfig(patch=4)  # unknown keys are errors
    with pytest.raises(ValueError, match="processor produces"):
        PatchEncoder(PatchEncoderConfig(image_size=16), processor=ImageProcessor(PatchEncoderConfig(image_size=32)))


def test_grayscale_patch_encoder():
    cfg = PatchEncoderConfig(image_size=8, channels=1, dim=16, heads=2)
    p = ImageProcessor(cfg)
    out = PatchEncoder(cfg, processor=p)(p.collate([p(gradient())]))
    assert out.embeds.shape == (1, 4, 16)


# --- vision.timm ------------------------------------------------------------------------


def timm_encoder(**options) -> tuple[TimmEncoder, ImageProcessor]:
    cfg = TimmEncoderConfig(**options)
    p = timm_processor(cfg)
    return TimmEncoder(cfg, width=64, processor=p), p


def test_timm_cnn_feature_map_tokens(tmp_path):
    enc, p = timm_encoder(model="resnet18", image_size=64)
    assert p.image_size == 64 and p.mean == (0.485, 0.456, 0.406) and p.interpolation == "bicubic"
    assert enc.out_dim == 512 and enc.num_tokens == 4  # (64 / 32)^2
    batch = batch_with_missing(tmp_path, p)
    enc.eval()
    out = enc(batch)
    assert out.embeds.shape == (3, 4, 512) and out.mask.tolist() == [[True] * 4, [False] * 4, [True] * 4]
    assert (out.embeds[1] == 0).all()
    # the present images are encoded exactly as they would be alone
    alone = enc(p.collate([p(tmp_path / "a.png")])).embeds
    torch.testing.assert_close(out.embeds[0], alone[0], atol=1e-5, rtol=1e-5)
    # an intermediate stage: layer3 (256 channels, stride 16); later layers are removed
    mid, _ = timm_encoder(model="resnet18", image_size=64, features=-2)
    assert mid.out_dim == 256 and mid.num_tokens == 16
    assert not any(n.startswith("model.layer4") for n, _ in mid.named_parameters())
    assert mid(batch).embeds.shape == (3, 16, 256)


def test_missing_images_never_touch_batchnorm(tmp_path):
    a, p = timm_encoder(model="resnet18", image_size=64)
    b = copy.deepcopy(a)
    img = p(write(tmp_path / "a.png"))
    a.train(), b.train()
    a(p.collate([img, None, None]))  # only the real image goes through the model
    b(p.collate([img]))
    bn = "model.bn1.running_mean"
    assert a.state_dict()[bn].abs().sum() > 0
    torch.testing.assert_close(a.state_dict()[bn], b.state_dict()[bn])
    # every image missing: zeros of the right shape, all-False mask, statistics untouched
    before = a.state_dict()[bn].clone()
    out = a(p.collate([None, None]))
    assert out.embeds.shape == (2, 4, 512) and not out.mask.any() and (out.embeds == 0).all()
    assert torch.equal(a.state_dict()[bn], before)


def test_frozen_timm_encoder_keeps_its_statistics(tmp_path):
    enc, p = timm_encoder(model="test_resnet", image_size=64)
    enc.requires_grad_(False)  # what `freeze = true` does
    enc.train()
    assert enc.training and not enc.model.training
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    enc(p.collate([p(write(tmp_path / "a.png")), None]))
    assert all(torch.equal(v, before[k]) for k, v in enc.state_dict().items())
    enc.requires_grad_(True)
    enc.train()
    assert enc.model.training


def test_timm_vit_sequence_tokens_and_prefix(tmp_path):
    enc, p = timm_encoder(**VIT)
    assert p.image_size == 32 and p.mean == (0.5, 0.5, 0.5)  # the model's own pretrained_cfg
    assert enc.out_dim == 192 and enc.num_tokens == 17  # 16 patches + the class token
    batch = batch_with_missing(tmp_path, p)
    assert enc(batch).embeds.shape == (3, 17, 192)
    dropped, _ = timm_encoder(**VIT, drop_prefix_tokens=True)
    assert dropped.num_tokens == 16 and dropped(batch).mask.shape == (3, 16)
    mid, _ = timm_encoder(**VIT, features=0)  # after the first block: the second is removed
    assert mid.num_tokens == 16 and len(mid.model.blocks) == 1
    assert mid(batch).embeds.shape == (3, 16, 192)


def test_timm_gradients_reach_every_parameter(tmp_path):
    # 64 px: at 32 the last batch norm sees one value per channel and image, which blocks gradients.
    # zero_init_last = false: timm zero-initialises each residual block's last norm, so at step 0
    # nothing would flow into the blocks (by design, not a bug).
    resnet = {"model": "test_resnet", "image_size": 64, "model_args": {"zero_init_last": False}}
    for options in (resnet, VIT, {**VIT, "features": -2}):
        enc, p = timm_encoder(**options)
        assert_every_parameter_gets_a_gradient(enc, batch_with_missing(tmp_path, p))


def test_timm_unknown_model_lists_close_matches():
    with pytest.raises(SpecError) as err:
        timm_encoder(model="resnet_18")
    msg = str(err.value)
    assert "unknown timm model 'resnet_18'" in msg and "resnet18" in msg
    with pytest.raises(SpecError, match="resnet"):
        timm_encoder(model="resnt18")
    with pytest.raises(SpecError, match="built-in architectures"):
        timm_encoder(model="hf-hub:timm/resnet18.a1_in1k")


def test_timm_input_size_checks():
    with pytest.raises(SpecError) as err:
        timm_encoder(model="vit_tiny_patch16_224", image_size=32)
    msg = str(err.value)
    assert "224x224" in msg and "image_size = 224" in msg and "img_size = 32" in msg
    with pytest.raises(SpecError, match="downsamples by 32: image_size \\(16\\) must be at least 32"):
        timm_encoder(model="resnet18", image_size=16)
    with pytest.raises(SpecError, match="does not accept"):
        timm_encoder(model="resnet18", image_size=32, model_args={"no_such_arg": 1})
    with pytest.raises(SpecError, match=r"features must be 'last' or an index in -5..4"):
        timm_encoder(model="resnet18", image_size=32, features=7)


def test_timm_config_validation():
    cfg = TimmEncoderConfig(model="resnet18")
    assert cfg.image_size is None and cfg.weights is None and cfg.features == "last"
    for bad in ({"nested": {"a": 1}}, {"sizes": [1, 2]}, {"pretrained": True}, {"num_classes": 3}, {"x": None}):
        with pytest.raises(ValidationError):
            TimmEncoderConfig(model="resnet18", model_args=bad)
    with pytest.raises(ValidationError, match="in_chans"):
        TimmEncoderConfig(model="resnet18", model_args={"in_chans": 1})
    for path in ("model.pth", "pytorch_model.bin", "w.pt"):
        with pytest.raises(ValidationError, match="only .safetensors"):
            TimmEncoderConfig(model="resnet18", weights=path)
    with pytest.raises(ValidationError):
        TimmEncoderConfig()  # model is required


def test_timm_grayscale_and_explicit_stats():
    enc, p = timm_encoder(model="resnet18", image_size=32, channels=1, mean=[0.5], std=[0.2])
    assert p.mean == (0.5,) and enc.model.conv1.in_channels == 1
    enc.eval()
    assert enc(p.collate([p(gradient())])).embeds.shape == (1, 1, 512)


# --- weights ------------------------------------------------------------------------------


def test_timm_safetensors_weights(tmp_path):
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("resnet18", pretrained=False, num_classes=10)  # with a classifier
    path = tmp_path / "resnet18.safetensors"
    save_file(source.state_dict(), str(path))
    enc, _ = timm_encoder(model="resnet18", image_size=32, weights=str(path))
    for name, tensor in enc.model.state_dict().items():
        assert torch.equal(tensor, source.state_dict()[name]), name  # fc.* (the classifier) is ignored
    # a file of another model: every missing and unexpected key is listed
    other = tmp_path / "other.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=0).state_dict(), str(other))
    with pytest.raises(WeightsError) as err:
        timm_encoder(model="resnet18", image_size=32, weights=str(other))
    msg = str(err.value)
    assert "other.safetensors" in msg and "missing (64): conv1.weight" in msg and "unexpected (34)" in msg
    assert "shape of bn1.weight: model has [64], file has [32]" in msg
    with pytest.raises(WeightsError, match="no such file"):
        timm_encoder(model="resnet18", image_size=32, weights=str(tmp_path / "nope.safetensors"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 32)
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        timm_encoder(model="resnet18", image_size=32, weights=str(bad))
    enc2, _ = timm_encoder(model="resnet18", image_size=32)
    with pytest.raises(WeightsError, match="only .safetensors"):
        enc2.load_weights(tmp_path / "model.pth")
    # building on the meta device (mmcore.load) skips the file: the model directory has the weights
    with torch.device("meta"):
        meta = TimmEncoder(
            TimmEncoderConfig(model="resnet18", image_size=32, weights=str(tmp_path / "gone.safetensors"))
        )
    assert meta.num_tokens == 1 and next(meta.parameters()).is_meta


def test_timm_vit_weights_round_trip(tmp_path):
    from safetensors.torch import save_file

    enc, p = timm_encoder(**VIT)
    path = tmp_path / "vit.safetensors"
    save_file(enc.model.state_dict(), str(path))
    again, _ = timm_encoder(**VIT, weights=str(path))
    enc.eval(), again.eval()
    batch = p.collate([p(gradient())])
    torch.testing.assert_close(again(batch).embeds, enc(batch).embeds)


def test_timm_meta_build_and_buffer_reset():
    """A model with non-persistent buffers survives meta build + assign + reset_buffers (what mmcore.load does)."""
    options = {"model": "test_vit_relpos", "model_args": {"img_size": 32}}
    enc, p = timm_encoder(**options)
    with torch.device("meta"):
        meta, _ = timm_encoder(**options)
    assert meta.num_tokens == enc.num_tokens
    meta.load_state_dict(enc.state_dict(), assign=True)
    held = [m for m in meta.modules() if any(b.is_meta for b in m.buffers(recurse=False))]
    assert held and all(callable(getattr(m, "reset_buffers", None)) for m in held)
    for m in held:
        m.to_empty(device="cpu", recurse=False)
        m.reset_buffers()
    assert not any(b.is_meta for b in meta.buffers())
    enc.eval(), meta.eval()
    batch = p.collate([p(gradient()), None])
    torch.testing.assert_close(meta(batch).embeds, enc(batch).embeds)
    assert copy.deepcopy(meta)(batch).embeds.shape == enc(batch).embeds.shape


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_conv_stem_layers_widen_what_a_patch_token_sees(layers):
    """Each 3x3 stem layer lets a patch token see one more pixel beyond its patch's border."""
    cfg = PatchEncoderConfig(image_size=16, patch_size=4, channels=1, dim=16, depth=0, heads=2, stem_layers=layers)
    enc = PatchEncoder(cfg).eval()
    assert sum(isinstance(m, torch.nn.Conv2d) for m in enc.stem) == layers
    x = torch.rand(1, 1, 16, 16)
    first = enc({"pixels": x}).embeds[0, 0]  # the top-left patch: rows and columns 0-3
    for distance in (1, 2, 3):  # a pixel `distance` columns right of the patch's border
        moved = x.clone()
        moved[0, 0, 1, 3 + distance] += 1.0
        changed = not torch.allclose(enc({"pixels": moved}).embeds[0, 0], first)
        assert changed == (distance <= layers), (layers, distance)


def test_conv_stem_channels():
    enc = PatchEncoder(
        PatchEncoderConfig(image_size=8, patch_size=4, channels=1, dim=16, depth=0, heads=2, stem_channels=12)
    )
    assert enc.stem[0].out_channels == 12 and enc.patch_embed.in_channels == 12


@pytest.mark.parametrize("init", ["normal", "fan_in"])
def test_conv_stem_init_sets_the_scale_a_stem_passes_on(init):
    """stem_init = "fan_in" starts each stem convolution at std sqrt(2 / fan_in), so two layers pass on a
    signal of about their input's scale; "normal" (std 0.02) passes on a small fraction of it."""
    torch.manual_seed(0)
    cfg = PatchEncoderConfig(
        image_size=16, patch_size=4, channels=1, dim=32, depth=0, heads=2, stem_layers=2, stem_init=init
    )
    enc = PatchEncoder(cfg)
    convs = [m for m in enc.stem if isinstance(m, torch.nn.Conv2d)]
    x = torch.randn(64, 1, 16, 16)
    with torch.no_grad():
        out_std = float(enc.stem(x).std())
    if init == "fan_in":
        for conv in convs:
            fan_in = conv.in_channels * 9
            assert abs(float(conv.weight.detach().std()) - (2 / fan_in) ** 0.5) < 0.25 * (2 / fan_in) ** 0.5
        assert out_std > 0.3, out_std
    else:
        assert all(abs(float(c.weight.detach().std()) - 0.02) < 0.005 for c in convs)
        assert out_std < 0.01, out_std
    assert all(float(c.bias.detach().abs().max()) == 0.0 for c in convs)


def test_cnn_stem_downsamples_in_stages_and_keeps_the_token_grid():
    """stem = "cnn": stem_layers stages of conv, ReLU, 2x2 max pool; channels double up to dim; the patch
    embedding takes the rest of each patch (patch_size / 2 ** stem_layers), so the token grid is unchanged."""
    cfg = PatchEncoderConfig(image_size=32, patch_size=8, dim=64, depth=1, heads=2, stem="cnn", stem_layers=3)
    enc = PatchEncoder(cfg)
    convs = [m for m in enc.stem if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64]
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in enc.stem) == 3
    assert enc.patch_embed.kernel_size == (1, 1) and enc.patch_embed.in_channels == 64
    assert enc.num_tokens == 16 and enc({"pixels": torch.randn(2, 3, 32, 32)}).embeds.shape == (2, 16, 64)
    # two stages of patch 8: 4x4 maps, read as 2x2 patches; stem_channels sets the first stage
    two = PatchEncoder(PatchEncoderConfig(**{**cfg.model_dump(), "stem_layers": 2, "stem_channels": 12}))
    assert [c.out_channels for c in two.stem if isinstance(c, torch.nn.Conv2d)] == [12, 24]
    assert two.patch_embed.kernel_size == (2, 2) and two.num_tokens == 16
    # every convolution starts at fan-in scale unless the spec says otherwise (std 0.02 would silence ReLUs)
    for conv in convs:
        want = (2 / (conv.in_channels * 9)) ** 0.5
        assert abs(float(conv.weight.detach().std()) - want) < 0.25 * want
    normal = PatchEncoder(PatchEncoderConfig(**{**cfg.model_dump(), "stem_init": "normal"}))
    assert all(
        abs(float(c.weight.detach().std()) - 0.02) < 0.005 for c in normal.stem if isinstance(c, torch.nn.Conv2d)
    )
    assert_every_parameter_gets_a_gradient(enc, {"pixels": torch.randn(2, 3, 32, 32)})


def batch_norms(enc: PatchEncoder) -> list[torch.nn.BatchNorm2d]:
    return [m for m in enc.stem.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_stem_norm_batch_normalises_each_convolution_in_training():
    """stem_norm = "batch" (the "cnn" stem's default): a BatchNorm2d after each bias-free convolution, so in
    training the tokens do not depend on the scale of the pixels; without it they do."""
    cnn = PatchEncoderConfig(image_size=16, patch_size=16, dim=32, depth=0, heads=2, stem="cnn", stem_layers=2)
    torch.manual_seed(0)
    enc = PatchEncoder(cnn)
    convs = [m for m in enc.stem if isinstance(m, torch.nn.Conv2d)]
    assert cnn.resolved_stem_norm == "batch" and len(batch_norms(enc)) == 2
    assert all(c.bias is None for c in convs)
    x = torch.randn(8, 3, 16, 16)
    enc.train()
    torch.testing.assert_close(enc({"pixels": 50 * x}).embeds, enc({"pixels": x}).embeds, atol=1e-4, rtol=1e-4)
    plain = PatchEncoder(PatchEncoderConfig(**{**cnn.model_dump(), "stem_norm": "none"}))
    assert not batch_norms(plain) and all(c.bias is not None for c in plain.stem if isinstance(c, torch.nn.Conv2d))
    plain.train()
    assert not torch.allclose(plain({"pixels": 50 * x}).embeds, plain({"pixels": x}).embeds, atol=1e-2)
    # "conv" keeps no norm unless asked (its recipes were measured without); asked, it gets one per convolution
    conv = PatchEncoderConfig(image_size=8, patch_size=4, channels=1, dim=16, depth=0, heads=2, stem_layers=2)
    assert conv.resolved_stem_norm == "none" and not batch_norms(PatchEncoder(conv))
    assert len(batch_norms(PatchEncoder(PatchEncoderConfig(**{**conv.model_dump(), "stem_norm": "batch"})))) == 2
    with pytest.raises(ValidationError, match="stem = 'patch' has none"):
        PatchEncoderConfig(stem="patch", stem_norm="batch")
    assert_every_parameter_gets_a_gradient(enc, {"pixels": x})


def test_stem_batch_norm_statistics_train_and_evaluate():
    """Training batches move the running statistics; eval mode reads them (so an image's tokens no longer
    depend on the rest of its batch), and they are in the state dict the weights are saved from."""
    torch.manual_seed(0)
    cfg = PatchEncoderConfig(image_size=16, patch_size=16, dim=32, depth=0, heads=2, stem="cnn", stem_layers=2)
    enc = PatchEncoder(cfg)
    x = torch.rand(6, 3, 16, 16) * 4 + 1
    enc.train()
    for _ in range(30):
        enc({"pixels": x})
    assert float(batch_norms(enc)[0].running_mean.abs().sum()) > 0
    enc.eval()
    alone = enc({"pixels": x[:1]}).embeds
    torch.testing.assert_close(enc({"pixels": x}).embeds[:1], alone)  # independent of the batch
    saved = enc.state_dict()
    assert {"stem.1.running_mean", "stem.1.running_var", "stem.1.num_batches_tracked"} <= set(saved)
    fresh = PatchEncoder(cfg)
    fresh.load_state_dict(saved)
    fresh.eval()
    torch.testing.assert_close(fresh({"pixels": x[:1]}).embeds, alone)


def test_patch_encoder_missing_images_never_touch_batch_norm(tmp_path):
    cfg = PatchEncoderConfig(image_size=16, patch_size=16, dim=32, depth=0, heads=2, stem="cnn", stem_layers=2)
    p = ImageProcessor(cfg)
    a = PatchEncoder(cfg, processor=p)
    b = copy.deepcopy(a)
    img = p(write(tmp_path / "a.png", gradient(20, 24)))
    other = p(write(tmp_path / "b.png", gradient(30, 18)))
    a.train(), b.train()
    with_missing = a(p.collate([img, None, other, None]))  # only the real images go through the stem
    alone = b(p.collate([img, other]))
    for bn_a, bn_b in zip(batch_norms(a), batch_norms(b), strict=True):
        assert bn_a.running_mean.abs().sum() > 0
        torch.testing.assert_close(bn_a.running_mean, bn_b.running_mean)
        torch.testing.assert_close(bn_a.running_var, bn_b.running_var)
    torch.testing.assert_close(with_missing.embeds[[0, 2]], alone.embeds)
    assert (with_missing.embeds[[1, 3]] == 0).all() and with_missing.mask.tolist() == [[True], [False], [True], [False]]
    before = [bn.running_mean.clone() for bn in batch_norms(a)]
    out = a(p.collate([None, None]))  # every image missing: zeros, all-False mask, statistics untouched
    assert out.embeds.shape == (2, 1, 32) and not out.mask.any() and (out.embeds == 0).all()
    assert all(torch.equal(bn.running_mean, m) for bn, m in zip(batch_norms(a), before, strict=True))


def test_frozen_patch_encoder_keeps_its_batch_norm_statistics():
    cfg = PatchEncoderConfig(image_size=16, patch_size=16, dim=32, depth=0, heads=2, stem="cnn", stem_layers=2)
    enc = PatchEncoder(cfg)
    enc.requires_grad_(False)  # what train = "frozen" does
    enc.train()
    assert enc.training and not any(bn.training for bn in batch_norms(enc))
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    enc({"pixels": torch.rand(4, 3, 16, 16)})
    assert all(torch.equal(v, before[k]) for k, v in enc.state_dict().items())
    enc.requires_grad_(True)
    enc.train()
    assert all(bn.training for bn in batch_norms(enc))


def test_cnn_stem_patch_size_must_be_divisible_by_the_downsampling():
    with pytest.raises(
        ValidationError, match=r"patch_size \(4\) must be divisible by 8.*patch_size = 8, or stem_layers = 2"
    ):
        PatchEncoderConfig(image_size=32, patch_size=4, stem="cnn", stem_layers=3)
    PatchEncoderConfig(image_size=32, patch_size=4, stem="conv", stem_layers=3)  # conv does not downsample


@pytest.mark.parametrize(
    ("layers", "init", "checksum"),
    [(1, "normal", 1396.521910975), (3, "normal", 1748.752749033), (2, "fan_in", 1582.980159722)],
)
def test_conv_stem_seeded_build_draws_the_weights_it_always_drew(layers, init, checksum):
    """A seeded build of a "conv" stem draws the weights the encoder drew before the "cnn" stem was
    added (checksums from that version): the committed figures of the conv-stem recipes (the main job,
    the digit strings, image + text, llava_digits) were measured from those draws, and a reordered
    construction would silently give every seed other starting weights."""
    cfg = PatchEncoderConfig(
        image_size=8, patch_size=4, channels=1, dim=16, stem="conv", stem_layers=layers, stem_init=init
    )
    torch.manual_seed(0)
    enc = PatchEncoder(cfg)
    assert list(enc._modules)[:2] == ["patch_embed", "stem"]
    weighted = sum((v.double() * (i + 1)).sum() for i, v in enumerate(enc.state_dict().values()))
    assert float(weighted) == pytest.approx(checksum, rel=1e-9)
