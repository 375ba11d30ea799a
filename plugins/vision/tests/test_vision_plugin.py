"""The plugin hook, its entry point, the torch-free import, and whole models built from specs."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from helpers_vision import write
from mmcore_vision import plugin
from mmcore_vision.config import PatchEncoderConfig, TimmEncoderConfig
from mmcore_vision.patch import PatchEncoder
from mmcore_vision.processor import PROCESSOR_FILE, ImageProcessor
from mmcore_vision.timm_encoder import TimmEncoder

import mmcore
from mmcore.registry import Component

ROOT = Path(__file__).resolve().parents[1]


def test_plugin_components():
    comps = plugin.mmcore_register_components()
    assert [c.key for c in comps] == ["encoder:vision.patch", "encoder:vision.timm", "encoder:vision.palette"]
    patch, timm_, _ = comps  # vision.palette: tests/test_image_tokens.py
    assert all(isinstance(c, Component) and c.modality == "image" and c.description for c in comps)
    assert patch.config is PatchEncoderConfig and timm_.config is TimmEncoderConfig
    for c in comps:
        for name, field in c.config.model_fields.items():
            assert field.description, f"{c.key}: option {name!r} has no description"
    cfg = patch.config.model_validate({})
    processor = patch.load_processor()(cfg)
    assert isinstance(processor, ImageProcessor) and processor.image_size == 32
    enc = patch.build({}, width=64, processor=processor)
    assert isinstance(enc, PatchEncoder) and enc.out_dim == 128 and enc.num_tokens == 64
    tcfg = timm_.config.model_validate({"model": "resnet18", "image_size": 32})
    tproc = timm_.load_processor()(tcfg)
    assert isinstance(timm_.build(tcfg, width=64, processor=tproc), TimmEncoder)


def test_plugin_manager_registers_it():
    from mmcore.plugins import PluginManager

    pm = PluginManager(autoload=False)
    pm.register(plugin, name="vision")
    assert pm.registry.get("encoder", "vision.timm").plugin == "vision"
    assert [c.name for c in pm.registry.list("encoder:vision.*")] == ["vision.palette", "vision.patch", "vision.timm"]


def test_entry_point_declared():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "mmcore-vision"
    assert meta["project"]["entry-points"]["mmcore"] == {"vision": "mmcore_vision.plugin"}
    deps = " ".join(meta["project"]["dependencies"])
    for dep in ("mmcore>=0.1,<0.2", "Pillow", "timm", "einops", "numpy"):
        assert dep in deps


def test_plugin_import_is_light():
    code = (
        "import sys, mmcore_vision.plugin as p; comps = p.mmcore_register_components(); "
        "[c.config.model_validate({'model': 'resnet18'} if c.name == 'vision.timm' else {}) for c in comps]; "
        "heavy = ('torch', 'timm', 'PIL', 'torchvision', 'numpy', 'einops'); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy); "
        "print('HEAVY ' + ' '.join(bad[:5]) if bad else 'OK')"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "OK"


def spec(image: dict) -> dict:
    return {
        "spec_version": 1,
        "name": "captioner",
        "backbone": {"width": 32, "depth": 1, "heads": 2, "context_length": 128},
        "encoders": {"image": image, "text": {"component": "text.bytes", "max_length": 32}},
        "heads": {"lm": {"component": "lm"}},
    }


def test_build_end_to_end(tmp_path):
    cat = write(tmp_path / "cat.png")
    image = {"component": "vision.patch", "image_size": 16, "patch_size": 4, "dim": 24, "heads": 2}
    model = mmcore.build(spec(image))
    assert model.encoders["image"].out_dim == 24 and "image" in model.projectors  # 24 != 32: projected
    assert isinstance(model.processors["image"], ImageProcessor)
    batch = model.preprocess([{"image": str(cat), "text": "a cat"}, {"text": "no image"}])
    assert batch.inputs["image"]["present"].tolist() == [True, False]
    out = model(batch)
    tokens = model.encoders["image"](batch.inputs["image"])
    assert tokens.mask.shape == (2, 16) and tokens.mask[0].all() and not tokens.mask[1].any()
    assert (out.sequence.index["image"][1] == -1).all()  # no image token of record 1 reaches the backbone
    assert out.sequence.mask[0].sum() > out.sequence.mask[1].sum()
    assert out.loss is not None and torch.isfinite(out.loss)
    out.loss.backward()
    enc = model.encoders["image"]
    assert all(p.grad is not None and p.grad.any() for p in enc.parameters())


def test_save_and_load_a_timm_model(tmp_path):
    """mmcore.save / mmcore.load: meta build, weights assigned, non-persistent buffers reset, processor JSON."""
    image = {"component": "vision.timm", "model": "test_vit_relpos", "model_args": {"img_size": 32}}
    model = mmcore.build(spec(image))
    model.eval()
    records = [{"image": str(write(tmp_path / "cat.png")), "text": "a cat"}, {"text": "no image"}]
    batch = model.preprocess(records)
    mmcore.save(model, tmp_path / "model")
    assert (tmp_path / "model" / "processors" / "image" / PROCESSOR_FILE).is_file()
    again = mmcore.load(tmp_path / "model")
    again.eval()
    assert again.processors["image"].options == model.processors["image"].options
    with torch.no_grad():
        torch.testing.assert_close(again(batch).hidden, model(batch).hidden)


@pytest.mark.parametrize("bad", [{"image_size": 30}, {"weights": "w.pth"}])
def test_spec_validation_reports_vision_options(bad):
    image = {"component": "vision.patch", **bad} if "image_size" in bad else {"component": "vision.timm", **bad}
    if "weights" in bad:
        image["model"] = "resnet18"
    with pytest.raises(mmcore.SpecError) as err:
        mmcore.parse_spec(spec(image))
    msg = str(err.value)
    assert "encoders.image" in msg
    assert ("divisible by patch_size" in msg) if "image_size" in bad else ("only .safetensors" in msg)
