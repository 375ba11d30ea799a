"""Training: objectives, exact normalisation, resume after SIGKILL, multi-task, torchrun."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, single_thread_env, torchrun, train_cmd

import mmcore
from mmcore.data import ManifestDataset
from mmcore.evaluate import evaluate_dir
from mmcore.loader import IndexPlan
from mmcore.objectives import IGNORE_INDEX, mask_tokens
from mmcore.trainer import Trainer

BACKBONE = {"width": 32, "depth": 2, "heads": 4, "context_length": 64}
CORPUS = (ROOT / "mmcore" / "spec.py").read_text()  # any real prose+code text shipped with the project


def spec_dict(tmp: Path, tasks: dict, training: dict | None = None, heads: dict | None = None) -> dict:
    return {
        "spec_version": 1,
        "name": "t",
        "backbone": BACKBONE,
        "encoders": {"text": {"component": "text.bytes", "max_length": 64}},
        "heads": heads or {"lm": {"component": "lm"}},
        "training": {"steps": 6, "batch_size": 4, "lr": 3e-3, "log_every": 2, "progress": False, **(training or {})},
        "tasks": tasks,
    }


def write_manifest(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def sentiment_records(n: int) -> list[dict]:
    good = ["great", "lovely", "excellent", "wonderful", "fine"]
    bad = ["awful", "terrible", "horrid", "poor", "dreadful"]
    out = []
    for i in range(n):
        lab = i % 2
        word = (good if lab else bad)[i % 5]
        out.append({"text": f"the film was {word}" + " really" * (i % 3), "label": lab})
    return out


def test_mask_tokens_80_10_10_and_specials_untouched():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (64, 128))
    ids[:, 0] = 257  # bos: special
    real = torch.ones_like(ids, dtype=torch.bool)
    real[:, 100:] = False
    corrupted, labels = mask_tokens(
        ids, real, probability=0.15, mask_id=259, vocab_size=264, special_ids=(257,), generator=g
    )
    chosen = labels != IGNORE_INDEX
    assert not chosen[:, 0].any() and not chosen[:, 100:].any()
    rate = chosen[:, 1:100].float().mean().item()
    assert 0.13 < rate < 0.17
    masked = (corrupted == 259) & chosen
    kept = (corrupted == ids) & chosen
    assert 0.75 < masked.sum() / chosen.sum() < 0.85
    assert 0.05 < kept.sum() / chosen.sum() < 0.15
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(corrupted[~chosen], ids[~chosen])


def test_index_plan_is_resumable_and_shards_global_batch():
    plan = IndexPlan(10, 4, seed=3)
    seen = [plan.global_indices(k) for k in range(5)]
    flat = sum(seen, [])
    assert sorted(flat[:10]) == list(range(10))  # first epoch is a permutation
    assert IndexPlan(10, 4, seed=3).global_indices(3) == seen[3]  # stateless
    r0, r1 = IndexPlan(10, 4, seed=3, rank=0, world=2), IndexPlan(10, 4, seed=3, rank=1, world=2)
    assert r0.indices(2) + r1.indices(2) == seen[2]


def test_length_grouped_plan_is_a_reproducible_permutation_of_similar_lengths():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 1000, (203,), generator=g)
    plan = IndexPlan(203, 8, seed=5, lengths=lengths, group_window=5)
    epoch = [i for k in range(203 // 8) for i in plan.global_indices(k)]
    assert len(set(epoch)) == len(epoch) == 25 * 8  # whole batches of the first epoch: no record twice
    assert IndexPlan(203, 8, seed=5, lengths=lengths, group_window=5).global_indices(7) == plan.global_indices(7)

    def spread(p: IndexPlan) -> float:  # mean (longest - shortest) within a batch
        return (
            sum(float(lengths[p.global_indices(k)].max() - lengths[p.global_indices(k)].min()) for k in range(25)) / 25
        )

    assert spread(plan) < 0.35 * spread(IndexPlan(203, 8, seed=5))  # batches far more uniform than random ones
    starts = [plan.global_indices(k)[0] for k in range(25)]
    assert [lengths[i] for i in starts] != sorted((lengths[i] for i in starts), reverse=True)  # batch order shuffled
    assert plan.global_indices(0) != IndexPlan(203, 8, seed=6, lengths=lengths, group_window=5).global_indices(0)
    with pytest.raises(ValueError, match="lengths"):
        IndexPlan(10, 2, lengths=torch.ones(9))


def test_group_by_length_trains_with_less_padding(tmp_path, manager):
    records = [{"text": "w" * (3 + (i * 37) % 50), "target": "x" * (2 + (i * 11) % 9)} for i in range(64)]
    data = write_manifest(tmp_path / "pairs.jsonl", records)
    padded = {}
    for grouped in (False, True):
        spec = spec_dict(
            tmp_path, {"t": {"objective": "prefix_lm", "train": str(data)}}, {"steps": 8, "group_by_length": grouped}
        )
        parsed = mmcore.parse_spec(spec)
        tr = Trainer(mmcore.build(parsed), parsed.tasks, parsed.training)
        task = tr.tasks["t"]
        assert (task.plan.lengths is not None) == grouped
        masks = [tr._next_batch(task).inputs["text"]["mask"] for _ in range(8)]
        padded[grouped] = sum(int((~m).sum()) for m in masks)
    assert padded[True] < 0.5 * padded[False]
    _, result = mmcore.trainer.train(mmcore.parse_spec(spec), out_dir=tmp_path / "out")  # grouped: trains as usual
    assert result.steps == 8


def test_lm_training_lowers_loss_and_writes_a_model_directory(tmp_path, manager):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    spec = spec_dict(
        tmp_path,
        {"lm": {"objective": "lm", "train": str(corpus), "eval": str(corpus)}},
        {"steps": 20, "eval_every": 10, "eval_batches": 4},
    )
    model, result = mmcore.trainer.train(mmcore.parse_spec(spec), out_dir=tmp_path / "out")
    hist = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in hist if "loss" in h]
    assert losses[-1] < losses[0] - 0.5
    assert result.eval["lm"]["perplexity"] < 264 / 2  # well below uniform over the byte vocabulary
    out = tmp_path / "out"
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "eval.json").read_text())["lm"]["loss"] == pytest.approx(result.eval["lm"]["loss"])
    reloaded = mmcore.load(out)
    for (k, a), b in zip(model.state_dict().items(), reloaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_gradient_accumulation_equals_one_big_batch(tmp_path, manager):
    data = write_manifest(tmp_path / "d.jsonl", [{"text": "x" * (3 + 7 * i)} for i in range(8)])
    task = {"lm": {"objective": "lm", "train": str(data)}}
    grads = []
    for bs, acc in ((8, 1), (4, 2), (2, 4)):
        torch.manual_seed(0)
        model = mmcore.build(spec_dict(tmp_path, task))
        tr = Trainer(
            model,
            task,
            {"steps": 1, "batch_size": bs, "grad_accum": acc, "lr": 1e-2, "clip_grad": None, "progress": False},
        )
        # same 8 records in the one step, whatever the split
        tr.tasks["lm"].plan = IndexPlan(8, bs, shuffle=False)
        seen = {}
        tr.optimizer.step = lambda *a, m=model, seen=seen, **k: seen.update(
            {n: p.grad.clone() for n, p in m.named_parameters()}
        )
        tr.train_step()
        grads.append(seen)
    for other in grads[1:]:
        for k in grads[0]:
            torch.testing.assert_close(grads[0][k], other[k], rtol=1e-4, atol=1e-7)


def test_frozen_components_do_not_change(tmp_path, manager):
    corpus = tmp_path / "c.txt"
    corpus.write_text(CORPUS)
    spec = spec_dict(tmp_path, {"lm": {"objective": "lm", "train": str(corpus)}}, {"steps": 3})
    spec["encoders"]["text"]["freeze"] = True
    model = mmcore.build(spec)
    before = model.encoders["text"].token_embedding.weight.clone()
    wpe = model.backbone.wpe.weight.clone()
    Trainer(model, mmcore.parse_spec(spec).tasks, {"steps": 3, "batch_size": 4, "progress": False}).fit()
    assert torch.equal(before, model.encoders["text"].token_embedding.weight)
    assert not torch.equal(wpe, model.backbone.wpe.weight)


def test_classification_fine_tune_beats_majority(tmp_path, manager):
    train = write_manifest(tmp_path / "train.jsonl", sentiment_records(80))
    test = write_manifest(tmp_path / "test.jsonl", sentiment_records(21)[1:])
    spec = spec_dict(
        tmp_path,
        {"cls": {"objective": "classification", "train": str(train), "eval": str(test)}},
        {"steps": 40, "batch_size": 8, "lr": 3e-3},
        heads={"cls": {"component": "classify", "num_classes": 2}},
    )
    _, result = mmcore.trainer.train(mmcore.parse_spec(spec), out_dir=None)
    assert result.eval["cls"]["accuracy"] >= 0.9
    assert "macro_f1" in result.eval["cls"]


def test_bad_records_are_skipped_with_a_count_or_stop_the_run(tmp_path, manager):
    recs = sentiment_records(8)
    lines = [json.dumps(r) for r in recs]
    lines[3] = "{not json"
    lines[5] = json.dumps({"text": 5, "label": 1})
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(lines) + "\n")
    heads = {"cls": {"component": "classify", "num_classes": 2}}
    task = {"cls": {"objective": "classification", "train": str(data)}}
    spec = spec_dict(tmp_path, task, {"steps": 2, "batch_size": 8}, heads=heads)
    _, result = mmcore.trainer.train(mmcore.parse_spec(spec))
    assert result.bad_records == {"cls": 2}  # 2 bad records, met in each of 2 steps (epochs): counted once each
    spec["training"]["on_bad_record"] = "error"
    with pytest.raises(
        mmcore.trainer.DataError, match=r"d.jsonl:(4: not valid JSON|6 field 'text': text.bytes expects a str)"
    ):
        mmcore.trainer.train(mmcore.parse_spec(spec))


def test_manifest_errors_name_file_line_and_field(tmp_path, manager):
    model = mmcore.build(spec_dict(tmp_path, {}))
    data = write_manifest(tmp_path / "m.jsonl", [{"text": "ok", "label": "seven"}, {"text": 3}, [1, 2]])
    ds = ManifestDataset(data, model.processors, {"text": "text"})
    assert (
        str(ds[0])
        == f"{data}:1 field 'label': must be an integer (give `labels = [...]` in the task to use names), got 'seven'"
    )
    assert f"{data}:2 field 'text'" in str(ds[1])
    assert "must be a JSON object" in str(ds[2])


def test_multitask_reports_metrics_per_task(tmp_path, manager):
    corpus = tmp_path / "c.txt"
    corpus.write_text(CORPUS)
    cls = write_manifest(tmp_path / "cls.jsonl", sentiment_records(16))
    heads = {"lm": {"component": "lm"}, "cls": {"component": "classify", "num_classes": 2}}
    tasks = {
        "pretrain": {"objective": "lm", "train": str(corpus), "eval": str(corpus), "head": "lm"},
        "mlm": {"objective": "mlm", "train": str(corpus), "eval": str(corpus), "head": "lm", "weight": 0.5},
        "sentiment": {"objective": "classification", "train": str(cls), "eval": str(cls), "head": "cls"},
    }
    spec = spec_dict(tmp_path, tasks, {"steps": 9, "eval_batches": 2}, heads=heads)
    _, result = mmcore.trainer.train(mmcore.parse_spec(spec), out_dir=tmp_path / "o")
    assert set(result.eval) == {"pretrain", "mlm", "sentiment"}
    assert "perplexity" in result.eval["pretrain"] and "masked_accuracy" in result.eval["mlm"]
    trained = {json.loads(line).get("task") for line in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()}
    assert {"pretrain", "sentiment"} <= trained


def test_sigkill_then_rerun_resumes_and_matches_uninterrupted(tmp_path):
    import tomllib  # noqa: F401  (the spec below is written as TOML)

    corpus = tmp_path / "c.txt"
    corpus.write_text(CORPUS)
    spec = tmp_path / "s.toml"
    spec.write_text(
        'spec_version = 1\nname = "r"\n[backbone]\nwidth = 32\ndepth = 2\nheads = 4\ncontext_length = 64\n'
        '[encoders.text]\ncomponent = "text.bytes"\nmax_length = 64\n[heads.lm]\ncomponent = "lm"\n'
        "[training]\nsteps = 40\nbatch_size = 4\ncheckpoint_every = 5\nlog_every = 1\nprogress = false\n"
        "[backbone.dropout]\n".replace("[backbone.dropout]\n", "")
        + f'[tasks.lm]\nobjective = "mlm"\ntrain = "{corpus}"\n'
    )
    full = tmp_path / "full"
    subprocess.run(train_cmd(spec, full), check=True, env=single_thread_env(), capture_output=True, timeout=300)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        train_cmd(spec, killed), env=single_thread_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    latest = killed / "checkpoints" / "latest"
    while time.time() < deadline and not (latest.exists() and latest.read_text().strip() >= "step-00000015"):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest.exists(), "no checkpoint was written before the kill"
    res = subprocess.run(train_cmd(spec, killed), env=single_thread_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "resuming from" in res.stderr
    a, b = mmcore.load(full).state_dict(), mmcore.load(killed).state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    last = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines() if '"loss"' in x][-1]
    last_k = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines() if '"loss"' in x][-1]
    assert last["step"] == last_k["step"] == 40 and last["loss"] == last_k["loss"]


#: Trains a spec like ``mmcore train`` (under torchrun or alone) and writes, per process, the
#: text of every record each training step consumed: ``consumed-rank<R>.json``.
RECORDING_TRAIN = r"""
import json, sys
from pathlib import Path
import mmcore
from mmcore.trainer import Trainer, train

