"""The :class:`AudioProcessor` of ``encoder:audio.whisper``: a record's audio -> log-mel features."""

from __future__ import annotations

import math
import os
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pydantic import ValidationError
from torch import Tensor

from mmcore import InputError, ModelDirError, Processor

from . import dsp
from .config import AudioProcessorConfig, WhisperAudioConfig
from .decode import SILENCE_LEVEL, Decoded, decode

__all__ = ["AudioProcessor", "AudioClippingWarning", "PROCESSOR_FILE"]

PROCESSOR_FILE = "audio_processor.json"
PROCESSOR_KIND = "mmcore_audio.logmel"
FORMAT_VERSION = 1


class AudioClippingWarning(UserWarning):
    """A clip has many samples stuck at full scale (it was probably recorded or converted too loud)."""


def _at(where: str) -> str:
    return f"{where}: " if where else ""


def _processor_options(config: Any) -> AudioProcessorConfig:
    if isinstance(config, WhisperAudioConfig):
        return config.processor_options()
    if isinstance(config, AudioProcessorConfig):
        return config
    data = dict(config or {})
    if set(data) - set(AudioProcessorConfig.model_fields):  # the encoder's options too: validate them all
        return WhisperAudioConfig.model_validate(data).processor_options()
    return AudioProcessorConfig.model_validate(data)


