"""Waveform augmentation of the audio processor: time shift, gain, white noise (training only)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from mmcore_audio import dsp
from mmcore_audio.config import AudioProcessorConfig
from mmcore_audio.processor import AudioProcessor
from pydantic import ValidationError

SR = 8000


def burst(n: int = SR // 2, start: int = 1600, length: int = 400) -> torch.Tensor:
    """Silence with a 1 kHz burst at ``start``: where it lies shows a shift."""
    x = torch.zeros(n, dtype=torch.float64)
    t = torch.arange(length, dtype=torch.float64) / SR
    x[start : start + length] = 0.5 * torch.cos(2 * math.pi * 1000 * t)  # non-zero first sample
    return x


def onset(x: torch.Tensor) -> int:
    return int(torch.nonzero(x.abs() > 1e-12)[0])


def test_shift_moves_the_sound_within_the_range_into_its_silence_and_changes_the_length():
    x = burst()  # 1,600 samples (0.2 s) of silence before the burst, 2,000 after
    seen = set()
    for seed in range(40):
        y = dsp.augment_waveform(x, SR, shift_seconds=0.05, generator=torch.Generator().manual_seed(seed))
        k = onset(y) - onset(x)
        assert abs(k) <= 400 and y.shape[0] == x.shape[0] + k  # 0.05 s at 8 kHz; silence added or dropped in front
        assert torch.equal(y[onset(y) :], x[1600:])  # the same samples, moved, none cut
        seen.add(k)
    assert len(seen) > 20 and min(seen) < 0 < max(seen)  # both ways, many offsets
    x, n = burst(n=2400), 2400  # 400 samples of silence after the burst
    for seed in range(10):  # a clip made longer is cut at max_samples
        y = dsp.augment_waveform(x, SR, shift_seconds=0.1, max_samples=n, generator=torch.Generator().manual_seed(seed))
        assert y.shape[0] <= n and torch.equal(y[onset(y) :], x[1600 : 1600 + y.shape[0] - onset(y)])
        seen.add(("cut", onset(y) > onset(x) and y.shape[0] == n))
    assert ("cut", True) in seen


def test_shift_never_cuts_a_sound_that_starts_at_the_first_sample():
    """A word such as "up" starts at a synthesiser's first sample: moving it earlier would cut its
    onset (and a trained model then heard a clipped "go up" as "up"), so it only moves later."""
    x = burst(start=0)
    y0 = burst(start=3)  # three samples of near-silence: at most those are dropped
    assert dsp.leading_silence(x) == 0 and dsp.leading_silence(y0) == 3
    assert dsp.leading_silence(torch.zeros(10, dtype=torch.float64)) == 0
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        y = dsp.augment_waveform(x, SR, shift_seconds=0.05, generator=g)
        k = y.shape[0] - x.shape[0]
        assert 0 <= k <= 400 and torch.equal(y[k:], x)  # later or not at all; every sample kept
        z = dsp.augment_waveform(y0, SR, shift_seconds=0.05, generator=torch.Generator().manual_seed(seed))
        assert -3 <= z.shape[0] - y0.shape[0] <= 400 and torch.equal(z[onset(z) :], y0[3:])


def test_shift_prob_leaves_that_share_of_the_clips_where_evaluation_sees_them():
    """A sound at the first sample only moves later: with shift_prob < 1 the rest keep it at the first
    sample, as at evaluation; shift_prob = 1 (the default) draws exactly what it drew before the option."""
    x = burst(start=0)
    kept = []
    for seed in range(200):
        y = dsp.augment_waveform(
            x, SR, shift_seconds=0.05, shift_prob=0.25, generator=torch.Generator().manual_seed(seed)
        )
        k = y.shape[0] - x.shape[0]
        assert 0 <= k <= 400 and torch.equal(y[k:], x)
        kept.append(k == 0)
    assert 0.65 <= sum(kept) / len(kept) <= 0.85  # 75 % unshifted (and 1 in 401 shifted by 0)
    for seed in range(20):
        none = dsp.augment_waveform(
            x, SR, shift_seconds=0.05, shift_prob=0.0, generator=torch.Generator().manual_seed(seed)
        )
        assert torch.equal(none, x)
        every = dsp.augment_waveform(
            x, SR, shift_seconds=0.05, shift_prob=1.0, generator=torch.Generator().manual_seed(seed)
        )
        default = dsp.augment_waveform(x, SR, shift_seconds=0.05, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(every, default)
        before = int(torch.randint(0, 401, (), generator=torch.Generator().manual_seed(seed)))  # the shift's only draw
        assert default.shape[0] - x.shape[0] == before  # so the runs before the option are reproduced
    assert (
        sum(
            dsp.augment_waveform(x, SR, shift_seconds=0.05, generator=torch.Generator().manual_seed(s)).shape[0]
            > x.shape[0]
            for s in range(20)
        )
        >= 19
    )


def test_gain_scales_by_a_random_factor_within_the_range():
    x = burst()
    ratios = []
    for seed in range(40):
        y = dsp.augment_waveform(x, SR, gain_db=6.0, generator=torch.Generator().manual_seed(seed))
        r = float(y.abs().max() / x.abs().max())
        assert torch.allclose(y, x * r)  # a pure scaling
        ratios.append(20 * math.log10(r))
    assert all(-6 <= g <= 6 for g in ratios) and min(ratios) < -5 and max(ratios) > 5  # the whole range


def test_noise_has_the_drawn_signal_to_noise_ratio():
    x = burst(n=SR * 2, start=0, length=SR * 2)
    for seed in range(5):
        y = dsp.augment_waveform(x, SR, noise_snr_db=(10.0, 20.0), generator=torch.Generator().manual_seed(seed))
        snr = 10 * math.log10(float(x.square().mean() / (y - x).square().mean()))
        assert 9.8 <= snr <= 20.2
    y = dsp.augment_waveform(x, SR, noise_snr_db=(30.0, 30.0), generator=torch.Generator().manual_seed(0))
    assert 10 * math.log10(float(x.square().mean() / (y - x).square().mean())) == pytest.approx(30, abs=0.2)
    silent = torch.zeros(100, dtype=torch.float64)
    assert torch.equal(dsp.augment_waveform(silent, SR, noise_snr_db=(10.0, 20.0)), silent)


def test_each_augmentation_is_off_by_default_and_separately():
    x = burst()
    g = torch.Generator().manual_seed(0)
    assert torch.equal(dsp.augment_waveform(x, SR, generator=g), x)
    only_gain = dsp.augment_waveform(x, SR, gain_db=6.0, generator=torch.Generator().manual_seed(1))
    assert onset(only_gain) == onset(x)  # no shift without shift_seconds
    assert torch.count_nonzero(only_gain) == torch.count_nonzero(x)  # no noise without noise_snr_db


def test_processor_augments_only_while_training_and_reproducibly():
    audio = burst().numpy().astype(np.float32)
    opts = {"sample_rate": SR, "n_fft": 200, "hop_length": 80, "n_mels": 32, "max_seconds": 1.0}
    clean = AudioProcessor(AudioProcessorConfig(**opts))(audio)["features"]
    p = AudioProcessor(AudioProcessorConfig(**opts, shift_seconds=0.05, gain_db=6.0, noise_snr_db=(10, 30)))
    assert torch.equal(p(audio)["features"], clean)  # evaluation: never augmented
    p.training = True
    torch.manual_seed(5)
    a = p(audio)["features"]
    torch.manual_seed(5)
    b = p(audio)["features"]
    torch.manual_seed(6)
    c = p(audio)["features"]
    assert a.shape[0] == clean.shape[0] and abs(a.shape[1] - clean.shape[1]) <= 5  # a shift of <= 0.05 s: 5 frames
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, clean)
    still = AudioProcessor(AudioProcessorConfig(**opts, shift_seconds=0.05, shift_prob=0.0))
    still.training = True
    assert torch.equal(still(audio)["features"], clean)  # shift_prob reaches the augmentation
    with pytest.raises(ValidationError):
        AudioProcessorConfig(**opts, shift_prob=1.5)


def test_gain_alone_shifts_the_log_mel_features_by_a_constant():
    audio = burst().numpy().astype(np.float32)
    opts = {"sample_rate": SR, "n_fft": 200, "hop_length": 80, "n_mels": 32, "max_seconds": 1.0}
    opts.update(dynamic_range=0.0, whisper_scale=False)  # plain log10 mel: a gain adds 2 log10(g)
    clean = AudioProcessor(AudioProcessorConfig(**opts))(audio)["features"]
    p = AudioProcessor(AudioProcessorConfig(**opts, gain_db=6.0))
    p.training = True
    torch.manual_seed(2)
    diff = p(audio)["features"] - clean
    loud = clean > clean.max() - 3  # away from the 1e-10 floor
    assert diff[loud].std() < 1e-3 and 0.01 < abs(float(diff[loud].mean())) <= 2 * 6 / 20 + 1e-3


def test_noise_option_is_validated():
    with pytest.raises(ValidationError, match="low <= high"):
        AudioProcessorConfig(noise_snr_db=(30, 10))
    with pytest.raises(ValidationError):
        AudioProcessorConfig(gain_db=-1)


def test_speed_perturb_changes_tempo_and_pitch_together_within_the_range():
    n = SR  # one second of a 500 Hz tone
    x = torch.sin(2 * math.pi * 500 * torch.arange(n, dtype=torch.float64) / SR)
    factors = []
    for seed in range(30):
        y = dsp.augment_waveform(x, SR, speed_perturb=0.2, generator=torch.Generator().manual_seed(seed))
        s = n / y.shape[0]  # the length says the factor drawn
        assert 0.8 - 1e-3 <= s <= 1.2 + 1e-3
        spectrum = torch.fft.rfft(y * torch.hann_window(y.shape[0], dtype=torch.float64)).abs()
        peak_hz = float(spectrum.argmax()) * SR / y.shape[0]
        assert peak_hz == pytest.approx(500 * s, abs=3)  # the pitch moved by the same factor
        factors.append(s)
    assert min(factors) < 0.85 and max(factors) > 1.15  # the whole range
    slow = dsp.change_speed(x, 0.5, max_samples=n + 10)
    assert slow.shape[0] == n + 10  # a slowed clip is cut at max_samples
    assert torch.allclose(slow[::2][:100], x[:100])  # half speed: every input sample, in order


def test_processor_speed_perturb_keeps_the_clip_within_max_seconds():
    audio = burst(n=SR).numpy().astype(np.float32)
    opts = {"sample_rate": SR, "n_fft": 200, "hop_length": 80, "n_mels": 32, "max_seconds": 1.0}
    clean = AudioProcessor(AudioProcessorConfig(**opts))(audio)["features"]
    p = AudioProcessor(AudioProcessorConfig(**opts, speed_perturb=0.3))
    assert torch.equal(p(audio)["features"], clean)  # evaluation: never perturbed
    p.training = True
    frames = set()
    for seed in range(20):
        torch.manual_seed(seed)
        frames.add(p(audio)["features"].shape[1])
    assert max(frames) == clean.shape[1] and min(frames) < clean.shape[1] * 0.85  # faster: shorter; slower: cut
    with pytest.raises(ValidationError):
        AudioProcessorConfig(speed_perturb=1.0)


def test_processor_caches_the_resampled_signal_of_a_file(tmp_path, monkeypatch):
    import pickle

    import soundfile as sf
    from mmcore_audio import processor as processor_module

    rate = 11025  # the processor resamples it to SR
    paths = []
    for i, freq in enumerate((300.0, 700.0)):
        t = np.arange(rate // 2) / rate
        paths.append(tmp_path / f"{i}.wav")
        sf.write(paths[-1], (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, subtype="PCM_16")
    opts = {"sample_rate": SR, "n_fft": 200, "hop_length": 80, "n_mels": 32, "max_seconds": 1.0}
    plain = AudioProcessor(AudioProcessorConfig(**opts, cache_mb=0))
    cached = AudioProcessor(AudioProcessorConfig(**opts))
    reads = []
    real_decode = processor_module.decode
    monkeypatch.setattr(processor_module, "decode", lambda v, **kw: reads.append(v) or real_decode(v, **kw))
    first = cached(str(paths[0]))["features"]
    assert torch.equal(first, plain(str(paths[0]))["features"]) and cached.cached_clips == 1
    reads.clear()
    again = cached(str(paths[0]))["features"]
    assert reads == [] and torch.equal(again, first)  # from memory, the same features
    cached.training = True  # augmentation still draws afresh on the cached signal
    cached_aug = AudioProcessor(AudioProcessorConfig(**opts, gain_db=6.0))
    cached_aug.training = True
    torch.manual_seed(0)
    a = cached_aug(str(paths[0]))["features"]
    torch.manual_seed(1)
    assert not torch.equal(cached_aug(str(paths[0]))["features"], a)
    # a file that changes is read again
    sf.write(paths[0], np.zeros(rate // 4, dtype=np.float32) + 0.1, rate, subtype="PCM_16")
    reads.clear()
    cached.training = False
    changed = cached(str(paths[0]))["features"]
    assert len(reads) == 1 and changed.shape[1] < first.shape[1]
    # least recently used out first, within cache_mb; not pickled
    one_clip = AudioProcessor(AudioProcessorConfig(**opts, cache_mb=4 * (SR // 2) / 1e6))  # 0.5 s of float32
    one_clip(str(paths[0]))
    one_clip(str(paths[1]))
    reads.clear()
    one_clip(str(paths[1]))
    assert one_clip.cached_clips == 1 and reads == []  # the older clip made room
    assert pickle.loads(pickle.dumps(one_clip)).cached_clips == 0
