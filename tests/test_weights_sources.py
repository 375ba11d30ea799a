"""Weights per component from their own files (weights_from), compatibility checks, the load report."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

import mmcore
from mmcore.errors import SpecError

VISION = {"image_size": 16, "patch_size": 8, "dim": 24, "depth": 1, "heads": 2}
GPT2_SIZES = {"vocab_size": 264, "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 4}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A Hugging Face GPT-2 directory and a CLIP-like file holding a vision encoder under 'vision_model.'."""
    from transformers import GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("sources")
    torch.manual_seed(1)
    hf = GPT2LMHeadModel(GPT2Config(**GPT2_SIZES, bos_token_id=None, eos_token_id=None)).eval()
    hf.save_pretrained(root / "gpt2")
    enc = mmcore.build_component("encoder", "vision.patch", VISION, width=32)
    state = {f"vision_model.{k}": v.detach().clone().contiguous() for k, v in enc.state_dict().items()}
    state["text_model.embed.weight"] = torch.randn(5, 3)  # another model's part: to be ignored
    save_file(state, str(root / "clip.safetensors"))
    return {"root": root, "hf": hf, "vision": enc.eval()}


def spec_text(backbone_extra: str = "", image_extra: str = "", text_extra: str = "", context: int = 64) -> str:
    return f"""
spec_version = 1
name = "composed"

[backbone]
width = 32
depth = 2
heads = 4
context_length = {context}
mlp = "gelu_tanh"
weights_from = "gpt2/model.safetensors"
{backbone_extra}

[encoders.image]
component = "vision.patch"
image_size = 16
patch_size = 8
dim = 24
depth = 1
heads = 2
weights_from = {{path = "clip.safetensors", prefix = {{"vision_model." = ""}}}}
{image_extra}

[encoders.text]
component = "text.bytes"
max_length = 32
weights_from = {{path = "gpt2/model.safetensors", prefix = {{"transformer.wte." = "token_embedding."}}}}
{text_extra}

[heads.lm]
component = "lm"
"""


def write_spec(sources, text: str, name: str = "spec.toml"):
    path = sources["root"] / name
    path.write_text(text)
    return path


def test_three_sources_compose_and_match_their_origins(sources, manager):
    model = mmcore.build(write_spec(sources, spec_text())).eval()
    report = model.load_report
    root = sources["root"].resolve()
    # what came from where
    assert report.sources == {
        "encoders.image": str(root / "clip.safetensors"),
        "encoders.text": str(root / "gpt2" / "model.safetensors"),
        "backbone": str(root / "gpt2" / "model.safetensors"),
    }
    bb = report["backbone"]
    assert bb.format == "gpt2" and bb.fresh == ()
    assert set(bb.loaded) == set(model.backbone.state_dict())
    assert [k for k, _ in bb.ignored] == ["transformer.wte.weight"]
    img = report["encoders.image"]
    assert img.format == "mmcore" and set(img.loaded) == set(model.encoders["image"].state_dict())
    assert img.ignored == (("text_model.embed.weight", "outside the prefix mapping"),)
    assert report["encoders.text"].loaded == ("token_embedding.weight",)
    proj = report["encoders.image.projector"]
    assert proj.source is None and set(proj.fresh) == {"proj.weight", "proj.bias"}
    table = str(report)
    assert "clip.safetensors (mmcore)" in table and "model.safetensors (gpt2)" in table and "(fresh)" in table

    # the vision encoder computes what the source encoder computes
    pixels = torch.rand(2, 3, 16, 16)
    inputs = {"pixels": pixels, "present": torch.ones(2, dtype=torch.bool)}
    with torch.no_grad():
        torch.testing.assert_close(model.encoders["image"](inputs).embeds, sources["vision"](inputs).embeds)
    # on text alone, the composed model's logits are GPT-2's
    batch = model.preprocess([{"text": "hello there"}, {"text": "a longer line of text"}])
    ids, mask = batch.inputs["text"]["ids"], batch.inputs["text"]["mask"]
    with torch.no_grad():
        ours = model(batch, compute_loss=False).outputs["lm"].logits
        theirs = sources["hf"](input_ids=ids, attention_mask=mask.long()).logits
    torch.testing.assert_close(ours[mask], theirs[mask], rtol=1e-4, atol=1e-5)


