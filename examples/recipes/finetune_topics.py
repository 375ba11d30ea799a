"""Fine-tune the pretrained stdlib language model into a topic classifier.

The classic recipe: pretrain a GPT with the language-model objective (examples/stdlib_lm.toml),
then fine-tune it on a labelled task with AdamW and cross-entropy. The classifier spec
(examples/stdlib_topics.toml) must have the same backbone and text encoder, so that their
weights come from the pretrained model directory; the heads start fresh. Only the spec's last
training stage runs (examples/stdlib_topics.toml's own first stage is the pretraining this
script replaces).

    python examples/recipes/stdlib_text.py
    mmcore train examples/stdlib_lm.toml --out runs/stdlib_lm
    python examples/recipes/finetune_topics.py --pretrained runs/stdlib_lm --out runs/stdlib_topics_ft
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import mmcore

HERE = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained", default="runs/stdlib_lm")
    p.add_argument("--spec", default=str(HERE / "stdlib_topics.toml"))
    p.add_argument("--out", default="runs/stdlib_topics_ft")
    args = p.parse_args()
    torch.manual_seed(0)
    spec = mmcore.load_spec(args.spec)
    model = mmcore.build(spec)
    pretrained = mmcore.load(args.pretrained).state_dict()
    shared = {k: v for k, v in pretrained.items() if k.startswith(("encoders.", "backbone."))}
    missing, unexpected = model.load_state_dict(shared, strict=False)
    print(f"loaded {len(shared)} tensors from {args.pretrained}; fresh: {sorted(missing)}")
    if unexpected:
        raise SystemExit(f"unexpected keys: {unexpected}")
    training = spec.training
    if training.stages:  # the last stage only: the weights are pretrained already
        last = training.stages[-1]
        options = training.model_dump(exclude={"stages", "steps"}, exclude_unset=True)
        options.update(steps=last.steps or training.steps, lr=last.lr or training.lr)
        if last.warmup_steps is not None:
            options["warmup_steps"] = last.warmup_steps
        training = type(training).model_validate(options)
        tasks = {k: v for k, v in spec.tasks.items() if last.tasks is None or k in last.tasks}
    else:
        tasks = spec.tasks
    result = mmcore.Trainer(model, tasks, training, out_dir=args.out).fit()
    print(result.eval)


if __name__ == "__main__":
    main()
