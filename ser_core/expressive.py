"""Do MESM's kept face points fall on the face's expressive regions?

The demo corpus's talking-face videos record, per frame, where the brows, eyes and mouth are
(``faces.json``: boxes in video pixels plus a per-frame head offset). For every test utterance
with a face, every visual cross-modal attention layer and every face frame the model saw, we
map each map cell back to video pixels (cell → 64×64 crop → the crop's square in the frame, as
``encoders.faces.crop_square`` cut it) and ask whether its centre lies in an expressive region.

    share_kept   = kept cells in a region / kept cells
    share_random = cells in a region / all cells of the map
                   (the expected share of a random mask of the same size)
    brightness_kept = mean luminance of the face crop under the kept cells / under all cells
                   (1: as a random mask; the drawn faces' brows, eyes and mouth are dark on light
                   skin, so a layer that keeps the bright cells misses them)

``python -m ser_core regions [--checkpoint …] [--top-p …]`` prints both per layer. With
``--attribution`` it also runs Integrated Gradients on every utterance and reports, per attention
layer (spectrogram ones too), what share of the attribution's magnitude (Σ|IG| summed onto the
layer's cells, ``attribution.points_on_grid``) the kept cells hold against the share of cells kept,
and for face layers what share lies in the expressive regions: whether the points the nucleus
keeps, and the brows, eyes and mouth, are the points that change the prediction.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from .corpus_faces import regions_at
from .encoders.faces import crop_square
from .errors import InputError
from .features import FACE_SIZE
from .paths import CHECKPOINTS_DIR


def cell_centres(H: int, W: int, box: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
    """[H·W, 2] video-pixel (x, y) of each map cell's centre for a crop cut at ``box``."""
    x0, y0, side = crop_square(tuple(int(v) for v in box), frame_size[0], frame_size[1])
    rows, cols = np.divmod(np.arange(H * W), W)
    scale = side / FACE_SIZE
    x = x0 + (cols + 0.5) * (FACE_SIZE / W) * scale
    y = y0 + (rows + 0.5) * (FACE_SIZE / H) * scale
    return np.stack([x, y], 1)


