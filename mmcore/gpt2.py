"""Conversion between Hugging Face GPT-2 checkpoints and the mmcore backbone.

Hugging Face ``GPT2LMHeadModel`` keys and their backbone counterparts::

    transformer.wte.weight                 wte.weight
    transformer.wpe.weight                 wpe.weight
    transformer.h.N.ln_1.{weight,bias}     blocks.N.ln_1.{weight,bias}
    transformer.h.N.attn.c_attn.*          blocks.N.attn.qkv.*      (weight transposed)
    transformer.h.N.attn.c_proj.*          blocks.N.attn.proj.*     (weight transposed)
    transformer.h.N.ln_2.*                 blocks.N.ln_2.*
    transformer.h.N.mlp.c_fc.*             blocks.N.mlp.fc.*        (weight transposed)
    transformer.h.N.mlp.c_proj.*           blocks.N.mlp.proj.*      (weight transposed)
    transformer.ln_f.*                     ln_f.*
    lm_head.weight                         lm_head.weight           (not a backbone key)

GPT-2's ``Conv1D`` stores weights as ``(in, out)``; ``nn.Linear`` stores ``(out, in)``.
Checkpoints saved from a bare ``GPT2Model`` have no ``transformer.`` prefix; both layouts
are accepted. The causal-mask buffers ``attn.bias`` / ``attn.masked_bias`` that old
checkpoints carry are ignored.

Only safetensors files are read or written (never ``torch.load``/pickle).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from mmcore.backbone import GPT
from mmcore.config import BackboneConfig
from mmcore.io import atomic_write_text, write_safetensors

__all__ = [
    "WeightsMismatchError",
    "hf_to_mmcore",
    "mmcore_to_hf",
    "config_from_hf",
    "config_to_hf",
    "load_gpt2_dir",
    "save_gpt2_dir",
]

LM_HEAD = "lm_head.weight"
_HF_PREFIX = "transformer."
# HF module name inside a block -> backbone module name, and whether its weight is a Conv1D.
_BLOCK_MODULES = {
    "ln_1": ("ln_1", False),
    "attn.c_attn": ("attn.qkv", True),
    "attn.c_proj": ("attn.proj", True),
    "ln_2": ("ln_2", False),
    "mlp.c_fc": ("mlp.fc", True),
    "mlp.c_proj": ("mlp.proj", True),
}
_TOP_MODULES = {"wte": "wte", "wpe": "wpe", "ln_f": "ln_f"}
_INVERSE_BLOCK = {name: (hf_name, conv) for hf_name, (name, conv) in _BLOCK_MODULES.items()}
_INVERSE_TOP = {name: hf_name for hf_name, name in _TOP_MODULES.items()}
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
# activation_function in a GPT-2 config -> BackboneConfig.mlp
_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}


class WeightsMismatchError(ValueError):
    """A checkpoint's tensors do not match the model built from its config.

    Attributes (all keys in Hugging Face naming, with the ``transformer.`` prefix):
        missing: keys the model needs that the checkpoint lacks.
        unexpected: keys in the checkpoint the model does not have.
        mismatched: ``(key, expected_shape, found_shape)`` for tensors of the wrong shape.
    """

    def __init__(
        self,
        missing: list[str] | None = None,
        unexpected: list[str] | None = None,
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] | None = None,
        *,
        source: str = "checkpoint",
    ) -> None:
        self.missing = sorted(missing or [])
        self.unexpected = sorted(unexpected or [])
        self.mismatched = sorted(mismatched or [])
        lines = [f"weights in {source} do not match the model:"]
        if self.missing:
            lines.append(f"  missing ({len(self.missing)}): " + ", ".join(self.missing))
        if self.unexpected:
            lines.append(f"  unexpected ({len(self.unexpected)}): " + ", ".join(self.unexpected))
        for key, expected, found in self.mismatched:
            lines.append(f"  shape mismatch: {key}: expected {tuple(expected)}, found {tuple(found)}")
        super().__init__("\n".join(lines))


# -----------------------------------------------------------------------------
# Key conversion


def _hf_key_to_mmcore(key: str) -> tuple[str, bool] | None:
    """``transformer.``-less HF key -> (backbone key, is_conv1d_weight), or None if unknown."""
    module, _, param = key.rpartition(".")
    if module in _TOP_MODULES:
        return f"{_TOP_MODULES[module]}.{param}", False
    parts = module.split(".", 2)  # ["h", "N", "attn.c_attn"]
    if len(parts) == 3 and parts[0] == "h" and parts[1].isdigit() and parts[2] in _BLOCK_MODULES:
        name, conv = _BLOCK_MODULES[parts[2]]
        return f"blocks.{parts[1]}.{name}.{param}", conv and param == "weight"
    return None


def _mmcore_key_to_hf(key: str) -> tuple[str, bool] | None:
    """Backbone key -> (HF key with ``transformer.``, is_conv1d_weight), or None if unknown."""
    module, _, param = key.rpartition(".")
    if module in _INVERSE_TOP:
        return f"{_HF_PREFIX}{_INVERSE_TOP[module]}.{param}", False
    parts = module.split(".", 2)  # ["blocks", "N", "attn.qkv"]
    if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit() and parts[2] in _INVERSE_BLOCK:
        name, conv = _INVERSE_BLOCK[parts[2]]
        return f"{_HF_PREFIX}h.{parts[1]}.{name}.{param}", conv and param == "weight"
    return None


def _normalise_hf_key(key: str) -> str:
    """Give a ``GPT2Model``-style key the ``transformer.`` prefix of ``GPT2LMHeadModel``."""
    if key == LM_HEAD or key.startswith(_HF_PREFIX):
        return key
    return _HF_PREFIX + key


def hf_to_mmcore(hf_state: Mapping[str, Tensor], *, prefix: str = "") -> dict[str, Tensor]:
    """Convert a Hugging Face GPT-2 state dict to backbone keys.

    Args:
        hf_state: ``GPT2LMHeadModel`` keys (``transformer.h.0...``) or ``GPT2Model`` keys
            (``h.0...``).
        prefix: prepended to every backbone key (e.g. ``"backbone."`` to load into a parent
            module); ``lm_head.weight`` keeps its name.

    Returns:
        Backbone keys -> tensors (Conv1D weights transposed to Linear layout, contiguous).
        ``lm_head.weight`` is passed through under that name when present. ``attn.bias`` /
        ``attn.masked_bias`` buffers are dropped. Unknown keys are passed through unchanged
        (normalised to carry the ``transformer.`` prefix), so a strict load reports them.
    """
    out: dict[str, Tensor] = {}
    for key, tensor in hf_state.items():
        key = _normalise_hf_key(key)
        if key == LM_HEAD:
            out[LM_HEAD] = tensor
            continue
        if key.endswith(_IGNORED_SUFFIXES):
            continue
        converted = _hf_key_to_mmcore(key[len(_HF_PREFIX) :])
        if converted is None:
            out[key] = tensor
            continue
        name, conv = converted
        out[prefix + name] = tensor.t().contiguous() if conv else tensor
    return out


def mmcore_to_hf(state: Mapping[str, Tensor], *, prefix: str = "") -> dict[str, Tensor]:
    """Convert backbone keys to Hugging Face ``GPT2LMHeadModel`` keys (inverse of :func:`hf_to_mmcore`).

    Args:
        state: backbone state dict, keys under ``prefix``; may contain ``lm_head.weight``
            (kept under that name).
        prefix: stripped from the backbone keys. When non-empty, keys outside it (other
            parts of a larger model) are skipped.

    Raises:
        WeightsMismatchError: a key has no GPT-2 counterpart (listed as ``unexpected``).
    """
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, tensor in state.items():
        if key == LM_HEAD:
            out[LM_HEAD] = tensor
            continue
        if not key.startswith(prefix):
            continue
        converted = _mmcore_key_to_hf(key[len(prefix) :])
        if converted is None:
            unknown.append(key)
            continue
        name, conv = converted
        out[name] = tensor.t().contiguous() if conv else tensor
    if unknown:
        raise WeightsMismatchError(unexpected=unknown, source="backbone state (no GPT-2 counterpart)")
    return out


# -----------------------------------------------------------------------------
# Config conversion


def config_from_hf(hf_config_json: Mapping[str, Any]) -> tuple[BackboneConfig, int]:
    """A GPT-2 ``config.json`` (as a dict) -> ``(BackboneConfig, vocab_size)``.

    Dropout is set to 0 (these are inference/fine-tuning starting points; set it yourself).

    Raises:
        ValueError: the config describes something the backbone cannot represent (another
            ``model_type``, an unsupported activation, unscaled or layer-scaled attention,
            cross-attention).
    """
    cfg = dict(hf_config_json)
    model_type = cfg.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise ValueError(f"config.json has model_type {model_type!r}; only 'gpt2' is supported")
    activation = cfg.get("activation_function", "gelu_new")
    if activation not in _ACTIVATIONS:
        raise ValueError(
            f"unsupported GPT-2 activation_function {activation!r}; supported: {', '.join(sorted(_ACTIVATIONS))}"
        )
    for flag, supported in (
        ("scale_attn_weights", True),
        ("scale_attn_by_inverse_layer_idx", False),
        ("add_cross_attention", False),
    ):
        if cfg.get(flag, supported) != supported:
            raise ValueError(f"unsupported GPT-2 option {flag}={cfg[flag]!r}; the backbone needs {supported}")

    width = int(cfg.get("n_embd", 768))
    n_inner = cfg.get("n_inner")
    hidden = 4 * width if n_inner is None else int(n_inner)
    mlp_ratio = hidden / width
    if int(mlp_ratio * width) != hidden:  # guard float round-off so mlp_hidden == n_inner exactly
        mlp_ratio = (hidden + 0.5) / width
    config = BackboneConfig(
        width=width,
        depth=int(cfg.get("n_layer", 12)),
        heads=int(cfg.get("n_head", 12)),
        context_length=int(cfg.get("n_positions", cfg.get("n_ctx", 1024))),
        norm="layernorm",
        norm_eps=float(cfg.get("layer_norm_epsilon", 1e-5)),
        positions="learned",
        mlp=_ACTIVATIONS[activation],
        mlp_ratio=mlp_ratio,
        bias=True,
        dropout=0.0,
        attention="causal",
        init_std=float(cfg.get("initializer_range", 0.02)),
    )
    assert config.mlp_hidden == hidden
    return config, int(cfg.get("vocab_size", 50257))


def config_to_hf(config: BackboneConfig, vocab_size: int, *, tie_word_embeddings: bool = True) -> dict[str, Any]:
    """``BackboneConfig`` -> GPT-2 ``config.json`` dict (inverse of :func:`config_from_hf`).

    Raises:
        ValueError: the backbone uses options GPT-2 does not have (listed).
    """
    problems = []
    if config.norm != "layernorm":
        problems.append(f"norm={config.norm!r} (GPT-2: 'layernorm')")
    if config.positions != "learned":
        problems.append(f"positions={config.positions!r} (GPT-2: 'learned')")
    if config.mlp not in ("gelu_tanh", "gelu"):
        problems.append(f"mlp={config.mlp!r} (GPT-2: 'gelu_tanh' or 'gelu')")
    if not config.bias:
        problems.append("bias=False (GPT-2: True)")
    if problems:
        raise ValueError("backbone cannot be exported as GPT-2: " + "; ".join(problems))
    hidden = config.mlp_hidden
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": vocab_size,
        "n_positions": config.context_length,
        "n_embd": config.width,
        "n_layer": config.depth,
        "n_head": config.heads,
        "n_inner": None if hidden == 4 * config.width else hidden,
        "activation_function": "gelu_new" if config.mlp == "gelu_tanh" else "gelu",
        "layer_norm_epsilon": config.norm_eps,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "initializer_range": config.init_std,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": tie_word_embeddings,
        # GPT-2's token ids do not exist in other vocabularies; leave them unset.
        "bos_token_id": None,
        "eos_token_id": None,
    }


# -----------------------------------------------------------------------------
# Directories


def _read_safetensors(directory: Path) -> dict[str, Tensor]:
    """All tensors of ``model.safetensors`` (or the shards of ``model.safetensors.index.json``)."""
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [directory / name for name in sorted(set(weight_map.values()))]
    else:
        pickles = [p.name for p in directory.glob("*.bin")] + [p.name for p in directory.glob("*.pt")]
        hint = (
            f" It has {', '.join(sorted(pickles))}: pickle checkpoints are never loaded (they can run "
            "arbitrary code). Convert it to safetensors first, e.g. in a trusted environment: "
            "GPT2LMHeadModel.from_pretrained(path).save_pretrained(path)."
            if pickles
            else ""
        )
        raise FileNotFoundError(f"no model.safetensors in {directory}.{hint}")
    state: dict[str, Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                state[key] = f.get_tensor(key)
    return state


def load_gpt2_dir(path: str | os.PathLike[str], *, dtype: torch.dtype | None = None) -> tuple[GPT, Tensor | None]:
    """Load a Hugging Face GPT-2 directory (``config.json`` + ``model.safetensors``).

    Args:
        path: a local directory (nothing is downloaded).
        dtype: cast all weights to this dtype; default: keep the checkpoint's dtype.

    Returns:
        ``(backbone, lm_head_weight)``: a :class:`~mmcore.backbone.GPT` with ``wte``, in eval
        mode; ``lm_head_weight (V, D)`` when the checkpoint's LM head is not tied to ``wte``,
        else None (tied: logits are ``hidden @ backbone.wte.weight.T``).

    Raises:
        FileNotFoundError: no ``config.json`` or no safetensors weights (pickle-only
            directories get a message on converting them).
        ValueError: unsupported config (see :func:`config_from_hf`).
        WeightsMismatchError: missing, unexpected or wrongly shaped tensors (all listed).
    """
    directory = Path(path)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no config.json in {directory}")
    hf_config = json.loads(config_file.read_text())
    config, vocab_size = config_from_hf(hf_config)
    tied = bool(hf_config.get("tie_word_embeddings", True))

    found = {_normalise_hf_key(k): v for k, v in _read_safetensors(directory).items()}
    found = {k: v for k, v in found.items() if not k.endswith(_IGNORED_SUFFIXES)}

    # Expected tensors in HF naming and layout, from a shape-only (meta) model.
    with torch.device("meta"):
        model = GPT(config, vocab_size=vocab_size)
    expected = {k: tuple(v.shape) for k, v in mmcore_to_hf(model.state_dict()).items()}
    wte_key = f"{_HF_PREFIX}wte.weight"
    lm_head_optional = tied  # a tied head is usually not stored at all
    expected[LM_HEAD] = expected[wte_key]

    missing = [k for k in expected if k not in found and not (k == LM_HEAD and lm_head_optional)]
    unexpected = [k for k in found if k not in expected]
    mismatched = [
        (k, expected[k], tuple(found[k].shape)) for k in expected if k in found and tuple(found[k].shape) != expected[k]
    ]
    if missing or unexpected or mismatched:
        raise WeightsMismatchError(missing, unexpected, mismatched, source=str(directory))

    lm_head = found.pop(LM_HEAD, None)
    if tied:  # as in transformers: a tied head *is* wte, whatever the file stores under lm_head
        lm_head = None
    state = hf_to_mmcore(found)
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
        lm_head = lm_head.to(dtype) if lm_head is not None else None
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval(), lm_head


def save_gpt2_dir(backbone: GPT, path: str | os.PathLike[str], lm_head_weight: Tensor | None = None) -> None:
    """Export ``backbone`` as a Hugging Face GPT-2 directory (``config.json`` + ``model.safetensors``).

    ``transformers.GPT2LMHeadModel.from_pretrained(path)`` loads the result. With
    ``lm_head_weight=None`` the head is tied to ``wte`` (``tie_word_embeddings: true``, no
    ``lm_head.weight`` stored); otherwise ``lm_head_weight (V, D)`` is stored untied. Each
    file is written to a temp file in ``path`` and renamed into place (atomic).

    Raises:
        ValueError: the backbone has no ``wte``, has inserts, or uses options GPT-2 lacks.
    """
    if backbone.wte is None:
        raise ValueError("cannot export a backbone without wte (build it with vocab_size) as GPT-2")
    if len(backbone.inserts):
        raise ValueError(f"cannot export a backbone with inserts (after blocks {sorted(backbone.inserts)}) as GPT-2")
    vocab_size = backbone.wte.num_embeddings
    hf_config = config_to_hf(backbone.config, vocab_size, tie_word_embeddings=lm_head_weight is None)
    hf_config["dtype"] = str(backbone.wte.weight.dtype).removeprefix("torch.")
    state = mmcore_to_hf(backbone.state_dict())
    if lm_head_weight is not None:
        if tuple(lm_head_weight.shape) != tuple(backbone.wte.weight.shape):
            raise ValueError(
                f"lm_head_weight has shape {tuple(lm_head_weight.shape)}; expected {tuple(backbone.wte.weight.shape)}"
            )
        state[LM_HEAD] = lm_head_weight
    # safetensors wants contiguous CPU tensors that share no storage.
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}

    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    write_safetensors(directory / "model.safetensors", state, {"format": "pt"})

    atomic_write_text(directory / "config.json", json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
