"""Several corpora in one run (ser_core/data/mix.py): pairing of --corpus/--root, the per-corpus
speaker-independent split, balancing, cross-corpus (test-only) corpora, and a 2-epoch training
smoke test on a mix of a TESS-layout corpus and the demo corpus with augmented copies."""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures.corpora import build_ravdess, build_tess
from ser_core.data import ravdess, tess
from ser_core.data.base import Utterance
from ser_core.data.mix import CorpusSpec, balance_weights, corpus_specs, mixed_fold, speaker_split, tag
from ser_core.errors import InputError


def _utts(corpus: str, speakers: int, per_label: int = 3, labels=("ang", "hap", "neu", "sad")):
    return [tag(Utterance(f"{s}-{l}-{i}", Path(f"/x/{s}{l}{i}.wav"), None, l, f"spk{s}", f"spk{s}"), corpus)
            for s in range(speakers) for l in labels for i in range(per_label)]


def test_corpus_specs_pair_roots_in_order_and_demo_takes_none(tmp_path, monkeypatch):
    monkeypatch.setenv("SER_CORPUS_DIR", str(tmp_path))
    (tmp_path / "manifest.csv").write_text("path,label\n")
    specs = corpus_specs(["ravdess", "demo", "test:TESS"], ["/a", "/b"])
    assert [(s.name, s.root, s.test_only) for s in specs] == [
        ("ravdess", "/a", False), ("demo", str(tmp_path / "manifest.csv"), False), ("tess", "/b", True)]
    with pytest.raises(InputError, match="needs a folder"):
        corpus_specs(["ravdess", "tess"], ["/a"])
    with pytest.raises(InputError, match="no --corpus"):
        corpus_specs(["ravdess"], ["/a", "/b"])
    with pytest.raises(InputError, match="test-only"):
        corpus_specs(["test:ravdess"], ["/a"])
    with pytest.raises(InputError, match="twice"):
        corpus_specs(["ravdess", "ravdess"], ["/a", "/b"])


def test_demo_corpus_missing_says_how_to_make_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SER_CORPUS_DIR", str(tmp_path / "none"))
    with pytest.raises(InputError, match="Generate"):
        corpus_specs(["demo"], [])


def test_the_calm_voice_set_is_a_rootless_synthetic_corpus_with_its_own_split(tmp_path, monkeypatch):
    from ser_core.corpus import generate_corpus
    from ser_core.data.mix import SYNTHETIC, load_spec

    monkeypatch.setenv("SER_CACHE_DIR", str(tmp_path))
    with pytest.raises(InputError, match="--words-decide"):
        corpus_specs(["demo-calm"], [])
    manifest = generate_corpus(tmp_path / "demo_calm", n_utterances=8, seed=0, workers=1, progress=False,
                               words_decide=True)
    specs = corpus_specs(["ravdess", "demo-calm"], ["/a"])
    assert [(s.name, s.root) for s in specs] == [("ravdess", "/a"), ("demo-calm", str(manifest))]
    utts = load_spec(specs[1])
    assert len(utts) == 8 and all(u.meta["split"] in ("train", "val", "test") for u in utts)
    assert all(u.meta["text_emotion"] == ("none" if u.label == "neu" else u.label) for u in utts)
    assert "demo-calm" in SYNTHETIC and "ravdess" not in SYNTHETIC


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_speaker_split_never_shares_a_voice_between_train_and_test(seed):
    utts = _utts("c", speakers=10)
    fold = speaker_split(utts, seed)
    spk = {part: {u.speaker for u in getattr(fold, part)} for part in ("train", "val", "test")}
    assert spk["train"] and spk["val"] and spk["test"]
    assert not spk["train"] & spk["test"] and not spk["val"] & spk["test"] and not spk["train"] & spk["val"]
    assert len(fold.train) + len(fold.val) + len(fold.test) == len(utts)
    assert speaker_split(utts, seed) == fold  # deterministic


