"""Waveform augmentation for training, applied to the 16 kHz mono signal BEFORE the encoders.

Models trained on acted speech (a few speakers, one studio, one microphone) learn the studio as
much as the emotion. Each transform below imitates one thing that changes at deployment time, so
that the classifier is pushed to rely on what stays the same. Built on ``audiomentations``
(0.43.x); the chain, in the order it is applied (a voice, then the room, then the device):

* speed (``Resample``, read back at the original rate): tempo and pitch move together, like a
  faster/slower talker with a shorter/longer vocal tract -> new voices.
* pitch shift (``PitchShift``, signalsmith-stretch): F0 and formants move at the same tempo
  -> new voices (the costly transform, hence its lower probability).
* reverberation (:class:`SyntheticReverb`, ours): convolution with a synthetic room impulse
  response (direct path + exponentially decaying noise tail, RT60 0.2-0.8 s, random
  direct-to-reverberant ratio) -> new rooms. No impulse-response files ship with the project
  and none can be downloaded, so the RIR is synthesised (``RoomSimulator`` would add
  pyroomacoustics as a dependency).
* additive noise (``AddColorNoise``, spectral slope between brown -6 dB/oct, pink -3 dB/oct
  and white 0 dB/oct, SNR relative to the speech) -> noisy rooms, fans, hum, mic self-noise.
* band-limiting / EQ (``OneOf``): a narrow-band phone channel (band-pass ~300-3400 Hz) or a
  cheap laptop/headset mic (high-pass 80-300 Hz, low-pass 4-7.5 kHz, one resonant peak or dip)
  -> new microphones and transmission channels.
* gain (``Gain``, always on, uniform in dB) -> recording level.

Then the output is made safe: NaN/inf become 0 and, when the peak exceeds 1, the whole signal is
divided by its peak (never clipped into a square wave). A silent input stays silent (the noise is
relative to the signal level).

Determinism: audiomentations draws from the global ``random`` and ``numpy.random`` generators.
:func:`augment_waveform` seeds both from the given seed, runs the chain under a module lock and
restores both global states afterwards, so the result depends only on (audio, seed, config,
sample_rate) and the caller's random streams are untouched. Other threads that draw from the
global generators *while* a call runs can still interleave with it; use processes (as
``torch`` data-loader workers do) for parallel augmentation.

Cost per 3 s clip at 16 kHz (a synthetic voiced signal), 1 thread (``taskset`` to one core,
OMP/BLAS threads = 1), mean over 300 calls with seeds 0-299, Python 3.11 / numpy 2.4, on a
2-core machine that was also training a model, so wall times varied between runs (CPU time in
brackets): default config **10-20 ms (11-14 ms CPU)**, well under the 60 ms target; every p = 1:
25-47 ms (26-35 ms CPU). Alone: pitch shift 18-28 ms (14-21 ms CPU), reverb 6-8 ms, noise
5-8 ms, band/EQ 5-8 ms, speed 4 ms, gain + safety < 1 ms.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterator, Mapping

import numpy as np
from scipy.signal import fftconvolve

from audiomentations import (
    AddColorNoise,
    BandPassFilter,
    Compose,
    Gain,
    HighPassFilter,
    LowPassFilter,
    OneOf,
    PeakingFilter,
    PitchShift,
    Resample,
)
from audiomentations.core.transforms_interface import BaseWaveformTransform

__all__ = [
    "AugmentConfig",
    "SyntheticReverb",
    "augment_waveform",
]

SAMPLE_RATE = 16000

# Noise colours offered by AddColorNoise, as spectral slopes in dB/octave.
BROWN_DB_PER_OCTAVE = -6.02
WHITE_DB_PER_OCTAVE = 0.0

# Synthetic room impulse response.
RT60_S = (0.2, 0.8)  # reverberation time: 60 dB decay of the tail
DRR_DB = (0.0, 12.0)  # direct-to-reverberant energy ratio (lower = more distant talker)
PREDELAY_S = (0.002, 0.015)  # gap between the direct sound and the first reflections


def _pair(name: str, value: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"AugmentConfig.{name} must be a (low, high) pair, got {value!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
        raise ValueError(f"AugmentConfig.{name} must be finite with low <= high, got {value!r}")
    return lo, hi


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges (drawn uniformly) and probabilities of the augmentation chain.

    Units: decibels for ``gain_db`` and ``snr_db``, a playback-rate factor for ``speed``
    (1.1 = 10 % faster and higher), semitones for ``semitones``; ``p_*`` are probabilities in
    [0, 1]. Gain has no probability: it is always drawn (set ``gain_db=(0, 0)`` to switch it off).
    """

    gain_db: tuple[float, float] = (-6.0, 6.0)
    snr_db: tuple[float, float] = (5.0, 30.0)
    p_noise: float = 0.5
    p_reverb: float = 0.4
    p_band: float = 0.4
    speed: tuple[float, float] = (0.9, 1.1)
    p_speed: float = 0.5
    semitones: tuple[float, float] = (-2.0, 2.0)
    p_pitch: float = 0.3

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.startswith("p_"):
                try:
                    p = float(value)
                except (TypeError, ValueError):
                    raise ValueError(f"AugmentConfig.{f.name} must be a number, got {value!r}") from None
                if not 0.0 <= p <= 1.0:
                    raise ValueError(f"AugmentConfig.{f.name} must lie in [0, 1], got {value!r}")
                object.__setattr__(self, f.name, p)
            else:
                object.__setattr__(self, f.name, _pair(f.name, value))
        if self.speed[0] <= 0.0:
            raise ValueError(f"AugmentConfig.speed must be > 0, got {self.speed!r}")
        if self.semitones[0] < -24.0 or self.semitones[1] > 24.0:
            raise ValueError(f"AugmentConfig.semitones must lie in [-24, 24], got {self.semitones!r}")

    def to_dict(self) -> dict:
        """JSON-ready dict (pairs as lists); ``from_dict(c.to_dict()) == c``."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "AugmentConfig":
        """Inverse of :meth:`to_dict`; missing keys take their defaults, unknown keys raise."""
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown AugmentConfig keys: {', '.join(unknown)}")
        return cls(**d)


class SyntheticReverb(BaseWaveformTransform):
    """Convolve with a synthetic room impulse response.

    The RIR is a unit direct path followed, after a short pre-delay, by Gaussian noise whose
    amplitude decays by 60 dB over RT60 and whose energy is set by the direct-to-reverberant
    ratio. The output keeps the input's length (the tail past the end is dropped) and RMS.
    Random draws use the global ``random`` / ``numpy.random`` generators, like every
    audiomentations transform.
    """

    supports_multichannel = False

    def __init__(
        self,
        min_rt60: float = RT60_S[0],
        max_rt60: float = RT60_S[1],
        min_drr_db: float = DRR_DB[0],
        max_drr_db: float = DRR_DB[1],
        p: float = 0.5,
    ):
        super().__init__(p)
        if not 0.0 < min_rt60 <= max_rt60:
            raise ValueError("need 0 < min_rt60 <= max_rt60")
        if min_drr_db > max_drr_db:
            raise ValueError("need min_drr_db <= max_drr_db")
        self.min_rt60 = min_rt60
        self.max_rt60 = max_rt60
        self.min_drr_db = min_drr_db
        self.max_drr_db = max_drr_db

    def randomize_parameters(self, samples, sample_rate: int):
        super().randomize_parameters(samples, sample_rate)
        if self.parameters["should_apply"]:
            self.parameters["rt60"] = random.uniform(self.min_rt60, self.max_rt60)
            self.parameters["drr_db"] = random.uniform(self.min_drr_db, self.max_drr_db)
            self.parameters["predelay"] = random.uniform(*PREDELAY_S)
            # The tail's noise is drawn here so that the parameters fully describe the RIR.
            n_tail = max(1, int(round(self.parameters["rt60"] * sample_rate)))
            self.parameters["tail_noise"] = np.random.standard_normal(n_tail)

    @staticmethod
    def impulse_response(
        rt60: float, drr_db: float, predelay: float, tail_noise: np.ndarray, sample_rate: int
    ) -> np.ndarray:
        """Direct path at t=0, then ``tail_noise`` shaped by exp(-6.9 t / RT60) (60 dB at RT60)."""
        t = np.arange(tail_noise.size) / sample_rate
        tail = tail_noise * np.exp(-3.0 * np.log(10.0) * t / rt60)
        energy = float(np.sum(tail**2))
        if energy > 0.0:
            tail *= np.sqrt(10.0 ** (-drr_db / 10.0) / energy)  # direct path has energy 1
        start = max(1, int(round(predelay * sample_rate)))
        rir = np.zeros(start + tail.size)
        rir[0] = 1.0
        rir[start:] = tail
        return rir

    def apply(self, samples, sample_rate: int):
        rir = self.impulse_response(
            self.parameters["rt60"],
            self.parameters["drr_db"],
            self.parameters["predelay"],
            self.parameters["tail_noise"],
            sample_rate,
        )
        x = samples.astype(np.float64)
        y = fftconvolve(x, rir)[: x.size]
        rms_in = float(np.sqrt(np.mean(x**2)))
        rms_out = float(np.sqrt(np.mean(y**2)))
        if rms_out > 0.0 and rms_in > 0.0:
            y *= rms_in / rms_out
        return y.astype(np.float32)


@lru_cache(maxsize=16)
def _chain(config: AugmentConfig, sample_rate: int) -> Compose:
    """The audiomentations chain for one config (cached: building it costs more than a call)."""
    # Speed s: resample to sample_rate / s and read the result back at sample_rate.
    slowest = int(round(sample_rate / config.speed[0]))
    fastest = int(round(sample_rate / config.speed[1]))
    phone = Compose(
        [
            # arithmetic centre 1700-2000 Hz, width 1.5-1.75 x centre: edges ~250-425 / ~2975-3750 Hz
            BandPassFilter(
                min_center_freq=1700.0,
                max_center_freq=2000.0,
                min_bandwidth_fraction=1.5,
                max_bandwidth_fraction=1.75,
                min_rolloff=12,
                max_rolloff=24,
                p=1.0,
            )
        ]
    )
    laptop = Compose(
        [
            HighPassFilter(min_cutoff_freq=80.0, max_cutoff_freq=300.0, min_rolloff=12, max_rolloff=18, p=1.0),
            LowPassFilter(min_cutoff_freq=4000.0, max_cutoff_freq=7500.0, min_rolloff=12, max_rolloff=24, p=1.0),
            PeakingFilter(
                min_center_freq=800.0,
                max_center_freq=5000.0,
                min_gain_db=-8.0,
                max_gain_db=8.0,
                min_q=1.0,
                max_q=4.0,
                p=1.0,
            ),
        ]
    )
    return Compose(
        [
            Resample(min_sample_rate=fastest, max_sample_rate=slowest, p=config.p_speed),
            PitchShift(
                min_semitones=config.semitones[0],
                max_semitones=config.semitones[1],
                method="signalsmith_stretch",
                p=config.p_pitch,
            ),
            SyntheticReverb(p=config.p_reverb),
            AddColorNoise(
                min_snr_db=config.snr_db[0],
                max_snr_db=config.snr_db[1],
                min_f_decay=BROWN_DB_PER_OCTAVE,
                max_f_decay=WHITE_DB_PER_OCTAVE,
                p=config.p_noise,
            ),
            OneOf([phone, laptop], p=config.p_band),
            Gain(min_gain_db=config.gain_db[0], max_gain_db=config.gain_db[1], p=1.0),
        ]
    )


_LOCK = threading.RLock()


def _global_seeds(seed: int) -> tuple[int, int]:
    """Seeds for ``random`` and ``numpy.random`` from any int (negative or huge included)."""
    digest = hashlib.blake2b(f"ser_core.augment:{int(seed)}".encode(), digest_size=16).digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:12], "little")


@contextmanager
def _seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed the global ``random`` and ``numpy.random`` generators; restore them on exit."""
    with _LOCK:
        py_state = random.getstate()
        np_state = np.random.get_state()
        try:
            py_seed, np_seed = _global_seeds(seed)
            random.seed(py_seed)
            np.random.seed(np_seed)
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _safe(audio: np.ndarray) -> np.ndarray:
    """float32, finite, peak <= 1 (scaled down by the peak, never clipped)."""
    y = np.nan_to_num(np.asarray(audio, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(np.max(np.abs(y))) if y.size else 0.0
    if peak > 1.0:
        y = y / np.float32(peak)
    return np.clip(y, -1.0, 1.0).astype(np.float32, copy=False)


def augment_waveform(
    audio: np.ndarray,
    seed: int,
    config: AugmentConfig = AugmentConfig(),
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """One augmented version of a mono waveform.

    ``audio``: 1-D (or ``(1, n)``) float array at ``sample_rate``. Returns a new float32 1-D
    array, finite, peak <= 1; its length changes by the speed factor (between
    ``n / speed[1]`` and ``n / speed[0]``). Deterministic for (audio, seed, config,
    sample_rate); the caller's global ``random`` / ``numpy.random`` states are left unchanged.
    """
    x = np.asarray(audio)
    if x.ndim == 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 1:
        raise ValueError(f"augment_waveform needs mono audio (1-D), got shape {np.shape(audio)}")
    if not isinstance(config, AugmentConfig):
        raise TypeError(f"config must be an AugmentConfig, got {type(config).__name__}")
    x = np.nan_to_num(x.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if x.size == 0:
        return x.copy()
    chain = _chain(config, int(sample_rate))
    with _seeded_global_rngs(seed):
        y = chain(samples=x, sample_rate=int(sample_rate))
    return _safe(y)


def augmented_as(audio: np.ndarray, spec: dict) -> np.ndarray:
    """The waveform of an augmented copy: ``spec`` is its utterance's ``meta["augment"]``
    ({"seed", optional "config"}, as ``train_data.with_augmented_copies`` writes it)."""
    return augment_waveform(audio, int(spec["seed"]), AugmentConfig.from_dict(spec.get("config") or {}))


def augmented_copy_wav(data: bytes, spec: dict) -> bytes:
    """A recording's augmented copy (:func:`augmented_as`) as WAV bytes, 32-bit float so the samples
    are exactly those a training or evaluation run computed: what the Evaluate page hands to Analyze."""
    import io

    import soundfile as sf

    from .audio import load_audio

    buffer = io.BytesIO()
    sf.write(buffer, augmented_as(load_audio(data), spec), SAMPLE_RATE, format="WAV", subtype="FLOAT")
    return buffer.getvalue()
