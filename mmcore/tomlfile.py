"""Bounded TOML: the one place mmcore runs ``tomllib`` (specs, a model directory's
``spec.toml``, the plugin catalog ``registry.toml``), and the one TOML writer (:func:`to_toml`).

A file is read only if it is a regular file of at most :data:`MAX_SPEC_BYTES` bytes of UTF-8;
the text is checked against :data:`MAX_KEY_PARTS` and :data:`MAX_TOML_DEPTH` before it is
parsed. Errors are :class:`mmcore.SpecError` naming the file (and, for a bound, the line).
:mod:`mmcore.spec` re-exports these names. Standard library and :mod:`mmcore.errors` only.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import SpecError, SpecIssue

__all__ = ["MAX_KEY_PARTS", "MAX_SPEC_BYTES", "MAX_TOML_DEPTH", "parse_toml", "read_spec_file", "to_toml"]


# Bounds checked on a spec's text before tomllib parses it (tomllib's memory grows with the
# square of a dotted key's length: 100,000 parts took more than 24 GB).
#: Largest spec (a file's bytes, or a string's characters) parsed.
MAX_SPEC_BYTES = 256 * 1024
#: Most parts in one dotted key (``a.b.c`` has 3), in a table header or before ``=``.
MAX_KEY_PARTS = 16
#: Deepest nesting of tables, keys, arrays and inline tables together: a value's depth is
#: its table header's parts + its dotted key's parts + the arrays and inline tables around it.
MAX_TOML_DEPTH = 32


def read_spec_file(path: str | Path) -> str:
    """The text of a spec file (``spec.toml`` of a model directory included), bounded: a regular
    file of at most :data:`MAX_SPEC_BYTES`, UTF-8. Raises :class:`SpecError` naming the file."""
    from .files import open_regular

    def fail(message: str) -> SpecError:
        return SpecError([SpecIssue("", message, str(path))], file=str(path))

    try:
        with open_regular(path) as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise fail(f"cannot read the spec: {exc.strerror or exc}") from exc
    if len(data) > MAX_SPEC_BYTES:
        raise fail(f"the spec is larger than {MAX_SPEC_BYTES:,} bytes (MAX_SPEC_BYTES); a spec describes a model")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise fail(f"not UTF-8 text: {exc}") from exc


def parse_toml(text: str, *, file: str | None = None) -> dict[str, Any]:
    """TOML text -> dict: the one place mmcore runs ``tomllib`` on a spec or a ``spec.toml``.

    Before parsing, the text is checked against :data:`MAX_SPEC_BYTES`,
    :data:`MAX_KEY_PARTS` and :data:`MAX_TOML_DEPTH` (in time and memory linear in its
    size), so no input makes the parser exhaust memory or recursion. Raises
    :class:`SpecError` naming the file, the line and the key.
    """
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError(
            [SpecIssue("", f"the spec is longer than {MAX_SPEC_BYTES:,} characters (MAX_SPEC_BYTES)", file)], file=file
        )
    problem = _toml_bounds_problem(text)
    if problem is not None:
        section, message = problem
        raise SpecError([SpecIssue(section, message, file)], file=file)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError([SpecIssue("", f"invalid TOML: {exc}", file)], file=file) from exc
    except RecursionError as exc:  # kept as a safety net: the bounds above stop nesting first
        raise SpecError(
            [SpecIssue("", "invalid TOML: arrays or inline tables nested too deeply", file)], file=file
        ) from exc


_TOML_TOKEN = re.compile(
    r"""
    (?P<mstr>\"\"\"(?:[^"\\]|\\.|"(?!""))*"{0,2}\"\"\"|'''(?:[^']|'(?!''))*'{0,2}''')
    |(?P<str>"(?:[^"\\\n]|\\.)*"|'[^'\n]*')
    |(?P<comment>\#[^\n]*)
    |(?P<nl>\n)
    |(?P<ws>[ \t\r]+)
    |(?P<punct>[\[\]{},=.])
    |(?P<word>[^\s\[\]{},=.\#"']+)
    |(?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)


def _toml_bounds_problem(text: str) -> tuple[str, str] | None:
    """(section, message) for the first key or nesting beyond the bounds, else None.

    A tokenizer, not a parser: it follows strings, comments, table headers, keys, arrays and
    inline tables well enough to count key parts and depth in valid TOML, in one pass. On
    invalid TOML it may count differently, which is harmless: tomllib rejects that text.
    """
    line, table_depth, cur = 1, 0, 0  # cur: the depth of what is being read
    stack: list[tuple[str, int, int]] = []  # open '[' / '{' in values: (bracket, depth outside, depth inside)
    names: list[str] = []
    key_mode, header, parts = True, 0, 0  # header: the '[' count of a table header being read
    table: list[str] = []  # the first parts of the current table header, for messages
    held: list[str] = []  # the key whose value is being read, for messages

    def too_deep(what: str, key: list[str] | None = None) -> tuple[str, str]:
        more = f"... ({parts} parts)" if key is None and parts > len(names) else ""
        shown = ".".join([*table, *names] if key is None else key) + more
        return shown, f"line {line}: {what}; TOML this deep is refused before it is parsed"

    for m in _TOML_TOKEN.finditer(text):
        kind, tok = m.lastgroup, m.group()
        if kind in ("ws", "comment"):
            continue
        if kind == "nl" or kind == "mstr":
            line += tok.count("\n")
            if kind == "nl" and not stack:
                key_mode, header, parts, names, cur = True, 0, 0, [], table_depth
            if kind == "nl":
                continue
        if key_mode:
            if kind in ("word", "str"):
                parts += 1
                if len(names) < 4:
                    names.append(tok)
                if parts > MAX_KEY_PARTS:
                    return too_deep(f"a dotted key of more than {MAX_KEY_PARTS} parts (MAX_KEY_PARTS)")
            elif tok == "[" and not stack and parts == 0:
                header += 1
                table = []
            elif tok == "]" and header:
                header -= 1
                if header == 0:  # [a.b] or [[a.b]] read: the following keys sit at its depth
                    if parts > MAX_TOML_DEPTH:
                        return too_deep(f"a table nested more than {MAX_TOML_DEPTH} deep (MAX_TOML_DEPTH)")
                    table_depth = cur = parts
                    table, parts, names = names, 0, []
            elif tok == "=":
                cur = (stack[-1][2] if stack else table_depth) + parts
                if cur > MAX_TOML_DEPTH:
                    return too_deep(f"keys, tables and arrays nested more than {MAX_TOML_DEPTH} deep (MAX_TOML_DEPTH)")
                held = [*table, *names][:8]
                key_mode, parts, names = False, 0, []
            elif tok == "}" and stack and stack[-1][0] == "{":  # {} or a trailing comma
                cur = stack.pop()[1]
                key_mode, parts, names = False, 0, []
            continue
        if tok in ("[", "{"):
            inner = cur + 1
            if inner > MAX_TOML_DEPTH:
                return too_deep(
                    f"arrays and inline tables nested more than {MAX_TOML_DEPTH} deep (MAX_TOML_DEPTH)", held
                )
            stack.append((tok, cur, inner))
            cur = inner
            key_mode = tok == "{"
        elif tok in ("]", "}"):
            if stack:
                cur = stack.pop()[1]
        elif tok == "," and stack:
            cur = stack[-1][2]
            key_mode = stack[-1][0] == "{"
    return None


# --- TOML writing ---------------------------------------------------------------------------


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v if x is not None) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items() if x is not None) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _toml_key(k: str) -> str:
    return k if k and all(ch in _BARE_KEY for ch in k) else _toml_str(k)


_BARE_KEY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_str(s: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters (DEL included) escaped."""
    return '"' + "".join(_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if c < " " or c == "\x7f" else c) for c in s) + '"'


def to_toml(data: Mapping[str, Any]) -> str:
    """Write nested dicts as TOML: scalars first, then one ``[table]`` per nested dict."""
    lines: list[str] = []

    def emit(table: Mapping[str, Any], prefix: tuple[str, ...]) -> None:
        scalars = [(k, v) for k, v in table.items() if not isinstance(v, Mapping) and v is not None]
        tables = [(k, v) for k, v in table.items() if isinstance(v, Mapping)]
        if prefix and (scalars or not tables):
            if lines:
                lines.append("")
            lines.append("[" + ".".join(_toml_key(p) for p in prefix) + "]")
        for k, v in scalars:
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        for k, v in tables:
            emit(v, prefix + (k,))

    emit(data, ())
    return "\n".join(lines) + "\n"
