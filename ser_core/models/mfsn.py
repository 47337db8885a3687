"""MFSN: Multi-perspective Fusion Search Network for SER.

Paper: H. Sun, F. Zhang, Y. Gao, Z. Lian, S. Zhang, J. Feng, "MFSN: Multi-perspective Fusion
Search Network For Pre-training Knowledge in Speech Emotion Recognition", arXiv 2306.09361
(papers/mfsn_001_*.txt; an earlier version of that arXiv entry was titled "MFAS").

Read top to bottom; the parts of Fig. 1/2 come in order (the Fusion Cell's operations are in
``mfsn_fusion_operations.py``, the cutting into 3 s segments in ``mfsn_segments.py``):

1. TEC and SEC (sec. 2.1). Textual-related Emotional Content h_T comes from an ASR-trained
   encoder (the paper: a fine-tuned wav2vec2); here the LAST hidden state of the Whisper tiny.en
   encoder, ``feats.speech[-1]``. Speech-related Emotional Content comes from three levels of a
   second encoder (the paper: data2vec, continuous modelling, sec. 3): an early layer (closest to
   raw speech), a middle layer and the last layer.
   OFFLINE DEFAULT (``sec_source="whisper"``): no data2vec / wav2vec2 weights ship offline, so the
   three SEC levels are Whisper hidden states too (``sec_layers``, default (1, 2, 4) of tiny.en's
   embedding output + 4 layers). TEC and SEC then share ONE encoder's weights: the "two
   perspectives" differ only by level, by their own projections and by the detach (a no-op on
   frozen features), and with the last level chosen SEC *is* TEC's layer. With
   ``sec_source="extra"`` the SEC levels are ``feats.extra["sec_levels"]`` [3, T', D'] from a
   local data2vec / wav2vec2 directory (filled by the feature extractor; an optional
   ``feats.extra["sec_times"]`` [T'] gives their frame times), resampled onto Whisper's frames.
2. Search space (sec. 2.2, Fig. 2).
   * Choice Cell: "during each mini-batch training, Choice Cell randomly samples one level of
     SEC" (uniformly here: the paper names no distribution). At inference the level is fixed
     (``config.chosen_level``); the trainer picks it by validation UA
     (:meth:`MFSN.choose_on_validation`, or :meth:`MFSN.set_level`).
   * "we detach h_T before feeding it into Fusion Cells along with h_S^i" (sec. 2.2).
   * Fusion Cell: eight operations, each taking two tensors and giving one (eqs. 1–5): two
     symmetric ones and Attention, ConcatFC, ISM with their reverse versions ("Attention_r(x, y)
     = Attention(y, x)"). One cell (sec. 5.1: "we employ a single Fusion Cell").
3. Search algorithm (sec. 2.3, eq. 6, DARTS [5]): the cell's output is
   Σ_o softmax(α)_o · o(h_T, h_S^i). α is trained by its own optimiser
   (:meth:`MFSN.arch_parameters`; every other weight: :meth:`MFSN.weight_parameters`).
   :meth:`MFSN.derive` fixes the argmax operation (``config.derived``) for retraining.
4. Emotion analysis (sec. 5.1): the Co-attention model of Zou et al. [9] on 3 s segments:
   a spectrogram stream (CNN) and an MFCC stream (BiLSTM) compute co-attention weights over the
   frames of the pre-trained features. MFSN has two such streams (h_S^i and the fused TEC):
   "we double the dimension of the encoding hidden features for both spectrograms and MFCCs.
   These features are evenly distributed to each stream for co-attention calculations."
   "The final prediction for each speech was determined by aggregating the predictions from all
   its segmented parts": the utterance's logits are the mean of its segments' log-softmax (Zou
   et al.'s released code averages the segments' log-probabilities).

What the extracted paper text lost — the formulas of eqs. 1–5 — is reconstructed in
:data:`OPERATIONS`. The text says only "following the previous fusion work" (no citation
survives); our reading: Attention and ConcatFC as in BM-NAS (Yin et al., AAAI 2022, whose
fusion primitives are Sum, ScaleDotAttn, LinearGLU, ConcatFC) and ISM, the Information
Supplement Module of EmotionNAS (Sun et al. 2022, the same first author), whose formula we
could not find either. Which two symmetric operations the paper lists could not be recovered;
the default pool uses Sum (BM-NAS) and element-wise Product, and "zero" (DARTS's none) can be
put in the pool through ``config.operations``.

Training. The utterance logits are mean segment log-probabilities, so ``F.cross_entropy(logits,
y)`` is close to Zou et al.'s per-segment loss. α has its own optimiser; the paper uses SGD
("a learning rate of 5": the exponent seems lost in extraction). First-order DARTS proper
steps α on validation batches, alternating with weight steps on training batches; stepping
both on the same training batches (what ``ser_core.train`` does, Adam 3e-4 for α) is simpler
and needs no held-out split, at the risk of α favouring operations that fit the training set.
Then :meth:`MFSN.derive` and retrain the derived cell (``derived=True`` in the model config).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ser_core.errors import InputError
from ser_core.features import Features
from ser_core.models.base import ModelConfig, ModelOutput, RawAttention, register_model
from ser_core.models.mfsn_fusion_operations import (ISM, MASK_FILL, Attention, ConcatFC, FusionOperation, Product,
                                                    Sum, Zero, _masked_mean)
from ser_core.models.mfsn_segments import (SAMPLE_RATE, SPECTRAL_HOP, _resample_levels, _Segmented,
                                           _spectral_segments, segment_layout)
from ser_core.trace import AxisLabels

__all__ = ["MFSN", "MFSNConfig", "ChoiceCell", "FusionCell", "FusionOperation", "OPERATIONS",
           "CoAttention", "segment_layout",
           # moved to mfsn_fusion_operations.py / mfsn_segments.py, still importable from here
           "Sum", "Product", "Zero", "Attention", "ConcatFC", "ISM", "MASK_FILL", "SAMPLE_RATE", "SPECTRAL_HOP"]

LEVEL_NAMES = ("early", "middle", "last")  # sec. 2.1: h_S^1 (early), h_S^{L/2} (middle), h_S^L (last)

# The operation pool of one Fusion Cell (sec. 2.2), x = h_T (TEC), y = h_S^i (SEC), [frames, d]:
#   sum          Sum(x, y)          = x + y                                         (BM-NAS)
#   product      Product(x, y)      = x ⊙ y                                         (our pick)
#   attention    Attention(x, y)    = LN(softmax(x yᵀ / √d) y)        (BM-NAS ScaleDotAttn)
#   attention_r  Attention_r(x, y)  = Attention(y, x)
#   concat_fc    ConcatFC(x, y)     = ReLU(W [x ; y] + b)                 (BM-NAS ConcatFC)
#   concat_fc_r  ConcatFC_r(x, y)   = ConcatFC(y, x)          (own weights W', b')
#   ism          ISM(x, y)          = x ⊙ (1 + σ(W ȳ + b)),  ȳ = mean of y over frames
#   ism_r        ISM_r(x, y)        = ISM(y, x)
#   zero         Zero(x, y)         = 0   (DARTS's "none"; not in the default pool)
OPERATIONS = ("sum", "product", "attention", "attention_r", "concat_fc", "concat_fc_r", "ism", "ism_r")
AVAILABLE_OPERATIONS = (*OPERATIONS, "zero")


@dataclass
class MFSNConfig(ModelConfig):
    """Hyperparameters. The paper gives no sizes for its heads; these are small for CPU."""

    audio_dim: int = 384  # Whisper tiny.en hidden size (TEC, and SEC in the offline default)
    audio_layers: int = 5  # Whisper hidden states incl. the embedding output
    num_classes: int = 4
    labels: tuple[str, ...] = ("ang", "hap", "neu", "sad")
    dropout: float = 0.1  # Zou et al.'s post-layer dropout
    # 1. SEC source: "whisper" (offline default: levels of feats.speech) or "extra"
    #    (feats.extra["sec_levels"] [levels, T', sec_dim] from a local data2vec/wav2vec2).
    sec_source: str = "whisper"
    sec_layers: tuple[int, ...] | None = None  # Whisper hidden-state index per level; None: (1, mid, last)
    #   (with sec_source="extra" only its length counts: the number of levels in sec_levels)
    sec_dim: int | None = None  # width of extra["sec_levels"]; None: audio_dim
    # 2. Choice Cell: the level used at inference (set on validation UA by the trainer).
    chosen_level: int = 2  # default: the last level, "more target-related information" (sec. 2.1)
    # 2./3. Fusion Cell: the operation pool, and the derived (argmax) operation after the search.
    operations: tuple[str, ...] = OPERATIONS
    derived: bool = False
    derived_op: str | None = None
    d_model: int = 128  # TEC / SEC projected width inside the Fusion Cell
    # 4. Emotion analysis (Co-attention [9]) on segments.
    hidden: int = 64  # h: per-stream width; spectrogram and MFCC encodings are 2h ("doubled")
    cnn_channels: tuple[int, ...] = (8, 16, 32)  # spectrogram CNN (stride-2 convs)
    cnn_freq_bins: int = 8  # frequency bins kept after the CNN (adaptive average pooling)
    lstm_hidden: int = 64  # MFCC BiLSTM width per direction
    n_mfcc: int = 40
    segment_seconds: float = 3.0  # "3-second-long segments" (sec. 5.1)
    frames_per_segment: int = 150  # Whisper frames in a segment (50 per second)
    max_segments: int = 8  # longer utterances keep their first max_segments segments (24 s)

    def __post_init__(self) -> None:
        if len(self.labels) != self.num_classes:
            raise InputError(f"num_classes={self.num_classes} but {len(self.labels)} labels {self.labels}.")
        if self.sec_source not in ("whisper", "extra"):
            raise InputError(f"sec_source must be 'whisper' or 'extra'; got {self.sec_source!r}.")
        if self.sec_layers is None:  # early, middle, last of the encoder layers (index 0 = embeddings)
            last = self.audio_layers - 1
            self.sec_layers = (1, max(1, round(last / 2)), last) if last >= 1 else (0, 0, 0)
        self.sec_layers = tuple(int(i) for i in self.sec_layers)
        if not self.sec_layers:
            raise InputError("sec_layers needs at least one level.")
        if self.sec_source == "whisper" and any(not 0 <= i < self.audio_layers for i in self.sec_layers):
            raise InputError(f"sec_layers {self.sec_layers} must index the {self.audio_layers} Whisper hidden states.")
        if not 0 <= self.chosen_level < len(self.sec_layers):
            raise InputError(f"chosen_level {self.chosen_level} is not one of the {len(self.sec_layers)} levels.")
        self.operations = tuple(self.operations)
        unknown = [o for o in self.operations if o not in AVAILABLE_OPERATIONS]
        if not self.operations or unknown or len(set(self.operations)) != len(self.operations):
            raise InputError(f"operations must be distinct names from {AVAILABLE_OPERATIONS}; got {self.operations}.")
        if self.derived and self.derived_op not in self.operations:
            raise InputError(f"derived=True needs derived_op in {self.operations}; got {self.derived_op!r}.")
        if self.frames_per_segment < 1 or self.max_segments < 1 or self.segment_seconds <= 0:
            raise InputError("frames_per_segment, max_segments and segment_seconds must be positive.")
        if not self.cnn_channels:
            raise InputError("cnn_channels needs at least one convolution.")

    @property
    def sec_width(self) -> int:
        return self.audio_dim if (self.sec_source == "whisper" or self.sec_dim is None) else self.sec_dim


# --------------------------------------------------------------------------- 2. Choice Cell

class ChoiceCell(nn.Module):
    """Picks one SEC level (sec. 2.2): uniformly at random per training mini-batch, the fixed
    ``chosen`` level at inference. No parameters."""

    def __init__(self, num_levels: int) -> None:
        super().__init__()
        self.num_levels = num_levels

    def level(self, training: bool, chosen: int) -> int:
        if training:
            return int(torch.randint(self.num_levels, (1,)).item())
        return chosen


# --------------------------------------------------------------------------- 2. Fusion Cell

class FusionCell(nn.Module):
    """DARTS mixed operation (eq. 6): ō(x, y) = Σ_o softmax(α)_o · o(x, y).

    Derived (after :meth:`derive`): only the chosen operation is kept and applied on its own.
    """

    def __init__(self, operations: tuple[str, ...], d: int, dropout: float,
                 derived_op: str | None = None) -> None:
        super().__init__()
        self.operations = tuple(operations)
        # α: DARTS initialises it at 1e-3·N(0, 1); it stays a parameter after derive() (frozen),
        # so the searched distribution is still in the checkpoint and the trace.
        self.alpha = nn.Parameter(1e-3 * torch.randn(len(operations)))
        names = (derived_op,) if derived_op is not None else self.operations
        self.ops = nn.ModuleDict({n: FusionOperation(n, d, dropout) for n in names})
        self.derived_op = derived_op
        if derived_op is not None:
            self.alpha.requires_grad_(False)

    def weights(self) -> Tensor:
        """softmax(α) over the operation pool."""
        return torch.softmax(self.alpha, dim=0)

    def argmax_op(self) -> str:
        return self.operations[int(torch.argmax(self.alpha.detach()))]

    def derive(self) -> str:
        """Keep the argmax operation only (its trained weights), freeze α."""
        name = self.argmax_op()
        self.ops = nn.ModuleDict({name: self.ops[name]})
        self.derived_op = name
        self.alpha.requires_grad_(False)
        return name

    def forward(self, x: Tensor, y: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """x = h_T (detached TEC), y = h_S^i; [N, F, d] each, mask [N, F]. Returns the fused
        (adjusted) TEC and the attention maps of the attention operations by name."""
        maps: dict[str, Tensor] = {}
        if self.derived_op is not None:
            out, w = self.ops[self.derived_op](x, y, mask)
            if w is not None:
                maps[self.derived_op] = w
            return out, maps
        mix = self.weights()
        out = x.new_zeros(x.shape)
        for i, name in enumerate(self.operations):
            o, w = self.ops[name](x, y, mask)
            out = out + mix[i] * o
            if w is not None:
                maps[name] = w
        return out, maps


# --------------------------------------------------------------------------- 4. emotion analysis

class SpectrogramEncoder(nn.Module):
    """Spectrogram stream (Zou et al. use an AlexNet; here a small stride-2 CNN): convolutions,
    average over the real frames and over frequency bands, then ReLU(Linear) to 2h.

    Time positions past a segment's real length are zeroed before every convolution, so the
    last, shorter segment is convolved as if it ended there (zero "same" padding)."""

    def __init__(self, channels: tuple[int, ...], freq_bins: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        c_in = 1
        for i, c in enumerate(channels):
            k = 5 if i == 0 else 3
            self.convs.append(nn.Conv2d(c_in, c, k, stride=2, padding=k // 2))
            c_in = c
        self.freq_bins = freq_bins
        self.post = nn.Sequential(nn.Dropout(dropout), nn.Linear(c_in * freq_bins, out_dim), nn.ReLU())

    def forward(self, spec: Tensor, pad: Tensor) -> Tensor:
        """spec [N, freq, Ts], pad [N, Ts] (True = pad) → [N, out_dim]."""
        valid = (~pad).sum(dim=1)  # [N]
        h = spec[:, None]
        for conv in self.convs:
            t_pad = torch.arange(h.shape[-1], device=h.device)[None, :] >= valid[:, None]
            h = F.relu(conv(h.masked_fill(t_pad[:, None, None, :], 0.0)))
            valid = (valid + 1) // 2  # stride 2, "same" padding: ceil(L / 2) outputs
        t_pad = torch.arange(h.shape[-1], device=h.device)[None, :] >= valid[:, None]
        keep = (~t_pad).to(h.dtype)[:, None, None, :]
        h = (h * keep).sum(-1) / keep.sum(-1).clamp(min=1.0)  # [N, C, freq']
        h = F.adaptive_avg_pool1d(h, self.freq_bins)  # [N, C, bins]
        return self.post(h.flatten(1))


class MFCCEncoder(nn.Module):
    """MFCC stream (Zou et al.: BiLSTM): a BiLSTM over the real frames, mean over them, then
    ReLU(Linear) to 2h. The backward direction runs on each segment reversed *within its real
    length*, so padding frames never reach a real frame's state (the same result as a packed
    sequence, without packing's slow per-step backward on CPU)."""

    def __init__(self, n_mfcc: int, hidden: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.forward_lstm = nn.LSTM(n_mfcc, hidden, batch_first=True)
        self.backward_lstm = nn.LSTM(n_mfcc, hidden, batch_first=True)
        self.post = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * hidden, out_dim), nn.ReLU())

    def forward(self, mfcc: Tensor, pad: Tensor) -> Tensor:
        """mfcc [N, n_mfcc, Ts], pad [N, Ts] → [N, out_dim]."""
        x = mfcc.transpose(1, 2)  # [N, Ts, n_mfcc]
        T = x.shape[1]
        lengths = (~pad).sum(dim=1).clamp(min=1)
        t = torch.arange(T, device=x.device)[None, :]
        mask = t >= lengths[:, None]
        # reversal within the real length: position t ↔ length-1-t; padding stays in place
        rev = torch.where(mask, t, lengths[:, None] - 1 - t)
        fwd, _ = self.forward_lstm(x)
        bwd, _ = self.backward_lstm(torch.gather(x, 1, rev[..., None].expand_as(x)))
        bwd = torch.gather(bwd, 1, rev[..., None].expand_as(bwd))
        return self.post(_masked_mean(torch.cat([fwd, bwd], dim=-1), mask))


