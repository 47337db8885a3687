"""On-request Features extras: the transcript's CLS vector and face crops tied to their video."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from ser_core.audio import load_audio
from ser_core.errors import InputError
from ser_core.features import FACE_SIZE, FeatureExtractor

from conftest import SAMPLES


def _with_video():
    rows = list(csv.DictReader(open(SAMPLES / "manifest.csv")))
    row = next(r for r in rows if r["video"])
    return load_audio(SAMPLES / row["path"]), row["transcript"], SAMPLES / row["video"]


def test_sentence_and_faces_are_computed_once_and_cached(cache):
    audio, text, video = _with_video()
    fx = FeatureExtractor(device="cpu")
    report = {}
    feats = fx.extract(audio, transcript=text, video=video, extras=("sentence", "faces"), report=report)
    assert report == {"reused": False}
    assert feats.extra["sentence"].shape == (fx.text_dim,)
    n = len(feats.extra["faces"])
    assert n > 3 and feats.extra["faces"].shape[1:] == (FACE_SIZE, FACE_SIZE, 3)
    assert feats.extra["faces"].dtype == np.uint8 and np.all(np.diff(feats.extra["face_times"]) > 0)
    # a fresh extractor reads them from disk: nothing is recomputed
    fresh = FeatureExtractor(device="cpu")
    fresh._compute = fresh._compute_extra = lambda *a, **k: pytest.fail("recomputed")
    again = fresh.extract(audio, transcript=text, video=video, extras=("sentence", "faces"), report=report)
    np.testing.assert_array_equal(again.extra["faces"], feats.extra["faces"])
    assert report == {"reused": True}  # from disk
    fresh.extract(audio, transcript=text, video=video, extras=("sentence", "faces"), report=report)
    assert report == {"reused": True}  # from memory
    # the same audio without the video: no faces (recomputed for "no video", speech kept)
    fx2 = FeatureExtractor(device="cpu")
    fx2._compute = lambda *a, **k: pytest.fail("speech features must come from the cache")
    none = fx2.extract(audio, transcript=text, extras=("faces",), report=report)
    assert none.extra["faces"].shape == (0, FACE_SIZE, FACE_SIZE, 3)
    assert report == {"reused": True}  # the "no video" faces were computed, words and speech not
    assert none.key == feats.key


def test_a_video_without_a_face_is_an_input_error(cache, tmp_path):
    import cv2

    audio, text, _ = _with_video()
    path = tmp_path / "blank.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 96))
    for _ in range(20):
        writer.write(np.full((96, 96, 3), 128, np.uint8))
    writer.release()
    with pytest.raises(InputError, match="No face"):
        FeatureExtractor(device="cpu").extract(audio, transcript=text, video=path, extras=("faces",))


def test_unknown_extra_is_refused():
    with pytest.raises(ValueError, match="unknown extras"):
        FeatureExtractor(device="cpu").extract(np.zeros(16000, np.float32), extras=("nope",))


def test_the_speech_encoder_runs_beside_the_asr_when_allowed_with_the_same_features(cache, monkeypatch):
    """``overlap_speech_with_words`` (the server: no other analysis running): the speech encoder
    runs in a second thread while the words are found; the features are the same as one step
    after the other, and a failing ASR still fails the extraction at once."""
    import threading
    import time

    from ser_core import asr, features

    audio, _, _ = _with_video()
    sequential = FeatureExtractor(device="cpu", disk_cache=False).extract(audio)
    encoder = FeatureExtractor(device="cpu", disk_cache=False).speech
    encode, words_for = encoder.encode, asr.words_for
    seen: dict[str, tuple[int, float, float]] = {}

    def timed(name, fn):
        def run(*a, **k):
            start = time.monotonic()
            out = fn(*a, **k)
            time.sleep(0.3)  # long enough that the two steps must overlap to end together
            seen[name] = (threading.get_ident(), start, time.monotonic())
            return out
        return run

    monkeypatch.setattr(encoder, "encode", timed("speech", encode))
    monkeypatch.setattr(asr, "words_for", timed("words", words_for))
    allowed = []
    features.overlap_speech_with_words(lambda: allowed.append(1) or True)
    try:
        overlapped = FeatureExtractor(device="cpu", disk_cache=False).extract(audio)
        assert allowed and seen["speech"][0] != seen["words"][0]  # two threads …
        assert seen["speech"][1] < seen["words"][2] and seen["words"][1] < seen["speech"][2]  # … at once
        assert [w.text for w in overlapped.words] == [w.text for w in sequential.words]
        # the fused attention kernel's sums may split differently on another thread: rounding only
        np.testing.assert_allclose(overlapped.speech, sequential.speech, atol=1e-4)
        np.testing.assert_allclose(overlapped.text, sequential.text, atol=1e-5)

        def no_words(*a, **k):
            raise InputError("no speech")
        monkeypatch.setattr(asr, "words_for", no_words)
        with pytest.raises(InputError, match="no speech"):
            FeatureExtractor(device="cpu", disk_cache=False).extract(audio[: len(audio) // 2])
    finally:
        features.overlap_speech_with_words(None)
