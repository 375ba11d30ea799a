"""Which distributions a saved model needs, and whether the installed ones can load it.

:func:`record` lists, for a spec, every distribution that provides one of its components
(name, version, the components, and the range of core versions the distribution declares
it works with); :func:`mmcore.save` writes it into ``manifest.json`` (``distributions``)
and the weights' metadata. :func:`check` runs first in :func:`mmcore.load`: every recorded
distribution must be installed in a compatible version, and every installed one must
accept the running core; otherwise one :class:`~mmcore.ModelDirError` lists each problem
with the exact command that installs what the model was saved with, e.g.
``pip install "mmcore-vision==0.1.0"``.

Compatible means the same release series: the same major version, or for ``0.x`` versions
the same minor version (``0.1.0`` and ``0.1.7`` are compatible, ``0.1.0`` and ``0.2.0`` or
``1.0.0`` are not), as semantic versioning has it.

This module imports the standard library and ``packaging`` only (no torch).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from typing import Any

from .errors import ModelDirError

__all__ = ["CORE", "record", "check", "installed", "compatible", "core_range", "origin"]

CORE = "mmcore"


def installed(dist: str) -> tuple[str, list[str]] | None:
    """``(version, requirements)`` of an installed distribution, or None when it is not installed."""
    try:
        d = importlib.metadata.distribution(dist)
    except (importlib.metadata.PackageNotFoundError, ValueError):  # ValueError: an empty name
        return None
    return str(d.version), list(d.requires or [])


def core_range(requires: list[str]) -> str | None:
    """The version specifier a distribution puts on ``mmcore`` (``">=0.1,<0.2"``), or None."""
    from packaging.requirements import InvalidRequirement, Requirement

    for line in requires:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if _norm(req.name) == CORE and (req.marker is None or req.marker.evaluate({"extra": ""})):
            return str(req.specifier) or None
    return None


def compatible(saved: str, current: str) -> bool:
    """True when ``current`` is in the release series of ``saved`` (same major; same minor for 0.x)."""
    from packaging.version import InvalidVersion, Version

    try:
        a, b = Version(saved), Version(current)
    except InvalidVersion:
        return saved == current
    if a.major != b.major:
        return False
    return a.major > 0 or a.minor == b.minor


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def record(spec: Any, registry: Any, manager: Any = None) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """``(components, distributions)`` for a spec's components.

    ``components``: ``"kind:name" -> "distribution version"`` (the provider, for messages).
    ``distributions``: ``name -> {"version", "components", "requires_mmcore"}`` for every
    distribution other than the core's own that provides a component the spec uses.
    """
    components: dict[str, str] = {}
    dists: dict[str, dict[str, Any]] = {}
    for _, cs in spec.components():
        key = f"{cs.kind}:{cs.component}"
        if key not in registry:
            continue
        comp = registry.get(cs.kind, cs.component)
        components[key] = comp.source
        name, version = (None, None)
        if manager is not None and comp.plugin is not None:
            name, version = manager.distribution_of(comp.plugin)
        if name is None and comp.distribution:
            name, _, version = comp.distribution.partition(" ")
        if not name or _norm(name) == CORE:
            continue
        entry = dists.setdefault(name, {"version": version or None, "components": [], "requires_mmcore": None})
        if key not in entry["components"]:  # two inputs of one encoder component: listed once
            entry["components"].append(key)
    for name, entry in dists.items():
        found = installed(name)
        if found is not None:
            entry["requires_mmcore"] = core_range(found[1])
            url = origin(name)
            if url is not None:
                entry["origin"] = url
    return components, dists


def origin(dist: str) -> str | None:
    """Where an installed distribution was installed from when not from a package index: the
    URL of its ``direct_url.json`` (PEP 610: a local folder, a wheel file, a VCS URL), else None."""
    import json

    try:
        text = importlib.metadata.distribution(dist).read_text("direct_url.json")
        url = json.loads(text).get("url") if text else None
    except (importlib.metadata.PackageNotFoundError, ValueError, AttributeError):
        return None
    return str(url) if isinstance(url, str) and url else None


def install_advice(dist: str, version: str | None, manifest: Mapping[str, Any]) -> str:
    """How to install ``dist`` for a model saved with it: the pinned command for a first-party
    plugin (registry.toml); for another, also where the saving machine had it from."""
    from .catalog import first_party

    pin = _pin(dist, version)
    if dist in first_party():
        return pin
    entry = (manifest.get("distributions") or {}).get(dist)
    url = entry.get("origin") if isinstance(entry, Mapping) else None
    if isinstance(url, str) and url:
        where = url.removeprefix("file://")
        return f"it is not a published mmcore plugin; the model was saved with it installed from {url}: pip install {where!r}"
    return (
        f"it is not a published mmcore plugin (registry.toml does not list it), so install it from where you got it "
        f"(its source or wheel); {pin} works only if your package index has it"
    )


def _recorded(manifest: Mapping[str, Any]) -> dict[str, str | None]:
    """Distribution -> version the model was saved with (older manifests: from ``components``)."""
    dists = manifest.get("distributions")
    if isinstance(dists, Mapping):  # a crafted manifest may hold anything: names and versions become strings
        found = {str(k): (v.get("version") if isinstance(v, Mapping) else None) for k, v in dists.items()}
        return {k: None if v is None else str(v) for k, v in found.items() if k.strip()}
    out: dict[str, str | None] = {}
    comps = manifest.get("components")
    for source in comps.values() if isinstance(comps, Mapping) else ():
        name, _, version = str(source).partition(" ")
        if name and name != "<unknown>" and _norm(name) != CORE:
            out[name] = version or None
    return out


def _pin(dist: str, version: str | None) -> str:
    return f'pip install "{dist}=={version}"' if version else f'pip install "{dist}"'


def check(manifest: Mapping[str, Any], where: str, core_version: str) -> None:
    """Raise :class:`ModelDirError` listing every recorded distribution that is missing or incompatible.

    Each line ends with the command that installs the version the model was saved with.
    """
    problems = []
    saved_core = manifest.get("mmcore_version")
    if isinstance(saved_core, str) and not compatible(saved_core, core_version):
        problems.append(
            f"it was saved with mmcore {saved_core}, this is mmcore {core_version} (another release series): "
            + _pin(CORE, saved_core)
        )
    for dist, version in _recorded(manifest).items():
        found = installed(dist)
        if found is None:
            problems.append(
                f"{dist} {version or ''} is not installed: ".replace("  ", " ")
                + install_advice(dist, version, manifest)
            )
            continue
        current, requires = found
        if version is not None and not compatible(version, current):
            problems.append(
                f"{dist} {current} is installed but the model was saved with {version} (another release series, "
                f"which may build or name its components differently): {_pin(dist, version)}"
            )
            continue
        allowed = core_range(requires)
        if allowed is not None:
            from packaging.specifiers import SpecifierSet

            if not SpecifierSet(allowed).contains(core_version, prereleases=True):
                problems.append(
                    f"{dist} {current} declares that it works with mmcore{allowed}, but mmcore {core_version} is "
                    f"installed: {_pin(dist, version or current)}"
                )
    if problems:
        raise ModelDirError(
            f"{where}: this model needs distributions that are missing or incompatible:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
