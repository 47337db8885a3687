"""The faithfulness measure's pieces: majority keep, vanilla top half, chance of a hit; the
per-corpus deletion test (choice of clips, the 20 % step, the command line, the table) and, on a
small trained checkpoint, its report, ``--write`` and the Models page."""

import shutil
from math import comb
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from ser_core.faithfulness import _agreeing_emotion_indices, _emotion_indices, chance_of_hit, text_key_records, top_half
from ser_core.kept import most_heads
from ser_core.trace import AttentionRecord, AxisLabels


def test_kept_by_majority_of_heads():
    keep = np.array([[1, 0, 1, 0], [1, 0, 0, 0], [1, 1, 1, 0]], bool)
    assert most_heads(keep).tolist() == [True, False, True, False]


def test_top_half_per_head_with_ties():
    scores = np.array([[0.1, 0.9, 0.5, 0.5], [4.0, 3.0, 2.0, 1.0], [1, 1, 1, 1.0]])
    kept = top_half(scores)
    assert kept[0].tolist() == [False, True, True, True]  # tie at the threshold is kept
    assert kept[1].tolist() == [True, True, False, False]
    assert kept[2].all()
    assert top_half(np.array([[0.3, 0.7, 0.1]]))[0].tolist() == [False, True, False]  # ⌊3/2⌋ = 1


@pytest.mark.parametrize("L, n, m", [(10, 5, 1), (10, 3, 2), (6, 6, 1), (7, 1, 3)])
def test_chance_of_hit_matches_counting(L, n, m):
    expected = 1.0 if n >= L else 1 - comb(L - m, n) / comb(L, n)
    assert chance_of_hit(L, n, m) == pytest.approx(expected)
    rng = np.random.default_rng(0)
    hits = np.mean([bool(set(rng.choice(L, n, replace=False)) & set(range(m))) for _ in range(4000)])
    assert hits == pytest.approx(expected, abs=0.03)


def test_text_key_records_and_emotion_indices():
    words = AxisLabels("words", ["a", "b"])
    frames = AxisLabels("frames", ["0.00 s"])
    w = np.ones((1, 1, 2), np.float32) / 2
    recs = [
        AttentionRecord("x", "key-sparse", "audio", "text", w, frames, words, keep=np.ones((1, 2), bool)),
        AttentionRecord("y", "self", "text", "text", np.ones((1, 2, 2)) / 2, words, words),
        AttentionRecord("z", "key-sparse", "text", "audio", np.ones((1, 2, 1)), words, frames),
    ]
    assert [r.name for r in text_key_records(recs)] == ["x"]
    assert _emotion_indices({"emotion_words": '[{"word": "mad", "index": 3}]'}) == [3]
    assert _emotion_indices({"emotion_words": []}) == []
    from ser_core.data.base import Utterance

    def utt(label, said):
        return Utterance("u", "x.wav", None, label, "s", "s1", meta={"text_emotion": said,
                                                    "emotion_words": '[{"word": "mad", "index": 3}]'})
    # the keyword-kept rate counts only words that say the labelled emotion (issue 11)
    assert _agreeing_emotion_indices(utt("ang", "ang")) == [3]
    assert _agreeing_emotion_indices(utt("sad", "ang")) == []  # a conflict: the voice says sad


# --------------------------------------------------------------------------- per corpus

def _utts(labels, speaker="s"):
    from ser_core.data.base import Utterance

    return [Utterance(id=f"{label}{i}", audio=Path(f"/x/{label}{i}.wav"), label=label, speaker=speaker,
                      transcript=None, session=None)
            for label, n in labels.items() for i in range(n)]