seen = {}
real = Trainer._next_batch

def recording(self, task):
    batch = real(self, task)
    proc = self.model.processors["text"]
    rows = [proc.decode([t for t, m in zip(ids, mask) if m]) for ids, mask in
            zip(batch.inputs["text"]["ids"].tolist(), batch.inputs["text"]["mask"].tolist())]
    seen.setdefault(self.step, []).extend(rows)
    return batch

Trainer._next_batch = recording
out = Path(sys.argv[2])
model, result = train(mmcore.load_spec(sys.argv[1]), out_dir=out)
import torch.distributed as dist
rank = dist.get_rank() if dist.is_initialized() else 0
(out / f"consumed-rank{rank}.json").write_text(json.dumps(seen))
"""


def test_torchrun_two_processes_match_one_process(tmp_path):
    """Two processes under torchrun: each consumes its own half of every global batch (together
    exactly the one-process batch), the trainer state records two processes, and the losses
    and final weights are those of one process."""
    data = write_manifest(tmp_path / "d.jsonl", [{"text": f"record {i} " + "abc " * (1 + i % 5)} for i in range(32)])
    spec = tmp_path / "s.toml"
    spec.write_text(
        'spec_version = 1\nname = "ddp"\n[backbone]\nwidth = 32\ndepth = 2\nheads = 4\ncontext_length = 64\n'
        '[encoders.text]\ncomponent = "text.bytes"\nmax_length = 64\n[heads.lm]\ncomponent = "lm"\n'
        '[training]\nsteps = 4\nbatch_size = 8\nlr = 3e-4\nlog_every = 1\nprogress = false\ndevice = "cpu"\n'
        f'[tasks.lm]\nobjective = "lm"\ntrain = "{data}"\n'
    )
    script = tmp_path / "recording_train.py"
    script.write_text(RECORDING_TRAIN)
    one, two = tmp_path / "one", tmp_path / "two"  # separate output folders
    subprocess.run(
        [sys.executable, str(script), str(spec), str(one)], check=True, env=single_thread_env(), capture_output=True
    )
    res = torchrun(script, str(spec), str(two), port=29517)
    assert res.returncode == 0, res.stderr[-3000:]

    state = json.loads((two / "checkpoints" / "step-00000004" / "trainer_state.json").read_text())
    assert state["world"] == 2 and state["step"] == 4
    assert json.loads((one / "checkpoints" / "step-00000004" / "trainer_state.json").read_text())["world"] == 1
    whole = json.loads((one / "consumed-rank0.json").read_text())
    halves = [json.loads((two / f"consumed-rank{r}.json").read_text()) for r in (0, 1)]
    assert sorted(whole) == sorted(halves[0]) == sorted(halves[1]) == ["0", "1", "2", "3"]
    for step, records in whole.items():
        a, b = halves[0][step], halves[1][step]
        assert len(records) == 8 and len(a) == len(b) == 4 and len(set(records)) == 8
        assert not set(a) & set(b) and sorted(a + b) == sorted(records), step

    def losses(d: Path) -> list[float]:
        return [json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]

    assert losses(one) == pytest.approx(losses(two), abs=1e-5)
    a, b = mmcore.load(one).state_dict(), mmcore.load(two).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_eval_command_scores_generated_text_with_bleu_and_chrf(tmp_path, manager):
    pairs = [{"text": w, "target": w.upper()} for w in ["cat", "dog", "bird", "fish", "frog", "goat"] * 4]
    data = write_manifest(tmp_path / "pairs.jsonl", pairs)
    spec = spec_dict(
        tmp_path, {"tr": {"objective": "prefix_lm", "train": str(data)}}, {"steps": 60, "batch_size": 8, "lr": 5e-3}
    )
    mmcore.trainer.train(mmcore.parse_spec(spec), out_dir=tmp_path / "m")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmcore",
            "eval",
            str(tmp_path / "m"),
            str(data),
            "--out",
            str(tmp_path / "e.json"),
            "--max-new-tokens",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "e.json").read_text())
    m = report["metrics"]
    assert {"loss", "perplexity", "chrf", "exact_match"} <= set(m)
    # one-word references: BLEU's 4-grams make it near 0 whatever the output, so it is left out with a note
    assert "bleu" not in m and "fewer than BLEU's 4-gram order" in report["notes"][0]
    assert 0 <= m["chrf"] <= 100 and len(report["examples"]) == 5
    # the nested form {"text": {"prompt", "target"}} gives the same references and scores
    nested = write_manifest(
        tmp_path / "nested.jsonl", [{"text": {"prompt": p["text"], "target": p["target"]}} for p in pairs]
    )
    res2 = evaluate_dir(tmp_path / "m", nested, max_new_tokens=8)
    assert res2["examples"] == report["examples"]
    assert res2["metrics"]["chrf"] == pytest.approx(m["chrf"])
    beams = evaluate_dir(tmp_path / "m", data, max_new_tokens=8, num_beams=3)
    assert 0 <= beams["metrics"]["chrf"] <= 100
    unscored = write_manifest(tmp_path / "prompts.jsonl", [{"text": "cat"}])
    with pytest.raises(mmcore.MMCoreError, match="no record has a reference"):
        evaluate_dir(tmp_path / "m", unscored, max_new_tokens=4)


def test_text_metrics_and_macro_f1():
    from mmcore.evaluate import text_metrics
    from mmcore.objectives import macro_f1

    m = text_metrics(["the cat sat on the mat", "hello"], ["the cat sat on the mat", "goodbye"])
    assert m["exact_match"] == 0.5 and 0 < m["bleu"] < 100 and 0 < m["chrf"] < 100
    assert text_metrics(["a b c d e"], ["a b c d e"])["bleu"] == pytest.approx(100.0)
    # predictions [0, 0, 1, 1] for gold [0, 1, 1, 1], as a confusion matrix (rows gold, columns predicted)
    confusion = torch.tensor([[1.0, 0.0], [1.0, 2.0]])
    # class 0: tp 1 fp 1 fn 0 -> 2/3; class 1: tp 2 fp 0 fn 1 -> 0.8
    assert macro_f1(confusion) == pytest.approx((2 / 3 + 0.8) / 2)
    # a class absent from gold and predictions does not count
    assert macro_f1(torch.tensor([[1.0, 0.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])) == pytest.approx(
        (2 / 3 + 0.8) / 2
    )


def test_cpu_optimizer_is_the_fused_adamw(tmp_path, manager):
    data = write_manifest(tmp_path / "d.jsonl", [{"text": "abc"}] * 4)
    task = {"lm": {"objective": "lm", "train": str(data)}}
    tr = Trainer(mmcore.build(spec_dict(tmp_path, task)), task, {"steps": 1, "batch_size": 2, "progress": False})
    assert isinstance(tr.optimizer, torch.optim.AdamW)
    assert all(g["fused"] for g in tr.optimizer.param_groups)
    assert tr.wrapped is tr.model  # no compile by default


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path, manager):
    """training.compile = true runs the step under torch.compile with the same losses."""
    data = write_manifest(tmp_path / "d.jsonl", [{"text": "x" * (3 + 7 * i)} for i in range(8)])
    task = {"lm": {"objective": "lm", "train": str(data)}}
    losses = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = mmcore.build(spec_dict(tmp_path, task))
        tr = Trainer(model, task, {"steps": 3, "batch_size": 4, "lr": 1e-2, "compile": compiled, "progress": False})
        assert (tr.wrapped is not model) == compiled
        losses.append([tr.train_step()["loss"] for _ in range(3)])
        state = {k: v.clone() for k, v in model.state_dict().items()}
        assert all(not k.startswith("_orig_mod") for k in state)
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), rtol=1e-4, atol=1e-5)
