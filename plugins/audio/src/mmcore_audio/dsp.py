"""Signal processing in torch: band-limited resampling, log-mel features, augmentation.

Everything here works on one mono signal, a 1-D tensor of ``N`` samples.

Resampling (:func:`resample`) is windowed-sinc interpolation: every output sample is a
weighted sum of the input samples around its position, the weights being a Kaiser-
windowed sinc low-pass whose cutoff is ``ROLLOFF`` times the lower of the two Nyquist
frequencies (so downsampling removes what would alias). For rates whose ratio reduces
to small integers (44100 -> 16000 is 441 -> 160) the weights repeat every 160 outputs
and the filter runs as one strided ``conv1d`` with one output channel per phase
(polyphase); for awkward ratios (44101 -> 16000) each output's weights are computed
directly, in chunks. Both give the same result.

Features (:func:`mel_power`, :func:`log_mel`) follow librosa's defaults: centred STFT
frames with a periodic Hann window, power spectrum, a Slaney-scale mel filterbank with
Slaney ("area") normalisation, ``log10(max(mel, 1e-10))``, then optionally Whisper's
dynamic-range clamp and scaling. They are computed in float64.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LOG_FLOOR",
    "SHIFT_SILENCE",
    "leading_silence",
    "num_frames",
    "resample",
    "resampled_length",
    "mel_filterbank",
    "hz_to_mel",
    "mel_to_hz",
    "power_spectrogram",
    "mel_power",
    "log_mel",
    "spec_augment",
    "augment_waveform",
    "change_speed",
]

#: Zero crossings of the sinc on each side of the centre, counted at the lower rate.
LOWPASS_WIDTH = 32
#: Cutoff of the anti-aliasing low-pass, as a fraction of the lower Nyquist frequency.
ROLLOFF = 0.94
#: Kaiser window shape: ~85 dB stop-band attenuation.
KAISER_BETA = 8.6
#: Polyphase filter banks larger than this (phases x taps) use the direct path instead.
MAX_POLYPHASE_ELEMENTS = 1 << 22
#: Floor of the mel power before the logarithm (librosa's ``amin``).
LOG_FLOOR = 1e-10


# --- resampling ------------------------------------------------------------------------------


def resampled_length(n: int, orig: int, new: int) -> int:
    """Number of output samples for ``n`` input samples: ``ceil(n * new / orig)``."""
    return -(-n * new // orig)


def _lowpass(offset: Tensor, ratio: float) -> Tensor:
    """Kaiser-windowed sinc low-pass at ``offset`` input samples from the output position.

    ``ratio`` is the cutoff as a fraction of the *input* Nyquist frequency; the taps of
    an interpolation sum to ~1 (unit gain at DC).
    """
    x = offset * ratio  # in periods of the cutoff's sinc: zero crossings at integers
    u = (x / LOWPASS_WIDTH).clamp(-1.0, 1.0)
    window = torch.special.i0(KAISER_BETA * torch.sqrt(1.0 - u * u)) / torch.special.i0(
        torch.tensor(KAISER_BETA, dtype=offset.dtype)
    )
    h = ratio * torch.special.sinc(x) * window
    return torch.where(x.abs() <= LOWPASS_WIDTH, h, torch.zeros_like(h))


def _half_width(ratio: float) -> int:
    """Half-width of the filter in input samples."""
    return math.ceil(LOWPASS_WIDTH / ratio)


@functools.lru_cache(maxsize=16)
def _polyphase_kernel(orig: int, new: int) -> Tensor:
    """(new, 1, orig + 2W) float64: row p holds the taps of output phase p."""
    ratio = ROLLOFF * min(1.0, new / orig)
    w = _half_width(ratio)
    j = torch.arange(-w, orig + w, dtype=torch.float64)  # input index relative to the block start
    phase = torch.arange(new, dtype=torch.float64) * orig / new  # output time within the block
    return _lowpass(phase[:, None] - j[None, :], ratio).unsqueeze(1)


def _resample_polyphase(x: Tensor, orig: int, new: int) -> Tensor:
    kernel = _polyphase_kernel(orig, new).to(x.dtype)
    w = (kernel.shape[-1] - orig) // 2
    n = x.shape[-1]
    padded = F.pad(x.view(1, 1, n), (w, w + orig))
    y = F.conv1d(padded, kernel, stride=orig)  # (1, new, K): output k * new + p
    return y[0].transpose(0, 1).reshape(-1)[: resampled_length(n, orig, new)]


@functools.lru_cache(maxsize=16)
def _phase_table(orig: int, new: int) -> Tensor:
    """(new, 2W + 1) float64: the taps of every output phase (nonzero taps only)."""
    ratio = ROLLOFF * min(1.0, new / orig)
    w = _half_width(ratio)
    p = torch.arange(new, dtype=torch.int64)
    frac = (p * orig % new).to(torch.float64) / new  # output position past its floor, in input samples
    taps = torch.arange(-w, w + 1, dtype=torch.float64)
    return _lowpass(frac[:, None] - taps[None, :], ratio)


def _resample_direct(x: Tensor, orig: int, new: int, chunk_elements: int = 1 << 22) -> Tensor:
    ratio = ROLLOFF * min(1.0, new / orig)
    w = _half_width(ratio)
    n = x.shape[-1]
    m_total = resampled_length(n, orig, new)
    width = 2 * w + 1
    windows = F.pad(x, (w, w)).unfold(0, width, 1)  # row i: input samples i - w .. i + w
    table = _phase_table(orig, new).to(x.dtype) if new * width <= MAX_POLYPHASE_ELEMENTS else None
    taps = torch.arange(-w, w + 1, dtype=torch.float64)
    chunk = max(1, chunk_elements // width)
    out = []
    for start in range(0, m_total, chunk):
        m = torch.arange(start, min(start + chunk, m_total), dtype=torch.int64)
        base = (m * orig) // new  # floor of each output's position, in input samples
        if table is not None:
            weights = table[m % new]
        else:  # too many phases to tabulate: compute each output's taps
            frac = (m * orig - base * new).to(torch.float64) / new
            weights = _lowpass(frac[:, None] - taps[None, :], ratio).to(x.dtype)
        out.append(torch.einsum("mk,mk->m", windows[base], weights))
    return torch.cat(out) if out else x.new_zeros(0)


def resample(x: Tensor, orig: int, new: int, *, method: str = "auto") -> Tensor:
    """Band-limited resampling of a 1-D signal from ``orig`` Hz to ``new`` Hz.

    Args:
        x: (N,) float tensor.
        orig, new: sample rates (positive integers).
        method: ``"polyphase"`` (one strided conv1d; the rates' reduced ratio must be
            small enough), ``"direct"`` (per-output weights, any ratio) or ``"auto"``.

    Returns:
        (ceil(N * new / orig),) tensor of ``x``'s dtype. Output sample m sits at input
        time ``m * orig / new``: the first samples of both coincide.
    """
    if x.dim() != 1:
        raise ValueError(f"resample expects a 1-D signal, got shape {tuple(x.shape)}")
    orig, new = int(orig), int(new)
    if orig <= 0 or new <= 0:
        raise ValueError(f"sample rates must be positive, got {orig} -> {new}")
    if orig == new:
        return x
    g = math.gcd(orig, new)
    o, q = orig // g, new // g
    if method == "auto":
        size = q * (o + 2 * _half_width(ROLLOFF * min(1.0, q / o)))
        method = "polyphase" if size <= MAX_POLYPHASE_ELEMENTS else "direct"
    if method == "polyphase":
        return _resample_polyphase(x, o, q)
    if method == "direct":
        return _resample_direct(x, o, q)
    raise ValueError(f"unknown resampling method {method!r}; use 'auto', 'polyphase' or 'direct'")


# --- mel filterbank ----------------------------------------------------------------------------

_F_SP = 200.0 / 3  # Slaney: linear part, 66.67 Hz per mel
_MIN_LOG_HZ = 1000.0  # Slaney: logarithmic above 1 kHz
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP  # 15 mels
_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(f: Tensor) -> Tensor:
    """Slaney's mel scale (librosa's ``hz_to_mel(htk=False)``): linear below 1 kHz, log above."""
    lin = f / _F_SP
    log = _MIN_LOG_MEL + torch.log(torch.clamp(f, min=_MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return torch.where(f >= _MIN_LOG_HZ, log, lin)


def mel_to_hz(m: Tensor) -> Tensor:
    """Inverse of :func:`hz_to_mel`."""
    lin = _F_SP * m
    log = _MIN_LOG_HZ * torch.exp(_LOGSTEP * (m - _MIN_LOG_MEL))
    return torch.where(m >= _MIN_LOG_MEL, log, lin)


@functools.lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None) -> Tensor:
    """(n_mels, n_fft // 2 + 1) float64 triangular filters, as ``librosa.filters.mel``'s defaults.

    Filter centres are equally spaced on the Slaney mel scale between ``f_min`` and
    ``f_max`` (default ``sample_rate / 2``); each filter is scaled by 2 / (its width in
    Hz) (Slaney normalisation: equal area). Do not modify the result (it is cached).
    """
    f_max = sample_rate / 2 if f_max is None else float(f_max)
    fft_freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lo, hi = hz_to_mel(torch.tensor([float(f_min), f_max], dtype=torch.float64)).tolist()
    mel_f = mel_to_hz(torch.linspace(lo, hi, n_mels + 2, dtype=torch.float64))  # (n_mels + 2,) Hz
    fdiff = mel_f.diff()
    ramps = mel_f[:, None] - fft_freqs[None, :]  # (n_mels + 2, n_bins)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = torch.clamp(torch.minimum(lower, upper), min=0.0)
    enorm = 2.0 / (mel_f[2:] - mel_f[:-2])
    return weights * enorm[:, None]


# --- features ----------------------------------------------------------------------------------


def num_frames(n_samples: int, hop_length: int) -> int:
    """Feature frames of a clip: one per hop whose centre lies inside it, ``max(1, ceil(n / hop))``.

    A centred STFT (librosa's, torch's ``center=True``) has ``1 + n // hop`` frames: one
    more when ``n`` is a multiple of ``hop_length``, centred past the last sample; like
    Whisper, that frame is dropped (so 30 s at 16 kHz is exactly 3000 frames).
    """
    return max(1, -(-n_samples // hop_length))


def power_spectrogram(x: Tensor, n_fft: int, hop_length: int, pad_mode: str = "constant") -> Tensor:
    """|STFT|^2 of a 1-D signal: (n_fft // 2 + 1, num_frames(N, hop_length)) float64.

    Centred frames (the signal is extended by ``n_fft // 2`` samples at both ends, with
    zeros or mirrored as ``pad_mode`` says; mirroring needs more than ``n_fft // 2``
    samples, shorter clips are zero-padded), periodic Hann window of ``n_fft`` samples.
    """
    x = x.to(torch.float64)
    n = x.shape[-1]
    mode = pad_mode if n > n_fft // 2 else "constant"
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    spec = torch.stft(
        x,
        n_fft,
        hop_length=hop_length,
        win_length=n_fft,
        window=window,
        center=True,
        pad_mode=mode,
        return_complex=True,
    )
    spec = spec[:, : num_frames(n, hop_length)]
    return spec.real.square() + spec.imag.square()


def mel_power(
    x: Tensor,
    sample_rate: int,
    *,
    n_fft: int = 400,
    hop_length: int = 160,
    n_mels: int = 80,
    f_min: float = 0.0,
    f_max: float | None = None,
    pad_mode: str = "constant",
) -> Tensor:
    """Mel power spectrogram of a 1-D signal: (n_mels, num_frames(N, hop_length)) float64.

    Equals ``librosa.feature.melspectrogram(y=x, sr=sample_rate, n_fft=n_fft,
    hop_length=hop_length, n_mels=n_mels, fmin=f_min, fmax=f_max, power=2.0,
    center=True, pad_mode=pad_mode)`` up to the dropped trailing frame (see
    :func:`num_frames`).
    """
    fb = mel_filterbank(sample_rate, n_fft, n_mels, float(f_min), None if f_max is None else float(f_max))
    return fb @ power_spectrogram(x, n_fft, hop_length, pad_mode)


def log_mel(mel: Tensor, *, dynamic_range: float | None = None, whisper_scale: bool = False) -> Tensor:
    """``log10(max(mel, 1e-10))``, then optionally clamped to ``max - dynamic_range`` and mapped to ``(x + 4) / 4``.

    ``mel`` is one clip's (n_mels, T) power; the clamp uses that clip's maximum.
    """
    x = torch.log10(torch.clamp(mel, min=LOG_FLOOR))
    if dynamic_range is not None:
        x = torch.maximum(x, x.max() - dynamic_range)
    if whisper_scale:
        x = (x + 4.0) / 4.0
    return x


def spec_augment(
    features: Tensor,
    *,
    freq_masks: int,
    freq_mask_width: int,
    time_masks: int,
    time_mask_width: int,
    time_mask_ratio: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """SpecAugment's masking (Park et al. 2019) on one clip's (n_mels, T) features; returns a copy.

    Each of ``freq_masks`` masks covers ``f ~ U{0..freq_mask_width}`` consecutive mel
    bands, each of ``time_masks`` masks ``t ~ U{0..min(time_mask_width, time_mask_ratio *
    T)}`` consecutive frames, at uniformly drawn positions; masked values become the
    clip's mean feature. Draws from ``generator`` (default: torch's global generator,
    which DataLoader seeds per worker).
    """
    out = features.clone()
    n_mels, t = out.shape
    fill = features.mean()

    def draw(high: int) -> int:  # uniform on 0..high
        return int(torch.randint(0, high + 1, (), generator=generator))

    for _ in range(freq_masks):
        width = draw(min(freq_mask_width, n_mels))
        start = draw(n_mels - width)
        out[start : start + width] = fill
    widest = min(time_mask_width, int(time_mask_ratio * t))
    for _ in range(time_masks):
        width = draw(widest)
        start = draw(t - width)
        out[:, start : start + width] = fill
    return out


def augment_waveform(
    wave: Tensor,
    sample_rate: int,
    *,
    shift_seconds: float = 0.0,
    shift_prob: float = 1.0,
    gain_db: float = 0.0,
    noise_snr_db: tuple[float, float] | None = None,
    speed_perturb: float = 0.0,
    max_samples: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Random speed, time shift, gain and additive white noise on one (N,) signal; returns a new tensor.

    In this order, each only when its option is on:

    * speed: played ``s ~ U(1 - speed_perturb, 1 + speed_perturb)`` times as fast
      (:func:`change_speed`: tempo and pitch together; the clip becomes N / s samples long,
      cut at ``max_samples``);

    * shift: the sound starts ``k ~ U{-L..K}`` samples later, ``K = round(shift_seconds *
      sample_rate)``, ``L = min(K, the clip's leading silence)``: for k > 0, k zeros go in
      front and the clip grows by k (cut at ``max_samples``); for k < 0, -k samples of its
      leading silence (those before the first sample above ``SHIFT_SILENCE`` times the
      peak) are dropped. A shift never cuts into the sound itself: a word that starts at
      the clip's first sample ("up" from a speech synthesiser) keeps its onset. With
      ``shift_prob < 1`` only that share of the calls shift (a uniform draw decides first); the
      others leave the sound where it is, as evaluation sees it: a clip with no leading silence
      can only move later, so its shifted copies start ``shift_seconds / 2`` later on average;
    * gain: multiplied by ``10 ** (g / 20)`` with ``g ~ U(-gain_db, gain_db)``;
    * noise: plus Gaussian white noise whose power is the signal's mean power over
      ``10 ** (snr / 10)``, ``snr ~ U(noise_snr_db)`` (a silent signal stays silent).

    Draws from ``generator`` (default: torch's global generator, which DataLoader seeds per
    worker and the trainer from ``training.seed``).
    """
    out = wave.clone()
    if speed_perturb > 0:
        s = float(torch.empty((), dtype=torch.float64).uniform_(-speed_perturb, speed_perturb, generator=generator))
        out = change_speed(out, 1.0 + s, max_samples)
    k_max = int(round(shift_seconds * sample_rate))
    if k_max > 0 and shift_prob < 1 and float(torch.rand((), generator=generator)) >= shift_prob:
        k_max = 0  # this clip is not shifted (the draw is made only when shift_prob < 1: same stream as before)
    if k_max > 0 and out.shape[0]:
        lead = leading_silence(out)
        k = int(torch.randint(-min(k_max, lead), k_max + 1, (), generator=generator))
        if k > 0:
            out = torch.cat([out.new_zeros(k), out])[:max_samples]
        elif k < 0:
            out = out[-k:]
    n = out.shape[0]
    if gain_db > 0:
        g = float(torch.empty((), dtype=torch.float64).uniform_(-gain_db, gain_db, generator=generator))
        out = out * 10 ** (g / 20)
    if noise_snr_db is not None and n:
        low, high = noise_snr_db
        snr = (
            float(torch.empty((), dtype=torch.float64).uniform_(low, high, generator=generator)) if high > low else low
        )
        power = float(out.square().mean())
        noise = torch.randn(n, generator=generator, dtype=out.dtype)
        out = out + noise * math.sqrt(power / 10 ** (snr / 10))
    return out


#: :func:`augment_waveform`'s time shift drops only samples below this fraction of the clip's peak (-60 dB).
SHIFT_SILENCE = 1e-3


def leading_silence(wave: Tensor, level: float = SHIFT_SILENCE) -> int:
    """How many samples of (N,) ``wave`` come before the first one above ``level`` times its peak
    (0 for a silent clip: it has no sound to find)."""
    peak = wave.abs().max() if wave.numel() else 0
    if not peak > 0:
        return 0
    return int(torch.nonzero(wave.abs() > level * peak)[0])


def change_speed(wave: Tensor, factor: float, max_samples: int | None = None) -> Tensor:
    """``wave`` played ``factor`` times as fast: (round(N / factor),) samples, at most ``max_samples``.

    Tempo and pitch change together (as a tape played faster), like Kaldi's speed
    perturbation: output sample m is the input at time ``m * factor``, by linear
    interpolation between its two neighbours (an augmentation, not a band-limited
    resampler: a little aliasing is harmless here). A longer result is cut at ``max_samples``.
    """
    n = wave.shape[0]
    if factor == 1.0 or n < 2:
        return wave.clone()
    m = max(1, round(n / factor))
    if max_samples is not None:
        m = min(m, max_samples)
    pos = (torch.arange(m, dtype=torch.float64) * factor).clamp(max=n - 1)
    lo = pos.floor().long().clamp(max=n - 2)
    frac = (pos - lo).to(wave.dtype)
    return wave[lo] * (1 - frac) + wave[lo + 1] * frac
