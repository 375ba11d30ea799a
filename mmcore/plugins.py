"""The plugin manager: discovery through entry points, registration in code, the registry.

mmcore is extended only through pluggy hooks (:mod:`mmcore.hookspecs`). Plugins come from

* the entry-point group ``mmcore`` of installed distributions (loaded automatically,
  unless ``MMCORE_DISABLE_PLUGIN_AUTOLOAD`` is set, as with pytest's
  ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``);
* :func:`register` for notebooks and tests;
* the core itself: :mod:`mmcore.builtin` registers the core's components through the
  same hook as every other plugin.

A plugin that fails to import, a hook that fails, and a hook that matches no specification
(:meth:`PluginManager.check_pending`: a misspelled hook name, or a hook function not marked
with ``@mmcore.hookimpl``) are reported (:attr:`PluginManager.failures`, and by
``mmcore plugins``) and every other plugin keeps working. Strict mode (``strict=True`` or
``MMCORE_STRICT_PLUGINS=1``) turns such failures into errors.
``MMCORE_BLOCK_PLUGINS=a,b`` skips the named entry points (like pytest's ``-p no:name``).

The plugin manager is the only global state of mmcore (:func:`get_manager`).
Importing this module does not import torch.
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
import inspect
import os
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError, PluginLoadError
from .registry import Component, Registry

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginInfo",
    "PluginManager",
    "get_manager",
    "reset_manager",
    "register",
    "unregister",
    "get_registry",
]

ENTRY_POINT_GROUP = "mmcore"
ENV_DISABLE_AUTOLOAD = "MMCORE_DISABLE_PLUGIN_AUTOLOAD"
ENV_STRICT = "MMCORE_STRICT_PLUGINS"
ENV_BLOCK = "MMCORE_BLOCK_PLUGINS"
CORE_PLUGIN = "mmcore"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


@dataclass(frozen=True)
class PluginInfo:
    """What ``mmcore plugins`` shows for one plugin."""

    name: str
    distribution: str | None
    version: str | None
    components: tuple[Component, ...]


class PluginManager:
    """pluggy's manager plus mmcore's discovery policy and the component registry.

    Args:
        autoload: load the ``mmcore`` entry points now (default: yes, unless
            ``MMCORE_DISABLE_PLUGIN_AUTOLOAD`` is set).
        strict: raise on the first plugin that fails to load instead of reporting it
            (default: ``MMCORE_STRICT_PLUGINS``).
        blocked: entry-point names to skip (default: ``MMCORE_BLOCK_PLUGINS``).
        entry_points: entry points to consider instead of the installed ones (tests).
    """

    def __init__(
        self,
        *,
        autoload: bool | None = None,
        strict: bool | None = None,
        blocked: Iterable[str] | None = None,
        entry_points: Iterable[md.EntryPoint] | None = None,
    ):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.strict = _env_flag(ENV_STRICT) if strict is None else strict
        if blocked is None:
            blocked = [b.strip() for b in os.environ.get(ENV_BLOCK, "").split(",") if b.strip()]
        self.blocked = set(blocked)
        self.failures: list[PluginLoadError] = []
        self._dist: dict[str, tuple[str | None, str | None]] = {}
        self._registry: Registry | None = None

        from . import builtin  # the core's own components, registered like any plugin

        self.register(builtin, name=CORE_PLUGIN, distribution=("mmcore", _version("mmcore")))
        if autoload is None:
            autoload = not _env_flag(ENV_DISABLE_AUTOLOAD)
        if autoload or entry_points is not None:
            self.load_entrypoints(entry_points)

    # --- discovery -------------------------------------------------------------------

    def load_entrypoints(self, entry_points: Iterable[md.EntryPoint] | None = None) -> None:
        """Import and register every entry point of the ``mmcore`` group.

        Unlike ``pluggy.PluginManager.load_setuptools_entrypoints``, a plugin that raises
        while importing is recorded in :attr:`failures` (with its traceback) and the
        others still load; in strict mode the first failure is raised.
        """
        eps = md.entry_points(group=ENTRY_POINT_GROUP) if entry_points is None else entry_points
        for ep in eps:
            if ep.name in self.blocked or self.pm.is_registered(ep.name) or ep.name in self._dist:
                continue
            dist = getattr(ep, "dist", None)
            dist_info = (dist.name, dist.version) if dist is not None else (None, None)
            try:
                obj = ep.load()
                self.register(obj, name=ep.name, distribution=dist_info)
            except Exception as exc:
                failure = PluginLoadError(
                    entry_point=f"{ep.name} = {ep.value}",
                    distribution=_fmt_dist(*dist_info) if dist is not None else None,
                    error=exc,
                    traceback=traceback.format_exc(),
                )
                if self.strict:
                    raise failure from exc
                self.failures.append(failure)

    def register(
        self, plugin: Any, name: str | None = None, distribution: tuple[str | None, str | None] | None = None
    ) -> str:
        """Register a plugin object (module or instance with hookimpls). Returns its name."""
        try:
            registered = self.pm.register(plugin, name=name)
        except ValueError as exc:  # pluggy: name or object already registered
            raise PluginError(f"cannot register plugin {name or plugin!r}: {exc}") from exc
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {name or plugin!r} has an invalid hook: {exc}") from exc
        if registered is None:  # pluggy returns None only for blocked names
            raise PluginError(f"cannot register plugin {name or plugin!r}: the name is blocked")
        self._dist[registered] = distribution or (None, None)
        self._registry = None
        pending = self.check_pending(registered)
        if pending and self.strict:
            self.unregister(registered)
            raise pending[0].error
        self.failures += pending
        return registered

    def check_pending(self, plugin: str | None = None) -> list[PluginLoadError]:
        """Hook functions of the registered plugins (or of ``plugin``) that pluggy would ignore.

        As pluggy's ``check_pending`` (which pytest runs), but every problem at once, each
        naming the plugin, its distribution and the hook specification it may have meant:

        * a function marked ``@mmcore.hookimpl`` whose name matches no hook specification
          (``mmcore_register_component``);
        * a function named like a hook (``mmcore_...``) that is not marked ``@mmcore.hookimpl``,
          so pluggy does not call it.

        :meth:`register` runs it for every plugin it registers: the problems go to
        :attr:`failures` (``mmcore plugins`` lists them), or raise in strict mode.
        """
        specs = sorted(n for n, c in vars(self.pm.hook).items() if not n.startswith("_") and c.has_spec())
        problems: list[PluginLoadError] = []

        def add(name: str, hook: str, what: str) -> None:
            dist = _fmt_dist(*self._dist.get(name, (None, None)))
            close = difflib.get_close_matches(hook, specs, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close and close[0] != hook else ""
            msg = f"plugin {name!r} ({dist or 'registered in code'}): {hook} {what}{hint} (hooks: {', '.join(specs)})"
            problems.append(PluginLoadError(entry_point=name, distribution=dist, error=PluginError(msg), hook=hook))

        for hook, caller in sorted(vars(self.pm.hook).items()):
            if hook.startswith("_") or caller.has_spec():
                continue
            for impl in caller.get_hookimpls():
                if not impl.optionalhook and (plugin is None or impl.plugin_name == plugin):
                    add(impl.plugin_name, hook, "is marked as a hook but matches no hook specification")
        names = [plugin] if plugin is not None else [n for n, _ in self.pm.list_name_plugin()]
        for name in names:
            obj = self.pm.get_plugin(name)
            marked = [f.function for c in vars(self.pm.hook).values() for f in _impls(c) if f.plugin is obj]
            for attr in sorted(vars(obj) if hasattr(obj, "__dict__") else ()):
                value = vars(obj)[attr]
                if (
                    attr.startswith(f"{hookspecs.PROJECT}_")
                    and inspect.isfunction(value)
                    and not any(value is f for f in marked)
                ):
                    add(name, attr, "is not marked with @mmcore.hookimpl, so it is never called")
        return problems

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self._dist.pop(name, None)
        self._registry = None

    # --- the registry ----------------------------------------------------------------

    def _components_of(self, impl: pluggy.HookImpl) -> list[Component]:
        plugin = impl.plugin_name
        dist = _fmt_dist(*self._dist.get(plugin, (None, None)))
        try:
            result = impl.function()
        except Exception as exc:
            raise PluginError(
                f"plugin {plugin!r} ({dist or 'registered in code'}) raised in mmcore_register_components: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if result is None:
            return []
        if not isinstance(result, (list, tuple)) or not all(isinstance(c, Component) for c in result):
            raise PluginError(
                f"plugin {plugin!r} ({dist or 'registered in code'}): mmcore_register_components must return "
                f"a list of mmcore.Component, got {type(result).__name__}: {result!r:.200}"
            )
        return [replace(c, plugin=plugin, distribution=dist) for c in result]

    @property
    def registry(self) -> Registry:
        """Every component of every registered plugin (built on first use, then cached)."""
        if self._registry is None:
            reg = Registry()
            for impl in reversed(self.pm.hook.mmcore_register_components.get_hookimpls()):
                try:
                    comps = self._components_of(impl)
                except PluginError as exc:
                    if self.strict:
                        raise
                    self.failures.append(
                        PluginLoadError(
                            entry_point=impl.plugin_name,
                            distribution=_fmt_dist(*self._dist.get(impl.plugin_name, (None, None))),
                            error=exc,
                            hook="mmcore_register_components",
                        )
                    )
                    continue
                for c in comps:
                    reg.add(c)
            self._registry = reg
        return self._registry

    def plugins(self) -> list[PluginInfo]:
        """The registered plugins with their distributions and components, core first."""
        by_plugin: dict[str, list[Component]] = {}
        for c in self.registry:
            by_plugin.setdefault(c.plugin or "", []).append(c)
        out = []
        for name in self._dist:
            if self.pm.get_plugin(name) is None:
                continue
            dname, version = self._dist[name]
            out.append(PluginInfo(name, dname, version, tuple(by_plugin.get(name, ()))))
        return out

    def distribution_of(self, plugin: str) -> tuple[str | None, str | None]:
        return self._dist.get(plugin, (None, None))

    def call_add_commands(self, subparsers: Any) -> None:
        """Let every plugin add ``mmcore`` subcommands; a failure names the plugin and is reported."""
        for impl in reversed(self.pm.hook.mmcore_add_commands.get_hookimpls()):
            kwargs = {"subparsers": subparsers} if "subparsers" in impl.argnames else {}
            try:
                impl.function(**kwargs)
            except Exception as exc:
                dist = _fmt_dist(*self._dist.get(impl.plugin_name, (None, None)))
                err = PluginError(
                    f"plugin {impl.plugin_name!r} ({dist or 'registered in code'}) raised in "
                    f"mmcore_add_commands: {type(exc).__name__}: {exc}"
                )
                if self.strict:
                    raise err from exc
                self.failures.append(
                    PluginLoadError(
                        entry_point=impl.plugin_name, distribution=dist, error=err, hook="mmcore_add_commands"
                    )
                )

    # --- build-time hooks ------------------------------------------------------------

    def call_model_built(self, model: Any, spec: Any) -> None:
        """Call every ``mmcore_model_built`` implementation; errors name the plugin.

        :func:`mmcore.build` and :func:`mmcore.load` call it once per model they return."""
        for impl in reversed(self.pm.hook.mmcore_model_built.get_hookimpls()):
            kwargs = {k: v for k, v in (("model", model), ("spec", spec)) if k in impl.argnames}
            try:
                impl.function(**kwargs)
            except Exception as exc:
                dist = _fmt_dist(*self._dist.get(impl.plugin_name, (None, None)))
                raise PluginError(
                    f"plugin {impl.plugin_name!r} ({dist or 'registered in code'}) raised in "
                    f"mmcore_model_built: {type(exc).__name__}: {exc}"
                ) from exc


def _impls(caller: Any) -> list[pluggy.HookImpl]:
    return caller.get_hookimpls() if isinstance(caller, pluggy.HookCaller) else []


def _fmt_dist(name: str | None, version: str | None) -> str | None:
    if name is None:
        return None
    return f"{name} {version}" if version else name


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


_manager: PluginManager | None = None


def get_manager() -> PluginManager:
    """The process-wide plugin manager, created (and entry points loaded) on first use."""
    global _manager
    if _manager is None:
        _manager = PluginManager()
    return _manager


def reset_manager(manager: PluginManager | None = None) -> PluginManager | None:
    """Replace the process-wide manager (``None``: create a fresh one on next use).

    Returns the previous one, so tests can restore it.
    """
    global _manager
    old, _manager = _manager, manager
    return old


def register(plugin: Any, name: str | None = None) -> str:
    """Register a plugin object in code (a module or an object with hookimpls)."""
    return get_manager().register(plugin, name=name)


def unregister(name: str) -> None:
    get_manager().unregister(name)


def get_registry() -> Registry:
    """The registry of the process-wide plugin manager."""
    return get_manager().registry
