"""mmcore's pytest plugin (entry point ``pytest11: mmcore``): the conformance kit in a test suite.

A test that takes the ``mmcore_component`` argument runs once per registered component
(an :class:`mmcore.Component`, the test id is its ``kind:name``), so a component a plugin
adds is checked without editing the test. The ``mmcore_components`` marker chooses
which, by ``kind:name`` glob patterns (default: every registered component)::

    import pytest
    from mmcore.testing import check_component

    @pytest.mark.mmcore_components("encoder:demo_depth.*")
    def test_conformance(mmcore_component):
        check_component(mmcore_component)

No pattern matching anything is a collection error (an uninstalled plugin never
passes silently). This module imports neither torch nor the kit: it is loaded by every
pytest run in an environment where mmcore is installed.
"""

from __future__ import annotations

import fnmatch
from typing import Any

FIXTURE = "mmcore_component"
MARKER = "mmcore_components"


def pytest_configure(config: Any) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(*patterns): run a test taking `{FIXTURE}` once per registered mmcore component whose "
        "kind:name matches one of the glob patterns (default: all), e.g. 'encoder:demo.*'",
    )


def registered(*patterns: str) -> list[Any]:
    """The registered components whose ``kind:name`` matches any of the glob patterns (all without one)."""
    from mmcore.plugins import get_registry

    pats = patterns or ("*",)
    return [c for c in get_registry() if any(fnmatch.fnmatchcase(c.key, p) for p in pats)]


def pytest_generate_tests(metafunc: Any) -> None:
    if FIXTURE not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker(MARKER)
    patterns = tuple(marker.args) if marker is not None else ()
    comps = registered(*patterns)
    if not comps:
        raise ValueError(
            f"{metafunc.definition.nodeid}: no registered mmcore component matches {list(patterns) or ['*']}; "
            "is the plugin installed (`mmcore plugins` lists what is)?"
        )
    metafunc.parametrize(FIXTURE, comps, ids=[c.key for c in comps])
