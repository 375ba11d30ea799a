"""Hugging Face Llama-family folders in and out of the backbone: ``LlamaForCausalLM``,
``Qwen2ForCausalLM`` and ``MistralForCausalLM``.

A folder holds ``config.json`` and ``model.safetensors``, or shards
``model-0000N-of-0000M.safetensors`` listed in ``model.safetensors.index.json``. Its keys and
their backbone counterparts (``N`` a layer)::

    model.embed_tokens.weight                        the text embedding (wte of a bare backbone)
    model.layers.N.input_layernorm.weight            blocks.N.ln_1.weight
    model.layers.N.self_attn.{q,k,v}_proj.*          blocks.N.attn.qkv.*    ([q; k; v] concatenated)
    model.layers.N.self_attn.o_proj.*                blocks.N.attn.proj.*
    model.layers.N.post_attention_layernorm.weight   blocks.N.ln_2.weight
    model.layers.N.mlp.{gate,up}_proj.weight         blocks.N.mlp.fc.weight ([gate; up] concatenated)
    model.layers.N.mlp.down_proj.weight              blocks.N.mlp.proj.weight
    model.norm.weight                                ln_f.weight
    lm_head.weight                                   the LM head (absent or ignored when tied)

``nn.Linear`` weights are ``(out, in)`` on both sides, so nothing is transposed. The rotary
layout of these checkpoints is "rotate half" (``rope_layout = "half"``, the default).

:func:`config_from_hf` reads ``config.json`` (older ``rope_theta``/``rope_scaling`` keys and
transformers 5's ``rope_parameters`` alike); anything the backbone cannot represent (another
activation, a rope type other than default/linear/llama3, a sliding window shorter than the
context, per-head sizes that are not ``hidden_size / num_attention_heads``) is refused, named.

Two ways in: :func:`load_hf_dir` gives a bare :class:`~mmcore.backbone.GPT` with ``wte`` (what
the parity tests compare); a spec's ``[backbone] weights_from = {path = DIR, format = "hf"}``
fills a composed model (:func:`plan_hf`, run by the builder's checks: headers only, every
mismatch with the spec listed, then one tensor at a time). Out: :func:`save_hf_dir` and
:func:`export_hf`. Only safetensors files are read or written.

About 630 lines, one file on purpose: the key table, the config conversion and the ways in and
out (bare backbone, composed model, export) change together when a family is added.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .backbone import GPT
from .config import BackboneConfig, RopeScaling, WeightsSource
from .io import atomic_write_text, write_safetensors
from .weights import WeightsPlan, folder_tensors, part_keys, read_pieces

__all__ = [
    "FAMILIES",
    "config_from_hf",
    "config_to_hf",
    "hf_names",
    "backbone_spec_toml",
    "load_hf_dir",
    "save_hf_dir",
    "export_hf",
    "plan_hf",
]

#: model_type -> the architecture class name its config.json names.
FAMILIES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
EMBED = "model.embed_tokens.weight"
EMBEDDING = "token_embedding.weight"  # a text encoder's token table (the Encoder contract)
LM_HEAD = "lm_head.weight"
_BLOCK = {  # backbone module in a block -> the HF modules concatenated into it, in order
    "ln_1": ("input_layernorm",),
    "attn.qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "attn.proj": ("self_attn.o_proj",),
    "ln_2": ("post_attention_layernorm",),
    "mlp.fc": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp.proj": ("mlp.down_proj",),
}
_ROPE_TYPES = ("default", "linear", "llama3")


# -----------------------------------------------------------------------------
# config.json


def _rope(cfg: Mapping[str, Any]) -> tuple[float, RopeScaling | None]:
    """``(rope_base, rope_scaling)`` from a config: ``rope_parameters`` (transformers 5) or the
    older ``rope_theta`` and ``rope_scaling``."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    base = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    merged = {**scaling, **params}
    kind = merged.get("rope_type", merged.get("type", "default"))
    if kind not in _ROPE_TYPES:
        raise ValueError(
            f"rope scaling type {kind!r} is not supported by the backbone; supported: {', '.join(_ROPE_TYPES)}"
        )
    if kind == "default":
        return base, None
    if kind == "linear":
        return base, RopeScaling(type="linear", factor=float(merged["factor"]))
    return base, RopeScaling(
        type="llama3",
        factor=float(merged["factor"]),
        low_freq_factor=float(merged.get("low_freq_factor", 1.0)),
        high_freq_factor=float(merged.get("high_freq_factor", 4.0)),
        original_context_length=int(merged.get("original_max_position_embeddings", 8192)),
    )


