"""What "kept" means, on every page: a key (a word or a speech frame) that at least half of the
heads of a sparse layer keep. The word chips, the waveform's shaded speech and the classroom
view's sentence all come from these functions.

The classroom view shows the first sparse layer over words and the first over speech frames, and
says in one sentence what the model heard and what it kept to decide it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .trace import AttentionRecord


@dataclass
class KeptSummary:
    """What the chosen layers kept: the words, the speech time, and the layers' names."""

    words: list[str]
    n_words: int
    kept_seconds: float | None
    speech_seconds: float
    word_layer: str | None
    frame_layer: str | None


def first_sparse_record(trace, key_kind: str) -> AttentionRecord | None:
    """The first layer whose keys are ``key_kind`` (words / frames) and that drops some of them."""
    for record in trace.records:
        if record.key_labels.kind == key_kind and record.keep is not None:
            return record
    return None


MOST_HEADS = 0.5  # a key is "kept" when at least this share of the layer's heads keep it


def most_heads(per_head: np.ndarray) -> np.ndarray:
    """[heads, ...] bool → [...] bool: kept by at least half of the heads."""
    return np.asarray(per_head, dtype=bool).mean(axis=0) >= MOST_HEADS


def kept_by_most_heads(record: AttentionRecord | None) -> np.ndarray | None:
    """[keys] bool: kept by at least half of the heads (None when the layer keeps everything)."""
    if record is None or record.keep is None or record.keep.ndim != 2:
        return None
    return most_heads(record.keep)


def kept_spans(record: AttentionRecord | None) -> list[tuple[float, float]] | None:
    """Time spans of the frames kept by most heads, merged where they touch (None when the
    layer drops nothing or its keys have no times)."""
    if kept_by_most_heads(record) is None or record.key_labels.start is None:
        return None
    from .viz.audio import kept_intervals  # the waveform and spectrogram views use the same spans

    return kept_intervals(record, "mean")


def kept_summary(analysis) -> KeptSummary:
    """The kept words and speech time of ``analysis`` (an ``Analysis``), by most heads."""
    feats = analysis.features
    word_record = first_sparse_record(analysis.trace, "words")
    frame_record = first_sparse_record(analysis.trace, "frames")
    words = list(feats.words or [])
    kept_words: list[str] = []
    keep = kept_by_most_heads(word_record)
    if keep is not None and len(keep) == len(words):
        kept_words = [w.text for w, k in zip(words, keep) if k]
    spans = kept_spans(frame_record)
    kept_seconds = None if spans is None else float(sum(end - start for start, end in spans))
    return KeptSummary(kept_words, len(words), kept_seconds, float(feats.duration),
                       word_record.name if word_record else None,
                       frame_record.name if frame_record else None)


def explanation(emotion: str, confidence: float, kept: KeptSummary) -> str:
    """One sentence: what the model heard and what its sparse attention kept to decide it."""
    sentence = f"The model hears {emotion} ({confidence:.0%} sure)"
    parts = []
    if kept.word_layer is not None and kept.n_words:
        if kept.words:
            shown = ", ".join(f"“{w}”" for w in kept.words[:6]) + (" …" if len(kept.words) > 6 else "")
            parts.append(f"{len(kept.words)} of its {kept.n_words} words ({shown})")
        else:
            parts.append(f"none of its {kept.n_words} words")
    if kept.kept_seconds is not None:
        parts.append(f"{kept.kept_seconds:.1f} s of the {kept.speech_seconds:.1f} s of sound (green below)")
    if not parts:
        return sentence + "."
    return sentence + "; to decide, it kept " + " and ".join(parts) + "."
