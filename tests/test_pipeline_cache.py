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
