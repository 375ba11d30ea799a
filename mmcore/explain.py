"""Explanations of one prediction: what each input modality contributed.

    from mmcore.explain import explain

    report = explain(model, {"image": "seven.png", "audio": "tone.wav", "text": "same?"}, head="match")
    report.summary()                 # JSON-ready dict
    report.save("runs/why")          # explain.json and explain.png

or ``mmcore explain MODEL_DIR RECORD --out DIR``.

**The target.** For a classification head, the log-probability of one class (``target``: its
index or name; default: the predicted class). For an LM head, the log-probability of a text
given the record: the sum over its tokens of ``log p(token | everything before it)``. The
text is ``target`` if given, else the record's own ``{"prompt", "target"}``, else a greedy
continuation of the record's text (which is then the prompt), so the explanation is of what
the model generates. The attention mode is the one the model's task for that head trains
with (``prefix`` for ``prefix_lm``), else the backbone's.

**Occlusion.** For each input of the record, the target's log-probability with that input
removed from the record, as a record that lacks it is processed (the processors' and
fusions' missing-input handling: no tokens, no boundary tokens). ``delta = logprob -
occluded logprob``: positive when the input supported the prediction, about 0 when the model
ignores it. For an LM head, removing the text removes only its prompt part (the target stays
scored); where a record cannot go without the input (it is the only one, or the fusion needs
its text), a text input is emptied (``""``) instead, and ``how`` says which was done. For
classifiers the occluded class probabilities and prediction are reported too, so "drops to
chance" can be read off.

**Gradient x input.** The gradient of the target log-probability with respect to the fused
input embeddings (what the backbone reads), times the embeddings, summed over the
embedding dimension and over the positions of each input (``FusedSequence.modality_ids``;
boundary tokens count as their input). Inputs a fusion does not put into the sequence (the
cross-attention memory) are measured the same way on their projected encoder tokens.
``share`` is each input's fraction of the summed absolute values.

**Attention.** For the chosen backbone layers (default: the last), the attention weights of
the positions the prediction is read from (a classifier's pooled position(s), an LM head's
positions that predict the target) to every position, averaged over heads and those query
positions. They are computed explicitly from the layer's own queries and keys, with its
mask, in a forward hook active only during the explanation (the model's ordinary forward
keeps using fused attention kernels). Reported per input: image tokens as their patch grid
when the encoder has one (``grid``), others (audio frames, resampled latents) as a row, text
as (token, weight) pairs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import InputError, MMCoreError
from .explain_report import Explanation, figure, plot
from .types import Batch

__all__ = ["Explanation", "explain", "explain_dir", "figure", "plot"]


# --- pieces -----------------------------------------------------------------------------------


def _pick_head(model: nn.Module, head: str | None) -> tuple[str, str]:
    if head is not None:
        if head not in model.heads:
            raise MMCoreError(f"explain: no head {head!r}; heads: {list(model.heads)}")
    else:
        cls = [n for n, h in model.heads.items() if h.input is None]
        head = cls[0] if cls else next(iter(model.heads), None)
        if head is None:
            raise MMCoreError("explain: the model has no head")
    kind = "lm" if model.heads[head].input is not None else "classification"
    return head, kind


def _mode_for(model: nn.Module, head: str, kind: str) -> str | None:
    from .objectives import task_attention, task_head

    spec = getattr(model, "spec", None)
    for t in spec.tasks.values() if spec is not None else []:
        if task_head(t, list(model.heads)) == head:
            return task_attention(t)
    return None


def _text_input(model: nn.Module, head: str) -> str | None:
    name = model.heads[head].input
    if name in model.encoders:
        return name
    texts = [k for k, e in model.encoders.items() if getattr(e, "modality", "") == "text"]
    return texts[0] if len(texts) == 1 else None


def _class_index(model: nn.Module, head: str, target: Any, logits: Tensor) -> tuple[int, str | None]:
    names: list[str] | None = None
    spec = getattr(model, "spec", None)
    for t in spec.tasks.values() if spec is not None else []:
        if t.labels and (t.head == head or t.head is None):
            names = list(t.labels)
    if target is None:
        i = int(logits.argmax())
    elif isinstance(target, str) and not target.lstrip("-").isdigit():
        if not names or target not in names:
            raise MMCoreError(f"explain: unknown class {target!r}; classes: {names or list(range(logits.shape[-1]))}")
        i = names.index(target)
    else:
        i = int(target)
    if not 0 <= i < logits.shape[-1]:
        raise MMCoreError(f"explain: class {i} outside [0, {logits.shape[-1] - 1}]")
    return i, (names[i] if names else None)


def _target_logprob(output: Any, batch: Batch, kind: str, cls: int | None, text_input: str) -> Tensor:
    logits = output.logits
    if kind == "classification":
        return logits.float().log_softmax(-1)[0, cls]
    ids = batch.inputs[text_input]["ids"]  # (1, N)
    keep = (output.mask & batch.inputs[text_input]["mask"].bool())[:, 1:]
    prompt = batch.inputs[text_input].get("prompt_len")
    if prompt is not None:
        pos = torch.arange(1, ids.shape[1], device=ids.device)
        keep = keep & (pos[None] >= prompt.reshape(-1, 1))
    logp = logits[:, :-1].float().log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # (1, N-1)
    return (logp * keep).sum()


class _AttentionRecorder:
    """Forward hooks on chosen backbone blocks' attention: recompute softmax(q k^T / sqrt(hd)) explicitly."""

    def __init__(self, backbone: nn.Module, layers: Sequence[int]):
        self.maps: dict[int, Tensor] = {}
        self.handles = []
        n = len(backbone.blocks)
        for layer in layers:
            i = layer % n if -n <= layer < n else None
            if i is None:
                raise MMCoreError(f"explain: layer {layer} outside the backbone's {n} layers")
            attn = backbone.blocks[i].attn
            self.handles.append(attn.register_forward_hook(self._hook(layer), with_kwargs=True))

    def _hook(self, layer: int) -> Any:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            x = args[0] if args else kwargs["x"]
            L = x.shape[1]
            with torch.no_grad():
                q, k, _ = module.split(x, kwargs.get("rope"))  # (B, H, L, hd) each, as the attention computes them
                group = q.shape[1] // k.shape[1]  # grouped-query attention: query heads per key head
                k = k.repeat_interleave(group, dim=1)  # (B, KV, L, hd) -> (B, H, L, hd)
                scores = (q @ k.transpose(-1, -2)).float() / math.sqrt(module.head_dim)  # (B, H, L, L)
                mask = kwargs.get("attn_mask")
                if mask is None and kwargs.get("is_causal"):
                    mask = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
                if mask is not None:
                    scores = scores.masked_fill(~mask, float("-inf"))
                self.maps[layer] = scores.softmax(-1).mean(1)  # (B, L, L), averaged over heads

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _query_rows(model: nn.Module, head: str, kind: str, seq: Any, batch: Batch) -> Tensor:
    """(L,) bool: the fused positions the prediction is read from."""
    L = seq.mask.shape[1]
    real = seq.mask[0]
    if kind == "classification":
        how = model.heads[head].pooling or "last"
        pos = torch.arange(L, device=real.device)
        if how == "mean":
            return real.clone()
        idx = int(torch.where(real, pos, -1).max()) if how == "last" else int(torch.where(real, pos, L).min())
        rows = torch.zeros(L, dtype=torch.bool, device=real.device)
        rows[max(idx, 0)] = True
        return rows
    name = model.heads[head].input
    text = batch.inputs[name]
    n = text["ids"].shape[1]
    keep = text["mask"][0].bool().clone()
    keep[n - 1] = False  # the last token predicts nothing
    prompt = text.get("prompt_len")
    if prompt is not None:
        keep[: max(int(prompt[0]) - 1, 0)] = False  # position i predicts token i + 1
    idx = seq.index.get(name)
    positions = torch.arange(n, device=keep.device) if idx is None else idx[0]
    rows = torch.zeros(L, dtype=torch.bool, device=keep.device)
    rows[positions[keep & (positions >= 0)]] = True
    return rows


