"""Greedy model soup (ser_core/soup.py): the average, the greedy choice on validation, the refusals."""

from __future__ import annotations

import pytest
import torch

from ser_core import soup
from ser_core.checkpoint import load_checkpoint, read_meta, save_checkpoint
from ser_core.errors import InputError
from ser_core.models import build_model

LABELS = ("ang", "hap", "neu", "sad")
MIX = [{"name": "ravdess", "root": "/r"}, {"name": "tess", "root": "/t"}, {"name": "demo", "root": ""}]


def _run(path, fill: float, model: str = "ilt", split_seed: int = 0, labels=LABELS, mix=MIX, encoders=None):
    """A checkpoint whose every float weight is ``fill`` (so that an average is easy to read)."""
    net = build_model(model, {"num_classes": len(labels), "labels": labels})
    with torch.no_grad():
        for p in net.state_dict().values():
            if p.is_floating_point():
                p.fill_(fill)
    encoders = encoders or {"speech": "whisper:tiny.en", "identity": str(fill)}  # identity: a cache hash
    return str(save_checkpoint(path, net, {
        "model": model, "config": net.config.to_dict(), "encoders": encoders,
        "training": {"mix": mix, "seed": 0, "split_seed": split_seed, "init_from": "start.safetensors"}}))


class _FakeJudge:
    """Validation = how close the model's first weight is to 2.5, in two corpora (ravdess counts the
    distance, demo is constant); test = the same value, so a soup's figures are predictable."""

    def __init__(self, meta, model, judge, device, progress):
        self.judge = judge

    def scores(self, model, part="val"):
        w = float(next(v for v in model.state_dict().values() if v.is_floating_point()).flatten()[0])
        by = {"ravdess": {"ua": 1.0 - abs(w - 2.5) / 10}, "demo": {"ua": 0.5}}
        return {"ua": (by["ravdess"]["ua"] + 0.5) / 2, "by_corpus": by}

    value = soup._Judge.value


def test_average_weights_is_the_elementwise_mean_and_keeps_integer_buffers():
    a = {"w": torch.tensor([1.0, 3.0], dtype=torch.float16), "n": torch.tensor(5)}
    b = {"w": torch.tensor([3.0, 5.0], dtype=torch.float16), "n": torch.tensor(9)}
    out = soup.average_weights([a, b])
    assert out["w"].dtype == torch.float16 and out["w"].tolist() == [2.0, 4.0]
    assert int(out["n"]) == 5
    with pytest.raises(InputError, match="not one model"):
        soup.average_weights([a, {"w": torch.zeros(3), "n": torch.tensor(1)}])


def test_greedy_soup_adds_a_run_only_when_validation_does_not_fall(tmp_path, monkeypatch):
    monkeypatch.setattr(soup, "_Judge", _FakeJudge)
    # validation (ravdess part): 2.0 -> 0.95, 4.0 -> 0.85, 9.0 -> 0.35; 2.0 + 4.0 = 3.0 -> 0.95 (kept),
    # then + 9.0 = 5.0 -> 0.75 (left out)
    runs = [_run(tmp_path / f"r{x}.safetensors", x) for x in (9.0, 2.0, 4.0)]
    out = tmp_path / "soup.safetensors"
    meta = soup.greedy_soup(runs, str(out), judge=["ravdess"], log=lambda *_: None)
    assert meta["soup"]["kept"] == ["r2.0.safetensors", "r4.0.safetensors"]
    assert [s["kept"] for s in meta["soup"]["steps"]] == [True, True, False]
    model, stored = load_checkpoint(out)
    w = next(v for v in model.state_dict().values() if v.is_floating_point())
    assert torch.allclose(w, torch.full_like(w, 3.0))
    assert stored["soup"]["judged_on"] == "validation UA, mean over ravdess"
    assert stored["metrics"]["test"]["by_corpus"]["ravdess"]["ua"] == pytest.approx(0.95)
    assert read_meta(out)["training"]["init_from"] == "start.safetensors"
    with pytest.raises(InputError, match="does not hold"):
        soup.greedy_soup(runs, str(out), judge=["tess"], log=lambda *_: None)


def test_runs_that_cannot_make_one_soup_are_refused(tmp_path):
    base = _run(tmp_path / "a.safetensors", 1.0)
    cases = {
        "other speakers": _run(tmp_path / "b.safetensors", 1.0, split_seed=1),
        "another model": _run(tmp_path / "c.safetensors", 1.0, model="cat"),
        "other emotions": _run(tmp_path / "d.safetensors", 1.0, labels=("ang", "hap", "sad")),
        "other corpora": _run(tmp_path / "e.safetensors", 1.0, mix=MIX[:2]),
        "other encoders": _run(tmp_path / "f.safetensors", 1.0, encoders={"speech": "whisper:base"}),
    }
    for why, other in cases.items():
        with pytest.raises(InputError, match=why):
            soup.greedy_soup([base, other], str(tmp_path / "soup.safetensors"), log=lambda *_: None)
    with pytest.raises(InputError, match="two or more"):
        soup.greedy_soup([base], str(tmp_path / "soup.safetensors"), log=lambda *_: None)
    assert not (tmp_path / "soup.safetensors").exists()