class CoAttention(nn.Module):
    """Co-attention of Zou et al. [9] for one stream: the spectrogram and MFCC encodings give a
    weight per frame position of the segment, a = ReLU(W [e_spec ; e_mfcc] + b) ∈ R^F (their
    released code: ReLU, no normalisation), masked at padding; v = Σ_f a_f h_f, then
    ReLU(Linear(dropout(v)))."""

    def __init__(self, in_dim: int, frames: int, d: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.weights = nn.Linear(in_dim, frames)
        self.post = nn.Sequential(nn.Dropout(dropout), nn.Linear(d, out_dim), nn.ReLU())

    def forward(self, guide: Tensor, frames: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """guide [N, in_dim], frames [N, F, d], mask [N, F] → (v [N, out_dim], weights [N, F])."""
        a = F.relu(self.weights(guide)).masked_fill(mask, 0.0)
        return self.post(torch.einsum("nf,nfd->nd", a, frames)), a


# --------------------------------------------------------------------------- the model

@register_model("mfsn")
class MFSN(nn.Module):
    """MFSN (Fig. 1). forward(batch, record=False) → ModelOutput with utterance logits.

    batch (from :meth:`collate`), S = segments, F = frames per segment, Ts = spectral frames:
    "tec" [B, S, F, D], "sec_levels" [B, S, levels, F, D'], "frame_mask" [B, S, F],
    "spectrogram" [B, S, 257, Ts], "mfcc" [B, S, n_mfcc, Ts], "spectral_mask" [B, S, Ts],
    "segment_mask" [B, S] (True = pad everywhere).
    """

    Config = MFSNConfig
    model_name = "mfsn"
    inputs: ClassVar[tuple[str, ...]] = ("speech", "audio")

    def __init__(self, config: MFSNConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or MFSNConfig()
        if cfg.sec_source == "extra":  # the extractor must run the second speech encoder
            self.inputs = (*type(self).inputs, "sec_levels")
        d, h = cfg.d_model, cfg.hidden
        # 1. TEC / SEC into the cell's width (each level normalised first: layers differ in scale).
        self.tec_proj = nn.Sequential(nn.LayerNorm(cfg.audio_dim, elementwise_affine=False),
                                      nn.Linear(cfg.audio_dim, d))
        self.sec_proj = nn.Sequential(nn.LayerNorm(cfg.sec_width, elementwise_affine=False),
                                      nn.Linear(cfg.sec_width, d))
        # 2./3. Search space: Choice Cell, one Fusion Cell with α.
        self.choice_cell = ChoiceCell(len(cfg.sec_layers))
        self.fusion_cell = FusionCell(cfg.operations, d, cfg.dropout,
                                      cfg.derived_op if cfg.derived else None)
        # 4. Emotion analysis (Co-attention): spectrogram and MFCC encodings of width 2h, split
        #    evenly between the SEC stream and the fused-TEC stream.
        self.spectrogram_encoder = SpectrogramEncoder(cfg.cnn_channels, cfg.cnn_freq_bins, 2 * h, cfg.dropout)
        self.mfcc_encoder = MFCCEncoder(cfg.n_mfcc, cfg.lstm_hidden, 2 * h, cfg.dropout)
        self.co_attention_sec = CoAttention(2 * h, cfg.frames_per_segment, d, h, cfg.dropout)
        self.co_attention_tec = CoAttention(2 * h, cfg.frames_per_segment, d, h, cfg.dropout)
        self.classifier = nn.Sequential(  # Zou et al.: concat → FC → FC → FC
            nn.Dropout(cfg.dropout), nn.Linear(6 * h, h), nn.ReLU(),
            nn.Dropout(cfg.dropout), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, cfg.num_classes),
        )

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.config.labels)

    @property
    def num_levels(self) -> int:
        return len(self.config.sec_layers)

    # ----------------------------------------------------------------- search (DARTS) and choice

    def arch_parameters(self) -> list[nn.Parameter]:
        """α of the Fusion Cell (eq. 6), for its own optimiser; none once derived."""
        return [] if self.fusion_cell.derived_op is not None else [self.fusion_cell.alpha]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every trainable parameter except α."""
        return [p for p in self.parameters() if p is not self.fusion_cell.alpha and p.requires_grad]

    def param_groups(self) -> list[dict[str, Any]]:
        """[{"params": weights}, {"params": [α], "arch": True}] for one optimiser with two groups."""
        groups: list[dict[str, Any]] = [{"params": self.weight_parameters()}]
        if self.arch_parameters():
            groups.append({"params": self.arch_parameters(), "arch": True})
        return groups

    def alpha_distribution(self) -> dict[str, float]:
        """softmax(α) of the Fusion Cell by operation name (what the search learned, eq. 6)."""
        weights = self.fusion_cell.weights().detach().float().cpu().tolist()
        return dict(zip(self.fusion_cell.operations, weights))

    def derive(self) -> str:
        """Fix the Fusion Cell to its argmax operation (the derived architecture, to retrain);
        records it in the config so a checkpoint rebuilds the same cell."""
        name = self.fusion_cell.derive()
        self.config.derived, self.config.derived_op = True, name
        return name

    def set_level(self, level: int) -> None:
        """Fix the Choice Cell's inference level (the trainer sets the best validation UA one)."""
        if not 0 <= int(level) < self.num_levels:
            raise InputError(f"level {level} is not one of the {self.num_levels} SEC levels.")
        self.config.chosen_level = int(level)

    def choose_on_validation(self, evaluate: Callable[[], float]) -> dict[str, Any]:
        """Evaluate each level (``evaluate()`` → validation UA with the level set) and keep the
        best one: "the Choice Cell ... automatically select[s] optimal speech features" (sec. 5.5)."""
        scores = []
        for level in range(self.num_levels):
            self.set_level(level)
            scores.append(float(evaluate()))
        best = int(np.argmax(scores))
        self.set_level(best)
        return {"chosen_level": best, "val_ua_by_level": scores}

    # ----------------------------------------------------------------- inputs (base.py contract)

    @classmethod
    def collate(cls, items: list[Features], config: MFSNConfig, device: Any) -> dict[str, Tensor]:
        """Cut each utterance into 3 s segments: its speech frames (TEC + SEC levels) per
        segment, and the segment's spectrogram and MFCC (computed here from ``feats.audio``)."""
        cfg = config
        if not items:
            raise InputError("An empty batch.")
        F_ = cfg.frames_per_segment
        per_item = []
        for f in items:
            audio = np.asarray(f.audio, dtype=np.float32)
            if audio.size == 0:
                raise InputError("The audio is empty.")
            speech = np.asarray(f.speech, dtype=np.float32)
            frame_times = np.asarray(f.frame_times, dtype=np.float64)
            if speech.ndim != 3 or speech.shape[1] != len(frame_times):
                raise InputError(f"speech features must be [layers, frames, dim] with one time per frame; "
                                 f"got {speech.shape} and {len(frame_times)} times.")
            n_seg, idx, seg, pos = segment_layout(len(audio), frame_times, cfg)
            tec = speech[-1]  # TEC: the ASR-trained encoder's last layer (sec. 2.1)
            if cfg.sec_source == "extra":
                if "sec_levels" not in f.extra:
                    raise InputError("This MFSN reads SEC levels from a second encoder "
                                     "(features.extra['sec_levels']), which these features lack.")
                sec = _resample_levels(np.asarray(f.extra["sec_levels"], dtype=np.float32),
                                       f.extra.get("sec_times"), len(audio) / SAMPLE_RATE, frame_times)
                if sec.shape[0] != len(cfg.sec_layers) or sec.shape[-1] != cfg.sec_width:
                    raise InputError(f"features.extra['sec_levels'] is {sec.shape[0]} levels × {sec.shape[-1]}; "
                                     f"this model reads {len(cfg.sec_layers)} levels × {cfg.sec_width}.")
            else:
                sec = speech[list(cfg.sec_layers)]
            spec, mfcc, spec_pad, starts = _spectral_segments(audio, cfg, n_seg)
            per_item.append(_Segmented(n_seg, idx, seg, pos, tec, sec, spec, mfcc, spec_pad, starts))

        B = len(items)
        S = max(p.n_segments for p in per_item)
        first = per_item[0]
        L, Ds, Dt = first.sec.shape[0], first.sec.shape[-1], first.tec.shape[-1]
        n_freq, Ts = first.spec.shape[1], first.spec.shape[2]
        batch = {
            "tec": torch.zeros(B, S, F_, Dt),
            "sec_levels": torch.zeros(B, S, L, F_, Ds),
            "frame_mask": torch.ones(B, S, F_, dtype=torch.bool),
            "spectrogram": torch.zeros(B, S, n_freq, Ts),
            "mfcc": torch.zeros(B, S, cfg.n_mfcc, Ts),
            "spectral_mask": torch.ones(B, S, Ts, dtype=torch.bool),
            "segment_mask": torch.ones(B, S, dtype=torch.bool),
            "segment_start": torch.zeros(B, S),
        }
        for b, p in enumerate(per_item):
            seg_t, pos_t, n_seg = torch.from_numpy(p.segment), torch.from_numpy(p.position), p.n_segments
            batch["tec"][b, seg_t, pos_t] = torch.from_numpy(p.tec[p.frame_index])
            sec_frames = np.ascontiguousarray(p.sec[:, p.frame_index].transpose(1, 0, 2))  # [frames, levels, D']
            batch["sec_levels"][b, seg_t, :, pos_t] = torch.from_numpy(sec_frames)
            batch["frame_mask"][b, seg_t, pos_t] = False
            batch["spectrogram"][b, :n_seg] = p.spec
            batch["mfcc"][b, :n_seg] = p.mfcc
            batch["spectral_mask"][b, :n_seg] = p.spectral_pad
            batch["segment_mask"][b, :n_seg] = False
            batch["segment_start"][b, :n_seg] = p.starts
        return {k: v.to(device) for k, v in batch.items()}

    def axis_labels(self, feats: Features) -> dict[str, AxisLabels]:
        """Labels of the trace's axes: ``segments`` (one per kept 3 s segment, with its time
        span) and ``sec`` / ``tec`` (the kept speech frames, segment by segment, at their
        absolute times = segment start + offset in the segment)."""
        cfg = self.config
        n = len(feats.audio)
        n_seg, idx, _, _ = segment_layout(n, feats.frame_times, cfg)
        starts = np.arange(n_seg) * cfg.segment_seconds
        ends = np.minimum(starts + cfg.segment_seconds, n / SAMPLE_RATE)
        segments = AxisLabels("segments", [f"{s:.1f}–{e:.1f} s" for s, e in zip(starts, ends)], starts, ends)
        t = np.asarray(feats.frame_times, dtype=np.float64)
        half = 0.01 if len(t) < 2 else 0.5 * float(t[1] - t[0])
        frames = AxisLabels("frames", [f"{x:.2f} s" for x in t[idx]], t[idx] - half, t[idx] + half)
        return {"segments": segments, "sec": frames, "tec": frames}

    # ----------------------------------------------------------------- forward

    def _check(self, batch: dict[str, Tensor]) -> None:
        cfg = self.config
        need = ("tec", "sec_levels", "frame_mask", "spectrogram", "mfcc", "spectral_mask", "segment_mask")
        missing = [k for k in need if not isinstance(batch.get(k), Tensor)]
        if missing:
            raise InputError(f"The MFSN input lacks {missing}; build it with MFSN.collate.")
        tec, sec = batch["tec"], batch["sec_levels"]
        if tec.dim() != 4 or tec.shape[2] != cfg.frames_per_segment or tec.shape[3] != cfg.audio_dim:
            raise InputError(f"tec must be [B, S, {cfg.frames_per_segment}, {cfg.audio_dim}]; got {tuple(tec.shape)}.")
        if sec.dim() != 5 or sec.shape[2] != self.num_levels or sec.shape[4] != cfg.sec_width:
            raise InputError(f"sec_levels must be [B, S, {self.num_levels}, F, {cfg.sec_width}]; "
                             f"got {tuple(sec.shape)}."
                             " Were they made by the encoder this model was trained on?")
        if bool(batch["segment_mask"].all(dim=1).any()):
            raise InputError("An utterance has no segment: its audio is empty.")
        # a sum is finite iff no element is NaN/inf (float32 features never overflow it): one pass
        if not all(bool(torch.isfinite(batch[k].sum())) for k in ("tec", "sec_levels", "spectrogram", "mfcc")):
            raise InputError("The input features contain NaN or infinite values.")

    def forward(self, batch: dict[str, Tensor], keep_ratio: Any = None, top_p: Any = None,
                record: bool = False, extracted: Any = None) -> ModelOutput:
        """Segments → TEC/SEC fusion → co-attention analysis → mean of segment log-probs.
        (No key-sparse or nucleus knobs: ``keep_ratio`` / ``top_p`` / ``extracted`` are ignored.)"""
        self._check(batch)
        cfg = self.config
        seg_mask = batch["segment_mask"]
        B, S = seg_mask.shape
        seg_b, seg_s = (~seg_mask).nonzero(as_tuple=True)  # the real segments, N of them

        def real(name: str) -> Tensor:
            return batch[name][seg_b, seg_s]

        frame_mask = real("frame_mask")  # [N, F]
        keep = (~frame_mask)[..., None].float()

        # 1./2. TEC, detached before the Fusion Cell (sec. 2.2; a no-op on frozen features, kept
        # explicit: with a fine-tuned TEC encoder no gradient may reach it through the cell).
        h_T = self.tec_proj(real("tec").detach()) * keep  # [N, F, d]
        level = self.choice_cell.level(self.training, cfg.chosen_level)  # Choice Cell
        h_S = self.sec_proj(batch["sec_levels"][seg_b, seg_s, level]) * keep  # h_S^i [N, F, d]

        # 3. Fusion Cell (eq. 6): the adjusted TEC.
        fused, fusion_maps = self.fusion_cell(h_T, h_S, frame_mask)
        fused = fused * keep

        # 4. Emotion analysis: co-attention per stream, guided by half of each 2h encoding.
        h = cfg.hidden
        spectral_mask = real("spectral_mask")
        e_spec = self.spectrogram_encoder(real("spectrogram"), spectral_mask)  # [N, 2h]
        e_mfcc = self.mfcc_encoder(real("mfcc"), spectral_mask)  # [N, 2h]
        v_S, a_S = self.co_attention_sec(torch.cat([e_spec[:, :h], e_mfcc[:, :h]], -1), h_S, frame_mask)
        v_T, a_T = self.co_attention_tec(torch.cat([e_spec[:, h:], e_mfcc[:, h:]], -1), fused, frame_mask)
        seg_logits = self.classifier(torch.cat([e_spec, e_mfcc, v_S, v_T], dim=-1))  # [N, C]

        # Utterance prediction: mean of its segments' log-probabilities (Zou et al.'s aggregation).
        seg_logp = seg_logits.new_zeros(B, S, cfg.num_classes)
        seg_logp[seg_b, seg_s] = torch.log_softmax(seg_logits, dim=-1)
        n_seg = (~seg_mask).sum(dim=1, keepdim=True).to(seg_logp.dtype)
        logits = seg_logp.sum(dim=1) / n_seg
        probs = torch.softmax(logits, dim=-1)

        attentions: list[RawAttention] = []
        if record:
            Fr = cfg.frames_per_segment
            for name, a in (("sec", a_S), ("tec", a_T)):
                full = a.new_zeros(B, S, S, Fr)
                full[seg_b, seg_s, seg_s] = a.detach()
                attentions.append(RawAttention(f"co_attention.{name}", "co-attention", "segments", name,
                                               full.reshape(B, 1, S, S * Fr)))
            for op, w in fusion_maps.items():  # frame-to-frame, within each segment
                full = w.new_zeros(B, S, Fr, S, Fr)
                full[seg_b, seg_s, :, seg_s, :] = w.detach()
                query, key = ("sec", "tec") if op.endswith("_r") else ("tec", "sec")
                attentions.append(RawAttention(f"fusion_cell.{op}", "cross", query, key,
                                               full.reshape(B, 1, S * Fr, S * Fr)))
        frames_mask = batch["frame_mask"].reshape(B, S * cfg.frames_per_segment)
        seg_probs = seg_logp.detach().exp() * (~seg_mask)[..., None]
        extras: dict[str, Any] = {
            "padding_masks": {"segments": seg_mask, "sec": frames_mask, "tec": frames_mask},
            "item_extras": {"segment_probs": seg_probs, "segment_mask": seg_mask,
                            "segment_start": batch.get("segment_start", seg_probs.new_zeros(B, S))},
            "model_extras": {
                "alpha": self.fusion_cell.weights().detach(),  # softmax(α), eq. 6
                "operations": list(self.fusion_cell.operations),
                "fusion_op": self.fusion_cell.derived_op or self.fusion_cell.argmax_op(),
                "derived": self.fusion_cell.derived_op is not None,
                "chosen_level": level,
                "level_names": (list(LEVEL_NAMES) if self.num_levels == 3
                                else [f"level {i}" for i in range(self.num_levels)]),
                # Whisper hidden-state index of each level (sec_source "extra": index in sec_levels)
                "level_layers": list(cfg.sec_layers) if cfg.sec_source == "whisper" else list(range(self.num_levels)),
                "sec_source": cfg.sec_source,
                "labels": list(self.labels),
            },
        }
        return ModelOutput(logits=logits, probs=probs, attentions=attentions, extras=extras)
