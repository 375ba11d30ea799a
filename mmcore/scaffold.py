"""``mmcore new-plugin NAME --kind encoder|fusion|head``: write a complete plugin distribution.

The result installs with pip, shows in ``mmcore plugins``, composes from a spec and passes
its own tests (mmcore's conformance kit) as generated::

    mmcore-NAME/
        pyproject.toml            entry point (group ``mmcore``), dependency on this core's series
        README.md                 install, use, options, test, versions, publish
        src/mmcore_NAME/
            __init__.py
            plugin.py             options model + the registration hook (no torch)
            <kind>.py             the component (and, for an encoder, its Processor)
        tests/test_NAME.py        the conformance kit and the component's own tests

The component is ``<kind>:NAME.<kind>`` (e.g. ``encoder:demo_depth.encoder``); an
encoder's modality is NAME. Templates are package data in ``mmcore/templates``.

Standard library only (no torch): the command runs as fast as ``mmcore --help``.
"""

from __future__ import annotations

import importlib.util
import keyword
import os
import re
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from string import Template

from .errors import MMCoreError
from .version import __version__

__all__ = ["KINDS", "ScaffoldError", "core_range", "new_plugin", "plugin_files"]

#: The kinds of component ``new-plugin`` writes.
KINDS = ("encoder", "fusion", "head")

_DESCRIPTIONS = {
    "encoder": "Patch encoder for lists of numbers",
    "fusion": "One summary token per input, then the text",
    "head": "Mean-pooled classification head",
}
_PROCESSOR_NOTE = {"encoder": " and its Processor", "fusion": "", "head": ""}


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


def plugin_files(name: str, kind: str) -> dict[str, str]:
    """The files of the plugin, path (relative to ``mmcore-NAME/``) -> content."""
    _check_name(name)
    if kind not in KINDS:
        raise ScaffoldError(f"unknown kind {kind!r}; new-plugin writes one of: {', '.join(KINDS)}")
    from .version import __version__

    package = f"mmcore_{name}"
    rng = core_range(__version__)
    values = {
        "name": name,
        "kind": kind,
        "package": package,
        "module": kind,
        "dist": f"mmcore-{name}",
        "Class": "".join(part.capitalize() for part in name.split("_") if part) or "Plugin",
        "component": f"{name}.{kind}",
        "modality": name,
        "description": _DESCRIPTIONS[kind],
        "core_range": rng,
        "core_series": rng.replace(",", ", "),
        "processor_note": _PROCESSOR_NOTE[kind],
    }
    root = resources.files("mmcore.templates")

    def render(rel: str) -> str:
        text = (root / rel).read_text(encoding="utf-8")
        try:
            return Template(text).substitute(values)
        except (KeyError, ValueError) as exc:  # a broken template is a bug of mmcore: say which
            raise ScaffoldError(f"template {rel}: {type(exc).__name__}: {exc}") from exc

    values["usage"] = render(f"{kind}/usage.md.tmpl").strip()
    values["options"] = render(f"{kind}/options.md.tmpl").strip()
    values["extra_tests"] = render(f"{kind}/extra_tests.py.tmpl").rstrip()
    return {
        "pyproject.toml": render("common/pyproject.toml.tmpl"),
        "README.md": render("common/README.md.tmpl"),
        f"src/{package}/__init__.py": render("common/package_init.py.tmpl"),
        f"src/{package}/plugin.py": render(f"{kind}/plugin.py.tmpl"),
        f"src/{package}/{kind}.py": render(f"{kind}/component.py.tmpl"),
        f"tests/test_{name}.py": render("common/test_plugin.py.tmpl").rstrip() + "\n",
    }


def new_plugin(name: str, kind: str, directory: str | os.PathLike[str] = ".") -> Path:
    """Write the plugin ``mmcore-NAME/`` into ``directory``; return its path.

    Raises :class:`ScaffoldError` when ``name`` is not a lower-case Python identifier,
    ``kind`` is not one of :data:`KINDS`, ``directory`` does not exist, the target
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