def test_every_problem_is_reported_before_any_weights_are_read(sources, manager, monkeypatch):
    import mmcore.weights as w

    def no_reading(*a, **k):
        raise AssertionError("weights were read although the spec has problems")

    monkeypatch.setattr(w, "load_planned", no_reading)
    bad = spec_text(
        backbone_extra='train = "lora"\nlora = {targets = ["c_attn"]}',
        image_extra="",
        text_extra="",
        context=16,  # 4 image tokens + 2 boundaries + 32 text tokens do not fit; nor do GPT-2's 64 positions
    ).replace('prefix = {"vision_model." = ""}', 'prefix = {"vision." = ""}')
    text = bad + '\n[heads.cls]\ncomponent = "classify"\nnum_classes = 2\nweights_from = "missing.safetensors"\n'
    with pytest.raises(SpecError) as info:
        mmcore.build(write_spec(sources, text, "bad.toml"))
    issues = {(i.path, i.message.split(":")[0]) for i in info.value.issues}
    paths = {i.path for i in info.value.issues}
    assert "backbone.context_length" in paths
    assert "backbone.lora.targets" in paths
    assert "encoders.image.weights_from" in paths
    assert "heads.cls.weights_from" in paths
    assert "backbone.weights_from" in paths  # wpe has 64 rows in the file, 16 in the model
    msg = str(info.value)
    assert "prefix 'vision.' matches no key of clip.safetensors" in msg
    assert "missing.safetensors: no such file" in msg
    assert "wpe.weight: component [16, 32], file [64, 32]" in msg
    assert "['c_attn'] match no linear layer" in msg and "blocks.*.attn.qkv" in msg
    assert "38 positions" in msg and "context_length = 16" in msg
    assert len(issues) >= 5


def test_keys_that_match_nothing_and_missing_keys_are_listed(sources, manager, tmp_path):
    enc = sources["vision"]
    state = {k: v.clone().contiguous() for k, v in enc.state_dict().items() if k != "norm.bias"}
    state["extra.weight"] = torch.zeros(2)
    save_file(state, str(tmp_path / "v.safetensors"))
    spec = {
        "spec_version": 1,
        "backbone": {"width": 32, "depth": 1, "heads": 4, "context_length": 64},
        "encoders": {
            "image": {"component": "vision.patch", **VISION, "weights_from": str(tmp_path / "v.safetensors")},
            "text": {"component": "text.bytes", "max_length": 16},
        },
    }
    with pytest.raises(SpecError) as info:
        mmcore.build(spec)
    msg = str(info.value)
    assert "1 key(s) of v.safetensors match nothing in the component: extra.weight" in msg
    assert f"v.safetensors lacks 1 of the component's {len(enc.state_dict())} keys: norm.bias" in msg
    # ignoring the extra key and allowing the missing one: loaded, with norm.bias fresh
    spec["encoders"]["image"]["weights_from"] = {
        "path": str(tmp_path / "v.safetensors"),
        "ignore": ["extra.*"],
        "allow_missing": True,
    }
    model = mmcore.build(spec)
    part = model.load_report["encoders.image"]
    assert part.fresh == ("norm.bias",) and part.ignored == (("extra.weight", "ignore = 'extra.*'"),)
    assert torch.equal(model.encoders["image"].pos_embed, enc.pos_embed)


def test_gpt2_config_next_to_the_file_is_compared_with_the_backbone(sources, manager):
    text = spec_text().replace('mlp = "gelu_tanh"', 'mlp = "gelu"\nnorm_eps = 1e-6')
    with pytest.raises(SpecError) as info:
        mmcore.build(write_spec(sources, text, "mlp.toml"))
    msg = str(info.value)
    assert "backbone.mlp is 'gelu' but" in msg and "describes 'gelu_tanh'" in msg
    assert "backbone.norm_eps is 1e-06" in msg


def test_format_gpt2_only_for_the_backbone_and_pickles_are_refused(sources, manager):
    text = spec_text().replace(
        'prefix = {"transformer.wte." = "token_embedding."}',
        'prefix = {"transformer.wte." = "token_embedding."}, format = "gpt2"',
    )
    text = text.replace(
        "[heads.lm]", '[heads.cls]\ncomponent = "classify"\nnum_classes = 2\nweights_from = "head.bin"\n\n[heads.lm]'
    )
    with pytest.raises(SpecError) as info:
        mmcore.build(write_spec(sources, text, "fmt.toml"))
    msg = str(info.value)
    assert "[encoders.text.weights_from] format = 'gpt2' describes a backbone's file" in msg
    assert "only .safetensors files are read" in msg


