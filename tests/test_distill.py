"""Knowledge distillation: tasks with a ``teacher`` model directory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mmcore
from mmcore.config import TaskConfig
from mmcore.errors import MMCoreError, SpecError
from mmcore.objectives import Distillation, make_objective
from mmcore.trainer import Trainer

LINES = [f"line {i}: the {w} sat on the mat." for i, w in enumerate(["cat", "dog", "bird", "fox"] * 6)]


def lm_spec(width: int, depth: int, name: str = "lm") -> dict:
    return {
        "spec_version": 1,
        "name": name,
        "backbone": {"width": width, "depth": depth, "heads": 4, "context_length": 48},
        "encoders": {"text": {"component": "text.bytes", "max_length": 48}},
        "heads": {"lm": {"component": "lm"}},
    }


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(LINES) + "\n")
    return path


@pytest.fixture
def teacher_dir(tmp_path):
    torch.manual_seed(1)
    teacher = mmcore.build(lm_spec(48, 2, "teacher"))
    return mmcore.save(teacher, tmp_path / "teacher")


def task(corpus, teacher_dir, **kw) -> TaskConfig:
    return TaskConfig(objective="lm", train=str(corpus), seq_len=24, teacher=str(teacher_dir), **kw)


def student() -> mmcore.MultimodalGPT:
    torch.manual_seed(0)
    return mmcore.build(lm_spec(32, 1, "student"))


def test_loss_mixes_labels_and_temperature_softened_teacher(corpus, teacher_dir) -> None:
    model = student().train()
    batch = model.preprocess([{"text": s} for s in LINES[:4]])
    hard_obj = make_objective(TaskConfig(objective="lm", train=str(corpus)), model)
    hard, count, _ = hard_obj.terms(model, batch)

    soft_obj = make_objective(task(corpus, teacher_dir, distill_alpha=1.0, distill_temperature=3.0), model)
    assert isinstance(soft_obj, Distillation)
    soft_obj.bind(model, mmcore.load(teacher_dir))  # the trainer loads the teacher, not the objective
    total, count2, out = soft_obj.terms(model, batch)
    assert torch.equal(count, count2)
    teacher = soft_obj.teacher
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    # the KL of the softened distributions, by hand
    with torch.no_grad():
        t = teacher(batch, compute_loss=False).outputs["lm"].logits[:, :-1] / 3.0
    s = out.outputs["lm"].logits[:, :-1] / 3.0
    keep = batch.inputs["text"]["mask"][:, 1:]
    kl = F.kl_div(s.log_softmax(-1), t.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(total, (kl * keep).sum() * 9.0, rtol=1e-5, atol=1e-4)
    # alpha mixes the two
    mix = make_objective(task(corpus, teacher_dir, distill_alpha=0.25, distill_temperature=3.0), model)
    mix.bind(model, mmcore.load(teacher_dir))
    mixed, _, _ = mix.terms(model, batch)
    torch.testing.assert_close(mixed, 0.75 * hard + 0.25 * total, rtol=1e-5, atol=1e-4)
    # gradients reach the student only
    mixed.backward()
    assert model.backbone.blocks[0].attn.qkv.weight.grad is not None
    assert all(p.grad is None for p in mix.teacher.parameters())
    # in eval mode the objective is the task's own (evaluation reports the student's metrics)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(mix.terms(model, batch)[0], hard_obj.terms(model, batch)[0])


def test_hidden_state_matching_trains_a_projection_and_resumes(corpus, teacher_dir, tmp_path) -> None:
    cfg = task(corpus, teacher_dir, distill_hidden=1.0)
    training = {"steps": 2, "batch_size": 4, "lr": 1e-2, "progress": False, "checkpoint_every": 1}
    tr = Trainer(student(), {"d": cfg}, training, out_dir=tmp_path / "run")
    proj = tr.tasks["d"].objective.projection
    assert tuple(proj.weight.shape) == (48, 32)  # student width 32 -> teacher width 48
    assert any(p is proj.weight for g in tr.optimizer.param_groups for p in g["params"])
    before = proj.weight.detach().clone()
    tr.train_step()
    assert not torch.equal(proj.weight, before)  # it learns
    tr.save_checkpoint()
    saved = proj.weight.detach().clone()
    tr.train_step()
    # a new trainer resumes the projection from the checkpoint
    tr2 = Trainer(student(), {"d": cfg}, {**training, "steps": 1}, out_dir=tmp_path / "run")
    tr2.load_checkpoint(tr2._checkpoint_dir())
    torch.testing.assert_close(tr2.tasks["d"].objective.projection.weight, saved)


def test_distilled_student_trains_and_saves_without_the_teacher(corpus, teacher_dir, tmp_path) -> None:
    training = {"steps": 3, "batch_size": 4, "lr": 1e-2, "progress": False}
    tr = Trainer(student(), {"d": task(corpus, teacher_dir)}, training, out_dir=tmp_path / "s")
    result = tr.fit()
    assert result.steps == 3 and result.final_loss == result.final_loss  # finite
    back = mmcore.load(tmp_path / "s")
    assert back.config.width == 32
    assert not any(k.startswith("teacher") for k in back.state_dict())


def test_teacher_must_share_the_tokenizer_and_outputs(corpus, teacher_dir, tmp_path) -> None:
    from mmcore_text.tokenizer import TextProcessor

    model = student()
    other = type("OtherTokenizer", (TextProcessor,), {})
    proc = model.processors["text"]
    clone = other.__new__(other)
    clone.__dict__.update(proc.__dict__)
    model.processors["text"] = clone
    obj = make_objective(task(corpus, teacher_dir), model)
    with pytest.raises(MMCoreError, match="different tokenizer and vocabulary"):
        obj.bind(model, mmcore.load(teacher_dir))

    cls_spec = lm_spec(32, 1) | {"heads": {"c": {"component": "classify", "num_classes": 3}}}
    teacher = mmcore.save(
        mmcore.build(cls_spec | {"heads": {"c": {"component": "classify", "num_classes": 4}}}), tmp_path / "t4"
    )
    model = mmcore.build(cls_spec)
    obj = make_objective(TaskConfig(objective="classification", train="x.jsonl", teacher=str(teacher)), model)
    with pytest.raises(MMCoreError, match="num_classes 4"):
        obj.bind(model, mmcore.load(teacher))


def test_spec_options(tmp_path) -> None:
    with pytest.raises(ValueError, match="only apply with a teacher"):
        TaskConfig(objective="lm", train="a.txt", distill_alpha=0.9)
    # an objective that declares no distillation (mlm) refuses a teacher when it is bound to the model
    with pytest.raises(MMCoreError, match="'mlm' cannot be distilled"):
        make_objective(TaskConfig(objective="mlm", train="a.txt", teacher="t"), student())
    spec = tmp_path / "s.toml"
    spec.write_text(
        'spec_version = 1\nname = "s"\n[encoders.text]\ncomponent = "text.bytes"\n[heads.lm]\ncomponent = "lm"\n'
        '[tasks.d]\nobjective = "lm"\ntrain = "c.txt"\nteacher = "../runs/big"\ndistill_temperature = 4\n'
    )
    s = mmcore.load_spec(spec)
    assert s.tasks["d"].teacher == str((tmp_path / "../runs/big").resolve())
    spec.write_text(spec.read_text().replace("distill_temperature = 4", "distill_temperature = 0"))
    with pytest.raises(SpecError, match="distill_temperature"):
        mmcore.load_spec(spec)
