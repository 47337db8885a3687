"""Corpus loaders against miniature corpora written in each corpus's real layout."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

import soundfile as sf

from fixtures.corpora import (
    TESS_TOP,
    build_cremad,
    build_iemocap,
    build_manifest,
    build_meld,
    build_ravdess,
    build_savee,
    build_tess,
    write_wav,
)
from ser_core.data import CORPORA, Utterance, cremad, iemocap, load_corpus, manifest, meld, ravdess, savee, tess
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


def test_ravdess_flac(tmp_path):
    utts = by_id(ravdess.load(build_ravdess(tmp_path, suffix=".flac")))
    assert utts.keys() == by_id(ravdess.load(build_ravdess(tmp_path / "wav"))).keys()
    angry = utts["03-01-05-02-02-01-01"]
    assert angry.audio == tmp_path / "Audio_Speech_Actors_01-24/Actor_01/03-01-05-02-02-01-01.flac"
    assert sf.info(angry.audio).format == "FLAC"
    assert (angry.label, angry.speaker, angry.transcript) == ("ang", "Actor_01", "Dogs are sitting by the door")
    assert angry.video == tmp_path / "Video_Speech_Actor_01/Actor_01/01-01-05-02-02-01-01.mp4"
    assert utts["03-01-08-02-01-02-02"].audio.suffix == ".flac"
    assert utts["03-01-07-01-02-02-01"].audio.suffix == ".mp4"  # AV-only recording: still its mp4
    song = ravdess.load(tmp_path, vocal_channel="song")
    assert [(u.id, u.audio.suffix) for u in song] == [("03-02-04-01-01-01-01", ".flac")]


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


# --------------------------------------------------------------------------------------- TESS
TESS_IDS = {
    "OAF_back_ang": "ang", "OAF_bath_ang": "ang", "YAF_back_ang": "ang",
    "OAF_back_sur": "sur", "OAF_chalk_sur": "sur", "YAF_back_sur": "sur",
    "OAF_bean_fea": "fea", "YAF_bean_dis": "dis",
    "YAF_date_neu": "neu", "YAF_back_neu": "neu",
    "OAF_youth_hap": "hap", "OAF_back_sad": "sad",
}


def test_tess(tmp_path):
    build_tess(tmp_path)
    with pytest.warns(UserWarning, match=r"TESS: skipped 1 utterance.*YAF_back_angry \(1\)\.wav"):
        utts = by_id(tess.load(tmp_path))
    assert {k: u.label for k, u in utts.items()} == TESS_IDS
    top = tmp_path / TESS_TOP
    back = utts["OAF_back_ang"]
    assert back.audio == top / "OAF_angry" / "OAF_back_angry.wav"
    assert back.transcript == "Say the word back"
    assert (back.speaker, back.session, back.start, back.end, back.video) == ("OAF", "OAF", None, None, None)
    assert back.meta["gender"] == "female" and back.meta["word"] == "back"
    assert {u.speaker for u in utts.values()} == {"OAF", "YAF"}
    assert all(u.speaker == u.session == u.id[:3] for u in utts.values())
    assert all(u.transcript == f"Say the word {u.meta['word']}" for u in utts.values())
    # pleasant surprise: "ps" in file names, folders spelled two ways
    assert utts["YAF_back_sur"].audio == top / "YAF_pleasant_surprised" / "YAF_back_ps.wav"
    assert utts["OAF_chalk_sur"].audio.parent.name == "OAF_Pleasant_surprise"
    # mixed-case names: the word is lower-cased, the emotion read regardless of case
    bath = utts["OAF_bath_ang"]
    assert bath.audio.name == "OAF_Bath_angry.wav" and bath.transcript == "Say the word bath"
    date = utts["YAF_date_neu"]
    assert date.audio.name == "YAF_date_Neutral.wav" and date.label == "neu" and date.transcript == "Say the word date"
    assert utts["OAF_bean_fea"].audio.parent.name == "OAF_Fear"


def test_tess_inner_folder_and_dispatch(tmp_path):
    build_tess(tmp_path)
    with pytest.warns(UserWarning, match="skipped 1"):
        outer = tess.load(tmp_path)
    with pytest.warns(UserWarning, match="skipped 1"):
        inner = tess.load(tmp_path / TESS_TOP)
    with pytest.warns(UserWarning, match="skipped 1"):
        dispatched = load_corpus("TESS", tmp_path / TESS_TOP)
    assert inner == outer == dispatched and len(inner) == len(TESS_IDS)


def test_tess_bad_roots(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        tess.load(tmp_path / "nowhere")
    with pytest.raises(InputError, match="TESS: no usable utterances.*TESS layout"):
        tess.load(tmp_path)
    write_wav(tmp_path / "OAF_angry" / "back.wav")
    with pytest.warns(UserWarning, match="skipped 1"):
        with pytest.raises(InputError, match="OAF_back_angry.wav"):
            tess.load(tmp_path)


# -------------------------------------------------------------------------------------- SAVEE
SAVEE_IDS = {
    "DC_a01": "ang", "DC_sa01": "sad", "DC_su15": "sur", "DC_n30": "neu",
    "JE_d02": "dis", "JE_sa03": "sad",
    "JK_f05": "fea", "JK_su01": "sur",
    "KL_h10": "hap", "KL_n01": "neu",
}


@pytest.mark.parametrize("layout, stray", [("nested", r"x01\.wav"), ("flat", r"XY_a01\.wav")])
def test_savee(tmp_path, layout, stray):
    build_savee(tmp_path, layout=layout)
    with pytest.warns(UserWarning, match=rf"SAVEE: skipped 1 utterance.*{stray}"):
        utts = by_id(savee.load(tmp_path))
    assert {k: u.label for k, u in utts.items()} == SAVEE_IDS
    assert {u.speaker for u in utts.values()} == {"DC", "JE", "JK", "KL"}
    assert all(u.session == u.speaker == u.id[:2] for u in utts.values())
    assert all(u.transcript is None and u.meta["gender"] == "male" for u in utts.values())
    sad, sur = utts["DC_sa01"], utts["JK_su01"]
    assert (sad.meta["emotion_code"], sur.meta["emotion_code"]) == ("sa", "su")
    if layout == "nested":
        assert sad.audio == tmp_path / "AudioData" / "DC" / "sa01.wav"
        assert sur.audio == tmp_path / "AudioData" / "JK" / "su01.wav"
    else:
        assert sad.audio == tmp_path / "ALL" / "DC_sa01.wav"
        assert sur.audio == tmp_path / "ALL" / "JK_su01.wav"
    assert (sad.start, sad.end, sad.video) == (None, None, None)


def test_savee_inner_folders_and_dispatch(tmp_path):
    build_savee(tmp_path / "n", layout="nested")
    build_savee(tmp_path / "f", layout="flat")
    with pytest.warns(UserWarning):
        flat = savee.load(tmp_path / "f" / "ALL")  # the folder of files itself
    with pytest.warns(UserWarning):
        nested = load_corpus("SAVEE", tmp_path / "n" / "AudioData")
    assert [(u.id, u.label, u.speaker) for u in flat] == [(u.id, u.label, u.speaker) for u in nested]
    one = savee.load(tmp_path / "n" / "AudioData" / "KL")  # one speaker's folder
    assert sorted(u.id for u in one) == ["KL_h10", "KL_n01"]


def test_savee_both_layouts_under_one_root_keep_one_copy(tmp_path):
    build_savee(tmp_path, layout="nested")
    build_savee(tmp_path, layout="flat")
    with pytest.warns(UserWarning) as record:
        utts = by_id(savee.load(tmp_path))
    assert set(utts) == set(SAVEE_IDS)
    assert any("skipped 10 utterance(s): same recording" in str(w.message) for w in record)


def test_savee_bad_roots(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        savee.load(tmp_path / "nowhere")
    with pytest.raises(InputError, match="SAVEE: no usable utterances.*SAVEE layout"):
        savee.load(tmp_path)
    write_wav(tmp_path / "AudioData" / "XX" / "a01.wav")  # not a SAVEE speaker
    write_wav(tmp_path / "AudioData" / "DC" / "a1.wav")  # one digit
    with pytest.warns(UserWarning, match="skipped 2"):
        with pytest.raises(InputError, match="DC_a01.wav"):
            savee.load(tmp_path)


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
    assert CORPORA == ("iemocap", "ravdess", "cremad", "meld", "tess", "savee", "manifest")
    build_ravdess(tmp_path / "r")
    assert load_corpus("RAVDESS", tmp_path / "r") == ravdess.load(tmp_path / "r")
    top = build_cremad(tmp_path / "c")
    with pytest.warns(UserWarning):
        assert len(load_corpus("CREMA-D", top)) == 5
    build_tess(tmp_path / "t")
    with pytest.warns(UserWarning):
        assert load_corpus("tess", tmp_path / "t") == tess.load(tmp_path / "t")
    build_savee(tmp_path / "s", layout="flat")
    with pytest.warns(UserWarning):
        assert [u.id for u in load_corpus("savee", tmp_path / "s")] == sorted(SAVEE_IDS)
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