def test_spec_shapes_of_weights_from_are_validated_with_locations(manager):
    base = {
        "spec_version": 1,
        "backbone": {"width": 32, "depth": 1, "heads": 4, "weights_from": {"path": "x.safetensors", "prefx": {}}},
        "encoders": {"text": {"component": "text.bytes", "weights_from": 3}},
    }
    with pytest.raises(SpecError) as info:
        mmcore.parse_spec(base)
    paths = {i.path for i in info.value.issues}
    assert "backbone.weights_from.prefx" in paths
    assert any(p.startswith("encoders.text.weights_from") for p in paths)


def test_saved_model_loads_without_the_source_files(sources, manager, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(sources["root"], root)
    model = mmcore.build(write_spec({"root": root}, spec_text()))
    d = mmcore.save(model, tmp_path / "model")
    saved = (d / "spec.toml").read_text()
    assert str((root / "gpt2" / "model.safetensors").resolve()) in saved  # the provenance of the weights
    shutil.rmtree(root)
    again = mmcore.load(d)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert json.loads((d / "manifest.json").read_text())["format"] == "mmcore-model/1"
    # its report says that everything came from the model directory
    assert set(again.load_report.sources.values()) == {str(d / "model.safetensors")}
    assert all(p.fresh == () for p in again.load_report.parts)


def test_timm_encoder_frozen_gpt2_backbone_under_lora_and_fresh_projector_train(sources, manager, tmp_path):
    """A timm vision encoder's file, a Hugging Face GPT-2 file and a fresh projector train as one model."""
    import timm
    from PIL import Image

    from mmcore.trainer import Trainer

    root = sources["root"]
    torch.manual_seed(2)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, depth=1).eval()
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(root / "vit.safetensors"))
    text = spec_text(backbone_extra='train = "lora"\nlora = {rank = 4, targets = ["attn.qkv", "attn.proj"]}')
    text = text.replace(
        """component = "vision.patch"
image_size = 16
patch_size = 8
dim = 24
depth = 1
heads = 2
weights_from = {path = "clip.safetensors", prefix = {"vision_model." = ""}}""",
        """component = "vision.timm"
model = "vit_tiny_patch16_224"
model_args = {img_size = 32, depth = 1}
train = "frozen"
weights_from = {path = "vit.safetensors", prefix = {"" = "model."}, ignore = ["head.*"]}""",
    )
    model = mmcore.build(write_spec(sources, text, "timm.toml"))
    report = model.load_report["encoders.image"]
    assert report.fresh == () and {k for k, _ in report.ignored} == {"head.weight", "head.bias"}
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.encoders["image"].model.forward_features(pixels), vit.forward_features(pixels))

    # the summary says exactly which parameters train
    rows = {r.part: r for r in model.summary().rows}
    assert rows["encoders.image"].train == "frozen" and rows["encoders.image"].trainable_names == ()
    assert set(rows["backbone"].trainable_names) == {
        f"blocks.{b}.attn.{m}.lora_{x}" for b in (0, 1) for m in ("qkv", "proj") for x in "AB"
    }
    assert set(rows["projectors.image"].trainable_names) == {"proj.weight", "proj.bias"}
    assert rows["encoders.text"].trainable_names == ("token_embedding.weight",)
    table = str(model.summary())
    assert "encoders.image: nothing" in table and "backbone: blocks.*.attn.qkv.lora_A (2)" in table

    colours = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}
    lines = []
    for i, (name, rgb) in enumerate(colours.items()):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (32, 32), rgb).save(path)
        lines.append(json.dumps({"image": str(path), "text": f"a {name} square"}))
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("\n".join(lines * 2) + "\n")
    batch = model.preprocess([json.loads(x) for x in lines])
    model.eval()
    with torch.no_grad():
        before = float(model(batch).loss)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("encoders.image.")}
    base = {k: v.clone() for k, v in model.backbone.state_dict().items() if "lora_" not in k}
    projector = model.projectors["image"].proj.weight.clone()
    trainer = Trainer(
        model,
        {"caption": {"objective": "lm", "train": str(manifest)}},
        {"steps": 12, "batch_size": 4, "lr": 3e-3, "progress": False},
    )
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == {
        id(p) for p in model.parameters() if p.requires_grad
    }
    trainer.fit()
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    assert all(torch.equal(model.backbone.state_dict()[k], v) for k, v in base.items())
    assert not torch.equal(model.projectors["image"].proj.weight, projector)
    model.eval()
    with torch.no_grad():
        assert float(model(batch).loss) < before


