"""Files: atomic writes and safetensors, the one copy of each for the core and the plugins.

Every file mmcore writes goes through :func:`atomic_write` (or its two shorthands): the data
goes to a temporary file in the target's folder, is flushed to disk, and is renamed over the
target, so a reader sees the old file or the new one, never half of one, and a failure
(a full disk, an exception in the writer) leaves the old file and no temporary behind. The
new file gets the permissions a plain ``open(path, "w")`` would give it.

Weights are safetensors, never pickle: :func:`write_safetensors` (atomic),
:func:`read_safetensors` (errors name the file) and :func:`check_state_dict` (every missing,
unexpected and mis-shaped key in one error).

Public: ``from mmcore import atomic_write_text`` (and the others) for plugins. Importing this
module does not import torch or safetensors (the functions that need them import them).
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import WeightsError

if TYPE_CHECKING:
    import torch

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_state_dict",
    "read_safetensors",
    "write_safetensors",
]


# --- atomic writes ---------------------------------------------------------------------------

_MODE: int | None = None
_MODE_LOCK = threading.Lock()


def _file_mode() -> int:
    """``0o666`` less the process's umask: what ``open(path, "w")`` creates (mkstemp makes 0600)."""
    global _MODE
    with _MODE_LOCK:
        if _MODE is None:
            mask = os.umask(0)
            os.umask(mask)
            _MODE = 0o666 & ~mask
    return _MODE


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` with a fresh temporary path beside ``path``, then rename it over ``path``.

    ``write`` creates and fills the file at ``tmp`` (``img.save(tmp)``, ``fig.savefig(tmp)``,
    ``save_file(tensors, tmp)``); the temporary name ends with ``path``'s suffix, so writers that
    pick the format from the suffix pick the right one. The file is flushed to disk before the
    rename. On any exception the temporary file is removed and the exception propagates; ``path``
    is untouched. Returns ``path``.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically (:func:`atomic_write`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


# --- safetensors -----------------------------------------------------------------------------


def write_safetensors(
    path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Save ``tensors`` (contiguous, no shared storage) as a safetensors file, atomically."""
    import safetensors.torch

    def write(tmp: Path) -> None:
        # looked up at call time, so a test can stand in for it
        safetensors.torch.save_file(dict(tensors), str(tmp), metadata=None if metadata is None else dict(metadata))

    atomic_write(path, write)


def read_safetensors(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file (tensors, metadata); errors name the file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # SafetensorError, OSError, header JSON errors
        raise WeightsError(f"{path}: not a readable safetensors file: {type(exc).__name__}: {exc}") from exc
    return tensors, meta


def check_state_dict(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], *, source: str = "weights"
) -> None:
    """Raise :class:`WeightsError` listing every missing, unexpected and mis-shaped key."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [
        (k, tuple(expected[k].shape), tuple(found[k].shape))
        for k in sorted(set(expected) & set(found))
        if tuple(expected[k].shape) != tuple(found[k].shape)
    ]
    # A float stored as an integer (or the reverse) is never a valid weight; float widths may differ.
    kinds = [
        (k, expected[k].dtype, found[k].dtype)
        for k in sorted(set(expected) & set(found))
        if _dtype_kind(expected[k].dtype) != _dtype_kind(found[k].dtype)
    ]
    if missing or unexpected or mismatched or kinds:
        lines = [f"{source} do not match the model:"]
        if missing:
            lines.append(
                f"  missing ({len(missing)}): " + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else "")
            )
        if unexpected:
            lines.append(
                f"  unexpected ({len(unexpected)}): "
                + ", ".join(unexpected[:20])
                + (" ..." if len(unexpected) > 20 else "")
            )
        for k, want, got in mismatched[:20]:
            lines.append(f"  shape of {k}: model has {list(want)}, file has {list(got)}")
        for k, dwant, dgot in kinds[:20]:
            lines.append(f"  dtype of {k}: model has {dwant}, file has {dgot}")
        err = WeightsError("\n".join(lines))
        err.missing, err.unexpected, err.mismatched = missing, unexpected, mismatched  # type: ignore[attr-defined]
        raise err


def _dtype_kind(dtype: torch.dtype) -> str:
    if dtype.is_floating_point:
        return "float"
    if dtype.is_complex:
        return "complex"
    return "bool" if str(dtype) == "torch.bool" else "integer"
