"""registry.toml must say exactly what the first-party plugins register."""

from __future__ import annotations

from conftest import ROOT

from mmcore.cli import read_catalog


def test_catalog_matches_installed_plugins(manager):
    catalog = read_catalog(ROOT / "registry.toml")
    dirs = {p.parent.name for p in (ROOT / "plugins").glob("*/pyproject.toml")}
    assert set(catalog) == dirs, "every plugins/<name> needs an entry in registry.toml, and no more"
    by_dist: dict[str, set[str]] = {}
    for c in manager.registry:
        if c.distribution:
            by_dist.setdefault(c.distribution.split(" ")[0], set()).add(c.key)
    for name, entry in catalog.items():
        assert (ROOT / entry["path"] / "pyproject.toml").is_file(), name
        assert entry.get("description"), f"{name}: one-line description missing"
        registered = by_dist.get(entry["distribution"])
        assert registered is not None, f"{entry['distribution']} is not installed or registers nothing"
        assert registered == set(entry["components"]), (
            f"registry.toml [{name}] lists {sorted(entry['components'])} but {entry['distribution']} "
            f"registers {sorted(registered)}"
        )
