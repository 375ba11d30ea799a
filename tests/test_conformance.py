"""The conformance kit (mmcore.testing): every registered component keeps its contract, and
deliberately broken components fail with a message that says what is wrong.

``test_registered_component_conforms`` runs once per component in the registry (through
the kit's pytest plugin), so a newly installed component is checked without editing
this file. Components whose options have required fields declare working ones in their
registration (``extra={"conformance": {"options": ...}}``); ``text.bpe`` needs a
tokenizer file, made here.
"""

from __future__ import annotations

import pytest
import torch
from pydantic import BaseModel, Field
from torch import nn

import mmcore
from mmcore.testing import CHECKS, ConformanceError, check_component, check_encoder, check_head, check_processor


@pytest.fixture(scope="module")
def bpe_tokenizer(tmp_path_factory):
    from mmcore_text.bpe import train_bpe

    d = tmp_path_factory.mktemp("bpe")
    corpus = d / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 50 + "ünïcödé 数字 text\n" * 20)
    return train_bpe([corpus], 300, d / "tok")


@pytest.mark.mmcore_components("*")
def test_registered_component_conforms(mmcore_component, bpe_tokenizer):
    options = {"tokenizer": str(bpe_tokenizer)} if mmcore_component.key == "encoder:text.bpe" else None
    report = check_component(mmcore_component, options)
    ran = set(report.passed) | set(report.skipped)
    assert set(CHECKS[mmcore_component.kind]) <= ran
    # nothing is left out; without a GPU the device check runs on the meta device, which only a
    # forward that reads values (timm's models call .item()) cannot do
    if mmcore_component.key in META_UNSUPPORTED and not torch.cuda.is_available():
        assert list(report.skipped) == ["device"]
        assert report.skipped["device"].startswith("no CUDA device here, and forward cannot run on the meta device")
    else:
        assert report.skipped == {}


#: components whose forward cannot run on the meta device (the device check is skipped without a GPU)
META_UNSUPPORTED = {"encoder:vision.timm"}