def test_two_speakers_test_on_one_validate_on_the_other():
    utts = _utts("tess", speakers=2, per_label=10)
    fold = speaker_split(utts, 0)
    assert {u.speaker for u in fold.test} == {"spk0"}
    assert {u.speaker for u in fold.train} == {u.speaker for u in fold.val} == {"spk1"}
    assert {u.label for u in fold.val} == {"ang", "hap", "neu", "sad"}  # stratified by label
    assert {u.speaker for u in speaker_split(utts, 1).test} == {"spk1"}
    with pytest.raises(InputError, match="one speaker"):
        speaker_split(_utts("x", speakers=1), 0)


def test_balance_weights_give_each_corpus_and_class_an_equal_share():
    utts = _utts("big", speakers=8, per_label=5) + _utts("small", speakers=2, per_label=1, labels=("ang", "sad"))
    utts += _utts("small2", speakers=1, per_label=7, labels=("ang",))[:3]
    w = balance_weights(utts)
    assert w.sum() == pytest.approx(1.0)
    share = collections.defaultdict(float)
    for u, wi in zip(utts, w):
        share[(u.meta["corpus"], u.label)] += wi
    for corpus in ("big", "small", "small2"):
        assert sum(v for (c, _), v in share.items() if c == corpus) == pytest.approx(1 / 3)
    assert share[("big", "ang")] == pytest.approx(share[("big", "neu")]) == pytest.approx(1 / 12)
    assert share[("small", "sad")] == pytest.approx(1 / 6)
    # relative shares: big twice the others, classes inside each corpus still equal
    w = balance_weights(utts, {"big": 2})
    corpus_share = collections.defaultdict(float)
    for u, wi in zip(utts, w):
        corpus_share[u.meta["corpus"]] += wi
    assert corpus_share["big"] == pytest.approx(0.5) and corpus_share["small"] == pytest.approx(0.25)
    with pytest.raises(InputError, match="No training data from iemocap"):
        balance_weights(utts, {"iemocap": 2})
    with pytest.raises(InputError, match="above 0"):
        balance_weights(utts, {"big": 0})


def test_length_grouped_batches_keep_every_drawn_item_and_batch_similar_lengths():
    import torch

    from ser_core.train_data import length_grouped_batches

    rng = np.random.default_rng(0)
    lengths = rng.integers(50, 460, size=300).tolist()
    order = rng.integers(0, 300, size=200).tolist()  # drawn with replacement, as a balanced mix does

    def batches(seed):
        return length_grouped_batches(order, lengths, 16, torch.Generator().manual_seed(seed), group=4)

    first = batches(1)
    assert len(first) == 13 and sorted(i for b in first for i in b) == sorted(order)
    assert first == batches(1) and first != batches(2)  # reproducible from the epoch's generator
    padding = lambda bs: sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)
    plain = [order[i : i + 16] for i in range(0, len(order), 16)]
    assert padding(first) < 0.4 * padding(plain)  # 10 400 against 31 632 frames of padding


def test_input_dropout_zeroes_that_share_of_items_reproducibly_and_leaves_the_batch_alone():
    from ser_core.errors import InputError
    from ser_core.train_data import drop_inputs

    batch = {"audio": torch.ones(400, 5, 7, 3), "text": torch.ones(400, 4, 6)}
    out = drop_inputs(batch, {"audio": 0.3}, torch.Generator().manual_seed(1))
    dropped = (out["audio"].flatten(1) == 0).all(dim=1)
    kept = (out["audio"].flatten(1) == 1).all(dim=1)
    assert bool((dropped | kept).all()) and 0.22 < float(dropped.float().mean()) < 0.38  # whole items only
    assert torch.equal(out["text"], batch["text"]) and bool((batch["audio"] == 1).all())  # input unchanged
    again = drop_inputs(batch, {"audio": 0.3}, torch.Generator().manual_seed(1))
    assert torch.equal(again["audio"], out["audio"])
    other = drop_inputs(batch, {"audio": 0.3}, torch.Generator().manual_seed(2))
    assert not torch.equal(other["audio"], out["audio"])
    with pytest.raises(InputError, match="no input 'faces'"):
        drop_inputs(batch, {"faces": 0.5}, torch.Generator())
    with pytest.raises(InputError, match="between 0 and 1"):
        drop_inputs(batch, {"audio": 1.5}, torch.Generator())


