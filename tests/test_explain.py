"""Explanations (mmcore.explain): occlusion, gradient x input and attention per input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import mmcore
from mmcore.explain import explain

pytestmark = pytest.mark.filterwarnings("ignore")

IMAGE = {"component": "vision.patch", "image_size": 8, "patch_size": 2, "channels": 1, "mean": [0.5], "std": [0.5]}
IMAGE |= {"dim": 16, "depth": 1}
AUDIO = {"component": "audio.whisper", "sample_rate": 8000, "max_seconds": 0.2, "n_fft": 200, "hop_length": 80}
AUDIO |= {"n_mels": 16, "dim": 16, "depth": 1, "max_frames": 24}


def av_model(fusion: str = "early") -> mmcore.MultimodalGPT:
    torch.manual_seed(0)
    return mmcore.build(
        {
            "spec_version": 1,
            "name": "explain-av",
            "backbone": {"width": 32, "depth": 2, "heads": 4, "context_length": 64},
            "encoders": {"image": IMAGE, "audio": AUDIO, "text": {"component": "text.bytes", "max_length": 16}},
            "fusion": {"component": fusion},
            "heads": {
                "lm": {"component": "lm"},
                "match": {"component": "classify", "num_classes": 2, "pooling": "last"},
            },
        }
    ).eval()


def record() -> dict:
    g = torch.Generator().manual_seed(3)
    t = np.arange(1600) / 8000
    wave = (0.4 * np.sin(2 * math.pi * 697 * t) + 0.4 * np.sin(2 * math.pi * 1209 * t)).astype("float32")
    return {"image": torch.rand(1, 8, 8, generator=g), "audio": {"array": wave, "sample_rate": 8000}, "text": "same?"}


def finite(x) -> bool:
    if isinstance(x, dict):
        return all(finite(v) for v in x.values())
    if isinstance(x, list):
        return all(finite(v) for v in x)
    if isinstance(x, float):
        return math.isfinite(x)
    return True


def test_classifier_explanation_has_every_input(tmp_path) -> None:
    model = av_model()
    report = explain(model, record(), head="match", layers=[0, -1])
    s = report.summary()
    assert s["kind"] == "classification" and s["target"]["index"] in (0, 1)
    assert set(s["modalities"]) == {"image", "audio", "text"}
    assert finite(s)
    for info in s["modalities"].values():
        assert info["occlusion"]["how"] == "removed"
        # delta is the drop of the target's log-probability when the input is removed
        assert info["occlusion"]["delta"] == pytest.approx(s["logprob"] - info["occlusion"]["logprob"])
        assert info["tokens"] > 0
    shares = [info["grad_x_input_share"] for info in s["modalities"].values()]
    assert sum(shares) == pytest.approx(1.0)
    assert s["modalities"]["image"]["tokens"] == 16  # (8 / 2)^2 patches
    assert set(s["attention"]) == {"layer 0", "layer -1"}
    att = s["attention"]["layer -1"]
    assert np.array(att["image"]["grid"]).shape == (4, 4)
    assert att["text"]["tokens"][0] == "<bos>" and "s" in att["text"]["tokens"]
    assert len(att["audio"]["weights"]) == s["modalities"]["audio"]["tokens"]
    # a classifier reads one position ("last" pooling): its attention sums to one over the sequence
    assert sum(e["total"] for e in att.values()) == pytest.approx(1.0, abs=1e-4)
    files = report.save(tmp_path / "why")
    assert json.loads((tmp_path / "why" / "explain.json").read_text()) == json.loads(json.dumps(s))
    png = (tmp_path / "why" / "explain.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000 and files["png"].endswith("explain.png")


def test_an_ignored_input_gets_zero_occlusion_and_zero_gradient() -> None:
    # Cross-attention fusion at initialisation: the gates are zero, so the model computes what the
    # text-only model computes and ignores the image and the audio entirely.
    model = av_model("cross_attention")
    s = explain(model, record(), head="match").summary()
    for m in ("image", "audio"):
        assert abs(s["modalities"][m]["occlusion"]["delta"]) < 1e-5, s["modalities"][m]
        assert abs(s["modalities"][m]["grad_x_input"]) < 1e-7
        assert s["attention"]["layer -1"][m] is None  # memory, not in the self-attended sequence
    assert s["modalities"]["text"]["occlusion"]["how"] == "emptied"  # the text was the only other input
    assert abs(s["modalities"]["text"]["occlusion"]["delta"]) > 1e-4
    assert s["modalities"]["text"]["grad_x_input_share"] == pytest.approx(1.0)


def test_lm_explanation_scores_the_target_text() -> None:
    model = av_model()
    rec = record() | {"text": "seven"}
    s = explain(model, rec, head="lm", target=" eight").summary()
    assert s["kind"] == "lm" and s["target"] == {"text": " eight", "prompt": "seven"}
    # the log-probability of the target's tokens given the image, audio and prompt
    batch = model.preprocess([rec | {"text": {"prompt": "seven", "target": " eight"}}], targets=())
    with torch.no_grad():
        out = model(batch, heads=["lm"], compute_loss=False).outputs["lm"]
    ids = batch.inputs["text"]["ids"][0]
    start = int(batch.inputs["text"]["prompt_len"][0])
    logp = out.logits[0].log_softmax(-1)
    want = sum(float(logp[i - 1, ids[i]]) for i in range(start, len(ids)))
    assert s["logprob"] == pytest.approx(want, abs=1e-4)
    assert s["modalities"]["text"]["occlusion"]["how"] == "prompt emptied"
    assert finite(s)
    # without a target, the greedy continuation is explained
    g = explain(model, rec, head="lm").summary()
    assert g["target"]["prompt"] == "seven" and isinstance(g["target"]["text"], str)


def test_cli_explain_reads_a_manifest_line(tmp_path, capsys) -> None:
    from PIL import Image

    from mmcore.cli import main

    model = av_model()
    mmcore.save(model, tmp_path / "m")
    Image.fromarray((np.random.default_rng(0).random((8, 8)) * 255).astype("uint8")).save(tmp_path / "a.png")
    manifest = tmp_path / "data.jsonl"
    manifest.write_text('{"text": "first"}\n{"image": "a.png", "text": "same?", "label": 1}\n')
    code = main(["explain", str(tmp_path / "m"), f"{manifest}:2", "--head", "match", "--out", str(tmp_path / "o")])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["modalities"]) == {"image", "text"}
    assert (tmp_path / "o" / "explain.png").is_file() and (tmp_path / "o" / "explain.json").is_file()


@pytest.mark.parametrize("fusion", ["early", "cross_attention"])
def test_figure_shows_both_methods_on_their_own_scales_and_no_empty_panel(tmp_path, monkeypatch, fusion) -> None:
    """explain.png: gradient-x-input bars stay visible beside occlusion drops 1000 times larger
    (each method on its own axis), and every panel draws something. Checked on the figure's axes
    and artists, captured as the report is saved."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    report = explain(av_model(fusion), record(), head="match", layers=[-1])
    names = list(report.modalities)
    for i, m in enumerate(names):  # the scales the issue saw: large drops, tiny gradient terms
        report.modalities[m]["occlusion"] = {**(report.modalities[m]["occlusion"] or {}), "delta": 40.0 - 10 * i}
        report.modalities[m]["grad_x_input"] = [0.02, -0.01, 0.005][i]
    figures = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (figures.append(fig), save(fig, *a, **k))[1])
    report.save(tmp_path)
    (fig,) = figures

    for ax in fig.axes:  # no empty panel: each has bars, an image or a line, and is shown
        drawn = [p for p in ax.patches if isinstance(p, Rectangle)] + ax.images + ax.lines
        assert ax.axison or ax.images, f"panel {ax.get_title()!r} is switched off"
        assert drawn, f"panel {ax.get_title()!r} draws nothing"

    def bars_of(values):
        for ax in fig.axes:
            heights = [p.get_height() for p in ax.patches if isinstance(p, Rectangle)]
            for j in range(len(heights) - len(values) + 1):
                if np.allclose(heights[j : j + len(values)], values):
                    return ax, values
        raise AssertionError(f"no axis has bars {values}")

    occ = [report.modalities[m]["occlusion"]["delta"] for m in names]
    gxi = [report.modalities[m]["grad_x_input"] for m in names]
    for values in (occ, gxi):
        ax, v = bars_of(values)
        low, high = ax.get_ylim()
        assert max(abs(x) for x in v) >= 0.3 * (high - low), f"bars {v} are a sliver of the axis ({low}, {high})"


def test_the_declared_pooling_and_normalisation_are_read():
    """explain reads a head's declared ``pooling`` and a processor's ``mean``/``std`` (mmcore/interfaces.py)."""
    from types import SimpleNamespace

    from mmcore.explain import _denormalise, _query_rows
    from mmcore.interfaces import Processor

    seq = SimpleNamespace(mask=torch.tensor([[True, True, True, False]]))
    rows = {}
    for how in ("first", "last", "mean", None):
        model = SimpleNamespace(heads={"c": SimpleNamespace(pooling=how)})
        rows[how] = _query_rows(model, "c", "classification", seq, None).tolist()  # type: ignore[arg-type]
    assert rows == {
        "first": [True, False, False, False],
        "last": [False, False, True, False],
        "mean": [True, True, True, False],
        None: [False, False, True, False],  # not declared: the last position
    }
    proc = Processor()
    px = torch.full((2, 1, 1), 0.5)
    assert _denormalise(proc, px).flatten().tolist() == [0.5, 0.5]
    proc.mean, proc.std = (0.1, 0.2), (0.5, 0.25)
    assert torch.allclose(_denormalise(proc, px).flatten(), torch.tensor([0.35, 0.325]))
