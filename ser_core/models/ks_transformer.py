"""KS-Transformer: key-sparse Transformer for multimodal (audio + text) SER.

Paper: W. Chen, X. Xing, X. Xu, J. Yang, J. Pang, "Key-Sparse Transformer for Multimodal
Speech Emotion Recognition", ICASSP 2022 (papers/ks-transformer_000_*.txt), with the
Chinese reading note (papers/ks-transformer-notes-zh_002_*.txt).

Read top to bottom; the three modules of Fig. 2 come in order:

1. Feature extraction (sec. 2, 3.2): per modality, an input projection to d_model, a
   sinusoidal positional encoding and ``feature_layers`` (5) *vanilla* Transformer layers.
   The audio input is every Whisper encoder layer's hidden states, mixed by a learned
   softmax-weighted sum over layers (s3prl's Featurizer) before the projection. With
   ``audio_pool`` = 2 (not in the paper) Whisper's 50 frames a second are averaged in pairs
   first (``collate``), and the frame axis of every map is 40 ms a position (``axis_labels``).
2. Modality interaction (sec. 2.2, Fig. 4): a stack of ``ccab_layers`` (3, Table 1) CCABs
   in each direction. A CCAB is a cascade of two KS-Transformer layers: the first takes Q
   from modality A and K, V from modality B (key-sparse cross attention); the second is a
   KS-Transformer self-attention layer over the fused features. A later CCAB takes the
   previous CCAB's output as Q, while K, V always come from B's feature-extraction output.
   "A skip connection is utilized for the features' stability": A's input is added to the
   stack's output (the released code does the same).
     ``ccab_a2t``: A = audio (queries; the output lies on the audio frame axis), B = text.
     ``ccab_t2a``: A = text  (queries; the output lies on the word axis),       B = audio.
3. Deep fusion (sec. 2.3): ``fusion_layers`` (2) KS-Transformer layers "take the fused
   features as input and utilize key-sparse attention to enhance the interaction between
   audio and text". To let them attend *across* the modalities (which the paper's wording
   asks for), the two fused streams are laid one after the other along time, each with a
   learned modality embedding (the "fused" axis = audio frames, then words). Pooling is a
   padding-aware mean taken over each modality's part separately (so ~460 frames do not
   outvote ~20 words, as in the released code's per-stream average pooling); the two
   means are concatenated and classified (dropout 0.5, sec. 3.2).

Key-sparse attention (eq. 1–3) is ``ser_core.attention.key_sparse_attention``. Its
keep_ratio (the paper's k, a fraction of the keys) defaults to 0.5 in every KS layer: Fig. 6
puts the best UA on both IEMOCAP and LSSED at k = 0.5. The keep_ratio is a forward argument,
so it can be changed at inference without retraining; feature extraction stays vanilla.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ser_core.attention import AttentionInfo, KeySparseMultiheadAttention
from ser_core.errors import InputError
from ser_core.features import (Features, collate_speech_text, pooled_axis, pooled_speech,
                               speech_text_axis_labels)
from ser_core.models.base import ModelConfig, ModelOutput, RawAttention, register_model
from ser_core.trace import AxisLabels

__all__ = ["CCAB", "KSTransformer", "KSTransformerConfig", "KSTransformerLayer", "LayerWeightedSum"]

KS_MODULES = ("ccab_a2t", "ccab_t2a", "fusion")  # modules whose layers are key-sparse
NO_WORDS = "<no words>"


@dataclass
class KSTransformerConfig(ModelConfig):
    """Hyperparameters (defaults: sec. 3.2, Table 1, Fig. 6; sizes kept small for CPU)."""

    audio_dim: int = 384  # Whisper tiny.en hidden size
    audio_layers: int = 5  # hidden states per utterance: embedding output + 4 encoder layers
    text_dim: int = 384  # MiniLM-L6 hidden size
    d_model: int = 128
    heads: int = 8  # "Eight attention heads are used" (sec. 3.2)
    ff_dim: int = 256
    feature_layers: int = 5  # vanilla Transformers per modality (sec. 3.2)
    # Vanilla Transformers on the word side; None = feature_layers. 0 leaves each word's state
    # its own (with isolated word features, only the emotion word then carries the emotion, so
    # the key-sparse layers have to find it: issue 11's architecture change, not in the paper).
    text_feature_layers: int | None = None
    ccab_layers: int = 3  # CCABs per direction; 3 is best in Table 1 (0..4 supported)
    fusion_layers: int = 2  # KS-Transformers in the deep fusion module (sec. 3.2)
    dropout: float = 0.5  # "Dropout with p = 0.5" (sec. 3.2): input projections, classifier
    transformer_dropout: float = 0.1  # inside Transformer layers (FFN, residual)
    # Dropout on the attention weights themselves. 0 by default: on CPU any attention dropout
    # forces torch's unfused attention path (~3x slower training); residual dropout remains.
    attention_dropout: float = 0.0
    num_classes: int = 4
    labels: tuple[str, ...] = ("ang", "hap", "neu", "sad")
    ccab_keep_ratio: float = 0.5  # k of Fig. 6 for the modality interaction module
    fusion_keep_ratio: float = 0.5  # k of Fig. 6 for the deep fusion module
    audio_max_len: int = 3000  # positional encoding length (model frames: 50 a second / audio_pool)
    # Whisper's frames averaged in groups of this many before the model (not in the paper, whose
    # acoustic features come at 50 per second). 2: 25 frames a second, so every attention map,
    # attribution and deletion test of a clip costs about half as much (issue 11: the deletion
    # test of a 10 s clip within 2 s on a laptop's CPU). 1: Whisper's frames as they are.
    audio_pool: int = 1
    text_max_len: int = 512  # positional encoding length (words)

    def __post_init__(self) -> None:
        if len(self.labels) != self.num_classes:
            raise InputError(f"num_classes={self.num_classes} but {len(self.labels)} labels {self.labels}.")
        if self.d_model % self.heads:
            raise InputError(f"d_model={self.d_model} must be divisible by heads={self.heads}.")
        if not 0 <= self.ccab_layers <= 16 or min(self.feature_layers, self.fusion_layers,
                                                  self.text_layers) < 0:
            raise InputError("Layer counts must be ≥ 0 (and ccab_layers ≤ 16).")
        if not 1 <= self.audio_pool <= 8:
            raise InputError(f"audio_pool must be 1..8 frames; got {self.audio_pool}.")
        for r in (self.ccab_keep_ratio, self.fusion_keep_ratio):
            if not r > 0:
                raise InputError(f"keep ratios must be > 0; got {r}.")

    @property
    def text_layers(self) -> int:
        """Vanilla Transformer layers over the words (``text_feature_layers`` or ``feature_layers``)."""
        return self.feature_layers if self.text_feature_layers is None else self.text_feature_layers


# --------------------------------------------------------------------------- building blocks

class LayerWeightedSum(nn.Module):
    """s3prl-Featurizer style: Σ_l softmax(w)_l · LayerNorm(h_l) over an encoder's layers.

    Each layer is normalised (no affine) first, so layers of different scale mix fairly.
    """

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(num_layers))

    def layer_weights(self) -> Tensor:
        """The learned mixing weights (sum to 1), [num_layers]."""
        return torch.softmax(self.weights, dim=0)

    def forward(self, hidden: Tensor) -> Tensor:  # [B, L, T, D] -> [B, T, D]
        normed = F.layer_norm(hidden, hidden.shape[-1:])
        return torch.einsum("l,bltd->btd", self.layer_weights(), normed)


class SinusoidalPositionalEncoding(nn.Module):
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...) (Vaswani et al.)."""

    def __init__(self, d_model: int, max_len: int, what: str) -> None:
        super().__init__()
        pos = torch.arange(max_len, dtype=torch.float32)[:, None]
        freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(pos * freq)
        pe[:, 1::2] = torch.cos(pos * freq[: d_model // 2])
        self.register_buffer("pe", pe, persistent=False)
        self.what = what

    def forward(self, x: Tensor) -> Tensor:
        T = x.shape[1]
        if T > self.pe.shape[0]:
            raise InputError(f"The {self.what} is too long for this model: {T} positions, at most "
                             f"{self.pe.shape[0]}. Use a shorter clip.")
        return x + self.pe[:T]


class KSTransformerLayer(nn.Module):
    """One (KS-)Transformer encoder layer, post-norm as in the original Transformer.

    x = LN(x + Attn(x, kv)); x = LN(x + FFN(x)). With keep_ratio ≥ 1 the attention is
    vanilla (eq. 1–2); below 1 it is key-sparse (eq. 3). ``kv`` given: cross attention.
    """

    def __init__(self, d_model: int, heads: int, ff_dim: int, dropout: float,
                 attention_dropout: float = 0.0) -> None:
        super().__init__()
        self.attention = KeySparseMultiheadAttention(d_model, heads, attention_dropout)
        self.attention_norm = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, ff_dim), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(ff_dim, d_model))
        self.ffn_norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, x_mask: Tensor, kv: Tensor | None = None, kv_mask: Tensor | None = None,
        keep_ratio: float = 1.0, record: bool = False,
    ) -> tuple[Tensor, AttentionInfo | None]:
        a, info = self.attention(
            x, kv, key_padding_mask=x_mask if kv is None else kv_mask,
            query_padding_mask=x_mask, keep_ratio=keep_ratio, need_weights=record,
        )
        x = self.attention_norm(x + self.dropout(a))
        x = self.ffn_norm(x + self.dropout(self.ffn(x)))
        return x, info


