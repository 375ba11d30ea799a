"""Training-step throughput: mmcore vs a plain PyTorch GPT vs transformers' GPT-2, side by side.

One process, same sizes, same data, same optimizer (AdamW), float32 on CPU by default.
transformers' GPT-2 runs twice: with GPT-2's own configuration (dropout 0.1 on embeddings,
attention and residuals) and with dropout off, like mmcore and the plain reference here.
The models take turns, round after round, so drifts in machine speed hit all of
them alike; the figure per model is the median over rounds.

    python bench/train_throughput.py                 # width 256, 4 layers, 4 heads, ctx 256, batch 8
    python bench/train_throughput.py --rounds 10 --steps 5 --json out.json
    python bench/train_throughput.py --compile       # adds mmcore under torch.compile (training.compile)
    python bench/train_throughput.py --fused         # every model with the fused AdamW (mmcore's trainer default)
    python bench/train_throughput.py --bf16          # adds mmcore and transformers under bf16 autocast (not float32)

Not a test: prints tokens/s for each model and the ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

# --- the no-framework reference: a GPT written out plainly ----------------------------


class PlainBlock(nn.Module):
    def __init__(self, d: int, h: int):
        super().__init__()
        self.h = h
        self.ln_1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(D, dim=2)
        q, k, v = (t.view(B, T, self.h, D // self.h).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, D))
        return x + self.out(F.gelu(self.fc(self.ln_2(x))))


class PlainGPT(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int, ctx: int):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(PlainBlock(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for b in self.blocks:
            x = b(x)
        logits = self.ln_f(x) @ self.wte.weight.T
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1))


# --- the three contenders ----------------------------------------------------------------


def make_mmcore(args: argparse.Namespace):
    import mmcore

    spec = {
        "spec_version": 1,
        "name": "bench",
        "backbone": {
            "width": args.width,
            "depth": args.layers,
            "heads": args.heads,
            "context_length": args.ctx,
            "dropout": 0.0,
        },
        "encoders": {"text": {"component": "text.bytes", "max_length": args.ctx}},
        "heads": {"lm": {"component": "lm", "tie": True}},
    }
    model = mmcore.build(spec)
    vocab = model.encoders["text"].vocab_size

    def step_loss(ids: torch.Tensor) -> torch.Tensor:
        mask = torch.ones_like(ids, dtype=torch.bool)
        return model(mmcore.Batch({"text": {"ids": ids, "mask": mask}})).loss

    return model, step_loss, vocab


def mmcore_batch(inputs: dict) -> object:
    import mmcore

    return mmcore.Batch(inputs)


def make_plain(args: argparse.Namespace, vocab: int):
    model = PlainGPT(vocab, args.width, args.layers, args.heads, args.ctx)
    return model, model


def make_hf(args: argparse.Namespace, vocab: int, dropout: float | None):
    """GPT-2 with the same sizes; ``dropout=None`` keeps GPT-2's own default (0.1)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    drop = {} if dropout is None else {"resid_pdrop": dropout, "embd_pdrop": dropout, "attn_pdrop": dropout}
    cfg = GPT2Config(
        vocab_size=vocab,
        n_embd=args.width,
        n_layer=args.layers,
        n_head=args.heads,
        n_positions=args.ctx,
        bos_token_id=None,
        eos_token_id=None,
        loss_type="ForCausalLM",
        **drop,
    )
    model = GPT2LMHeadModel(cfg)

    def step_loss(ids: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids, labels=ids).loss

    return model, step_loss


