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
from typing import Any, Callable

import numpy as np
import torch

from . import limits
from .analysis_queue import Cancelled
from .asr import require_asr_words, require_speech
from .attention import maps_pooled_to
from .audio import load_audio
from .checkpoint import DEFAULT_CHECKPOINT_NAME, load_checkpoint
from .errors import InputError
from .features import FeatureExtractor, Features, default_device
from .models.base import ModelOutput, collate_batch, feature_extras, model_axis_labels, model_inputs, to_trace
from .paths import CHECKPOINTS_DIR
from .trace import POOLED_CELLS, AttentionTrace, AxisLabels

#: A KS-Transformer's feature-extraction output (its vanilla maps included) is kept per utterance
#: so that a slider move re-runs only the key-sparse part: for this many utterances at most, and
#: this many bytes (ten 10 s clips are ~0.4 GB; a clip too long to explain keeps its maps pooled:
#: 28 MB at 60 s, against 1.4 GB whole).
MAX_EXTRACTED, MAX_EXTRACTED_BYTES = 8, 512 * 2**20


def _tensor_bytes(value: Any) -> int:
    """Bytes held by the tensors in ``value`` (a dataclass, list, tuple or dict of them)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    if hasattr(value, "__dataclass_fields__"):
        return sum(_tensor_bytes(getattr(value, f)) for f in value.__dataclass_fields__)
    return 0

DEFAULT_CHECKPOINT = CHECKPOINTS_DIR / DEFAULT_CHECKPOINT_NAME


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
    options: dict[str, Any] = field(default_factory=dict)  # other model options (MESM's modalities)
    features_reused: bool = False  # analyze() found the words and speech states in the cache

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

    def attribution(self, method: str = "integrated_gradients", **kwargs: Any) -> dict[str, np.ndarray | None]:
        """One score per word and per speech frame for the predicted class's probability:
        ``{"words": array[n_words] or None, "frames": array[n_frames] or None}`` on the trace's
        word and frame axes (``ser_core.attribution``). method: "integrated_gradients" (baseline:
        all zeros), "input_x_gradient" or "rollout". Cached per utterance and setting."""
        return self.attribution_details(method, **kwargs).as_dict()

    def attribution_details(self, method: str = "integrated_gradients", **kwargs: Any):
        """The full :class:`ser_core.attribution.Attribution` (IG's completeness delta, timing)."""
        return self._attached().attribute(self, method, **kwargs)

    def attribution_axes(self) -> dict[str, AxisLabels | None]:
        """The AxisLabels that ``attribution()``'s "words" / "frames" scores index."""
        from .attribution import attribution_axes

        return attribution_axes(self._attached().model, self.features)

    def deletion_test(self, layer: str | None = None, **kwargs: Any):
        """Faithfulness: remove the top 10…50 % of words / frames by the attention of ``layer``
        (default: the page's word and waveform records), by each attribution and at random; the
        predicted class's probability after each removal, and AOPC (``ser_core.deletion``).
        Cached per utterance, setting and layer."""
        return self._attached().deletion_test(self, layer=layer, **kwargs)

    def _attached(self) -> "Analyzer":
        if self.analyzer is None:
            raise RuntimeError("this Analysis is detached from its Analyzer")
        return self.analyzer

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


def _stop_if(should_stop: Callable[[], bool] | None) -> None:
    """Raise Cancelled when ``should_stop`` says the analysis is no longer wanted."""
    if should_stop is not None and should_stop():
        raise Cancelled()


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
        # Attributions and deletion tests per (utterance, setting, ...): computed once each.
        self._explanations: OrderedDict[tuple, Any] = OrderedDict()
        self._explanations_lock = threading.Lock()
        # keys being computed now → set when done: a second session asking for the same one (a
        # class on the same sample clip) waits for that result instead of computing it again
        self._computing: dict[tuple, threading.Event] = {}

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
        should_stop: Callable[[], bool] | None = None,
    ) -> Analysis:
        """Decode + validate audio, find words, encode, run the model.

        ``audio`` is a path, bytes, a file-like object, or an already-decoded 16 kHz array.
        ``video`` (path, bytes, file-like) is used by models that see faces (``uses_video``);
        others ignore it. Raises InputError (a message for the user) on bad input, e.g. a
        video in which no face is found.

        Before the model runs, the clip must hold at least ``asr.MIN_SPEECH_SECONDS`` of speech
        and, when its words come from Whisper (no typed transcript), at least one word Whisper
        is reasonably sure of (``asr.MIN_WORD_PROBABILITY``); otherwise InputError says so
        instead of giving a prediction. Feature extraction for training does not check this.

        ``should_stop`` (e.g. ``ser_core.analysis_queue.Ticket.should_stop``) is asked before each
        step (decoding, each Whisper segment, the speech encoder, the text encoder, the model);
        when it answers True, :class:`Cancelled` is raised and the remaining steps are skipped.
        """
        _stop_if(should_stop)
        limits.apply_math_threads()  # the encoders run in this thread too
        t0 = time.perf_counter()
        samples = audio if isinstance(audio, np.ndarray) else load_audio(audio)
        t1 = time.perf_counter()
        if transcript is not None and not transcript.strip():
            transcript = None
        require_speech(samples)  # before ASR and the encoders: cheap, and they would be wasted
        _stop_if(should_stop)
        report: dict[str, Any] = {}
        feats = self.extractor.extract(
            samples, transcript=transcript, video=video if self.uses_video else None,
            extras=feature_extras(self.model), stop_if_asked=lambda: _stop_if(should_stop),
            report=report,
        )
        if feats.transcript_source == "asr":  # a typed transcript: the user told us the words
            require_asr_words(feats.words)
        t2 = time.perf_counter()
        _stop_if(should_stop)
        result = self.run_model(feats, keep_ratio=keep_ratio, top_p=top_p)
        result.timings.update({"decode": t1 - t0, "features": t2 - t1, "total": time.perf_counter() - t0})
        result.features_reused = bool(report.get("reused"))
        return result

    def _trim_extracted(self) -> None:
        """Drop the oldest extraction outputs beyond ``MAX_EXTRACTED`` items or
        ``MAX_EXTRACTED_BYTES`` (their maps grow with the square of the length: a 60 s clip's are
        1.4 GB whole, 28 MB pooled); the newest always stays, for the sliders of the clip on screen."""
        sizes = {key: _tensor_bytes(value) for key, value in self._extracted.items()}
        while len(self._extracted) > 1 and (len(self._extracted) > MAX_EXTRACTED
                                            or sum(sizes.values()) > MAX_EXTRACTED_BYTES):
            key, _ = self._extracted.popitem(last=False)
            sizes.pop(key)

    def run_model(
        self, feats: Features, keep_ratio: float | dict | None = None, top_p: float | None = None,
        **options: Any,
    ) -> Analysis:
        """The model alone on cached features (what a k/p slider calls); ``options`` go to the
        model's forward (e.g. MESM's ``modalities="TA"``)."""
        t0 = time.perf_counter()
        # A clip longer than the deletion test and the attributions take keeps its maps at display
        # resolution (AttentionRecord.pool): its full maps grow with the square of its length
        # (~3 GB at 60 s, per visitor), and no view of it needs more than the heatmap draws.
        pool_to = POOLED_CELLS if limits.too_long_to_explain(feats.duration) else None
        with self._lock, torch.inference_mode(), maps_pooled_to(pool_to):
            limits.apply_math_threads()  # this thread's share of the cores (a rerun's thread is new)
            extracted, batch = self._extracted.get(feats.key), None
            if extracted is None:  # first run on this utterance: build the batch
                batch = collate_batch(self.model, [feats], self.device)
                if hasattr(self.model, "extract"):
                    extracted = self._extracted[feats.key] = self.model.extract(batch, record=True)
                    self._trim_extracted()
            else:
                self._extracted.move_to_end(feats.key)
            if batch is None and extracted is None:
                batch = collate_batch(self.model, [feats], self.device)
            output: ModelOutput = self.model(batch, keep_ratio=keep_ratio, top_p=top_p, record=True,
                                             extracted=extracted, **options)
        trace = to_trace(output, 0, model_axis_labels(self.model, feats), model_name=self.model_name,
                         pool_to=pool_to)
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
            options=dict(options),
        )

    # --- attributions and the deletion test (ser_core.attribution, ser_core.deletion) ---------

    def _setting(self, analysis: Analysis) -> dict[str, Any]:
        return {"keep_ratio": analysis.keep_ratio, "top_p": analysis.top_p, "options": dict(analysis.options)}

    def _cached(self, key: tuple, compute):
        """The cached value of ``key``, else ``compute()``'s, computed once even when several
        threads ask at the same time (the others wait for it; if it fails, the next one tries)."""
        while True:
            with self._explanations_lock:
                if key in self._explanations:
                    self._explanations.move_to_end(key)
                    return self._explanations[key]
                running = self._computing.get(key)
                if running is None:
                    done = self._computing[key] = threading.Event()
                    break
            running.wait()
        try:
            value = compute()
            with self._explanations_lock:
                self._explanations[key] = value
                while len(self._explanations) > 64:
                    self._explanations.popitem(last=False)
            return value
        finally:
            with self._explanations_lock:
                del self._computing[key]
            done.set()

    def attribute(self, analysis: Analysis, method: str = "integrated_gradients",
                  n_steps: int | None = None, internal_batch_size: int | None = None):
        """The Attribution of ``analysis``'s prediction (cached per utterance, setting, method)."""
        from .attribution import METHODS, compute_attribution, setting_key

        if method not in METHODS:
            raise InputError(f"Unknown attribution method {method!r}; use one of {list(METHODS)}.")
        limits.check_explainable(analysis.features.duration)
        setting = self._setting(analysis)
        steps = int(n_steps) if n_steps else None  # None: the model family's default
        key = ("attribution", analysis.features.key, setting_key(**setting), method,
               steps if method == "integrated_gradients" else None)
        target = int(np.argmax(analysis.probs))

        def compute():
            with self._lock:
                limits.apply_math_threads()
                return compute_attribution(
                    self.model, analysis.features, analysis.trace, target, self.labels[target], method,
                    setting, n_steps=steps, internal_batch_size=internal_batch_size, device=self.device)

        return self._cached(key, compute)

    def deletion_test(self, analysis: Analysis, layer: str | None = None,
                      rankings: tuple[str, ...] | None = None, steps: tuple[float, ...] | None = None,
                      seed: int = 0, n_steps: int | None = None):
        """The DeletionResult of ``analysis`` (cached per utterance, setting, layer, rankings)."""
        from .attribution import setting_key
        from .deletion import DEFAULT_RANKINGS, STEPS, run_deletion_test

        limits.check_explainable(analysis.features.duration)
        rankings = tuple(rankings or DEFAULT_RANKINGS)
        steps = tuple(steps or STEPS)
        setting = self._setting(analysis)
        key = ("deletion", analysis.features.key, setting_key(**setting), layer, rankings, steps, seed, n_steps)
        target = int(np.argmax(analysis.probs))

        def compute():
            attributions = {r: self.attribute(analysis, r, n_steps=n_steps)
                            for r in rankings if r in ("integrated_gradients", "input_x_gradient", "rollout")}
            # removals already run on this utterance at this setting (e.g. for another layer)
            known = self._cached(("deletion rows", analysis.features.key, setting_key(**setting)), dict)
            with self._lock:
                limits.apply_math_threads()
                return run_deletion_test(
                    self.model, analysis.features, analysis.trace, target, self.labels[target],
                    float(analysis.probs[target]), attributions, setting, layer=layer, rankings=rankings,
                    steps=steps, seed=seed, device=self.device, known=known)

        return self._cached(key, compute)


__all__ = ["Analyzer", "Analysis", "Cancelled", "DEFAULT_CHECKPOINT", "InputError"]