def test_mixed_fold_maps_labels_tags_corpora_and_keeps_test_only_corpora_whole(tmp_path):
    rav, tes = build_ravdess(tmp_path / "rav", suffix=".flac"), build_tess(tmp_path / "tess")
    n_rav = sum(u.label in ("ang", "hap", "neu", "sad") for u in ravdess.load(rav))
    fold = mixed_fold([CorpusSpec("tess", str(tes)), CorpusSpec("ravdess", str(rav), test_only=True)])
    everything = fold.train + fold.val + fold.test
    assert {u.label for u in everything} <= {"ang", "hap", "neu", "sad"}  # calm, surprise... left out
    assert all(u.id.startswith(u.meta["corpus"] + "/") for u in everything)
    assert 0 < sum(u.meta["corpus"] == "ravdess" for u in fold.test) == n_rav
    assert not any(u.meta["corpus"] == "ravdess" for u in fold.train + fold.val)
    assert len({u.id for u in everything}) == len(everything)
    tess_ids = {u.id for u in tess.load(tes)}
    assert {u.id.split("/", 1)[1] for u in everything if u.meta["corpus"] == "tess"} <= tess_ids


def test_evaluate_speakers_protocol_gives_back_the_mix_held_out_speakers(tmp_path):
    """``evaluate --protocol speakers`` must score exactly the voices the mix held out of training."""
    from ser_core.data import load_corpus
    from ser_core.train_data import _folds

    tes = build_tess(tmp_path / "tess")
    classes = ("ang", "hap", "neu", "sad")
    mixed = mixed_fold([CorpusSpec("tess", str(tes))], classes, seed=1)
    alone = _folds("speakers", [u for u in load_corpus("tess", tes) if u.label in classes], 1)[0]
    assert [u.id.split("/", 1)[1] for u in mixed.test] == [u.id for u in alone.test]
    assert {u.speaker for u in alone.test}.isdisjoint({u.speaker for u in alone.train})
    everything = _folds("all", list(load_corpus("tess", tes)), 0)[0]
    assert not everything.train and not everything.val and len(everything.test) == len(load_corpus("tess", tes))


def test_probe_pools_mean_and_spread_of_each_level():
    from ser_core.probe import pooled_levels

    speech = np.stack([np.tile(np.array([[0.0, 2.0]]), (4, 1)), np.array([[0, 0], [2, 2], [0, 0], [2, 2.0]])])
    pooled = pooled_levels(speech)  # [levels, 2·D]
    assert pooled.shape == (2, 4)
    np.testing.assert_allclose(pooled[0], [0, 2, 0, 0])
    np.testing.assert_allclose(pooled[1], [1, 1, 1, 1])


def test_corpus_choice_one_corpus_keeps_its_protocol_several_make_a_mix(tmp_path):
    from ser_core.train_cli import corpus_choice

    assert corpus_choice(["ravdess"], ["/r"]) == {"corpus": "ravdess", "root": "/r"}
    assert corpus_choice([], ["/m.csv"]) == {"corpus": "manifest", "root": "/m.csv"}  # --root alone: a manifest
    mix = corpus_choice(["ravdess", "test:tess"], ["/r", "/t"])
    assert mix["corpus"] == "mix" and [m["name"] for m in mix["mix"]] == ["ravdess", "tess"]
    assert mix["mix"][1]["test_only"] is True


def test_leaving_out_conflicts_drops_only_the_demo_items_whose_words_say_another_emotion(corpus):
    from ser_core.data import load_corpus
    from ser_core.train_data import without_conflicts

    utts = load_corpus("manifest", str(corpus))
    conflicting = {u.id for u in utts if u.meta.get("conflict") in (True, "true")}
    assert 0 < len(conflicting) < len(utts)  # the tiny corpus has some of each
    kept = without_conflicts(utts)
    assert {u.id for u in kept} == {u.id for u in utts} - conflicting
    tess_like = [dataclasses.replace(u, meta={}) for u in utts]  # a corpus without the column
    assert without_conflicts(tess_like) == tess_like


def test_train_keep_ratio_option_reads_a_range_for_the_ks_transformer_only():
    from ser_core.errors import InputError
    from ser_core.train_cli import _parse_range

    assert _parse_range("0.2,0.8", "ks_transformer") == (0.2, 0.8)
    assert _parse_range(None, "mesm") is None
    for bad, model, words in (("0.2,0.8", "mesm", "for the KS-Transformer"), ("0.5", "ks_transformer", "two numbers"),
                              ("0.8,0.2", "ks_transformer", "LO ≤ HI"), ("0,0.5", "ks_transformer", "0 < LO")):
        with pytest.raises(InputError, match=words):
            _parse_range(bad, model)