def _autocast_bf16(loss_fn):
    """The same model's loss under CPU bf16 autocast: matrix products in bfloat16, weights float32."""

    def step_loss(ids: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return loss_fn(ids)

    return step_loss


def timed_steps(model: nn.Module, loss_fn, opt: torch.optim.Optimizer, data: list[torch.Tensor]) -> float:
    t0 = time.perf_counter()
    for ids in data:
        loss = loss_fn(ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ctx", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=4, help="training steps per model per round")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--compile", action="store_true", help="add mmcore compiled with torch.compile (inductor)")
    p.add_argument("--fused", action="store_true", help="fused AdamW for every model (default: multi-tensor)")
    p.add_argument(
        "--bf16",
        action="store_true",
        help="add mmcore and transformers GPT-2 under bf16 autocast (training.precision = 'bf16'); the targets "
        "stay float32",
    )
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    mm_model, mm_loss, vocab = make_mmcore(args)
    plain_model, plain_loss = make_plain(args, vocab)
    contenders = {
        "mmcore": (mm_model, mm_loss),
        "plain PyTorch": (plain_model, plain_loss),
        "transformers GPT-2": make_hf(args, vocab, None),
        "transformers, no dropout": make_hf(args, vocab, 0.0),
    }
    if args.compile:
        import copy

        compiled_model = copy.deepcopy(mm_model)
        compiled_fwd = torch.compile(compiled_model)

        def compiled_loss(ids: torch.Tensor) -> torch.Tensor:
            mask = torch.ones_like(ids, dtype=torch.bool)
            return compiled_fwd(mmcore_batch({"text": {"ids": ids, "mask": mask}})).loss

        contenders["mmcore, compiled"] = (compiled_model, compiled_loss)
    if args.bf16:
        for name in ("mmcore", "transformers GPT-2"):
            model, fn = contenders[name]  # the same modules (own optimizer): only the arithmetic differs
            contenders[f"{name}, bf16 autocast"] = (model, _autocast_bf16(fn))
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=args.fused) for k, (m, _) in contenders.items()}
    for m, _ in contenders.values():
        m.train()
    data = [torch.randint(0, vocab, (args.batch, args.ctx)) for _ in range(args.steps)]
    for name, (m, fn) in contenders.items():
        timed_steps(m, fn, opts[name], data[: args.warmup])
    secs: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(args.rounds):
        for name, (m, fn) in contenders.items():
            secs[name].append(timed_steps(m, fn, opts[name], data))
    tokens = args.batch * args.ctx * args.steps
    # The best round is the primary figure (as timeit does: interference only ever slows a
    # round down); the median is printed beside it.
    tps = {k: tokens / min(v) for k, v in secs.items()}
    tps_median = {k: tokens / statistics.median(v) for k, v in secs.items()}
    params = {k: sum(p.numel() for p in m.parameters()) for k, (m, _) in contenders.items()}

    print(
        f"training step (forward + backward + AdamW), float32, CPU, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {platform.machine()}"
    )
    print(
        f"width {args.width}, {args.layers} layers, {args.heads} heads, context {args.ctx}, batch {args.batch}, "
        f"vocab {vocab}; best (median) of {args.rounds} rounds x {args.steps} steps"
    )
    for k, v in tps.items():
        spread = (max(secs[k]) - min(secs[k])) / statistics.median(secs[k])
        print(
            f"  {k:<34} {v:>8,.0f} ({tps_median[k]:>6,.0f}) tokens/s   ({params[k]:,} parameters, "
            f"round spread {spread:.0%})"
        )
    r_plain = tps["mmcore"] / tps["plain PyTorch"]
    r_hf = tps["mmcore"] / tps["transformers GPT-2"]
    r_hf0 = tps["mmcore"] / tps["transformers, no dropout"]
    med = {
        k: tps_median["mmcore"] / tps_median[o]
        for k, o in (("plain", "plain PyTorch"), ("hf", "transformers GPT-2"), ("hf0", "transformers, no dropout"))
    }
    print(f"  mmcore / plain PyTorch                 = {r_plain:.3f} (median {med['plain']:.3f})  (target >= 0.97)")
    print(f"  mmcore / transformers GPT-2 (defaults) = {r_hf:.3f} (median {med['hf']:.3f})  (target >= 1.7)")
    print(f"  mmcore / transformers, no dropout      = {r_hf0:.3f} (median {med['hf0']:.3f})  (like for like)")
    print(f"  plain / transformers GPT-2 (defaults)  = {tps['plain PyTorch'] / tps['transformers GPT-2']:.3f}")
    if args.compile:
        r_c = tps["mmcore, compiled"] / tps["transformers GPT-2"]
        med["compiled_hf"] = tps_median["mmcore, compiled"] / tps_median["transformers GPT-2"]
        med["compiled_plain"] = tps_median["mmcore, compiled"] / tps_median["plain PyTorch"]
        print(f"  mmcore compiled / transformers GPT-2   = {r_c:.3f} (median {med['compiled_hf']:.3f})")
        print(f"  mmcore compiled / plain PyTorch        = {tps['mmcore, compiled'] / tps['plain PyTorch']:.3f}")
    if args.bf16:
        for name in ("mmcore", "transformers GPT-2"):
            key = f"{name}, bf16 autocast"
            med[f"{name}_bf16_over_fp32"] = tps_median[key] / tps_median[name]
            print(
                f"  {key + ' / float32':<38} = {tps[key] / tps[name]:.3f} (median {med[f'{name}_bf16_over_fp32']:.3f})"
            )
        med["bf16_mmcore_over_hf"] = (
            tps_median["mmcore, bf16 autocast"] / tps_median["transformers GPT-2, bf16 autocast"]
        )
        print(
            f"  mmcore / transformers, both bf16       = "
            f"{tps['mmcore, bf16 autocast'] / tps['transformers GPT-2, bf16 autocast']:.3f} "
            f"(median {med['bf16_mmcore_over_hf']:.3f})"
        )
    if args.json:
        from mmcore import atomic_write_text

        result = {
            "tokens_per_s": tps,
            "ratio_vs_plain": r_plain,
            "ratio_vs_hf": r_hf,
            "ratio_vs_hf_nodrop": r_hf0,
            "median_ratios": med,
            "tokens_per_s_median": tps_median,
            "args": vars(args),
            "params": params,
        }
        atomic_write_text(args.json, json.dumps(result, indent=2))
    assert all(math.isfinite(v) for v in tps.values())


if __name__ == "__main__":
    main()
