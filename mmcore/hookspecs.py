"""Hook specifications: the whole plugin interface of mmcore.

A plugin is any Python object (usually a module) with functions named like the hooks
below and decorated with :data:`mmcore.hookimpl`. Installed plugins are found through
the entry-point group ``mmcore``; plugins can also be registered in code with
:func:`mmcore.plugins.register`.

Hooks are called with keyword arguments only, and an implementation may accept fewer
arguments than the specification lists, so new arguments can be added to a hook
without breaking existing plugins.

This module imports only pluggy: it is read while listing plugins and validating specs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .registry import Component

PROJECT = "mmcore"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- registration phase ------------------------------------------------------------


@hookspec
def mmcore_register_components() -> list["Component"]:
    """Return the components this plugin provides.

    Called once per plugin when the registry is first needed (listing plugins,
    validating a spec, building a model). Return a list of
    :class:`mmcore.Component` records. Each names its kind (``encoder``, ``fusion``,
    ``head``, ``projector``, ``objective``), a dotted name unique across all installed plugins
    (``text.bytes``), its options model (a pydantic model, usually a subclass of
    :class:`mmcore.ComponentConfig`) and a *lazy* factory reference
    ``"package.module:callable"`` that is imported only when the component is built.

    Keep this hook cheap: do not import torch or any heavy library in it, so that
    ``mmcore plugins`` and ``mmcore spec validate`` stay fast.

    All results are collected (not firstresult). Two plugins returning the same
    ``kind:name`` is an error that names both distributions.
    """


@hookspec
def mmcore_add_commands(subparsers: Any) -> None:
    """Add subcommands to the ``mmcore`` command line.

    ``subparsers`` is the ``argparse`` sub-parser action of the ``mmcore`` parser: call
    ``subparsers.add_parser(name, help=...)``, add arguments, and
    ``set_defaults(func=callable)`` where ``callable(args) -> int`` is the exit status.
    Import heavy libraries inside ``callable``, not here: this hook runs for every
    ``mmcore`` invocation, ``--help`` included. A command name that is already taken is
    an error naming the plugin. All implementations are called.
    """


# --- build phase -------------------------------------------------------------------


@hookspec
def mmcore_model_built(model: Any, spec: Any) -> None:
    """Called after :func:`mmcore.build` composed a model from a spec.

    ``model`` is the :class:`mmcore.MultimodalGPT`, ``spec`` the validated
    :class:`mmcore.Spec` (``None`` when the model was composed from Python objects).
    Use it to inspect or log the model. Raising here aborts the build with an error
    naming the plugin. All implementations are called; return values are ignored.
    """
