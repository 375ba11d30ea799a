"""Export (mmcore.export): torch.export and ONNX programs against eager mode."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import mmcore
from mmcore.errors import InputError
from mmcore.export import _stable_sort, example_batch, export, export_onnx, run_onnx

pytestmark = pytest.mark.filterwarnings("ignore")

ATOL = 1e-5


def text_model() -> mmcore.MultimodalGPT:
    torch.manual_seed(0)
    return mmcore.build(
        {
            "spec_version": 1,
            "name": "export-text",
            "backbone": {"width": 32, "depth": 2, "heads": 4, "context_length": 48},
            "encoders": {"text": {"component": "text.bytes", "max_length": 32}},
            "heads": {"lm": {"component": "lm"}},
        }
    ).eval()


def image_text_model(**image: object) -> mmcore.MultimodalGPT:
    """Image + text with two heads (an LM and a classifier): what a composed model can be; ``image`` overrides
    the image encoder's options."""
    torch.manual_seed(0)
    return mmcore.build(
        {
            "spec_version": 1,
            "name": "export-image-text",
            "backbone": {"width": 32, "depth": 2, "heads": 4, "context_length": 64},
            "encoders": {
                "image": {
                    "component": "vision.patch",
                    "image_size": 8,
                    "patch_size": 4,
                    "dim": 16,
                    "depth": 1,
                    **image,
                },
                "text": {"component": "text.bytes", "max_length": 32},
            },
            "heads": {"lm": {"component": "lm"}, "cls": {"component": "classify", "num_classes": 3}},
        }
    ).eval()


def eager(model, batch) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {h: o.logits for h, o in model(batch, compute_loss=False).outputs.items()}


def records(n: int, image: bool = True) -> list[dict]:
    g = torch.Generator().manual_seed(n)
    out = []
    for i in range(n):
        r = {"text": f"record {i:02d} says hi"}
        if image and i != 1:  # the second record has no image: a masked-out input
            r["image"] = torch.rand(3, 8, 8, generator=g)
        out.append(r)
    return out


def test_stable_sort_decomposition_matches_torch() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 3, (4, 17), generator=g).to(torch.int8)  # many ties
    for descending in (False, True):
        want = torch.sort(x, dim=1, stable=True, descending=descending)
        got = _stable_sort(x, stable=True, dim=1, descending=descending)
        assert torch.equal(got[0], want.values) and torch.equal(got[1], want.indices)


def test_torch_export_text_model_dynamic_batch() -> None:
    model = text_model()
    batch = example_batch(model, 2)
    exported = export(model, batch)
    assert exported.input_names == ["text.ids", "text.mask", "text.prompt_len"]
    assert exported.output_names == ["lm.logits"]
    torch.testing.assert_close(exported.run(batch)["lm"], eager(model, batch)["lm"], atol=ATOL, rtol=0)
    # another batch size, and shorter texts (right-padded to the exported length)
    other = model.preprocess([{"text": "hi"}, {"text": "a bit longer"}, {"text": "x"}], targets=())
    got, want = exported.run(other)["lm"], eager(model, other)["lm"]
    n = want.shape[1]
    mask = other.inputs["text"]["mask"]
    torch.testing.assert_close(got[:, :n][mask], want[mask], atol=ATOL, rtol=0)
    # a text longer than the example's (28 tokens): the length is dynamic up to max_length (32)
    assert exported.dynamic_lengths == {"text.ids": 32, "text.mask": 32}
    longer = model.preprocess([{"text": "y" * 40}, {"text": "z"}], targets=())
    assert longer.inputs["text"]["ids"].shape[1] == 32 > batch.inputs["text"]["ids"].shape[1]
    got, want = exported.run(longer)["lm"], eager(model, longer)["lm"]
    mask = longer.inputs["text"]["mask"]
    torch.testing.assert_close(got[mask], want[mask], atol=ATOL, rtol=0)
    too_long = {"text": {k: torch.cat([v, v], 1) if v.dim() == 2 else v for k, v in longer.inputs["text"].items()}}
    with pytest.raises(InputError, match="text.ids has shape"):
        exported.run(mmcore.Batch(too_long))
    # with dynamic_length=False the example's length is the longest accepted
    fixed = export(model, batch, dynamic_length=False)
    assert fixed.dynamic_lengths == {}
    with pytest.raises(InputError, match="text.ids has shape"):
        fixed.run(longer)


