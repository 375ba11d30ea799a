"""Compatibility checks: every way the parts of a built model do not fit together.

Widths, the longest fused sequence against the context length, special tokens, processor and
encoder pairing, LoRA targets, and the headers of ``weights_from`` files, as located
:class:`~mmcore.errors.SpecIssue` s. :func:`mmcore.builder.build` raises them as one
:class:`~mmcore.errors.SpecError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from .errors import SpecIssue
from .model import MultimodalGPT
from .registry import Registry
from .spec import Spec

__all__ = ["check_compatibility"]


# --- compatibility checks ----------------------------------------------------------------------


def check_compatibility(model: MultimodalGPT, spec: Spec | None = None, *, weights: bool = True) -> list[SpecIssue]:
    """Every way the parts of a built model do not fit together, as located spec issues.

    Checks: encoder and projector widths; the longest fused sequence against the backbone's
    ``context_length``; special tokens the fusion, the heads and the tasks' objectives need
    from the text processors; that each processor reads its encoder's modality and produces
    ids within its vocabulary; that LoRA targets match layers; and, with ``weights``, the
    ``weights_from`` files against the components (headers only: names and shapes). An empty
    list means the model is consistent. :func:`build` raises them all as one :class:`SpecError`.
    """
    spec = spec if spec is not None else model.spec
    if spec is None:
        raise ValueError("check_compatibility needs the model's spec")
    return _check(model, spec, read_weights=weights)[0]


def _check(model: MultimodalGPT, spec: Spec, *, read_weights: bool) -> tuple[list[SpecIssue], dict[str, Any]]:
    issues: list[SpecIssue] = []

    def add(path: str, message: str, hint: str | None = None) -> None:
        issues.append(SpecIssue(path, message, spec.file, hint))

    width = model.backbone.config.width
    reg = _registry_or_none()
    # widths and pairing
    for name, enc in model.encoders.items():
        out = getattr(enc, "out_dim", width)
        proj = model.projectors[name] if name in model.projectors else None
        if proj is not None:
            pin, pout = getattr(proj, "in_dim", None), getattr(proj, "out_dim", None)
            if isinstance(pin, int) and pin != out:
                add(f"encoders.{name}.projector", f"the projector reads width {pin}, the encoder produces {out}")
            if isinstance(pout, int) and pout != width:
                add(f"encoders.{name}.projector", f"the projector produces width {pout}, the backbone's is {width}")
        elif out != width:
            add(f"encoders.{name}", f"the encoder produces width {out}, the backbone's is {width}, and no projector")
        proc = model.processors.get(name)
        declared = None
        cs = spec.encoders.get(name)
        if reg is not None and cs is not None and f"encoder:{cs.component}" in reg:
            declared = reg.get("encoder", cs.component).modality
        kinds = {
            "registration": declared,
            "encoder": getattr(enc, "modality", None) or None,
            "processor": getattr(proc, "modality", None) or None if proc is not None else None,
        }
        seen = {v for v in kinds.values() if v}
        if len(seen) > 1:
            add(
                f"encoders.{name}",
                "the encoder and its processor read different modalities: "
                + ", ".join(f"{k} {v!r}" for k, v in kinds.items() if v),
            )
        pv, ev = getattr(proc, "vocab_size", None), getattr(enc, "vocab_size", None)
        if isinstance(pv, int) and isinstance(ev, int) and pv > ev:
            add(
                f"encoders.{name}",
                f"the processor produces token ids up to {pv - 1} but the encoder embeds only {ev} ids",
            )
    _check_special_tokens(model, spec, add)
    _check_context(model, spec, add)
    _check_lora_targets(model, spec, add)
    plans: dict[str, Any] = {}
    if read_weights:
        from .lora import unadapted_shapes
        from .weights import plan_weights

        shapes = unadapted_shapes(model)  # a built model's adapters aside: the names the files use
        options = spec.core_options()
        for section, core in options.items():
            if core.weights_from is None:
                continue
            if section == "backbone" and core.weights_from.format == "hf":
                from .hf import plan_hf

                found = plan_hf(model, core.weights_from, shapes, spec)
                for other in found:
                    if other != section and options[other].weights_from is not None:
                        add(
                            f"{other}.weights_from",
                            f"the backbone's model folder ({core.weights_from.path}) fills this component already; "
                            "remove one of the two",
                        )
            else:
                found = {section: plan_weights(model, section, core.weights_from, shapes)}
            for where, plan in found.items():
                for problem in plan.problems:
                    add(f"{section}.weights_from", problem)
                plans[where] = plan
    return issues, plans


def _check_special_tokens(model: MultimodalGPT, spec: Spec, add: Any) -> None:
    """Tokens named by ``special_tokens_needed`` (fusion, heads) and by the tasks' objectives."""
    text_inputs = [k for k, e in model.encoders.items() if getattr(e, "modality", "") == "text"]
    needs: list[tuple[str, str, str]] = []  # (input, token, who, as a section path)
    for section, module in [("fusion", model.fusion), *((f"heads.{k}", h) for k, h in model.heads.items())]:
        wanted = getattr(module, "special_tokens_needed", None) or ()
        if isinstance(wanted, Mapping):
            needs += [(inp, tok, section) for inp, toks in wanted.items() for tok in toks]
        else:
            needs += [(inp, tok, section) for inp in text_inputs for tok in wanted]
    reg = _registry()
    for tname, task in spec.tasks.items():
        key = f"objective:{task.objective}"
        toks = reg.get("objective", task.objective).special_tokens if key in reg else ()
        if task.text_input in model.processors:  # the objective's registration names them
            needs += [(task.text_input, tok, f"tasks.{tname}") for tok in toks]
    for inp, tok, who in needs:
        proc = model.processors.get(inp)
        if proc is None:
            add(who, f"needs the special token {tok} in input {inp!r}, which has no processor")
            continue
        have = getattr(proc, "special_tokens", None)
        if not isinstance(have, Mapping):
            add(who, f"needs the special token {tok} but the processor of {inp!r} lists no special_tokens")
        elif tok not in have:
            add(
                who,
                f"needs the special token {tok} but the processor of encoders.{inp} has none",
                f"its special tokens: {', '.join(have) or '(none)'}",
            )


