"""Greedy decoding speed: mmcore's generate() vs transformers' generate(), side by side.

Both run the same GPT-2 configuration with the same random weights (a transformers
GPT2LMHeadModel is initialised, and its weights are loaded into the mmcore model), on CPU,
float32, greedy, a fixed number of new tokens (no early stop). The two also produce the
same tokens, which the script checks.

    python bench/decode.py                      # width 256, 4 layers, batch 1 and 8
    python bench/decode.py --new-tokens 128 --rounds 5 --json out.json
    python bench/decode.py --threads 1          # steadier on a shared machine

Method: per batch size, one untimed full-length run of each (warm-up), then ``--rounds``
rounds that each time both, back to back; the order alternates between rounds, so a slow
spell of the machine does not always hit the same side. Reported: the best round of each
(ms per step = time / new tokens, prompt included) and their ratio, the ratio of the medians,
and the median of the per-round ratios (each round's two runs see about the same machine: the
steadiest figure when the load changes). The load average is printed before and after: on a
busy machine (load near or above the core count) the figures are noisy, with more threads
more so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch


def build_pair(args: argparse.Namespace):
    from transformers import GPT2Config, GPT2LMHeadModel

    import mmcore
    from mmcore.gpt2 import hf_to_mmcore

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=264,
        n_embd=args.width,
        n_layer=args.layers,
        n_head=args.heads,
        n_positions=args.ctx,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=256,
    )
    hf = GPT2LMHeadModel(cfg).eval()
    model = mmcore.build(
        {
            "spec_version": 1,
            "name": "decode-bench",
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
    state = hf_to_mmcore(hf.state_dict(), prefix="backbone.")
    state["encoders.text.token_embedding.weight"] = state.pop("backbone.wte.weight")
    state.pop("lm_head.weight", None)  # tied: the same tensor as the embedding
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("fusion.") for k in missing), (missing, unexpected)
    return model, hf


def time_mmcore(model, prompts: torch.Tensor, new: int) -> tuple[float, list[list[int]]]:
    import mmcore
    from mmcore.generation import GenerationConfig

    ids = prompts
    batch = mmcore.Batch({"text": {"ids": ids, "mask": torch.ones_like(ids, dtype=torch.bool)}})
    cfg = GenerationConfig(max_new_tokens=new, eos_id=-1)
    t0 = time.perf_counter()
    out = mmcore.generate(model, batch, cfg)
    return time.perf_counter() - t0, out


def time_hf(hf, prompts: torch.Tensor, new: int) -> tuple[float, list[list[int]]]:
    t0 = time.perf_counter()
    with torch.no_grad():
        out = hf.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=256,
        )
    return time.perf_counter() - t0, out[:, prompts.shape[1] :].tolist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, help="torch threads for both (default: torch's default)")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, hf = build_pair(args)
    results = {}
    load_before = os.getloadavg()[0]
    print(
        f"greedy decoding, float32, CPU, {torch.get_num_threads()} threads ({os.cpu_count()} cores, load "
        f"{load_before:.1f}), torch {torch.__version__}, {platform.machine()}; width {args.width}, "
        f"{args.layers} layers, prompt {args.prompt}, {args.new_tokens} new tokens; best (median) of "
        f"{args.rounds} rounds"
    )
    for b in [int(x) for x in args.batches.split(",")]:
        g = torch.Generator().manual_seed(b)
        prompts = torch.randint(0, 256, (b, args.prompt), generator=g)
        time_mmcore(model, prompts, args.new_tokens)  # warm-up, full length
        time_hf(hf, prompts, args.new_tokens)
        mm, hft = [], []
        same = True
        for r in range(args.rounds):
            for side in ("mmcore", "hf") if r % 2 == 0 else ("hf", "mmcore"):
                if side == "mmcore":
                    t, ours = time_mmcore(model, prompts, args.new_tokens)
                    mm.append(t)
                else:
                    t, theirs = time_hf(hf, prompts, args.new_tokens)
                    hft.append(t)
            same = same and ours == theirs
        tok = b * args.new_tokens
        r = {
            "mmcore_tokens_per_s": tok / min(mm),
            "transformers_tokens_per_s": tok / min(hft),
            "mmcore_ms_per_step": 1000 * min(mm) / args.new_tokens,
            "transformers_ms_per_step": 1000 * min(hft) / args.new_tokens,
            "ratio": min(hft) / min(mm),
            "ratio_median": statistics.median(hft) / statistics.median(mm),
            "ratio_paired_median": statistics.median([h / m for h, m in zip(hft, mm, strict=True)]),
            "same_tokens": same,
            "mmcore_ms_per_step_rounds": [1000 * t / args.new_tokens for t in mm],
            "transformers_ms_per_step_rounds": [1000 * t / args.new_tokens for t in hft],
        }
        results[f"batch_{b}"] = r
        print(
            f"  batch {b}: mmcore {r['mmcore_tokens_per_s']:,.0f} new tokens/s ({r['mmcore_ms_per_step']:.2f} ms/step), "
            f"transformers {r['transformers_tokens_per_s']:,.0f} ({r['transformers_ms_per_step']:.2f} ms/step); "
            f"ratio {r['ratio']:.2f}x (medians {r['ratio_median']:.2f}x, per round {r['ratio_paired_median']:.2f}x); "
            f"identical tokens: {same}"
        )
    load_after = os.getloadavg()[0]
    print(f"  load average {load_before:.1f} before, {load_after:.1f} after")
    if args.json:
        machine = {"threads": torch.get_num_threads(), "cores": os.cpu_count(), "load": [load_before, load_after]}
        from mmcore import atomic_write_text

        result = {"args": vars(args), "machine": machine, "results": results}
        atomic_write_text(args.json, json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