@pytest.mark.parametrize(
    "image",
    [
        {},
        {"stem": "cnn", "stem_layers": 2},
    ],  # the second: batch norm in the stem, which skips absent images in training
    ids=["conv-stem", "cnn-stem-batch-norm"],
)
def test_torch_export_multimodal_model_matches_eager(image) -> None:
    model = image_text_model(**image)
    batch = model.preprocess(records(2), targets=())
    exported = export(model, batch)
    assert exported.input_names == ["image.pixels", "image.present", "text.ids", "text.mask", "text.prompt_len"]
    for b in (batch, model.preprocess(records(3), targets=())):
        got, want = exported.run(b), eager(model, b)
        assert set(got) == {"lm", "cls"}
        for h in got:
            torch.testing.assert_close(got[h], want[h], atol=ATOL, rtol=0)


def test_torch_export_of_an_int8_model_after_an_eager_forward() -> None:
    """The int8 kernel's packed weights exist after an eager call; the export still traces, and
    computes what the eager int8 model (the CPU kernel) computes."""
    from mmcore.quantize import quantize

    q = quantize(copy.deepcopy(text_model()))
    batch = example_batch(q, 2)
    want = eager(q, batch)["lm"]  # packs the kernel weights
    exported = export(q, batch)
    torch.testing.assert_close(exported.run(batch)["lm"], want, atol=ATOL, rtol=0)
    other = q.preprocess([{"text": "y" * 40}, {"text": "short"}, {"text": "z"}], targets=())
    got, want = exported.run(other)["lm"], eager(q, other)["lm"]
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_onnx_export_multimodal_runs_in_onnxruntime(tmp_path) -> None:
    import onnx

    model = image_text_model()
    batch = model.preprocess(records(2), targets=())
    path = tmp_path / "model.onnx"
    exported = export_onnx(model, batch, path)
    onnx.checker.check_model(str(path))
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == exported.input_names
    assert [o.name for o in graph.output] == ["lm.logits", "cls.logits"]
    for b in (batch, model.preprocess(records(3), targets=())):
        got, want = run_onnx(path, exported, b), eager(model, b)
        for h in want:
            torch.testing.assert_close(got[h], want[h], atol=ATOL, rtol=0)


def test_cli_export(tmp_path, capsys) -> None:
    from mmcore.cli import main

    mmcore.save(text_model(), tmp_path / "m")
    assert main(["export", str(tmp_path / "m"), "--out", str(tmp_path / "x")]) == 0
    report = json.loads((tmp_path / "x" / "export.json").read_text())
    assert report["torch_export_max_abs_diff"] <= ATOL
    assert report["inputs"]["text.ids"][0] == 2 and report["dynamic_batch"] is True
    assert report["dynamic_lengths"] == {"text.ids": 32, "text.mask": 32}
    assert report["longer_input_checked"]["text.ids"] == [2, 32]
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["export.json"]
    assert json.loads(capsys.readouterr().out) == report


def test_cli_export_of_an_int8_model_directory(tmp_path) -> None:
    """mmcore quantize, then mmcore export, as docs/deploy.md shows: the program computes what
    the eager int8 model computes (checked by export_dir on three batches, one with longer text)."""
    from mmcore.cli import main

    mmcore.save(text_model(), tmp_path / "m")
    assert main(["quantize", str(tmp_path / "m"), "--out", str(tmp_path / "q")]) == 0
    assert main(["export", str(tmp_path / "q"), "--out", str(tmp_path / "x")]) == 0
    report = json.loads((tmp_path / "x" / "export.json").read_text())
    assert report["torch_export_max_abs_diff"] <= ATOL
    assert report["longer_input_checked"]["text.ids"][1] > report["inputs"]["text.ids"][1]


def test_cli_export_help_says_what_is_written() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "mmcore", "export", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "model.pt2" not in out and "export.json" in out and "model.onnx" in out
    assert "--static-length" in out and "max_length" in out
