"""The deletion test (ser_core.deletion): a toy model in which one word and one frame decide the
output, the shipped checkpoints, the cache, and the Analyze page's "Is this faithful?" view."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

os.environ.setdefault("OMP_NUM_THREADS", "1")

from ser_core.asr import Word  # noqa: E402
from ser_core.features import Features, collate_speech_text, speech_text_axis_labels  # noqa: E402
from ser_core.models.base import MODELS, ModelConfig, ModelOutput, RawAttention, register_model  # noqa: E402
from ser_core.trace import AxisLabels  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CHECKPOINTS = sorted((REPO / "checkpoints").glob("*.safetensors"))
ROWS = list(csv.DictReader(open(REPO / "samples" / "manifest.csv")))
SAMPLE = next(r for r in ROWS if r["video"])

N_WORDS, N_FRAMES, DIM = 20, 40, 4
WORD, FRAME = 13, 27  # the positions that decide the output


# --------------------------------------------------------------------------- the toy model

@dataclass
class ToyConfig(ModelConfig):
    num_classes: int = 2
    labels: tuple[str, ...] = ("ang", "neu")
    sharpness: float = 6.0


class ToyOneToken(nn.Module):
    """Attention pooling over the words and over the frames: a position's salience (feature 1)
    sets its attention weight, its marker (feature 0) is what is pooled; p(anger) is high only
    when the marked word and the marked frame are both there (the only ones with a marker)."""

    Config = ToyConfig
    inputs = ("speech", "text")

    def __init__(self, config: ToyConfig | None = None) -> None:
        super().__init__()
        self.config = config or ToyConfig()
        self.weight = nn.Parameter(torch.tensor([6.0, 6.0, -5.0]))

    @classmethod
    def collate(cls, items, config, device):
        return collate_speech_text(items, device)

    def axis_labels(self, feats):
        return {**speech_text_axis_labels(feats), "pool": AxisLabels("pool", ["utterance"])}

    def _pool(self, x, mask):
        weights = torch.softmax((self.config.sharpness * x[..., 1]).masked_fill(mask, float("-inf")), dim=-1)
        return (weights * x[..., 0]).sum(-1), weights

    def forward(self, batch, keep_ratio=None, top_p=None, record=False, extracted=None):
        pooled_w, w = self._pool(batch["text"], batch["text_mask"])
        pooled_f, f = self._pool(batch["audio"][:, -1], batch["audio_mask"])
        logit = self.weight[0] * pooled_w + self.weight[1] * pooled_f + self.weight[2]
        logits = torch.stack([logit, torch.zeros_like(logit)], dim=-1)
        raws = []
        if record:
            for name, key, a in (("words.pool", "text", w), ("frames.pool", "audio", f)):
                keep = a >= a.max(dim=-1, keepdim=True).values  # the top key: key-sparse at k = 1/L
                raws.append(RawAttention(name, "key-sparse", "pool", key, weights=a.detach()[:, None, None, :],
                                         key_scores=a.detach()[:, None, :], keep=keep[:, None, :], keep_ratio=0.05))
        extras = {"padding_masks": {"audio": batch["audio_mask"], "text": batch["text_mask"]}}
        return ModelOutput(logits, torch.softmax(logits, -1), raws, extras)


if "toy_one_token" not in MODELS:
    register_model("toy_one_token")(ToyOneToken)


def toy_features(seed: int = 0) -> Features:
    rng = np.random.default_rng(seed)
    text = np.zeros((N_WORDS, DIM), np.float32)
    text[:, 1] = rng.uniform(-0.3, 0.3, N_WORDS)
    text[:, 2:] = rng.normal(size=(N_WORDS, DIM - 2))
    text[WORD, :2] = (1.0, 1.0)
    speech = np.zeros((1, N_FRAMES, DIM), np.float32)
    speech[0, :, 1] = rng.uniform(-0.3, 0.3, N_FRAMES)
    speech[0, :, 2:] = rng.normal(size=(N_FRAMES, DIM - 2))
    speech[0, FRAME, :2] = (1.0, 1.0)
    words = [Word(f"w{i}", i * 0.1, i * 0.1 + 0.08) for i in range(N_WORDS)]
    return Features(key=f"toy{seed}", audio=np.zeros(16000, np.float32), words=words, speech=speech,
                    frame_times=(np.arange(N_FRAMES) * 0.02 + 0.01).astype(np.float32), text=text,
                    transcript_source="typed")


@pytest.fixture(scope="module")
def toy(cache, tmp_path_factory):
    from ser_core.checkpoint import save_checkpoint
    from ser_core.pipeline import Analyzer

    path = save_checkpoint(tmp_path_factory.mktemp("toy") / "toy.safetensors", ToyOneToken(),
                           {"model": "toy_one_token", "config": ToyConfig().to_dict()})
    analyzer = Analyzer(path, device="cpu", disk_cache=False)
    return analyzer.run_model(toy_features())


def test_toy_attributions_find_the_deciding_word_and_frame(toy):
    assert toy.predicted == "ang" and toy.confidence > 0.95
    for method in ("integrated_gradients", "input_x_gradient", "rollout"):
        scores = toy.attribution(method)
        assert int(np.argmax(scores["words"])) == WORD, method
        assert int(np.argmax(scores["frames"])) == FRAME, method
    d = toy.attribution_details("integrated_gradients", n_steps=64)
    assert abs(d.delta) < 5e-3  # completeness: Σ scores = f(x) − f(0)
    # the same check with Captum's own convergence delta, on the raw inputs
    from captum.attr import IntegratedGradients

    from ser_core.models.base import collate_batch

    model = toy.analyzer.model
    batch = collate_batch(model, [toy.features], "cpu")

    def f(audio, text):
        n = audio.shape[0]
        b = {k: v.expand(n, *v.shape[1:]) for k, v in batch.items()}
        return model({**b, "audio": audio, "text": text}).probs

    inputs = (batch["audio"], batch["text"])
    _, delta = IntegratedGradients(f).attribute(inputs, baselines=tuple(torch.zeros_like(x) for x in inputs),
                                                target=0, n_steps=64, return_convergence_delta=True)
    assert abs(float(delta)) < 5e-3
    assert float(delta) == pytest.approx(d.delta, abs=1e-4)


def test_toy_deletion_curves(toy):
    result = toy.deletion_test()
    assert set(result.axes) == {"words", "frames"}
    assert result.attention_layers == {"words": "words.pool", "frames": "frames.pool"}
    for axis, decisive in (("words", WORD), ("frames", FRAME)):
        aopc = result.aopc(axis)
        assert set(aopc) == {"attention", "integrated_gradients", "input_x_gradient", "rollout", "random"}
        for ranking in ("attention", "integrated_gradients"):
            curve = result.curve(axis, ranking)
            assert curve.order[0] == decisive
            assert (curve.probs < result.p_orig - 0.2).all()  # gone from the first step on
            assert (np.diff(curve.probs) < 0.02).all()  # monotone-ish
            assert aopc[ranking] > aopc["random"] + 0.1
        rand = result.curve(axis, "random")
        assert decisive not in rand.removed(int(rand.counts[0]))  # random does not find it first
        np.testing.assert_allclose(rand.shares, rand.counts / len(result.axes[axis]))
        assert rand.shares.max() <= 0.5 + 1e-9 and rand.shares.min() > 0
    sentence = result.sentence("words")
    assert sentence.startswith("Removing the word “w13” this layer kept lowers the probability of anger")
    assert "random" in sentence


def test_toy_deletion_is_cached_and_runs_in_few_batches(toy, monkeypatch):
    analysis = toy.analyzer.run_model(toy_features(seed=1))  # an utterance no other test used
    model = toy.analyzer.model
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(a[0]["text"].shape[0]) or forward(*a, **k))
    first = analysis.deletion_test(steps=(0.1, 0.3), rankings=("attention", "random"))
    frame_sizes = {len(c.removed(int(n))) for c in first.curves if c.axis == "frames" for n in c.counts}
    frame_sizes |= {first.kept_removal["frames"]["count"]}
    # one batch for every word removal, one per number of frames removed
    assert 0 < len(calls) <= 1 + len(frame_sizes) and sum(calls) == first.forward_items
    again = analysis.deletion_test(steps=(0.1, 0.3), rankings=("attention", "random"))
    assert again is first and sum(calls) == first.forward_items  # cached: the model did not run again
    # another layer: only removals not run before reach the model (here: none, the same ranking)
    other = analysis.deletion_test(layer="words.pool", steps=(0.1, 0.3), rankings=("attention", "random"))
    assert other.forward_items == 0 and sum(calls) == first.forward_items
    np.testing.assert_array_equal(other.curve("words", "attention").probs, first.curve("words", "attention").probs)


def test_opening_the_view_runs_the_pages_work_ahead_in_the_line(toy, monkeypatch):
    """``faithful_ahead``: opening "Is this faithful?" runs the page's two steps in the session's
    turn in the line; the press then takes both results from it and the model does not run again;
    a stop between the steps leaves the second to the page; no session, or a clip too long to
    explain, starts nothing."""
    from ser_core import faithful_ahead, limits
    from ser_core.analysis_queue import AnalysisQueue

    analysis = toy.analyzer.run_model(toy_features(seed=2))  # an utterance no other test used
    line = AnalysisQueue(slots=1)
    sessions = []
    real_run = line.run
    monkeypatch.setattr(line, "run", lambda session, work, **k: sessions.append(session) or real_run(session, work, **k))
    assert faithful_ahead.start(analysis, None, None, line) is None  # outside a browser session
    ahead = faithful_ahead.start(analysis, None, "tab-1", line)
    quick, (test, words) = ahead.result(1), ahead.result(2)  # each waits for its step
    ahead.thread.join(timeout=60)
    assert not ahead.thread.is_alive() and sessions == ["tab-1"] and line.counts() == (0, 0)
    assert ahead.is_for(analysis, None) and not ahead.is_for(analysis, "words.pool")
    assert {c.ranking for c in quick.curves} == {"attention", "random"}
    assert {c.ranking for c in test.curves} > {"attention", "random", "integrated_gradients"}
    model = toy.analyzer.model
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    assert faithful_ahead.quick_test(analysis, None) is quick  # the page's own calls: cached
    again, again_words = faithful_ahead.every_ranking(analysis, None, lambda: False)
    assert again is test and calls == []
    np.testing.assert_array_equal(words, again_words)

    # asked to stop after the first step (the tab was closed): the page runs the second itself
    other = toy.analyzer.run_model(toy_features(seed=3))
    stops = iter([False, True])
    stopped = faithful_ahead.Ahead(other, None)
    stopped.work(lambda: next(stops))
    assert set(stopped.results) == {1} and calls
    ran = len(calls)
    faithful_ahead.every_ranking(other, None, lambda: False)
    assert len(calls) > ran
    # a request replaced the moment its turn came runs nothing
    idle = faithful_ahead.Ahead(toy.analyzer.run_model(toy_features(seed=4)), None)
    ran = len(calls)
    idle.work(lambda: True)
    assert idle.results == {} and len(calls) == ran and not idle.running.is_set()

    monkeypatch.setattr(limits, "too_long_to_explain", lambda seconds: "too long")
    assert faithful_ahead.start(other, None, "tab-1", line) is None


def test_flop_counting_and_a_gradient_attribution_never_overlap(toy, monkeypatch):
    """FlopCounterMode's module hooks are global (every thread): an attribution asked for while
    the Models page's FLOPs are being counted waits until the count is done, and then works."""
    import threading

    from ser_core.model_card import count_flops

    model = toy.analyzer.model
    counting, release = threading.Event(), threading.Event()
    forward = model.forward

    def slow_while_counting(*a, **k):
        if threading.current_thread().name == "counting":
            counting.set()
            release.wait(30)
        return forward(*a, **k)

    monkeypatch.setattr(model, "forward", slow_while_counting)
    flops = []
    counter = threading.Thread(target=lambda: flops.append(count_flops(model, toy_features())), name="counting")
    counter.start()
    assert counting.wait(30)
    analysis = toy.analyzer.run_model(toy_features(seed=5))  # inference: not held up
    scores = []
    attributing = threading.Thread(target=lambda: scores.append(analysis.attribution("integrated_gradients")))
    attributing.start()
    attributing.join(timeout=0.5)
    assert attributing.is_alive() and not scores  # waits for the count to end
    release.set()
    counter.join(timeout=30)
    attributing.join(timeout=60)
    assert flops and flops[0] >= 0 and scores and int(np.argmax(scores[0]["words"])) == WORD