class AudioProcessor(Processor):
    """Processor of ``encoder:audio.whisper``: audio -> (n_mels, T) log-mel features.

    Built by the registry as ``AudioProcessor(config)``: a :class:`WhisperAudioConfig`,
    an :class:`AudioProcessorConfig`, a dict of their options, or None for the defaults.
    Holds only its options (a frozen pydantic model), so it pickles; no ``nn.Module`` state.

    ``__call__(value, *, where="")`` -> ``{"features": (n_mels, T) float32}``:

    1. read the value (a WAV/FLAC/... path or bytes, an array or tensor at ``sample_rate``,
       ``{"array": ..., "sample_rate": N}``; see :mod:`mmcore_audio.decode`), rejecting
       files whose header declares more than ``max_seconds`` before decoding them;
    2. mix down to mono (mean of the channels, any count);
    3. check: empty, NaN/Inf -> :class:`~mmcore.errors.InputError`; silent (peak below
       1e-7) -> ``InputError`` unless ``allow_silence``; clipped (more than
       ``clip_fraction`` of the samples in full-scale runs) -> :class:`AudioClippingWarning`
       naming ``where`` and the fraction, or ``InputError`` with ``reject_clipped``;
    4. resample to ``sample_rate`` (windowed-sinc, :func:`mmcore_audio.dsp.resample`);
    5. normalise (``peak``, ``rms`` or ``none``);
    6. only while ``training`` is True: random speed (``speed_perturb``; the clip stays
       within ``max_seconds``), time shift (``shift_seconds``), gain (``gain_db``) and
       white noise (``noise_snr_db``), each when its option is on
       (:func:`~mmcore_audio.dsp.augment_waveform`);
    7. log-mel features in float64 (:func:`~mmcore_audio.dsp.mel_power`,
       :func:`~mmcore_audio.dsp.log_mel`): ``T = ceil(N / hop_length)`` frames for N samples;
    8. SpecAugment, only when ``spec_augment`` is on and ``training`` is True.

    Random draws come from torch's global generator, which the DataLoader seeds per worker
    process and the trainer from ``training.seed``: augmentation is reproducible.

    Steps 1-4 give the same signal every time a file is read, and they are most of the
    cost (decoding, and resampling, e.g. 22,050 Hz synthesiser output to 16 kHz): for a
    value that is a file path the processor keeps their result, the resampled mono
    signal, in memory, up to ``cache_mb`` megabytes per process (least recently used
    first out), keyed by the file's absolute path, size and modification time, so a file
    that changes is read again. The features are the same with or without the cache;
    the clipping warning is given the first time a file is read. The cache is not pickled:
    each DataLoader worker fills its own.

    ``collate(samples)`` -> ``{"features": (B, n_mels, T) float32, "frames": (B,) long,
    "mask": (B, T) bool}``: right-padded with zeros to the longest clip (T >= 1); ``None``
    samples (records without audio) have 0 frames and an all-False mask row.
    """

    modality = "audio"

    def __init__(self, config: AudioProcessorConfig | Mapping[str, Any] | None = None):
        self.config = _processor_options(config)
        self.training = False
        self._cache: OrderedDict[tuple[str, int, int], Tensor] = OrderedDict()
        self._cache_bytes = 0

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"], state["_cache_bytes"] = OrderedDict(), 0  # each process fills its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_cache", OrderedDict())
        self.__dict__.setdefault("_cache_bytes", 0)

    @property
    def cached_clips(self) -> int:
        """How many files' resampled signals the cache holds now (see the class)."""
        return len(self._cache)

    @property
    def options(self) -> dict[str, Any]:
        """The resolved options, as an :class:`AudioProcessorConfig` dict."""
        return self.config.model_dump(mode="json")

    @property
    def n_mels(self) -> int:
        return self.config.n_mels

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def examples(self) -> list[Any]:
        """Made-up clips at ``sample_rate`` (export and the kit): tones with a little noise, of
        0.25, 0.12 and 0.4 seconds (at most ``max_seconds``), as ``{"array", "sample_rate"}``."""
        import math

        import numpy as np

        rate = self.sample_rate
        out = []
        for seconds, freq in ((0.25, 440.0), (0.12, 220.0), (0.4, 330.0)):
            n = max(1, int(min(seconds, self.config.max_seconds) * rate))
            t = np.arange(n, dtype=np.float64) / rate
            rng = np.random.default_rng(int(freq))
            wave = 0.4 * np.sin(2 * math.pi * freq * t) + 0.02 * rng.standard_normal(n)
            out.append({"array": wave.astype(np.float32), "sample_rate": rate})
        return out

    # --- one sample --------------------------------------------------------------------

    def __call__(self, value: Any, *, where: str = "") -> dict[str, Tensor]:
        c = self.config
        wave = self.signal(value, where=where)
        if self.training and (c.shift_seconds or c.gain_db or c.noise_snr_db is not None or c.speed_perturb):
            wave = dsp.augment_waveform(
                wave,
                c.sample_rate,
                shift_seconds=c.shift_seconds,
                shift_prob=c.shift_prob,
                gain_db=c.gain_db,
                noise_snr_db=c.noise_snr_db,
                speed_perturb=c.speed_perturb,
                max_samples=math.ceil(c.max_seconds * c.sample_rate - 1e-9),
            )
        features = self.log_mel(wave)
        if c.spec_augment and self.training:
            features = dsp.spec_augment(
                features,
                freq_masks=c.freq_masks,
                freq_mask_width=c.freq_mask_width,
                time_masks=c.time_masks,
                time_mask_width=c.time_mask_width,
                time_mask_ratio=c.time_mask_ratio,
            )
        return {"features": features}

    def signal(self, value: Any, *, where: str = "") -> Tensor:
        """A record's audio value decoded, checked, resampled to ``sample_rate`` and normalised:
        (N,) float64, before any augmentation (what :meth:`__call__` starts from; cached)."""
        return self._normalized(self._resampled_value(value, where))

    def log_mel(self, wave: Tensor) -> Tensor:
        """(N,) samples at ``sample_rate`` -> (frames, n_mels) float32 log-mel features, with this
        processor's STFT, mel and log options and no SpecAugment (what :meth:`__call__` returns
        for an unaugmented clip)."""
        c = self.config
        mel = dsp.mel_power(
            wave,
            c.sample_rate,
            n_fft=c.n_fft,
            hop_length=c.hop_length,
            n_mels=c.n_mels,
            f_min=c.f_min,
            f_max=c.f_max,
            pad_mode=c.pad_mode,
        )
        features = dsp.log_mel(mel, dynamic_range=c.dynamic_range or None, whisper_scale=c.whisper_scale)
        return features.to(torch.float32)

    def waveform(self, clip: Decoded) -> Tensor:
        """A decoded clip resampled to ``sample_rate`` and normalised: (N,) float64."""
        return self._normalized(self._resampled(clip))

    def _resampled(self, clip: Decoded) -> Tensor:
        wave = torch.from_numpy(clip.mono)
        if clip.sample_rate != self.config.sample_rate:
            wave = dsp.resample(wave, clip.sample_rate, self.config.sample_rate)
        return wave

    def _resampled_value(self, value: Any, where: str) -> Tensor:
        """Steps 1-4 for one value: decoded, checked, mixed down and resampled; from the cache when it can."""
        c = self.config
        key = None
        if c.cache_mb > 0 and isinstance(value, (str, os.PathLike)):
            try:
                st = os.stat(value)
                key = (os.path.abspath(value), st.st_size, st.st_mtime_ns)
            except OSError:
                key = None  # decode names the problem
            if key is not None and key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        clip = decode(value, sample_rate=c.sample_rate, max_seconds=c.max_seconds, where=where)
        self._check_levels(clip, where)
        wave = self._resampled(clip)
        if key is not None:
            self._remember(key, wave)
        return wave

    def _remember(self, key: tuple[str, int, int], wave: Tensor) -> None:
        size = wave.numel() * wave.element_size()
        budget = self.config.cache_mb * 1e6
        if size > budget:
            return
        while self._cache and self._cache_bytes + size > budget:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= old.numel() * old.element_size()
        self._cache[key] = wave
        self._cache_bytes += size

    def _normalized(self, wave: Tensor) -> Tensor:
        c = self.config
        wave = wave.to(torch.float64)
        if c.normalize == "peak":
            peak = wave.abs().max()
            if peak > 0:
                wave = wave / peak
        elif c.normalize == "rms":
            rms = wave.square().mean().sqrt()
            if rms > 0:
                wave = wave * (c.rms_level / rms)
        return wave

    def _check_levels(self, clip: Decoded, where: str) -> None:
        c = self.config
        peak = float(abs(clip.mono).max())
        if peak < SILENCE_LEVEL and not c.allow_silence:
            raise InputError(
                f"{_at(where)}audio {clip.source} is silent (peak amplitude {peak:.3g} after mixdown to mono, "
                f"{clip.seconds:.2f} s); set allow_silence = true to accept silent clips"
            )
        fraction = clip.clipped_fraction
        if fraction > c.clip_fraction:
            msg = (
                f"{_at(where)}audio {clip.source} looks clipped: {fraction:.1%} of its samples are stuck at full scale "
                f"(more than clip_fraction = {c.clip_fraction:g})"
            )
            if c.reject_clipped:
                raise InputError(msg + "; set reject_clipped = false to accept it")
            warnings.warn(msg, AudioClippingWarning, stacklevel=3)

    # --- a batch -----------------------------------------------------------------------

    def collate(self, samples: Sequence[Mapping[str, Tensor] | None]) -> dict[str, Tensor]:
        n_mels = self.config.n_mels
        for i, s in enumerate(samples):
            if s is None:
                continue
            f = s.get("features") if isinstance(s, Mapping) else None
            if not isinstance(f, Tensor) or f.dim() != 2 or f.shape[0] != n_mels:
                got = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
                raise InputError(
                    f"audio collate: sample {i} has features {got}, expected a ({n_mels}, T) tensor from this processor"
                )
        lengths = [0 if s is None else int(s["features"].shape[1]) for s in samples]
        b, t = len(samples), max([1, *lengths])
        features = torch.zeros(b, n_mels, t, dtype=torch.float32)
        for i, s in enumerate(samples):
            if s is not None:
                features[i, :, : lengths[i]] = s["features"]
        frames = torch.tensor(lengths, dtype=torch.long)
        mask = torch.arange(t) < frames.unsqueeze(1)
        return {"features": features, "frames": frames, "mask": mask}

    # --- files -------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> list[str]:
        """Write ``audio_processor.json``: kind, format version and the resolved options."""
        return self.write_json(
            str(directory), PROCESSOR_FILE, PROCESSOR_KIND, FORMAT_VERSION, {"options": self.options}
        )

    def load(self, directory: str | os.PathLike[str]) -> None:
        """Read ``audio_processor.json`` and adopt its options.

        Raises :class:`~mmcore.errors.ModelDirError` when it is missing, unreadable, of
        another kind or format version, or holds invalid options.
        """
        path = os.path.join(directory, PROCESSOR_FILE)
        data = self.read_json(str(directory), PROCESSOR_FILE, PROCESSOR_KIND, FORMAT_VERSION, "the audio processor")
        try:
            self.config = AudioProcessorConfig.model_validate(data.get("options", {}))
        except ValidationError as exc:
            raise ModelDirError(f"{path}: invalid options: {exc}") from exc

    def __repr__(self) -> str:
        c = self.config
        return (
            f"AudioProcessor(sample_rate={c.sample_rate}, n_mels={c.n_mels}, n_fft={c.n_fft}, "
            f"hop_length={c.hop_length}, max_seconds={c.max_seconds:g}, normalize={c.normalize!r})"
        )
