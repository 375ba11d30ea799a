"""Exceptions raised by mmcore.

Every error a user can cause is an :class:`MMCoreError` whose message says where the
problem is (file, section, record, plugin), what was wrong and what would be valid.
The CLI prints these without a traceback; anything else is a bug.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "MMCoreError",
    "SpecError",
    "SpecIssue",
    "PluginError",
    "PluginLoadError",
    "DuplicateComponentError",
    "UnknownComponentError",
    "InputError",
    "WeightsError",
    "ModelDirError",
]


class MMCoreError(Exception):
    """Base class of every error mmcore raises for bad input or a broken environment."""


@dataclass(frozen=True)
class SpecIssue:
    """One problem in a spec: where (file and dotted section path), what, and what is valid."""

    path: str
    message: str
    file: str | None = None
    hint: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file else ""
        loc = self.path or "<top level>"
        text = f"{where}[{loc}] {self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text


class SpecError(MMCoreError, ValueError):
    """A spec failed validation. ``issues`` holds every problem found, not just the first;
    the message shows the first :attr:`SHOWN` and counts the rest, so it stays short
    whatever the spec holds."""

    SHOWN = 50

    def __init__(self, issues: list[SpecIssue], file: str | None = None):
        self.issues = list(issues)
        self.file = file
        n = len(self.issues)
        head = f"{file or 'spec'}: {n} problem{'s' if n != 1 else ''}"
        lines = [f"  - {i}" for i in self.issues[: self.SHOWN]]
        if n > self.SHOWN:
            lines.append(f"  ... and {n - self.SHOWN} more problem{'s' if n - self.SHOWN != 1 else ''}")
        super().__init__(head + "\n" + "\n".join(lines))


class PluginError(MMCoreError):
    """A plugin misbehaved (raised in a hook, returned the wrong type). Names the plugin."""


@dataclass
class PluginLoadError(PluginError):
    """A plugin failed: its entry point did not import or register (``hook`` is None), or one of
    its hooks failed or does not match the hook specifications (``hook`` names it; ``error``
    is a :class:`PluginError` that names the plugin)."""

    entry_point: str
    distribution: str | None
    error: BaseException
    traceback: str = field(default="", repr=False)
    hook: str | None = None

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.hook is not None:
            return str(self.error)
        dist = self.distribution or "<unknown distribution>"
        return f"Error importing plugin {self.entry_point!r} from {dist}: {type(self.error).__name__}: {self.error}"


class DuplicateComponentError(PluginError):
    """Two plugins registered the same component name."""


class UnknownComponentError(MMCoreError, KeyError):
    """A component name is not registered. The message lists close matches."""

    def __init__(self, message: str, name: str = "", matches: list[str] | None = None):
        self.name = name
        self.matches = matches or []
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class InputError(MMCoreError, ValueError):
    """A record or a field of it could not be processed. Names the record and the field."""


class WeightsError(MMCoreError, ValueError):
    """A weights file is unreadable or does not match the model (lists the keys and shapes)."""


class ModelDirError(MMCoreError):
    """A model directory is incomplete, tampered with, or needs a plugin that is not installed."""
