"""ser_core.augment: seeded, side-effect-free waveform augmentation that stays finite and in range,
and whose transforms each do what they claim (speed, pitch, room, noise, band, gain)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ser_core.augment import AugmentConfig, augment_waveform
from ser_core.train_data import copy_seed

SR = 16000
REPO = Path(__file__).resolve().parent.parent

# Every transform off (gain fixed at 0 dB): the starting point for "one transform alone".
OFF = dict(p_noise=0.0, p_reverb=0.0, p_band=0.0, p_speed=0.0, p_pitch=0.0, gain_db=(0.0, 0.0))
ALL_ON = AugmentConfig(p_noise=1.0, p_reverb=1.0, p_band=1.0, p_speed=1.0, p_pitch=1.0)


def voice(seconds: float = 1.0, f0: float = 150.0, seed: int = 0, level: float = 0.3) -> np.ndarray:
    """A gliding harmonic tone (a crude voiced vowel) with a little noise, float32."""
    t = np.arange(int(seconds * SR)) / SR
    freq = f0 * (1.0 + 0.3 * t / max(seconds, 1e-9))  # rising pitch, so shifts in time show
    phase = 2 * np.pi * np.cumsum(freq) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 9))
    x = level * x / np.max(np.abs(x))
    x += 0.002 * np.random.default_rng(seed).standard_normal(t.size)
    return x.astype(np.float32)


def tone(freq: float, seconds: float = 1.0, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_freq(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / SR)[np.argmax(spec)])


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.asarray(x, dtype=np.float64) ** 2)))


def check_safe(y: np.ndarray) -> None:
    assert isinstance(y, np.ndarray) and y.ndim == 1
    assert y.dtype == np.float32
    assert np.all(np.isfinite(y))
    assert y.size == 0 or float(np.max(np.abs(y))) <= 1.0


# -- determinism ---------------------------------------------------------------------------


@pytest.mark.parametrize("config", [AugmentConfig(), ALL_ON], ids=["default", "all_on"])
def test_same_seed_gives_identical_output(config):
    x = voice()
    a = augment_waveform(x, 123, config)
    # Disturb the global generators in between: the result must not depend on them.
    random.seed(999)
    np.random.seed(999)
    np.random.standard_normal(17)
    b = augment_waveform(x.copy(), 123, config)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.array_equal(a, b)


def test_different_seeds_give_different_outputs():
    x = voice()
    outs = [augment_waveform(x, s, ALL_ON) for s in range(6)]
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            a, b = outs[i], outs[j]
            assert a.shape != b.shape or not np.allclose(a, b), (i, j)


def test_input_array_is_not_modified():
    x = voice()
    before = x.copy()
    augment_waveform(x, 5, ALL_ON)
    assert np.array_equal(x, before)


def test_global_random_states_are_left_unchanged():
    random.seed(42)
    np.random.seed(42)
    py_before = random.getstate()
    np_before = np.random.get_state()
    augment_waveform(voice(), 7, ALL_ON)
    augment_waveform(voice(), 8, AugmentConfig())
    assert random.getstate() == py_before
    np_after = np.random.get_state()
    assert np_after[0] == np_before[0]
    assert np.array_equal(np_after[1], np_before[1])
    assert np_after[2:] == np_before[2:]
    # ... and the caller's next draws are the ones it would have had anyway.
    a = (random.random(), np.random.random())
    random.seed(42)
    np.random.seed(42)
    assert (random.random(), np.random.random()) == a


def test_global_states_restored_even_when_the_chain_fails(monkeypatch):
    import ser_core.augment as augment

    def broken_chain(config, sample_rate):
        def run(samples, sample_rate):
            random.random()
            np.random.random(3)
            raise RuntimeError("boom")

        return run

    monkeypatch.setattr(augment, "_chain", broken_chain)
    random.seed(1)
    np.random.seed(1)
    py_before = random.getstate()
    np_before = np.random.get_state()[1].copy()
    with pytest.raises(RuntimeError, match="boom"):
        augment.augment_waveform(voice(), 0, ALL_ON)
    assert random.getstate() == py_before
    assert np.array_equal(np.random.get_state()[1], np_before)


# -- output contract -----------------------------------------------------------------------


def test_all_transforms_on_changes_the_waveform():
    x = voice()
    cfg = AugmentConfig(**{**OFF, "p_noise": 1, "p_reverb": 1, "p_band": 1, "p_speed": 1, "p_pitch": 1})
    for seed in range(3):
        y = augment_waveform(x, seed, cfg)
        assert y.shape != x.shape or not np.allclose(y, x, atol=1e-4)


@pytest.mark.parametrize("seed", range(8))
def test_output_is_safe_and_length_follows_speed(seed):
    # A loud input plus up to +6 dB gain: the peak guard must scale it back to <= 1.
    x = voice(level=0.99, seed=seed)
    cfg = ALL_ON
    y = augment_waveform(x, seed, cfg)
    check_safe(y)
    ratio = y.size / x.size
    lo, hi = 1 / cfg.speed[1], 1 / cfg.speed[0]  # 0.909 .. 1.111: within ±11 %
    assert lo - 0.002 <= ratio <= hi + 0.002
    assert rms(y) > 0.01  # not scaled into nothing


def test_no_speed_change_keeps_the_length():
    x = voice()
    cfg = AugmentConfig(p_noise=1, p_reverb=1, p_band=1, p_speed=0, p_pitch=1)
    for seed in range(3):
        assert augment_waveform(x, seed, cfg).size == x.size


def test_peak_is_scaled_not_clipped():
    x = voice(level=0.95)
    cfg = AugmentConfig(**{**OFF, "gain_db": (6.0, 6.0)})
    y = augment_waveform(x, 0, cfg)
    check_safe(y)
    assert np.isclose(np.max(np.abs(y)), 1.0, atol=1e-6)
    # Scaling keeps the shape of the waveform (clipping would flatten the peaks).
    assert np.allclose(y, x / np.max(np.abs(x)), atol=1e-5)


@pytest.mark.parametrize("config", [AugmentConfig(), ALL_ON], ids=["default", "all_on"])
def test_silent_input_stays_finite_and_silent(config):
    for seed in range(4):
        y = augment_waveform(np.zeros(SR, np.float32), seed, config)
        check_safe(y)
        assert float(np.max(np.abs(y))) == 0.0  # noise is relative to the signal level


def test_nan_and_inf_never_reach_the_output():
    x = voice()
    x[100] = np.nan
    x[200] = np.inf
    x[300] = -np.inf
    for seed in range(3):
        check_safe(augment_waveform(x, seed, ALL_ON))
        check_safe(augment_waveform(x, seed, AugmentConfig()))


@pytest.mark.parametrize("n", [0, 1, 2, 50, 400])
def test_very_short_inputs(n):
    x = (0.1 * np.ones(n)).astype(np.float32)
    y = augment_waveform(x, 0, ALL_ON)
    check_safe(y)
    assert (y.size == 0) == (n == 0)


def test_input_types_and_shapes():
    x = voice()
    ref = augment_waveform(x, 3, ALL_ON)
    assert np.array_equal(augment_waveform(x.astype(np.float64), 3, ALL_ON), ref)
    assert np.array_equal(augment_waveform(x[np.newaxis, :], 3, ALL_ON), ref)
    with pytest.raises(ValueError):
        augment_waveform(np.zeros((2, 100), np.float32), 0)
    with pytest.raises(TypeError):
        augment_waveform(x, 0, {"p_noise": 1.0})


# -- each transform alone -------------------------------------------------------------------


@pytest.mark.parametrize(
    "override",
    [
        {"p_noise": 1.0},
        {"p_reverb": 1.0},
        {"p_band": 1.0},
        {"p_speed": 1.0},
        {"p_pitch": 1.0},
        {"gain_db": (-6.0, 6.0)},
    ],
    ids=["noise", "reverb", "band", "speed", "pitch", "gain"],
)
def test_each_transform_alone_changes_the_signal(override):
    x = voice()
    cfg = AugmentConfig(**{**OFF, **override})
    for seed in range(3):
        y = augment_waveform(x, seed, cfg)
        check_safe(y)
        changed = y.shape != x.shape or not np.allclose(y, x, atol=1e-4)
        assert changed, (override, seed)


def test_everything_off_is_the_identity():
    x = voice()
    y = augment_waveform(x, 0, AugmentConfig(**OFF))
    assert np.array_equal(y, x)


def test_speed_changes_tempo_and_pitch_together():
    x = tone(200.0)
    y = augment_waveform(x, 0, AugmentConfig(**{**OFF, "p_speed": 1.0, "speed": (1.1, 1.1)}))
    assert abs(y.size - x.size / 1.1) <= 2
    assert abs(dominant_freq(y) - 220.0) < 3.0
    y = augment_waveform(x, 0, AugmentConfig(**{**OFF, "p_speed": 1.0, "speed": (0.9, 0.9)}))
    assert abs(y.size - x.size / 0.9) <= 2
    assert abs(dominant_freq(y) - 180.0) < 3.0


def test_pitch_shift_keeps_the_length():
    x = tone(200.0)
    y = augment_waveform(x, 0, AugmentConfig(**{**OFF, "p_pitch": 1.0, "semitones": (2.0, 2.0)}))
    assert y.size == x.size
    assert abs(dominant_freq(y) - 200.0 * 2 ** (2 / 12)) < 3.0


def test_reverb_adds_a_decaying_tail():
    # A 0.3 s burst followed by silence: the room must ring on into the silence.
    x = np.zeros(SR, np.float32)
    x[: int(0.3 * SR)] = voice(0.3)
    cfg = AugmentConfig(**{**OFF, "p_reverb": 1.0})
    for seed in range(3):
        y = augment_waveform(x, seed, cfg)
        assert y.size == x.size
        tail = y[int(0.31 * SR) : int(0.5 * SR)]
        assert rms(tail) > 1e-3
        # ... and decays: the end of the clip is quieter than just after the burst.
        assert rms(y[-int(0.1 * SR) :]) < rms(tail)
        # the RMS of the whole clip is kept (a room is not a volume knob)
        assert np.isclose(rms(y), rms(x), rtol=1e-3)


def test_noise_follows_the_snr():
    x = voice(seconds=2.0)
    cfg = AugmentConfig(**{**OFF, "p_noise": 1.0, "snr_db": (10.0, 10.0)})
    for seed in range(3):
        y = augment_waveform(x, seed, cfg)
        snr = 20 * np.log10(rms(x) / rms(y - x))
        assert 9.0 < snr < 11.0, snr


def test_band_limiting_cuts_lows_and_highs_keeps_speech_band():
    cfg = AugmentConfig(**{**OFF, "p_band": 1.0})
    high_ratios = []
    for seed in range(8):  # both the phone and the laptop-mic variants get drawn
        mid = rms(augment_waveform(tone(1000.0), seed, cfg)[SR // 4 :])
        low = rms(augment_waveform(tone(30.0), seed, cfg)[SR // 4 :])
        high = rms(augment_waveform(tone(7900.0), seed, cfg)[SR // 4 :])
        assert mid > 0.05  # 1 kHz passes (0.21 in; the laptop EQ may move it by up to 8 dB)
        assert low < 0.2 * mid  # every variant has a high-pass
        high_ratios.append(high / mid)
    # every variant has a low-pass; the phone band cuts 7.9 kHz by far more than the laptop mic
    assert max(high_ratios) < 1.0
    assert min(high_ratios) < 0.05


def test_gain_range_is_in_decibels():
    x = voice(level=0.2)
    y = augment_waveform(x, 0, AugmentConfig(**{**OFF, "gain_db": (-6.0, -6.0)}))
    assert np.isclose(rms(y) / rms(x), 10 ** (-6 / 20), rtol=1e-4)


# -- copies and seeds ------------------------------------------------------------------------


def test_copy_seed_is_hashlib_based_and_fixed():
    # the trainer's (ser_core.train_data): sha256 of "seed|utterance id|copy", first 4 bytes, 31 bits;
    # the same in every process, so a rerun finds the cached features of the same waveforms
    assert copy_seed(0, "ravdess/03-01-05-01-01-01-12", 0) == 15113314
    assert copy_seed(7, "utt", 2) == 978270803
    assert copy_seed(0, "a", 0) != copy_seed(0, "a", 1) != copy_seed(1, "a", 1)
    assert copy_seed(0, "a", 0) != copy_seed(0, "b", 0)


def test_augmented_copies_are_distinct_and_independent_of_count(tmp_path):
    from ser_core.data.base import Utterance
    from ser_core.train_data import utterance_audio, with_augmented_copies

    import soundfile as sf

    from ser_core.audio import load_audio

    x = voice()
    sf.write(tmp_path / "utt7.wav", x, 16000, subtype="FLOAT")
    x = load_audio(tmp_path / "utt7.wav")
    utt = Utterance(id="spk1/utt7", audio=tmp_path / "utt7.wav", label="ang", speaker="spk1", transcript="",
                    session="s1")
    three = with_augmented_copies([utt], 3, seed=11)
    five = with_augmented_copies([utt], 5, seed=11)
    assert [u.id for u in five] == ["spk1/utt7"] + [f"spk1/utt7#aug{i}" for i in range(5)]
    assert [u.meta for u in three[1:]] == [u.meta for u in five[1:4]]  # copy i: the same seed
    waves = [utterance_audio(u) for u in five]
    assert np.array_equal(waves[0], x)  # the original is not augmented
    for i in range(1, 6):
        check_safe(waves[i])
        assert np.array_equal(waves[i], augment_waveform(x, copy_seed(11, "spk1/utt7", i - 1)))
        for j in range(i + 1, 6):
            assert waves[i].shape != waves[j].shape or not np.allclose(waves[i], waves[j])
    assert with_augmented_copies([utt], 0, seed=11) == [utt]
    assert with_augmented_copies([utt], 2, seed=11, corpora=["tess"]) == [utt]  # not one of the corpora named


_CHILD = """
import hashlib, json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from tests.test_augment import ALL_ON, voice
from ser_core.augment import augment_waveform
from ser_core.train_data import copy_seed
copies = [augment_waveform(voice(), copy_seed(11, "spk1/utt7", i), ALL_ON) for i in range(3)]
print(json.dumps({
    "seeds": [copy_seed(11, "spk1/utt7", i) for i in range(3)],
    "digests": [hashlib.sha256(c.tobytes()).hexdigest() for c in copies],
}))
"""


def test_augmented_copies_are_stable_across_processes():
    import hashlib

    here = {
        "seeds": [copy_seed(11, "spk1/utt7", i) for i in range(3)],
        "digests": [
            hashlib.sha256(c.tobytes()).hexdigest()
            for c in (augment_waveform(voice(), copy_seed(11, "spk1/utt7", i), ALL_ON) for i in range(3))
        ],
    }
    # A different hash salt in the child: Python's hash() would differ, ours must not.
    env = {**os.environ, "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(REPO)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == here


# -- config ----------------------------------------------------------------------------------


def test_config_round_trips_through_json():
    cfg = AugmentConfig(gain_db=(-3, 3), snr_db=(10, 20), p_noise=0.25, speed=(0.95, 1.05), semitones=(-1, 1))
    d = cfg.to_dict()
    assert AugmentConfig.from_dict(json.loads(json.dumps(d))) == cfg
    assert d["gain_db"] == [-3.0, 3.0] and d["p_noise"] == 0.25
    assert AugmentConfig.from_dict({}) == AugmentConfig()
    assert AugmentConfig.from_dict({"p_band": 0.0}) == AugmentConfig(p_band=0.0)
    assert hash(cfg) == hash(AugmentConfig.from_dict(d))  # usable as a cache key


@pytest.mark.parametrize(
    "bad",
    [
        {"p_noise": 1.5},
        {"p_pitch": -0.1},
        {"gain_db": (6.0, -6.0)},
        {"snr_db": (5.0,)},
        {"speed": (0.0, 1.1)},
        {"semitones": (-30.0, 2.0)},
        {"snr_db": (float("nan"), 10.0)},
    ],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        AugmentConfig(**bad)


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="p_nosie"):
        AugmentConfig.from_dict({"p_nosie": 0.5})


def test_augment_args_from_the_command_line_reach_every_copy(tmp_path):
    import soundfile as sf

    from ser_core.data.base import Utterance
    from ser_core.errors import InputError
    from ser_core.train_cli import _parse_augment_args
    from ser_core.train_data import utterance_audio, with_augmented_copies

    config = _parse_augment_args(["semitones=-4,-4", "p_pitch=1", "p_speed=0"], copies=1)
    assert config["semitones"] == [-4.0, -4.0] and config["p_pitch"] == 1.0
    assert AugmentConfig.from_dict(config) == AugmentConfig(semitones=(-4, -4), p_pitch=1.0, p_speed=0.0)
    assert _parse_augment_args([], copies=0) is None
    for items, copies, message in ((["p_pitch=0.5"], 0, "add --augment"), (["pitch"], 1, "KEY=VALUE"),
                                   (["formant=1"], 1, "unknown"), (["p_noise=high"], 1, "not a number"),
                                   (["semitones=-30,2"], 1, "must lie in")):
        with pytest.raises(InputError, match=message):
            _parse_augment_args(items, copies)

    sf.write(tmp_path / "u.wav", voice(), 16000, subtype="FLOAT")
    utt = Utterance(id="u", audio=tmp_path / "u.wav", label="sad", speaker="s", transcript="", session="s")
    lower, plain = (with_augmented_copies([utt], 1, seed=3, config=c)[1] for c in (config, None))
    assert lower.meta["augment"]["config"] == config and "config" not in plain.meta["augment"]
    assert lower.meta["augment"]["seed"] == plain.meta["augment"]["seed"]  # same seed, other chain
    a, b = utterance_audio(lower), utterance_audio(plain)
    assert a.shape != b.shape or not np.allclose(a, b)
    assert np.array_equal(a, utterance_audio(lower))  # reproducible


def test_an_augmented_copy_handed_to_analyze_has_the_samples_evaluation_scored(tmp_path):
    """augmented_copy_wav (the Evaluate page → Analyze) decodes to exactly the waveform the
    trainer / evaluate compute for the same augmented utterance (train_data.utterance_audio)."""
    import soundfile as sf

    from ser_core.audio import load_audio
    from ser_core.augment import augmented_copy_wav
    from ser_core.data.base import Utterance
    from ser_core.train_data import utterance_audio, with_augmented_copies

    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    clip = tmp_path / "clip.wav"
    sf.write(clip, (0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.normal(size=t.size)).astype(np.float32), 16000)
    utt = Utterance(id="c1", audio=clip, transcript=None, label="ang", speaker="s", session="s")
    copy = with_augmented_copies([utt], 1, 7)[1]
    expected = utterance_audio(copy)
    handed = load_audio(augmented_copy_wav(clip.read_bytes(), copy.meta["augment"]))
    assert handed.shape == expected.shape and np.array_equal(handed, expected)
    assert not np.array_equal(handed[: min(len(handed), 16000)], load_audio(clip)[: min(len(handed), 16000)])
