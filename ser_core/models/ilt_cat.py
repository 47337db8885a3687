"""ILT and CAT: a Transformer integrated with a CNN and an LSTM, on log-mel spectrograms.

Paper: Y. He, N. Minematsu, D. Saito, "Effective Integration of Transformer for Network-based
Speech Emotion Recognition" (papers/ilt-cat_003_*.txt). This file holds the paper's two models
(the building blocks they share, from the masked batch norm and the CNN to the Transformer
layer, are in ``ilt_cat_blocks.py``):

* ``ilt`` — Integrate LSTM with Transformer (sec. 2.2, Fig. 1, eq. 5–16). A CNN turns the
  log-mels into a sequence C (eq. 5). C then goes two ways *in parallel*: a bi-LSTM whose
  states are pooled by attention (eq. 6–10), and a Transformer (eq. 11). The two utterance
  vectors are fused by concatenation (eq. 12), plus with a fixed α (eq. 13) or trainable plus
  (eq. 14–16), then classified. ``fusion`` picks the rule and ``positional_encoding`` switches
  the Transformer's PE (eq. 3–4) on or off: the two axes of Table 1.
* ``cat`` — Cross Attention Transformer (sec. 2.3, Fig. 2, Table 2). The log-mels go to a CNN
  and, in parallel, to a 1-D convolution (which only shortens the sequence) and an LSTM. Two
  cross-attention Transformers join them: CtoL (queries from the CNN output H^(C), keys and
  values from the LSTM output H^(L)) and LtoC (the other way). Their outputs are added, then a
  fully connected layer and softmax. ``variant`` selects Table 2's ablations: "full" (CAT),
  "ctol" (CtoL only: LtoC's weight set to 0), "ltoc" (LtoC only), "sum" (CNN+LSTM: the two
  branches' outputs added, no cross attention).

Input (sec. 3.2). 40-band log-mels, 25 ms window, 10 ms hop (``ser_core.encoders.spectral.
log_mel``), of utterances cut or padded to 7.5 s: a 40 × 750 matrix. The paper zero-pads the
*waveform*, so its models see the padding as silent frames (log of the floor) and attend to and
pool over them. We pad to the same 750 frames in ``collate`` (with the same log-floor value;
``fixed_length=False`` pads only to the batch's longest item) but carry a padding mask: batch
norm statistics, attention keys, the attention pooling β and the mean pooling all skip padded
frames, padded positions are reset to 0 before every convolution (the zeros a convolution pads
with), the LSTMs run on packed sequences, and a step after pooling or a strided convolution
counts as real only when every frame it pools is real. So an item's output does not depend on
how much padding follows it (tests check this), and the forward pass drops the frames after the
batch's longest real item before the CNN: same outputs, less work than 750 frames of padding.

Sizes. The paper gives none (no channel counts, layer counts, widths); ours are small for CPU
training: 3 conv blocks (8, 32, 64 channels, 3×3 kernels, 2×2 average pooling, so one CNN step
= 8 frames = 80 ms), d_model 128, 4 heads, 2 Transformer layers (CAT: 2 per direction); ILT ≈
0.43 M parameters, CAT ≈ 0.75 M. Our choices where the paper is silent, each marked "(ours)"
here or in ``ilt_cat_blocks.py``: a ReLU after the batch norm; a per-mel-band batch norm of the
input; a linear projection of each CNN step (channels × remaining mel bands) to d_model; mean
pooling of the Transformer outputs into one vector (eq. 11 leaves O_Trans a sequence); in CAT,
mean pooling of each cross-attention Transformer's output before the sum (their sequences have
different lengths), a unidirectional LSTM (the paper says "LSTM" for CAT, "bi-LSTM" for ILT), a
1-D convolution with kernel = stride = 4 frames, and sinusoidal encodings indexed by input frame
(so CNN and LSTM steps at the same time get the same encoding).

Trace (``record=True``). ILT: "lstm.pooling" (kind "pooling": β of eq. 9 as weights
[B, 1, 1, K], query modality "pool" — one position, the utterance — keys "cnn") and
"transformer.{i}" (kind "self", "cnn" × "cnn"). CAT: "ctol.{i}" (kind "cross", queries "cnn",
keys "lstm") and "ltoc.{i}" ("lstm" × "cnn"). Modality "cnn" is the CNN output's time steps,
"lstm" the 1-D convolution's (LSTM) steps; ``axis_labels`` gives each step the time span of the
frames it pools, and ``extras["padding_masks"]`` lets ``to_trace`` crop to the real audio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torchaudio
from torch import Tensor, nn

from ser_core.audio import SAMPLE_RATE
from ser_core.encoders.spectral import LOG_FLOOR, log_mel
from ser_core.errors import InputError
from ser_core.features import Features
from ser_core.models.base import ModelConfig, ModelOutput, RawAttention, register_model
from ser_core.models.ilt_cat_blocks import (CNN, ConvBlock, MaskedBatchNorm, TransformerLayer, _masked_mean, _raw,
                                            _run_lstm, _valid, recalibrate_batch_norm, sinusoidal_encoding)
from ser_core.trace import AxisLabels

__all__ = [
    "CAT", "CATConfig", "CNN", "ConvBlock", "ILT", "ILTConfig", "MaskedBatchNorm",
    "TransformerLayer", "sinusoidal_encoding",
    "recalibrate_batch_norm",  # moved to ilt_cat_blocks.py, still importable from here
]

HOP_MS = 10.0  # frame shift of the log-mels (sec. 3.2)
HOP_S = HOP_MS / 1000.0
HOP_SAMPLES = int(round(SAMPLE_RATE * HOP_S))
FUSIONS = ("concat", "plus", "trainable_plus")
VARIANTS = ("full", "ctol", "ltoc", "sum")


# --------------------------------------------------------------------------- configs

@dataclass
class LogMelFrontEndConfig(ModelConfig):
    """What ILT and CAT share: the input, the CNN and the Transformer sizes."""

    num_classes: int = 4
    labels: tuple[str, ...] = ("ang", "hap", "neu", "sad")  # IEMOCAP's 4 classes (sec. 3.1)
    dropout: float = 0.3  # the conv blocks' dropout (sec. 2.2) and before the classifier
    n_mels: int = 40  # "the number of filter banks is set to 40" (sec. 3.2)
    max_frames: int = 750  # 7.5 s at a 10 ms hop: longer utterances are cut (sec. 3.2)
    fixed_length: bool = True  # collate pads to max_frames (paper); False: to the batch's longest
    cnn_channels: tuple[int, ...] = (8, 32, 64)  # one conv block each (sizes ours; 8 first: CPU)
    cnn_freq_pool: tuple[int, ...] = (2, 2, 2)  # average-pooling sizes over mel bands
    cnn_time_pool: tuple[int, ...] = (2, 2, 2)  # ... and over frames: one CNN step = 8 frames
    d_model: int = 128
    heads: int = 4
    ff_dim: int = 256
    transformer_dropout: float = 0.1  # inside Transformer layers (FFN, residual)
    positional_encoding: bool = True  # eq. 3–4 before the first Transformer layer
    # (ours) subtract each mel band's mean over the clip's real frames before the input batch
    # norm: a fixed colouring (a microphone, a room, a voice's average timbre) and the gain
    # cancel out; how the spectrum moves over time, and its spread, stay
    utterance_mean_norm: bool = False
    # (ours) subtract ONE number per clip, the 75th percentile over its real frames of the frame's
    # mean log-mel (a level that speech, not the pauses, sets): the recording's gain cancels out
    # (log g²P = log P + 2 log g) and the spectrum's shape stays. A user's microphone gain is
    # arbitrary; in TESS the held-out voice is recorded 4-12 dB quieter than the training voice.
    utterance_gain_norm: bool = False
    # (ours) SpecAugment's masking (Park et al. 2019), in training only: this many bands of up to
    # spec_freq_width mel bands, and spans of up to spec_time_width frames, of each item's
    # normalised log-mels set to 0 (the corpus mean); 0 = off. Aimed at new voices and rooms.
    spec_freq_masks: int = 0
    spec_freq_width: int = 8
    spec_time_masks: int = 0
    spec_time_width: int = 40

    def __post_init__(self) -> None:
        if len(self.labels) != self.num_classes:
            raise InputError(f"num_classes={self.num_classes} but {len(self.labels)} labels {self.labels}.")
        if self.d_model % self.heads or self.d_model % 2:
            raise InputError(f"d_model={self.d_model} must be even and divisible by heads={self.heads}.")
        blocks = len(self.cnn_channels)
        if blocks == 0 or len(self.cnn_freq_pool) != blocks or len(self.cnn_time_pool) != blocks:
            raise InputError("cnn_channels, cnn_freq_pool and cnn_time_pool need one entry per conv block.")
        if any(p < 1 for p in (*self.cnn_freq_pool, *self.cnn_time_pool)) or any(c < 1 for c in self.cnn_channels):
            raise InputError("Pooling sizes and channel counts must be ≥ 1.")
        if self.n_mels // math.prod(self.cnn_freq_pool) < 1:
            raise InputError(f"{self.n_mels} mel bands cannot be pooled by {math.prod(self.cnn_freq_pool)}.")
        if self.max_frames < 1:
            raise InputError("max_frames must be ≥ 1.")
        if min(self.spec_freq_masks, self.spec_freq_width, self.spec_time_masks, self.spec_time_width) < 0:
            raise InputError("SpecAugment's mask counts and widths must be ≥ 0.")

    @property
    def cnn_stride(self) -> int:
        """Frames per CNN time step: the product of the time-pooling sizes."""
        return math.prod(self.cnn_time_pool)


@dataclass
class ILTConfig(LogMelFrontEndConfig):
    """ILT (sec. 2.2). Defaults: the best row of Table 1, trainable plus without PE."""

    fusion: str = "trainable_plus"  # "concat" (eq. 12) | "plus" (eq. 13) | "trainable_plus" (eq. 14–16)
    alpha: float = 0.5  # α of eq. 13 ("plus"); the paper does not give its value
    positional_encoding: bool = False  # Table 1: plus / trainable plus work better without PE
    transformer_layers: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fusion not in FUSIONS:
            raise InputError(f"fusion must be one of {FUSIONS}; got {self.fusion!r}.")
        if not 0.0 <= self.alpha <= 1.0:
            raise InputError(f"alpha must be in [0, 1]; got {self.alpha}.")
        if self.transformer_layers < 1:
            raise InputError("transformer_layers must be ≥ 1.")


@dataclass
class CATConfig(LogMelFrontEndConfig):
    """CAT (sec. 2.3). ``variant`` selects the rows of Table 2."""

    variant: str = "full"  # "full" | "ctol" (CtoL only) | "ltoc" (LtoC only) | "sum" (CNN+LSTM)
    cross_layers: int = 2  # layers per cross-attention Transformer (ours)
    lstm_conv_kernel: int = 4  # the 1-D convolution before the LSTM, in frames (ours)
    lstm_conv_stride: int = 4  # "simply for reducing the length of input features" (sec. 2.3)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in VARIANTS:
            raise InputError(f"variant must be one of {VARIANTS}; got {self.variant!r}.")
        if self.cross_layers < 1:
            raise InputError("cross_layers must be ≥ 1.")
        if self.lstm_conv_stride < 1 or self.lstm_conv_kernel < self.lstm_conv_stride:
            raise InputError("lstm_conv_kernel must be ≥ lstm_conv_stride ≥ 1.")


# --------------------------------------------------------------------------- shared front end

class _LogMelModel(nn.Module):
    """Input handling ILT and CAT share: collate, validation, input norm, axis labels."""

    inputs: ClassVar[tuple[str, ...]] = ("audio",)
    config: LogMelFrontEndConfig

    def recalibrate_batch_norm(self, batches) -> int:
        """Fresh batch-norm statistics with dropout off (see :func:`recalibrate_batch_norm`)."""
        return recalibrate_batch_norm(self, batches)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.config.labels)

    @classmethod
    def min_frames(cls, config: LogMelFrontEndConfig) -> int:
        """Fewest real log-mel frames an utterance needs (one step on every axis)."""
        return config.cnn_stride

    @staticmethod
    def real_frames(n_samples: int, config: LogMelFrontEndConfig) -> int:
        """Real log-mel frames of an n-sample utterance after the cut to max_frames (sec. 3.2)."""
        return min(1 + n_samples // HOP_SAMPLES, config.max_frames)

    @classmethod
    def _check_length(cls, n_samples: int, config: LogMelFrontEndConfig) -> int:
        frames = cls.real_frames(n_samples, config) if n_samples > 0 else 0
        need = cls.min_frames(config)
        if frames < need:
            raise InputError(f"The audio is too short to analyse: {n_samples / SAMPLE_RATE:.3f} s; this model "
                             f"needs at least {need * HOP_S:.2f} s.")
        return frames

    @classmethod
    def collate(cls, items: list[Features], config: LogMelFrontEndConfig | None = None,
                device: torch.device | str = "cpu") -> dict[str, Tensor]:
        """Log-mels of each item's audio, cut to max_frames and padded (sec. 3.2).

        Returns "log_mel" [B, n_mels, T] (padded frames hold log(floor), what the paper's zero
        padding gives) and "log_mel_mask" [B, T] (True = pad). T = max_frames when
        ``fixed_length`` (the paper's 750), else the batch's longest item.
        """
        cfg = config or cls.Config()  # type: ignore[attr-defined]
        if not items:
            raise InputError("Nothing to analyse: the batch is empty.")
        mels = []
        for f in items:
            audio = np.asarray(f.audio, dtype=np.float32).reshape(-1)
            frames = cls._check_length(audio.shape[0], cfg)
            audio = audio[: cfg.max_frames * HOP_SAMPLES]  # cut to 7.5 s
            x = torch.from_numpy(np.ascontiguousarray(audio)).to(device)
            mels.append(log_mel(x, n_mels=cfg.n_mels, hop_ms=HOP_MS)[:, :frames])
        T = cfg.max_frames if cfg.fixed_length else max(m.shape[1] for m in mels)
        batch = torch.full((len(mels), cfg.n_mels, T), math.log(LOG_FLOOR), device=device)
        mask = torch.ones(len(mels), T, dtype=torch.bool, device=device)
        for i, m in enumerate(mels):
            batch[i, :, : m.shape[1]] = m
            mask[i, : m.shape[1]] = False
        return {"log_mel": batch, "log_mel_mask": mask}

    def _inputs(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Validate the batch; return the normalised log-mels (0 at padding) and real lengths [B]."""
        cfg = self.config
        x = batch.get("log_mel") if isinstance(batch, dict) else None
        if not isinstance(x, Tensor):
            raise InputError("The model input has no 'log_mel' tensor.")
        if x.dim() != 3 or x.shape[1] != cfg.n_mels:
            raise InputError(f"log_mel must be [B, {cfg.n_mels}, frames]; got {tuple(x.shape)}.")
        B, _, T = x.shape
        mask = batch.get("log_mel_mask")
        if mask is None:
            mask = torch.zeros(B, T, dtype=torch.bool, device=x.device)
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != (B, T):
            raise InputError(f"log_mel_mask must be bool [{B}, {T}] (True = pad).")
        lengths = (~mask).sum(dim=1)
        if not torch.equal(mask, ~_valid(lengths, T)):
            raise InputError("log_mel_mask must mark padding at the end of each item only.")
        if B == 0 or int(lengths.min()) < self.min_frames(cfg):
            raise InputError(f"The audio is too short to analyse: each item needs at least "
                             f"{self.min_frames(cfg)} log-mel frames.")
        if not bool(torch.isfinite(x).all()):
            raise InputError("The log-mels contain NaN or infinite values.")
        # Frames after the batch's longest real item are padding for every item: dropping them
        # changes no output (padding is masked throughout) and saves the work of padding to 7.5 s.
        T = int(lengths.max())
        x, valid = x[..., :T], ~mask[:, :T]
        if cfg.utterance_mean_norm:
            w = valid.to(x.dtype)[:, None, :]
            x = x - (x * w).sum(-1, keepdim=True) / w.sum(-1, keepdim=True).clamp(min=1.0)
        if cfg.utterance_gain_norm:
            frame_level = x.mean(1).masked_fill(~valid, float("nan"))  # [B, T]
            x = x - torch.nanquantile(frame_level, 0.75, dim=-1)[:, None, None]
        # Per-mel-band batch norm of the input (ours): standardises the log-mels with corpus
        # statistics; padded frames become 0, what the convolutions pad with.
        x = self.input_norm(x, valid)
        if self.training:
            x = self.spec_augment(x)
        return x * valid.to(x.dtype)[:, None, :], lengths

    def spec_augment(self, x: Tensor) -> Tensor:
        """SpecAugment's frequency and time masks (torchaudio), drawn independently per item from
        torch's generator (so a training run's seed fixes them); ``x`` [B, n_mels, T] unchanged
        when the config asks for none."""
        cfg = self.config
        masks = ([(2, cfg.spec_freq_width)] * (cfg.spec_freq_masks if cfg.spec_freq_width else 0)
                 + [(3, cfg.spec_time_width)] * (cfg.spec_time_masks if cfg.spec_time_width else 0))
        if not masks:
            return x
        x = x.unsqueeze(1)  # per-item masks want [B, channel, freq (axis 2), time (axis 3)]
        for axis, width in masks:
            x = torchaudio.functional.mask_along_axis_iid(x, width, 0.0, axis)
        return x.squeeze(1)

    def _step_labels(self, n_steps: int, stride: int, kernel: int, duration: float) -> AxisLabels:
        """Labels of a strided axis: step j pools frames [j·stride, j·stride + kernel); frame t
        is centred at t·hop and spans one hop."""
        first = np.arange(n_steps, dtype=np.float64) * stride
        start = np.clip(first * HOP_S - HOP_S / 2, 0.0, duration)
        end = np.clip((first + kernel - 1) * HOP_S + HOP_S / 2, 0.0, duration)
        names = [f"{s:.3f}–{e:.3f} s" for s, e in zip(start, end)]
        return AxisLabels("frames", names, start, end)

    def _cnn_labels(self, frames: int, duration: float) -> AxisLabels:
        P = self.config.cnn_stride
        return self._step_labels(frames // P, P, P, duration)

    def _duration(self, feats: Features) -> tuple[int, float]:
        n = int(np.asarray(feats.audio).reshape(-1).shape[0])
        frames = self._check_length(n, self.config)
        return frames, min(n / SAMPLE_RATE, self.config.max_frames * HOP_S)

    def _positions(self, n: int, stride: int, device: torch.device) -> Tensor:
        """PE positions of a strided axis: the first input frame of each step (ours)."""
        return torch.arange(n, device=device) * stride


# --------------------------------------------------------------------------- ILT

@register_model("ilt")
class ILT(_LogMelModel):
    """ILT (Fig. 1): CNN → (bi-LSTM + attention pooling ‖ Transformer) → fusion → FC → softmax.

    forward(batch, record=False) → ModelOutput; batch from :meth:`collate` ("log_mel",
    "log_mel_mask"). keep_ratio / top_p / extracted are accepted and ignored.
    """

    Config = ILTConfig
    model_name = "ilt"

    def __init__(self, config: ILTConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or ILTConfig()
        d = cfg.d_model
        self.input_norm = MaskedBatchNorm(cfg.n_mels)
        self.cnn = CNN(cfg)  # eq. 5
        # Flow 1: bi-LSTM (eq. 6–8), d/2 units per direction so h_t has d values, and the
        # attention pooling's W (eq. 9; a bias would cancel in the softmax).
        self.lstm = nn.LSTM(d, d // 2, batch_first=True, bidirectional=True)
        self.attention = nn.Linear(d, 1, bias=False)
        # Flow 2: Transformer (eq. 11).
        self.transformer = nn.ModuleList(
            TransformerLayer(d, cfg.heads, cfg.ff_dim, cfg.transformer_dropout)
            for _ in range(cfg.transformer_layers)
        )
        # Fusion: W_A, W_B of eq. 15–16 (scalars: the paper reports one factor per flow).
        if cfg.fusion == "trainable_plus":
            self.fusion_weights = nn.Parameter(torch.zeros(2))
        fused = 2 * d if cfg.fusion == "concat" else d
        self.classifier = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(fused, cfg.num_classes))

    def fusion_alpha(self) -> Tensor | None:
        """[α for O_LSTM, α for O_Trans] (eq. 13, or eq. 15–16); None for concatenation."""
        cfg = self.config
        if cfg.fusion == "plus":
            return torch.tensor([cfg.alpha, 1.0 - cfg.alpha])
        if cfg.fusion == "trainable_plus":
            return torch.softmax(self.fusion_weights, dim=0)
        return None

    def forward(self, batch: dict[str, Tensor], keep_ratio: Any = None, top_p: Any = None,
                record: bool = False, extracted: Any = None) -> ModelOutput:
        cfg = self.config
        x, lengths = self._inputs(batch)
        c, c_lengths = self.cnn(x, lengths)  # C = CNN(X), eq. 5: [B, K, d]
        K = c.shape[1]
        c_mask = ~_valid(c_lengths, K)
        raws: list[RawAttention] = []

        # Flow 1: bi-LSTM (eq. 6–8) and attention pooling (eq. 9–10) over the real steps.
        h = _run_lstm(self.lstm, c, c_lengths)  # h_t = [h'_t ; h̄_t]
        beta = torch.softmax(self.attention(h).squeeze(-1).masked_fill(c_mask, float("-inf")), dim=-1)
        o_lstm = torch.einsum("bt,btd->bd", beta, h)  # O_LSTM = Σ_t β_t h_t
        if record:
            raws.append(RawAttention(name="lstm.pooling", kind="pooling", query_modality="pool",
                                     key_modality="cnn", weights=beta.detach()[:, None, None, :]))

        # Flow 2: Transformer (eq. 11), with or without PE (eq. 3–4); mean pooled (ours).
        t = c
        if cfg.positional_encoding:
            t = t + sinusoidal_encoding(self._positions(K, cfg.cnn_stride, c.device), cfg.d_model)
            t = t * (~c_mask).to(t.dtype)[..., None]
        for i, layer in enumerate(self.transformer):
            t, info = layer(t, c_mask, record=record)
            if record:
                raws.append(_raw(f"transformer.{i}", info, "self", "cnn", "cnn"))
        o_trans = _masked_mean(t, c_mask)

        # Fusion: concatenation (eq. 12), plus (eq. 13) or trainable plus (eq. 14–16).
        alpha = self.fusion_alpha()
        if alpha is None:
            o_final = torch.cat([o_lstm, o_trans], dim=-1)
        else:
            alpha = alpha.to(o_lstm)
            o_final = alpha[0] * o_lstm + alpha[1] * o_trans
        logits = self.classifier(o_final)

        model_extras: dict[str, Any] = {"fusion": cfg.fusion, "positional_encoding": cfg.positional_encoding,
                                        "labels": list(self.labels)}
        if alpha is not None:
            a = alpha.detach()
            model_extras["fusion_alpha"] = {"lstm": float(a[0]), "transformer": float(a[1])}
        extras = {"padding_masks": {"cnn": c_mask}, "model_extras": model_extras}
        return ModelOutput(logits=logits, probs=torch.softmax(logits, dim=-1), attentions=raws, extras=extras)

    def axis_labels(self, feats: Features) -> dict[str, AxisLabels]:
        """"cnn": one label per real CNN step (its 80 ms span); "pool": the pooled utterance."""
        frames, duration = self._duration(feats)
        cnn = self._cnn_labels(frames, duration)
        pool = AxisLabels("pool", ["utterance"], np.array([0.0]), np.array([duration]))
        return {"cnn": cnn, "pool": pool}


# --------------------------------------------------------------------------- CAT

@register_model("cat")
class CAT(_LogMelModel):
    """CAT (Fig. 2): CNN ‖ (1-D conv → LSTM), joined by cross-attention Transformers CtoL and
    LtoC, summed, FC, softmax. ``config.variant`` gives Table 2's ablations.

    forward(batch, record=False) → ModelOutput; batch from :meth:`collate`.
    """

    Config = CATConfig
    model_name = "cat"

    def __init__(self, config: CATConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or CATConfig()
        d = cfg.d_model
        self.input_norm = MaskedBatchNorm(cfg.n_mels)
        self.cnn = CNN(cfg)  # → H^(C)
        # "an 1D convolutional layer before LSTM simply for reducing the length" → H^(L)
        self.lstm_conv = nn.Conv1d(cfg.n_mels, d, kernel_size=cfg.lstm_conv_kernel, stride=cfg.lstm_conv_stride)
        self.lstm = nn.LSTM(d, d, batch_first=True)

        def cross() -> nn.ModuleList:
            return nn.ModuleList(TransformerLayer(d, cfg.heads, cfg.ff_dim, cfg.transformer_dropout)
                                 for _ in range(cfg.cross_layers))

        # Only the Transformers a variant uses are built ("setting the weight ... as 0").
        if cfg.variant in ("full", "ctol"):
            self.ctol = cross()  # queries H^(C), keys/values H^(L)
        if cfg.variant in ("full", "ltoc"):
            self.ltoc = cross()  # queries H^(L), keys/values H^(C)
        self.classifier = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(d, cfg.num_classes))

    @classmethod
    def min_frames(cls, config: CATConfig) -> int:  # type: ignore[override]
        return max(config.cnn_stride, config.lstm_conv_kernel)

    def _lstm_lengths(self, lengths: Tensor) -> Tensor:
        """Real steps after the 1-D convolution (a step is real when its whole kernel is)."""
        cfg = self.config
        return torch.div(lengths - cfg.lstm_conv_kernel, cfg.lstm_conv_stride, rounding_mode="floor") + 1

    def forward(self, batch: dict[str, Tensor], keep_ratio: Any = None, top_p: Any = None,
                record: bool = False, extracted: Any = None) -> ModelOutput:
        cfg = self.config
        x, lengths = self._inputs(batch)
        # CNN branch: H^(C) [B, K, d].
        h_c, c_lengths = self.cnn(x, lengths)
        c_mask = ~_valid(c_lengths, h_c.shape[1])
        # LSTM branch: 1-D conv (shortens the sequence) → LSTM: H^(L) [B, T', d].
        l_lengths = self._lstm_lengths(lengths)
        z = self.lstm_conv(x).transpose(1, 2)
        l_mask = ~_valid(l_lengths, z.shape[1])
        h_l = _run_lstm(self.lstm, z * (~l_mask).to(z.dtype)[..., None], l_lengths)
        raws: list[RawAttention] = []

        if cfg.variant == "sum":  # Table 2's CNN+LSTM: the two outputs added, no cross attention
            o = _masked_mean(h_c, c_mask) + _masked_mean(h_l, l_mask)
        else:
            if cfg.positional_encoding:  # positions in input frames: aligned across the axes
                h_c = h_c + sinusoidal_encoding(self._positions(h_c.shape[1], cfg.cnn_stride, x.device), cfg.d_model)
                h_l = h_l + sinusoidal_encoding(self._positions(h_l.shape[1], cfg.lstm_conv_stride, x.device),
                                                cfg.d_model)
                h_c = h_c * (~c_mask).to(h_c.dtype)[..., None]
                h_l = h_l * (~l_mask).to(h_l.dtype)[..., None]
            o = h_c.new_zeros(h_c.shape[0], cfg.d_model)
            if cfg.variant in ("full", "ctol"):  # CtoL: CNN queries the LSTM
                y = h_c
                for i, layer in enumerate(self.ctol):
                    y, info = layer(y, c_mask, kv=h_l, kv_mask=l_mask, record=record)
                    if record:
                        raws.append(_raw(f"ctol.{i}", info, "cross", "cnn", "lstm"))
                o = o + _masked_mean(y, c_mask)
            if cfg.variant in ("full", "ltoc"):  # LtoC: LSTM queries the CNN
                y = h_l
                for i, layer in enumerate(self.ltoc):
                    y, info = layer(y, l_mask, kv=h_c, kv_mask=c_mask, record=record)
                    if record:
                        raws.append(_raw(f"ltoc.{i}", info, "cross", "lstm", "cnn"))
                o = o + _masked_mean(y, l_mask)  # "the output from two ... are added together"
        logits = self.classifier(o)
        extras = {
            "padding_masks": {"cnn": c_mask, "lstm": l_mask},
            "model_extras": {"variant": cfg.variant, "positional_encoding": cfg.positional_encoding,
                             "labels": list(self.labels)},
        }
        return ModelOutput(logits=logits, probs=torch.softmax(logits, dim=-1), attentions=raws, extras=extras)

    def axis_labels(self, feats: Features) -> dict[str, AxisLabels]:
        """"cnn": real CNN steps (80 ms each); "lstm": real 1-D conv / LSTM steps (40 ms)."""
        cfg = self.config
        frames, duration = self._duration(feats)
        n_lstm = (frames - cfg.lstm_conv_kernel) // cfg.lstm_conv_stride + 1
        return {
            "cnn": self._cnn_labels(frames, duration),
            "lstm": self._step_labels(n_lstm, cfg.lstm_conv_stride, cfg.lstm_conv_kernel, duration),
        }