def _token_texts(proc: Any, ids: Sequence[int]) -> list[str]:
    out = []
    specials = {v: k for k, v in (getattr(proc, "special_tokens", {}) or {}).items()}
    for t in ids:
        if t in specials:
            out.append(specials[t])
            continue
        try:
            out.append(proc.decode([t]))
        except Exception:  # a processor without decode, or a partial UTF-8 byte
            out.append(f"#{t}")
    return out


# --- the API ------------------------------------------------------------------------------------


def explain(
    model: nn.Module,
    record: Mapping[str, Any],
    *,
    target: Any = None,
    head: str | None = None,
    layers: Sequence[int] | None = None,
    max_new_tokens: int = 20,
) -> Explanation:
    """Explain one prediction of ``model`` on ``record`` (see the module docstring).

    Args:
        model: a :class:`~mmcore.MultimodalGPT` (put in eval mode).
        record: a raw record, as in a manifest (file paths, text, arrays...).
        target: a class index or name (classification), or the text whose log-probability to
            explain (LM head). Default: the prediction.
        head: the head to explain (default: the first classification head, else the LM head).
        layers: backbone layers whose attention to report (negative counts from the end).
        max_new_tokens: length of the greedy continuation explained when an LM target is not given.
    """
    model.eval()
    head, kind = _pick_head(model, head)
    mode = _mode_for(model, head, kind)
    record = {k: v for k, v in record.items() if k in model.encoders}
    if not record:
        raise InputError(f"explain: the record has none of the model's inputs {list(model.encoders)}")
    text_name = _text_input(model, head) if kind == "lm" else None
    target_info: dict[str, Any] = {}
    if kind == "lm":
        if text_name is None:
            raise MMCoreError("explain: the LM head's text input is unknown")
        record = _lm_record(model, record, text_name, target, mode, max_new_tokens)
        target_info = {"text": record[text_name]["target"], "prompt": record[text_name]["prompt"]}
    batch = model.preprocess([record], targets=())
    cls = None
    with torch.no_grad():
        out = model(batch, mode=mode, heads=[head], compute_loss=False)
    if kind == "classification":
        logits = out.outputs[head].logits[0]
        cls, name = _class_index(model, head, target, logits)
        probs = logits.float().softmax(-1)
        target_info = {"index": cls, "label": name, "prob": float(probs[cls]), "probs": probs.tolist()}

    # --- gradient x input, and attention, in one explicit forward
    recorder = _AttentionRecorder(model.backbone, list(layers) if layers is not None else [-1])
    try:
        with torch.no_grad():
            tokens = model.encode(batch)
        for t in tokens.values():  # leaves: gradients reach the inputs, never the parameters' .grad
            t.embeds = t.embeds.detach().requires_grad_(True)
        seq = model.fusion(tokens, batch)
        hidden = model.backbone.run_sequence(seq, mode)
        output = model.heads[head](hidden, seq)
        logprob = _target_logprob(output, batch, kind, cls, text_name or "text")
        names = list(tokens)
        grads = torch.autograd.grad(logprob, [seq.embeds, *(tokens[m].embeds for m in names)], allow_unused=True)
    finally:
        recorder.close()
    fused_grad = grads[0] if grads[0] is not None else torch.zeros_like(seq.embeds)
    token_grads = dict(zip(names, grads[1:], strict=True))
    present = [m for m in seq.modalities if m in tokens] + [m for m in tokens if m not in seq.modalities]
    gxi: dict[str, float] = {}
    ids = seq.modality_ids[0]
    contrib = (fused_grad * seq.embeds).sum(-1)[0].detach()  # (L,)
    for m in present:
        j = seq.modalities.index(m) if m in seq.modalities else -2
        if bool((ids == j).any()):
            gxi[m] = float(contrib[ids == j].sum())
        else:  # not in the sequence (cross-attention memory): its projected encoder tokens
            t, g = tokens[m], token_grads[m]
            g = g if g is not None else torch.zeros_like(t.embeds)
            gxi[m] = float(((g * t.embeds).sum(-1) * t.mask)[0].sum().detach())
    total_abs = sum(abs(v) for v in gxi.values()) or 1.0

    # --- occlusion
    base = float(logprob.detach())
    modalities: dict[str, dict[str, Any]] = {}
    for m in present:
        info: dict[str, Any] = {
            "modality": getattr(model.encoders[m], "modality", ""),
            "positions": int((ids == seq.modalities.index(m)).sum()) if m in seq.modalities else 0,
            "tokens": int(tokens[m].mask[0].sum()),
            "grad_x_input": gxi[m],
            "grad_x_input_share": abs(gxi[m]) / total_abs,
            "occlusion": None,
        }
        for occluded in _occlusions(model, record, m, kind, text_name):
            how = occluded.pop("__how__")
            try:
                ob = model.preprocess([occluded], targets=())
                with torch.no_grad():
                    o = model(ob, mode=mode, heads=[head], compute_loss=False).outputs[head]
            except InputError:  # this model cannot go without the input that way: try the next way
                continue
            lp = float(_target_logprob(o, ob, kind, cls, text_name or "text"))
            occ: dict[str, Any] = {"logprob": lp, "delta": base - lp, "how": how}
            if kind == "classification":
                p = o.logits[0].float().softmax(-1)
                occ.update(prob=float(p[cls]), prediction=int(p.argmax()), probs=p.tolist())
            info["occlusion"] = occ
            break
        modalities[m] = info

    # --- attention maps
    rows = _query_rows(model, head, kind, seq, batch)
    attention: dict[str, dict[str, Any]] = {}
    for layer, amap in recorder.maps.items():
        a = amap[0][rows].mean(0) if bool(rows.any()) else amap[0].mean(0)  # (L,)
        per: dict[str, Any] = {}
        in_seq = [p for p in present if p in seq.modalities]
        for m in present:
            idx = seq.index.get(m) if seq.index and m in seq.index else None
            if m not in seq.modalities or (idx is None and len(in_seq) > 1):
                per[m] = None  # not in the self-attended sequence (cross-attention memory)
                continue
            pos = torch.arange(tokens[m].embeds.shape[1]) if idx is None else idx[0]
            w = torch.where(pos >= 0, a[pos.clamp(min=0)], torch.zeros((), dtype=a.dtype))
            # the input's whole share of attention, boundary tokens included; per-token weights below
            entry: dict[str, Any] = {"total": float(a[ids == seq.modalities.index(m)].sum())}
            enc = model.encoders[m]
            grid = enc.grid
            gh, gw = (grid, grid) if isinstance(grid, int) else tuple(grid) if grid else (0, 0)
            if gh * gw == w.numel() and gh:
                entry["grid"] = w.view(gh, gw).tolist()
            elif getattr(enc, "modality", "") == "text":
                tok_ids = batch.inputs[m]["ids"][0][pos >= 0].tolist()
                entry["tokens"] = _token_texts(model.processors.get(m), tok_ids)
                entry["weights"] = w[pos >= 0].tolist()
            else:
                entry["weights"] = w[pos >= 0].tolist()
            per[m] = entry
        attention[f"layer {layer}"] = per
    images = {m: batch.inputs[m]["pixels"][0] for m in present if "pixels" in batch.inputs[m]}
    images = {m: _denormalise(model.processors.get(m), px) for m, px in images.items()}
    return Explanation(head, kind, target_info, base, mode, modalities, attention, images)


