"""examples/recipes/stdlib_text.py's paragraphs are a function of the Python installation only."""

from __future__ import annotations

import importlib.util
import inspect

from conftest import ROOT


def _recipe():
    spec = importlib.util.spec_from_file_location("_stdlib_text", ROOT / "examples" / "recipes" / "stdlib_text.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def paragraphs(obj: object) -> list[str]:
    out = []
    for para in (inspect.getdoc(obj) or "").split("\n\n"):
        text = " ".join(para.split())
        if len(text) >= 60 and not text.startswith((">>>", "...")):
            out.append(text)
    return out


def test_docstrings_keep_every_documented_member():
    """Every method of the classes a module defines contributes its paragraphs: none is dropped
    because an earlier, freed docstring happened to have the same id() (the old dedupe did that,
    so the topic split drifted between runs)."""
    recipe = _recipe()
    import numbers

    got = set(recipe.docstrings("numbers"))
    expected = 0
    for cname, cls in sorted(vars(numbers).items()):
        if not (inspect.isclass(cls) and cls.__module__ == "numbers"):
            continue
        for name, meth in sorted(vars(cls).items()):
            if inspect.isfunction(meth):
                for text in paragraphs(meth):
                    expected += 1
                    assert text in got, f"{cname}.{name}'s paragraph {text[:40]!r}... is missing"
    assert expected >= 10
    assert recipe.docstrings("numbers") == recipe.docstrings("numbers")


def test_more_pretraining_text_never_holds_topic_eval_text():
    """corpus_topics_pretrain_more.txt's filter: a paragraph that is, contains or lies inside a topic
    eval paragraph is left out (whatever its source), every other one kept once, in order."""
    recipe = _recipe()
    ev = "The socket module's connect() opens a connection to a remote address and port."
    texts = [
        "Unrelated prose about decimal arithmetic and rounding modes, long enough to count.",
        ev,
        "An introduction. " + ev + " More text after it.",  # contains the eval paragraph
        ev[:70],  # lies inside it
        "Unrelated prose about decimal arithmetic and rounding modes, long enough to count.",
        "Threads share memory; a lock makes a critical section run in one thread at a time.",
    ]
    assert recipe.without_eval_text(texts, {ev}) == [texts[0], texts[5]]


def test_validation_split_is_deterministic_disjoint_and_apart_from_eval():
    """topics_val.jsonl: about a fifth of the training rows, chosen by their text alone (the same rows
    whatever the order), disjoint from the fit rows and together exactly the training rows; the hash is
    salted apart from the eval split's, whose training rows all hash to its upper 80 % (an unsalted
    ``held_out(text, 0.2)`` would pick none of them)."""
    import pytest

    recipe = _recipe()
    texts = [f"paragraph {i}: the socket module opens connections and reads bytes from peers." for i in range(2000)]
    train = [{"text": t, "label": "network"} for t in texts if not recipe.held_out(t, 0.2)]
    ev = [t for t in texts if recipe.held_out(t, 0.2)]
    assert 300 < len(ev) < 500 and len(train) > 1500
    fit, val = recipe.validation_split(train)
    fit_texts, val_texts = {r["text"] for r in fit}, {r["text"] for r in val}
    assert not fit_texts & val_texts
    assert sorted(fit_texts | val_texts) == sorted(r["text"] for r in train)
    assert len(fit) + len(val) == len(train)
    assert not val_texts & set(ev) and not fit_texts & set(ev)
    assert 0.15 < len(val) / len(train) < 0.25, len(val)
    again_fit, again_val = recipe.validation_split(list(reversed(train)))
    assert {r["text"] for r in again_val} == val_texts and {r["text"] for r in again_fit} == fit_texts
    assert [r["text"] for r in fit] == [r["text"] for r in train if r["text"] in fit_texts]  # order kept
    with pytest.raises(ValueError, match="between 0 and 1"):
        recipe.validation_split(train, 1.0)