def test_removing_nothing_reproduces_the_prediction_for_every_checkpoint(cache):
    """The masking path (padding masks, or padding's value for ILT / CAT) is the model itself."""
    from ser_core.attribution import model_adapter
    from ser_core.pipeline import Analyzer

    for path in CHECKPOINTS:
        analyzer = Analyzer(path, device="cpu")
        analysis = analyzer.analyze(REPO / "samples" / SAMPLE["path"], transcript=SAMPLE["transcript"],
                                    video=REPO / "samples" / SAMPLE["video"])
        adapter = model_adapter(analyzer.model, analysis.features)
        words = None if adapter.n_words is None else torch.zeros(1, adapter.n_words, dtype=torch.bool)
        frames = torch.zeros(1, adapter.n_frames, dtype=torch.bool)
        with torch.inference_mode():
            probs = adapter.run_dropped(words, frames, {"keep_ratio": None, "top_p": None})
        np.testing.assert_allclose(probs[0].numpy(), analysis.probs, atol=1e-4, err_msg=path.name)
        if path.stem.startswith("ks_transformer"):
            # rows that remove only words reuse the audio stream: the same as the whole model
            from ser_core.attribution import _Adapter

            words = torch.zeros(3, adapter.n_words, dtype=torch.bool)
            frames = torch.zeros(3, adapter.n_frames, dtype=torch.bool)
            words[0, 1] = words[1, [0, 2]] = frames[2, 3:9] = True
            with torch.inference_mode():
                fast = adapter.run_dropped(words, frames, {"keep_ratio": 0.3})
                slow = _Adapter.run_dropped(adapter, words, frames, {"keep_ratio": 0.3})
            np.testing.assert_allclose(fast.numpy(), slow.numpy(), atol=1e-5)
            result = analysis.deletion_test()
            assert {c.ranking for c in result.curves} == {
                "attention", "integrated_gradients", "input_x_gradient", "rollout", "random"}
            assert set(result.axes) == {"words", "frames"}
            for c in result.curves:
                assert np.isfinite(c.probs).all() and 0 < c.shares.min() and c.shares.max() <= 0.5 + 1e-9
            sentence = result.sentence()
            assert sentence.startswith("Removing") and "random" in sentence


