"""int8 weight quantization (mmcore.quantize): size on disk, decoding speed, metric change.

    python bench/quantize.py                                   # decode + size, random 256-wide model
    python bench/quantize.py --eval-lm runs/stdlib_lm --eval-data examples/data/stdlib/corpus_eval.txt
    python bench/quantize.py --eval-task runs/demo:match=examples/data/digits_av/match_eval.jsonl

1. **Decoding**: greedy decoding (mmcore.generate, the backbone's lean single-token step) of a
   random GPT-2-like text model, width 256, 4 layers, 4 heads (the configuration of
   bench/decode.py), float32 against its int8 copy, batch 1 and 8, prompt 32, 128 new tokens.
   Method as in bench/decode.py: one warm-up run each, then ``--rounds`` rounds that time both
   back to back, alternating which goes first; reported: best round of each, the ratio of the
   bests, of the medians and the median of per-round ratios.
2. **Size on disk** of ``model.safetensors`` for both (``mmcore.save``).
3. **Metric change** on trained recipe models (optional): ``--eval-lm DIR --eval-data FILE``
   compares held-out perplexity of a language model directory and its int8 copy;
   ``--eval-task DIR:TASK=FILE`` compares a task's metrics (accuracy, ...) of any model
   directory (encoders are quantized too).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore", category=DeprecationWarning)


def build_model(args: argparse.Namespace):
    import mmcore

    torch.manual_seed(0)
    return mmcore.build(
        {
            "spec_version": 1,
            "name": "quantize-bench",
            "backbone": {
                "width": args.width,
                "depth": args.layers,
                "heads": args.heads,
                "context_length": args.ctx,
                "mlp": "gelu_tanh",
            },
            "encoders": {"text": {"component": "text.bytes", "max_length": args.ctx}},
            "heads": {"lm": {"component": "lm", "tie": True}},
        }
    ).eval()


def time_generate(model, prompts: torch.Tensor, new: int) -> tuple[float, list[list[int]]]:
    import mmcore
    from mmcore.generation import GenerationConfig

    batch = mmcore.Batch({"text": {"ids": prompts, "mask": torch.ones_like(prompts, dtype=torch.bool)}})
    t0 = time.perf_counter()
    out = mmcore.generate(model, batch, GenerationConfig(max_new_tokens=new, eos_id=-1))
    return time.perf_counter() - t0, out


def decode(args: argparse.Namespace, fp, q) -> dict:
    results = {}
    for b in [int(x) for x in args.batches.split(",")]:
        g = torch.Generator().manual_seed(b)
        prompts = torch.randint(0, 256, (b, args.prompt), generator=g)
        time_generate(fp, prompts, args.new_tokens)
        time_generate(q, prompts, args.new_tokens)
        tf, tq, agree = [], [], []
        for r in range(args.rounds):
            for side in ("float", "int8") if r % 2 == 0 else ("int8", "float"):
                if side == "float":
                    t, a = time_generate(fp, prompts, args.new_tokens)
                    tf.append(t)
                else:
                    t, c = time_generate(q, prompts, args.new_tokens)
                    tq.append(t)
            agree.append(
                sum(x == y for ra, rc in zip(a, c, strict=True) for x, y in zip(ra, rc, strict=True))
                / (b * args.new_tokens)
            )
        tok = b * args.new_tokens
        r = {
            "float_tokens_per_s": tok / min(tf),
            "int8_tokens_per_s": tok / min(tq),
            "float_ms_per_step": 1000 * min(tf) / args.new_tokens,
            "int8_ms_per_step": 1000 * min(tq) / args.new_tokens,
            "speedup": min(tf) / min(tq),
            "speedup_median": statistics.median(tf) / statistics.median(tq),
            "speedup_paired_median": statistics.median([f / x for f, x in zip(tf, tq, strict=True)]),
            "greedy_token_agreement": agree[-1],
        }
        results[f"batch_{b}"] = r
        print(
            f"  batch {b}: float {r['float_tokens_per_s']:,.0f} new tokens/s ({r['float_ms_per_step']:.2f} ms/step), "
            f"int8 {r['int8_tokens_per_s']:,.0f} ({r['int8_ms_per_step']:.2f} ms/step); int8/float "
            f"{r['speedup']:.2f}x (medians {r['speedup_median']:.2f}x, per round {r['speedup_paired_median']:.2f}x); "
            f"greedy tokens equal to float's: {100 * r['greedy_token_agreement']:.0f} %"
        )
    return results


def sizes(fp, q) -> dict:
    import mmcore

    with tempfile.TemporaryDirectory() as d:
        mmcore.save(fp, Path(d) / "float")
        mmcore.save(q, Path(d) / "int8")
        f = (Path(d) / "float" / "model.safetensors").stat().st_size
        i = (Path(d) / "int8" / "model.safetensors").stat().st_size
    print(f"  model.safetensors: float {f / 1e6:.2f} MB, int8 {i / 1e6:.2f} MB ({f / i:.2f}x smaller)")
    return {"float_bytes": f, "int8_bytes": i, "ratio": f / i}


def eval_dirs(model_dir: str, data: str, task: str | None, out: dict, key: str) -> None:
    import mmcore
    from mmcore.evaluate import evaluate_dir
    from mmcore.quantize import quantize

    with tempfile.TemporaryDirectory() as d:
        qdir = Path(d) / "int8"
        t0 = time.perf_counter()
        q = quantize(mmcore.load(model_dir))
        mmcore.save(q, qdir)
        f = evaluate_dir(model_dir, data, task=task, generate=False)
        i = evaluate_dir(qdir, data, task=task, generate=False)
        size_f = (Path(model_dir) / "model.safetensors").stat().st_size
        size_i = (qdir / "model.safetensors").stat().st_size
    f, i = f.get("metrics", f), i.get("metrics", i)
    keys = [k for k in f if isinstance(f[k], (int, float)) and k in i]
    out[key] = {"float": f, "int8": i, "float_bytes": size_f, "int8_bytes": size_i, "seconds": time.perf_counter() - t0}
    print(f"  {key}: " + ", ".join(f"{k} {f[k]:.4g} -> {i[k]:.4g}" for k in keys))
    print(f"    model.safetensors {size_f / 1e6:.2f} MB -> {size_i / 1e6:.2f} MB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int)
    p.add_argument("--eval-lm", help="a trained language model directory (e.g. runs/stdlib_lm)")
    p.add_argument("--eval-data", help="its held-out text (e.g. examples/data/stdlib/corpus_eval.txt)")
    p.add_argument("--eval-task", action="append", default=[], metavar="DIR:TASK=FILE")
    p.add_argument("--skip-decode", action="store_true")
    p.add_argument("--json", help="also write the figures (and the threads, load average, torch) to this file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from mmcore.quantize import quantize

    results: dict = {}
    load_before = os.getloadavg()[0]
    print(
        f"int8 vs float32 on CPU, {torch.get_num_threads()} threads ({os.cpu_count()} cores, load {load_before:.1f}), "
        f"torch {torch.__version__} (quantized engine {torch.backends.quantized.engine}), {platform.machine()}"
    )
    if not args.skip_decode:
        fp = build_model(args)
        q = quantize(copy.deepcopy(fp))
        print(f"decoding: width {args.width}, {args.layers} layers, prompt {args.prompt}, {args.new_tokens} new tokens")
        results["size"] = sizes(fp, q)
        results["decode"] = decode(args, fp, q)
    if args.eval_lm:
        if not args.eval_data:
            p.error("--eval-lm needs --eval-data")
        eval_dirs(args.eval_lm, args.eval_data, None, results, f"eval {args.eval_lm}")
    for item in args.eval_task:
        d, _, rest = item.partition(":")
        task, _, data = rest.partition("=")
        eval_dirs(d, data, task or None, results, f"eval {d} {task}")
    load_after = os.getloadavg()[0]
    print(f"  load average {load_before:.1f} before, {load_after:.1f} after")
    if args.json:
        from mmcore import atomic_write_text

        environment = {
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "load_average_before": round(load_before, 2),
            "load_average_after": round(load_after, 2),
            "torch": torch.__version__,
            "quantized_engine": torch.backends.quantized.engine,
            "machine": platform.machine(),
        }
        atomic_write_text(
            args.json, json.dumps({"args": vars(args), "environment": environment, "results": results}, indent=2)
        )


if __name__ == "__main__":
    main()