def config_from_hf(
    hf_config: Mapping[str, Any], *, context_length: int | None = None
) -> tuple[BackboneConfig, int, bool]:
    """A Llama/Qwen2/Mistral ``config.json`` (as a dict) -> ``(BackboneConfig, vocab_size, tied)``.

    ``context_length`` defaults to ``max_position_embeddings``; a smaller one is fine (a shorter
    rotary table and cache), a larger one is refused. Dropout is 0.

    Raises:
        ValueError: what the backbone cannot represent, every item named.
    """
    cfg = dict(hf_config)
    model_type = cfg.get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(
            f"config.json has model_type {model_type!r}; format = 'hf' reads {', '.join(sorted(FAMILIES))} "
            "(GPT-2 folders: format = 'gpt2')"
        )
    width, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    max_pos = int(cfg.get("max_position_embeddings", 2048))
    problems = []
    if cfg.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act = {cfg['hidden_act']!r} (the backbone's SwiGLU uses 'silu')")
    head_dim = cfg.get("head_dim")
    if head_dim is not None and int(head_dim) * heads != width:
        problems.append(f"head_dim = {head_dim} (the backbone's head size is hidden_size / num_attention_heads)")
    if cfg.get("mlp_bias"):
        problems.append("mlp_bias = true (the backbone's feed-forward has a bias only with bias = true everywhere)")
    if model_type == "qwen2" and cfg.get("use_sliding_window"):
        problems.append("use_sliding_window = true (the backbone has no sliding-window attention)")
    window = cfg.get("sliding_window") if model_type == "mistral" else None
    length = max_pos if context_length is None else context_length
    if window is not None and int(window) < length:
        problems.append(
            f"sliding_window = {window} is shorter than the context ({length}): the backbone has no sliding-window "
            f"attention; set [backbone] context_length <= {window}"
        )
    if length > max_pos:
        problems.append(f"context_length {length} exceeds max_position_embeddings = {max_pos}")
    try:
        base, scaling = _rope(cfg)
    except (ValueError, KeyError) as exc:
        problems.append(str(exc))
        base, scaling = 10000.0, None
    if problems:
        raise ValueError(f"a {model_type} config the backbone cannot represent: " + "; ".join(problems))
    qkv_bias = True if model_type == "qwen2" else bool(cfg.get("attention_bias", False))
    if qkv_bias and model_type != "qwen2":  # Llama's attention_bias also biases o_proj: not representable
        raise ValueError("attention_bias = true (bias on o_proj too) is not supported by the backbone")
    config = BackboneConfig(
        width=width,
        depth=int(cfg["num_hidden_layers"]),
        heads=heads,
        kv_heads=kv_heads,
        context_length=length,
        norm="rmsnorm",
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        positions="rope",
        rope_base=base,
        rope_scaling=scaling,
        rope_layout="half",
        mlp="swiglu",
        mlp_hidden=int(cfg["intermediate_size"]),
        bias=False,
        qkv_bias=qkv_bias,
        dropout=0.0,
        attention="causal",
        init_std=float(cfg.get("initializer_range", 0.02)),
    )
    return config, int(cfg["vocab_size"]), bool(cfg.get("tie_word_embeddings", False))


def _family_problems(config: BackboneConfig, family: str) -> list[str]:
    """What a backbone config has that a checkpoint of ``family`` cannot say."""
    want = {"norm": "rmsnorm", "positions": "rope", "mlp": "swiglu", "bias": False, "rope_layout": "half"}
    out = [f"{k}={getattr(config, k)!r} (needs {v!r})" for k, v in want.items() if getattr(config, k) != v]
    if config.attn_bias != (family == "qwen2"):
        out.append(f"qkv bias {config.attn_bias} ({family}: {family == 'qwen2'})")
    return out


def config_to_hf(
    config: BackboneConfig, vocab_size: int, *, family: str = "llama", tie_word_embeddings: bool = False
) -> dict[str, Any]:
    """``BackboneConfig`` -> a ``config.json`` dict of ``family`` (inverse of :func:`config_from_hf`).

    Raises:
        ValueError: an unknown family, or options the family's checkpoints cannot hold (listed).
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(sorted(FAMILIES))}")
    problems = _family_problems(config, family)
    if problems:
        raise ValueError(f"backbone cannot be exported as {family}: " + "; ".join(problems))
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": config.rope_base}
    sc = config.rope_scaling
    if sc is not None:
        rope.update(rope_type=sc.type, factor=sc.factor)
        if sc.type == "llama3":
            rope.update(
                low_freq_factor=sc.low_freq_factor,
                high_freq_factor=sc.high_freq_factor,
                original_max_position_embeddings=sc.original_context_length,
            )
    out: dict[str, Any] = {
        "architectures": [FAMILIES[family]],
        "model_type": family,
        "vocab_size": vocab_size,
        "hidden_size": config.width,
        "intermediate_size": config.mlp_hidden,
        "num_hidden_layers": config.depth,
        "num_attention_heads": config.heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.context_length,
        "rms_norm_eps": config.norm_eps,
        "initializer_range": config.init_std,
        "tie_word_embeddings": tie_word_embeddings,
        "attention_dropout": 0.0,
        # both spellings of the rotary settings: transformers 5 reads rope_parameters, 4.x the others
        "rope_parameters": rope,
        "rope_theta": config.rope_base,
        "rope_scaling": None if sc is None else {k: v for k, v in rope.items() if k != "rope_theta"},
        "use_cache": True,
        "bos_token_id": None,
        "eos_token_id": None,
    }
    if family == "llama":
        out.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
    elif family == "qwen2":
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=config.depth)
    else:
        out.update(sliding_window=None)
    return out


def backbone_spec_toml(hf_config: Mapping[str, Any]) -> str:
    """The ``[backbone]`` lines that match a ``config.json`` (what a refusal suggests)."""
    config, _, _ = config_from_hf(hf_config)
    defaults = BackboneConfig()
    lines = []
    for name in BackboneConfig.model_fields:
        value = getattr(config, name)
        if name in ("mlp_ratio", "init_std", "dropout", "attention") or value == getattr(defaults, name):
            continue
        if name == "qkv_bias" and value == config.bias:
            continue
        if isinstance(value, RopeScaling):
            inner = ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.model_dump().items())
            lines.append(f"rope_scaling = {{{inner}}}")
        else:
            lines.append(f"{name} = {json.dumps(value)}")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# Keys


def hf_names(key: str) -> tuple[str, ...] | None:
    """A backbone key -> the HF keys concatenated (along dim 0) into it, or None (``wte``,
    ``wpe``, inserts: no counterpart among the backbone's keys)."""
    if key.startswith("ln_f."):
        return ("model.norm." + key.removeprefix("ln_f."),)
    parts = key.split(".")
    if len(parts) >= 4 and parts[0] == "blocks" and parts[1].isdigit():
        module, param = ".".join(parts[2:-1]), parts[-1]
        if module in _BLOCK:
            return tuple(f"model.layers.{parts[1]}.{m}.{param}" for m in _BLOCK[module])
    return None


def _read_config(directory: Path) -> dict[str, Any]:
    file = directory / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{directory}: no config.json (a Hugging Face model folder is expected)")
    data = json.loads(file.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{file}: not a JSON object")
    return data


# -----------------------------------------------------------------------------
# A bare backbone


def load_hf_dir(
    path: str | os.PathLike[str], *, dtype: torch.dtype | None = None, context_length: int | None = None
) -> tuple[GPT, Tensor | None]:
    """Load a Llama/Qwen2/Mistral folder into a bare :class:`~mmcore.backbone.GPT` with ``wte``.

    Returns ``(backbone in eval mode, lm_head_weight)``; ``lm_head_weight`` is None when the
    config ties it to the embedding (logits are then ``hidden @ backbone.wte.weight.T``).

    Raises:
        FileNotFoundError: no config.json or no safetensors weights.
        ValueError: an unsupported config (:func:`config_from_hf`).
        WeightsMismatchError: missing, unexpected or wrongly shaped tensors (all listed).
    """
    from .gpt2 import WeightsMismatchError

    directory = Path(path)
    config, vocab, tied = config_from_hf(_read_config(directory), context_length=context_length)
    files = folder_tensors(directory)
    with torch.device("meta"):
        model = GPT(config, vocab_size=vocab)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    sources = {k: hf_names(k) or ((EMBED,) if k == "wte.weight" else ()) for k in shapes}
    want = {hk for names in sources.values() for hk in names}
    missing = sorted(hk for hk in want if hk not in files)
    if not tied:
        want.add(LM_HEAD)
        if LM_HEAD not in files:
            missing.append(LM_HEAD)
    unexpected = [hk for hk in files if hk not in want and hk != LM_HEAD and not hk.endswith("rotary_emb.inv_freq")]
    mismatched = []
    for k, names in sources.items():
        if names and all(n in files for n in names):
            found = _concat_shape([files[n][2] for n in names])
            if found != shapes[k]:
                mismatched.append((",".join(names), shapes[k], found))
    if not tied and LM_HEAD in files and files[LM_HEAD][2] != (vocab, config.width):
        mismatched.append((LM_HEAD, (vocab, config.width), files[LM_HEAD][2]))
    if missing or unexpected or mismatched:
        raise WeightsMismatchError(missing, unexpected, mismatched, source=str(directory))
    pieces = {k: [(str(files[n][0]), n) for n in names] for k, names in sources.items()}
    if not tied:
        pieces[LM_HEAD] = [(str(files[LM_HEAD][0]), LM_HEAD)]
    state = {k: t if dtype is None else t.to(dtype) for k, t in read_pieces(pieces)}
    lm_head = state.pop(LM_HEAD, None)
    model.load_state_dict(state, strict=True, assign=True)
    if model.rope is not None:  # the rotary tables are buffers, not in the file: compute them
        model.rope.to_empty(device="cpu")
        model.rope.reset_tables()
    return model.eval(), lm_head


def _concat_shape(shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    if len(shapes) == 1:
        return tuple(shapes[0])
    if any(len(s) != len(shapes[0]) or s[1:] != shapes[0][1:] for s in shapes):
        return tuple(-1 for _ in shapes[0])  # cannot be concatenated: reported as a shape mismatch
    return (sum(s[0] for s in shapes), *shapes[0][1:])


def _hf_state(backbone: GPT, embedding: Tensor, lm_head: Tensor | None) -> dict[str, Tensor]:
    """The backbone (and embedding, head) in HF keys, split back into their parts."""
    cfg = backbone.config
    split = {"attn.qkv": (cfg.width, cfg.kv_width, cfg.kv_width), "mlp.fc": (cfg.mlp_hidden, cfg.mlp_hidden)}
    out: dict[str, Tensor] = {EMBED: embedding}
    if lm_head is not None:
        out[LM_HEAD] = lm_head
    for key, t in backbone.state_dict().items():
        if key == "wte.weight":
            continue
        names = hf_names(key)
        if names is None:
            raise ValueError(f"backbone key {key!r} has no counterpart in a Llama-family checkpoint")
        module = ".".join(key.split(".")[2:-1])
        parts = t.split(split[module], 0) if len(names) > 1 else (t,)
        out.update(zip(names, parts, strict=True))
    return out


def save_hf_dir(
    backbone: GPT,
    path: str | os.PathLike[str],
    *,
    embedding: Tensor | None = None,
    lm_head_weight: Tensor | None = None,
    family: str = "llama",
    max_shard_size: int | None = None,
) -> None:
    """Write ``backbone`` as a Hugging Face ``family`` folder (``config.json`` + safetensors).

    ``embedding`` defaults to ``backbone.wte.weight``. ``lm_head_weight=None`` ties the head to
    the embedding. ``max_shard_size`` (bytes) splits the weights into
    ``model-0000N-of-0000M.safetensors`` files with an index, as ``save_pretrained`` does. Every
    file is written atomically; ``{family}ForCausalLM.from_pretrained(path)`` loads the result.
    """
    if embedding is None:
        if backbone.wte is None:
            raise ValueError("the backbone has no wte: pass embedding (V, D)")
        embedding = backbone.wte.weight
    if len(backbone.inserts):
        raise ValueError(f"cannot export a backbone with inserts (after blocks {sorted(backbone.inserts)})")
    vocab = int(embedding.shape[0])
    hf_config = config_to_hf(backbone.config, vocab, family=family, tie_word_embeddings=lm_head_weight is None)
    state = _hf_state(backbone, embedding, lm_head_weight)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    hf_config["dtype"] = str(embedding.dtype).removeprefix("torch.")
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for k, v in state.items():
        n = v.numel() * v.element_size()
        if max_shard_size is not None and shards[-1] and size + n > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += n
    if len(shards) == 1:
        write_safetensors(directory / "model.safetensors", shards[0], {"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(directory / name, shard, {"format": "pt"})
            weight_map.update(dict.fromkeys(shard, name))
        total = sum(v.numel() * v.element_size() for v in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        atomic_write_text(directory / "model.safetensors.index.json", json.dumps(index, indent=2) + "\n")
    atomic_write_text(directory / "config.json", json.dumps(hf_config, indent=2, sort_keys=True) + "\n")


# -----------------------------------------------------------------------------
# A composed model


def _text_parts(model: Any, shapes: Mapping[str, tuple[int, ...]]) -> tuple[str | None, str | None]:
    """``(text input, LM head name)``: the input an LM-style head predicts (its ``input``), or,
    without one, the only encoder with a ``token_embedding`` (the Encoder contract's name for a
    token table: ``encoders.<input>.token_embedding.weight``); the head is None without an LM head."""
    for name, head in model.heads.items():
        if head.input is not None and head.vocab_size is not None:
            return head.input, name
    with_emb = [n for n in model.encoders if f"encoders.{n}.{EMBEDDING}" in shapes]
    return (with_emb[0] if len(with_emb) == 1 else None), None


def _head_projection(
    keys: Mapping[str, str], shapes: Mapping[str, tuple[int, ...]], vocab: int, width: int
) -> str | None:
    """The LM head's own ``(V, D)`` weight among its part keys (untied), or None (tied)."""
    found = [pk for pk, mk in keys.items() if tuple(shapes[mk]) == (vocab, width)]
    return found[0] if len(found) == 1 else None


def plan_hf(
    model: Any, source: WeightsSource, shapes: Mapping[str, tuple[int, ...]], spec: Any = None
) -> dict[str, WeightsPlan]:
    """Plan ``[backbone] weights_from = {path = DIR, format = "hf"}`` from headers alone.

    Returns a plan per section it fills: ``backbone``; ``encoders.<text input>`` (its
    ``token_embedding.weight`` from ``model.embed_tokens.weight``); ``heads.<lm>`` (its
    projection from ``lm_head.weight``) when the head is untied. Every difference between
    ``config.json`` and the spec is a problem of the backbone's plan (spec value vs config.json
    value, with the ``[backbone]`` lines that would match); so are missing or wrongly shaped
    tensors.
    """
    directory = Path(source.path)
    plan = WeightsPlan("backbone", str(directory), "hf")
    plans = {"backbone": plan}
    if source.prefix or source.ignore or source.allow_missing:
        plan.problems.append("format = 'hf' reads a whole model folder: prefix, ignore and allow_missing do not apply")
    try:
        hf = _read_config(directory)
        files = folder_tensors(directory)
        want, vocab, tied = config_from_hf(hf, context_length=model.backbone.config.context_length)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        plan.problems.append(str(exc))
        return plans
    have = model.backbone.config
    diffs = [
        f"{name}: spec {getattr(have, name)!r}, config.json {getattr(want, name)!r}"
        for name in (
            "width",
            "depth",
            "heads",
            "kv_heads",
            "mlp_hidden",
            "norm",
            "norm_eps",
            "positions",
            "rope_base",
            "rope_scaling",
            "rope_layout",
            "mlp",
            "bias",
        )
        if getattr(have, name) != getattr(want, name)
    ]
    if have.attn_bias != want.attn_bias:
        diffs.append(f"qkv_bias: spec {have.attn_bias!r}, config.json {want.attn_bias!r}")
    text, head = _text_parts(model, shapes)
    emb_keys = part_keys(model, f"encoders.{text}", shapes) if text is not None else {}
    if EMBEDDING not in emb_keys:
        plan.problems.append(
            "no text encoder with a token_embedding to receive model.embed_tokens.weight (add a text encoder and "
            "an lm head that reads it)"
        )
        text = None
    else:
        rows = shapes[emb_keys[EMBEDDING]][0]
        if rows != vocab:
            diffs.append(
                f"vocabulary (encoders.{text}): spec {rows}, config.json vocab_size {vocab}"
                + (
                    " (a tokenizer that appends special tokens outgrows the checkpoint's vocabulary: map the "
                    "roles onto the tokenizer's own, text.bpe's special_tokens option)"
                    if rows > vocab
                    else ""
                )
            )
    head_key = None
    if head is not None:
        head_keys = part_keys(model, f"heads.{head}", shapes)
        head_key = _head_projection(head_keys, shapes, int(model.heads[head].vocab_size), have.width)
        if (head_key is None) != tied:
            diffs.append(
                f"LM head (heads.{head}): spec {'tied' if head_key is None else 'untied'}, config.json "
                f"tie_word_embeddings = {str(tied).lower()} (set the head's tie = {str(tied).lower()})"
            )
    if diffs:
        plan.problems.append(
            f"{directory / 'config.json'} does not match the spec ({len(diffs)}): "
            + "; ".join(diffs)
            + ". The [backbone] table that matches it:\n"
            + backbone_spec_toml(hf)
        )
        return plans
    plan.note = _describe(hf, want, vocab, tied)
    # tensors: every backbone key from its HF parts, with shapes from the headers
    used: set[str] = set()
    mismatched, missing = [], []
    for pk, mk in part_keys(model, "backbone", shapes).items():
        names = hf_names(pk)
        if names is None:
            plan.fresh.append(pk)
            continue
        lacking = [n for n in names if n not in files]
        if lacking:
            missing += lacking
            continue
        found = _concat_shape([files[n][2] for n in names])
        if found != tuple(shapes[mk]):
            mismatched.append(f"{pk}: component {list(shapes[mk])}, file {list(found)} ({', '.join(names)})")
            continue
        used.update(names)
        plan.pieces[mk] = [(str(files[n][0]), n) for n in names]
        plan.loaded.append(pk)
    if text is not None:
        sub = plans[f"encoders.{text}"] = WeightsPlan(f"encoders.{text}", str(directory), "hf")
        _plan_one(sub, emb_keys, EMBEDDING, EMBED, files, shapes, missing, mismatched, used)
    if head is not None and head_key is not None:
        sub = plans[f"heads.{head}"] = WeightsPlan(f"heads.{head}", str(directory), "hf")
        _plan_one(
            sub, part_keys(model, f"heads.{head}", shapes), head_key, LM_HEAD, files, shapes, missing, mismatched, used
        )
    if missing:
        plan.problems.append(f"{directory} lacks {len(missing)} tensor(s): " + ", ".join(missing[:12]))
    if mismatched:
        plan.problems.append(f"{len(mismatched)} shape(s) differ: " + "; ".join(mismatched[:12]))
    for hk in files:
        if hk in used:
            continue
        why = None
        if hk == LM_HEAD:
            why = "no LM head in the spec" if head is None else "tied to the embedding (tie_word_embeddings = true)"
        if why is None and hk.endswith("rotary_emb.inv_freq"):
            why = "rotary frequencies (the backbone computes them)"
        if why is None:
            plan.problems.append(f"{hk} ({files[hk][0].name}) matches nothing in the model")
        else:
            plan.ignored.append((hk, why))
    return plans


def _describe(hf: Mapping[str, Any], config: BackboneConfig, vocab: int, tied: bool) -> str:
    """The loaded sizes in one line: what the summary of ``mmcore build`` shows."""
    arch = (hf.get("architectures") or [FAMILIES[str(hf["model_type"])]])[0]
    sc = config.rope_scaling
    rope = f"rope base {config.rope_base:g}" + ("" if sc is None else f", {sc.type} scaling x{sc.factor:g}")
    return (
        f"{arch}: width {config.width}, depth {config.depth}, heads {config.heads} (key/value {config.kv_heads}), "
        f"feed-forward {config.mlp_hidden}, vocabulary {vocab}, context {config.context_length} "
        f"(max_position_embeddings {hf.get('max_position_embeddings')}), {rope}, "
        f"{'tied' if tied else 'untied'} head"
    )


def _plan_one(
    plan: WeightsPlan,
    keys: Mapping[str, str],
    part_key: str,
    hf_key: str,
    files: Mapping[str, tuple[Path, str, tuple[int, ...]]],
    shapes: Mapping[str, tuple[int, ...]],
    missing: list[str],
    mismatched: list[str],
    used: set[str],
) -> None:
    mk = keys[part_key]
    if hf_key not in files:
        missing.append(hf_key)
        return
    if files[hf_key][2] != tuple(shapes[mk]):
        mismatched.append(f"{plan.section}.{part_key}: component {list(shapes[mk])}, file {list(files[hf_key][2])}")
        return
    used.add(hf_key)
    plan.pieces[mk] = [(str(files[hf_key][0]), hf_key)]
    plan.loaded.append(part_key)
    plan.fresh = [pk for pk in keys if pk != part_key]


def export_hf(
    model: Any, path: str | os.PathLike[str], *, family: str = "llama", max_shard_size: int | None = None
) -> None:
    """Write a composed model's backbone, text embedding and LM head as a Hugging Face folder
    (:func:`save_hf_dir`); the inverse of ``weights_from = {path, format = "hf"}``.

    Raises:
        ValueError: no text encoder with a token embedding, or a backbone the family cannot hold.
    """
    state = model.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    text, head = _text_parts(model, shapes)
    if text is None or f"encoders.{text}.{EMBEDDING}" not in state:
        raise ValueError("export_hf: the model has no text encoder with a token_embedding to export")
    if any("lora_" in k for k in state):
        raise ValueError("export_hf: the model has LoRA adapters; merge them first")
    emb = state[f"encoders.{text}.{EMBEDDING}"]
    lm_head = None
    if head is not None:
        keys = part_keys(model, f"heads.{head}", shapes)
        hk = _head_projection(keys, shapes, int(emb.shape[0]), model.backbone.config.width)
        if hk is not None:
            lm_head = state[keys[hk]]
    save_hf_dir(
        model.backbone, path, embedding=emb, lm_head_weight=lm_head, family=family, max_shard_size=max_shard_size
    )
