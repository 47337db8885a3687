"""The Analyzer keeps each utterance's feature-extraction output for slider reruns, bounded by
count and by bytes (a long clip's maps are large), least recently used first out."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHECKPOINT = REPO / "checkpoints" / "ks_transformer_demo.safetensors"
SAMPLE = next(csv.DictReader(open(REPO / "samples" / "manifest.csv")))


@pytest.mark.skipif(not CHECKPOINT.exists(), reason="shipped checkpoint missing")
def test_extraction_outputs_are_kept_by_count_and_bytes_newest_always(cache, monkeypatch):
    from ser_core import pipeline

    analyzer = pipeline.Analyzer(CHECKPOINT, device="cpu")
    feats = analyzer.analyze(REPO / "samples" / SAMPLE["path"], transcript=SAMPLE["transcript"]).features
    one = pipeline._tensor_bytes(analyzer._extracted[feats.key])
    assert one > 0
    f1, f2, f3 = (dataclasses.replace(feats, key=f"utterance {i}") for i in (1, 2, 3))

    monkeypatch.setattr(pipeline, "MAX_EXTRACTED_BYTES", one + 1)  # room for one
    analyzer.run_model(f1)
    analyzer.run_model(f2)
    assert list(analyzer._extracted) == [f2.key]
    extract = analyzer.model.extract
    monkeypatch.setattr(analyzer.model, "extract", lambda *a, **k: pytest.fail("extracted again"))
    again = analyzer.run_model(f2, keep_ratio=0.3)  # a slider move: the kept output is reused
    assert again.trace.records
    monkeypatch.setattr(analyzer.model, "extract", extract)

    monkeypatch.setattr(pipeline, "MAX_EXTRACTED_BYTES", 100 * one)
    monkeypatch.setattr(pipeline, "MAX_EXTRACTED", 2)
    analyzer.run_model(f1)  # [f2, f1]
    analyzer.run_model(f2)  # used again: [f1, f2]
    analyzer.run_model(f3)  # [f1, f2, f3] → the least recently used goes
    assert list(analyzer._extracted) == [f2.key, f3.key]

    monkeypatch.setattr(pipeline, "MAX_EXTRACTED_BYTES", 1)  # even over the bytes: the newest stays
    analyzer.run_model(f1)
    assert list(analyzer._extracted) == [f1.key]


@pytest.mark.skipif(not CHECKPOINT.exists(), reason="shipped checkpoint missing")
def test_a_clip_too_long_to_explain_keeps_its_maps_at_display_resolution(cache, monkeypatch):
    """Past the explanation limit, every big map is kept max-pooled (labels, key scores and keep
    masks whole); the views draw it as they would the full map, the slider still reruns, and the
    kept extraction output is small too."""
    import numpy as np

    from ser_core import pipeline, viz
    from ser_core.errors import InputError

    analyzer = pipeline.Analyzer(CHECKPOINT, device="cpu")
    clip = REPO / "samples" / SAMPLE["path"]
    full = analyzer.analyze(clip, transcript=SAMPLE["transcript"])
    assert not any(r.pooled for r in full.trace.records)  # a short clip: full maps
    monkeypatch.setenv("SER_MAX_EXPLAIN_SECONDS", "1")
    monkeypatch.setattr(pipeline, "POOLED_CELLS", 40)
    feats = dataclasses.replace(full.features, key="the same clip, too long to explain")
    long = analyzer.run_model(feats)
    assert all(r.weights.nbytes < 8 * 41 * 41 * 8 for r in long.trace.records)
    assert pipeline._tensor_bytes(analyzer._extracted[feats.key]) < pipeline._tensor_bytes(
        analyzer._extracted[full.features.key])
    np.testing.assert_allclose(long.probs, full.probs, atol=1e-5)  # pooling changes what is kept, not the model
    for pooled in long.trace.records:
        whole = full.trace[pooled.name]
        assert pooled.query_labels.names == whole.query_labels.names
        np.testing.assert_array_equal(pooled.keep, whole.keep)
        np.testing.assert_allclose(pooled.key_scores, whole.key_scores, rtol=1e-5, atol=1e-7)
        blocks = pooled.pool
        assert pooled.weights.shape[1:] == tuple(-(-n // b) for n, b in zip(whole.weights.shape[1:], blocks))
        if pooled.pooled:
            i, j = min(2, pooled.weights.shape[1] - 1), min(1, pooled.weights.shape[2] - 1)
            block = whole.weights[:, i * blocks[0]:(i + 1) * blocks[0], j * blocks[1]:(j + 1) * blocks[1]]
            np.testing.assert_allclose(pooled.weights[:, i, j], block.max(axis=(1, 2)), rtol=1e-5)
        # the heatmap of one head at 40 cells: the same picture from the pooled and the full map
        a, b = (viz.attention_heatmap(r, 1, max_cells=40) for r in (pooled, whole))
        np.testing.assert_allclose(np.asarray(a.data[0].z, float), np.asarray(b.data[0].z, float), rtol=1e-5)
        assert list(a.data[0].x) == list(b.data[0].x) and a.layout.title.text == b.layout.title.text
    name = next(r.name for r in long.trace.records if r.pooled and r.keep is not None)
    rows = viz.record_to_csv(long.trace[name]).splitlines()
    assert len(rows) == 1 + long.trace[name].weights.shape[1] * long.trace[name].weights.shape[2]
    assert "…" in rows[1]  # a block's first…last label
    moved = long.rerun(keep_ratio=0.3)
    assert any(r.pooled for r in moved.trace.records) and moved.trace[name].keep_ratio == pytest.approx(0.3)
    with pytest.raises(InputError):
        moved.attribution("rollout")