def test_stratified_order_takes_the_emotions_in_turn_and_is_seeded():
    from ser_core.faithfulness import stratified_order

    utts = _utts({"ang": 5, "hap": 2, "neu": 4, "sad": 4})
    order = stratified_order(utts, seed=0)
    assert sorted(u.id for u in order) == sorted(u.id for u in utts)  # every clip, once
    assert sorted(u.label for u in order[:8]) == ["ang", "ang", "hap", "hap", "neu", "neu", "sad", "sad"]
    assert [u.label for u in order[8:11]] == ["ang", "neu", "sad"]  # happiness ran out
    assert [u.id for u in stratified_order(utts[::-1], 0)] == [u.id for u in order]  # input order is irrelevant
    assert [u.id for u in stratified_order(utts, 1)] != [u.id for u in order]


def test_drop_at_reads_the_top_fifth_of_the_curve():
    from ser_core.deletion import DeletionCurve
    from ser_core.faithfulness import drop_at

    curve = DeletionCurve("words", "attention", np.arange(10), np.array([1, 2, 3, 4, 5]),
                          np.array([0.1, 0.2, 0.3, 0.4, 0.5]), np.array([0.8, 0.5, 0.4, 0.3, 0.2]), 0.9)
    assert drop_at(curve, 10) == pytest.approx(0.4)  # 2 of 10 removed: 0.9 → 0.5
    short = DeletionCurve("words", "random", np.arange(3), np.array([1]), np.array([1 / 3]), np.array([0.6]), 0.9)
    assert drop_at(short, 3) == pytest.approx(0.3)  # 3 words: one removed (at least one)


def test_root_after_a_corpus_is_its_folder():
    from ser_core.__main__ import build_parser

    parse = build_parser().parse_args
    args = parse(["faithfulness", "--corpus", "demo", "--corpus", "ravdess", "--root", "R", "--corpus", "tess",
                  "--root", "T"])
    assert args.corpora == ["demo", "ravdess", "tess"] and args.corpus_roots == {1: "R", 2: "T"}
    assert args.root is None
    args = parse(["faithfulness", "--root", "M"])  # without --corpus: the demo manifest, as before
    assert args.corpora is None and args.root == "M"


def test_faithfulness_table_names_every_column_in_words():
    from ser_core.model_card import faithfulness_table

    report = {"corpora": {"tess": {"utterances": 4, "axes": {
        "words": {"utterances": 3, "aopc": {"attention": 0.12, "random": 0.05, "integrated_gradients": 0.2},
                  "drop_top20": {"attention": 0.1, "random": 0.04}, "attention_over_random": 2.5},
        "chunks": {"utterances": 4, "aopc": {"random": 0.01}, "drop_top20": {"random": 0.0},
                   "attention_over_random": None}}}}}
    words, chunks = faithfulness_table(report)
    assert words["corpus"] == "TESS" and words["removed"] == "words" and words["clips"] == "3"
    assert words["AOPC attention"] == "0.120" and words["AOPC Integrated Gradients"] == "0.200"
    assert words["AOPC gradient × input"] == "–" and words["attention ÷ random"] == "2.5×"
    assert chunks["removed"] == "400 ms chunks" and chunks["AOPC attention"] == "–"
    assert faithfulness_table(None) == []


# A small trained checkpoint on conftest's tiny generated corpus (as tests/test_train.py trains one),
# and a TESS-layout corpus (two speakers) made of its clips, as tests/test_mix.py makes one.
TINY = {"d_model": 32, "ff_dim": 64, "feature_layers": 1, "ccab_layers": 1, "fusion_layers": 1}
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


@pytest.fixture(scope="module")
def small_checkpoint(cache, corpus, tmp_path_factory):
    from ser_core.train import TrainConfig, train

    out = tmp_path_factory.mktemp("small") / "tiny.safetensors"
    cfg = TrainConfig(root=str(corpus), out=str(out), epochs=1, batch_size=8, model_args=TINY, device="cpu")
    train(cfg, progress=False, log=lambda *_: None)
    return out


