"""Pipeline benchmarks (CPU by default), all in one run so ratios share the machine's state.

    python bench/bench_pipeline.py [--checkpoint PATH] [--no-app]

Prints, for a 10 s clip:
  * load + ASR + encoders (cold = first call in the process, warm = models loaded);
  * full analysis (decode → ASR → encoders → model → trace), warm, features not cached;
  * a keep_ratio change (model only on cached features) vs a full re-analysis, and their ratio;
  * the app: cold start to an interactive Analyze page in headless Chromium, and the server's
    peak resident memory after an analysis with the default model.
Targets (issue 3): rerun ≤150 ms and ≥10× faster; full analysis ≤3 s warm; app start ≤15 s;
peak memory ≤2.5 GB.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import soundfile as sf  # noqa: E402
from bench_whisper import median_time, synthesize  # noqa: E402  (same folder)


def ten_second_clip(folder: Path) -> Path:
    """10 s of real (synthetic) espeak-ng speech at 16 kHz, written as a wav file."""
    path = folder / "clip10s.wav"
    sf.write(path, synthesize(10.0, folder), 16000)
    return path


def bench_library(checkpoint: Path, clip: Path, runs: int) -> None:
    from ser_core.audio import load_audio
    from ser_core.pipeline import Analyzer

    t0 = time.perf_counter()
    analyzer = Analyzer(checkpoint, device="cpu", disk_cache=False)
    t_load = time.perf_counter() - t0
    extractor = analyzer.extractor

    def features_only():
        extractor._memory.clear()
        return extractor.extract(load_audio(clip))

    t0 = time.perf_counter()
    features_only()
    cold = time.perf_counter() - t0
    warm = median_time(features_only, runs)
    print(f"checkpoint load (model only)            {t_load * 1000:8.0f} ms")
    print(f"load+ASR+encoders, 10 s clip, cold      {cold * 1000:8.0f} ms")
    print(f"load+ASR+encoders, 10 s clip, warm      {warm * 1000:8.0f} ms   (median of {runs})")

    def full():
        extractor._memory.clear()
        return analyzer.analyze(str(clip))

    full_t = median_time(full, runs)
    base = analyzer.analyze(str(clip))
    ks = [0.1, 0.3, 0.7, 0.9, 0.2, 0.6]
    it = iter(ks * (runs + 1))
    rerun_t = median_time(lambda: base.rerun(keep_ratio=next(it)), max(runs, len(ks)))
    print(f"full analysis, 10 s clip, warm          {full_t * 1000:8.0f} ms   (target ≤ 3000)")
    print(f"keep_ratio change (model only)          {rerun_t * 1000:8.0f} ms   (target ≤ 150)")
    print(f"  speed-up vs full re-analysis          {full_t / rerun_t:8.1f} x    (target ≥ 10)")
    print(f"  audio frames {base.features.speech.shape[1]}, words {len(base.features.words)}, "
          f"records {len(base.trace.records)}")


def bench_app(clip: Path) -> None:
    from browser import CHROMIUM_FLAGS, chromium_path, streamlit_server, wait_idle
    from playwright.sync_api import sync_playwright

    if chromium_path() is None:
        print("app: chromium not installed, skipped")
        return
    with streamlit_server() as (url, proc, started), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(),
                                    args=CHROMIUM_FLAGS)  # Playwright gives each launch a fresh profile
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.goto(url + "/Analyze", wait_until="domcontentloaded")
        page.get_by_text("Analyze an utterance").wait_for(timeout=120_000)
        wait_idle(page)
        ready = time.perf_counter() - started
        print(f"app cold start → interactive Analyze    {ready:8.1f} s    (target ≤ 15)")
        page.get_by_text("Upload a file", exact=True).click()
        wait_idle(page)
        page.locator("input[type=file]").set_input_files(str(clip))
        wait_idle(page)
        t0 = time.perf_counter()
        page.get_by_role("button", name="Analyze").click()
        page.get_by_text("Prediction:").wait_for(timeout=180_000)
        wait_idle(page)
        print(f"first analysis in the app (cold models) {time.perf_counter() - t0:8.1f} s")
        peak_kb = int(next(line.split()[1] for line in open(f"/proc/{proc.pid}/status")
                           if line.startswith("VmHWM")))
        print(f"app peak memory (VmHWM), model loaded   {peak_kb / 1024 / 1024:8.2f} GB   (target ≤ 2.5)")
        browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "ks_transformer_demo.safetensors"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-app", action="store_true")
    args = ap.parse_args()
    import torch

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpu")
    with tempfile.TemporaryDirectory() as tmp:
        clip = ten_second_clip(Path(tmp))
        bench_library(Path(args.checkpoint), clip, args.runs)
        if not args.no_app:
            bench_app(clip)


if __name__ == "__main__":
    main()
