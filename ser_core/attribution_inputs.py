"""Per-model input adapters for ``ser_core.attribution``: what tensors of each model are
attributed, how their scores map onto the trace's word / frame axes, how words / frames are
dropped (``ser_core.deletion``) and how each model's attention is rolled out.

    adapter = model_adapter(model, feats)   # _SpeechTextAdapter, _MFSNAdapter, _LogMelAdapter, _MESMAdapter
    adapter.axes()                          # {"words": AxisLabels | None, "frames": AxisLabels | None}

The methods, the result type, the rollout maths and the cache keys are in
``ser_core.attribution`` (which this module imports; ``model_adapter`` is re-exported there).

Inputs (the tensors that are attributed; each reduced to the trace's axes by summing over
feature dimensions)
    KS-Transformer (and any model fed ``collate_speech_text``'s batch): the words' MiniLM states
        ("text", one row per word) and the speech frames after the model's fixed per-layer
        LayerNorm and learned layer mix (``audio_layer_mix``'s output, one row per frame).
        LayerNorm is scale-invariant, so a straight path from zero in the raw Whisper states
        would jump at the origin; its output is the first place where zero means "no signal".
        A model without ``audio_layer_mix`` is attributed on the raw "audio" tensor.
    MFSN: TEC and the chosen SEC level after their (non-affine) LayerNorms, one row per speech
        frame; plus the segments' standardised spectrogram and MFCC frames (10 ms), added to the
        speech frame whose time span holds them. ``words=None``.
    ILT / CAT: the log-mels after the model's input batch norm (the CNN's input, where padding
        is 0), summed over mel bands and over the 10 ms frames of each step of the frame axis.
    MESM / FE2E: the standardised 400 ms log-mel chunks (padding is 0), the sentence vector
        (no word axis: ``words=None``) and the face crops scaled to [-1, 1] (0 = mid-grey).
        "frames" = one score per chunk (the trace's "spectrogram" axis). MESM's
        straight-through estimator (a training device) is switched off here, so the gradients
        are those of the function the model computes.

Rollout per model (the maths: ``ser_core.attribution.rollout_matrix``)
    KS-Transformer: the audio and text feature-extraction stacks (one per modality) give each
        frame / word a distribution over the input frames and words; each CCAB's cross layer
        mixes in the other stream's rows, its self layer its own; the stack's skip connection
        averages input and output; the deep-fusion layers run over [frames ; words]; the two
        modality means are averaged (the classifier sees both halves).
    ILT: the Transformer stack's rollout, mean over rows (its mean pooling), and the LSTM
        flow's pooling weights β, weighted by the fusion α (½ each for concatenation).
    CAT: CtoL / LtoC cross stacks roll the CNN and LSTM steps into one token set; the two
        pooled outputs are averaged; CNN steps are spread onto the LSTM (frame) axis by time.
    MFSN: per segment, the co-attention weights of the SEC stream, plus those of the fused TEC
        stream carried back through the Fusion Cell (Σ_o α_o M_o, M = the attention map for
        attention operations and I for frame-wise ones); segments averaged.
    MESM / FE2E: the CLS row of the spectrogram sequence encoder's rollout (its attention is
        recomputed with ``need_weights``: it is not in the trace); MESM's nucleus layers attend
        within a chunk, not across chunks.
    Rollout is read from the trace (KS, ILT, CAT, MFSN): no gradient, no extra model run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .attribution import (
    DEFAULT_STEPS,
    FRAME_AXES,
    _assign_times,
    _head_mean,
    _hooks,
    _layer_names,
    _rows,
    project_by_time,
    rollout_matrix,
)
from .errors import InputError
from .models.base import collate_batch, model_axis_labels
from .trace import AttentionTrace, AxisLabels

__all__ = ["model_adapter"]


@dataclass
class _Source:
    """One attributed input: a batch entry (``key``) or a module's output (``module``), held as
    [1, *shape] (the leading 1 is the utterance, so Captum's batch is always one item)."""

    name: str
    key: str | None = None
    module: nn.Module | None = None
    value: Tensor | None = None


class _Adapter:
    """How one model family is fed, attributed, masked and rolled out.

    Subclasses set ``words_axis`` / ``frames_axis`` (modality names of ``model_axis_labels``)
    and implement :meth:`sources`, :meth:`reduce`, :meth:`drop` and :meth:`rollout`.
    """

    words_axis: str | None = None
    frames_axis: str | None = None
    default_steps: int = DEFAULT_STEPS

    def __init__(self, model: nn.Module, feats: Any, device: torch.device) -> None:
        self.model, self.feats, self.device = model, feats, device
        self.batch = self.prepare(collate_batch(model, [feats], device))
        self.labels = model_axis_labels(model, feats)
        self._sources: list[_Source] | None = None

    # --- overridable --------------------------------------------------------------------
    def prepare(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return batch

    def sources(self, setting: dict[str, Any]) -> list[_Source]:
        """The inputs to attribute at this setting."""
        raise NotImplementedError

    def reduce(self, attrs: dict[str, Tensor]) -> tuple[np.ndarray | None, np.ndarray | None]:
        raise NotImplementedError

    def point_maps(self, attrs: dict[str, Tensor]) -> dict[str, np.ndarray]:
        """Scores at the points a sparse layer chooses among, by the layer's query modality
        (MESM: every spectrogram chunk's and face crop's input points); {} for other models."""
        return {}

    def drop(self, batch: dict[str, Tensor], words: Tensor | None, frames: Tensor | None
             ) -> tuple[dict[str, Tensor], list]:
        """Mark dropped words / frames ([n, L] bool) as padding in an n-item batch; returns the
        batch and any hook handles to remove after the forward."""
        raise NotImplementedError

    def rollout(self, trace: AttentionTrace, setting: dict[str, Any]) -> tuple[np.ndarray | None, np.ndarray | None]:
        raise NotImplementedError

    def hooks(self) -> list:
        """Hooks that make gradients those of the function the model computes (none by default)."""
        return []

    # --- shared -------------------------------------------------------------------------
    @property
    def n_words(self) -> int | None:
        return None if self.words_axis is None else len(self.feats.words)

    @property
    def n_frames(self) -> int | None:
        return None if self.frames_axis is None else len(self.labels[self.frames_axis])

    def axes(self) -> dict[str, AxisLabels | None]:
        words = None
        if self.words_axis is not None:
            lab = self.labels[self.words_axis]
            words = lab if len(lab) == len(self.feats.words) else AxisLabels("words", [])
        return {"words": words, "frames": None if self.frames_axis is None else self.labels[self.frames_axis]}

    def expand(self, n: int) -> dict[str, Tensor]:
        return {k: v.expand(n, *v.shape[1:]) if isinstance(v, Tensor) and v.dim() >= 1 else v
                for k, v in self.batch.items()}

    def forward(self, batch: dict[str, Tensor], setting: dict[str, Any]) -> Tensor:
        out = self.model(batch, keep_ratio=setting.get("keep_ratio"), top_p=setting.get("top_p"),
                         record=False, **setting.get("options", {}))
        return out.probs

    def capture(self, setting: dict[str, Any]) -> list[_Source]:
        """The attributed inputs' values at x (one no-grad run with capturing hooks)."""
        if self._sources is not None:
            return self._sources
        sources = self.sources(setting)
        captured: dict[str, Tensor] = {}

        def make(src: _Source):
            def hook(module, args, output):
                captured[src.name] = output.detach().clone().unsqueeze(0)
            return src.module.register_forward_hook(hook)

        with torch.no_grad(), _hooks(lambda: [make(s) for s in sources if s.module is not None] + self.hooks()):
            self.forward(self.expand(1), setting)
        for s in sources:
            if s.module is not None and s.name not in captured:
                raise RuntimeError(f"the model did not run {s.name}")
            s.value = captured[s.name] if s.module is not None else self.batch[s.key].detach().clone()
        self._sources = [s for s in sources if s.value.numel() > 0]
        return self._sources

    def run_with(self, sources: list[_Source], xs: tuple[Tensor, ...], setting: dict[str, Any]) -> Tensor:
        """The predicted probabilities [n, C] with the attributed inputs replaced by ``xs`` (each
        [n, *shape]): batch entries substituted, module outputs replaced by hooks."""
        n = xs[0].shape[0]
        batch = self.expand(n)
        inject: dict[str, Tensor] = {}
        for s, x in zip(sources, xs):
            if s.module is None:
                batch[s.key] = x
            else:
                inject[s.name] = x

        def make(src: _Source):
            def hook(module, args, output):
                x = inject[src.name]
                if x.numel() != output.numel():
                    raise RuntimeError(f"{src.name}: {tuple(x.shape)} does not replace {tuple(output.shape)}")
                return x.reshape(output.shape)
            return src.module.register_forward_hook(hook)

        with _hooks(lambda: [make(s) for s in sources if s.module is not None] + self.hooks()):
            return self.forward(batch, setting)

    def run_dropped(self, words: Tensor | None, frames: Tensor | None, setting: dict[str, Any]) -> Tensor:
        n = (words if words is not None else frames).shape[0]
        batch, handles = self.drop(self.expand(n), words, frames)
        try:
            with _hooks(self.hooks):
                return self.forward(batch, setting)
        finally:
            for h in handles:
                h.remove()


class _SpeechTextAdapter(_Adapter):
    """KS-Transformer, and any model fed ``features.collate_speech_text``'s batch."""

    words_axis, frames_axis = "text", "audio"

    def sources(self, setting) -> list[_Source]:
        mix = getattr(self.model, "audio_layer_mix", None)
        out = [_Source("audio", module=mix) if isinstance(mix, nn.Module) else _Source("audio", key="audio")]
        if self.batch["text"].shape[1] > 0:
            out.append(_Source("text", key="text"))
        return out

    def reduce(self, attrs):
        a = attrs["audio"][0]  # [1, Ta, D] (after the mix) or [L, Ta, D] (raw)
        frames = a.sum(dim=(0, 2)).cpu().numpy()
        t = attrs.get("text")
        words = np.zeros(len(self.feats.words)) if t is None else t[0].sum(dim=-1).cpu().numpy()
        return words.astype(np.float64), frames.astype(np.float64)

    def drop(self, batch, words, frames):
        batch = dict(batch)
        if frames is not None:
            batch["audio_mask"] = batch["audio_mask"] | frames.to(self.device)
        if words is not None:
            batch["text_mask"] = batch["text_mask"] | words.to(self.device)
        return batch, []

    def run_dropped(self, words, frames, setting):
        """As the base class; but for a model with separate ``extract`` / ``interact`` stages
        (KS-Transformer: each modality's feature-extraction stack sees only its own modality),
        rows that remove only words reuse the utterance's audio stream (a third of the work)."""
        model = self.model
        only_words = None
        if words is not None and hasattr(model, "extract") and hasattr(model, "interact"):
            only_words = words.any(dim=1) & (True if frames is None else ~frames.any(dim=1))
        if only_words is None or not bool(only_words.any()):
            return self._run_frames_dropped(words, frames, setting)
        n, rows = words.shape[0], torch.nonzero(only_words).squeeze(1)
        probs: Tensor | None = None
        if len(rows) < n:
            rest = torch.nonzero(~only_words).squeeze(1)
            p_rest = self._run_frames_dropped(words[rest], None if frames is None else frames[rest], setting)
            probs = p_rest.new_zeros(n, p_rest.shape[1])
            probs[rest.to(probs.device)] = p_rest
        if getattr(self, "_audio_stream", None) is None:
            self._audio_stream = model.extract(self.expand(1))
        full = self._audio_stream
        k = len(rows)
        batch, _ = self.drop(self.expand(k), words[rows], None)
        batch["audio"], batch["audio_mask"] = batch["audio"][:, :, :1], batch["audio_mask"][:, :1]  # not used
        text = model.extract(batch)
        if not dataclasses.is_dataclass(text) or not hasattr(text, "audio"):
            return super().run_dropped(words, frames, setting)
        ex = dataclasses.replace(text, audio=full.audio.expand(k, *full.audio.shape[1:]),
                                 audio_mask=full.audio_mask.expand(k, *full.audio_mask.shape[1:]), attentions=[])
        p_words = model(None, keep_ratio=setting.get("keep_ratio"), top_p=setting.get("top_p"), record=False,
                        extracted=ex, **setting.get("options", {})).probs
        if probs is None:
            return p_words
        probs[rows.to(probs.device)] = p_words
        return probs

    def _run_frames_dropped(self, words, frames, setting):
        """Rows that each remove the same number of frames (and no word): the removed frames are
        left out of the sequence instead of masked, each kept frame keeping its positional
        encoding (a hook on the audio stack's ``position``). The result is the same — a padded
        frame is never a key, never pooled, never a counted query, and its own output is never
        read — and the work shrinks with what is removed. Other rows: the masked batch."""
        position = getattr(getattr(self.model, "audio_encoder", None), "position", None)
        pe = getattr(position, "pe", None)
        if frames is None or not isinstance(pe, Tensor) or (words is not None and bool(words.any())):
            return super().run_dropped(words, frames, setting)
        counts = frames.sum(dim=1)
        if bool((counts != counts[0]).any()) or int(counts[0]) == 0 or bool(self.batch["audio_mask"].any()):
            return super().run_dropped(words, frames, setting)
        k = frames.shape[0]
        keep_idx = torch.stack([torch.nonzero(~row).squeeze(1) for row in frames]).to(self.device)  # [k, T']
        batch = self.expand(k)
        batch["audio"] = self.batch["audio"][0][:, keep_idx].permute(1, 0, 2, 3)  # [k, layers, T', D]
        batch["audio_mask"] = torch.zeros(keep_idx.shape, dtype=torch.bool, device=self.device)

        def hook(module, args, output):  # x + PE at each kept frame's own position
            return args[0] + module.pe[keep_idx].to(args[0].dtype)

        handle = position.register_forward_hook(hook)
        try:
            return self.forward(batch, setting)
        finally:
            handle.remove()

    def rollout(self, trace, setting):
        if getattr(self.model, "model_name", None) != "ks_transformer":
            return _mean_attention_received(trace, self)
        return _ks_rollout(trace, len(self.labels["audio"]), len(self.feats.words))


def _ks_rollout(trace: AttentionTrace, Ta: int, n_words: int) -> tuple[np.ndarray, np.ndarray]:
    """Rollout through the KS-Transformer's stacks (module docstring)."""
    recs = {r.name: r for r in trace.records}

    def stack(prefix: str) -> list[np.ndarray]:
        out, i = [], 0
        while f"{prefix}.{i}" in recs:
            out.append(recs[f"{prefix}.{i}"].weights)
            i += 1
        return out

    audio_maps, text_maps = stack("audio_encoder"), stack("text_encoder")
    Tt = int(recs["text_encoder.0"].weights.shape[-1]) if text_maps else max(n_words, 1)
    if "ccab_a2t.0.cross" in recs:
        Tt = int(recs["ccab_a2t.0.cross"].weights.shape[-1])
    T = Ta + Tt
    Ea = np.zeros((Ta, T))
    Ea[:, :Ta] = rollout_matrix(audio_maps) if audio_maps else np.eye(Ta)
    Et = np.zeros((Tt, T))
    Et[:, Ta:] = rollout_matrix(text_maps) if text_maps else np.eye(Tt)

    def interact(prefix: str, own: np.ndarray, other: np.ndarray) -> np.ndarray:
        x, i = own, 0
        while f"{prefix}.{i}.cross" in recs:
            C = _head_mean(recs[f"{prefix}.{i}.cross"].weights)  # [T_own, T_other] (sparse rows)
            x = _rows(0.5 * x + 0.5 * C @ other)
            S = _head_mean(recs[f"{prefix}.{i}.self"].weights)
            x = _rows(0.5 * x + 0.5 * S @ x)
            i += 1
        return own if i == 0 else 0.5 * (own + x)  # the stack's skip connection: a + x

    Fa, Ft = interact("ccab_a2t", Ea, Et), interact("ccab_t2a", Et, Ea)
    X = np.vstack([Fa, Ft])
    for W in stack("fusion"):
        X = _rows(0.5 * X + 0.5 * _head_mean(W) @ X)
    score = 0.5 * X[:Ta].mean(axis=0) + 0.5 * X[Ta:].mean(axis=0)
    score = score / max(score.sum(), 1e-12)
    words = score[Ta:Ta + n_words] if n_words else np.zeros(0)
    return words, score[:Ta]


def _mean_attention_received(trace: AttentionTrace, adapter: _Adapter) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Fallback for a model whose layer graph is not known here: per axis, the mean over the
    records keyed on it of the attention each key receives (head mean, mean over queries)."""
    out: list[np.ndarray | None] = []
    for axis, n in ((adapter.words_axis, adapter.n_words), (adapter.frames_axis, adapter.n_frames)):
        if axis is None:
            out.append(None)
            continue
        rows = [_head_mean(r.weights).mean(axis=0) for r in trace.records if r.key_modality == axis]
        rows = [r[:n] for r in rows if len(r) >= n]
        out.append(np.mean(rows, axis=0) if rows else np.zeros(n))
    total = sum(float(np.sum(x)) for x in out if x is not None) or 1.0
    return tuple(None if x is None else x / total for x in out)  # type: ignore[return-value]


class _MFSNAdapter(_Adapter):
    words_axis, frames_axis = None, "sec"

    def prepare(self, batch):
        B, S, Fr = batch["frame_mask"].shape
        self.valid_pos = torch.nonzero(~batch["frame_mask"][0].reshape(-1)).squeeze(1)  # [Nf] flat (s, f)
        labels = model_axis_labels(self.model, self.feats)["sec"]
        starts = batch["segment_start"][0].cpu().numpy()
        Ts = batch["spectrogram"].shape[-1]
        times = starts[:, None] + np.arange(Ts)[None, :] * 0.01  # spectral frame t at t·hop (centred)
        spec_frame = _assign_times(times.reshape(-1), labels).reshape(S, Ts)
        real = ~batch["spectral_mask"][0].cpu().numpy()
        self.spec_frame = np.where(real, spec_frame, -1)  # [S, Ts] speech frame of each spectral frame
        return batch

    def sources(self, setting):
        return [_Source("tec", module=self.model.tec_proj[0]), _Source("sec", module=self.model.sec_proj[0]),
                _Source("spectrogram", key="spectrogram"), _Source("mfcc", key="mfcc")]

    def reduce(self, attrs):
        Nf = len(self.valid_pos)
        frames = np.zeros(Nf)
        pos = self.valid_pos.cpu().numpy()
        for name in ("tec", "sec"):
            frames += attrs[name][0].sum(dim=-1).reshape(-1).cpu().numpy()[pos]
        for name in ("spectrogram", "mfcc"):
            per = attrs[name][0].sum(dim=-2).cpu().numpy()  # [S, Ts]
            ok = self.spec_frame >= 0
            np.add.at(frames, self.spec_frame[ok], per[ok])
        return None, frames

    def drop(self, batch, words, frames):
        batch = dict(batch)
        if frames is not None:
            n = frames.shape[0]
            B, S, Fr = batch["frame_mask"].shape
            fm = batch["frame_mask"].reshape(n, S * Fr).clone()
            fm[:, self.valid_pos] |= frames.to(fm.device)
            batch["frame_mask"] = fm.reshape(n, S, Fr)
            # the spectrogram / MFCC frames inside a dropped frame become padding's value (0)
            sf = torch.as_tensor(self.spec_frame, device=fm.device)
            dropped = torch.zeros(n, *sf.shape, dtype=torch.bool, device=fm.device)
            ok = sf >= 0
            dropped[:, ok] = frames.to(fm.device)[:, sf[ok]]
            keep = (~dropped).to(batch["spectrogram"].dtype)[:, :, None, :]
            batch["spectrogram"] = batch["spectrogram"] * keep
            batch["mfcc"] = batch["mfcc"] * keep
        return batch, []

    def rollout(self, trace, setting):
        recs = {r.name: r for r in trace.records}
        n = self.n_frames
        if "co_attention.sec" not in recs:
            return None, None
        a_S = _head_mean(recs["co_attention.sec"].weights)  # [segments, Nf]
        a_T = _head_mean(recs["co_attention.tec"].weights) if "co_attention.tec" in recs else a_S
        ops = list(trace.extras.get("operations", []))
        if trace.extras.get("derived"):
            weights = {str(trace.extras.get("fusion_op")): 1.0}
        else:
            alpha = np.asarray(trace.extras.get("alpha", np.ones(len(ops)) / max(len(ops), 1)), float).reshape(-1)
            weights = dict(zip(ops, alpha))
        R = np.zeros((n, n))
        for op, w in weights.items():
            rec = recs.get(f"fusion_cell.{op}")
            R += w * (_rows(_head_mean(rec.weights)) if rec is not None else np.eye(n))
        R = _rows(R) if R.any() else np.eye(n)
        score = np.zeros(n)
        for s in range(a_S.shape[0]):
            score += 0.5 * _rows(a_S[s][None])[0] + 0.5 * (_rows(a_T[s][None]) @ R)[0]
        return None, score / max(score.sum(), 1e-12)


class _LogMelAdapter(_Adapter):
    """ILT and CAT: log-mels after the input batch norm; frames = steps of the frame axis."""

    words_axis = None
    # The log-mel CNNs' output moves fast along the IG path: 16 Gauss–Legendre points left a
    # completeness gap of 0.16 on a 3 s sample (ILT), 32 points 0.004; for the ILT shipped since
    # 2026-12-05 (recording level removed) 32 points leave 0.020 on the test sample, 48 points
    # 0.0035, 64 points 0.0006. They are cheap models (48 points: ~0.3–0.5 s).
    default_steps = 48

    def __init__(self, model, feats, device):
        self.frames_axis = FRAME_AXES.get(model.model_name, "cnn")
        super().__init__(model, feats, device)
        L = int((~self.batch["log_mel_mask"][0]).sum())
        # log-mel frame t is centred at t·10 ms: the step of the frame axis that holds it
        self.frame_step = _assign_times(np.arange(L) * 0.01, self.labels[self.frames_axis])

    def sources(self, setting):
        return [_Source("log_mel", module=self.model.input_norm)]

    def reduce(self, attrs):
        per_frame = attrs["log_mel"][0, 0].sum(dim=0).cpu().numpy()  # [L]
        frames = np.zeros(self.n_frames)
        np.add.at(frames, self.frame_step, per_frame)
        return None, frames

    def drop(self, batch, words, frames):
        if frames is None:
            return batch, []
        step = torch.as_tensor(self.frame_step, device=self.device)
        keep = (~frames.to(self.device)[:, step]).float()[:, None, :]  # [n, 1, L]

        def hook(module, args, output):  # a dropped frame = padding's value to the CNN (0)
            return output * keep.to(output.dtype)

        return batch, [self.model.input_norm.register_forward_hook(hook)]

    def rollout(self, trace, setting):
        recs = {r.name: r for r in trace.records}
        frame_labels = self.labels[self.frames_axis]
        if self.model.model_name == "ilt" or "lstm.pooling" in recs:
            maps = [recs[n].weights for n in _layer_names(recs, "transformer")]
            K = len(self.labels["cnn"])
            r_trans = rollout_matrix(maps).mean(axis=0) if maps else np.full(K, 1.0 / K)
            beta = np.asarray(recs["lstm.pooling"].weights, float).reshape(-1)[:K] if "lstm.pooling" in recs \
                else np.full(K, 1.0 / K)
            alpha = trace.extras.get("fusion_alpha") or {"lstm": 0.5, "transformer": 0.5}
            score = float(alpha["lstm"]) * beta + float(alpha["transformer"]) * r_trans
            out = project_by_time(score, self.labels["cnn"], frame_labels) if self.frames_axis != "cnn" else score
            return None, out / max(out.sum(), 1e-12)
        # CAT: tokens = CNN steps then LSTM steps
        K, T2 = len(self.labels["cnn"]), len(self.labels["lstm"])
        total, parts = np.zeros(K + T2), 0
        for prefix, q0, q_n, k0 in (("ctol", 0, K, K), ("ltoc", K, T2, 0)):
            layer_names = _layer_names(recs, prefix)
            if not layer_names:
                continue
            y = np.zeros((q_n, K + T2))
            y[:, q0:q0 + q_n] = np.eye(q_n)
            for name in layer_names:
                A = _head_mean(recs[name].weights)  # [q_n, keys]
                mixed = np.zeros_like(y)
                mixed[:, k0:k0 + A.shape[1]] = A
                y = _rows(0.5 * y + 0.5 * mixed)
            total += y.mean(axis=0)
            parts += 1
        if parts == 0:
            return None, None
        out = np.zeros(len(frame_labels))
        for axis, part in (("cnn", total[:K]), ("lstm", total[K:])):
            out += part if axis == self.frames_axis else project_by_time(part, self.labels[axis], frame_labels)
        return None, out / max(out.sum(), 1e-12)


class _MESMAdapter(_Adapter):
    """MESM and FE2E: sentence vector, 400 ms log-mel chunks, face crops."""

    words_axis = None

    def __init__(self, model, feats, device):
        self.frames_axis = "spectrogram" if "A" in model.config.modalities else None
        super().__init__(model, feats, device)

    def prepare(self, batch):
        batch = dict(batch)
        if "faces" in batch and batch["faces"].dtype == torch.uint8:
            batch["faces"] = batch["faces"].float() / 127.5 - 1.0  # what extract() does to uint8 crops
        return batch

    def _modalities(self, setting: dict[str, Any]) -> str:
        return setting.get("options", {}).get("modalities") or self.model.config.modalities

    def sources(self, setting):
        mods = self._modalities(setting)
        out = [_Source("sentence", key="sentence")]
        if "chunks" in self.batch and "A" in mods:
            out.append(_Source("chunks", key="chunks"))
        if "faces" in self.batch and self.batch["faces"].shape[1] > 0 and "V" in mods:
            out.append(_Source("faces", key="faces"))
        return out

    def hooks(self):
        """MESM's straight-through term (forward ×1, backward as if ×attention) is a training
        device: detaching M_i turns it off, leaving the gradient of what the model computes."""
        handles = []
        for cnn in getattr(self.model, "cnns", {}).values():
            for block in cnn.blocks:
                if block.attention is not None:
                    handles.append(block.attention.register_forward_hook(
                        lambda m, a, out: (out[0].detach(), out[1])))
        return handles

    def reduce(self, attrs):
        if "chunks" not in attrs:  # the spectrogram is not used at this setting: no share
            return None, None if self.frames_axis is None else np.zeros(self.n_frames)
        return None, attrs["chunks"][0].sum(dim=(1, 2)).cpu().numpy().astype(np.float64)

    def point_maps(self, attrs):
        """{"spectrogram": [chunks, n_mels, frames], "visual": [faces, size, size]} (colour
        channels summed): the input points whose feature-map cells MESM's nucleus keeps or drops."""
        out = {}
        if "chunks" in attrs:
            out["spectrogram"] = attrs["chunks"][0].cpu().numpy().astype(np.float64)
        if "faces" in attrs:
            out["visual"] = attrs["faces"][0].sum(dim=-1).cpu().numpy().astype(np.float64)
        return out

    def drop(self, batch, words, frames):
        batch = dict(batch)
        if frames is not None and "chunk_mask" in batch:
            batch["chunk_mask"] = batch["chunk_mask"] | frames.to(self.device)
        return batch, []

    def rollout(self, trace, setting):
        if self.frames_axis is None:
            return None, None
        if "A" not in self._modalities(setting):
            return None, np.zeros(self.n_frames)
        encoder = self.model.encoders["spectrogram"].encoder
        maps: list[Tensor] = []

        def make(layer):
            def pre(module, args, kwargs):
                x = args[0]
                h = module.norm1(x) if module.norm_first else x
                _, w = module.self_attn(h, h, h, key_padding_mask=kwargs.get("src_key_padding_mask"),
                                        attn_mask=kwargs.get("src_mask"), need_weights=True,
                                        average_attn_weights=True)
                maps.append(w[0].detach())
            return layer.register_forward_pre_hook(pre, with_kwargs=True)

        with torch.no_grad(), _hooks(lambda: [make(l) for l in encoder.layers]):
            self.forward(self.expand(1), setting)
        R = rollout_matrix([m.cpu().numpy() for m in maps])
        cls = R[0, 1:1 + self.n_frames]
        return None, cls / max(cls.sum(), 1e-12)


def model_adapter(model: nn.Module, feats: Any, device: torch.device | str = "cpu") -> _Adapter:
    """The adapter for a model family (raises InputError for a model it does not know)."""
    from .models.ilt_cat import _LogMelModel
    from .models.mesm import MESM
    from .models.mfsn import MFSN

    device = torch.device(device)
    if isinstance(model, MESM):
        return _MESMAdapter(model, feats, device)
    if isinstance(model, _LogMelModel):
        return _LogMelAdapter(model, feats, device)
    if isinstance(model, MFSN):
        return _MFSNAdapter(model, feats, device)
    adapter = _SpeechTextAdapter(model, feats, device)
    if not {"audio", "audio_mask", "text", "text_mask"} <= set(adapter.batch):
        raise InputError(f"Attributions are not available for {getattr(model, 'model_name', type(model).__name__)}.")
    return adapter
