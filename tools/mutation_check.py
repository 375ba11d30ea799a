"""Mutation check: break each checked feature on purpose and confirm a test catches it.

Each patch below is a one-line change to the code (a feature broken as a reviewer would
break it). The script copies the tree (tracked and untracked files that git does not ignore)
into a temporary folder, applies one patch at a time to that copy, runs the tests named for
it with the copy first on ``PYTHONPATH`` (so ``mmcore`` is imported from the copy, in the
tests and in the processes they start), and prints a table: patch -> the first test that
failed. The working tree itself is never modified, so an interrupted run leaves nothing
patched. Exit status 1 when a patch is not caught (or does not apply), or when the tests
fail before any patch (the baseline).

    .venv/bin/python tools/mutation_check.py            # every patch (about 10 minutes on 2 cores)
    .venv/bin/python tools/mutation_check.py beam_rank  # only the named patches
    .venv/bin/python tools/mutation_check.py --list
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Patch:
    name: str
    what: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


GEN = ("tests/test_generation.py",)
GPT2 = ("tests/test_gpt2_parity.py::test_generate_on_a_left_padded_batch_matches_transformers",)
TORCHRUN = ("tests/test_training.py::test_torchrun_two_processes_match_one_process",)
RESUME = ("tests/test_faults.py::test_sigkill_between_checkpoints_resumes_every_piece_of_state",)
FSDP = ("tests/test_fsdp.py::test_fsdp_sharded_checkpoint_sigkill_resume_and_consolidate",)
LLAMA = ("tests/test_llama_parity.py",)

PATCHES = [
    # --- beam search (issue 15, item 1)
    Patch(
        "beam_no_reorder",
        "beam search: the KV cache is not reordered with the beams",
        "mmcore/generation.py",
        "            runner.reorder(src)\n",
        "            pass  # runner.reorder(src)\n",
        GEN,
    ),
    Patch(
        "beam_reversed",
        "beam search: hypotheses returned in reverse order",
        "mmcore/generation.py",
        "        out += [h for _, h in pool[: cfg.num_return_sequences]]\n",
        "        out += [h for _, h in pool[: cfg.num_return_sequences]][::-1]\n",
        GEN,
    ),
    Patch(
        "beam_rank",
        "beam search: ranking inverted",
        "mmcore/generation.py",
        "        pool.sort(key=lambda p: p[0], reverse=True)\n",
        "        pool.sort(key=lambda p: p[0], reverse=False)\n",
        GEN,
    ),
    # --- the decode step (items 2, 3)
    Patch(
        "decode_no_cache",
        "decode step: attends only to the new token, ignoring every cached key",
        "mmcore/decode.py",
        "        y = F.scaled_dot_product_attention(q, k_all[i], v_all[i], attn_mask=attn_bias, enable_gqa=gqa)",
        "        y = F.scaled_dot_product_attention(q, k_new[i], v_new[i], enable_gqa=gqa)",
        GEN + GPT2 + LLAMA,
    ),
    Patch(
        "decode_pos_padded",
        "decode step: positions off by one (left-padded batch)",
        "mmcore/decode.py",
        "        pos = key_mask[:, :past].sum(-1)  # (B,)",
        "        pos = key_mask[:, :past].sum(-1) + 1  # (B,)",
        GEN + GPT2,
    ),
    Patch(
        "decode_pos_unpadded",
        "decode step: positions off by one (no padding)",
        "mmcore/decode.py",
        "        pos, attn_bias = past, None",
        "        pos, attn_bias = past + 1, None",
        GEN + GPT2,
    ),
    Patch(
        "decode_attends_padding",
        "decode step: attends to the padding of a left-padded prompt",
        "mmcore/decode.py",
        '        attn_bias = torch.where(key_mask[:, None, None, :Lk], 0.0, float("-inf")).to(x.dtype)',
        "        attn_bias = None",
        GEN + GPT2,
    ),
    # --- torchrun (item 4)
    Patch(
        "torchrun_no_group",
        "torchrun: _init_distributed does nothing (each process trains alone on the whole batch)",
        "mmcore/trainer_dist.py",
        '    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():',
        "    if False:",
        TORCHRUN,
    ),
    Patch(
        "torchrun_same_half",
        "torchrun: every process takes the first half of the global batch",
        "mmcore/loader.py",
        "        return self.global_indices(k)[self.rank * per : (self.rank + 1) * per]",
        "        return self.global_indices(k)[:per]",
        TORCHRUN,
    ),
    # --- resume (item 5)
    Patch(
        "resume_off",
        "resume: the rerun starts over instead of resuming",
        "mmcore/trainer.py",
        "        if self.resume and (ck := self._checkpoint_dir()) is not None:",
        "        if False and (ck := self._checkpoint_dir()) is not None:",
        RESUME,
    ),
    Patch(
        "resume_no_rng",
        "resume: the torch RNG (dropout) is not restored",
        "mmcore/trainer_checkpoints.py",
        '            torch.set_rng_state(tensors.pop("rng.torch"))',
        '            tensors.pop("rng.torch")',
        RESUME,
    ),
    Patch(
        "resume_no_optimizer",
        "resume: the optimizer state is not restored",
        "mmcore/trainer_checkpoints.py",
        '            self.optimizer.load_state_dict(_unflatten_optimizer(tensors, state["optimizer"]))',
        "            pass",
        RESUME,
    ),
    Patch(
        "resume_no_data_position",
        "resume: the tasks' data positions are not restored",
        "mmcore/trainer_checkpoints.py",
        '                self.tasks[n].consumed, self.tasks[n].bad = int(t["consumed"]), int(t["bad"])',
        '                self.tasks[n].bad = int(t["bad"])',
        RESUME,
    ),
    # --- FSDP2 (item 6)
    Patch(
        "fsdp_unsharded_save",
        "FSDP2: checkpoints through the unsharded path (the crash on sharded optimizer state)",
        "mmcore/trainer_checkpoints.py",
        "        if self._sharded():\n            return self._save_sharded_checkpoint()",
        "        if False:\n            return self._save_sharded_checkpoint()",
        FSDP,
    ),
    Patch(
        "fsdp_no_shard_load",
        "FSDP2: resuming does not read the shards (weights and optimizer state stay as initialised)",
        "mmcore/sharded.py",
        "    dcp.load(state, checkpoint_id=str(directory / SHARDED))",
        "    pass",
        FSDP,
    ),
    Patch(
        "fsdp_no_rng",
        "FSDP2: resuming does not restore each process's random generator (dropout)",
        "mmcore/sharded.py",
        '    torch.set_rng_state(rng["rng.torch"])',
        "    pass",
        ("tests/test_fsdp.py::test_fsdp_resume_with_dropout_matches_an_uninterrupted_fsdp_run",),
    ),
    # --- the kit's device check (item 8)
    Patch(
        "kit_device_skipped",
        "kit: the device check is skipped without a GPU",
        "mmcore/testing/checks.py",
        "        if not torch.cuda.is_available():\n            self._check_meta_device()\n            return",
        '        if not torch.cuda.is_available():\n            raise _Skip("no CUDA device here")',
        ("tests/test_conformance.py::test_a_tensor_made_on_a_fixed_device_is_reported",),
    ),
    # --- plugins (item 9)
    Patch(
        "strict_env_ignored",
        "plugins: MMCORE_STRICT_PLUGINS is ignored",
        "mmcore/plugins.py",
        "        self.strict = _env_flag(ENV_STRICT) if strict is None else strict",
        "        self.strict = False if strict is None else strict",
        ("tests/test_plugins.py::test_strict_plugins_through_the_environment_variable",),
    ),
    # --- the LLaMA family (issue 19): grouped-query attention, rotary layout and scaling, biases
    Patch(
        "rope_interleaved",
        "rotary: every checkpoint read in the interleaved layout instead of rotate-half",
        "mmcore/blocks.py",
        '        self.interleaved = config.rope_layout == "interleaved"\n',
        "        self.interleaved = True\n",
        LLAMA,
    ),
    Patch(
        "gqa_tiled",
        "grouped-query attention: key/value heads tiled (h % KV) instead of grouped (h // group)",
        "mmcore/blocks.py",
        "        if cache is not None:\n            k, v = cache.update(layer, k, v)  # (B, KV, Lk, hd) each\n",
        "        if cache is not None:\n            k, v = cache.update(layer, k, v)  # (B, KV, Lk, hd) each\n"
        "        g = self.heads // self.kv_heads\n        k, v = k.repeat(1, g, 1, 1), v.repeat(1, g, 1, 1)\n",
        LLAMA,
    ),
    Patch(
        "qkv_bias_dropped",
        "Qwen2: the decode step leaves out the q/k/v bias",
        "mmcore/decode.py",
        "        qkv = _linear(h, p.qkv_wt, p.qkv_b).view(B, 1, -1)  # [q; k; v]\n",
        "        qkv = _linear(h, p.qkv_wt, None).view(B, 1, -1)  # [q; k; v]\n",
        LLAMA,
    ),
    Patch(
        "llama3_scaling_ignored",
        "rotary: llama3 frequency scaling not applied",
        "mmcore/blocks.py",
        "        if sc is None:\n            return inv_freq\n",
        "        if sc is None or sc.type == 'llama3':\n            return inv_freq\n",
        LLAMA,
    ),
    Patch(
        "decode_rope_layout",
        "decode step: the interleaved rotary layout read as rotate-half",
        "mmcore/decode.py",
        "kv_heads=KV, interleaved=plan.interleaved)",
        "kv_heads=KV, interleaved=False)",
        ("tests/test_decode_fast.py::test_step_equals_general_path_for_the_llama_family_options",),
    ),
    Patch(
        "explain_gqa_tiled",
        "explain: key heads tiled instead of grouped when recording attention maps",
        "mmcore/explain.py",
        "k = k.repeat_interleave(group, dim=1)",
        "k = k.repeat(1, group, 1, 1)",
        (
            "tests/test_llama_parity.py::test_explanations_attention_maps_equal_transformers_with_grouped_query_attention",
        ),
    ),
    Patch(
        "hf_gate_up_swapped",
        "hf loading: the SwiGLU gate and up projections concatenated in the wrong order",
        "mmcore/hf.py",
        '    "mlp.fc": ("mlp.gate_proj", "mlp.up_proj"),\n',
        '    "mlp.fc": ("mlp.up_proj", "mlp.gate_proj"),\n',
        LLAMA,
    ),
    Patch(
        "hf_spec_check_skipped",
        "hf loading: config.json is not compared with the spec's kv_heads",
        "mmcore/hf.py",
        '            "kv_heads",\n',
        "",
        LLAMA,
    ),
]


def copy_tree(dst: Path) -> None:
    """Tracked and untracked files that git does not ignore (no .venv, no build outputs)."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in files:
        if not raw:
            continue
        rel = raw.decode()
        src = ROOT / rel
        if not src.is_file():  # deleted but still in the index
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst / rel)


