"""Whisper encoder benchmark: conversion, cached load, padded-to-30 s vs short input (CPU).

    python bench/bench_whisper.py [--model tiny.en] [--seconds 10] [--runs 5]

Speech is synthesised with espeak-ng (resampled to 16 kHz). The conversion runs in a fresh
temporary cache so the first figure really is a conversion. The last table shows what encoding
only the real frames (positional embedding sliced) does to the features compared with Whisper's
padded-to-30 s input: cosine similarity per frame, per layer, over the real frames.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TEXT = (
    "I can't believe you did that again. Honestly, I'm thrilled that we finally finished the project, "
    "but tomorrow we will have to start all over, and that makes me a little sad. "
)


def synthesize(seconds: float, workdir: Path) -> np.ndarray:
    """``seconds`` of espeak-ng speech at 16 kHz (sentences repeated until long enough)."""
    import librosa
    import soundfile as sf

    wav = workdir / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), TEXT], check=True, timeout=60)
    audio, sr = sf.read(wav, dtype="float32")
    audio = librosa.resample(audio, orig_sr=sr, target_sr=16000, res_type="soxr_hq")
    n = int(seconds * 16000)
    return np.resize(audio, n).astype(np.float32) if len(audio) < n else audio[:n].astype(np.float32)


def median_time(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny.en", help="tiny.en (default), base, or a CTranslate2 model dir")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length (s)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per mode (median reported)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench_whisper_"))
    os.environ["SER_CACHE_DIR"] = str(workdir / "cache")  # fresh cache: the first build converts
    try:
        import torch
        import transformers.models.whisper.modeling_whisper  # noqa: F401  (import time not counted)

        from ser_core.encoders.whisper import build_whisper_encoder

        audio = synthesize(args.seconds, workdir)
        print(f"model {args.model}; clip {len(audio) / 16000:.2f} s; CPU, torch threads {torch.get_num_threads()}")

        start = time.perf_counter()
        encoder = build_whisper_encoder(args.model, device="cpu")
        first = time.perf_counter() - start
        print(f"conversion (first load, model.bin -> safetensors): {first:.3f} s "
              f"(of which read+convert+write {encoder.conversion_seconds:.3f} s)")
        start = time.perf_counter()
        encoder = build_whisper_encoder(args.model, device="cpu")
        print(f"load from cache (sha256-checked safetensors):      {time.perf_counter() - start:.3f} s")
        assert encoder.conversion_seconds is None
        print(f"{encoder.identity}: {encoder.num_layers} layers, dim {encoder.dim}")

        encoder.encode(audio)  # warm-up (first call allocates)
        encoder.encode(audio, pad_to_30s=True)
        mel_t = median_time(lambda: encoder.log_mel(audio), args.runs)
        short_t = median_time(lambda: encoder.encode(audio), args.runs)
        padded_t = median_time(lambda: encoder.encode(audio, pad_to_30s=True), args.runs)
        print(f"log-mel alone:                    {1000 * mel_t:8.1f} ms")
        print(f"encode, short input (real frames): {1000 * short_t:8.1f} ms   (median of {args.runs})")
        print(f"encode, padded to 30 s:           {1000 * padded_t:8.1f} ms   (median of {args.runs})")
        print(f"padded / short: {padded_t / short_t:.2f}x")

        short, _ = encoder.encode(audio)
        padded, _ = encoder.encode(audio, pad_to_30s=True)
        cosine = torch.nn.functional.cosine_similarity(short, padded, dim=-1)  # [layers+1, T]
        print(f"cosine(short, padded) per frame over the {short.shape[1]} real frames:")
        for layer, row in enumerate(cosine):
            tail = row[-25:]  # last 0.5 s, where the padded run sees the padding next door
            print(f"  {'emb' if layer == 0 else f'L{layer}':>4}: mean {row.mean():.4f}  min {row.min():.4f}  "
                  f"last 0.5 s mean {tail.mean():.4f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
