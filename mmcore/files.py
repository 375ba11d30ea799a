"""Opening files named by untrusted data: regular files only, never a FIFO, a device or a folder.

A path taken from a manifest, a spec or a model directory may name anything: ``/dev/zero``
(reads forever), a FIFO (``open`` blocks until a writer comes, forever), a folder, or a
path with a NUL byte. Everything mmcore and its first-party plugins read on behalf of such
data goes through :func:`regular_file_problem` (to decide) and :func:`open_regular` (to
open): the file is opened without blocking, checked with ``fstat`` on the open descriptor
(so it cannot be swapped between the check and the read) and refused unless it is a
regular file.

Standard library only.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

__all__ = ["NotRegularFileError", "kind_of", "regular_file_problem", "open_regular"]


class NotRegularFileError(OSError):
    """The path exists but names no regular file (a folder, a FIFO, a device, a socket)."""


_KINDS = (
    (stat.S_ISREG, "a regular file"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def kind_of(mode: int) -> str:
    """What a ``st_mode`` names, in words (``"a directory"``, ``"a FIFO (named pipe)"``...)."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def regular_file_problem(path: str | os.PathLike[str]) -> str | None:
    """None when ``path`` is a regular file (after following symlinks); else why not, in words:
    ``"no such file"``, ``"is a directory, not a regular file"``, ``"is a FIFO (named pipe),
    not a regular file"``, ``"holds a NUL byte"``... Never opens anything, so never blocks."""
    name = os.fspath(path)
    if ("\x00" in name) if isinstance(name, str) else (b"\x00" in name):
        return "holds a NUL byte, which no file name can"
    try:
        st = os.stat(name)
    except FileNotFoundError:
        return "no such file"
    except NotADirectoryError:
        return "no such file (a part of the path is not a directory)"
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if not stat.S_ISREG(st.st_mode):
        return f"is {kind_of(st.st_mode)}, not a regular file"
    return None


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open ``path`` for binary reading if it is a regular file.

    Raises:
        NotRegularFileError: it exists but is a folder, FIFO, device or socket (a FIFO is
            opened without blocking, so this never hangs).
        FileNotFoundError, PermissionError, OSError: as ``open`` would; ``ValueError`` never
            (a NUL byte is a ``FileNotFoundError``).
    """
    name = os.fspath(path)
    if ("\x00" in name) if isinstance(name, str) else (b"\x00" in name):
        raise FileNotFoundError(f"{name!r}: holds a NUL byte, which no file name can")
    problem = regular_file_problem(name)  # before opening: opening some devices has effects
    if problem is not None and problem.startswith("is "):
        raise NotRegularFileError(f"{name}: {problem}")
    fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        st = os.fstat(fd)  # what was opened, not what the name pointed to a moment ago
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(f"{name}: is {kind_of(st.st_mode)}, not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
