"""The kit checks the capabilities a head and a processor declare (mmcore/testing/capability_kit.py):
an LM head's ``project`` against its ``forward``, a processor's ``save_output`` of a decoded example."""

from __future__ import annotations

import pytest

import mmcore
from mmcore.testing import ConformanceError, check_component
from mmcore.testing.capability_kit import check_head_capabilities, check_processor_capabilities


def lm_head() -> mmcore.Component:
    return mmcore.plugins.get_registry().get("head", "lm")


def test_the_lm_head_passes_the_project_check():
    assert check_head_capabilities(lm_head()) == []
    report = check_component(lm_head(), skip=("compile", "dtype", "meta", "determinism", "gradients"))
    assert "capabilities.project" in report.passed


def test_a_head_whose_project_disagrees_with_its_forward_fails():
    comp = lm_head()
    base = comp.load_factory()

    def skewed(config, *, width, encoders):  # forward as before; project alone adds a bias
        head = base(config, width=width, encoders=encoders)
        original = head.project
        head.project = lambda h: original(h) + 0.5
        forward = head.forward

        def fwd(hidden, sequence):
            out = forward(hidden, sequence)
            if head.input not in sequence.index:
                return out
            h = sequence.gather(hidden, head.input)
            return type(out)(logits=original(h), mask=out.mask)

        head.forward = fwd
        return head

    bad = mmcore.Component(kind="head", name="test.skewed_lm", config=comp.config, factory=skewed, extra=comp.extra)
    (problem,) = check_head_capabilities(bad)
    assert problem[0] == "capabilities.project" and "differs" in problem[1]
    with pytest.raises(ConformanceError, match="capabilities.project"):
        check_component(bad, skip=("compile", "dtype", "meta", "determinism", "gradients"))


def test_classification_heads_declare_no_input_and_are_not_checked():
    assert check_head_capabilities(mmcore.plugins.get_registry().get("head", "classify")) == []


def test_a_processor_that_writes_outputs_is_checked(monkeypatch, tmp_path):
    palette = mmcore.plugins.get_registry().get("encoder", "vision.palette")
    assert check_processor_capabilities(palette) == []
    proc_cls = type(palette.load_processor()(palette.config.model_validate({})))
    monkeypatch.setattr(proc_cls, "save_output", lambda self, value, path, *, scale=1: path.write_bytes(b""))
    (problem,) = check_processor_capabilities(palette)
    assert problem == ("capabilities.save_output", "save_output wrote nothing to out.png")
    monkeypatch.delattr(proc_cls, "save_output")  # declares output_suffixes, inherits the stub
    (problem,) = check_processor_capabilities(palette)
    assert "does not implement save_output" in problem[1]


def test_text_processors_write_no_outputs(tmp_path):
    text = mmcore.plugins.get_registry().get("encoder", "text.bytes")
    proc = text.load_processor()(text.config.model_validate({}))
    assert not proc.output_suffixes
    with pytest.raises(NotImplementedError, match="writes no outputs"):
        proc.save_output("x", tmp_path / "x.txt")
