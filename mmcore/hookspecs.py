"""Hook specifications: the whole plugin interface of mmcore.

A plugin is any Python object (usually a module) with functions named like the hooks
below and decorated with :data:`mmcore.hookimpl`. Installed plugins are found through
the entry-point group ``mmcore``; plugins can also be registered in code with
:func:`mmcore.plugins.register`.

Hooks are called with keyword arguments only, and an implementation may accept fewer
arguments than the specification lists (any subset, none included), so new arguments can be
added to a hook without breaking existing plugins.

After loading, the plugin manager checks every plugin against these specifications
(:meth:`mmcore.plugins.PluginManager.check_pending`, as pytest does with pluggy): a function
marked as a hook whose name matches no specification (a misspelling such as
``mmcore_register_component``), or a function named like a hook but not marked with
:data:`hookimpl`, is reported by ``mmcore plugins``, and is an error under
``MMCORE_STRICT_PLUGINS=1``.

This module imports only pluggy: it is read while listing plugins and validating specs.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Protocol

import pluggy

if TYPE_CHECKING:
    from torch import nn

    from .registry import Component

__all__ = ["PROJECT", "BuiltSpec", "hookimpl", "hookspec"]

PROJECT = "mmcore"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class BuiltSpec(Protocol):
    """What ``mmcore_model_built`` may read of the spec (a :class:`mmcore.Spec`)."""

    name: str
    file: str | None

    def to_toml(self) -> str: ...


# --- registration phase ------------------------------------------------------------


@hookspec
def mmcore_register_components() -> list[Component]:  # type: ignore[empty-body]  # a specification
    """Return the components this plugin provides.

    Takes no arguments. Called once per plugin when the registry is first needed (listing
    plugins, validating a spec, building a model). Return a list of
    :class:`mmcore.Component` records. Each names its kind (``encoder``, ``fusion``,
    ``head``, ``projector``, ``objective``), a dotted name unique across all installed plugins
    (``text.bytes``), its options model (a pydantic model, usually a subclass of
    :class:`mmcore.ComponentConfig`) and a *lazy* factory reference
    ``"package.module:callable"`` that is imported only when the component is built.

    Keep this hook cheap: do not import torch or any heavy library in it, so that
    ``mmcore plugins`` and ``mmcore spec validate`` stay fast.

    All results are collected (not firstresult). Two plugins returning the same
    ``kind:name`` is an error that names both distributions; an exception or a result that
    is not a list of components is reported as this hook's failure, naming the plugin.
    """


@hookspec
def mmcore_add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add subcommands to the ``mmcore`` command line.

    ``subparsers`` is the ``argparse`` sub-parser action of the ``mmcore`` parser: call
    ``subparsers.add_parser(name, help=...)``, add arguments, and
    ``set_defaults(func=callable)`` where ``callable(args) -> int`` is the exit status.
    An implementation that takes no argument is called too.

    Import heavy libraries inside ``callable``, not here: this hook runs for every
    ``mmcore`` invocation, ``--help`` included. A command name that is already taken, or any
    exception, is reported as this hook's failure naming the plugin (an error in strict
    mode). All implementations are called.
    """


# --- build phase -------------------------------------------------------------------


@hookspec
def mmcore_model_built(model: nn.Module, spec: BuiltSpec | None) -> None:
    """Called once for every model a user gets from :func:`mmcore.build` or :func:`mmcore.load`.

    ``model`` is the :class:`mmcore.MultimodalGPT`, complete: built, checked, its weights
    loaded (for :func:`mmcore.load`, the saved weights assigned) and its training policies
    applied. ``spec`` is the validated :class:`mmcore.Spec` it was built from (``None`` only
    when code outside mmcore calls the hook for a model composed from Python objects).

    Not called for the core's internal builds: the weightless meta-device skeleton that
    :func:`mmcore.load` fills, ``mmcore spec validate --build``, or the model a
    consolidation only saves. Called whatever registry the build used. Use it to inspect or
    log the model. Raising here aborts the build with an error naming the plugin. All
    implementations are called; return values are ignored.
    """
