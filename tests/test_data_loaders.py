"""Corpus loaders against miniature corpora written in each corpus's real layout."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from fixtures.corpora import build_cremad, build_iemocap, build_manifest, build_meld, build_ravdess, write_wav
from ser_core.data import CORPORA, Utterance, cremad, iemocap, load_corpus, manifest, meld, ravdess
from ser_core.errors import InputError


def by_id(utts: list[Utterance]) -> dict[str, Utterance]:
    assert len({u.id for u in utts}) == len(utts), "ids must be unique"
    return {u.id: u for u in utts}


# ------------------------------------------------------------------------------------ IEMOCAP
def test_iemocap_four_classes_merges_exc_into_hap(tmp_path):
    release = build_iemocap(tmp_path)
    with pytest.warns(UserWarning, match=r"skipped 1 utterance.*Ses01F_impro01_M002"):
        utts = by_id(iemocap.load(release, classes=4))
    assert sorted(utts) == sorted([
        "Ses01F_impro01_F000", "Ses01F_impro01_M000", "Ses01F_impro01_F001",
        "Ses01M_script01_1b_M000", "Ses01M_script01_1b_F000",
        "Ses02F_impro02_F000", "Ses02F_impro02_M000", "Ses02F_impro02_M001",
    ])
    assert {u.label for u in utts.values()} == {"ang", "hap", "sad", "neu"}
    assert utts["Ses01F_impro01_M000"].label == "hap"
    assert utts["Ses01F_impro01_M000"].meta["original_label"] == "exc"
    assert utts["Ses02F_impro02_M000"].label == "hap"
    assert utts["Ses01F_impro01_F001"].label == "ang"


def test_iemocap_six_classes_keeps_exc_and_fru(tmp_path):
    release = build_iemocap(tmp_path)
    with pytest.warns(UserWarning, match="skipped 1"):
        utts = by_id(iemocap.load(release, classes=6))
    assert len(utts) == 9
    assert utts["Ses01F_impro01_M000"].label == "exc"
    assert utts["Ses01F_impro01_F002"].label == "fru"
    assert "Ses01F_impro01_M001" not in utts  # xxx is dropped


def test_iemocap_fields(tmp_path):
    build_iemocap(tmp_path)
    with pytest.warns(UserWarning):
        utts = by_id(iemocap.load(tmp_path))  # the folder holding IEMOCAP_full_release works too
    first = utts["Ses01F_impro01_F000"]
    session1 = tmp_path / "IEMOCAP_full_release" / "Session1"
    assert first.audio == session1 / "sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav"
    assert first.transcript == "Excuse me."
    assert (first.start, first.end) == (6.2901, 8.2357)
    assert first.speaker == "Ses01F" and first.session == "Session1"
    assert first.video == session1 / "dialog/avi/DivX/Ses01F_impro01.avi"
    assert (first.meta["valence"], first.meta["arousal"], first.meta["dominance"]) == (2.5, 3.0, 3.5)
    # The speaker comes from the utterance's own gender letter, not the dialog name's.
    assert utts["Ses01F_impro01_M000"].speaker == "Ses01M"
    assert utts["Ses01M_script01_1b_F000"].speaker == "Ses01F"
    assert utts["Ses01M_script01_1b_F000"].transcript is None
    assert utts["Ses01M_script01_1b_M000"].video is None
    assert utts["Ses02F_impro02_M001"].session == "Session2"
    assert utts["Ses02F_impro02_M001"].speaker == "Ses02M"


def test_iemocap_bad_roots(tmp_path):
    with pytest.raises(InputError, match="no Session1..5 folders found"):
        iemocap.load(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        iemocap.load(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        iemocap.load(tmp_path / "file.txt")
    (tmp_path / "Session1" / "sentences").mkdir(parents=True)
    with pytest.raises(InputError, match="EmoEvaluation"):
        iemocap.load(tmp_path)
    with pytest.raises(InputError, match="classes must be 4 or 6"):
        iemocap.load(tmp_path, classes=5)


def test_iemocap_no_wavs_at_all_is_an_input_error(tmp_path):
    release = build_iemocap(tmp_path)
    for wav in release.rglob("*.wav"):
        wav.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError, match="no usable utterances"):
            iemocap.load(release)


# ------------------------------------------------------------------------------------ RAVDESS
def test_ravdess(tmp_path):
    utts = by_id(ravdess.load(build_ravdess(tmp_path)))
    assert sorted(utts) == sorted([
        "03-01-01-01-01-01-01", "03-01-05-02-02-01-01", "03-01-03-01-01-02-01",
        "03-01-07-01-02-02-01", "03-01-02-01-02-01-02", "03-01-08-02-01-02-02",
    ])
    labels = {k: u.label for k, u in utts.items()}
    assert labels == {
        "03-01-01-01-01-01-01": "neu", "03-01-05-02-02-01-01": "ang", "03-01-03-01-01-02-01": "hap",
        "03-01-07-01-02-02-01": "dis", "03-01-02-01-02-01-02": "cal", "03-01-08-02-01-02-02": "sur",
    }
    angry = utts["03-01-05-02-02-01-01"]
    assert angry.transcript == "Dogs are sitting by the door"
    assert angry.speaker == angry.session == "Actor_01"
    assert angry.audio == tmp_path / "Audio_Speech_Actors_01-24/Actor_01/03-01-05-02-02-01-01.wav"
    assert angry.video == tmp_path / "Video_Speech_Actor_01/Actor_01/01-01-05-02-02-01-01.mp4"
    assert angry.meta["intensity"] == "strong" and angry.meta["gender"] == "male"
    assert (angry.start, angry.end) == (None, None)
    # A recording present only as full audio-video mp4: its audio track is the audio.
    disgust = utts["03-01-07-01-02-02-01"]
    assert disgust.audio == disgust.video and disgust.audio.suffix == ".mp4"
    calm = utts["03-01-02-01-02-01-02"]
    assert calm.transcript == "Dogs are sitting by the door" and calm.speaker == "Actor_02"
    assert calm.meta["gender"] == "female" and calm.video is None
    assert utts["03-01-01-01-01-01-01"].transcript == "Kids are talking by the door"


def test_ravdess_song_channel(tmp_path):
    build_ravdess(tmp_path)
    song = ravdess.load(tmp_path, vocal_channel="song")
    assert [(u.id, u.label, u.meta["vocal_channel"]) for u in song] == [("03-02-04-01-01-01-01", "sad", "song")]
    assert len(ravdess.load(tmp_path, vocal_channel="all")) == 7
    with pytest.raises(InputError, match="vocal_channel"):
        ravdess.load(tmp_path, vocal_channel="choir")


def test_ravdess_bad_roots(tmp_path):
    with pytest.raises(InputError, match="no Actor_XX folders"):
        ravdess.load(tmp_path)
    (tmp_path / "Actor_01").mkdir()
    (tmp_path / "Actor_01" / "hello.wav").write_bytes(b"")
    with pytest.raises(InputError, match="RAVDESS layout"):
        ravdess.load(tmp_path)


# ------------------------------------------------------------------------------------ CREMA-D
def test_cremad(tmp_path):
    top = build_cremad(tmp_path)
    with pytest.warns(UserWarning, match=r"skipped 1 utterance.*1076_MTI_SAD_XX"):
        utts = by_id(cremad.load(top))
    assert sorted(utts) == ["1001_DFA_ANG_XX", "1001_IEO_HAP_HI", "1002_ITH_NEU_XX", "1002_TIE_SAD_LO", "1091_WSI_FEA_MD"]
    first = utts["1001_DFA_ANG_XX"]
    assert (first.label, first.transcript, first.speaker, first.session) == ("ang", "Don't forget a jacket", "1001", "1001")
    assert first.video == top / "VideoFlash" / "1001_DFA_ANG_XX.flv"
    assert first.meta["sex"] == "Male" and first.meta["level"] == "unspecified"
    assert utts["1002_ITH_NEU_XX"].transcript == "I think I have a doctor's appointment"
    assert utts["1002_TIE_SAD_LO"].meta["level"] == "low" and utts["1002_TIE_SAD_LO"].meta["sex"] == "Female"
    fear = utts["1091_WSI_FEA_MD"]
    assert (fear.label, fear.transcript, fear.video) == ("fea", "We'll stop in a couple of minutes", None)
    assert "sex" not in fear.meta


def test_cremad_audiowav_folder_directly(tmp_path):
    top = build_cremad(tmp_path)
    with pytest.warns(UserWarning):
        utts = cremad.load(top / "AudioWAV")
    assert len(utts) == 5


def test_cremad_bad_root(tmp_path):
    (tmp_path / "something.wav").write_bytes(b"")
    with pytest.raises(InputError, match="no AudioWAV folder"):
        cremad.load(tmp_path)


# --------------------------------------------------------------------------------------- MELD
def test_meld(tmp_path):
    build_meld(tmp_path)
    with pytest.warns(UserWarning, match=r"skipped 1 utterance.*test/dia0_utt2"):
        utts = by_id(meld.load(tmp_path))
    assert sorted(utts) == sorted([
        "train_dia0_utt0", "train_dia0_utt1", "train_dia1_utt0", "dev_dia0_utt0", "test_dia0_utt0", "test_dia0_utt1",
    ])
    raw = tmp_path / "MELD.Raw"
    joey = utts["train_dia0_utt0"]
    assert joey.transcript == "Oh my God, he\u2019s lost it."  # mojibake repaired
    assert (joey.label, joey.speaker, joey.session) == ("sur", "Joey", "train")
    assert joey.audio == joey.video == raw / "train_splits" / "dia0_utt0.mp4"
    assert (joey.start, joey.end) == (None, None)
    assert joey.meta["episode_start"] == pytest.approx(878.127)
    assert joey.meta["episode_end"] == pytest.approx(880.0)
    assert (joey.meta["season"], joey.meta["episode"], joey.meta["sentiment"], joey.meta["split"]) == (3, 19, "negative", "train")
    assert utts["train_dia0_utt1"].label == "hap" and utts["train_dia0_utt1"].speaker == "Monica Geller"
    ross = utts["train_dia1_utt0"]
    assert ross.transcript == 'No, I said "fine".' and ross.label == "ang"
    assert ross.audio == raw / "train_splits_wav" / "dia1_utt0.wav" and ross.video is None
    rachel = utts["dev_dia0_utt0"]
    assert rachel.transcript == "I can\u2019t." and rachel.session == "dev" and rachel.label == "sad"
    assert rachel.audio == raw / "dev" / "dev_splits_complete" / "dia0_utt0.mp4"
    phoebe = utts["test_dia0_utt0"]
    assert phoebe.transcript == "Wait\u2026 it\u2019s you?" and phoebe.label == "fea"
    assert utts["test_dia0_utt1"].label == "dis"


def test_meld_one_split_and_bad_input(tmp_path):
    raw = build_meld(tmp_path) / "MELD.Raw"
    with pytest.warns(UserWarning):
        test = meld.load(raw, splits=("test",))
    assert {u.session for u in test} == {"test"} and len(test) == 2
    with pytest.raises(InputError, match="unknown split"):
        meld.load(raw, splits=("validation",))
    (raw / "train_sent_emo.csv").write_text(
        "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID\n1,Hm.,Joey,boredom,neutral,0,0\n"
    )
    with pytest.raises(InputError, match=r"line 2.*boredom"):
        meld.load(raw, splits=("train",))
    (raw / "train_sent_emo.csv").write_text("Sr No.,Utterance,Speaker\n1,Hm.,Joey\n")
    with pytest.raises(InputError, match="lacks the column"):
        meld.load(raw, splits=("train",))
    with pytest.raises(InputError, match="sent_emo.csv"):
        meld.load(tmp_path / "MELD.Raw" / "train_splits")


def test_meld_fix_text():
    assert meld.fix_text("caf\u00e9") == "caf\u00e9"  # real Latin-1 text stays
    assert meld.fix_text("he\u00e2\u20ac\u2122s") == "he\u2019s"  # cp1252 mojibake
    assert meld.fix_text("a\u00a0b\u0093c\u0094") == "a b\u201cc\u201d"
    assert meld.parse_time("00:14:38,127") == pytest.approx(878.127)
    assert meld.parse_time("bad") is None


# ----------------------------------------------------------------------------------- manifest
def test_manifest(tmp_path):
    csv_path = build_manifest(tmp_path / "demo")
    utts = by_id(manifest.load(csv_path))
    assert sorted(utts) == ["wav/a", "wav/b", "wav/c"]
    a, b, c = utts["wav/a"], utts["wav/b"], utts["wav/c"]
    assert a.audio == tmp_path / "demo" / "wav" / "a.wav"
    assert (a.label, a.transcript, a.speaker, a.session) == ("hap", "What a lovely day", "s1", "train")
    assert a.meta == {"emotion_words": ["lovely"], "text_emotion": "hap", "split": "train"}
    assert (b.label, b.start, b.end, b.session) == ("ang", 0.5, 1.25, "dev")
    assert b.meta["emotion_words"] == []
    assert c.transcript is None and c.meta["emotion_words"] == '{"bad": 1' and c.meta["text_emotion"] is None
    assert manifest.load(tmp_path / "demo") == list(utts.values())  # a folder holding manifest.csv


def test_manifest_absolute_paths_ids_and_missing_audio(tmp_path):
    elsewhere = write_wav(tmp_path / "elsewhere" / "x.wav")
    rows = [
        {"path": str(elsewhere), "label": "neu", "id": "x1", "session": "fold1", "video": "v.mp4"},
        {"path": "missing/y.wav", "label": "sad", "id": "y1", "session": "fold2", "video": ""},
    ]
    csv_path = build_manifest(tmp_path / "m", rows)
    with pytest.warns(UserWarning) as record:
        utts = manifest.load(csv_path)
    messages = " ".join(str(w.message) for w in record)
    assert "skipped 1 utterance(s): audio file missing (y1)" in messages
    assert "video file that does not exist" in messages
    assert [(u.id, u.audio, u.session, u.video, u.speaker) for u in utts] == [("x1", elsewhere, "fold1", None, "")]


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"path": "a.wav", "label": "hap"}, {"path": "b.wav", "label": "boredom"}], r"row 3.*unknown label 'boredom'"),
        ([{"path": "a.wav", "label": "hap", "start": "soon"}], r"row 2.*start 'soon'"),
        ([{"path": "a.wav", "label": "hap", "start": "2", "end": "1"}], "before start"),
        ([{"path": "a.wav", "label": "hap", "id": "u"}, {"path": "b.wav", "label": "sad", "id": "u"}], "repeats row 2"),
        ([{"file": "a.wav", "label": "hap"}], "lacks the column"),
    ],
)
def test_manifest_bad_rows(tmp_path, rows, message):
    csv_path = build_manifest(tmp_path, rows)
    with pytest.raises(InputError, match=message):
        manifest.load(csv_path)


def test_manifest_bad_paths(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        manifest.load(tmp_path / "none.csv")
    (tmp_path / "bin.csv").write_bytes(b"\x00\x01\x02path,label")
    with pytest.raises(InputError, match="not a text CSV"):
        manifest.load(tmp_path / "bin.csv")


# ------------------------------------------------------------------------- dispatch and record
def test_load_corpus_dispatch(tmp_path):
    assert CORPORA == ("iemocap", "ravdess", "cremad", "meld", "manifest")
    build_ravdess(tmp_path / "r")
    assert load_corpus("RAVDESS", tmp_path / "r") == ravdess.load(tmp_path / "r")
    top = build_cremad(tmp_path / "c")
    with pytest.warns(UserWarning):
        assert len(load_corpus("CREMA-D", top)) == 5
    with pytest.raises(InputError, match="Unknown corpus 'timit'"):
        load_corpus("timit", tmp_path)
    with pytest.raises(InputError, match="unknown option.*clases"):
        load_corpus("iemocap", tmp_path, clases=4)


def test_utterance_meta_ignored_by_eq_and_hash():
    one = Utterance("u1", Path("a.wav"), None, "hap", "s1", "train", meta={"x": [1]})
    two = Utterance("u1", Path("a.wav"), None, "hap", "s1", "train", meta={"x": [2]})
    assert one == two and hash(one) == hash(two) and len({one, two}) == 1
    assert one != Utterance("u1", Path("a.wav"), None, "sad", "s1", "train")
    with pytest.raises(AttributeError):
        one.label = "sad"  # frozen