class ModalityEncoder(nn.Module):
    """Feature extraction for one modality: projection + positional encoding + vanilla layers."""

    def __init__(self, in_dim: int, cfg: KSTransformerConfig, max_len: int, what: str, layers: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, cfg.d_model)
        self.position = SinusoidalPositionalEncoding(cfg.d_model, max_len, what)
        self.input_dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(
            KSTransformerLayer(cfg.d_model, cfg.heads, cfg.ff_dim, cfg.transformer_dropout,
                                        cfg.attention_dropout)
            for _ in range(layers)
        )

    def forward(self, x: Tensor, mask: Tensor, record: bool) -> tuple[Tensor, list[AttentionInfo | None]]:
        """x: [B, T, d_model] (already projected), mask [B, T] True = pad."""
        x = self.input_dropout(self.position(x))
        infos = []
        for layer in self.layers:
            x, info = layer(x, mask, keep_ratio=1.0, record=record)  # vanilla Transformer
            infos.append(info)
        return x, infos


class CCAB(nn.Module):
    """Cascaded cross-attention block (sec. 2.2, Fig. 4 left).

    cross: KS-Transformer with Q from A and K, V from B → A's positions carrying B's
    information; self: KS-Transformer over those fused features.
    """

    def __init__(self, cfg: KSTransformerConfig) -> None:
        super().__init__()
        self.cross = KSTransformerLayer(cfg.d_model, cfg.heads, cfg.ff_dim, cfg.transformer_dropout,
                                        cfg.attention_dropout)
        self.self_attn = KSTransformerLayer(cfg.d_model, cfg.heads, cfg.ff_dim, cfg.transformer_dropout,
                                        cfg.attention_dropout)

    def forward(self, a: Tensor, a_mask: Tensor, b: Tensor, b_mask: Tensor, keep_ratio: float,
                record: bool) -> tuple[Tensor, AttentionInfo | None, AttentionInfo | None]:
        x, cross_info = self.cross(a, a_mask, kv=b, kv_mask=b_mask, keep_ratio=keep_ratio, record=record)
        x, self_info = self.self_attn(x, a_mask, keep_ratio=keep_ratio, record=record)
        return x, cross_info, self_info


