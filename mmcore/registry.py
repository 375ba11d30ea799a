"""Component records and the registry that holds them.

A :class:`Component` describes one buildable part (an encoder, a fusion, a head, a
projector, a task's objective): its kind, its dotted name, its options model and a lazy reference to the
factory that builds it. The registry maps ``kind:name`` to components, lists and
filters them (``list("encoder:vision.*")``), and suggests close matches for unknown
names. It never imports a factory until a component is built.

This module imports pydantic and the standard library only.
"""

from __future__ import annotations

import builtins
import difflib
import fnmatch
import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from .errors import DuplicateComponentError, PluginError, UnknownComponentError

__all__ = ["KINDS", "ATTENTION_MODES", "Component", "Registry", "call_factory"]

#: The kinds of component a spec can name (an ``objective`` is named by a ``[tasks.<name>]`` section).
KINDS = ("encoder", "fusion", "head", "projector", "objective")

#: Attention modes an objective may train with (None: the backbone's configured mode).
ATTENTION_MODES = ("causal", "prefix", "bidirectional")


@dataclass(frozen=True)
class Component:
    """One registered component.

    Attributes:
        kind: one of :data:`KINDS`.
        name: dotted name, unique within its kind across all plugins (``text.bytes``).
        config: pydantic model of the component's options (its spec section, minus the
            reserved keys ``component``, ``projector`` and the core options ``train``, ``lora``,
            ``weights_from``, ``freeze``; it must not declare fields of those names). Must not need torch.
        factory: ``"package.module:callable"`` (imported lazily) or a callable. Called as
            ``factory(config, **context)`` where ``context`` depends on the kind (see the
            base classes in :mod:`mmcore.interfaces`). Returns an ``nn.Module``.
        description: one line for ``mmcore plugins``.
        modality: for encoders, the modality they read (``text``, ``image``, ``audio``...).
        processor: for encoders, a lazy reference to the :class:`mmcore.Processor` factory,
            called as ``processor(config)``.
        heads: for objectives, glob patterns of the head components it trains (``("lm",)``);
            empty: any head. ``mmcore spec validate`` checks every task's head against them.
        attention: for objectives, the attention mode it trains with (one of
            :data:`ATTENTION_MODES`; None: the backbone's configured mode). A task's
            ``attention`` overrides it.
        text: for objectives, whether it reads the task's text input (``text_input``), which
            the spec must then have.
        special_tokens: for objectives, tokens the text input's processor must have
            (``("<mask>",)``), checked with the model's other special-token needs.
        plugin: name of the plugin that registered it (filled in by the plugin manager).
        distribution: ``name version`` of the distribution providing it (filled in).
    """

    kind: str
    name: str
    config: type[BaseModel]
    factory: str | Callable[..., Any]
    description: str = ""
    modality: str | None = None
    processor: str | Callable[..., Any] | None = None
    heads: tuple[str, ...] = ()
    attention: str | None = None
    text: bool = False
    special_tokens: tuple[str, ...] = ()
    plugin: str | None = None
    distribution: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PluginError(f"component {self.name!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if not self.name or not all(part.isidentifier() for part in self.name.split(".")):
            raise PluginError(f"component name {self.name!r} must be dotted identifiers, like 'text.bytes'")
        if not (isinstance(self.config, type) and issubclass(self.config, BaseModel)):
            raise PluginError(f"component {self.key!r}: config must be a pydantic model class, got {self.config!r}")
        if self.kind == "encoder" and not self.modality:
            raise PluginError(f"encoder {self.name!r} must declare the modality it reads")
        if self.attention is not None and self.attention not in ATTENTION_MODES:
            raise PluginError(
                f"component {self.key!r}: attention {self.attention!r} is not one of {', '.join(ATTENTION_MODES)}"
            )
        if self.kind != "objective" and (self.heads or self.attention or self.text or self.special_tokens):
            raise PluginError(f"component {self.key!r}: heads, attention, text and special_tokens are for objectives")

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"

    @property
    def source(self) -> str:
        """Who provides it, for messages: distribution, else plugin name."""
        return self.distribution or self.plugin or "<unknown>"

    def load_factory(self) -> Callable[..., Any]:
        return _resolve(self.factory, self)

    def load_processor(self) -> Callable[..., Any] | None:
        return None if self.processor is None else _resolve(self.processor, self)

    def options(self, options: BaseModel | Mapping[str, Any] | None = None) -> BaseModel:
        """``options`` validated by the config model (an instance of it passes as it is)."""
        return options if isinstance(options, self.config) else self.config.model_validate(dict(options or {}))

    def build(self, options: BaseModel | Mapping[str, Any] | None = None, **context: Any) -> Any:
        """Validate ``options`` with the config model and call the factory with the context
        keywords it accepts (:func:`call_factory`). The one path that builds a component: the
        builder (:mod:`mmcore.builder`), :func:`mmcore.build_component` and the conformance kit
        call it."""
        return call_factory(self.load_factory(), self.options(options), **context)

    def build_processor(self, options: BaseModel | Mapping[str, Any] | None = None) -> Any:
        """The processor the registration names, built with the component's options; None without one."""
        factory = self.load_processor()
        return None if factory is None else call_factory(factory, self.options(options))


def _resolve(ref: str | Callable[..., Any], comp: Component) -> Callable[..., Any]:
    if callable(ref):
        return ref
    module, _, attr = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:  # report which plugin's reference is broken
        raise PluginError(
            f"component {comp.key!r} from {comp.source}: cannot import its factory {ref!r}: {type(exc).__name__}: {exc}"
        ) from exc
    return obj


class Registry:
    """``kind:name`` -> :class:`Component`, with listing, filtering and suggestions."""

    def __init__(self, components: list[Component] | None = None):
        self._items: dict[str, Component] = {}
        for c in components or []:
            self.add(c)

    def add(self, comp: Component) -> None:
        old = self._items.get(comp.key)
        if old is not None:
            raise DuplicateComponentError(
                f"component {comp.key!r} is registered twice: by {old.source} (plugin {old.plugin!r}) "
                f"and by {comp.source} (plugin {comp.plugin!r}); uninstall one of them or block one "
                f"with MMCORE_BLOCK_PLUGINS"
            )
        self._items[comp.key] = comp

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[Component]:
        return iter(sorted(self._items.values(), key=lambda c: c.key))

    def __len__(self) -> int:
        return len(self._items)

    def list(self, pattern: str = "*") -> list[Component]:
        """Components whose ``kind:name`` matches the glob ``pattern`` (``"encoder:*"``)."""
        return [c for c in self if fnmatch.fnmatchcase(c.key, pattern)]

    def names(self, kind: str) -> builtins.list[str]:  # (list: the method above)
        return [c.name for c in self if c.kind == kind]

    def get(self, kind: str, name: str) -> Component:
        """The component, or :class:`UnknownComponentError` listing close matches."""
        comp = self._items.get(f"{kind}:{name}")
        if comp is not None:
            return comp
        names = self.names(kind)
        matches = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        msg = f"unknown {kind} {name!r}"
        if matches:
            msg += f"; did you mean {' or '.join(repr(m) for m in matches)}?"
        msg += f"; registered {kind}s: {', '.join(names) if names else '(none)'}"
        raise UnknownComponentError(msg, name=name, matches=matches)


def call_factory(factory: Callable[..., Any], config: Any, **context: Any) -> Any:
    """Call ``factory(config, **context)`` passing only the keywords it accepts."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return factory(config, **context)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return factory(config, **context)
    return factory(config, **{k: v for k, v in context.items() if k in params})