def run_tests(tree: Path, tests: tuple[str, ...], timeout: float) -> tuple[int, str, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])}
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, "timed out", time.perf_counter() - t0
    return res.returncode, res.stdout + res.stderr, time.perf_counter() - t0


def first_failure(output: str) -> str:
    m = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.M)
    return m.group(1) if m else "(no test named; see the output)"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="patches to apply (default: all)")
    ap.add_argument("--list", action="store_true", help="list the patches and exit")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unpatched run of the tests")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per test run")
    args = ap.parse_args(argv)
    if args.list:
        for p in PATCHES:
            print(f"{p.name:24} {p.path:24} {p.what}")
        return 0
    unknown = set(args.names) - {p.name for p in PATCHES}
    if unknown:
        ap.error(f"unknown patches {sorted(unknown)}; --list shows them")
    chosen = [p for p in PATCHES if not args.names or p.name in args.names]
    rows: list[tuple[str, str, str, float]] = []
    ok = True
    with tempfile.TemporaryDirectory(prefix="mmcore-mutation-") as tmp:
        tree = Path(tmp) / "tree"
        copy_tree(tree)
        probe = subprocess.run(
            [sys.executable, "-c", "import mmcore; print(mmcore.__file__)"],
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree)},
            capture_output=True,
            text=True,
        )
        if not probe.stdout.strip().startswith(str(tree)):
            print(f"the copy's mmcore is not the one imported ({probe.stdout.strip() or probe.stderr.strip()})")
            return 1
        if not args.no_baseline:
            tests = tuple(dict.fromkeys(t for p in chosen for t in p.tests))
            rc, out, secs = run_tests(tree, tests, args.timeout * 3)
            print(f"baseline (no patch): {'passed' if rc == 0 else 'FAILED'} in {secs:.0f} s", flush=True)
            if rc != 0:
                print(out[-4000:])
                return 1
        for p in chosen:
            target = tree / p.path
            original = target.read_text(encoding="utf-8")
            if original.count(p.old) != 1:
                rows.append((p.name, p.what, f"PATCH DOES NOT APPLY ({original.count(p.old)} matches)", 0.0))
                ok = False
                continue
            target.write_text(original.replace(p.old, p.new), encoding="utf-8")
            try:
                rc, out, secs = run_tests(tree, p.tests, args.timeout)
            finally:
                target.write_text(original, encoding="utf-8")
            caught = rc not in (0, 5) and rc != -1
            rows.append((p.name, p.what, first_failure(out) if caught else "NOT CAUGHT", secs))
            ok = ok and caught
            print(f"{p.name}: {rows[-1][2]} ({secs:.0f} s)", flush=True)
    print()
    print("| patch | what it breaks | first failing test |")
    print("|---|---|---|")
    for name, what, test, _ in rows:
        print(f"| `{name}` | {what} | `{test}` |")
    print(f"\n{sum(r[2] not in ('NOT CAUGHT',) and not r[2].startswith('PATCH') for r in rows)} of {len(rows)} caught")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
