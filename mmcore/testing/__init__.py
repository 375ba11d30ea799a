"""The conformance kit: check that a component keeps the contract of its kind.

Plugin authors run it in their own tests before publishing; mmcore runs it over every
registered component in its own. As plain functions::

    from mmcore.testing import check_component

    check_component("encoder:demo_depth.patch")          # a registered component
    check_component(my_component, options={"dim": 16})  # an mmcore.Component record

or through the pytest plugin that ships with mmcore (loaded automatically once mmcore is
installed): a test that takes the ``mmcore_component`` fixture runs once per registered
component matching its ``mmcore_components`` marker::

    import pytest
    from mmcore.testing import check_component

    @pytest.mark.mmcore_components("encoder:demo_depth.*")
    def test_conformance(mmcore_component):
        check_component(mmcore_component)

Every failing check raises :class:`ConformanceError` (an ``AssertionError``) whose
message names the check, the component and what is wrong. The checks per kind and the
conventions a component may follow to be checkable (example options, example values,
example targets) are documented in docs/plugins.md and in :func:`check_component`.

Importing this package does not import torch (the pytest plugin imports it at start-up);
the functions load :mod:`mmcore.testing.kit` on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "ConformanceError",
    "Report",
    "CHECKS",
    "PROCESSOR_CHECKS",
    "check_component",
    "check_encoder",
    "check_processor",
    "check_projector",
    "check_fusion",
    "check_head",
    "check_objective",
    "example_values",
]

_LAZY = set(__all__) - {"check_component", "check_objective"}


def check_component(component: Any, options: Any = None, *, registry: Any = None, **kwargs: Any) -> Any:
    """Run every check of the component's kind (:func:`mmcore.testing.kit.check_component`;
    objectives: :func:`mmcore.testing.objective_kit.check_objective`)."""
    from . import capability_kit, kit, objective_kit

    comp = kit._resolve(component, None, registry)
    if comp.kind == "objective":
        return objective_kit.check_objective(comp, options, **kwargs)
    report = kit.check_component(comp, options, registry=registry, **kwargs)
    # the capabilities the component (an encoder's processor, a fusion) declares: capability_kit.py
    checks = {
        "encoder": capability_kit.CAPABILITY_CHECKS,
        "fusion": capability_kit.FUSION_CAPABILITY_CHECKS,
        "head": capability_kit.HEAD_CAPABILITY_CHECKS,
    }
    run = {
        "encoder": capability_kit.check_processor_capabilities,
        "fusion": capability_kit.check_fusion_capabilities,
        "head": capability_kit.check_head_capabilities,
    }
    if comp.kind in run:
        skip = kwargs.get("skip", ())
        problems = [p for p in run[comp.kind](comp, options) if p[0] not in skip]
        if problems:
            raise kit.ConformanceError(kit._label(comp), problems, report)
        report.passed += [c for c in checks[comp.kind] if c not in skip]
    return report


def check_objective(component: Any, options: Any = None, **kwargs: Any) -> Any:
    """The checks of an ``objective`` component (:mod:`mmcore.testing.objective_kit`)."""
    from . import kit, objective_kit

    return objective_kit.check_objective(kit._resolve(component, "objective", None), options, **kwargs)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import kit

        value = getattr(kit, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mmcore.testing' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from .kit import (
        CHECKS,
        PROCESSOR_CHECKS,
        ConformanceError,
        Report,
        check_encoder,
        check_fusion,
        check_head,
        check_processor,
        check_projector,
        example_values,
    )
