"""Real files through Processor -> Encoder -> fusion -> backbone, for every encoder and fusion."""

from __future__ import annotations

import math
import struct
import wave
from pathlib import Path

import pytest
import torch
from conftest import EXAMPLES, ROOT

import mmcore
from mmcore.cli import read_catalog

FIRST_PARTY = {"mmcore"} | {e["distribution"] for e in read_catalog(ROOT / "registry.toml").values()}


def write_png(path: Path, seed: int = 0, size: int = 40) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
    Image.fromarray(arr).save(path)
    return path


def write_wav(path: Path, freq: float = 440.0, seconds: float = 0.5, rate: int = 16000) -> Path:
    n = int(seconds * rate)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(
            b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * freq * i / rate))) for i in range(n))
        )
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    corpus = d / "corpus.txt"
    corpus.write_text("hello multimodal world\n" * 50 + (ROOT / "README.md").read_text())
    from mmcore_text.bpe import train_bpe

    tok = train_bpe([str(corpus)], 300, str(d / "tok"))
    return {
        "png": write_png(d / "a.png"),
        "png2": write_png(d / "b.png", 1),
        "wav": write_wav(d / "a.wav"),
        "wav2": write_wav(d / "b.wav", 880.0, 0.3),
        "tokenizer": Path(tok),
    }


# Minimal options and a raw value for each first-party encoder (a new one must be added here).
def encoder_case(name: str, files: dict) -> tuple[dict, list]:
    cases = {
        "text.bytes": ({"max_length": 32}, ["some text", "more"]),
        "text.bpe": ({"tokenizer": str(files["tokenizer"]), "max_length": 32}, ["hello world", "multimodal"]),
        "vision.patch": ({"image_size": 16, "patch_size": 4, "dim": 24, "depth": 1}, [files["png"], files["png2"]]),
        "vision.timm": (
            {"model": "resnet18", "image_size": 32, "model_args": {"zero_init_last": False}},
            [files["png"], files["png2"]],
        ),
        "audio.whisper": (
            {"max_seconds": 1.0, "n_mels": 16, "dim": 24, "depth": 1, "max_frames": 100},
            [files["wav"], files["wav2"]],
        ),
        "vision.palette": ({"image_size": 8, "levels": 4}, [files["png"], files["png2"]]),
        "features": ({"features": 3}, [[0.5, -1.0, 2.0], [1.0, 0.0, -0.25]]),
    }
    return cases[name]


def encoder_names():
    from mmcore import plugins

    reg = plugins.PluginManager().registry
    return [c.name for c in reg.list("encoder:*") if (c.distribution or "").split(" ")[0] in FIRST_PARTY]


@pytest.mark.parametrize("name", encoder_names())
def test_every_encoder_with_real_files_reaches_the_backbone(name, files, manager):
    opts, values = encoder_case(name, files)
    comp = manager.registry.get("encoder", name)
    inp = "text" if comp.modality == "text" else comp.modality
    encoders = {inp: {"component": name, **opts}}
    if inp != "text":
        encoders["text"] = {"component": "text.bytes", "max_length": 16}
    model = mmcore.build(
        {
            "spec_version": 1,
            "backbone": {"width": 32, "depth": 2, "heads": 4, "context_length": 160},
            "encoders": encoders,
            "heads": {"lm": {"component": "lm"}},
        }
    )
    records = [{inp: str(v) if isinstance(v, Path) else v} for v in values]  # files, or inline values
    if inp != "text":
        records = [{**r, "text": "caption"} for r in records] + [{"text": "no media"}]
    batch = model.preprocess(records)
    tokens = model.encode(batch)
    t = tokens[inp]
    assert t.embeds.shape[0] == len(records) and t.embeds.shape[-1] == 32 and t.mask.dtype == torch.bool
    assert t.mask[: len(values)].any(dim=1).all()
    if inp != "text":
        assert not t.mask[-1].any()  # the record without this input is masked out
    model.train()
    out = model(batch)
    assert out.hidden.shape[0] == len(records) and torch.isfinite(out.loss)
    out.loss.backward()
    stale = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert stale == []


def build_example(fusion: str):
    import tomllib

    data = tomllib.loads((EXAMPLES / "image_audio_text.toml").read_text())
    data["fusion"] = {"component": fusion}
    return mmcore.build(data)


@pytest.mark.parametrize("fusion", ["early", "cross_attention", "resampler"])
def test_image_audio_text_example_trains_with_each_fusion(fusion, files, manager):
    model = build_example(fusion)
    if fusion == "cross_attention":  # zero-initialised gates pass no gradient inward at step 0
        for layer in model.backbone.inserts.values():
            for n, p in layer.named_parameters():
                if "gate" in n:
                    p.data.fill_(0.5)
    records = [
        {"image": str(files["png"]), "audio": str(files["wav"]), "text": "a picture and a sound", "label": 1},
        {"image": str(files["png2"]), "text": "only a picture", "label": 0},
        {"audio": str(files["wav2"]), "text": "only a sound", "label": 0},
    ]
    batch = model.preprocess(records)
    model.train()
    out = model(batch)
    assert set(out.losses) == {"lm", "match"} and torch.isfinite(out.loss)
    out.loss.backward()
    stale = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert stale == []


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_every_example_builds(path, manager):
    # weights=False: a weights_from file a recipe makes (examples/llava_digits.toml's folder) is not
    # in a fresh checkout; tests/test_llava_recipe.py loads that spec's weights
    model = mmcore.build(path, weights=False)
    assert model.summary().params > 0
