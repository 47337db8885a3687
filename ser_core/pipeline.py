"""The analysis pipeline: load a checkpoint once, analyse utterances, re-run only the model.

    analyzer = Analyzer("checkpoints/ks_transformer_demo.safetensors")
    analysis = analyzer.analyze("clip.wav")                 # decode → ASR → encoders → model
    sparse   = analysis.rerun(keep_ratio=0.2)               # model only, on cached Features

An Analyzer holds no per-user state (features are cached by content hash), so one instance can
be shared by every Streamlit session through ``st.cache_resource``; the model call is serialised
by a lock so concurrent sessions never interleave inside torch.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .audio import load_audio
from .checkpoint import load_checkpoint
from .errors import InputError
from .features import FeatureExtractor, Features, default_device
from .models.base import ModelOutput, collate_batch, feature_extras, model_axis_labels, model_inputs, to_trace
from .paths import CHECKPOINTS_DIR
from .trace import AttentionTrace, AxisLabels

DEFAULT_CHECKPOINT = CHECKPOINTS_DIR / "ks_transformer_demo.safetensors"


@dataclass
class Analysis:
    """One utterance analysed at one setting: features, prediction and trace."""

    features: Features
    labels: list[str]
    probs: np.ndarray
    trace: AttentionTrace
    keep_ratio: float | dict | None
    top_p: float | None
    timings: dict[str, float] = field(default_factory=dict)
    analyzer: "Analyzer | None" = field(default=None, repr=False, compare=False)

    @property
    def predicted(self) -> str:
        return self.labels[int(np.argmax(self.probs))]

    @property
    def confidence(self) -> float:
        return float(np.max(self.probs))

    def rerun(self, keep_ratio: float | dict | None = None, top_p: float | None = None,
              **options: Any) -> "Analysis":
        """The same utterance at another k / p (or model option, e.g. MESM's ``modalities``):
        runs the model only."""
        if self.analyzer is None:
            raise RuntimeError("this Analysis is detached from its Analyzer")
        return self.analyzer.run_model(self.features, keep_ratio=keep_ratio, top_p=top_p, **options)

    def to_dict(self, with_weights: bool = False) -> dict[str, Any]:
        return {
            "prediction": self.predicted,
            "probabilities": {l: float(p) for l, p in zip(self.labels, self.probs)},
            "keep_ratio": self.keep_ratio,
            "top_p": self.top_p,
            "duration_s": round(self.features.duration, 3),
            "transcript_source": self.features.transcript_source,
            "words": [
                {"text": w.text, "start": round(w.start, 3), "end": round(w.end, 3)}
                for w in self.features.words
            ],
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
            "trace": self.trace.to_dict(with_weights=with_weights),
        }


class Analyzer:
    """A loaded checkpoint plus its feature extractor."""

    def __init__(
        self,
        checkpoint: str | Path = DEFAULT_CHECKPOINT,
        device: str | torch.device | None = None,
        disk_cache: bool = True,
    ) -> None:
        self.device = torch.device(device) if device else default_device()
        self.checkpoint = Path(checkpoint)
        self.model, self.meta = load_checkpoint(checkpoint, device=self.device)
        self.model_name: str = self.meta["model"]
        self.labels: list[str] = list(self.meta["config"]["labels"])
        enc = self.meta.get("encoders", {})
        self.extractor = FeatureExtractor(
            speech_encoder=enc.get("speech", "whisper:tiny.en"),
            text_encoder=enc.get("text", "minilm"),
            device=self.device,
            disk_cache=disk_cache,
            sec_encoder=enc.get("sec"),
        )
        self._lock = threading.Lock()
        # The feature-extraction module's output per utterance (it does not depend on k/p):
        # a keep_ratio change re-runs only the key-sparse part of the model.
        self._extracted: OrderedDict[str, Any] = OrderedDict()

    @property
    def uses_video(self) -> bool:
        """Whether the model sees faces (then ``analyze`` reads the video)."""
        return "faces" in model_inputs(self.model)

    @property
    def uses_text(self) -> bool:
        return bool({"text", "sentence"} & set(model_inputs(self.model)))

    @property
    def description(self) -> str:
        return f"{self.model_name} ({self.checkpoint.name}) on {self.device.type}"

    def analyze(
        self,
        audio: Any,
        transcript: str | None = None,
        video: Any = None,
        keep_ratio: float | dict | None = None,
        top_p: float | None = None,
    ) -> Analysis:
        """Decode + validate audio, find words, encode, run the model.

        ``audio`` is a path, bytes, a file-like object, or an already-decoded 16 kHz array.
        ``video`` (path, bytes, file-like) is used by models that see faces (``uses_video``);
        others ignore it. Raises InputError (a message for the user) on bad input, e.g. a
        video in which no face is found.
        """
        t0 = time.perf_counter()
        samples = audio if isinstance(audio, np.ndarray) else load_audio(audio)
        t1 = time.perf_counter()
        if transcript is not None and not transcript.strip():
            transcript = None
        feats = self.extractor.extract(
            samples, transcript=transcript, video=video if self.uses_video else None,
            extras=feature_extras(self.model),
        )
        t2 = time.perf_counter()
        result = self.run_model(feats, keep_ratio=keep_ratio, top_p=top_p)
        result.timings.update({"decode": t1 - t0, "features": t2 - t1, "total": time.perf_counter() - t0})
        return result

    def run_model(
        self, feats: Features, keep_ratio: float | dict | None = None, top_p: float | None = None,
        **options: Any,
    ) -> Analysis:
        """The model alone on cached features (what a k/p slider calls); ``options`` go to the
        model's forward (e.g. MESM's ``modalities="TA"``)."""
        t0 = time.perf_counter()
        with self._lock, torch.inference_mode():
            extracted, batch = self._extracted.get(feats.key), None
            if extracted is None:  # first run on this utterance: build the batch
                batch = collate_batch(self.model, [feats], self.device)
                if hasattr(self.model, "extract"):
                    extracted = self._extracted[feats.key] = self.model.extract(batch, record=True)
                    while len(self._extracted) > 8:
                        self._extracted.popitem(last=False)
            if batch is None and extracted is None:
                batch = collate_batch(self.model, [feats], self.device)
            output: ModelOutput = self.model(batch, keep_ratio=keep_ratio, top_p=top_p, record=True,
                                             extracted=extracted, **options)
        trace = to_trace(output, 0, model_axis_labels(self.model, feats), model_name=self.model_name)
        probs = output.probs[0].detach().float().cpu().numpy()
        return Analysis(
            features=feats,
            labels=self.labels,
            probs=probs,
            trace=trace,
            keep_ratio=keep_ratio,
            top_p=top_p,
            timings={"model": time.perf_counter() - t0},
            analyzer=self,
        )


__all__ = ["Analyzer", "Analysis", "DEFAULT_CHECKPOINT", "InputError"]
