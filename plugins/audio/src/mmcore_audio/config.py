"""Options of the ``audio.whisper`` encoder and its processor (pydantic only, no torch).

:class:`AudioProcessorConfig` holds what turns a record's audio into log-mel features;
:class:`WhisperAudioConfig` (the options of ``encoder:audio.whisper``, one spec section)
adds the encoder's own options to them.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from mmcore import ComponentConfig

__all__ = ["AudioProcessorConfig", "WhisperAudioConfig", "max_feature_frames"]


def max_feature_frames(max_seconds: float, sample_rate: int, hop_length: int) -> int:
    """Most feature frames the processor emits for audio of at most ``max_seconds``.

    A clip of ``n`` samples (at ``sample_rate``) gives ``ceil(n / hop_length)`` frames
    (one per hop whose centre lies inside the clip); ``n <= ceil(max_seconds * sample_rate)``.
    """
    n = math.ceil(max_seconds * sample_rate - 1e-9)
    return max(1, math.ceil(n / hop_length))


class AudioProcessorConfig(ComponentConfig):
    """Options of the audio processor: decoding, checks, resampling and log-mel features."""

    # --- decoding and checks ----------------------------------------------------------
    sample_rate: int = Field(
        16000,
        gt=0,
        le=768000,
        description="Rate (Hz) the audio is resampled to before features are computed. Bare arrays "
        "(numpy, torch, lists) are taken to be at this rate; give {'array': ..., 'sample_rate': N} otherwise.",
    )
    max_seconds: float = Field(
        30.0,
        gt=0,
        description="Longest accepted clip, in seconds. Files are checked against their header's frame count "
        "before anything is decoded; longer input is rejected with an error naming the record.",
    )
    normalize: Literal["peak", "rms", "none"] = Field(
        "peak",
        description="Loudness normalisation after resampling: 'peak' scales the largest |sample| to 1, 'rms' "
        "scales the RMS to rms_level, 'none' leaves the samples as decoded.",
    )
    rms_level: float = Field(0.1, gt=0, le=1, description="Target RMS of normalize = 'rms' (0.1 = -20 dBFS).")
    allow_silence: bool = Field(
        False,
        description="Accept silent clips (peak below 1e-7 after mixdown); by default they are rejected as "
        "probably broken records.",
    )
    clip_fraction: float = Field(
        0.01,
        gt=0,
        le=1,
        description="Fraction of clipped samples (runs of 3 or more consecutive samples at |x| >= 0.9999) above "
        "which a clip counts as clipped: a warning naming the record, or an error with reject_clipped.",
    )
    reject_clipped: bool = Field(False, description="Reject clipped clips with an error instead of warning.")
    cache_mb: float = Field(
        512.0,
        ge=0,
        description="Keep the decoded, resampled signal of files read by path in memory, up to this many megabytes "
        "per process (least recently used out first; keyed by path, size and modification time), so a file read "
        "again (the next epoch) is neither decoded nor resampled again; the features are identical. 0: off.",
    )
    # --- features ---------------------------------------------------------------------
    n_fft: int = Field(400, ge=8, description="FFT size and Hann window length of the STFT (400 = 25 ms at 16 kHz).")
    hop_length: int = Field(160, ge=1, description="Samples between STFT frames (160 = 10 ms at 16 kHz).")
    n_mels: int = Field(80, ge=1, description="Number of mel bands (Slaney mel scale, Slaney-normalised filters).")
    f_min: float = Field(0.0, ge=0, description="Lowest frequency (Hz) of the mel filterbank.")
    f_max: float | None = Field(
        None, gt=0, description="Highest frequency (Hz) of the mel filterbank; default sample_rate / 2."
    )
    pad_mode: Literal["constant", "reflect"] = Field(
        "constant",
        description="How the signal is extended by n_fft / 2 samples at both ends for centred frames: zeros "
        "('constant', librosa's default) or mirrored ('reflect', Whisper's; clips of n_fft / 2 samples or fewer "
        "are zero-padded).",
    )
    dynamic_range: float = Field(
        8.0,
        ge=0,
        description="Clamp the log10-mel features to at least (their maximum - dynamic_range), per clip "
        "(Whisper: 8.0, i.e. 80 dB); 0: no clamp, only the 1e-10 power floor applies.",
    )
    whisper_scale: bool = Field(True, description="Map the log10-mel features x to (x + 4) / 4, as Whisper does.")
    # --- augmentation -----------------------------------------------------------------
    speed_perturb: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Augmentation while training: play the clip s times as fast, s drawn uniformly from "
        "[1 - speed_perturb, 1 + speed_perturb] (tempo and pitch change together, like a new speaker's voice; "
        "a slowed clip is cut at max_seconds), before the other augmentations; 0: off.",
    )
    shift_seconds: float = Field(
        0.0,
        ge=0,
        description="Augmentation while training: move the sound by a random offset of up to this many seconds: "
        "later (silence in front, the clip grows, cut at max_seconds) or earlier into its leading silence only "
        "(a shift never cuts a word's onset); 0: off.",
    )
    shift_prob: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Augmentation while training: the share of clips the time shift (shift_seconds) moves; the "
        "others keep their sound where it is, as evaluation sees it (a clip whose sound starts at its first "
        "sample can only move later: with 1 its copies start shift_seconds / 2 later on average); 1: every clip.",
    )
    gain_db: float = Field(
        0.0, ge=0, description="Augmentation while training: a random gain of up to +-gain_db decibels; 0: off."
    )
    noise_snr_db: tuple[float, float] | None = Field(
        None,
        description="Augmentation while training: add white noise at a signal-to-noise ratio drawn uniformly "
        "from [low, high] decibels (e.g. [10, 30]); none: off.",
    )
    spec_augment: bool = Field(
        False,
        description="SpecAugment (frequency and time masking, filled with the clip's mean feature) while the "
        "processor's training attribute is True; never at evaluation.",
    )
    freq_masks: int = Field(2, ge=0, description="SpecAugment: number of frequency masks per clip.")
    freq_mask_width: int = Field(27, ge=0, description="SpecAugment: widest frequency mask, in mel bands.")
    time_masks: int = Field(2, ge=0, description="SpecAugment: number of time masks per clip.")
    time_mask_width: int = Field(100, ge=0, description="SpecAugment: widest time mask, in frames.")
    time_mask_ratio: float = Field(
        0.2, ge=0, le=1, description="SpecAugment: a time mask also covers at most this fraction of the clip's frames."
    )

    @model_validator(mode="after")
    def _check_features(self) -> "AudioProcessorConfig":
        if self.noise_snr_db is not None:
            low, high = self.noise_snr_db
            if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                raise ValueError(
                    f"noise_snr_db must be [low, high] with finite low <= high, got {list(self.noise_snr_db)}"
                )
        nyquist = self.sample_rate / 2
        f_max = nyquist if self.f_max is None else self.f_max
        if f_max > nyquist:
            raise ValueError(f"f_max ({f_max}) must be at most sample_rate / 2 ({nyquist})")
        if self.f_min >= f_max:
            raise ValueError(f"f_min ({self.f_min}) must be below f_max ({f_max})")
        if self.n_mels > self.n_fft // 2 + 1:
            raise ValueError(
                f"n_mels ({self.n_mels}) must be at most n_fft / 2 + 1 ({self.n_fft // 2 + 1}), the number of "
                "STFT bins; raise n_fft or lower n_mels"
            )
        return self

    @property
    def max_frames_needed(self) -> int:
        """Most feature frames a clip of ``max_seconds`` gives."""
        return max_feature_frames(self.max_seconds, self.sample_rate, self.hop_length)


class WhisperAudioConfig(AudioProcessorConfig):
    """Options of ``encoder:audio.whisper``: the processor's options plus the encoder's.

    The encoder reads (B, n_mels, T) log-mel features: two Conv1d layers (kernel 3, the
    second with stride 2) with GELU, positions, ``depth`` pre-norm transformer blocks and
    a final LayerNorm; it produces ceil(T / 2) tokens of width ``dim``.
    """

    dim: int = Field(
        128,
        ge=2,
        description="Width of the encoder and of its tokens (its out_dim); a projector maps it to the backbone "
        "width when they differ.",
    )
    depth: int = Field(2, ge=0, description="Number of transformer blocks.")
    heads: int = Field(4, ge=1, description="Attention heads per block; dim must be divisible by heads.")
    mlp_ratio: float = Field(4.0, gt=0, description="Hidden width of the feed-forward as a multiple of dim.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on attention weights, attention and MLP outputs.")
    max_frames: int = Field(
        3000,
        ge=1,
        description="Most feature frames the encoder accepts (capacity of its positions: ceil(max_frames / 2) "
        "tokens). Must cover max_seconds: ceil(max_seconds * sample_rate / hop_length) frames.",
    )
    positions: Literal["sinusoidal", "learned"] = Field(
        "sinusoidal",
        description="Position information added after the convolutions: fixed sinusoids (Whisper's encoder, "
        "computed on the fly, nothing saved) or a learned table of ceil(max_frames / 2) vectors.",
    )

    @model_validator(mode="after")
    def _check_encoder(self) -> "WhisperAudioConfig":
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.positions == "sinusoidal" and self.dim % 2:
            raise ValueError(f"sinusoidal positions need an even dim, got {self.dim}")
        need = self.max_frames_needed
        if need > self.max_frames:
            raise ValueError(
                f"max_frames ({self.max_frames}) is too small for max_seconds = {self.max_seconds}: such a clip has "
                f"{need} frames at sample_rate = {self.sample_rate} and hop_length = {self.hop_length}; raise "
                f"max_frames to {need} or lower max_seconds"
            )
        return self

    def processor_options(self) -> AudioProcessorConfig:
        """The processor's part of these options."""
        return AudioProcessorConfig.model_validate({k: getattr(self, k) for k in AudioProcessorConfig.model_fields})