class ModalityInteraction(nn.Module):
    """A stack of CCABs for one direction (Fig. 4 right), with the skip connection."""

    def __init__(self, cfg: KSTransformerConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(CCAB(cfg) for _ in range(cfg.ccab_layers))

    def forward(self, a: Tensor, a_mask: Tensor, b: Tensor, b_mask: Tensor, keep_ratio: float,
                record: bool) -> tuple[Tensor, list[tuple[AttentionInfo | None, AttentionInfo | None]]]:
        if not self.blocks:  # 0 CCABs: the module is removed (Table 1, first row)
            return a, []
        x, infos = a, []
        for block in self.blocks:  # each later CCAB: Q = previous output, K/V = B (always)
            x, cross_info, self_info = block(x, a_mask, b, b_mask, keep_ratio, record)
            infos.append((cross_info, self_info))
        return a + x, infos  # skip connection for the features' stability


# --------------------------------------------------------------------------- the model

@register_model("ks_transformer")
class KSTransformer(nn.Module):
    """KS-Transformer (Fig. 2). forward(batch, keep_ratio=None, record=False) → ModelOutput.

    batch: "audio" [B, La, Ta, Da] hidden states of every speech-encoder layer, "audio_mask"
    [B, Ta] (True = pad), "text" [B, Tw, Dt] word states, "text_mask" [B, Tw]. Tw may be 0,
    and an item may have no valid word: a learned "no words" token then stands in.
    """

    Config = KSTransformerConfig
    model_name = "ks_transformer"

    def __init__(self, config: KSTransformerConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or KSTransformerConfig()
        d = cfg.d_model
        # 1. Feature extraction module (vanilla Transformers).
        self.audio_layer_mix = LayerWeightedSum(cfg.audio_layers)
        self.audio_encoder = ModalityEncoder(cfg.audio_dim, cfg, cfg.audio_max_len, "audio", cfg.feature_layers)
        self.text_encoder = ModalityEncoder(cfg.text_dim, cfg, cfg.text_max_len, "transcript",
                                            cfg.text_layers)
        self.no_words = nn.Parameter(torch.randn(d) * 0.02)  # stands in for an empty transcript
        # 2. Modality interaction module (CCAB stacks, both directions).
        self.ccab_a2t = ModalityInteraction(cfg)  # audio queries, text keys/values
        self.ccab_t2a = ModalityInteraction(cfg)  # text queries, audio keys/values
        # 3. Deep fusion module (KS-Transformers over both fused streams) + classifier.
        self.modality_embedding = nn.Parameter(torch.randn(2, d) * 0.02)  # audio, text
        self.fusion = nn.ModuleList(
            KSTransformerLayer(d, cfg.heads, cfg.ff_dim, cfg.transformer_dropout, cfg.attention_dropout)
            for _ in range(cfg.fusion_layers)
        )
        self.classifier = nn.Sequential(
            nn.Dropout(cfg.dropout), nn.Linear(2 * d, d), nn.ReLU(),
            nn.Dropout(cfg.dropout), nn.Linear(d, cfg.num_classes),
        )

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.config.labels)

    def layer_mix_parameters(self) -> list[nn.Parameter]:
        """The speech-layer mixing weights (training may give them their own learning rate)."""
        return [self.audio_layer_mix.weights]

    # ----------------------------------------------------------------- settings and inputs

    def keep_ratios(self, keep_ratio: float | dict[str, float] | None = None) -> dict[str, float]:
        """Resolve the keep_ratio argument to {"ccab_a2t", "ccab_t2a", "fusion"} → ratio.

        None: the config's defaults; a number: every KS module; a dict: per module, with
        "ccab" meaning both directions (missing modules keep their defaults).
        """
        cfg = self.config
        out = {"ccab_a2t": cfg.ccab_keep_ratio, "ccab_t2a": cfg.ccab_keep_ratio, "fusion": cfg.fusion_keep_ratio}
        if keep_ratio is None:
            return out
        if isinstance(keep_ratio, dict):
            for name, value in keep_ratio.items():
                targets = ("ccab_a2t", "ccab_t2a") if name == "ccab" else (name,)
                if any(t not in out for t in targets):
                    raise InputError(f"Unknown module {name!r} for keep_ratio; use one of "
                                     f"{['ccab', *KS_MODULES]}.")
                for t in targets:
                    out[t] = _check_ratio(value)
            return out
        return {name: _check_ratio(keep_ratio) for name in out}

    def _inputs(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Validate the batch and return (audio, audio_mask, text, text_mask)."""
        cfg = self.config
        for key in ("audio", "text"):
            if key not in batch or not isinstance(batch[key], Tensor):
                raise InputError(f"The model input has no {key!r} tensor.")
        audio, text = batch["audio"], batch["text"]
        if audio.dim() != 4 or audio.shape[1] != cfg.audio_layers or audio.shape[3] != cfg.audio_dim:
            raise InputError(f"audio features must be [B, {cfg.audio_layers} layers, frames, {cfg.audio_dim}]; "
                             f"got {tuple(audio.shape)}. Were they made by the encoder this model was trained on?")
        B, _, Ta, _ = audio.shape
        if text.dim() != 3 or text.shape[0] != B or text.shape[2] != cfg.text_dim:
            raise InputError(f"text features must be [{B}, words, {cfg.text_dim}]; got {tuple(text.shape)}.")
        Tw = text.shape[1]
        audio_mask = batch.get("audio_mask")
        text_mask = batch.get("text_mask")
        audio_mask = torch.zeros(B, Ta, dtype=torch.bool, device=audio.device) if audio_mask is None else audio_mask
        text_mask = torch.zeros(B, Tw, dtype=torch.bool, device=text.device) if text_mask is None else text_mask
        if audio_mask.shape != (B, Ta) or audio_mask.dtype != torch.bool:
            raise InputError(f"audio_mask must be bool [{B}, {Ta}]; got {audio_mask.dtype} {tuple(audio_mask.shape)}.")
        if text_mask.shape != (B, Tw) or text_mask.dtype != torch.bool:
            raise InputError(f"text_mask must be bool [{B}, {Tw}]; got {text_mask.dtype} {tuple(text_mask.shape)}.")
        if Ta == 0 or bool(audio_mask.all(dim=1).any()):
            raise InputError("The audio has no frames: it is empty or too short to analyse.")
        if not bool(torch.isfinite(audio).all()) or not bool(torch.isfinite(text).all()):
            raise InputError("The input features contain NaN or infinite values.")
        return audio, audio_mask, text, text_mask

    def _embed_text(self, text: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Project words to d_model; an item without any word gets the "no words" token."""
        B, Tw, _ = text.shape
        if Tw == 0:
            x = text.new_zeros(B, 1, self.config.d_model)
            mask = torch.ones(B, 1, dtype=torch.bool, device=text.device)
        else:
            x = self.text_encoder.proj(text)
            mask = text_mask
        empty = mask.all(dim=1)  # [B]
        first = torch.where(empty[:, None], self.no_words.to(x.dtype)[None, :], x[:, 0])
        x = torch.cat([first[:, None], x[:, 1:]], dim=1)
        mask = torch.cat([mask[:, :1] & ~empty[:, None], mask[:, 1:]], dim=1)
        return x, mask

    # ----------------------------------------------------------------- inputs (models/base.py contract)

    inputs = ("speech", "text")

    @classmethod
    def collate(cls, items: list[Features], config: KSTransformerConfig, device) -> dict[str, Tensor]:
        """Every Whisper layer's frames (averaged in groups of ``audio_pool``) and the words'
        MiniLM states, padded (True = pad)."""
        return collate_speech_text([pooled_speech(f, config.audio_pool) for f in items], device)

    def axis_labels(self, feats: Features) -> dict[str, AxisLabels]:
        labels = speech_text_axis_labels(feats)
        return {**labels, "audio": pooled_axis(labels["audio"], self.config.audio_pool)}

    # ----------------------------------------------------------------- forward

    def forward(self, batch: dict[str, Tensor], keep_ratio: float | dict[str, float] | None = None,
                top_p: float | None = None, record: bool = False,
                extracted: "ExtractedFeatures | None" = None) -> ModelOutput:
        """Feature extraction then interaction + fusion. ``extracted`` (from :meth:`extract`
        with the same batch and ``record``) skips the feature-extraction module, which does
        not depend on keep_ratio: what makes a keep_ratio slider cheap. (No nucleus sampling
        here: ``top_p`` is accepted and ignored.)"""
        if extracted is None:
            extracted = self.extract(batch, record)
        return self.interact(extracted, keep_ratio, record)

    def extract(self, batch: dict[str, Tensor], record: bool = False) -> "ExtractedFeatures":
        """1. Feature extraction: layer mix → projection → PE → vanilla Transformers."""
        audio, a_mask, text, t_text_mask = self._inputs(batch)
        a = self.audio_encoder.proj(self.audio_layer_mix(audio))
        t, t_mask = self._embed_text(text, t_text_mask)
        a, a_infos = self.audio_encoder(a, a_mask, record)
        t, t_infos = self.text_encoder(t, t_mask, record)
        raws: list[RawAttention] = []
        if record:
            raws += _raws("audio_encoder", a_infos, "self", "audio", "audio", None)
            raws += _raws("text_encoder", t_infos, "self", "text", "text", None)
        return ExtractedFeatures(a, a_mask, t, t_mask, raws)

    def interact(self, extracted: "ExtractedFeatures", keep_ratio: float | dict[str, float] | None = None,
                 record: bool = False) -> ModelOutput:
        """2. Modality interaction and 3. deep fusion (the key-sparse part), then the classifier."""
        ratios = self.keep_ratios(keep_ratio)
        a, a_mask, t, t_mask = extracted.audio, extracted.audio_mask, extracted.text, extracted.text_mask
        raws: list[RawAttention] = list(extracted.attentions) if record else []

        # 2. Modality interaction: CCAB stacks, K/V always the other modality's features.
        fused_a, a2t_infos = self.ccab_a2t(a, a_mask, t, t_mask, ratios["ccab_a2t"], record)
        fused_t, t2a_infos = self.ccab_t2a(t, t_mask, a, a_mask, ratios["ccab_t2a"], record)
        if record:
            for prefix, infos, own, other in (("ccab_a2t", a2t_infos, "audio", "text"),
                                              ("ccab_t2a", t2a_infos, "text", "audio")):
                for i, (cross_info, self_info) in enumerate(infos):
                    raws.append(_raw(f"{prefix}.{i}.cross", cross_info, "key-sparse", own, other, ratios[prefix]))
                    raws.append(_raw(f"{prefix}.{i}.self", self_info, "key-sparse", own, own, ratios[prefix]))

        # 3. Deep fusion over [audio stream ; text stream] with modality embeddings.
        Ta = fused_a.shape[1]
        x = torch.cat([fused_a + self.modality_embedding[0], fused_t + self.modality_embedding[1]], dim=1)
        x_mask = torch.cat([a_mask, t_mask], dim=1)
        for i, layer in enumerate(self.fusion):
            x, info = layer(x, x_mask, keep_ratio=ratios["fusion"], record=record)
            if record:
                raws.append(_raw(f"fusion.{i}", info, "key-sparse", "fused", "fused", ratios["fusion"]))

        # Pooling that ignores padding: mean over each modality's valid positions.
        pooled = torch.cat([_masked_mean(x[:, :Ta], a_mask), _masked_mean(x[:, Ta:], t_mask)], dim=-1)
        logits = self.classifier(pooled)
        extras: dict[str, Any] = {
            "padding_masks": {"audio": a_mask, "text": t_mask, "fused": x_mask},
            "fused_layout": ("audio", "text"),
            "placeholders": {"text": NO_WORDS},
            "model_extras": {
                "audio_layer_weights": self.audio_layer_mix.layer_weights().detach(),
                "keep_ratio": dict(ratios),
                "labels": list(self.labels),
            },
        }
        return ModelOutput(logits=logits, probs=torch.softmax(logits, dim=-1), attentions=raws, extras=extras)


@dataclass
class ExtractedFeatures:
    """Output of the feature-extraction module for one batch (independent of keep_ratio)."""

    audio: Tensor  # [B, Ta, d_model]
    audio_mask: Tensor  # [B, Ta] True = pad
    text: Tensor  # [B, Tw', d_model] (Tw' ≥ 1: the "no words" token stands in for none)
    text_mask: Tensor
    attentions: list[RawAttention]  # the vanilla self-attention maps (record=True)


# --------------------------------------------------------------------------- helpers

def _check_ratio(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InputError(f"keep_ratio must be a number > 0 (1 keeps every key); got {value!r}.")
    return float(value)


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over the valid (mask False) positions: [B, T, d] → [B, d]."""
    valid = (~mask).to(x.dtype)[..., None]
    return (x * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1.0)


def _raw(name: str, info: AttentionInfo | None, kind: str, query: str, key: str,
         keep_ratio: float | None) -> RawAttention:
    assert info is not None  # record=True always asks for the maps
    return RawAttention(
        name=name, kind=kind, query_modality=query, key_modality=key, weights=info.weights,
        key_scores=info.key_scores, keep=None if keep_ratio is None else info.keep, keep_ratio=keep_ratio,
    )


def _raws(prefix: str, infos: list[AttentionInfo | None], kind: str, query: str, key: str,
          keep_ratio: float | None) -> list[RawAttention]:
    return [_raw(f"{prefix}.{i}", info, kind, query, key, keep_ratio) for i, info in enumerate(infos)]
