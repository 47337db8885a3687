"""Evaluation protocols: folds are partitions, val comes only from the training part."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import pytest

from fixtures.corpora import build_iemocap, build_manifest
from ser_core.data import (
    Fold,
    Utterance,
    iemocap,
    leave_one_session_out,
    leave_one_speaker_out,
    manifest,
    predefined_split,
    stratified_split,
)
from ser_core.errors import InputError

LABELS4 = ("ang", "hap", "sad", "neu")


def make_corpus(sessions: int = 3, speakers_per_session: int = 2, per_label: int = 5) -> list[Utterance]:
    """sessions x speakers x 4 labels x per_label utterances (no files needed for splitting)."""
    utts = []
    for s in range(1, sessions + 1):
        for g in "FM"[:speakers_per_session]:
            for label in LABELS4:
                for i in range(per_label):
                    uid = f"S{s}{g}_{label}_{i}"
                    utts.append(Utterance(uid, Path(f"{uid}.wav"), None, label, f"S{s}{g}", f"Session{s}"))
    return utts


def ids(part) -> set[str]:
    return {u.id for u in part}


def check_fold(fold: Fold, corpus: list[Utterance], expected_test: set[str]) -> None:
    """The protocol's invariants for one fold."""
    assert ids(fold.test) == expected_test, "the test fold is exactly the held-out group, untouched"
    train_part = ids(corpus) - expected_test
    assert ids(fold.val) <= train_part, "val is carved from the training part only"
    assert ids(fold.train) | ids(fold.val) == train_part, "train + val cover the training part"
    assert not ids(fold.train) & ids(fold.val)
    assert not ids(fold.train) & ids(fold.test)
    assert not ids(fold.val) & ids(fold.test)
    assert len(fold.train) + len(fold.val) + len(fold.test) == len(corpus)


@pytest.mark.parametrize("group_val_by_speaker", [False, True])
def test_leave_one_session_out(group_val_by_speaker):
    corpus = make_corpus()
    folds = leave_one_session_out(corpus, val_size=0.25, seed=3, group_val_by_speaker=group_val_by_speaker)
    assert [f.name for f in folds] == ["Session1", "Session2", "Session3"]
    for fold in folds:
        check_fold(fold, corpus, {u.id for u in corpus if u.session == fold.name})
        assert fold.val, "a 25% validation part is not empty"
        if group_val_by_speaker:
            assert not {u.speaker for u in fold.val} & {u.speaker for u in fold.train}
            assert len({u.speaker for u in fold.val}) == 1  # 4 training speakers, 1/4 held out
        else:
            # 80 training utterances, 20 per label: a stratified 25% is exactly 5 per label.
            assert Counter(u.label for u in fold.val) == {label: 5 for label in LABELS4}


def test_leave_one_speaker_out():
    corpus = make_corpus(sessions=2)
    folds = leave_one_speaker_out(corpus, val_size=0.2, seed=0)
    assert [f.name for f in folds] == ["S1F", "S1M", "S2F", "S2M"]
    for fold in folds:
        check_fold(fold, corpus, {u.id for u in corpus if u.speaker == fold.name})
        assert Counter(u.label for u in fold.val) == {label: 3 for label in LABELS4}  # 20% of 60, 15/label


def test_stratified_split_and_seeds():
    corpus = make_corpus(per_label=10)  # 240 utterances, 60 per label
    (fold,) = stratified_split(corpus, test_size=0.25, seed=1, val_size=0.2)
    check_fold(fold, corpus, ids(fold.test))
    assert Counter(u.label for u in fold.test) == {label: 15 for label in LABELS4}
    assert Counter(u.label for u in fold.val) == {label: 9 for label in LABELS4}
    (again,) = stratified_split(corpus, test_size=0.25, seed=1, val_size=0.2)
    assert again == fold
    (other,) = stratified_split(corpus, test_size=0.25, seed=2, val_size=0.2)
    assert ids(other.test) != ids(fold.test)
    # Order inside each part follows the input order.
    order = {u.id: i for i, u in enumerate(corpus)}
    assert [order[u.id] for u in fold.train] == sorted(order[u.id] for u in fold.train)


