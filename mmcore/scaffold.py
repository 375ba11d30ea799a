"""``mmcore new-plugin NAME --kind encoder|fusion|head|objective ...``: write a complete plugin distribution.

Any mix of kinds goes into one distribution (``--kind encoder --kind head:tab.regress``), each
component under the name the author chooses (``KIND:COMPONENT``; default ``NAME.KIND``). The
result installs with pip, shows in ``mmcore plugins``, composes from a spec and passes its own
tests (mmcore's conformance kit, one test file per component) as generated::

    mmcore-NAME/
        pyproject.toml            entry point (group ``mmcore``), dependency on this core's series
        README.md                 what was generated, install, each component's use and options, test, publish
        src/mmcore_NAME/
            __init__.py
            plugin.py             the options models + the registration hook (no torch)
            <kind>.py             each component (an encoder with its Processor)
        tests/test_NAME.py        (one kind) or tests/test_NAME_<kind>.py (several): the kit and the
                                  component's own tests

An encoder's modality is NAME. Templates are package data in ``mmcore/templates``.

Standard library only (no torch): the command runs as fast as ``mmcore --help``.
"""

from __future__ import annotations

import importlib.util
import json
import keyword
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from string import Template

from .errors import MMCoreError
from .version import __version__

__all__ = ["KINDS", "ScaffoldError", "core_range", "new_plugin", "parse_kinds", "plugin_files"]

#: The kinds of component ``new-plugin`` writes.
KINDS = ("encoder", "fusion", "head", "objective")

