"""The speaker split is the data's, not the training seed's; fine-tuning never tests on voices the
starting checkpoint trained on.

Until 2026-12-04 the training seed drew the split: a run with ``--seed 1`` fine-tuned from a seed-0
model held out TESS's other voice and other RAVDESS actors, i.e. voices that model had trained on,
and its test scores counted them as unseen."""

from __future__ import annotations

import pytest

from fixtures.corpora import build_tess
from ser_core.checkpoint import save_checkpoint
from ser_core.data.mix import split_seed_of
from ser_core.errors import InputError
from ser_core.models import build_model
from ser_core.train import TrainConfig, check_same_split
from ser_core.train_data import load_fold, split_clash


def _mix(rav, tes, test_only_tess: bool = False) -> list[dict]:
    return [{"name": "ravdess", "root": str(rav)}, {"name": "tess", "root": str(tes), "test_only": test_only_tess},
            {"name": "demo", "root": ""}]


def test_the_training_seed_never_moves_the_held_out_speakers(tmp_path, monkeypatch):
    mix = [{"name": "tess", "root": str(build_tess(tmp_path / "tess"))}]  # two voices: one is held out
    folds = {(seed, split): load_fold(TrainConfig(corpus="mix", mix=mix, seed=seed, split_seed=split))
             for seed, split in ((0, 0), (1, 0), (7, 0), (0, 1))}
    ids = {k: ([u.id for u in f.val], [u.id for u in f.test]) for k, f in folds.items()}
    assert ids[(0, 0)] == ids[(1, 0)] == ids[(7, 0)]
    # the split seed, and only it, draws another split: TESS's other voice is held out
    assert ids[(0, 1)] != ids[(0, 0)]
    held = {k: {u.speaker for u in f.test} for k, f in folds.items()}
    assert held[(0, 0)] != held[(0, 1)] and len(held[(0, 1)]) == 1


def test_an_older_checkpoint_is_read_as_it_was_split():
    assert split_seed_of({"seed": 1}) == 1  # before the split had its own seed, the training seed drew it
    assert split_seed_of({"seed": 1, "split_seed": 0}) == 0
    assert split_seed_of({}) == 0


def test_fine_tuning_refuses_a_starting_model_trained_on_this_runs_test_voices(tmp_path):
    rav, tes = tmp_path / "rav", tmp_path / "tess"
    seed0 = {"mix": _mix(rav, tes), "seed": 0, "split_seed": 0}
    old_seed1 = {"mix": _mix(rav, tes), "seed": 1}  # written before split_seed existed: split by seed 1
    run = TrainConfig(corpus="mix", mix=_mix(rav, tes), seed=1, split_seed=0)
    assert split_clash(run, seed0) is None  # another training seed, the same held-out voices
    assert "splits ravdess's speakers differently" in split_clash(run, old_seed1)
    assert split_clash(TrainConfig(corpus="mix", mix=_mix(rav, tes), split_seed=1), old_seed1) is None
    # a cross-corpus run scores every TESS clip: it may not start from a model that trained on TESS
    cross = TrainConfig(corpus="mix", mix=_mix(rav, tes, test_only_tess=True))
    assert "trained on tess, and this run tests on every tess clip" in split_clash(cross, seed0)
    # ... but may start from one that never did (a demo-corpus model, or another cross-corpus model)
    assert split_clash(cross, {"corpus": "demo", "protocol": "predefined", "seed": 3}) is None
    assert split_clash(cross, {"mix": _mix(rav, tes, test_only_tess=True), "seed": 4, "split_seed": 0}) is None
    assert "ravdess" in split_clash(cross, {"mix": _mix(rav, tes, test_only_tess=True), "seed": 4})
    # one corpus on its own: another protocol or fold holds out other voices
    alone = TrainConfig(corpus="ravdess", root=str(rav), protocol="lospk", fold=2)
    assert split_clash(alone, {"corpus": "ravdess", "protocol": "lospk", "fold": 2}) is None
    assert "differently" in split_clash(alone, {"corpus": "ravdess", "protocol": "lospk", "fold": 3})


def test_the_trainer_refuses_it_before_computing_any_feature(tmp_path):
    model = build_model("ilt", {"num_classes": 4, "labels": ("ang", "hap", "neu", "sad")})
    source = save_checkpoint(tmp_path / "old.safetensors", model, {
        "model": "ilt", "config": model.config.to_dict(),
        "training": {"mix": _mix(tmp_path / "rav", tmp_path / "tess"), "seed": 1}})
    run = TrainConfig(model="ilt", corpus="mix", mix=_mix(tmp_path / "rav", tmp_path / "tess"),
                      init_from=str(source), out=str(tmp_path / "new.safetensors"))
    with pytest.raises(InputError, match="old.safetensors cannot start this run: .*split seed 1"):
        check_same_split(run)
    from ser_core.train import train

    with pytest.raises(InputError, match="cannot start this run"):  # the corpora do not even exist
        train(run, progress=False, log=lambda *_: None)
    assert not (tmp_path / "new.safetensors").exists()


def test_a_larger_validation_share_holds_out_more_voices_and_never_moves_the_test_ones(tmp_path):
    from pathlib import Path

    from ser_core.data.base import Utterance
    from ser_core.data.mix import speaker_split
    from ser_core.train_cli import _val_share

    utts = [Utterance(id=f"a{s}_{l}_{i}", audio=Path("x.wav"), label=l, speaker=f"a{s:02d}", transcript="",
                      session="s") for s in range(20) for l in ("ang", "hap", "neu", "sad") for i in range(2)]
    usual, wider = speaker_split(utts, 0), speaker_split(utts, 0, val_size=0.3)
    assert [u.id for u in usual.test] == [u.id for u in wider.test]
    voices = {name: {u.speaker for u in fold.val} for name, fold in (("usual", usual), ("wider", wider))}
    assert len(voices["wider"]) > len(voices["usual"]) >= 2
    assert voices["wider"].isdisjoint({u.speaker for u in wider.train})
    # a checkpoint split with the usual share cannot start a run validated on some of its training voices
    rav, tes = tmp_path / "rav", tmp_path / "tess"
    shipped = {"mix": _mix(rav, tes), "seed": 0}  # no val_share in its meta: the usual 0.15
    assert split_clash(TrainConfig(corpus="mix", mix=_mix(rav, tes)), shipped) is None
    why = split_clash(TrainConfig(corpus="mix", mix=_mix(rav, tes), val_share=0.3), shipped)
    assert "validation or test speakers" in why and "validation share 0.15" in why
    with pytest.raises(InputError, match="less than 0.8"):
        _val_share(0.9)


def test_a_checkpoint_of_one_corpus_with_its_fold_named_is_not_refused(tmp_path):
    # the trainer's meta stores the fold's name ("Session1"), a run its number
    run = TrainConfig(corpus="iemocap", root=str(tmp_path), protocol="loso", fold=0)
    assert split_clash(run, {"corpus": "iemocap", "protocol": "loso", "fold": "Session1", "seed": 0}) is None
    assert "differently" in split_clash(run, {"corpus": "iemocap", "protocol": "lospk", "fold": "Ses01F", "seed": 0})
