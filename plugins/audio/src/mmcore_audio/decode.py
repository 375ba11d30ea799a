"""Reading a record's audio value into one mono numpy signal, with the checks that need the raw samples.

Accepted values (see :func:`decode`): a path to an audio file (anything libsndfile
reads, by content: WAV, FLAC, OGG, MP3, AIFF...), the file's bytes, a numpy array, a
torch tensor or a list of samples (at the processor's ``sample_rate``), or a dict
``{"array": ..., "sample_rate": N}`` (``"sampling_rate"`` also works, as Hugging Face
datasets write it), ``{"path": ...}`` or ``{"bytes": ...}``. ``bytes`` is always the file's content (``bytes``,
``bytearray`` or ``memoryview``), never a path: a string there is an error. (A manifest
writes ``bytes`` as base64 text; :class:`mmcore.data.ManifestDataset` decodes it, and
resolves and checks every path, before this module sees the value.) Only regular files are
opened: a folder, a FIFO or a device (``/dev/zero``) is refused without being read.

Files are checked before they are decoded: the header's frame count and rate give the
duration, so a file that declares hours is rejected without reading its samples, and a
WAV whose data chunk is longer than the file is reported as truncated. Decoding goes
block by block, mixing each block down to mono, so memory stays proportional to the mono
length whatever the channel count.

This module imports numpy; soundfile is imported when a file is read.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from mmcore import InputError, open_regular, regular_file_problem

__all__ = ["Decoded", "decode", "CLIP_LEVEL", "SILENCE_LEVEL"]

#: A sample at or above this magnitude is at full scale (int16 full scale is 0.99997).
CLIP_LEVEL = 0.9999
#: Consecutive full-scale samples that count as clipping (a peak-normalised tone touches
#: full scale at isolated samples; a clipped waveform stays there).
CLIP_RUN = 3
#: Highest sample rate accepted from a file header or an array's ``sample_rate`` (as the processor's own).
MAX_SAMPLE_RATE = 768_000
#: Peak amplitude below which a clip is silent (-140 dBFS, below a 24-bit PCM step).
SILENCE_LEVEL = 1e-7
BLOCK_FRAMES = 1 << 16
# RIFF size fields of WAVs written to a stream, whose length was unknown when the header was written.
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)


@dataclass
class Decoded:
    """One decoded clip.

    Attributes:
        mono: (N,) float32, the channels' mean, in [-1, 1] for integer PCM.
        sample_rate: its rate in Hz.
        channels: channel count of the source.
        clipped: samples (over all channels) in runs of at least ``CLIP_RUN`` consecutive
            samples at ``|x| >= CLIP_LEVEL``.
        total: samples over all channels (frames x channels).
        source: how to name the value in messages (``"file 'a.wav'"``, ``"array"``).
    """

    mono: np.ndarray
    sample_rate: int
    channels: int
    clipped: int
    total: int
    source: str

    @property
    def seconds(self) -> float:
        return self.mono.shape[0] / self.sample_rate

    @property
    def clipped_fraction(self) -> float:
        return self.clipped / self.total if self.total else 0.0


def _at(where: str) -> str:
    return f"{where}: " if where else ""


def decode(value: Any, *, sample_rate: int, max_seconds: float, where: str = "") -> Decoded:
    """Read ``value`` into a :class:`Decoded` clip.

    Args:
        value: a path (str or ``os.PathLike``), bytes, an array-like (numpy, torch,
            list) at ``sample_rate``, or a dict (see the module docstring).
        sample_rate: the rate of bare arrays.
        max_seconds: longest accepted clip (checked from file headers before decoding).
        where: the record and field, for error messages.

    Raises:
        InputError: naming ``where`` and the file, for unreadable, corrupt, truncated,
            empty or too long input, non-finite samples, and unsupported value types.
    """
    if isinstance(value, (str, os.PathLike)):
        return _from_path(os.fspath(value), max_seconds, where)
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return _from_file(io.BytesIO(data), f"audio bytes ({len(data)} bytes)", max_seconds, where)
    if isinstance(value, Mapping):
        return _from_mapping(value, sample_rate, max_seconds, where)
    if isinstance(value, (np.ndarray, list, tuple)) or _is_tensor(value):
        return _from_array(value, sample_rate, "array", max_seconds, where)
    raise InputError(
        f"{_at(where)}audio must be a file path, bytes, an array (numpy, torch or list, at {sample_rate} Hz) or a "
        f"dict {{'array': ..., 'sample_rate': N}}; got {type(value).__name__}"
    )


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def _from_mapping(value: Mapping[Any, Any], sample_rate: int, max_seconds: float, where: str) -> Decoded:
    if value.get("array") is not None:
        rate = value.get("sample_rate", value.get("sampling_rate"))
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or int(rate) <= 0:
            raise InputError(
                f"{_at(where)}an audio dict with 'array' needs 'sample_rate' (a positive integer, Hz), got {rate!r}"
            )
        return _from_array(value["array"], int(rate), "array", max_seconds, where)
    if value.get("bytes") is not None:
        data = value["bytes"]
        if not isinstance(data, (bytes, bytearray, memoryview)):  # never a path: 'path' names files
            raise InputError(
                f"{_at(where)}an audio dict's 'bytes' must hold the file's content (bytes), got "
                f"{type(data).__name__}; name a file with 'path'"
            )
        return decode(data, sample_rate=sample_rate, max_seconds=max_seconds, where=where)
    if value.get("path") is not None:
        path = value["path"]
        if not isinstance(path, (str, os.PathLike)):
            raise InputError(f"{_at(where)}an audio dict's 'path' must be a file path, got {type(path).__name__}")
        return _from_path(os.fspath(path), max_seconds, where)
    raise InputError(
        f"{_at(where)}an audio dict needs 'array' (with 'sample_rate'), 'bytes' or 'path'; got keys "
        f"{sorted(map(str, value))}"
    )


# --- files -----------------------------------------------------------------------------------


def _from_path(path: str, max_seconds: float, where: str) -> Decoded:
    label = f"file {path!r}"
    problem = regular_file_problem(path)
    if problem == "no such file":
        raise InputError(f"{_at(where)}audio {label} does not exist")
    if problem is not None and problem.startswith(("is ", "holds ")):  # a folder, FIFO, device: never read
        raise InputError(f"{_at(where)}audio {label} {problem}")
    try:
        fh = open_regular(path)
    except OSError as exc:
        raise InputError(f"{_at(where)}cannot open audio {label}: {exc.strerror or exc}") from exc
    with fh:
        return _from_file(fh, label, max_seconds, where)


def _from_file(fh: BinaryIO, label: str, max_seconds: float, where: str) -> Decoded:
    import soundfile as sf

    fh.seek(0, io.SEEK_END)
    size = fh.tell()
    fh.seek(0)
    if size == 0:
        raise InputError(f"{_at(where)}audio {label} is empty (0 bytes)")
    _check_riff(fh, size, label, where)
    fh.seek(0)
    try:
        snd = sf.SoundFile(fh)
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError, OSError) as exc:
        raise InputError(
            f"{_at(where)}cannot read audio {label}: {_reason(exc)} (not an audio file libsndfile reads, or corrupt; "
            f"readable formats include WAV, FLAC, OGG, MP3, AIFF)"
        ) from exc
    with snd:
        rate, channels, frames = int(snd.samplerate), int(snd.channels), int(snd.frames)
        if rate <= 0 or channels <= 0:
            raise InputError(f"{_at(where)}audio {label} has an invalid header: {rate} Hz, {channels} channels")
        if frames <= 0:
            raise InputError(f"{_at(where)}audio {label} contains no samples")
        _check_duration(frames, rate, label, max_seconds, where, "declares")
        blocks, clipped, n = [], 0, 0  # soundfile reads at most the declared frames
        try:
            for block in snd.blocks(blocksize=BLOCK_FRAMES, dtype="float32", always_2d=True):
                _check_finite(block, n, label, where)
                clipped += _count_clipped(block)
                blocks.append(block.mean(axis=1, dtype=np.float32) if channels > 1 else block[:, 0].copy())
                n += block.shape[0]
        except (sf.SoundFileError, RuntimeError, OSError) as exc:
            raise InputError(
                f"{_at(where)}audio {label} is corrupt or truncated: decoding failed after {n} of {frames} frames: "
                f"{_reason(exc)}"
            ) from exc
        exact = snd.format not in ("MP3", "MPEG")  # MP3 frame counts can be estimates
    if n == 0:
        raise InputError(f"{_at(where)}audio {label} contains no samples")
    if exact and n < frames:
        raise InputError(f"{_at(where)}audio {label} is truncated: its header declares {frames} frames, it holds {n}")
    mono = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
    return Decoded(mono, rate, channels, clipped, n * channels, label)


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "error_string", None) or str(exc) or type(exc).__name__
    return text.strip().rstrip(".")


def _check_riff(fh: BinaryIO, size: int, label: str, where: str) -> None:
    """Reject a RIFF/WAVE file whose data chunk is declared longer than the file (truncated).

    libsndfile silently shortens such files to what is there; a copy cut short should be
    an error instead. Streamed WAVs, written before their length was known (size fields 0
    or 0xFFFFFFFF), are accepted.
    """
    head = fh.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    pos = 12
    for _ in range(1024):  # chunks before 'data' (fmt, LIST, ...)
        fh.seek(pos)
        hdr = fh.read(8)
        if len(hdr) < 8:
            return  # no data chunk: libsndfile reports it
        cid, csize = hdr[:4], struct.unpack("<I", hdr[4:])[0]
        if cid == b"data":
            available = size - (pos + 8)
            if csize not in _UNKNOWN_SIZES and available < csize:
                raise InputError(
                    f"{_at(where)}audio {label} is truncated: its data chunk declares {csize} bytes, the file holds "
                    f"{max(available, 0)}"
                )
            return
        pos += 8 + csize + (csize & 1)
        if pos >= size:
            return


# --- arrays ----------------------------------------------------------------------------------


def _from_array(value: Any, rate: int, label: str, max_seconds: float, where: str) -> Decoded:
    if _is_tensor(value):
        t = value.detach().cpu()
        if t.is_floating_point() and t.dtype.itemsize < 4:
            t = t.float()  # float16 / bfloat16: numpy lacks bfloat16
        value = t.numpy()
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{_at(where)}audio {label} is not a numeric array: {exc}") from exc
    arr = _to_float(arr, label, where)
    if arr.ndim == 1:
        arr = arr[:, None]
    elif arr.ndim == 2:
        if arr.shape[0] < arr.shape[1]:
            arr = arr.T  # (channels, samples) -> (samples, channels): the shorter axis holds the channels
    else:
        raise InputError(
            f"{_at(where)}audio {label} must be 1-D (samples) or 2-D (channels and samples), got shape {arr.shape}"
        )
    frames, channels = arr.shape
    if frames == 0 or channels == 0:
        raise InputError(f"{_at(where)}audio {label} is empty (shape {tuple(arr.shape)})")
    _check_duration(frames, rate, f"{label} at {rate} Hz", max_seconds, where, "is")
    _check_finite(arr, 0, label, where)
    mono = arr.mean(axis=1, dtype=np.float32) if channels > 1 else np.ascontiguousarray(arr[:, 0])
    return Decoded(mono.astype(np.float32, copy=False), rate, channels, _count_clipped(arr), frames * channels, label)


def _to_float(arr: np.ndarray, label: str, where: str) -> np.ndarray:
    """Samples as float32; integer PCM is scaled to [-1, 1)."""
    kind = arr.dtype.kind
    if kind == "f":
        return arr.astype(np.float32, copy=False)
    if kind == "i" and arr.dtype.itemsize in (1, 2, 4):
        return (arr.astype(np.float64) / float(2 ** (8 * arr.dtype.itemsize - 1))).astype(np.float32)
    if kind == "u" and arr.dtype.itemsize == 1:
        return ((arr.astype(np.float64) - 128.0) / 128.0).astype(np.float32)
    raise InputError(
        f"{_at(where)}audio {label} has samples of type {arr.dtype}; expected floats, or int8/int16/int32/uint8 PCM"
    )


# --- checks ----------------------------------------------------------------------------------


def _check_duration(frames: int, rate: int, label: str, max_seconds: float, where: str, verb: str) -> None:
    if rate > MAX_SAMPLE_RATE:  # the resampling filter grows with the rate: 2**40 Hz would take all memory
        raise InputError(
            f"{_at(where)}audio {label} has a sample rate of {rate} Hz, more than the {MAX_SAMPLE_RATE} Hz accepted"
        )
    seconds = frames / rate
    if seconds > max_seconds:
        raise InputError(
            f"{_at(where)}audio {label} {verb} {seconds:.2f} s ({frames} frames at {rate} Hz), more than max_seconds = "
            f"{max_seconds:g}; trim it or raise max_seconds (and the encoder's max_frames)"
        )


def _check_finite(block: np.ndarray, offset: int, label: str, where: str) -> None:
    finite = np.isfinite(block)
    if not finite.all():
        bad = int(np.argmin(finite.all(axis=1)))
        hint = "; the file may be corrupt or truncated" if label.startswith("file") else ""
        raise InputError(
            f"{_at(where)}audio {label} contains NaN or infinite samples (first at frame {offset + bad}){hint}"
        )


def _count_clipped(block: np.ndarray) -> int:
    """Samples of (frames, channels) ``block`` in runs of >= CLIP_RUN frames at full scale."""
    full = np.abs(block) >= CLIP_LEVEL
    if block.shape[0] < CLIP_RUN or not full.any():
        return 0
    k = CLIP_RUN
    starts = full[: len(full) - k + 1].copy()
    for i in range(1, k):
        starts &= full[i : len(full) - k + 1 + i]
    in_run = np.zeros_like(full)
    for i in range(k):
        in_run[i : len(full) - k + 1 + i] |= starts
    return int(in_run.sum())