_DESCRIPTIONS = {
    "encoder": "Patch encoder for lists of numbers",
    "fusion": "One summary token per input, then the text",
    "head": "Mean-pooled classification head",
    "objective": "Multi-class hinge loss with accuracy",
}
_FILE_NOTE = {
    "encoder": "the encoder and its Processor",
    "fusion": "the fusion",
    "head": "the head",
    "objective": "the objective (targets, loss, streamed metrics)",
}
_IMPORTS = {"encoder": ("Field", "model_validator"), "fusion": ("Field",), "head": ("Field",), "objective": ("Field",)}
_KIT = {
    "encoder": ("Shapes, masks, padding, missing inputs, determinism, gradients, safetensors, dtypes, torch.compile...",
                '"gradients" in report.passed and "state_dict" in report.passed'),
    "fusion": ("Shapes, masks, padding, missing inputs, determinism, gradients, safetensors, dtypes, torch.compile...",
               '"gradients" in report.passed and "state_dict" in report.passed'),
    "head": ("Shapes, masks, padding, missing inputs, determinism, gradients, safetensors, dtypes, torch.compile...",
             '"gradients" in report.passed and "state_dict" in report.passed'),
    "objective": ("Declarations, records (bad targets are bad records), loss and gradient, streamed metrics, eval.",
                  '"loss" in report.passed and "streaming" in report.passed and "eval" in report.passed'),
}  # fmt: skip
_COMPONENT_NAME = re.compile(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*")


class ScaffoldError(MMCoreError):
    """The plugin cannot be written (a bad name, an existing directory...)."""


def core_range(version: str | None = None) -> str:
    """The dependency specifier of a plugin written for this core: its minor series.

    ``0.1.0`` -> ``>=0.1,<0.2`` (before 1.0 a minor release may change the plugin
    interface); ``1.4.2`` -> ``>=1.4,<2``.
    """
    if version is None:
        version = __version__
    m = re.match(r"(\d+)\.(\d+)", version)
    if m is None:
        raise ScaffoldError(f"cannot read a version number from mmcore's version {version!r}")
    major, minor = int(m.group(1)), int(m.group(2))
    upper = f"0.{minor + 1}" if major == 0 else str(major + 1)
    return f">={major}.{minor},<{upper}"


def _check_name(name: str) -> None:
    if not name:
        raise ScaffoldError("the plugin name is empty; give a Python identifier such as 'depth' or 'demo_depth'")
    if not name.isidentifier() or not name.isascii():
        suggestion = re.sub(r"\W", "_", name.replace("-", "_")).strip("_")
        hint = f"; e.g. {suggestion!r}" if suggestion and suggestion.isidentifier() else ""
        raise ScaffoldError(
            f"plugin name {name!r} is not a Python identifier (letters, digits and underscores, not starting with a "
            f"digit): it names the package mmcore_<name> and the component <name>.<kind>{hint}"
        )
    if keyword.iskeyword(name):
        raise ScaffoldError(f"plugin name {name!r} is a Python keyword; choose another")
    if name != name.lower():
        raise ScaffoldError(f"plugin name {name!r} has capitals; use lower case ({name.lower()!r})")


def _camel(text: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[_.]", text) if part)


def parse_kinds(name: str, kinds: str | Sequence[str]) -> dict[str, str]:
    """``["encoder", "head:tab.regress"]`` (or one string, comma-separated) -> kind -> component
    name (default ``NAME.KIND``), in the order :data:`KINDS` lists them. ScaffoldError for an
    unknown or repeated kind and for a component name that is not dotted lower-case identifiers."""
    items = [kinds] if isinstance(kinds, str) else list(kinds)
    out: dict[str, str] = {}
    for item in (part.strip() for entry in items for part in entry.split(",")):
        kind, sep, component = item.partition(":")
        if kind not in KINDS:
            raise ScaffoldError(f"unknown kind {kind!r}; new-plugin writes any of: {', '.join(KINDS)}")
        if kind in out:
            raise ScaffoldError(f"kind {kind!r} given twice; a plugin has at most one component of each kind")
        component = component.strip() if sep else f"{name}.{kind}"
        if not _COMPONENT_NAME.fullmatch(component):
            raise ScaffoldError(
                f"component name {component!r} ({kind}): use dotted lower-case identifiers, e.g. {name}.{kind}"
            )
        out[kind] = component
    if not out:
        raise ScaffoldError(f"give at least one --kind ({', '.join(KINDS)})")
    return {k: out[k] for k in KINDS if k in out}


def plugin_files(name: str, kinds: str | Sequence[str]) -> dict[str, str]:
    """The files of the plugin, path (relative to ``mmcore-NAME/``) -> content; ``kinds`` as
    :func:`parse_kinds` reads them."""
    _check_name(name)
    components = parse_kinds(name, kinds)
    from .version import __version__

    package = f"mmcore_{name}"
    rng = core_range(__version__)
    several = len(components) > 1
    base = {
        "name": name,
        "package": package,
        "dist": f"mmcore-{name}",
        "modality": name,
        "core_range": rng,
        "core_series": rng.replace(",", ", "),
    }
    root = resources.files("mmcore.templates")

    def render(rel: str, values: dict[str, str]) -> str:
        text = (root / rel).read_text(encoding="utf-8")
        try:
            return Template(text).substitute(values)
        except (KeyError, ValueError) as exc:  # a broken template is a bug of mmcore: say which
            raise ScaffoldError(f"template {rel}: {type(exc).__name__}: {exc}") from exc

    per_kind: dict[str, dict[str, str]] = {}
    for kind, component in components.items():
        chosen = component != f"{name}.{kind}"
        cls = _camel(component.rpartition(".")[2]) if chosen else _camel(name) or "Plugin"
        v = {**base, "kind": kind, "module": kind, "component": component, "Class": cls,
             "Config": f"{cls}{kind.capitalize()}Config", "description": _DESCRIPTIONS[kind]}  # fmt: skip
        if kind == "objective":
            head = components.get("head")
            heads = {"cls": {"component": head}} if head else {"cls": {"component": "classify", "num_classes": 2}}
            v["objective_spec"] = json.dumps(
                {"encoders": {"text": {"component": "text.bytes", "max_length": 32}}, "heads": heads}
            )
            v["objective_heads"] = f"({json.dumps(head)},)" if head else "()"
        v["kit_doc"], v["kit_passed"] = _KIT[kind]
        v["usage"] = render(f"{kind}/usage.md.tmpl", v).strip()
        v["options"] = render(f"{kind}/options.md.tmpl", v).strip()
        v["options_where"] = "; for an objective, in the task's `options = {...}`" if kind == "objective" else ""
        v["extra_tests"] = render(f"{kind}/extra_tests.py.tmpl", v).rstrip()
        per_kind[kind] = v
    listing = ", ".join(f"``{k}:{c}``" for k, c in components.items())
    imports = sorted({i for k in components for i in _IMPORTS[k]})
    values = {
        **base,
        "description": "; ".join(_DESCRIPTIONS[k] for k in components),
        "component_list": listing,
        "component_md": ", ".join(f"`{k}:{c}`" for k, c in components.items()),
        "imports": f"from pydantic import {', '.join(imports)}",
        "registrations": "\n\n\n".join(render(f"{k}/registration.py.tmpl", v).strip() for k, v in per_kind.items()),
        "calls": ", ".join(f"*_{k}_components()" for k in components),
        "modules_note": "; ".join(f":mod:`{package}.{k}` holds {_FILE_NOTE[k]}" for k in components) + ".",
        "file_rows": "".join(
            f"| `src/{package}/{k}.py` | `{k}:{c}`: {_FILE_NOTE[k]} |\n" for k, c in components.items()
        )
        + "".join(
            f"| `tests/{_test_file(name, k, several)}` | `{k}:{c}` through the conformance kit, and its own tests |\n"
            for k, c in components.items()
        ),
        "sections": "\n\n".join(render("common/section.md.tmpl", v).strip() for v in per_kind.values()),
    }
    files = {
        "pyproject.toml": render("common/pyproject.toml.tmpl", {**values, "description": values["description"]}),
        "README.md": render("common/README.md.tmpl", values),
        f"src/{package}/__init__.py": render("common/package_init.py.tmpl", values),
        f"src/{package}/plugin.py": render("common/plugin.py.tmpl", values),
    }
    for kind, v in per_kind.items():
        files[f"src/{package}/{kind}.py"] = render(f"{kind}/component.py.tmpl", v)
        files[f"tests/{_test_file(name, kind, several)}"] = render("common/test_plugin.py.tmpl", v).rstrip() + "\n"
    return files


def _test_file(name: str, kind: str, several: bool) -> str:
    return f"test_{name}_{kind}.py" if several else f"test_{name}.py"


def new_plugin(name: str, kind: str | Sequence[str], directory: str | os.PathLike[str] = ".") -> Path:
    """Write the plugin ``mmcore-NAME/`` into ``directory``; return its path.

    ``kind``: one kind, or several (``["encoder", "head:tab.regress"]``; :func:`parse_kinds`).
    Raises :class:`ScaffoldError` when ``name`` is not a lower-case Python identifier,
    a kind is not one of :data:`KINDS` (or a component name is malformed), ``directory`` does not exist, the target
    already exists, or a package ``mmcore_NAME`` is already installed (the new one would
    shadow it or be shadowed). The files appear all at once (written beside the target,
    then renamed into place).
    """
    files = plugin_files(name, kind)
    parent = Path(directory)
    if not parent.is_dir():
        raise ScaffoldError(f"{parent}: no such directory to write the plugin into")
    target = parent / f"mmcore-{name}"
    if target.exists():
        raise ScaffoldError(f"{target} already exists; choose another name or remove it first")
    package = f"mmcore_{name}"
    if importlib.util.find_spec(package) is not None:
        raise ScaffoldError(
            f"a package named {package!r} is already installed; a plugin with the name {name!r} would clash with it "
            "(choose another name)"
        )
    tmp = Path(tempfile.mkdtemp(prefix=f".mmcore-{name}-", dir=parent))
    try:
        for rel, text in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
