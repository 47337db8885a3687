"""What the Models page says about each model: its paper, size, cost and reported results.

    card = model_card("checkpoints/ilt_demo.safetensors")
    card.parameters, card.flops_10s, card.demo_test, card.paper_results

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass over a
synthetic 10 s clip (speech states, 25 words, a face crop every 0.2 s: the shapes a real clip
gives). It counts matrix products, convolutions and attention (2 FLOPs per multiply-add), not
element-wise work; for MESM it counts the sparse CNN as it is executed (gathered points only).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .asr import Word
from .attribution import GLOBAL_HOOKS
from .checkpoint import load_checkpoint
from .features import FACE_FPS, FACE_SIZE, Features
from .models.base import collate_batch, model_inputs

# Results the papers report, on their data and protocol (not comparable with the demo corpus).
PAPER_RESULTS: dict[str, dict[str, Any]] = {
    "ks_transformer": {
        "paper": "Chen et al., Key-Sparse Transformer for Multimodal SER, ICASSP 2022 (Table 2)",
        "data": "IEMOCAP, 4 classes, audio + text", "wa": 0.743, "ua": 0.753,
    },
    "mesm": {
        "paper": "Dai et al., Multimodal End-to-End Sparse Model for Emotion Recognition, NAACL 2021 (Table 3)",
        "data": "IEMOCAP, 6 classes multi-label, text + audio + video, top_p 0.7; mean per-class "
                "binary accuracy 0.844, F1 0.574 (not WA/UA), 5.18 GFLOPs",
        "wa": None, "ua": None,
    },
    "fe2e": {
        "paper": "Dai et al., NAACL 2021 (Table 3), the fully end-to-end baseline",
        "data": "IEMOCAP, 6 classes multi-label; mean per-class binary accuracy 0.845, F1 0.588 "
                "(not WA/UA), 8.65 GFLOPs",
        "wa": None, "ua": None,
    },
    "mfsn": {
        "paper": "MFSN: Multi-perspective Fusion Search Network (Table 1)",
        "data": "IEMOCAP, 4 classes, leave-one-session-out (leave-one-speaker-out: UA 0.746, WA 0.732)",
        "wa": 0.719, "ua": 0.740,
    },
    "ilt": {
        "paper": "He et al., Effective Integration of Transformer for SER (Table 1: trainable plus, no PE)",
        "data": "IEMOCAP, 4 classes, random 0.55/0.25/0.2 splits, 5 runs", "wa": 0.6756, "ua": 0.6863,
    },
    "cat": {
        "paper": "He et al., Effective Integration of Transformer for SER (Table 2: CAT)",
        "data": "IEMOCAP, 4 classes, random 0.55/0.25/0.2 splits, 5 runs", "wa": 0.6810, "ua": 0.6925,
    },
}


@dataclass
class ModelCard:
    name: str
    checkpoint: str
    summary: str
    inputs: tuple[str, ...]
    parameters: int
    flops_10s: float
    labels: list[str]
    config: dict[str, Any]
    demo_test: dict[str, Any] = field(default_factory=dict)
    paper_results: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. MFSN's searched alpha
    # test scores per corpus on held-out speakers (a model trained on a mix), demo corpus included
    by_corpus: dict[str, dict[str, Any]] = field(default_factory=dict)
    trained_on: list[str] = field(default_factory=list)  # the corpora of its training data
    # the deletion test per corpus (``faithfulness --corpus ... --write``): its table, and when and
    # how it was measured; empty when it was never run on this checkpoint
    faithfulness: list[dict[str, str]] = field(default_factory=list)
    faithfulness_measured: str = ""


#: What the Models page and model cards say about each real corpus (licence and citation).
CORPUS_NOTES: dict[str, str] = {
    "ravdess": "RAVDESS speech, 24 actors (20 here), acted; CC BY-NC-SA 4.0. Livingstone & Russo (2018), "
               "PLoS ONE 13(5): e0196391",
    "tess": "TESS, 2 actresses aged 26 and 64, 'Say the word …'; CC BY-NC-ND 4.0. Dupuis & "
            "Pichora-Fuller (2010), University of Toronto, doi:10.5683/SP2/E8H2MF",
    "savee": "SAVEE, 4 male actors; research use. Haq & Jackson (2009)",
    "demo": "this project's synthetic demo corpus (espeak-ng and festival voices), generated locally",
    "demo-calm": "the demo corpus's calm-voice set, where the words decide the emotion (espeak-ng), "
                 "generated locally",
}


def model_summary(model_cls: type) -> str:
    """The first paragraph of the model module's docstring (what the paper's model is)."""
    module = importlib.import_module(model_cls.__module__)
    doc = (module.__doc__ or "").strip()
    return doc.split("\n\n")[0].replace("\n", " ") if doc else model_cls.__name__


def synthetic_clip(model, seconds: float = 10.0, seed: int = 0) -> Features:
    """Features with the shapes of a ``seconds``-long clip (values random) for counting cost."""
    rng = np.random.default_rng(seed)
    cfg = model.config
    layers = int(getattr(cfg, "audio_layers", 5))
    dim = int(getattr(cfg, "audio_dim", 384))
    text_dim = int(getattr(cfg, "text_dim", 384))
    frames = int(seconds * 50)
    n_words = int(seconds * 2.5)
    words = [Word(f"w{i}", i * seconds / n_words, (i + 0.8) * seconds / n_words) for i in range(n_words)]
    n_faces = int(seconds * FACE_FPS)
    return Features(
        key="synthetic", audio=(0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32),
        words=words, speech=rng.standard_normal((layers, frames, dim)).astype(np.float32),
        frame_times=(np.arange(frames) * 0.02 + 0.01).astype(np.float32),
        text=rng.standard_normal((n_words, text_dim)).astype(np.float32),
        extra={"sentence": rng.standard_normal(text_dim).astype(np.float32),
               "faces": rng.integers(0, 255, (n_faces, FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8),
               "face_times": (np.arange(n_faces) / FACE_FPS).astype(np.float32)},
    )


@torch.no_grad()
def count_flops(model, feats: Features, **knobs) -> float:
    """FLOPs of one forward pass over one utterance (FlopCounterMode: matmuls, convs, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    batch = collate_batch(model, [feats], next(model.parameters()).device)
    counter = FlopCounterMode(display=False)
    with GLOBAL_HOOKS, counter:  # its module hooks are global: no gradient attribution meanwhile
        model(batch, **knobs)
    return float(counter.get_total_flops())


def model_card(checkpoint: str | Path, device: str = "cpu") -> ModelCard:
    model, meta = load_checkpoint(checkpoint, device=device)
    name = meta["model"]
    cls = type(model)
    extras: dict[str, Any] = {}
    if hasattr(model, "alpha_distribution"):  # MFSN: the searched fusion-cell weights
        extras["alpha"] = model.alpha_distribution()
    return ModelCard(
        name=name, checkpoint=str(checkpoint), summary=model_summary(cls), inputs=model_inputs(cls),
        parameters=sum(p.numel() for p in model.parameters()),
        flops_10s=count_flops(model, synthetic_clip(model)),
        labels=list(meta["config"]["labels"]),
        config={k: v for k, v in meta["config"].items() if k != "labels"},
        demo_test=_demo_scores(meta.get("metrics", {}).get("test", {})),
        by_corpus=held_out_scores(meta),
        trained_on=trained_on(meta),
        paper_results=PAPER_RESULTS.get(name, {}),
        training={k: meta.get("training", {}).get(k) for k in ("preset", "epochs", "hyper", "sizes", "init_from")}
        | {"epoch_seconds": meta.get("metrics", {}).get("epoch_seconds"),
           "best_epoch": meta.get("metrics", {}).get("epoch")},
        extras=extras,
        faithfulness=faithfulness_table(meta.get("faithfulness_by_corpus")),
        faithfulness_measured=faithfulness_measured(meta.get("faithfulness_by_corpus")),
    )


def model_doc(model_cls: type) -> str:
    """The whole docstring of the model's file (its design, with the paper's equations)."""
    return (importlib.import_module(model_cls.__module__).__doc__ or "").strip()


def _demo_scores(test: dict[str, Any]) -> dict[str, Any]:
    """The demo corpus's test scores: the whole test part, or its share of a mix's."""
    by = test.get("by_corpus") or {}
    return by.get("demo", by.get("manifest", {})) if by else test


def held_out_scores(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Test scores per corpus on speakers never heard in training: a mix's own test parts, plus
    corpora the checkpoint was scored on afterwards (``evaluate --protocol speakers --write``)."""
    metrics = meta.get("metrics", {})
    test = metrics.get("test", {})
    own = test.get("by_corpus") or ({trained_on(meta)[0]: test} if test.get("ua") is not None and
                                   len(trained_on(meta)) == 1 else {})
    return {**metrics.get("held_out_speakers", {}), **own}


def trained_on(meta: dict[str, Any]) -> list[str]:
    """The corpora a checkpoint was trained on (a mix's training corpora, or its one corpus)."""
    training = meta.get("training", {})
    if training.get("mix"):
        return [m["name"] for m in training["mix"] if not m.get("test_only")]
    corpus = training.get("corpus")
    return ["demo" if corpus == "manifest" and "demo_corpus" in str(training.get("root", "")) else corpus] \
        if corpus else []


CORPUS_NAMES = {"demo": "demo corpus (synthetic)", "demo-calm": "demo corpus, calm voices (synthetic)",
                "ravdess": "RAVDESS", "tess": "TESS", "savee": "SAVEE"}


def faithfulness_table(report: dict[str, Any] | None) -> list[dict[str, str]]:
    """The stored per-corpus deletion test (``ser_core.faithfulness.faithfulness_by_corpus``) as
    rows: corpus, what was removed, clips, AOPC of each ranking, the fall of the predicted emotion's
    probability with the top 20 % removed by attention and at random, and their ratio. Numbers are
    probabilities (0–1); "–" where a ranking does not apply to the model."""
    from .deletion import AXIS_NAMES, RANKING_NAMES  # the names the deletion view uses

    if not report:
        return []

    def num(x, digits=3):
        return "–" if x is None else f"{x:.{digits}f}".replace("-0.000", "0.000")

    rows = []
    for corpus, result in report.get("corpora", {}).items():
        for axis, a in result.get("axes", {}).items():
            drop = a.get("drop_top20", {})
            ratio = a.get("attention_over_random")
            rows.append({
                "corpus": CORPUS_NAMES.get(corpus, corpus.upper()),
                "removed": AXIS_NAMES.get(axis, axis),
                "clips": str(a.get("utterances", result.get("utterances"))),
                **{f"AOPC {name}": num(a.get("aopc", {}).get(r)) for r, name in RANKING_NAMES.items()},
                "top 20 % removed: fall, attention": num(drop.get("attention")),
                "top 20 % removed: fall, random": num(drop.get("random")),
                "attention ÷ random": "–" if ratio is None else f"{ratio:.1f}×",
            })
    return rows


def faithfulness_measured(report: dict[str, Any] | None) -> str:
    """One line: when, on how many clips per corpus, and how long it took."""
    if not report:
        return ""
    settings = report.get("settings", {})
    took = sum(r.get("seconds", 0) for r in report.get("corpora", {}).values())
    limit = settings.get("limit")
    return (f"Measured {str(report.get('date', ''))[:10]} on speakers held out of training, "
            f"{'up to ' + str(limit) if limit else 'all'} clips per corpus (the same number of each "
            f"emotion as far as a corpus has them), in " + (f"{took:.0f} s." if took < 90 else f"{took / 60:.0f} min."))


REAL_VOICES = "real_voices.json"


def real_voices_report(checkpoints_dir: str | Path | None = None) -> dict[str, Any] | None:
    """The real-voice evaluation shipped beside the checkpoints (probe baseline, cross-corpus runs,
    what augmentation and mixing bought), or None when there is none. Written by the commands in
    checkpoints/README.md; read as JSON only."""
    import json

    from .paths import CHECKPOINTS_DIR

    path = Path(checkpoints_dir or CHECKPOINTS_DIR) / REAL_VOICES
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None
