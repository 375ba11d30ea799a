"""Generation prompts framed as the model was trained to read them, and the input generation
continues (split from generation.py, which re-exports the public names).

:func:`trained_attention` (the attention mode a model's spec trains an LM head with),
:func:`prompt_separator` (whether its prompts end with ``<sep>``), :func:`prompt_records`
(records that make generation prompts, as ``mmcore generate --prompt`` makes them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .errors import MMCoreError
from .objectives import objective_component, task_attention, task_head

__all__ = ["trained_attention", "prompt_separator", "prompt_records"]


def trained_attention(model: Any, head: str) -> str | None:
    """The attention mode the model's spec trains LM head ``head`` with, which generation
    uses for the prompt by default: ``"prefix"`` when its ``prefix_lm`` tasks train it
    (conditional generation: the prompt, and any image or audio, was attended
    bidirectionally), ``"causal"`` when ``lm`` tasks do; a task's ``attention`` overrides its
    objective's default. None (the backbone's configured attention) when the model has no
    spec, no task trains the head, or its tasks disagree: pass ``mode=`` then."""
    modes = {task_attention(t) for t in _lm_tasks(model, head)}
    return modes.pop() if len(modes) == 1 else None


def _lm_tasks(model: Any, head: str) -> list[Any]:
    """The tasks of the model's spec that train LM head ``head`` to generate: with an objective
    that reads text under causal or prefix attention (``lm`` and ``prefix_lm`` among the core's;
    not ``mlm``, whose bidirectional attention generation cannot use)."""
    tasks = getattr(getattr(model, "spec", None), "tasks", None) or {}
    heads = list(model.heads)
    return [t for t in tasks.values() if _generative(objective_component(t)) and task_head(t, heads) == head]


def _generative(comp: Any) -> bool:
    return comp.text and comp.attention in ("causal", "prefix")


def prompt_separator(model: Any, head: str) -> bool:
    """Whether a generation prompt for LM head ``head`` ends with ``<sep>``, from what the
    model's spec trains the head with: True when every task training it has an objective whose
    text needs ``<sep>`` (``prefix_lm``: its samples are ``<bos> prompt <sep> target <eos>``); False when ``lm`` tasks
    do (their text never held a ``<sep>``: the prompt is plain text to continue), when the tasks
    disagree, and when the model has no spec or no task trains the head."""
    seps = {"<sep>" in objective_component(t).special_tokens for t in _lm_tasks(model, head)}
    return seps == {True}


def prompt_records(
    model: Any,
    prompts: Sequence[str | Mapping[str, Any]],
    *,
    text_input: str | None = None,
    head: str | None = None,
    separator: bool | None = None,
) -> list[dict[str, Any]]:
    """Records for :meth:`MultimodalGPT.preprocess` that make generation prompts, the same way
    ``mmcore generate --prompt`` makes them (it calls this).

    ``prompts``: a string (the text prompt) or a record whose generated input (``text_input``,
    default: the one :func:`generate` continues) holds the text prompt, next to any other
    inputs (``{"text": "a photo of", "image": "cat.png"}``). The text becomes
    ``{"prompt": text}`` (``<bos> text <sep>``) when :func:`prompt_separator` says the model was
    trained with a separator (``prefix_lm``), else ``{"prompt": text, "sep": False}``
    (``<bos> text``: a continuation, no ``<sep>``, no ``<eos>``). ``separator`` overrides the
    choice. A plain string record (``{"text": "Return the"}``) is training data: it ends with
    ``<eos>``, which tells the model the text is over.

        batch = model.preprocess(prompt_records(model, ["Return the"]), targets=())
        ids = mmcore.generate(model, batch, mmcore.GenerationConfig(max_new_tokens=40))
    """
    text_input, head = _generated_input(model, text_input, head)
    sep = prompt_separator(model, head) if separator is None else separator
    out = []
    for i, p in enumerate(prompts):
        rec = {text_input: p} if isinstance(p, str) else dict(p)
        text = rec.get(text_input, "")
        if not isinstance(text, str):
            raise MMCoreError(
                f"prompt {i}: input {text_input!r} must hold the prompt's text (a str), got {type(text).__name__}"
            )
        rec[text_input] = {"prompt": text} if sep else {"prompt": text, "sep": False}  # type: ignore[assignment]
        out.append(rec)
    return out


def _generated_input(model: Any, text_input: str | None, head: str | None) -> tuple[str, str]:
    """(the input generation continues, the LM head over it): the named ones, else the named
    head's input, else the only text input, else (text-to-image, say) the only input an LM head
    predicts; and that input's LM head."""
    texts = [k for k, e in model.encoders.items() if getattr(e, "modality", "") == "text"]
    if text_input is None:
        predicted = sorted({h.input for h in model.heads.values() if h.input is not None} & set(model.encoders))
        head_input = model.heads[head].input if head is not None and head in model.heads else None
        if head_input in model.encoders:
            text_input = head_input
        elif len(texts) == 1 and (texts[0] in predicted or len(predicted) != 1):
            text_input = texts[0]
        elif len(predicted) == 1:
            text_input = predicted[0]
        else:
            raise MMCoreError(f"say which text input to generate (text_input=...); inputs: {list(model.encoders)}")
    if text_input not in model.encoders:
        raise MMCoreError(f"no input {text_input!r}; inputs: {list(model.encoders)}")
    if head is None:
        head = next(
            (n for n, h in model.heads.items() if h.input is not None and h.input == text_input),
            None,
        )
    if head is None or head not in model.heads or model.heads[head].input is None:
        raise MMCoreError(f"the model has no LM head over {text_input!r}; heads: {list(model.heads)}")
    return text_input, head  # type: ignore[return-value]