def test_the_plugin_parametrises_over_the_registry(request):
    """The pytest plugin made one test per registered component (ids are kind:name)."""
    from mmcore.plugins import get_registry

    session_ids = {
        item.callspec.id
        for item in request.session.items
        if item.originalname == "test_registered_component_conforms" and hasattr(item, "callspec")
    }
    if not session_ids:  # this test was selected alone: collect the module in a fresh pytest
        import subprocess
        import sys

        res = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", f"{__file__}::test_registered_component_conforms"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        prefix = "test_registered_component_conforms["
        session_ids = {line.split(prefix, 1)[1].rstrip("]") for line in res.stdout.splitlines() if prefix in line}
    assert session_ids == {c.key for c in get_registry()}
    assert {"encoder:text.bytes", "head:lm", "fusion:early"} <= session_ids


# --- a small, correct component and broken variants of it ----------------------------------------


class SeriesConfig(mmcore.ComponentConfig):
    """Options of the test encoder."""

    dim: int = Field(8, ge=1, description="Token width.")


class SeriesProcessor(mmcore.Processor):
    """A list of numbers -> {"values": (T,)}; collate -> values (B, T), mask (B, T)."""

    modality = "series"

    def __init__(self, config=None):
        self.training = False

    def __call__(self, value, *, where=""):
        if not isinstance(value, list) or not value:
            raise mmcore.InputError(f"{where}: expected a non-empty list of numbers")
        return {"values": torch.tensor(value, dtype=torch.float32)}

    def collate(self, samples):
        lengths = [0 if s is None else len(s["values"]) for s in samples]
        values = torch.zeros(len(samples), max([1, *lengths]))
        for i, s in enumerate(samples):
            if s is not None:
                values[i, : lengths[i]] = s["values"]
        return {"values": values, "mask": torch.arange(values.shape[1]) < torch.tensor(lengths).unsqueeze(1)}

    def examples(self):
        return [[1.0, 2.0], [0.5] * 7, [3.0, -1.0, 2.0, 0.0]]


class SeriesEncoder(mmcore.Encoder):
    """Each value -> a token, plus a projection of the masked mean of the sample's tokens."""

    modality = "series"

    def __init__(self, config, *, processor=None):
        super().__init__()
        self.out_dim = config.dim
        self.embed = nn.Linear(1, config.dim)
        self.mix = nn.Linear(config.dim, config.dim)

    def context(self, x, mask):
        m = mask.unsqueeze(-1).to(x.dtype)
        return (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1)

    def forward(self, inputs):
        values, mask = inputs["values"], inputs["mask"]
        x = self.embed(values.to(self.embed.weight.dtype).unsqueeze(-1))  # (B, T, dim)
        x = x + self.mix(self.context(x, mask))
        return mmcore.Tokens(torch.where(mask.unsqueeze(-1), x, 0.0), mask)


class WrongShape(SeriesEncoder):
    def forward(self, inputs):
        t = super().forward(inputs)
        return mmcore.Tokens(t.embeds[..., :-1], t.mask)  # one feature short of out_dim


class MaskIgnored(SeriesEncoder):
    def context(self, x, mask):
        return x.mean(1, keepdim=True)  # padding included


class UnusedParameter(SeriesEncoder):
    def __init__(self, config, *, processor=None):
        super().__init__(config, processor=processor)
        self.scale = nn.Parameter(torch.ones(config.dim))  # never used in forward


class RandomInEval(SeriesEncoder):
    def forward(self, inputs):
        t = super().forward(inputs)
        return mmcore.Tokens(t.embeds + 0.01 * torch.randn_like(t.embeds), t.mask)  # noise even in eval mode


class FixedDevice(SeriesEncoder):
    def forward(self, inputs):
        t = super().forward(inputs)
        bias = torch.zeros(t.embeds.shape, dtype=t.embeds.dtype, device="cpu")  # a fixed device, not the inputs'
        return mmcore.Tokens(t.embeds + bias, t.mask)


class Unmarked(SeriesProcessor):
    def collate(self, samples):
        out = super().collate([s if s is not None else {"values": torch.zeros(1)} for s in samples])
        return {"values": out["values"], "mask": out["mask"]}  # a missing record looks like a real zero


def series(factory, name="test.series", processor=SeriesProcessor):
    return mmcore.Component(
        kind="encoder", name=name, modality="series", config=SeriesConfig, factory=factory, processor=processor
    )


def failures_of(component, **kw):
    with pytest.raises(ConformanceError) as info:
        check_encoder(component, **kw)
    err = info.value
    assert isinstance(err, AssertionError)
    return err, dict(err.failures)


def test_a_correct_encoder_passes_every_check():
    report = check_encoder(series(SeriesEncoder))
    assert {"outputs", "padding", "missing", "gradients", "state_dict", "meta", "compile", "processor.pickle"} <= set(
        report.passed
    )
    assert "device" in report.passed and not report.skipped  # on CUDA, or else on the meta device


def test_a_tensor_made_on_a_fixed_device_is_reported():
    """Without a GPU too: the device check runs the encoder on the meta device."""
    err, failures = failures_of(series(FixedDevice, "test.fixed_device"), skip=("compile",))
    assert list(failures) == ["device"]
    assert "[device] encoder:test.fixed_device" in str(err)
    if not torch.cuda.is_available():
        assert "forward mixes devices" in failures["device"] and "test_conformance.py" in failures["device"]


def test_wrong_output_shape_is_reported():
    err, failures = failures_of(series(WrongShape, "test.wrong_shape"), skip=("compile",))
    assert list(failures) == ["outputs"]
    assert "[outputs] encoder:test.wrong_shape" in str(err)
    assert "Tokens.embeds has shape (1, 2, 7)" in failures["outputs"] and "(1, N, 8)" in failures["outputs"]


def test_an_ignored_mask_is_reported():
    err, failures = failures_of(series(MaskIgnored, "test.mask_ignored"), skip=("compile",))
    assert list(failures) == ["padding"]
    assert "[padding] encoder:test.mask_ignored" in str(err)
    assert "padding leaks into real tokens (is a mask ignored?)" in failures["padding"]


def test_a_parameter_without_gradient_is_reported():
    err, failures = failures_of(series(UnusedParameter, "test.unused"), skip=("compile",))
    assert list(failures) == ["gradients"]
    assert "[gradients] encoder:test.unused" in str(err)
    assert "1 trainable parameter(s) get no gradient from the outputs: scale" in failures["gradients"]


def test_non_determinism_in_eval_mode_is_reported():
    err, failures = failures_of(series(RandomInEval, "test.random"), skip=("compile",))
    assert "[determinism] encoder:test.random" in str(err)
    assert "two forward passes in eval mode on the same batch differ" in failures["determinism"]
    # the noise also breaks comparisons of a sample alone and batched, and of reloaded weights
    assert set(failures) <= {"determinism", "padding", "state_dict", "meta", "missing", "dtype"}


def test_a_processor_that_does_not_mark_missing_records_is_reported():
    with pytest.raises(ConformanceError) as info:
        check_processor(Unmarked(), modality="series")
    assert [c for c, _ in info.value.failures] == ["processor.missing"]
    assert "does not mark the missing record" in str(info.value)


def test_a_head_that_pools_over_padding_is_reported():
    class Config(mmcore.ComponentConfig):
        """Options of the broken head."""

    class MeanOfEverything(mmcore.Head):
        def __init__(self, config, *, width):
            super().__init__()
            self.proj = nn.Linear(width, 2)

        def forward(self, hidden, sequence):
            return mmcore.HeadOutput(logits=self.proj(hidden.mean(1)))  # padding positions included

    comp = mmcore.Component(kind="head", name="test.pool_all", config=Config, factory=MeanOfEverything)
    with pytest.raises(ConformanceError) as info:
        check_head(comp, skip=("compile",))
    assert [c for c, _ in info.value.failures] == ["padding"]
    assert "[padding] head:test.pool_all" in str(info.value)


def test_options_models_must_reject_unknown_keys():
    class Loose(BaseModel):  # not a ComponentConfig: extra keys are ignored
        dim: int = 8

    comp = mmcore.Component(
        kind="encoder",
        name="test.loose",
        modality="series",
        config=Loose,
        factory=SeriesEncoder,
        processor=SeriesProcessor,
    )
    with pytest.raises(ConformanceError, match=r"\[options\] encoder:test.loose: Loose accepts unknown keys"):
        check_encoder(comp)


def test_required_options_without_a_declaration_say_how_to_give_them():
    comp = mmcore.plugins.get_registry().get("head", "classify")
    undeclared = mmcore.Component(kind="head", name="test.classify", config=comp.config, factory=comp.factory)
    with pytest.raises(ConformanceError, match=r"\[options\].*extra=\{'conformance'"):
        check_component(undeclared)


def test_the_callers_random_state_is_left_alone():
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    check_encoder(series(SeriesEncoder), skip=("compile", "dtype", "meta"))
    assert torch.equal(torch.rand(3), want)