def _lm_record(
    model: nn.Module, record: dict[str, Any], text: str, target: Any, mode: str | None, max_new: int
) -> dict[str, Any]:
    value = record.get(text)
    prompt, given = "", None
    if isinstance(value, Mapping):
        prompt, given = str(value.get("prompt") or ""), value.get("target")
    elif isinstance(value, str):
        prompt = value
    if target is not None:
        given = str(target)
    if given is None:  # explain what the model generates
        from .generation import GenerationConfig, generate

        rec = {**record, text: {"prompt": prompt}}
        ids = generate(model, model.preprocess([rec], targets=()), GenerationConfig(max_new_tokens=max_new), mode=mode)
        given = model.processors[text].decode(ids[0])
    return {**record, text: {"prompt": prompt, "target": given}}


def _occlusions(model: nn.Module, record: dict[str, Any], m: str, kind: str, text: str | None) -> list[dict[str, Any]]:
    """Records without input ``m``, in order of preference: removed, else (text) emptied."""
    if kind == "lm" and m == text:
        if not record[m]["prompt"]:
            return []  # nothing but the target itself
        return [{**record, m: {"prompt": "", "target": record[m]["target"]}, "__how__": "prompt emptied"}]
    rest = {k: v for k, v in record.items() if k != m}
    out = [{**rest, "__how__": "removed"}] if rest else []
    if getattr(model.encoders[m], "modality", "") == "text":
        out.append({**rest, m: "", "__how__": "emptied"})  # e.g. a fusion that needs its text input
    return out


