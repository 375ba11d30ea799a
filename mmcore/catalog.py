"""The first-party plugin catalog, ``registry.toml``: which distribution provides which component.

Torch-free and below the spec (it reads the file through :mod:`mmcore.tomlfile`), so the spec
can name the distribution to install for an unknown component, and the command line and the
docs generator can list the first-party plugins.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import MMCoreError, SpecError
from .tomlfile import parse_toml, read_spec_file

__all__ = ["catalog_hint", "catalog_path", "first_party", "install_target", "read_catalog"]


def catalog_path() -> Path | None:
    """registry.toml: ``MMCORE_CATALOG`` if set, else the one in the source checkout."""
    env = os.environ.get("MMCORE_CATALOG")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent / "registry.toml"
    return here if here.is_file() else None


def read_catalog(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """The first-party plugin catalog: name -> {distribution, path, components, description}."""
    path = path or catalog_path()
    if path is None or not path.is_file():
        return {}
    try:
        data = parse_toml(read_spec_file(path), file=str(path))
    except SpecError as exc:
        raise MMCoreError(f"{path}: unreadable catalog: {exc}") from exc
    plugins = data.get("plugins", {})
    if not isinstance(plugins, dict):
        raise MMCoreError(f"{path}: [plugins] must be a table of plugin entries")
    return plugins


def first_party() -> set[Any]:
    """The distributions of the core and of every plugin the catalog lists."""
    return {"mmcore"} | {e.get("distribution") for e in read_catalog().values()}


def install_target(entry: dict[str, Any], default: str | None = None) -> Any:
    """What to ``pip install`` for a catalog entry: its folder in this checkout, else its distribution."""
    path = catalog_path()
    local = path.parent / entry["path"] if path is not None and entry.get("path") else None
    return local if local is not None and local.is_dir() else entry.get("distribution", default)


def catalog_hint(key: str) -> str | None:
    """'provided by mmcore-audio: pip install ...' when registry.toml lists the component ``key``."""
    try:
        catalog = read_catalog()
    except Exception:  # the catalog is a convenience; a broken one must not hide the real error
        return None
    for entry in catalog.values():
        if key in entry.get("components", []):
            target = install_target(entry)
            return f"provided by {entry.get('distribution')}, which is not installed: pip install {target}"
    return None