def cell_luminance(crop: np.ndarray, H: int, W: int) -> np.ndarray:
    """[H·W] mean luminance (ITU-R BT.601 weights, 0–255) of a face crop [S, S, 3] (RGB; or
    [S, S, 1] gray) under each cell of an H×W map laid over it."""
    rgb = np.asarray(crop, dtype=np.float64)
    gray = rgb[..., 0] if rgb.shape[-1] == 1 else rgb @ np.array([0.299, 0.587, 0.114])  # gray crops too
    S = gray.shape[0]
    rows = np.minimum(np.arange(S) * H // S, H - 1)
    cols = np.minimum(np.arange(S) * W // S, W - 1)
    sums = np.zeros((H, W))
    np.add.at(sums, (rows[:, None], cols[None, :]), gray)
    counts = np.zeros((H, W))
    np.add.at(counts, (rows[:, None], cols[None, :]), 1.0)
    return (sums / np.maximum(counts, 1)).reshape(-1)


def in_regions(points: np.ndarray, regions: dict[str, tuple[int, int, int, int]]) -> np.ndarray:
    inside = np.zeros(len(points), bool)
    for x0, y0, x1, y1 in regions.values():
        inside |= (points[:, 0] >= x0) & (points[:, 0] < x1) & (points[:, 1] >= y0) & (points[:, 1] < y1)
    return inside


def expressive_region_share(checkpoint: str | Path | None = None, root: str | Path | None = None,
                            split: str = "test", top_p: float | None = None, limit: int | None = None,
                            device: str | None = None, attribution: bool = False) -> dict[str, Any]:
    """Per visual attention layer: share of kept cells in expressive regions vs a random mask
    (and, with ``attribution``, the Integrated Gradients shares of the module docstring)."""
    from .attribution import points_on_grid
    from .data import load_corpus
    from .paths import default_corpus_dir
    from .pipeline import Analyzer
    from .train_data import utterance_audio

    root = Path(root) if root else default_corpus_dir()
    manifest = root / "manifest.csv" if root.is_dir() else root
    faces_json = manifest.parent / "faces.json"
    if not faces_json.exists():
        raise InputError(f"No faces.json beside {manifest}: generate the corpus with --video.")
    faces = json.loads(faces_json.read_text())
    analyzer = Analyzer(checkpoint or CHECKPOINTS_DIR / "mesm_demo.safetensors", device=device)
    if not analyzer.uses_video:
        raise InputError(f"{analyzer.model_name} does not see faces.")
    utts = [u for u in load_corpus("manifest", str(manifest))
            if u.session == split and u.video is not None and Path(u.audio).stem in faces]
    utts = utts[:limit] if limit else utts
    totals: dict[str, list[float]] = {}
    used = 0
    for utt in utts:
        face = faces[Path(utt.audio).stem]
        try:
            analysis = analyzer.analyze(utterance_audio(utt), transcript=utt.transcript, video=utt.video,
                                        top_p=top_p)
        except InputError:  # no face found in this video
            continue
        extra = analysis.features.extra
        if len(extra.get("face_times", ())) == 0:
            continue
        used += 1
        shapes = analysis.trace.extras["map_shapes"]
        points = (analysis.attribution_details("integrated_gradients").extras.get("points", {})
                  if attribution else {})
        for record in analysis.trace.records:
            if record.kind != "nucleus" or record.keep is None:
                continue
            H, W = shapes[record.name]
            visual = record.query_modality == "visual"
            t = totals.setdefault(record.name, dict.fromkeys(
                ("kept_in", "kept", "in", "cells", "ig_kept", "ig", "ig_in", "kept_share", "items",
                 "lum_kept", "lum"), 0.0))
            for j, start in enumerate(record.query_labels.start):
                kept = record.keep[0, j].astype(bool)
                inside = np.zeros(kept.shape, bool)
                if visual:
                    k = int(np.argmin(np.abs(extra["face_times"] - start)))
                    frame = int(round(float(extra["face_times"][k]) * face["fps"]))
                    centres = cell_centres(H, W, extra["face_boxes"][k], tuple(face["size"]))
                    inside = in_regions(centres, regions_at(face, frame))
                    t["kept_in"] += int((kept & inside).sum())
                    t["kept"] += int(kept.sum())
                    t["in"] += int(inside.sum())
                    t["cells"] += int(inside.size)
                    lum = cell_luminance(extra["faces"][k], H, W)
                    t["lum_kept"] += float(lum[kept.reshape(-1)].sum())
                    t["lum"] += float(lum.sum())
                maps = points.get(record.query_modality)
                if maps is not None and j < len(maps):
                    magnitude = np.abs(points_on_grid(maps[j], (H, W))).reshape(-1)
                    t["ig_kept"] += float(magnitude[kept].sum())
                    t["ig"] += float(magnitude.sum())
                    t["ig_in"] += float(magnitude[inside].sum())
                    t["kept_share"] += float(kept.mean())
                    t["items"] += 1
    layers = {}
    for name, t in totals.items():
        row: dict[str, Any] = {}
        if t["cells"]:
            row.update(share_kept=t["kept_in"] / max(t["kept"], 1), share_random=t["in"] / t["cells"],
                       kept_cells=int(t["kept"]))
            if t["lum"] > 0 and t["kept"]:
                row["brightness_kept"] = (t["lum_kept"] / t["kept"]) / (t["lum"] / t["cells"])
        if t["ig"] > 0:  # Σ|IG| on kept cells / Σ|IG|, against the mean share of cells kept
            row.update(ig_share_kept=t["ig_kept"] / t["ig"], share_cells_kept=t["kept_share"] / t["items"])
            if t["cells"]:
                row.update(ig_share_regions=t["ig_in"] / t["ig"])
        if row:
            layers[name] = row
    return {"checkpoint": str(analyzer.checkpoint), "utterances": used, "split": split,
            "top_p": top_p, "attribution": "integrated_gradients" if attribution else None, "layers": layers}


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("regions", help="share of MESM's kept face points in expressive regions")
    p.add_argument("--checkpoint", default=None, help="default: checkpoints/mesm_demo.safetensors")
    p.add_argument("--root", default=None, help="demo corpus folder or manifest (with faces.json)")
    p.add_argument("--split", default="test")
    p.add_argument("--top-p", type=float)
    p.add_argument("--limit", type=int)
    p.add_argument("--device")
    p.add_argument("--attribution", action="store_true",
                   help="also Integrated Gradients per utterance: the share of it on kept cells and in the regions")
    p.add_argument("--write", action="store_true", help="store the report in the checkpoint's meta (shown in the app)")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    report = expressive_region_share(args.checkpoint, args.root, args.split, args.top_p, args.limit, args.device,
                                     args.attribution)
    print(json.dumps(report, indent=2))
    if args.write:
        from .checkpoint import update_meta

        update_meta(report["checkpoint"], {"expressive_regions": report})
    return 0