def _denormalise(proc: Any, pixels: Tensor) -> Tensor:
    c = pixels.shape[0]
    m = proc.mean if proc is not None and proc.mean is not None else [0.0] * c
    s = proc.std if proc is not None and proc.std is not None else [1.0] * c
    mean = torch.tensor(list(m), dtype=torch.float32)[:, None, None]
    std = torch.tensor(list(s), dtype=torch.float32)[:, None, None]
    return (pixels.detach().float().cpu() * std + mean).clamp(0, 1)


# --- a model directory ---------------------------------------------------------------------------------


def explain_dir(
    model_dir: str | Path,
    record: Mapping[str, Any],
    *,
    out: str | Path | None = None,
    head: str | None = None,
    target: Any = None,
    layers: Sequence[int] | None = None,
    verify: bool = True,
) -> Explanation:
    """``mmcore explain``: load a model directory, explain ``record``, write the files to ``out``.
    ``verify=False`` loads it without checking its checksums (``--no-verify``)."""
    from .checkpoint import load
    from .data import resolve_record

    model = load(model_dir, verify=verify)
    base = record.get("__base__")
    rec = {k: v for k, v in record.items() if k != "__base__"}
    modalities = {k: getattr(e, "modality", "") for k, e in model.encoders.items()}
    rec = resolve_record(rec, modalities, base)  # the manifest rules: one implementation
    if isinstance(target, str) and target.lstrip("-").isdigit():
        target = int(target)
    report = explain(model, rec, target=target, head=head, layers=layers)
    if out is not None:
        report.save(out)
    return report
