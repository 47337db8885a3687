"""Forward+backward time of key_sparse_attention vs F.scaled_dot_product_attention.

Run: ``python bench/bench_attention.py [--batch 16 --length 460 --heads 8 --dim 64 --runs 15]``

The KS-Transformer setting: audio length 460 (sec. 3.2), 8 heads, head size 64. All
timings come from one process, as the median of ``--runs`` interleaved timed runs after warm-up; the
inputs carry a key padding mask (a quarter of the items padded to 3/4 length) so that
both sides do the masking work a real batch needs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ser_core.attention import key_sparse_attention, key_sparse_attention_with_scores  # noqa: E402


def fwd_bwd_seconds(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> float:
    """Seconds of one out = fn(q, k, v); out.sum().backward()."""
    for t in (q, k, v):
        t.grad = None
    if q.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn(q, k, v)
    out.sum().backward()
    if q.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def interleaved_medians(cases: list[tuple[str, Callable]], q: torch.Tensor, k: torch.Tensor,
                        v: torch.Tensor, runs: int, warmup: int) -> dict[str, float]:
    """Median seconds per case. Each round times every case once, in a rotating order, so a
    busy shared machine slows all cases alike and the ratios stay meaningful."""
    for _ in range(warmup):
        for _, fn in cases:
            fwd_bwd_seconds(fn, q, k, v)
    times: dict[str, list[float]] = {name: [] for name, _ in cases}
    for r in range(runs):
        order = cases[r % len(cases):] + cases[: r % len(cases)]
        for name, fn in order:
            times[name].append(fwd_bwd_seconds(fn, q, k, v))
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=460)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    B, H, T, D = args.batch, args.heads, args.length, args.dim
    q, k, v = (torch.randn(B, H, T, D, generator=g).to(args.device).requires_grad_() for _ in range(3))
    pad = torch.zeros(B, T, dtype=torch.bool)
    pad[: max(1, B // 4), (3 * T) // 4:] = True
    pad = pad.to(args.device)
    sdpa_mask = (~pad)[:, None, None, :]  # SDPA: True = take part

    cases: list[tuple[str, Callable]] = [
        ("sdpa (torch default backend)", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask)),
    ]
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def sdpa_math(q, k, v):
            with sdpa_kernel(SDPBackend.MATH):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask)
        cases.append(("sdpa (math backend)", sdpa_math))
    except ImportError:  # older torch
        pass
    cases += [
        ("key_sparse keep_ratio=1.0", lambda q, k, v: key_sparse_attention(q, k, v, 1.0, pad)[0]),
        ("key_sparse keep_ratio=0.5", lambda q, k, v: key_sparse_attention(q, k, v, 0.5, pad)[0]),
        # what a model runs while training (no maps kept for a trace)
        ("  no maps, keep_ratio=1.0", lambda q, k, v: key_sparse_attention_with_scores(
            q, k, v, 1.0, pad, need_scores=False, need_weights=False).out),
        ("  no maps, keep_ratio=0.5", lambda q, k, v: key_sparse_attention_with_scores(
            q, k, v, 0.5, pad, need_weights=False).out),
    ]

    print(f"B={B} H={H} T={T} D={D} device={args.device} threads={torch.get_num_threads()} "
          f"torch={torch.__version__}; forward+backward, median of {args.runs} runs")
    results = interleaved_medians(cases, q, k, v, args.runs, args.warmup)
    base = results["sdpa (torch default backend)"]
    math_base = results.get("sdpa (math backend)")
    for name, t in results.items():
        line = f"  {name:30s} {t * 1e3:9.2f} ms   {t / base:5.2f}x sdpa default"
        if math_base:
            line += f"   {t / math_base:5.2f}x sdpa math"
        print(line)


if __name__ == "__main__":
    main()
