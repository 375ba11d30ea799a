"""Tests of mmcore-audio: decoding and checks, resampling, log-mel features (against librosa),
SpecAugment, collate, the audio.whisper encoder, the plugin hook and a full model."""

from __future__ import annotations

import io
import json
import math
import pickle
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mmcore_audio import dsp, plugin
from mmcore_audio.config import AudioProcessorConfig, WhisperAudioConfig
from mmcore_audio.encoder import WhisperEncoder
from mmcore_audio.processor import PROCESSOR_FILE, AudioClippingWarning, AudioProcessor
from pydantic import ValidationError

import mmcore
from mmcore import Encoder, InputError, ModelDirError, Processor, Tokens

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
WHERE = "train.jsonl:7 field 'audio'"
# Features without Whisper's clamp and scaling: plain log10 mel, comparable to librosa.
PLAIN = {"normalize": "none", "dynamic_range": 0.0, "whisper_scale": False}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tone(freq: float, seconds: float, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def chirp_noise(n: int, sr: int = SR, seed: int = 0) -> np.ndarray:
    """A 100 Hz -> 6 kHz linear chirp plus white noise, float64 (deterministic)."""
    t = np.arange(n) / sr
    dur = n / sr
    phase = 2 * np.pi * (100 * t + (6000 - 100) / (2 * dur) * t**2)
    return 0.5 * np.sin(phase) + 0.05 * np.random.default_rng(seed).standard_normal(n)


def pcm16(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, -1, 32767 / 32768) * 32768).astype(np.int16)


def proc(**options) -> AudioProcessor:
    return AudioProcessor(AudioProcessorConfig(**options))


def small_encoder(**options) -> WhisperEncoder:
    if "max_frames" in options:  # keep max_seconds within the positions' capacity (10 ms per frame)
        options.setdefault("max_seconds", options["max_frames"] / 100)
    cfg = WhisperAudioConfig(**{"dim": 32, "depth": 2, "heads": 4, **options})
    return WhisperEncoder(cfg)