@needs_espeak
def test_per_corpus_deletion_report_is_written_into_a_copy_and_shown_on_the_models_page(
        small_checkpoint, corpus, tmp_path, monkeypatch, capsys):
    from streamlit.testing.v1 import AppTest
    from test_mix import _tess_from

    from ser_core.__main__ import main
    from ser_core.checkpoint import read_meta
    from ser_core.faithfulness import held_out_utterances

    measured, unmeasured = tmp_path / "measured.safetensors", tmp_path / "unmeasured.safetensors"
    shutil.copy(small_checkpoint, measured)
    shutil.copy(small_checkpoint, unmeasured)
    tess = _tess_from(corpus, tmp_path / "tess")
    meta = read_meta(measured)
    held = held_out_utterances("tess", tess, meta["config"]["labels"], meta)
    assert len({u.speaker for u in held}) == 1 and len(held) == 6  # one of TESS's two voices

    code = main(["faithfulness", "--checkpoint", str(measured), "--corpus", "demo", "--root", str(corpus),
                 "--corpus", "tess", "--root", str(tess), "--limit", "2", "--device", "cpu", "--write"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "AOPC attention" in printed and "TESS" in printed and "demo corpus (synthetic)" in printed

    stored = read_meta(measured)["faithfulness_by_corpus"]
    assert stored["settings"]["limit"] == 2 and "--corpus tess --root" in stored["settings"]["command"]
    assert stored["date"][:4].isdigit() and stored["checkpoint"] == "measured.safetensors"
    for name in ("demo", "tess"):
        result = stored["corpora"][name]
        assert result["utterances"] == 2 and len(result["emotions"]) == 2  # two different emotions
        assert result["seconds"] > 0
        for axis in ("words", "frames"):
            a = result["axes"][axis]
            assert set(a["aopc"]) == {"attention", "integrated_gradients", "input_x_gradient", "rollout", "random"}
            assert all(-1 <= v <= 1 for v in a["aopc"].values())
            assert {"attention", "random"} <= set(a["drop_top20"])
    kept = stored["corpora"]["demo"]["keyword_kept"]  # the old report's keys, under the demo corpus
    assert {"key_sparse", "vanilla_top_half", "chance", "utterances", "split"} <= set(kept)
    by_layer = kept["key_sparse_by_layer"]  # every text-side key-sparse layer, its own rate
    assert len(by_layer) == kept["layers"] and all(name.startswith("ccab_") for name in by_layer)
    assert np.mean(list(by_layer.values())) == pytest.approx(kept["key_sparse"])
    assert "keyword_kept" not in stored["corpora"]["tess"]
    assert "faithfulness" not in read_meta(measured)  # the demo-only report is left as it was
    with safe_open(str(measured), "pt") as a, safe_open(str(small_checkpoint), "pt") as b:
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in b.keys())  # weights untouched

    from ser_core import ui  # imported before the patch: imported under it, ui would keep the fake list

    def listed():
        return [measured, unmeasured]

    monkeypatch.setattr("ser_core.checkpoint.list_all_checkpoints", listed)  # what the page lists
    monkeypatch.setattr(ui, "list_all_checkpoints", listed)  # and the sidebar's picker
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "pages" / "5_Models.py"),
                           default_timeout=120).run()
    assert not at.exception, at.exception
    tables = [d.value for d in at.dataframe if "AOPC attention" in d.value.columns]
    assert len(tables) == 1
    table = tables[0]
    assert list(table["corpus"]) == ["demo corpus (synthetic)"] * 2 + ["TESS"] * 2
    assert list(table["removed"]) == ["words", "speech frames"] * 2
    words = stored["corpora"]["tess"]["axes"]["words"]
    assert table.iloc[2]["AOPC random"] == f"{words['aopc']['random']:.3f}"
    text = "\n".join(m.value for m in at.markdown)
    assert "AOPC" in text and "yardstick" in text
    assert text.count("Not measured yet") == 1
    assert "python -m ser_core faithfulness --checkpoint unmeasured.safetensors --corpus " in text