def test_stratified_split_by_speaker():
    corpus = make_corpus(sessions=5)  # 10 speakers
    (fold,) = stratified_split(corpus, test_size=0.2, seed=0, val_size=0.2, group_by_speaker=True)
    check_fold(fold, corpus, ids(fold.test))
    train_spk, val_spk, test_spk = ({u.speaker for u in p} for p in (fold.train, fold.val, fold.test))
    assert len(test_spk) == 2 and not test_spk & (train_spk | val_spk) and not val_spk & train_spk


def test_predefined_split_uses_meta_split_or_session():
    corpus = []
    for i, part in enumerate(["train"] * 16 + ["dev"] * 3 + ["test"] * 4):
        label = LABELS4[i % 4]
        corpus.append(Utterance(f"u{i}", Path("a.wav"), None, label, f"s{i % 3}", "x", meta={"split": part}))
    (fold,) = predefined_split(corpus)
    assert fold.name == "predefined"
    assert [u.id for u in fold.val] == ["u16", "u17", "u18"]
    test_ids = {"u19", "u20", "u21", "u22"}
    assert ids(fold.test) == test_ids
    check_fold(fold, corpus, test_ids)
    # MELD-style: the split is the session; no dev part -> val carved from train only.
    meld_like = [Utterance(u.id, u.audio, None, u.label, u.speaker, u.meta["split"]) for u in corpus
                 if u.meta["split"] != "dev"]
    (fold,) = predefined_split(meld_like, val_size=0.25)
    check_fold(fold, meld_like, test_ids)
    assert Counter(u.label for u in fold.val) == {label: 1 for label in LABELS4}


def test_protocols_on_loaded_corpora(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        corpus = iemocap.load(build_iemocap(tmp_path / "i"), classes=6)
        folds = leave_one_session_out(corpus, val_size=0.2)
    assert [f.name for f in folds] == ["Session1", "Session2"]
    for fold in folds:
        check_fold(fold, corpus, {u.id for u in corpus if u.session == fold.name})
    demo = manifest.load(build_manifest(tmp_path / "m"))
    (fold,) = predefined_split(demo)
    assert ([u.id for u in fold.train], [u.id for u in fold.val], [u.id for u in fold.test]) == (
        ["wav/a"], ["wav/b"], ["wav/c"])


def test_rare_labels_fall_back_with_a_warning():
    corpus = make_corpus(sessions=1, speakers_per_session=1, per_label=3)
    corpus.append(Utterance("lonely", Path("x.wav"), None, "fru", "S1F", "Session1"))
    with pytest.warns(UserWarning, match="Could not stratify"):
        (fold,) = stratified_split(corpus, test_size=0.3, val_size=0.0)
    assert fold.val == () and len(fold.test) + len(fold.train) == len(corpus)


def test_bad_inputs():
    corpus = make_corpus()
    with pytest.raises(InputError, match="no utterances"):
        leave_one_session_out([])
    with pytest.raises(InputError, match="need at least two"):
        leave_one_session_out([u for u in corpus if u.session == "Session1"])
    with pytest.raises(InputError, match="ids repeat"):
        stratified_split(corpus + corpus[:1])
    with pytest.raises(InputError, match="test_size"):
        stratified_split(corpus, test_size=1.5)
    with pytest.raises(InputError, match="val_size"):
        leave_one_speaker_out(corpus, val_size="a lot")
    with pytest.raises(InputError, match="no speaker"):
        leave_one_speaker_out([Utterance(u.id, u.audio, None, u.label, "", u.session) for u in corpus])
    with pytest.raises(InputError, match="only one speaker"):
        leave_one_session_out(make_corpus(sessions=2, speakers_per_session=1), group_val_by_speaker=True)
    with pytest.raises(InputError, match="split 'holdout'"):
        predefined_split([Utterance("a", Path("a.wav"), None, "hap", "s", "holdout")])
    with pytest.raises(InputError, match="test part"):
        predefined_split([Utterance("a", Path("a.wav"), None, "hap", "s", "train")])