def spectrum_peak_hz(y: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return float(np.fft.rfftfreq(len(y), 1 / sr)[np.argmax(spec)])


def db(ratio: float) -> float:
    return 20 * math.log10(max(ratio, 1e-300))


def rms(x) -> float:
    return float(np.sqrt(np.mean(np.square(np.asarray(x, dtype=np.float64)))))


# --- plugin and options --------------------------------------------------------------------------


def test_plugin_registers_the_encoder():
    (comp,) = plugin.mmcore_register_components()
    assert comp.key == "encoder:audio.whisper" and comp.modality == "audio"
    assert comp.config is WhisperAudioConfig
    assert comp.load_factory() is WhisperEncoder and comp.load_processor() is AudioProcessor
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["mmcore"] == {"audio": "mmcore_audio.plugin"}
    assert "soundfile" in meta["project"]["dependencies"]


def test_plugin_imports_neither_torch_nor_soundfile():
    code = (
        "import sys, mmcore_audio, mmcore_audio.plugin as p, mmcore_audio.config\n"
        "p.mmcore_register_components()\n"
        "bad = [m for m in ('torch', 'soundfile', 'librosa') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_options_defaults_and_validation():
    cfg = WhisperAudioConfig()
    assert (cfg.sample_rate, cfg.n_fft, cfg.hop_length, cfg.n_mels, cfg.max_seconds) == (16000, 400, 160, 80, 30.0)
    assert (cfg.dim, cfg.depth, cfg.heads, cfg.max_frames) == (128, 2, 4, 3000)
    assert cfg.max_frames_needed == 3000  # 30 s at 16 kHz, hop 160: exactly fits
    with pytest.raises(ValidationError, match="max_frames"):
        WhisperAudioConfig(max_seconds=31)
    assert WhisperAudioConfig(max_seconds=60, max_frames=6000).max_frames == 6000
    with pytest.raises(ValidationError, match="divisible"):
        WhisperAudioConfig(dim=30, heads=4)
    with pytest.raises(ValidationError, match="f_max"):
        AudioProcessorConfig(f_max=9000)
    with pytest.raises(ValidationError, match="n_mels"):
        AudioProcessorConfig(n_fft=64, n_mels=80)
    with pytest.raises(ValidationError):
        WhisperAudioConfig(n_mel=80)  # unknown keys are errors
    for model in (AudioProcessorConfig, WhisperAudioConfig):
        for name, field in model.model_fields.items():
            assert field.description, name
    # the processor takes the encoder's options, its own, or a dict of either
    assert AudioProcessor(WhisperAudioConfig(n_mels=64)).n_mels == 64
    assert AudioProcessor({"n_mels": 40, "dim": 64}).n_mels == 40
    assert AudioProcessor(None).config == AudioProcessorConfig()


# --- files through processor -> collate -> encoder -----------------------------------------------


def test_wav_and_flac_through_processor_collate_encoder(tmp_path):
    data = pcm16(chirp_noise(int(0.5 * SR)) * 0.8)
    wav, flac = tmp_path / "a.wav", tmp_path / "b.flac"
    sf.write(wav, data, SR, subtype="PCM_16")
    sf.write(flac, np.concatenate([data, data[: int(0.3 * SR)]]), SR, subtype="PCM_16")
    p = AudioProcessor()
    a, b = p(str(wav), where=WHERE), p(flac)
    assert isinstance(p, Processor) and p.modality == "audio"
    assert set(a) == {"features"} and a["features"].dtype == torch.float32
    assert a["features"].shape == (80, 50) and b["features"].shape == (80, 80)  # ceil(N / 160)
    assert torch.isfinite(a["features"]).all()
    # same samples in both containers: same features (FLAC is lossless)
    sf.write(tmp_path / "c.flac", data, SR, subtype="PCM_16")
    assert torch.equal(p(tmp_path / "c.flac")["features"], a["features"])

    batch = p.collate([a, None, b])
    assert batch["features"].shape == (3, 80, 80)
    assert batch["frames"].tolist() == [50, 0, 80] and batch["frames"].dtype == torch.long
    assert batch["mask"].dtype == torch.bool and batch["mask"].sum(1).tolist() == [50, 0, 80]
    assert torch.equal(batch["features"][0, :, :50], a["features"]) and not batch["features"][0, :, 50:].any()
    assert not batch["features"][1].any()

    enc = small_encoder().eval()
    assert isinstance(enc, Encoder) and enc.modality == "audio" and enc.out_dim == 32
    tokens = enc(batch)
    assert isinstance(tokens, Tokens)
    assert tokens.embeds.shape == (3, 40, 32) and tokens.mask.shape == (3, 40)
    assert tokens.mask.sum(1).tolist() == [25, 0, 40]
    assert torch.isfinite(tokens.embeds).all()
    assert not tokens.embeds[~tokens.mask].any()  # padding rows are zero


def test_signal_and_log_mel_are_the_processors_own_steps(tmp_path):
    """``signal`` (decoded, resampled, normalised) then ``log_mel`` give what the processor gives
    an unaugmented clip, so a caller (bench/ablate_speech.py) can edit the signal in between."""
    path = tmp_path / "x.wav"
    sf.write(path, pcm16(chirp_noise(int(0.4 * SR)) * 0.5), SR, subtype="PCM_16")
    p = AudioProcessor()
    wave = p.signal(str(path), where=WHERE)
    assert wave.dtype == torch.float64 and wave.abs().max().item() == pytest.approx(1.0)  # peak-normalised
    assert torch.equal(p.log_mel(wave), p(str(path))["features"])
    later = p.log_mel(torch.cat([wave.new_zeros(SR // 10), wave]))  # an edit the caller makes
    assert later.shape[1] == p(str(path))["features"].shape[1] + 10
    # the options reach the features: Whisper's 80 dB clamp (8 in log10, 2 after (x + 4) / 4) holds
    # the digital silence in front up; without the clamp it falls to the power floor
    assert later.max() - later.min() == pytest.approx(2.0)
    unclamped = AudioProcessor({"dynamic_range": 0.0}).log_mel(torch.cat([wave.new_zeros(SR // 10), wave]))
    assert unclamped.max() - unclamped.min() > 2.5


def test_other_value_types_match_the_file(tmp_path):
    data = pcm16(tone(440, 0.3))
    path = tmp_path / "x.wav"
    sf.write(path, data, SR, subtype="PCM_16")
    p = AudioProcessor()
    ref = p(str(path))["features"]
    floats = data.astype(np.float32) / 32768
    for value in (
        path,  # PathLike
        path.read_bytes(),
        {"path": str(path)},
        {"bytes": path.read_bytes()},
        data,  # int16 PCM array
        floats,
        floats.tolist(),
        torch.from_numpy(floats),
        torch.from_numpy(floats).to(torch.float64).requires_grad_(),
        {"array": floats, "sample_rate": SR},
        {"array": floats, "sampling_rate": SR},  # Hugging Face datasets' key
    ):
        out = p(value, where=WHERE)["features"]
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0, msg=lambda m, v=value: f"{type(v)}: {m}")
    with pytest.raises(InputError, match="sample_rate"):
        p({"array": floats}, where=WHERE)
    with pytest.raises(InputError, match="got int"):
        p(3, where=WHERE)
    with pytest.raises(InputError, match="'array'"):
        p({"audio": "x"}, where=WHERE)
    with pytest.raises(InputError, match="1-D .* or 2-D"):
        p(np.zeros((2, 2, 100), np.float32) + 0.1, where=WHERE)
    with pytest.raises(InputError, match="complex"):
        p(np.ones(100, np.complex64), where=WHERE)


def test_stereo_and_many_channels_are_mixed_down(tmp_path):
    s = tone(500, 0.4)
    p = AudioProcessor(AudioProcessorConfig(**PLAIN))
    mono = p(s)["features"]
    # the same signal in both channels: same as mono
    sf.write(tmp_path / "st.wav", np.stack([s, s], axis=1), SR, subtype="FLOAT")
    torch.testing.assert_close(p(tmp_path / "st.wav")["features"], mono, atol=1e-6, rtol=0)
    # one channel silent: the mean is half the signal (-6 dB: log10 power drops by log10(4))
    sf.write(tmp_path / "half.wav", np.stack([s, np.zeros_like(s)], axis=1), SR, subtype="FLOAT")
    half = p(tmp_path / "half.wav")["features"]
    loud = mono > mono.max() - 3  # bins well above the floor
    torch.testing.assert_close(half[loud], mono[loud] - math.log10(4), atol=1e-4, rtol=0)
    # 8 channels
    rng = np.random.default_rng(1)
    eight = (rng.standard_normal((len(s), 8)) * 0.1).astype(np.float32)
    sf.write(tmp_path / "c8.wav", eight, SR, subtype="FLOAT")
    torch.testing.assert_close(p(tmp_path / "c8.wav")["features"], p(eight.mean(axis=1))["features"], atol=1e-5, rtol=0)
    # arrays: the shorter axis holds the channels, either way round
    torch.testing.assert_close(p(np.stack([s, s]))["features"], mono, atol=1e-6, rtol=0)
    torch.testing.assert_close(p(torch.from_numpy(np.stack([s, s], 1)))["features"], mono, atol=1e-6, rtol=0)
    # channels that cancel out are silent after mixdown
    with pytest.raises(InputError, match="silent .*mixdown"):
        p(np.stack([s, -s]), where=WHERE)


# --- resampling --------------------------------------------------------------------------------------


def test_resample_44100_to_16000_keeps_a_1khz_sine():
    x = tone(1000, 1.0, sr=44100, amp=0.5)
    y = dsp.resample(torch.from_numpy(x), 44100, 16000).numpy()
    assert y.shape == (16000,)
    assert spectrum_peak_hz(y, 16000) == pytest.approx(1000, abs=1.0)
    mid = y[1000:-1000]  # away from the edges, where the sine starts and stops abruptly
    assert rms(mid) == pytest.approx(0.5 / math.sqrt(2), rel=1e-3)  # flat passband at 1 kHz
    expected = tone(1000, 1.0, sr=16000, amp=0.5)  # sample m sits at input time m * 44100 / 16000
    assert np.abs(mid - expected[1000:-1000]).max() < 2e-3
    # through the processor, from a 44.1 kHz file
    p = AudioProcessor(AudioProcessorConfig(**PLAIN))
    feats = p({"array": x, "sample_rate": 44100})["features"]
    assert feats.shape == (80, 100)
    direct = p(tone(1000, 1.0, amp=0.5))["features"]
    fb = dsp.mel_filterbank(16000, 400, 80)
    band = int(torch.argmax(fb[:, round(1000 / 40)]))  # mel band of the 1 kHz bin
    assert int(feats[:, 10:-10].mean(1).argmax()) == band == int(direct[:, 10:-10].mean(1).argmax())


@pytest.mark.parametrize("freq", [8600.0, 9000.0, 12000.0, 20000.0])
def test_resample_does_not_alias(freq):
    """Tones above the new Nyquist (8 kHz) must be removed, not folded back into 0-8 kHz."""
    x = tone(1000, 1.0, sr=44100, amp=0.5) + tone(freq, 1.0, sr=44100, amp=0.5)
    y = dsp.resample(torch.from_numpy(x), 44100, 16000).numpy()[1000:-1000]
    residual = y - tone(1000, 1.0, amp=0.5)[1000:-1000]  # everything that is not the 1 kHz tone
    assert db(rms(residual) / (0.5 / math.sqrt(2))) < -75, "aliased energy above bound"
    alias = abs(16000 * round(freq / 16000) - freq)  # where the tone would fold to
    assert spectrum_peak_hz(y, 16000) == pytest.approx(1000, abs=1.0) and alias != 1000


def test_resample_passband_and_upsampling():
    # a 7 kHz tone (0.875 of the new Nyquist) passes within 0.1 dB
    y = dsp.resample(torch.from_numpy(tone(7000, 0.5, sr=44100)), 44100, 16000).numpy()[500:-500]
    assert abs(db(rms(y) / (0.5 / math.sqrt(2)))) < 0.1
    # 8 kHz -> 16 kHz: the sine is kept, no image above the old Nyquist
    x = tone(1000, 0.5, sr=8000)
    up = dsp.resample(torch.from_numpy(x), 8000, 16000).numpy()
    assert up.shape == (8000,)
    torch.testing.assert_close(
        torch.from_numpy(up[400:-400]), torch.from_numpy(tone(1000, 0.5)[400:-400]), atol=1e-3, rtol=0
    )
    spec = np.abs(np.fft.rfft(up[400:-400] * np.hanning(len(up) - 800)))
    freqs = np.fft.rfftfreq(len(up) - 800, 1 / 16000)
    assert db(spec[freqs > 4200].max() / spec.max()) < -80


def test_resample_methods_agree_and_handle_awkward_ratios():
    x = torch.from_numpy(chirp_noise(22050, sr=44100).astype(np.float32))
    a = dsp.resample(x, 44100, 16000, method="polyphase")
    b = dsp.resample(x, 44100, 16000, method="direct")
    assert a.shape == b.shape == (dsp.resampled_length(22050, 44100, 16000),)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # 44101 and 16000 are coprime: a polyphase bank would have 16000 phases x 44289 taps
    y = dsp.resample(torch.from_numpy(tone(1000, 0.5, sr=44101)), 44101, 16000).numpy()
    assert y.shape == (8000,) and spectrum_peak_hz(y, 16000) == pytest.approx(1000, abs=2.0)
    assert dsp.resample(x, 16000, 16000) is x


def test_resample_direct_without_a_phase_table(monkeypatch):
    x = torch.from_numpy(chirp_noise(4410, sr=44100).astype(np.float32))
    ref = dsp.resample(x, 44100, 16000, method="polyphase")
    monkeypatch.setattr(dsp, "MAX_POLYPHASE_ELEMENTS", 0)  # too many phases: taps computed per output
    torch.testing.assert_close(dsp.resample(x, 44100, 16000), ref, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="1-D"):
        dsp.resample(x[None], 44100, 16000)


# --- durations -----------------------------------------------------------------------------------


def _flac_declaring(path: Path, total_samples: int) -> None:
    """Patch a FLAC file's STREAMINFO total-samples field (36 bits) to ``total_samples``."""
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # first metadata block: STREAMINFO
    start = 8 + 10  # the 8 bytes holding sample rate (20 bits), channels, bps and total samples (36 bits)
    v = int.from_bytes(data[start : start + 8], "big")
    v = (v & ~((1 << 36) - 1)) | total_samples
    data[start : start + 8] = v.to_bytes(8, "big")
    path.write_bytes(bytes(data))


def test_max_seconds_is_checked_from_the_header_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "ten_hours.flac"
    sf.write(path, pcm16(tone(440, 0.2)), SR, subtype="PCM_16")
    _flac_declaring(path, SR * 3600 * 10)
    assert sf.info(str(path)).frames == SR * 3600 * 10  # the header claims 10 hours

    def no_decoding(*args, **kwargs):
        raise AssertionError("samples were decoded")

    monkeypatch.setattr(sf.SoundFile, "read", no_decoding)
    monkeypatch.setattr(sf.SoundFile, "blocks", no_decoding)
    monkeypatch.setattr(sf.SoundFile, "buffer_read", no_decoding)
    with pytest.raises(InputError) as err:
        AudioProcessor()(str(path), where=WHERE)
    msg = str(err.value)
    assert WHERE in msg and "ten_hours.flac" in msg and "36000.00 s" in msg and "max_seconds = 30" in msg
    with pytest.raises(InputError, match="max_seconds"):
        AudioProcessor()(path.read_bytes(), where=WHERE)  # bytes too


def test_max_seconds_for_real_files_and_arrays(tmp_path):
    p = proc(max_seconds=0.25)
    sf.write(tmp_path / "long.wav", tone(440, 0.5), SR)
    with pytest.raises(InputError, match=r"long\.wav.*0\.50 s.*max_seconds = 0\.25"):
        p(tmp_path / "long.wav", where=WHERE)
    with pytest.raises(InputError, match="max_seconds"):
        p(tone(440, 0.3), where=WHERE)
    with pytest.raises(InputError, match="max_seconds"):  # duration counts at the source rate
        p({"array": tone(440, 0.3, sr=8000), "sample_rate": 8000}, where=WHERE)
    assert p(tone(440, 0.25))["features"].shape == (80, 25)


def test_max_tokens_is_the_longest_clip_and_is_checked_against_the_context():
    p = proc(max_seconds=0.25)
    enc = WhisperEncoder(WhisperAudioConfig(max_seconds=0.25, dim=32, depth=1, heads=2)).eval()
    longest = enc(p.collate([p(tone(440, 0.25))]))
    assert longest.embeds.shape[1] == enc.max_tokens == 13  # 25 frames -> ceil(25 / 2) tokens
    spec = {
        "spec_version": 1,
        "name": "a",
        "backbone": {"width": 32, "depth": 1, "heads": 2, "context_length": 20},
        "encoders": {
            "audio": {"component": "audio.whisper", "max_seconds": 0.25, "dim": 32, "depth": 1, "heads": 2},
            "text": {"component": "text.bytes", "max_length": 8},
        },
        "heads": {"lm": {"component": "lm"}},
    }
    with pytest.raises(mmcore.SpecError, match="context_length"):
        mmcore.build(spec)
    mmcore.build({**spec, "backbone": {**spec["backbone"], "context_length": 40}})


# --- level checks ----------------------------------------------------------------------------------


def test_silent_and_empty_input():
    with pytest.raises(InputError, match=f"{WHERE}.*silent.*allow_silence"):
        AudioProcessor()(np.zeros(SR, np.float32), where=WHERE)
    quiet = proc(allow_silence=True)(np.zeros(SR, np.float32))["features"]
    assert quiet.shape == (80, 100) and torch.isfinite(quiet).all()
    assert torch.equal(proc(allow_silence=True, **PLAIN)(np.zeros(1600))["features"], torch.full((80, 10), -10.0))
    for empty in (np.zeros(0, np.float32), [], torch.zeros(0), np.zeros((2, 0))):
        with pytest.raises(InputError, match=f"{WHERE}.*empty"):
            AudioProcessor()(empty, where=WHERE)


def test_nan_and_inf_are_rejected(tmp_path):
    x = tone(440, 0.2)
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[123] = bad
        with pytest.raises(InputError, match=f"{WHERE}.*NaN or infinite.*frame 123"):
            AudioProcessor()(y, where=WHERE)
    y = np.stack([x, x], 1)
    y[77, 1] = np.nan
    sf.write(tmp_path / "nan.wav", y, SR, subtype="FLOAT")
    with pytest.raises(InputError, match=r"nan\.wav.*NaN or infinite.*frame 77"):
        AudioProcessor()(tmp_path / "nan.wav", where=WHERE)


def test_clipped_input_warns_or_is_rejected():
    clipped = np.clip(tone(300, 0.5, amp=3.0), -1.0, 1.0)  # most samples stuck at +-1
    with pytest.warns(AudioClippingWarning, match=rf"{WHERE}.*clipped: \d+\.\d% of its samples") as rec:
        out = AudioProcessor()(clipped, where=WHERE)
    assert len(rec) == 1 and torch.isfinite(out["features"]).all()
    with pytest.raises(InputError, match=f"{WHERE}.*clipped.*reject_clipped"):
        proc(reject_clipped=True)(clipped, where=WHERE)
    # int16 clipping (32767 / -32768) counts too
    with pytest.warns(AudioClippingWarning):
        AudioProcessor()(pcm16(clipped), where=WHERE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # a full-scale tone touches +-1 at isolated samples only: not clipped
        AudioProcessor()(tone(1000, 0.5, amp=1.0), where=WHERE)
        # a little clipping, under clip_fraction, is tolerated
        few = tone(300, 0.5)
        few[1000:1020] = 1.0
        AudioProcessor()(few, where=WHERE)
    with pytest.warns(AudioClippingWarning):
        proc(clip_fraction=0.001)(few, where=WHERE)


# --- broken files -----------------------------------------------------------------------------------


def test_broken_files_raise_input_errors_naming_the_file(tmp_path):
    good_wav, good_flac = io.BytesIO(), io.BytesIO()
    sf.write(good_wav, pcm16(tone(440, 0.5)), SR, format="WAV", subtype="PCM_16")
    sf.write(good_flac, pcm16(chirp_noise(SR // 2)), SR, format="FLAC", subtype="PCM_16")
    wav, flac = good_wav.getvalue(), good_flac.getvalue()
    empty_wav = io.BytesIO()
    sf.write(empty_wav, np.zeros(0, np.float32), SR, format="WAV")
    cases = {
        "zero_length.wav": (b"", "empty"),
        "notes.wav": (b"this is not audio, just text\n" * 20, "cannot read"),
        "image.flac": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "cannot read"),
        "header_only.wav": (wav[:30], "cannot read"),
        "truncated.wav": (wav[: len(wav) // 2], "truncated"),
        "truncated.flac": (flac[: len(flac) // 2], "truncated"),
        "no_samples.wav": (empty_wav.getvalue(), "no samples"),
    }
    p = AudioProcessor()
    for name, (content, reason) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(InputError) as err:
            p(str(path), where=WHERE)
        msg = str(err.value)
        assert WHERE in msg and name in msg and reason in msg, msg
        assert type(err.value) is InputError
    with pytest.raises(InputError, match=r"missing\.wav.*does not exist"):
        p(str(tmp_path / "missing.wav"), where=WHERE)
    with pytest.raises(InputError, match="is a directory"):
        p(str(tmp_path), where=WHERE)
    with pytest.raises(InputError, match=f"{WHERE}.*audio bytes.*truncated"):
        p(wav[: len(wav) // 2], where=WHERE)
    # a WAV streamed with an unknown length (size fields 0xFFFFFFFF) is fine
    streamed = bytearray(wav)
    i = streamed.find(b"data")
    streamed[i + 4 : i + 8] = b"\xff\xff\xff\xff"
    streamed[4:8] = b"\xff\xff\xff\xff"
    assert torch.equal(p(bytes(streamed))["features"], p(wav)["features"])
    # the extension does not matter, the content does
    (tmp_path / "really_flac.wav").write_bytes(flac)
    assert p(tmp_path / "really_flac.wav")["features"].shape == (80, 50)


# --- features against librosa ----------------------------------------------------------------------


@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
@pytest.mark.parametrize("n", [2 * SR + 123, 2 * SR])  # not / a multiple of hop_length
def test_log_mel_matches_librosa(pad_mode, n):
    """Reference test. Relative error is measured elementwise on the mel *power* before the
    log, ``max |ours - librosa| / |librosa|`` over every (band, frame), which also covers the
    quietest bins; and on the log10 features as ``max |ours - ref| / max |ref|``."""
    import librosa  # test-only reference (the plugin's test extra); never skipped

    y = chirp_noise(n)  # float64
    ref = librosa.feature.melspectrogram(
        y=y, sr=SR, n_fft=400, hop_length=160, n_mels=80, power=2.0, center=True, pad_mode=pad_mode
    )
    assert ref.shape[1] == 1 + n // 160
    ours = dsp.mel_power(torch.from_numpy(y), SR, n_fft=400, hop_length=160, n_mels=80, pad_mode=pad_mode).numpy()
    t = math.ceil(n / 160)  # the trailing frame centred past the end is dropped when n % 160 == 0
    assert ours.shape == (80, t)
    ref = ref[:, :t]
    elementwise = np.max(np.abs(ours - ref) / np.abs(ref))
    assert elementwise < 1e-4, elementwise
    # the processor's float32 log-mel features (no clamp, no scaling) against log10(max(ref, 1e-10))
    feats = AudioProcessor(AudioProcessorConfig(pad_mode=pad_mode, **PLAIN))(y)["features"].numpy()
    ref_log = np.log10(np.maximum(ref, 1e-10))
    assert np.max(np.abs(feats - ref_log)) / np.max(np.abs(ref_log)) < 1e-4
    # the filterbank itself (librosa's default dtype is float32; ask for float64)
    fb = librosa.filters.mel(sr=SR, n_fft=400, n_mels=80, dtype=np.float64)
    np.testing.assert_allclose(dsp.mel_filterbank(SR, 400, 80).numpy(), fb, rtol=1e-9, atol=1e-12)


def test_whisper_clamp_and_scale():
    y = chirp_noise(SR)
    plain = AudioProcessor(AudioProcessorConfig(**PLAIN))(y)["features"]
    whisper = proc(normalize="none")(y)["features"]
    expected = (torch.maximum(plain, plain.max() - 8.0) + 4.0) / 4.0
    torch.testing.assert_close(whisper, expected, atol=1e-6, rtol=0)
    assert whisper.max() - whisper.min() <= 2.0 + 1e-6  # 8 log10 units / 4


def test_normalisation():
    x = tone(440, 0.5, amp=0.1)
    peak = AudioProcessor(AudioProcessorConfig(**{**PLAIN, "normalize": "peak"}))
    none = AudioProcessor(AudioProcessorConfig(**PLAIN))
    rmsp = AudioProcessor(AudioProcessorConfig(**{**PLAIN, "normalize": "rms", "rms_level": 0.1}))
    # power scales with amplitude squared: +20 dB (x10) is +2 in log10
    loud = peak(x)["features"] > -5
    torch.testing.assert_close(peak(x)["features"][loud], none(x)["features"][loud] + 2.0, atol=1e-3, rtol=0)
    assert rms(peak.waveform(_decoded(x))) == pytest.approx(1 / math.sqrt(2), rel=1e-3)
    assert rms(rmsp.waveform(_decoded(x))) == pytest.approx(0.1, rel=1e-6)
    torch.testing.assert_close(peak(x)["features"], peak(x * 7)["features"], atol=1e-4, rtol=0)


def _decoded(x):
    from mmcore_audio.decode import decode

    return decode(x, sample_rate=SR, max_seconds=30, where="")


# --- SpecAugment ------------------------------------------------------------------------------------


def test_spec_augment_only_in_training():
    x = chirp_noise(SR)
    plain = AudioProcessor()(x)["features"]
    p = proc(spec_augment=True, freq_masks=2, freq_mask_width=20, time_masks=2, time_mask_width=30)
    assert p.training is False
    assert torch.equal(p(x)["features"], plain)  # evaluation: never augmented
    p.training = True
    torch.manual_seed(1)
    aug = p(x)["features"]
    assert aug.shape == plain.shape and not torch.equal(aug, plain)
    changed = aug != plain
    fill = plain.mean()
    assert torch.all(aug[changed] == fill)  # masked values are the clip's mean
    rows, cols = changed.all(1), changed.all(0)  # fully masked bands / frames
    assert rows.any() or cols.any()
    assert torch.equal(changed, rows[:, None] | cols[None, :])  # masks are whole bands and whole frames
    assert 0 < rows.sum() <= 40 and cols.sum() <= 2 * min(30, int(0.2 * 100))
    torch.manual_seed(1)
    assert torch.equal(p(x)["features"], aug)  # reproducible from torch's seed
    off = AudioProcessor()
    off.training = True
    assert torch.equal(off(x)["features"], plain)  # spec_augment = false: never augmented


# --- collate, pickling, files ----------------------------------------------------------------------


def test_collate_edge_cases():
    p = AudioProcessor()
    out = p.collate([None, None])
    assert out["features"].shape == (2, 80, 1) and not out["mask"].any() and out["frames"].tolist() == [0, 0]
    with pytest.raises(InputError, match="sample 1"):
        p.collate([{"features": torch.zeros(80, 3)}, {"features": torch.zeros(64, 3)}])
    with pytest.raises(InputError, match="sample 0"):
        p.collate([{"ids": torch.zeros(3)}])


def test_pickle_save_and_load(tmp_path):
    p = proc(n_mels=64, max_seconds=10, normalize="rms")
    q = pickle.loads(pickle.dumps(p))
    x = chirp_noise(4000)
    assert torch.equal(q(x)["features"], p(x)["features"]) and q.options == p.options
    assert p.save(tmp_path) == [PROCESSOR_FILE]
    saved = json.loads((tmp_path / PROCESSOR_FILE).read_text())
    assert saved["options"]["n_mels"] == 64 and saved["options"]["normalize"] == "rms"
    r = AudioProcessor()
    r.load(tmp_path)
    assert r.options == p.options and torch.equal(r(x)["features"], p(x)["features"])
    saved["kind"] = "something.else"
    (tmp_path / PROCESSOR_FILE).write_text(json.dumps(saved))
    with pytest.raises(ModelDirError, match="kind"):
        r.load(tmp_path)
    saved["kind"], saved["options"]["n_mels"] = "mmcore_audio.logmel", -1
    (tmp_path / PROCESSOR_FILE).write_text(json.dumps(saved))
    with pytest.raises(ModelDirError, match="invalid options"):
        r.load(tmp_path)
    with pytest.raises(ModelDirError, match="missing"):
        r.load(tmp_path / "nowhere")
    assert "AudioProcessor(sample_rate=16000" in repr(p)


# --- the encoder ------------------------------------------------------------------------------------


_TINY: list[WhisperEncoder] = []


@settings(max_examples=20, deadline=None, database=None)
@given(st.lists(st.integers(0, 21), min_size=1, max_size=4))
def test_encoder_token_mask_follows_frames(lengths):
    if not _TINY:
        _TINY.append(small_encoder(dim=8, heads=2, depth=1).eval())
    enc = _TINY[0]
    p = AudioProcessor()
    samples = [None if n == 0 else {"features": torch.randn(80, n)} for n in lengths]
    batch = p.collate(samples)
    tokens = enc(batch)
    t = max([1, *lengths])
    assert tokens.embeds.shape == (len(lengths), math.ceil(t / 2), 8)
    assert tokens.mask.sum(1).tolist() == [math.ceil(n / 2) for n in lengths]
    assert torch.isfinite(tokens.embeds).all() and not tokens.embeds[~tokens.mask].any()
    # the mask can come from frames alone
    no_mask = {"features": batch["features"], "frames": batch["frames"]}
    assert torch.equal(enc(no_mask).mask, tokens.mask)


@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_padding_does_not_change_real_tokens(positions):
    enc = small_encoder(positions=positions, max_frames=64).eval()
    p = AudioProcessor()
    feats = [torch.randn(80, n) for n in (13, 40, 1, 26)]
    batch = enc(p.collate([{"features": f} for f in feats] + [None]))
    for i, f in enumerate(feats):
        alone = enc(p.collate([{"features": f}]))
        n = alone.mask.sum()
        assert alone.embeds.shape[1] == n == batch.mask[i].sum()
        torch.testing.assert_close(batch.embeds[i, :n], alone.embeds[0], atol=1e-5, rtol=0)
    # garbage in the padding makes no difference either
    collated = p.collate([{"features": f} for f in feats])
    noisy = dict(collated, features=torch.where(collated["mask"][:, None], collated["features"], 1e3))
    torch.testing.assert_close(enc(noisy).embeds, enc(collated).embeds, atol=1e-5, rtol=0)


@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_gradients_reach_every_parameter(positions):
    enc = small_encoder(positions=positions, max_frames=64, dropout=0.1).train()
    p = AudioProcessor()
    batch = p.collate([{"features": torch.randn(80, 30)}, None, {"features": torch.randn(80, 17)}])
    tokens = enc(batch)
    (tokens.embeds[tokens.mask] ** 2).mean().backward()
    for name, param in enc.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
        assert torch.isfinite(param.grad).all(), name


def test_encoder_rejects_bad_inputs():
    enc = small_encoder(max_frames=10, max_seconds=0.1)
    with pytest.raises(InputError, match="max_frames = 10"):
        enc({"features": torch.zeros(1, 80, 11)})
    with pytest.raises(InputError, match=r"\(B, 80, T\)"):
        enc({"features": torch.zeros(1, 64, 10)})
    with pytest.raises(InputError, match="mask"):
        enc({"features": torch.zeros(2, 80, 10), "mask": torch.ones(2, 9, dtype=torch.bool)})


def test_meta_device_build_and_assign_load():
    enc = small_encoder(positions="learned", max_frames=64).eval()
    with torch.device("meta"):
        ghost = small_encoder(positions="learned", max_frames=64)
    assert not list(ghost.buffers())  # nothing to recompute after loading
    ghost.load_state_dict(enc.state_dict(), assign=True)
    ghost.eval()
    batch = AudioProcessor().collate([{"features": torch.randn(80, 9)}])
    torch.testing.assert_close(ghost(batch).embeds, enc(batch).embeds)


# --- a whole model ---------------------------------------------------------------------------------


def test_build_preprocess_forward_backward_save_load(tmp_path):
    wav = tmp_path / "hello.wav"
    # 11200 samples at 22050 Hz: resampled to 16 kHz on the way
    sf.write(wav, pcm16(chirp_noise(int(0.7 * SR), seed=3) * 0.5), 22050, subtype="PCM_16")
    spec = {
        "spec_version": 1,
        "name": "audio-lm",
        "backbone": {"width": 64, "depth": 2, "heads": 4, "context_length": 128},
        "encoders": {
            # 1 s clips: at most 50 audio tokens, which with 64 text tokens fit the context
            "audio": {"component": "audio.whisper", "dim": 32, "depth": 1, "heads": 2, "max_seconds": 1.0},
            "text": {"component": "text.bytes", "max_length": 64},
        },
        "heads": {"lm": {"component": "lm"}},
    }
    model = mmcore.build(spec)
    assert isinstance(model.processors["audio"], AudioProcessor)
    assert "audio" in model.projectors  # dim 32 != width 64
    batch = model.preprocess([{"audio": str(wav), "text": "hello"}, {"text": "no audio"}])
    audio = batch.inputs["audio"]
    frames = dsp.num_frames(dsp.resampled_length(int(0.7 * SR), 22050, SR), 160)  # 51: 0.51 s at 16 kHz
    assert audio["frames"].tolist() == [frames, 0] and audio["mask"][1].sum() == 0
    out = model(batch)
    assert out.loss is not None and torch.isfinite(out.loss)
    out.loss.backward()
    enc = model.encoders["audio"]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())
    # a batch without any audio still works (the input is absent)
    model(model.preprocess([{"text": "only text"}]))
    # save and load: the processor's options travel with the model
    model.eval()
    mmcore.save(model, tmp_path / "model")
    again = mmcore.load(tmp_path / "model")
    assert again.processors["audio"].options == model.processors["audio"].options
    b2 = again.preprocess([{"audio": str(wav), "text": "hello"}])
    torch.testing.assert_close(again(b2).loss, model(model.preprocess([{"audio": str(wav), "text": "hello"}])).loss)