def _max_tokens(enc: nn.Module, proc: Any) -> int | None:
    """The most tokens an encoder produces for one sample, when it or its processor says."""
    for value in (getattr(enc, "max_tokens", None), getattr(enc, "num_tokens", None)):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    value = getattr(proc, "max_length", None) if proc is not None else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _check_context(model: MultimodalGPT, spec: Spec, add: Any) -> None:
    """The longest fused sequence the inputs can make must fit the backbone's context_length."""
    counts = {k: _max_tokens(e, model.processors.get(k)) for k, e in model.encoders.items()}
    n = model.fusion.max_sequence_length(dict(counts))  # the core's fusions answer as a plugin's does
    if n is None:
        return
    known = ", ".join(f"{m}: {c} tokens" for m, c in counts.items() if c is not None)
    total, parts = int(n), [f"{spec.fusion.component} fusion of {known}"]
    ctx = model.backbone.config.context_length
    if total > ctx:
        text = [k for k, e in model.encoders.items() if getattr(e, "modality", "") == "text"]
        hint = f"raise backbone.context_length to at least {total}"
        if text:
            hint += " or lower " + " / ".join(f"encoders.{k}.max_length" for k in text)
        add(
            "backbone.context_length",
            f"the longest fused sequence has {total} positions ({'; '.join(parts)}), more than context_length = {ctx}",
            hint,
        )


def _policy_groups(model: MultimodalGPT, section: str) -> list[tuple[nn.Module, tuple[str, ...]]]:
    """The modules a section's training policy governs, each with the prefixes it leaves alone."""
    if section == "backbone":
        return [(model.backbone, ("inserts",))]
    if section == "fusion":
        return [(model.fusion, ()), *((m, ()) for m in model.backbone.inserts.values())]
    parts = section.split(".")
    if len(parts) == 3:
        return [(model.projectors[parts[1]], ())] if parts[1] in model.projectors else []
    container = model.encoders if parts[0] == "encoders" else model.heads
    return [(container[parts[1]], ())]


def _check_lora_targets(model: MultimodalGPT, spec: Spec, add: Any) -> None:
    from .lora import adapted_layers, condense, lora_candidates, match_targets

    for section, core in spec.core_options().items():
        if core.train != "lora" or core.lora is None:
            continue
        groups = _policy_groups(model, section)
        # the layers a built model has wrapped already count as matched, as they were when built
        names = [n for module, ex in groups for n in lora_candidates(module, ex) + adapted_layers(module, ex)]
        _, unused = match_targets(names, core.lora.targets)
        if unused:
            add(
                f"{section}.lora.targets",
                f"{unused} match no linear layer of the component",
                f"its linear layers: {condense(names) or '(none)'}",
            )


def _registry() -> Registry:
    from .plugins import get_registry

    return get_registry()


def _registry_or_none() -> Registry | None:
    try:
        return _registry()
    except Exception:  # modality cross-check only; the build itself already used a registry
        return None
