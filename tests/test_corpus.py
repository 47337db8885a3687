"""The demo corpus generator: layout, labels, voice-disjoint splits, reproducibility, word times, faces."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ser_core.corpus import CLASSES, generate_corpus, plan_corpus
from ser_core.data import load_corpus
from ser_core.errors import InputError

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
SAMPLES = Path(__file__).resolve().parent.parent / "samples"


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    return generate_corpus(out, n_utterances=12, seed=3, video=True, workers=1, progress=False, force=True)


def _rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="") as f:
        return list(csv.DictReader(f))


def test_manifest_layout_labels_and_loader(small_corpus):
    rows = _rows(small_corpus)
    assert len(rows) == 12
    for column in ("path", "label", "transcript", "speaker", "split", "video", "text_emotion",
                   "conflict", "emotion_words"):
        assert column in rows[0]
    assert Counter(r["label"] for r in rows) == {c: 3 for c in CLASSES}
    utts = load_corpus("manifest", small_corpus)  # the project's own manifest loader reads it
    assert len(utts) == 12 and all(u.audio.exists() for u in utts)
    assert all(u.meta["split"] in ("train", "val", "test") for u in utts)
    summary = json.loads((small_corpus.parent / "corpus.json").read_text())
    assert summary["utterances"] == 12 and summary["seed"] == 3


def test_plans_mix_congruent_conflicting_and_wordless_text():
    plans = plan_corpus(400, seed=0, video=False)
    kinds = Counter(
        "none" if p.text_emotion == "none" else "same" if p.text_emotion == p.label else "conflict"
        for p in plans
    )
    assert kinds["same"] > kinds["conflict"] > 0 and kinds["none"] > 0
    # the words alone cannot give the label: for every class some utterances say something else
    for label in CLASSES:
        assert any(p.label == label and p.text_emotion != label for p in plans)
    # prosody differs by class on average, but the classes overlap
    pitch = {c: np.array([p.pitch for p in plans if p.label == c]) for c in CLASSES}
    assert pitch["hap"].mean() > pitch["neu"].mean() > pitch["sad"].mean()
    assert pitch["sad"].max() > pitch["neu"].min()


def test_splits_are_disjoint_by_voice():
    plans = plan_corpus(600, seed=1, video=False)
    voices = {s: {p.voice.name for p in plans if p.split == s} for s in ("train", "val", "test")}
    assert all(voices.values())
    assert not voices["train"] & voices["test"]
    assert not voices["train"] & voices["val"]
    assert not voices["val"] & voices["test"]


def test_words_decide_set_has_calm_voices_labels_from_words_and_the_same_voice_split():
    demo = plan_corpus(400, seed=0, video=False)
    words = plan_corpus(400, seed=0, video=False, words_decide=True, voice_strength=0.0)
    # the label is what the words say (no word: neutral), never a conflict
    assert all(p.text_emotion == ("none" if p.label == "neu" else p.label) for p in words)
    assert Counter(p.label for p in words) == {c: 100 for c in CLASSES}
    # at strength 0 every voice is neutral: the pitch does not follow the label
    pitch = {c: np.mean([p.pitch for p in words if p.label == c]) for c in CLASSES}
    assert max(pitch.values()) - min(pitch.values()) < 5
    demo_pitch = {c: np.mean([p.pitch for p in demo if p.label == c]) for c in CLASSES}
    assert demo_pitch["hap"] - demo_pitch["sad"] > 25
    # other utterances, the same voice → split mapping (a test voice is never a training voice)
    assert not {p.id for p in words} & {p.id for p in demo}
    assert [p.transcript for p in words[:20]] != [p.transcript for p in demo[:20]]
    split = {p.voice.name: p.split for p in demo}
    assert all(split.get(p.voice.name, p.split) == p.split for p in words)
    # a voice strength leans each calm voice part of the way towards its label's profile
    half = plan_corpus(400, seed=0, video=False, words_decide=True, voice_strength=0.5)
    half_pitch = {c: np.mean([p.pitch for p in half if p.label == c]) for c in CLASSES}
    assert half_pitch["sad"] + 4 < pitch["sad"] and half_pitch["hap"] > pitch["hap"] + 4
    assert half_pitch["hap"] < demo_pitch["hap"] - 4
    with pytest.raises(InputError, match="between 0 and 1"):
        plan_corpus(4, seed=0, video=False, words_decide=True, voice_strength=1.5)
    # the default corpus is not changed by the option's existence
    assert [(p.id, p.transcript, p.pitch) for p in demo] == \
        [(p.id, p.transcript, p.pitch) for p in plan_corpus(400, seed=0, video=False, words_decide=False)]


def test_the_words_decide_set_never_replaces_the_demo_corpus(monkeypatch, tmp_path):
    from ser_core.__main__ import build_parser

    demo = tmp_path / "demo_corpus"
    monkeypatch.setenv("SER_CORPUS_DIR", str(demo))  # where the demo corpus lives
    args = build_parser().parse_args(["corpus", "--words-decide", "--n", "4", "--out", str(demo)])
    with pytest.raises(InputError, match="own --out"):
        args.func(args)
    assert not demo.exists()


def test_same_seed_gives_identical_files(tmp_path):
    a = generate_corpus(tmp_path / "a", n_utterances=4, seed=11, workers=1, progress=False)
    b = generate_corpus(tmp_path / "b", n_utterances=4, seed=11, workers=2, progress=False)
    assert a.read_bytes() == b.read_bytes()
    for row in _rows(a):
        assert (a.parent / row["path"]).read_bytes() == (b.parent / row["path"]).read_bytes()
    c = generate_corpus(tmp_path / "c", n_utterances=4, seed=12, workers=1, progress=False)
    assert a.read_bytes() != c.read_bytes()


def test_emotion_word_times_lie_on_speech(small_corpus):
    checked = 0
    for row in _rows(small_corpus):
        audio, sr = sf.read(small_corpus.parent / row["path"], dtype="float32")
        assert sr == 16000 and audio.ndim == 1
        duration = len(audio) / sr
        words = json.loads(row["emotion_words"])
        if row["text_emotion"] == "none":
            assert words == []
            continue
        (w,) = words
        assert row["transcript"].split()[w["index"]] == w["word"]
        assert 0 <= w["start"] < w["end"] <= duration + 1e-3
        span = audio[int(w["start"] * sr): int(w["end"] * sr)]
        lead = audio[: int(0.04 * sr)]  # the synthesised leading silence (+ noise)
        assert np.sqrt(np.mean(span**2)) > 3 * np.sqrt(np.mean(lead**2)) + 1e-4
        checked += 1
    assert checked > 0


def test_face_videos_decode_with_detectable_faces_and_regions(small_corpus):
    from ser_core.encoders.faces import extract_faces

    rows = _rows(small_corpus)
    faces = json.loads((small_corpus.parent / "faces.json").read_text())
    row = rows[0]
    track = extract_faces(small_corpus.parent / row["video"], fps=5.0)
    assert track.detected.mean() >= 0.8
    import cv2

    cap = cv2.VideoCapture(str(small_corpus.parent / row["video"]))
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    assert abs(frames / fps - float(row["duration"])) < 0.2
    regions = faces[Path(row["path"]).stem]["regions"]
    assert set(regions) == {"left_brow", "right_brow", "left_eye", "right_eye", "mouth"}
    x0, y0, x1, y1 = regions["mouth"]
    bx, by, bw, bh = track.boxes[0]
    assert bx <= x0 and x1 <= bx + bw * 1.3 and by <= y0  # the mouth lies inside the detected face


def test_refuses_to_overwrite_without_force(small_corpus):
    with pytest.raises(InputError, match="--force"):
        generate_corpus(small_corpus.parent, n_utterances=2, seed=0, workers=1, progress=False)


def test_committed_samples_are_small_and_complete():
    rows = _rows(SAMPLES / "manifest.csv")
    assert Counter(r["label"] for r in rows) == {c: 3 for c in CLASSES}
    assert sum(r["conflict"] == "true" for r in rows) >= 2
    assert sum(r["text_emotion"] == "none" for r in rows) >= 2
    assert sum(bool(r["video"]) for r in rows) == 4
    total = sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file())
    assert total < 3 * 1024 * 1024


def test_force_replaces_only_the_generators_own_files(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    keep = out / "notes.txt"
    keep.write_text("not the generator's")
    with pytest.raises(InputError, match="--force"):
        generate_corpus(out, n_utterances=1, seed=0, workers=1, progress=False)
    (out / "wav").mkdir()
    stale = out / "wav" / "stale.wav"
    stale.write_bytes(b"old")
    manifest = generate_corpus(out, n_utterances=1, seed=0, workers=1, progress=False, force=True)
    assert keep.read_text() == "not the generator's"  # anything else in the folder survives
    assert not stale.exists()  # a previous run's files do not
    assert len(_rows(manifest)) == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"n_utterances": 0}, "utterances"),
    ({"n_utterances": 2, "seed": -1}, "seed"),
    ({"n_utterances": 2, "workers": 0}, "workers"),
])
def test_bad_arguments_raise_input_error(tmp_path, kwargs, message):
    with pytest.raises(InputError, match=message):
        generate_corpus(tmp_path / "x", progress=False, **kwargs)


def test_output_path_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        generate_corpus(target, n_utterances=1, progress=False, force=True)
    assert target.read_text() == "x"


def test_cli_refuses_a_non_empty_folder_and_writes_with_force(tmp_path, capsys):
    import argparse

    from ser_core.corpus import add_cli

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli"
    out.mkdir()
    (out / "other.txt").write_text("x")
    args = parser.parse_args(["corpus", "--out", str(out), "--n", "2", "--workers", "1"])
    with pytest.raises(InputError, match="--force"):
        args.func(args)
    assert not (out / "manifest.csv").exists()
    args = parser.parse_args(["corpus", "--out", str(out), "--n", "2", "--workers", "1", "--force"])
    assert args.func(args) == 0
    assert str(out / "manifest.csv") in capsys.readouterr().out
    assert len(_rows(out / "manifest.csv")) == 2


def test_samples_readme_says_how_they_were_made():
    text = (SAMPLES / "README.md").read_text()
    assert "python -m ser_core corpus --samples" in text


def test_regions_report_with_attribution(small_corpus):
    """``python -m ser_core regions --attribution``: per MESM attention layer, kept cells in the
    expressive regions against their area, and the share of Integrated Gradients they hold."""
    from collections import Counter

    from ser_core.expressive import expressive_region_share

    checkpoint = Path(__file__).resolve().parent.parent / "checkpoints" / "mesm_demo.safetensors"
    if not checkpoint.exists():
        pytest.skip("no shipped MESM checkpoint")
    split = Counter(r["split"] for r in _rows(small_corpus) if r["video"]).most_common(1)[0][0]
    report = expressive_region_share(checkpoint, small_corpus, split=split, limit=2, attribution=True)
    assert report["utterances"] >= 1 and report["attribution"] == "integrated_gradients"
    layers = report["layers"]
    assert any(name.startswith("visual.") for name in layers) and any(name.startswith("spectrogram.") for name in layers)
    for name, row in layers.items():
        assert 0 <= row["ig_share_kept"] <= 1 and 0 < row["share_cells_kept"] <= 1, (name, row)
        if name.startswith("visual."):
            assert 0 <= row["share_kept"] <= 1 and 0 < row["share_random"] < 1
            assert 0 <= row["ig_share_regions"] <= 1
            assert row["brightness_kept"] > 0  # kept cells' luminance against the whole map's


def test_cell_luminance_lays_the_map_over_the_crop():
    """A crop whose left half is white and right half black: on a 2×2 map, the left cells read 255."""
    from ser_core.expressive import cell_luminance

    crop = np.zeros((64, 64, 3), np.uint8)
    crop[:, :32] = 255
    np.testing.assert_allclose(cell_luminance(crop, 2, 2), [255, 0, 255, 0], atol=1e-6)
    np.testing.assert_allclose(cell_luminance(crop[..., :1], 4, 4).reshape(4, 4)[:, :2], 255, atol=1e-6)
    assert cell_luminance(crop, 3, 5).shape == (15,)
