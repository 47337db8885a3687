"""MESM (sparse, top_p = 0.5) against FE2E (dense) on the same inputs: FLOPs and CPU time.

    python bench/bench_mesm.py [--batch 8] [--seconds 6] [--repeats 7] [--top-p 0.5]

The batch is ``--batch`` synthetic utterances of ``--seconds`` s (noise-like audio, 5 fps random
face crops, random sentence vectors), collated once. Both models have the same weights where
they share them (FE2E loads MESM's state dict without the attention layers), are in eval mode,
and are timed on forward passes under ``torch.no_grad`` (median of ``--repeats`` after one
warm-up), with ``torch.set_num_threads(os.cpu_count())``. FLOPs are the models' own counts
(2 × MACs of the feature-extraction CNNs: dense stem, attention layers, convs; see
ser_core/models/mesm.py). The paper's claim (Sec. 6.3, Table 4): at top-p 0.5 MESM needs about
half the FE2E FLOPs (4.34 vs 8.65 GFLOPs). Targets here: FLOPs ratio ≤ 0.55, wall-clock ≤ 0.8.

Timed at the machine's core count and at 1 thread (``--threads`` to choose). On a shared,
oversubscribed machine several intra-op threads wait at every OpenMP barrier for a descheduled
worker, which punishes MESM's many small ops far more than FE2E's few big convs; the CPU-time
ratio and the 1-thread figures are the steadier ones there (the load average is printed).

Also printed: the FLOPs ratio against top_p (Fig. 5's bottom panel, untrained weights) and the
time of training steps on a demo-corpus-like batch (16 × 3 s utterances, 10 % with faces),
scaled to a 1400-utterance epoch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ser_core.asr import Word  # noqa: E402
from ser_core.features import Features  # noqa: E402
from ser_core.models.mesm import FE2E, MESM, MESMConfig  # noqa: E402

__all__ = ["utterance", "paired_times", "cnn_only", "main"]


def utterance(rng: np.random.Generator, seconds: float, faces: bool, key: str) -> Features:
    n = int(16000 * seconds)
    t = np.arange(n) / 16000
    audio = (0.1 * np.sin(2 * np.pi * 180 * t * (1 + 0.2 * np.sin(3 * t))) * (np.sin(5 * t) > 0)
             + 0.01 * rng.standard_normal(n)).astype(np.float32)
    nf = int(round(seconds * 5)) if faces else 0
    return Features(
        key=key, audio=audio, words=[Word("hello", 0.1, 0.5)], speech=np.zeros((1, 1, 1), np.float32),
        frame_times=np.zeros(1), text=np.zeros((1, 384), np.float32),
        extra={"sentence": rng.standard_normal(384).astype(np.float32),
               "faces": rng.integers(0, 256, (nf, 64, 64, 3), dtype=np.uint8),
               "face_times": np.arange(nf) * 0.2},
    )


def paired_times(fa, fb, repeats: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """Median (wall, process-CPU) seconds of fa and fb, run alternately so that load from other
    processes on a shared machine hits both alike (CPU time is the steadier figure there)."""
    fa(), fb()  # warm-up
    out: list[list[tuple[float, float]]] = [[], []]
    for _ in range(repeats):
        for k, f in enumerate((fa, fb)):
            w0, c0 = time.perf_counter(), time.process_time()
            f()
            out[k].append((time.perf_counter() - w0, time.process_time() - c0))
    med = [(statistics.median(w for w, _ in o), statistics.median(c for _, c in o)) for o in out]
    return med[0], med[1]


def cnn_only(model: MESM, extracted, top_p: float):
    """Only the part that differs between the models: the blocks after the dense stem."""
    t = extracted.text
    for name, seq in extracted.sequences.items():
        model.cnns[name](seq.stem, seq.active, t.index_select(0, seq.item), top_p)


def compare_forward(mesm: MESM, fe2e: FE2E, batch: dict, top_p: float, repeats: int) -> dict[str, float]:
    """Forward MESM(top_p) vs FE2E, whole model and CNN blocks only; medians, paired runs."""
    with torch.no_grad():
        (ws, cs), (wd, cd) = paired_times(lambda: mesm(batch, top_p=top_p), lambda: fe2e(batch), repeats)
        ext_s, ext_d = mesm.extract(batch), fe2e.extract(batch)
        (wbs, cbs), (wbd, cbd) = paired_times(lambda: cnn_only(mesm, ext_s, top_p),
                                              lambda: cnn_only(fe2e, ext_d, top_p), repeats)
    return {"wall_mesm": ws, "wall_fe2e": wd, "cpu_mesm": cs, "cpu_fe2e": cd,
            "blocks_wall_mesm": wbs, "blocks_wall_fe2e": wbd, "blocks_cpu_mesm": cbs, "blocks_cpu_fe2e": cbd}


def train_epoch_seconds(model: MESM, items: list[Features], repeats: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of one AdamW step on ``items``, scaled to 1400 utterances."""
    cfg = model.config
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    y = torch.randint(0, cfg.num_classes, (len(items),))

    def step() -> None:
        b = MESM.collate(items, cfg, "cpu")
        loss = torch.nn.functional.cross_entropy(model(b).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        step()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls) * 1400 / len(items), statistics.median(cpus) * 1400 / len(items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--top-p", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, nargs="*", default=None,
                    help="intra-op thread counts to time (default: the machine's cores, then 1)")
    args = ap.parse_args()
    threads = args.threads or sorted({os.cpu_count() or 1, 1}, reverse=True)

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    cfg = MESMConfig()
    mesm = MESM(cfg).eval()
    fe2e = FE2E(cfg).eval()
    missing, unexpected = fe2e.load_state_dict(mesm.state_dict(), strict=False)
    assert not missing and all(".attention." in k for k in unexpected)

    items = [utterance(rng, args.seconds, True, f"u{i}") for i in range(args.batch)]
    batch = MESM.collate(items, cfg, "cpu")
    print(f"torch {torch.__version__}; {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}; "
          f"batch of {args.batch} × {args.seconds:g} s: {int((~batch['chunk_mask']).sum())} chunks, "
          f"{int((~batch['face_mask']).sum())} face frames; "
          f"{sum(p.numel() for p in mesm.parameters()):,} parameters (MESM), "
          f"{sum(p.numel() for p in fe2e.parameters()):,} (FE2E)")

    with torch.no_grad():
        f_sparse = MESM.count_flops(mesm(batch, top_p=args.top_p))
        f_dense = MESM.count_flops(fe2e(batch))
        print(f"\nFLOPs (feature extraction, 2×MACs): MESM p={args.top_p:g} {f_sparse['flops'] / 1e9:.3f} G, "
              f"FE2E {f_dense['flops'] / 1e9:.3f} G, ratio {f_sparse['flops'] / f_dense['flops']:.3f} "
              f"(target ≤ 0.55)")
        print("  per layer (MESM / FE2E, GFLOPs):")
        for name, (a, _) in f_sparse["per_layer"].items():
            d = f_dense["per_layer"][name][0]
            print(f"    {name:34s} {a / 1e9:7.4f} / {d / 1e9:7.4f}")
        print("  ratio against top_p (untrained weights): " + ", ".join(
            f"{p:.1f}: {MESM.count_flops(mesm(batch, top_p=p))['ratio']:.3f}" for p in (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)))

    train_items = [utterance(rng, 3.0, i % 10 == 0, f"t{i}") for i in range(16)]
    for n in threads:
        torch.set_num_threads(n)
        r = compare_forward(mesm, fe2e, batch, args.top_p, args.repeats)
        print(f"\n{n} thread(s), load average {os.getloadavg()[0]:.1f}. Forward, median of {args.repeats} "
              f"(alternating MESM / FE2E):")
        print(f"  whole model: MESM {r['wall_mesm'] * 1e3:.0f} ms, FE2E {r['wall_fe2e'] * 1e3:.0f} ms wall → "
              f"ratio {r['wall_mesm'] / r['wall_fe2e']:.3f} (target ≤ 0.8); CPU-time ratio "
              f"{r['cpu_mesm'] / r['cpu_fe2e']:.3f}")
        print(f"  CNN blocks only (after the shared dense stem): MESM {r['blocks_wall_mesm'] * 1e3:.0f} ms, "
              f"FE2E {r['blocks_wall_fe2e'] * 1e3:.0f} ms → ratio {r['blocks_wall_mesm'] / r['blocks_wall_fe2e']:.3f}"
              f" wall, {r['blocks_cpu_mesm'] / r['blocks_cpu_fe2e']:.3f} CPU")
        for name, cls in (("MESM", MESM), ("FE2E", FE2E)):
            torch.manual_seed(args.seed)
            w, c = train_epoch_seconds(cls(cfg), train_items, max(3, args.repeats // 2))
            print(f"  {name} training, 1400 utterances of 3 s (faces for 10 %), batch 16: "
                  f"~{w:.0f} s wall / {c:.0f} s CPU per epoch")


if __name__ == "__main__":
    main()
