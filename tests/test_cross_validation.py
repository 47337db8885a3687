"""Cross-validation over speakers: the folds of a corpus's non-test speakers, the epoch the folds
choose, and the refit that keeps it (``data/mix.py``, ``cross_validation.py``, the trainer)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ser_core.checkpoint import read_meta, save_checkpoint
from ser_core.cross_validation import choose_epoch, fold_histories
from ser_core.data.base import Utterance
from ser_core.data.mix import parse_val_fold, speaker_split
from ser_core.errors import InputError
from ser_core.models import build_model
from ser_core.train import TrainConfig, check_epoch_choice
from ser_core.train_data import split_clash

LABELS = ("ang", "hap", "neu", "sad")


def _voices(n: int, per: int = 2) -> list[Utterance]:
    return [Utterance(id=f"a{s:02d}_{label}_{i}", audio=Path("x.wav"), label=label, speaker=f"a{s:02d}",
                      transcript="", session="s") for s in range(n) for label in LABELS for i in range(per)]


def test_every_non_test_speaker_validates_in_exactly_one_fold_and_the_test_speakers_never_move():
    utts = _voices(20)
    usual = speaker_split(utts, 0)
    folds = [speaker_split(utts, 0, val_fold=f"{k}/4") for k in range(1, 5)]
    test = {u.speaker for u in usual.test}
    assert all({u.speaker for u in f.test} == test for f in folds)
    non_test = {u.speaker for u in utts} - test
    seen = [{u.speaker for u in f.val} for f in folds]
    assert set().union(*seen) == non_test and sum(len(s) for s in seen) == len(non_test)  # each once
    for f, val in zip(folds, seen):
        assert val.isdisjoint({u.speaker for u in f.train}) and len(val) == 4  # 16 voices, 4 folds
    refit = speaker_split(utts, 0, val_fold="none")
    assert refit.val == () and {u.speaker for u in refit.train} == non_test
    # the same folds again (they are seeded), another split seed draws others
    assert [u.id for u in speaker_split(utts, 0, val_fold="2/4").val] == [u.id for u in folds[1].val]
    # a corpus of two voices keeps its usual validation part whatever the fold
    two = _voices(2, per=8)
    assert [u.id for u in speaker_split(two, 0, val_fold="3/4").val] == [u.id for u in speaker_split(two, 0).val]


def test_a_validation_fold_is_checked_in_plain_words():
    assert parse_val_fold("2/5") == (2, 5) and parse_val_fold("none") == (0, 0) and parse_val_fold(None) is None
    for bad in ("0/4", "5/4", "1/1", "half", "1-4"):
        with pytest.raises(InputError, match="K/N"):
            parse_val_fold(bad)
    with pytest.raises(InputError, match="cannot make 8 folds"):
        speaker_split(_voices(8), 0, val_fold="1/8")  # 6 non-test voices
    with pytest.raises(InputError, match="--keep-epoch"):
        check_epoch_choice(TrainConfig(val_fold="none"), 10)
    with pytest.raises(InputError, match="between 1 and the run's 10 epochs"):
        check_epoch_choice(TrainConfig(keep_epoch=11), 10)
    check_epoch_choice(TrainConfig(val_fold="none", keep_epoch=10), 10)


def test_a_model_trained_on_every_voice_cannot_start_a_fold_validated_on_some_of_them(tmp_path):
    mix = [{"name": "ravdess", "root": str(tmp_path / "rav")}, {"name": "demo", "root": ""}]
    refit = {"mix": mix, "seed": 0, "split_seed": 0, "val_fold": "none"}
    assert "validation fold none" in split_clash(TrainConfig(corpus="mix", mix=mix, val_fold="1/4"), refit)
    assert split_clash(TrainConfig(corpus="mix", mix=mix, val_fold="none", keep_epoch=3), refit) is None
    # a demo-corpus model never heard a real voice: every fold may start from it
    assert split_clash(TrainConfig(corpus="mix", mix=mix, val_fold="1/4"),
                       {"corpus": "manifest", "protocol": "predefined", "seed": 0}) is None


def _fold_run(folder: Path, k: int, n: int, scores: list[dict[str, float]], **training) -> Path:
    """A finished fold run as the trainer leaves it: the checkpoint and its epochs' record."""
    model = build_model("ilt", {"num_classes": 4, "labels": LABELS})
    out = folder / f"f{k}.safetensors"
    settings = {"model": "ilt", "mix": [{"name": "ravdess"}, {"name": "demo"}], "seed": 0, "lr": 1e-3,
                "val_fold": f"{k}/{n}", "out": str(out), "hyper": {"epochs": len(scores)}, **training}
    save_checkpoint(out, model, {"model": "ilt", "config": model.config.to_dict(), "training": settings})
    run = folder / f"f{k}.run"
    run.mkdir(parents=True, exist_ok=True)
    rows = [{"epoch": e + 1, "val_ua": sum(s.values()) / len(s), "val_ua_by_corpus": s} for e, s in enumerate(scores)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def test_the_folds_choose_the_epoch_best_on_average_not_the_best_of_one_fold(tmp_path):
    # fold 1 peaks at epoch 1, fold 2 at epoch 3; on average epoch 2 is best
    f1 = _fold_run(tmp_path, 1, 2, [{"ravdess": 0.9, "demo": 0.8}, {"ravdess": 0.8, "demo": 0.8},
                                    {"ravdess": 0.5, "demo": 0.8}])
    f2 = _fold_run(tmp_path, 2, 2, [{"ravdess": 0.4, "demo": 0.8}, {"ravdess": 0.7, "demo": 0.8},
                                    {"ravdess": 0.75, "demo": 0.8}])
    n, histories = fold_histories([str(f2), str(f1)])  # in any order
    assert n == 2
    choice = choose_epoch(histories)
    assert choice["epoch"] == 2 and choice["mean"] == pytest.approx(0.775)
    assert choice["by_corpus"]["ravdess"]["folds"] == [0.8, 0.7]  # fold order
    assert choose_epoch(histories, judge=["demo"])["epoch"] == 1  # a tie: the earliest
    with pytest.raises(InputError, match="No validation score for tess"):
        choose_epoch(histories, judge=["tess"])


def test_runs_that_are_not_the_folds_of_one_recipe_are_refused(tmp_path):
    scores = [{"ravdess": 0.5}] * 2
    f1, f3 = _fold_run(tmp_path / "a", 1, 3, scores), _fold_run(tmp_path / "a", 3, 3, scores)
    with pytest.raises(InputError, match=r"Fold\(s\) 2 of 3 are missing"):
        fold_histories([str(f1), str(f3)])
    other = _fold_run(tmp_path / "b", 2, 3, scores, lr=5e-4)
    with pytest.raises(InputError, match=r"trained otherwise than the other folds \(lr\)"):
        fold_histories([str(f1), str(other), str(f3)])
    unfinished = _fold_run(tmp_path / "c", 2, 3, scores[:1], hyper={"epochs": 2})
    with pytest.raises(InputError, match="has not finished"):
        fold_histories([str(f1), str(unfinished), str(f3)])
    plain = tmp_path / "plain.safetensors"
    model = build_model("ilt", {"num_classes": 4, "labels": LABELS})
    save_checkpoint(plain, model, {"model": "ilt", "config": model.config.to_dict(), "training": {"seed": 0}})
    with pytest.raises(InputError, match="not trained on a validation fold"):
        fold_histories([str(f1), str(plain)])


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_the_trainer_keeps_the_epoch_it_is_told_to(cache, corpus, tmp_path):
    from ser_core.train import train

    out = tmp_path / "kept.safetensors"
    cfg = TrainConfig(root=str(corpus), out=str(out), epochs=2, batch_size=8, keep_epoch=1, device="cpu",
                      model_args={"d_model": 32, "ff_dim": 64, "feature_layers": 1, "ccab_layers": 1,
                                  "fusion_layers": 1})
    meta = train(cfg, progress=False, log=lambda *_: None)
    rows = [json.loads(line) for line in (tmp_path / "kept.run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and [r.get("saved", False) for r in rows] == [True, False]
    assert meta["metrics"]["epoch"] == 1 == read_meta(out)["metrics"]["epoch"] and "test" in meta["metrics"]
