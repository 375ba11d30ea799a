"""LLaVA-style captioning: a pretrained language model, a vision encoder and an MLP projector.

The recipe multimodal GPTs are built with in practice (LLaVA): start from a pretrained language
model, attach a vision encoder through a projector, train the new parts with the LM frozen,
then the LM too. Here every piece is made offline:

1. **The pretrained LM.** ``examples/llava_lm.toml`` (a small Llama-shaped GPT: RMSNorm, rotary
   positions, SwiGLU, 2 key/value heads for 4 query heads, no biases, tied head) is pretrained
   on the standard library's docstrings (``stdlib_text.py`` makes the corpus) and exported as a
   Hugging Face Llama folder (``mmcore.hf.export_hf``, what ``mmcore export --hf llama`` runs).
2. **Stage 1.** ``examples/llava_digits.toml`` loads that folder (``[backbone] weights_from =
   {path = ..., format = "hf"}``) and captions scikit-learn's digits (``digits_av.py`` makes the
   images) with a ``vision.patch`` encoder and an ``mlp`` projector. The LM (backbone, text
   embedding, tied head) is frozen; the vision encoder, the projector and the fusion's
   boundary/modality embeddings train. The vision encoder trains too: it is fresh (no
   pretrained image encoder is available offline), and a random one would leave the projector
   reading random features.
3. **Stage 2.** The same spec with ``backbone.train = "lora"``; the stage-1 vision encoder,
   projector and fusion are read back through ``weights_from`` (the stage-1 model directory's
   ``model.safetensors``, one prefix per section), and the backbone again from the folder (it
   did not change in stage 1). One spec cannot change a component's train policy between its
   ``[[training.stages]]``, hence two training runs, as on the command line::

       mmcore train examples/llava_digits.toml --out runs/llava_stage1
       mmcore train examples/llava_digits.toml --out runs/llava_stage2 --set backbone.train=lora \\
           --set 'encoders.image.weights_from={path = "../runs/llava_stage1/model.safetensors", prefix = {"encoders.image." = ""}}' \\
           ... (the projector and the fusion alike: stage_two_overrides() below)

Against: the same captioning model trained from scratch (no ``weights_from``, every part
training) for the steps of both stages together, and logistic regression on the pixels
(``baselines.py``), all on the same 359 held-out images, exact match of the greedy caption.

    python examples/recipes/llava_digits.py        # data, pretraining, both stages, scratch
    -> examples/results/llava_digits.json (docs/tasks.md, "LLaVA-style")
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent
LM_SPEC = EXAMPLES / "llava_lm.toml"
CAPTION_SPEC = EXAMPLES / "llava_digits.toml"


def _q(path: Path) -> str:
    """A path as a TOML string for an override."""
    return json.dumps(str(Path(path).resolve()))


def _train(spec: Any, out: Path, seconds: dict[str, float], evals: dict[str, Any]) -> Any:
    """Build and train ``spec`` into ``out``; its time and held-out metrics under ``out.name``."""
    import torch

    import mmcore

    torch.manual_seed(spec.training.seed)
    model = mmcore.build(spec)
    t0 = time.perf_counter()
    result = mmcore.Trainer(model, spec.tasks, spec.training, out_dir=str(out), resume=False).fit()
    seconds[out.name] = time.perf_counter() - t0
    evals[out.name] = result.eval
    return model


def pretrain_lm(work: Path, corpus: Path, steps: int, run: dict[str, Any], overrides: list[str] = ()) -> Path:
    """Pretrain examples/llava_lm.toml on ``corpus`` (its ``corpus_train.txt``/``corpus_eval.txt``)
    into ``work/lm`` and export it as a Llama folder ``work/lm_hf`` (returned)."""
    import mmcore
    from mmcore.hf import export_hf

    spec = mmcore.load_spec(
        LM_SPEC,
        overrides=[
            f"training.steps={steps}",
            f"tasks.pretrain.train={_q(corpus / 'corpus_train.txt')}",
            f"tasks.pretrain.eval={_q(corpus / 'corpus_eval.txt')}",
            *overrides,
        ],
    )
    run["lm"] = _train(spec, work / "lm", run["seconds"], run["eval"])
    export_hf(run["lm"], work / "lm_hf", family="llama")
    return work / "lm_hf"


def caption_spec(folder: Path | None, digits: Path, steps: int, overrides: list[str] = ()) -> Any:
    """examples/llava_digits.toml on ``digits`` with the LM from ``folder``; ``folder=None``: the
    same model from scratch (no weights_from, every component trains)."""
    import tomllib

    import mmcore
    from mmcore.spec import apply_overrides, parse_spec

    sets = [
        f"training.steps={steps}",
        f"tasks.caption.train={_q(digits / 'caption_train.jsonl')}",
        f"tasks.caption.eval={_q(digits / 'caption_eval.jsonl')}",
        *overrides,
    ]
    if folder is not None:
        return mmcore.load_spec(
            CAPTION_SPEC, overrides=[f'backbone.weights_from={{path = {_q(folder)}, format = "hf"}}', *sets]
        )
    data = tomllib.loads(CAPTION_SPEC.read_text())
    for section in (data["backbone"], data["encoders"]["text"]):
        section.pop("weights_from", None)
        section["train"] = "full"
    return parse_spec(apply_overrides(data, sets, file=str(CAPTION_SPEC)), file=str(CAPTION_SPEC))


def stage_two_overrides(stage1: Path, lora_rank: int = 8) -> list[str]:
    """``--set`` items that turn examples/llava_digits.toml into stage 2: LoRA on the backbone,
    and the parts stage 1 trained read back from its model directory."""
    weights = _q(stage1 / "model.safetensors")
    sets = ["backbone.train=lora", f"backbone.lora={{rank = {lora_rank}, alpha = {2 * lora_rank}}}"]
    for section, prefix in (
        ("encoders.image", "encoders.image."),
        ("encoders.image.projector", "projectors.image."),
        ("fusion", "fusion."),
    ):
        sets.append(f'{section}.weights_from={{path = {weights}, prefix = {{"{prefix}" = ""}}}}')
    return sets


def caption_scores(model: Any, digits: Path, records: list[dict]) -> dict[str, float]:
    """Greedy caption (8 new tokens) of every record's image: the fraction named exactly
    (``exact_match``) and the fraction whose first word is the name (``first_word``: what a model
    that reads the picture but never learned to stop after the name still gets right)."""
    from mmcore.generation import GenerationConfig, generate_for_records

    model.eval()
    preds = generate_for_records(
        model, [{"image": r["image"]} for r in records], base=digits, config=GenerationConfig(max_new_tokens=8)
    )
    pairs = list(zip(preds, records, strict=True))
    return {
        "exact_match": sum(p.strip() == r["target"] for p, r in pairs) / len(pairs),
        "first_word": sum(p.split()[:1] == [r["target"]] for p, r in pairs) / len(pairs),
        "examples": [{"generated": p, "reference": r["target"]} for p, r in pairs[:4]],
    }


def captioners(
    folder: Path,
    work: Path,
    digits: Path,
    *,
    stage1_steps: int,
    stage2_steps: int,
    overrides: list[str] = (),
    scratch: bool = True,
) -> dict[str, Any]:
    """Caption with the LM in ``folder`` in two stages (``work/stage1``, ``work/stage2``) and,
    with ``scratch``, train the same captioner from scratch for ``stage1_steps + stage2_steps``
    (``work/scratch``). Returns the models by name, ``seconds`` and ``eval`` (each run's training
    time and held-out metrics by name)."""
    out: dict[str, Any] = {"seconds": {}, "eval": {}}
    spec1 = caption_spec(folder, digits, stage1_steps, overrides)
    out["stage1"] = _train(spec1, work / "stage1", out["seconds"], out["eval"])
    spec2 = caption_spec(folder, digits, stage2_steps, [*overrides, *stage_two_overrides(work / "stage1")])
    out["stage2"] = _train(spec2, work / "stage2", out["seconds"], out["eval"])
    if scratch:
        spec0 = caption_spec(None, digits, stage1_steps + stage2_steps, overrides)
        out["scratch"] = _train(spec0, work / "scratch", out["seconds"], out["eval"])
    return out


def pipeline(
    work: Path,
    corpus: Path,
    digits: Path,
    *,
    lm_steps: int,
    stage1_steps: int,
    stage2_steps: int,
    lm_overrides: list[str] = (),
    caption_overrides: list[str] = (),
    scratch: bool = True,
) -> dict[str, Any]:
    """The whole recipe once: pretrain and export the LM (:func:`pretrain_lm`), then
    :func:`captioners`. Returns theirs, with ``lm`` (the model) and ``folder`` (its export)."""
    lm: dict[str, Any] = {"seconds": {}, "eval": {}}
    folder = pretrain_lm(work, corpus, lm_steps, lm, lm_overrides)
    out = captioners(
        folder,
        work,
        digits,
        stage1_steps=stage1_steps,
        stage2_steps=stage2_steps,
        overrides=caption_overrides,
        scratch=scratch,
    )
    out.update(lm=lm["lm"], folder=folder)
    out["seconds"].update(lm["seconds"])
    out["eval"].update(lm["eval"])
    return out


ROWS = {
    "mmcore pretrained LM, stage 1": ("stage1", "exact_match"),
    "mmcore pretrained LM, stage 1, first word": ("stage1", "first_word"),
    "mmcore pretrained LM, stage 2": ("stage2", "exact_match"),
    "mmcore from scratch": ("scratch", "exact_match"),
}


def figures(results: dict, logistic: float) -> dict[str, str]:
    """What docs/tasks.md quotes: each row's mean and per-seed score, and the baseline."""
    from baselines import pct

    out = {}
    for label, (run, metric) in ROWS.items():
        out[label] = pct(results["mean"][run][metric])
        for row in results["seeds"]:
            out[f"{label}, seed {row['seed']}"] = pct(row[run][metric])
    out["logistic regression"] = pct(logistic)
    return out


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/llava_digits", help="model directories (lm, lm_hf, seed<N>/{stage1,...})")
    p.add_argument("--lm-steps", type=int, help="pretraining steps (default: examples/llava_lm.toml's)")
    p.add_argument("--stage1-steps", type=int, default=300)
    p.add_argument("--stage2-steps", type=int, default=300)
    p.add_argument("--seeds", default="0,1,2", help="seeds of the captioning runs (one pretrained LM for all)")
    p.add_argument("--no-results", action="store_true", help="do not write examples/results/llava_digits.json")
    args = p.parse_args(argv)
    sys.path.insert(0, str(HERE))
    import torch
    from baselines import image_classifiers, load_pixels, read_jsonl, write_results

    import mmcore

    corpus, digits = EXAMPLES / "data" / "stdlib", EXAMPLES / "data" / "digits_av"
    if not (corpus / "corpus_train.txt").is_file():
        subprocess.run([sys.executable, str(HERE / "stdlib_text.py"), "--out", str(corpus)], check=True)
    if not (digits / "caption_train.jsonl").is_file():
        import digits_av

        digits_av.main(["--out", str(digits)])
    lm_steps = args.lm_steps or mmcore.load_spec(LM_SPEC).training.steps
    work = Path(args.work)
    lm: dict[str, Any] = {"seconds": {}, "eval": {}}
    folder = pretrain_lm(work, corpus, lm_steps, lm)
    train, test = read_jsonl(digits / "caption_train.jsonl"), read_jsonl(digits / "caption_eval.jsonl")
    seeds = [int(s) for s in args.seeds.split(",")]
    per_seed = []
    for seed in seeds:
        run = captioners(
            folder,
            work / f"seed{seed}",
            digits,
            stage1_steps=args.stage1_steps,
            stage2_steps=args.stage2_steps,
            overrides=[f"training.seed={seed}"],
        )
        row = {k: caption_scores(run[k], digits, test) for k in ("stage1", "stage2", "scratch")}
        row.update(seed=seed, train_seconds_under_load={k: round(v, 1) for k, v in run["seconds"].items()})
        print(json.dumps(row), flush=True)
        per_seed.append(row)
    classical = image_classifiers(
        load_pixels([digits / r["image"] for r in train]),
        [r["target"] for r in train],
        load_pixels([digits / r["image"] for r in test]),
        [r["target"] for r in test],
    )
    avg = {
        k: {m: mean([r[k][m] for r in per_seed]) for m in ("exact_match", "first_word")}
        for k in ("stage1", "stage2", "scratch")
    }
    results = {
        "specs": ["examples/llava_lm.toml", "examples/llava_digits.toml"],
        "data": f"digits_av.py: {len(train)} training, {len(test)} held-out images; stdlib_text.py corpus",
        "metric": "exact match (and first word) of the greedy caption (8 new tokens) on the held-out images, mean over seeds",
        "threads": torch.get_num_threads(),
        "pretrained_lm": {
            "steps": lm_steps,
            "eval": lm["eval"]["lm"],
            "train_seconds_under_load": round(lm["seconds"]["lm"], 1),
        },
        "steps": {
            "stage1": args.stage1_steps,
            "stage2": args.stage2_steps,
            "scratch": args.stage1_steps + args.stage2_steps,
        },
        "mean": avg,
        "seeds": per_seed,
        "baselines": {
            "chance": 0.1,
            "logistic_regression_pixels": classical["logistic_regression_pixels"],
            "rbf_svm_pixels": classical["rbf_svm_pixels"],
        },
    }
    print(json.dumps(results, indent=2))
    if not args.no_results:
        write_results("llava_digits", results, figures(results, classical["logistic_regression_pixels"]))
    return results


if __name__ == "__main__":
    main()