# --- a real (tiny) mixed training run ---------------------------------------------------------
WORDS = ["back", "bath", "bean", "beg", "boat", "bone", "book", "bought", "burn", "cab", "calm", "came"]
TESS_EMOTION = {"ang": "angry", "hap": "happy", "neu": "neutral", "sad": "sad"}


def _tess_from(corpus_manifest: Path, root: Path) -> Path:
    """A TESS-layout corpus (two speakers) whose clips are the tiny demo corpus's synthetic speech."""
    rows = list(csv.DictReader(open(corpus_manifest)))[:12]
    for i, row in enumerate(rows):
        speaker = "OAF" if i % 2 else "YAF"
        emotion = TESS_EMOTION[row["label"]]
        dest = root / f"{speaker}_{emotion}" / f"{speaker}_{WORDS[i]}_{emotion}.wav"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(corpus_manifest.parent / row["path"], dest)
    return root


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_two_epoch_training_on_a_mix_with_augmented_copies(cache, corpus, tmp_path, monkeypatch):
    from ser_core.models.ks_transformer import KSTransformer
    from ser_core.train import TrainConfig, train

    tes = _tess_from(corpus, tmp_path / "tess")
    ratios = []  # the keep ratio of every forward pass in training mode (--train-keep-ratio 0.2,0.8)
    interact = KSTransformer.interact

    def spy(self, extracted, keep_ratio=None, record=False):
        if self.training:
            ratios.append(keep_ratio)
        return interact(self, extracted, keep_ratio, record)

    monkeypatch.setattr(KSTransformer, "interact", spy)
    out = tmp_path / "mix.safetensors"
    cfg = TrainConfig(corpus="mix", mix=[{"name": "tess", "root": str(tes)}, {"name": "demo", "root": str(corpus)}],
                      out=str(out), epochs=2, batch_size=8, augment_copies=1, augment_corpora=["tess"],
                      input_dropout={"audio": 0.25}, train_keep_ratio=(0.2, 0.8),
                      model_args={"d_model": 32, "ff_dim": 64, "feature_layers": 1, "ccab_layers": 1,
                                  "fusion_layers": 1}, device="cpu")
    meta = train(cfg, progress=False, log=lambda *_: None)
    sizes = meta["training"]["sizes"]
    assert meta["training"]["input_dropout"] == {"audio": 0.25}
    assert len(ratios) >= 4 and all(0.2 <= r <= 0.8 for r in ratios) and len(set(ratios)) == len(ratios)
    assert meta["config"]["ccab_keep_ratio"] == 0.5  # what it answers with is still the configured k
    n_tess_train = sizes["train"] - 16  # the tiny demo corpus has 16 training utterances
    assert n_tess_train > 0 and n_tess_train % 2 == 0  # every TESS training clip plus one augmented copy
    test = meta["metrics"]["test"]
    assert set(test["by_corpus"]) == {"tess", "demo"}
    assert test["ua"] == pytest.approx(np.mean([v["ua"] for v in test["by_corpus"].values()]))
    assert sum(test["predicted_share"].values()) == pytest.approx(1.0)
    rows = [json.loads(l) for l in (tmp_path / "mix.run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and set(rows[0]["val_ua_by_corpus"]) == {"tess", "demo"}
    # augmented clips were encoded from different waveforms: more feature files than clips
    n_files = len(list((cache / "features").rglob("*.safetensors")))
    assert n_files >= sizes["train"] + sizes["val"] + sizes["test"]
    # the real-voice report: the checkpoint's per-corpus scores with the probe fitted on the same mix
    from ser_core.real_voices import build_report

    report = build_report(str(out), cross=[], ablation=[], log=lambda *_: None)
    assert report["corpora"] == ["tess"] and report["trained_on"] == ["tess", "demo"]
    assert set(report["probe"]["by_corpus"]) == {"tess", "demo"}
    assert 0 <= report["probe"]["by_corpus"]["tess"]["ua"] <= 1
    assert report["by_corpus"]["tess"]["n"] == test["by_corpus"]["tess"]["n"]


def test_real_voices_keep_cross_carries_over_the_earlier_cross_corpus_rows(tmp_path, monkeypatch):
    import argparse

    from ser_core import real_voices

    old = {"checkpoint": "ks_without_tess.safetensors", "test": "tess", "model": {"ua": 0.56}}
    fresh = {"checkpoint": "ks_without_ravdess.safetensors", "test": "ravdess", "model": {"ua": 0.3}}
    (tmp_path / real_voices.REAL_VOICES).write_text(json.dumps({"cross_corpus": [old, dict(fresh, model={})]}))
    monkeypatch.setattr(real_voices, "build_report",
                        lambda model, cross, ablation: {"model": "m", "cross_corpus": [fresh]})
    args = argparse.Namespace(model=str(tmp_path / "m.safetensors"), cross=[], ablation=[], keep_cross=True,
                              write=True)
    assert real_voices._cli(args) == 0
    written = json.loads((tmp_path / real_voices.REAL_VOICES).read_text())
    assert written["cross_corpus"] == [fresh, old]  # the new row wins over the old one of its checkpoint


def test_real_voices_cross_rows_name_their_model_and_share_the_probe_of_one_mix(tmp_path, monkeypatch):
    """Cross-corpus runs of several models on one mix: a row per run, each with its model's name
    and its score, beside one probe fitted once on that mix's data."""
    from ser_core import real_voices

    def meta(model, mix, ua):
        return {"model": model, "training": {"mix": mix, "seed": 0, "split_seed": 0},
                "metrics": {"test": {"by_corpus": {c["name"]: {"ua": ua, "wa": ua, "n": 10} for c in mix}}}}

    shipped = [{"name": "ravdess", "root": "/r"}, {"name": "tess", "root": "/t"}]
    without = [{"name": "ravdess", "root": "/r"}, {"name": "tess", "root": "/t", "test_only": True}]
    metas = {"default": meta("ks_transformer", shipped, 0.8), "ks_x": meta("ks_transformer", without, 0.56),
             "cat_x": meta("cat", without, 0.41)}
    fits = []

    def probe(specs, seed=0, progress=False, **kw):
        fits.append(tuple(s.label for s in specs))
        return {"level": 2, "C": 0.1, "test": {"by_corpus": {s.name: {"ua": 0.42, "wa": 0.42, "n": 10}
                                                             for s in specs}}}

    monkeypatch.setattr(real_voices, "read_meta", metas.__getitem__)
    monkeypatch.setattr("ser_core.probe.run_probe", probe)
    report = real_voices.build_report("default", ["ks_x", "cat_x"], [], log=lambda *_: None)
    rows = report["cross_corpus"]
    assert [(r["model_name"], r["test"], r["model"]["ua"], r["probe"]["ua"]) for r in rows] == [
        ("ks_transformer", "tess", 0.56, 0.42), ("cat", "tess", 0.41, 0.42)]
    assert fits.count(("ravdess", "test:tess")) == 1  # one probe for the two runs on that mix


@pytest.mark.parametrize("name, folder", [("demo", "demo_corpus"), ("demo-calm", "demo_calm")])
def test_evaluate_finds_the_generated_corpora_without_a_root(name, folder, tmp_path, monkeypatch):
    import argparse

    from ser_core import train_cli

    monkeypatch.setenv("SER_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("SER_CORPUS_DIR", raising=False)
    (tmp_path / folder).mkdir()
    (tmp_path / folder / "manifest.csv").write_text("path,label\n")
    seen = {}

    def fake_evaluate(checkpoint, corpus, root, *args, **kw):
        seen.update(corpus=corpus, root=root)
        return {"ua": 1.0}

    monkeypatch.setattr(train_cli, "evaluate", fake_evaluate)
    args = argparse.Namespace(checkpoint="m.safetensors", corpus=name, root=None, protocol="predefined", fold=0,
                              split="test", device=None, keep_ratio=None, top_p=None, write=False, augmented=None)
    assert train_cli._evaluate_cli(args) == 0
    assert seen == {"corpus": "manifest", "root": str(tmp_path / folder / "manifest.csv")}