def test_analyze_page_shows_the_deletion_view(cache, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from ser_core import ui

    path = REPO / "checkpoints" / "ks_transformer_demo.safetensors"
    if not path.exists():
        pytest.skip("shipped checkpoint missing")
    queued = []  # heavy work waits its turn in the shared line: the analysis, then the deletion test
    real_run_queued = ui.run_queued
    monkeypatch.setattr(ui, "run_queued", lambda work, status_box=None, spinner=None: queued.append(work) or
                        real_run_queued(work, status_box, spinner))
    at = AppTest.from_file(str(REPO / "pages" / "1_Analyze.py"), default_timeout=180).run()
    assert not at.exception
    at.button(key="analyze_button").click().run()
    assert not at.exception, at.exception
    assert any("Is this faithful?" in e.label for e in at.expander)
    n_charts = len(at.get("plotly_chart"))
    at.toggle(key="analyze_faithful").set_value(True).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    text = " ".join(str(m.value) for m in at.markdown)
    assert "Removing" in text and "random" in text and "probability of" in text
    assert len(at.get("plotly_chart")) >= n_charts + 2  # the words' and the frames' curves
    assert len(queued) == 3  # the analysis; attention against random; every ranking


def test_a_clip_too_long_to_explain_gets_a_message_and_runs_nothing(toy, monkeypatch):
    """Above ``SER_MAX_EXPLAIN_SECONDS`` the deletion test and every attribution refuse in plain
    words before any model run (a 60 s clip's Integrated Gradients took 136 s and 7 GB)."""
    from ser_core import attribution, deletion
    from ser_core.errors import InputError

    monkeypatch.setenv("SER_MAX_EXPLAIN_SECONDS", "0.5")  # the toy clip is 1 s long
    monkeypatch.setattr(deletion, "run_deletion_test", lambda *a, **k: pytest.fail("the test ran"))
    monkeypatch.setattr(attribution, "compute_attribution", lambda *a, **k: pytest.fail("it ran"))
    with pytest.raises(InputError, match=r"up to 0.5 s; this one is 1.0 s"):
        toy.deletion_test()
    for method in ("integrated_gradients", "input_x_gradient", "rollout"):
        with pytest.raises(InputError, match="shorter part of the recording"):
            toy.attribution(method)
    monkeypatch.undo()  # the default limit (20 s)
    assert toy.deletion_test().curves
    from ser_core import limits

    assert limits.too_long_to_explain(20.0) is None and limits.too_long_to_explain(20.5)
    monkeypatch.setenv("SER_MAX_EXPLAIN_SECONDS", "ten")
    with pytest.raises(InputError, match="SER_MAX_EXPLAIN_SECONDS"):
        limits.max_explain_seconds()


def test_analyze_page_says_why_a_long_clip_has_no_deletion_test(cache, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("SER_MAX_EXPLAIN_SECONDS", "1")  # every sample clip is longer
    at = AppTest.from_file(str(REPO / "pages" / "1_Analyze.py"), default_timeout=180).run()
    at.button(key="analyze_button").click().run()
    assert not at.exception, at.exception
    assert not [t for t in at.toggle if t.key == "analyze_faithful"]
    assert any("run on clips up to 1 s" in i.value for i in at.info)


def test_deletion_curves_figure_has_one_line_per_ranking():
    from ser_core import viz

    curves = {"attention": ([0.1, 0.2], [0.5, 0.4]), "random": ([0.1, 0.2], [0.9, 0.85])}
    fig = viz.deletion_curves_figure(curves, 0.92, "anger", "words", {"attention": 0.47, "random": 0.05})
    assert [t.name.split(" ·")[0] for t in fig.data] == ["attention (this layer)", "random"]
    assert all(t.y[0] == pytest.approx(92.0) and t.x[0] == 0 for t in fig.data)  # every line starts at p(orig)
    assert "AOPC +0.47" in fig.data[0].name