def test_pairing_special_tokens_and_widths_are_checked_together(manager):
    from types import SimpleNamespace

    spec = {
        "spec_version": 1,
        "backbone": {"width": 32, "depth": 1, "heads": 4, "context_length": 64},
        "encoders": {
            "image": {"component": "vision.patch", **VISION},
            "text": {"component": "text.bytes", "max_length": 16},
        },
        "heads": {"lm": {"component": "lm"}},
        "tasks": {"fill": {"objective": "mlm", "train": "corpus.txt"}},
    }
    model = mmcore.build(spec)
    assert mmcore.check_compatibility(model) == []
    # break the parts as a plugin could, then check again: every problem is listed
    model.fusion.special_tokens_needed = ("<image>",)
    model.processors["text"] = SimpleNamespace(modality="audio", special_tokens={"<pad>": 0}, vocab_size=300)
    model.projectors["image"].in_dim = 99
    issues = {(i.path, i.message) for i in mmcore.check_compatibility(model)}
    text = "\n".join(f"[{p}] {m}" for p, m in sorted(issues))
    assert "[fusion] needs the special token <image> but the processor of encoders.text has none" in text
    assert "[tasks.fill] needs the special token <mask> but the processor of encoders.text has none" in text
    assert "[encoders.text] the encoder and its processor read different modalities" in text and "'audio'" in text
    assert "[encoders.text] the processor produces token ids up to 299 but the encoder embeds only 264 ids" in text
    assert "[encoders.image.projector] the projector reads width 99, the encoder produces 24" in text


def test_spec_validate_build_agrees_with_build_on_lora_backbones(sources):
    """LoRA on the backbone, with and without weights_from: the CLI validator accepts what build
    accepts (it once matched the targets and the files' keys against the adapted layers' names)."""
    from test_cli import mmcore_cli

    paths = []
    for i, (targets, weights) in enumerate(
        [('["qkv", "proj"]', True), ('["qkv", "proj"]', False), ('["attn.qkv"]', True), ('["attn.qkv"]', False)]
    ):
        text = spec_text(backbone_extra=f'train = "lora"\nlora = {{rank = 2, targets = {targets}}}')
        if not weights:
            text = text.replace('weights_from = "gpt2/model.safetensors"\n', "")
        paths.append(write_spec(sources, text, f"lora_{i}.toml"))
        model = mmcore.build(paths[-1])
        assert any(isinstance(m, mmcore.LoRALinear) for m in model.backbone.modules())
        assert mmcore.check_compatibility(model) == []  # a built (adapted) model checks clean as well
    res = mmcore_cli("spec", "validate", "--build", *map(str, paths))
    assert res.returncode == 0 and res.stdout.count(": ok (") == 4, res.stderr
    # a target that matches nothing is still reported by both
    bad = write_spec(sources, paths[0].read_text().replace('["qkv", "proj"]', '["c_attn"]'), "lora_bad.toml")
    with pytest.raises(SpecError, match=r"\['c_attn'\] match no linear layer"):
        mmcore.build(bad)
    res = mmcore_cli("spec", "validate", "--build", str(bad))
    assert res.returncode == 1 and "['c_attn'] match no linear layer" in res.stderr, res.stderr


def test_every_build_in_the_tests_is_checked_against_the_validator():
    """The conftest hook runs validate_build next to every build of the test run."""
    from conftest import VALIDATED_SPECS

    before = len(VALIDATED_SPECS)
    mmcore.build(
        {
            "spec_version": 1,
            "backbone": {"width": 16, "depth": 1, "heads": 2, "context_length": 32, "train": "lora"},
            "encoders": {"text": {"component": "text.bytes", "max_length": 16}},
            "heads": {"lm": {"component": "lm"}},
        }
    )
    assert VALIDATED_SPECS[before:] == [(VALIDATED_SPECS[-1][0], True)]
