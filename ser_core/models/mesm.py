"""MESM: Multimodal End-to-end Sparse Model (text + audio + visual), and its FE2E baseline.

Paper: W. Dai, S. Cahyawijaya, Z. Liu, P. Fung, "Multimodal End-to-End Sparse Model for
Emotion Recognition", NAACL 2021 (papers/mesm_004_*.txt).

Read top to bottom; the parts of Fig. 2 come in order. The cross-modal sparse CNN (eq. 1–4,
the sparse convolutions, :class:`SparseCNN`) is in ``mesm_sparse_cnn.py``; the per-utterance
input preparation (400 ms log-mel chunks, face crops) in ``mesm_inputs.py``.

Inputs (Sec. 4.1, 5.3)
    t  text:  the frozen MiniLM's CLS vector of the transcript, ``feats.extra["sentence"]``
       [384]. The paper runs its own Transformer over the words and takes its "CLS" output;
       here MiniLM *is* that Transformer (frozen), so the text branch is a projection of its CLS
       (+ LayerNorm) and an FFN. The projected vector is the query q of every cross-modal
       attention layer ("using textual (T) to attend to acoustic (A) and visual (V)", Sec. 7).
    a  audio: log-mel spectrogram (25 ms window, 12.5 ms hop, 64 mels) cut into 400 ms chunks
       of 32 frames (``mel_chunks``), made in :meth:`MESM.collate`, standardised per utterance,
       at most ``max_chunks`` (25 = 10 s; later audio is dropped). Padded frames of the last
       chunk are 0 and never become active points.
    v  visual: 64×64 RGB face crops (5 fps); at most ``max_faces`` (32), evenly subsampled when
       there are more. An utterance may have none: its visual logits are masked out of the
       final weighted sum (a batch may mix items with and without faces).

Per spatial modality (a, v), one CNN per 400 ms chunk / face frame:
    stem      a dense 3×3 conv + ReLU + 2×2 max-pool for the low-level features ("except the
              first one for low-level feature capturing", Sec. 4.3).
    N blocks  (N = len(block_channels), 3 as in Table 6) "cross-modal sparse CNN blocks":
              a cross-modal attention layer (eq. 1–4) then a sparse CNN of two sparse 3×3
              VGG layers (ReLU) and one sparse 2×2 max-pooling layer (Sec. 4.3, 4.3.2).
    flatten   "flattened to vector representations using a linear transformation" (Sec. 4.2).
Then a Transformer over the chunk / frame sequence with a CLS token and learned positions,
and an FFN on the CLS output gives each modality's logits. The final logits are a learned
weighted sum of the modalities' logits (Sec. 4.2): softmax(ω) over the modalities an item
has (the visual one drops out of the sum, renormalised, for an item without faces).

Cross-modal attention layer (Sec. 4.3.1), for one map M [C, H, W] of the sequence and q:
    M_q  = tanh((W_m M + b_m) ⊕ W_q q)          (eq. 1)  ⊕ adds W_q q at every point
    M_i  = softmax(W_i M_q + b_i)                (eq. 2)  softmax over the map's H×W points
    M_ns = NucleusSampling(M_i)                  (eq. 3)  ``ser_core.attention.nucleus_mask``
    M_o  = M_ns ⊗ M                              (eq. 4)
The softmax runs over the map's *active* points only: those that survived the previous
blocks (pooled) and, for audio, that cover at least one real (unpadded) frame; so, as in
Fig. 4, points filtered out by one layer stay out in the next. b_i is left out: a constant
added to every score cancels in the softmax.

Training the attention (our deviation). In the paper's equations and released code the mask
M_ns is a hard 0/1 choice, so W_m, W_q, W_i get no gradient at all. We keep the forward value
of eq. 4 exactly (kept points pass unchanged, dropped points are 0) but use a straight-through
estimator: the kept features are multiplied by ``1 + a − stopgrad(a)`` with
``a = M_i · n_active`` (the attention weight times the number of active points of that map, so
that a uniform map gives a = 1). Its forward value is exactly 1, its backward is that of
scaling each kept point by its (count-normalised) attention weight, so the attention learns
to weight up the points whose features lower the loss. The tests check that W_m, W_q and W_i
receive non-zero gradient.

Sparse CNN (Sec. 4.3.2, submanifold sparse convolution, Graham & van der Maaten 2017).
Features travel as a compact list: the P active points' vectors as rows of a [P + 1, C]
tensor (last row 0) plus their flat indices. A 3×3 sparse conv computes its output only at
the kept points: each point's 3×3 neighbourhood is looked up once per block in an index map
of the zero-bordered maps (a neighbour that is not kept reads the zero row); its P × 9C
neighbourhood matrix (im2col) is gathered block by block into a reused, cache-sized buffer and
multiplied by the conv weight as a 9C × C' matrix (GEMM), with bias and ReLU. This equals the
dense conv of the masked map M_o read at the kept points. Backward (a custom autograd
function): the input gradient of a stride-1 conv is the conv of the output gradient with the
flipped, transposed kernel over the same points, so it is the same gather + GEMM, no scatter.
Both VGG layers of a block use the same points (submanifold); the sparse 2×2 max-pool makes a
pooled point active if any of its inputs is kept, its value the max over the kept inputs
(dropped ones read the zero row, and ReLU outputs are ≥ 0). FE2E ("fully end-to-end",
Sec. 4.2) is the same network with dense convs (oneDNN, channels-last) at every point and no
attention layers; a FE2E model loads a MESM state dict (minus the attention layers) and then
equals MESM at top_p = 1 on unpadded input.

FLOPs. Counted for the feature-extraction CNN (stem, attention layers, convs; not the flatten,
Transformers or heads, as the paper reports "FLOPs in the feature extraction part"), as
2 × multiply-accumulates actually executed: a conv costs 9·C·C' MACs per *computed* output
point (dense: every point; sparse: every kept point, its dropped neighbours included since the
GEMM multiplies their zeros too — the paper's a·m·n counts only active neighbours, ours is the
honest count of our kernel); an attention layer costs (C·k + k) MACs per active point plus
d·k per map for W_q q. Biases, activations, pooling, softmax and sorting are not counted.
``extras["item_extras"]["flops"]`` [B, L] (this model) and ``["flops_dense"]`` [B, L] (what FE2E
would spend on the same item; 0 for attention layers) per layer named by
``extras["model_extras"]["flops_layers"]``; :meth:`MESM.flops` sums them for a batch.

Records (``record=True``): one :class:`RawAttention` per cross-modal attention layer per
spatial modality, named ``"spectrogram.attention{b}"`` / ``"visual.attention{b}"``, kind
"nucleus", ``top_p`` set, H = 1 head:
    query_modality "spectrogram" (the 400 ms chunks) or "visual" (the face frames);
    key_modality   "spectrogram_map{b}" / "visual_map{b}": the block's H_b × W_b map points,
                   flattened row-major (key index = row · W_b + col);
    weights [B, 1, Tq, H_b·W_b] = M_i ⊙ M_ns (the attention weights of the kept points, not
                   renormalised; 0 where dropped or not active);
    keep    [B, 1, Tq, H_b·W_b] bool = M_ns (the points the next sparse layers compute).
How a view draws one query (chunk / frame) j of record r over its image (Fig. 3 / 4):
    H, W = extras["model_extras"]["map_shapes"][r.name]
    grid = r.keep[0, j].reshape(H, W)            (and r.weights[0, j].reshape(H, W))
    spectrogram: the image is chunk j's log-mel [64 mels, 32 frames], i.e.
        ``mel_chunks(feats.audio).chunks[j]`` (row 0 = lowest mel band, so draw it with the
        origin at the bottom); map cell (row, col) covers mel bands
        [row·64/H, (row+1)·64/H) and frames [col·32/W, (col+1)·32/W) of 12.5 ms, i.e. times
        chunk_start + [col, col+1)·0.4/W s.
    visual: the image is face crop j [64, 64, 3] (row 0 = top); cell (row, col) covers pixels
        [row·64/H, (row+1)·64/H) × [col·64/W, (col+1)·64/W).
    ``viz.nucleus_overlay_figure(image, grid, weights)`` lays such a coarse grid over the image.
:meth:`MESM.axis_labels` labels the chunks (start/end s), the face frames (their times) and the
map points ("(row, col)" with ``coords`` [H·W, 2]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ser_core.encoders.spectral import MESM_N_MELS
from ser_core.errors import InputError
from ser_core.features import Features
from ser_core.models.base import ModelConfig, ModelOutput, RawAttention, register_model
from ser_core.models.mesm_inputs import (CHUNK_FRAMES, CHUNK_SAMPLES, CHUNK_SECONDS, FACE_STEP, _chunk_count,
                                         _face_times, _utterance_chunks, _utterance_faces)
from ser_core.models.mesm_sparse_cnn import (BlockResult, CrossModalAttention, CrossModalSparseBlock, SparseCNN,
                                             max_pool2x2, neighbour_table, submanifold_conv3x3)
from ser_core.trace import AxisLabels

__all__ = [
    "FE2E",
    "MESM",
    "MESMConfig",
    "CrossModalAttention",
    "CrossModalSparseBlock",
    "SparseCNN",
    "submanifold_conv3x3",
    # moved to mesm_sparse_cnn.py / mesm_inputs.py, still importable from here
    "BlockResult",
    "max_pool2x2",
    "neighbour_table",
    "CHUNK_FRAMES",
    "CHUNK_SAMPLES",
    "CHUNK_SECONDS",
    "FACE_STEP",
]

MODALITY_NAMES = {"T": "text", "A": "spectrogram", "V": "visual"}
MODALITY_SETS = ("T", "TA", "TV", "TAV")  # the ablation of Table 5 (text always there)


@dataclass
class MESMConfig(ModelConfig):
    """Hyperparameters (Table 6 where given; CNN sizes are our CPU-sized stand-in for VGG-11)."""

    num_classes: int = 4
    labels: tuple[str, ...] = ("ang", "hap", "neu", "sad")
    text_dim: int = 384  # MiniLM hidden size
    modalities: str = "TAV"  # "T", "TA", "TV" or "TAV" (Table 5)
    # top-p of the nucleus sampling (eq. 3). 0.5: "with a top-p of 0.5, the MESM can achieve
    # comparable performance to the FE2E model with around half of the FLOPs" (Sec. 6.3,
    # Table 4); Table 3 (IEMOCAP) reports p = 0.7. A forward argument overrides it.
    top_p: float = 0.5
    n_mels: int = MESM_N_MELS  # 64 (not stated in the paper)
    max_chunks: int = 25  # 400 ms chunks kept per utterance (10 s)
    max_faces: int = 32  # face frames kept per utterance (evenly subsampled beyond)
    face_size: int = 64
    # Each face crop minus its local mean (a 9×9 box) before the stem: brows, eyes and mouth stand
    # out from the skin around them, whatever its brightness (not in the paper; issue 11: with the
    # plain pixels the face attention keeps the brightest points, the skin, ``ser_core.expressive``).
    face_local_contrast: bool = False
    stem_channels: int = 16  # the dense first conv layer
    # Output channels of each cross-modal sparse CNN block (N = 3, Table 6). VGG-like widths: at
    # 64+ channels the convs dominate the per-point bookkeeping, so skipping points pays on CPU.
    block_channels: tuple[int, ...] = (64, 64, 96)
    attention_dim: int = 8  # k of eq. 1–2 (not given in the paper)
    # Eq. 1 on each map's features standardised over its active points (not in the paper; issue
    # 11: on faces the plain features grow with the skin's brightness, and so did the attention).
    attention_standardize: bool = False
    # While training, this share of the points each nucleus mask drops is let through too, at random
    # (not in the paper): the straight-through estimator only tells the attention what kept points
    # were worth; with these it also learns what the dropped ones would have added.
    attention_explore: float = 0.0
    d_model: int = 64  # "Dim 64" (Table 6)
    heads: int = 4  # "#Heads 4" (Table 6)
    transformer_layers: int = 1  # Table 6 has 4; 1 keeps CPU training fast
    ff_dim: int = 128
    dropout: float = 0.3  # text input projection and the FFN heads
    transformer_dropout: float = 0.1

    def __post_init__(self) -> None:
        if len(self.labels) != self.num_classes:
            raise InputError(f"num_classes={self.num_classes} but {len(self.labels)} labels {self.labels}.")
        if self.modalities not in MODALITY_SETS:
            raise InputError(f"modalities must be one of {MODALITY_SETS}; got {self.modalities!r}.")
        _check_top_p(self.top_p)
        if self.d_model % self.heads:
            raise InputError(f"d_model={self.d_model} must be divisible by heads={self.heads}.")
        if not self.block_channels or min(self.block_channels) < 1 or self.stem_channels < 1:
            raise InputError("block_channels needs at least one block, and every channel count must be ≥ 1.")
        if not 0.0 <= self.attention_explore < 1.0:
            raise InputError(f"attention_explore must be in [0, 1); got {self.attention_explore}.")
        if self.max_chunks < 1 or self.max_faces < 1 or self.attention_dim < 1:
            raise InputError("max_chunks, max_faces and attention_dim must be ≥ 1.")
        for what, size in (("spectrogram", (self.n_mels, CHUNK_FRAMES)), ("face", (self.face_size,) * 2)):
            for side in size:  # the stem and every block halve the map: it must stay even
                if side % (2 ** (len(self.block_channels) + 1)):
                    raise InputError(f"The {what} map {size} cannot be halved {len(self.block_channels) + 1} "
                                     "times; use fewer blocks.")


# --------------------------------------------------------------------------- sequence + heads

class SequenceEncoder(nn.Module):
    """A Transformer over a modality's chunk / frame vectors with a CLS token (Sec. 4.2), then
    an FFN on the CLS output → that modality's logits."""

    def __init__(self, cfg: MESMConfig, max_len: int) -> None:
        super().__init__()
        d = cfg.d_model
        self.norm = nn.LayerNorm(d)
        self.cls = nn.Parameter(torch.randn(d) * 0.02)
        self.position = nn.Parameter(torch.randn(max_len + 1, d) * 0.02)  # learned positions
        layer = nn.TransformerEncoderLayer(d, cfg.heads, cfg.ff_dim, cfg.transformer_dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.transformer_layers, norm=nn.LayerNorm(d),
                                             enable_nested_tensor=False)
        self.head = _ffn(cfg)

    def forward(self, vectors: Tensor, seq: "ModalitySequence") -> Tensor:
        B, N = seq.mask.shape
        x = vectors.new_zeros(B, N, vectors.shape[-1])
        x = x.index_put((seq.item, seq.position), self.norm(vectors))
        x = torch.cat([self.cls.expand(B, 1, -1), x], dim=1) + self.position[: N + 1]
        mask = torch.cat([seq.mask.new_zeros(B, 1), seq.mask], dim=1)
        return self.head(self.encoder(x, src_key_padding_mask=mask)[:, 0])


def _ffn(cfg: MESMConfig) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cfg.d_model, cfg.d_model), nn.ReLU(), nn.Dropout(cfg.dropout),
                         nn.Linear(cfg.d_model, cfg.num_classes))


@dataclass
class ModalitySequence:
    """One spatial modality of a batch after the (top_p-independent) dense stem."""

    stem: Tensor  # [S, C0, H, W]: every valid chunk / frame of the batch, item after item
    active: Tensor  # [S, H, W] bool: points covering real input (audio: unpadded frames)
    item: Tensor  # [S] batch index of each map
    position: Tensor  # [S] its place in the item's sequence
    mask: Tensor  # [B, N] True = pad


@dataclass
class MESMExtracted:
    """What :meth:`MESM.extract` returns: everything before the first attention layer."""

    text: Tensor  # [B, d] the text representation = the query q
    text_logits: Tensor  # [B, C]
    sequences: dict[str, ModalitySequence] = field(default_factory=dict)  # "spectrogram", "visual"


# --------------------------------------------------------------------------- the model

@register_model("mesm")
class MESM(nn.Module):
    """MESM (Fig. 2). forward(batch, top_p=None, record=False, modalities=None) → ModelOutput.

    batch (from :meth:`collate`): "sentence" [B, text_dim]; "chunks" [B, N, n_mels, 32] float,
    "chunk_mask" [B, N] (True = pad), "chunk_frames" [B, N] long (real frames per chunk);
    "faces" [B, F, size, size, 3] uint8, "face_mask" [B, F] (F may be 0).
    """

    Config = MESMConfig
    model_name = "mesm"
    inputs: ClassVar[tuple[str, ...]] = ("audio", "sentence", "faces")
    sparse: ClassVar[bool] = True  # FE2E: False

    def __init__(self, config: MESMConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or MESMConfig()
        d = cfg.d_model
        # Text branch: the frozen MiniLM CLS → projection (the query q of eq. 1) → FFN.
        self.text_proj = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.text_dim, d), nn.LayerNorm(d))
        self.text_head = _ffn(cfg)
        self.cnns = nn.ModuleDict()
        self.encoders = nn.ModuleDict()
        if "A" in cfg.modalities:
            self.cnns["spectrogram"] = SparseCNN(1, (cfg.n_mels, CHUNK_FRAMES), cfg, self.sparse)
            self.encoders["spectrogram"] = SequenceEncoder(cfg, cfg.max_chunks)
        if "V" in cfg.modalities:
            self.cnns["visual"] = SparseCNN(3, (cfg.face_size, cfg.face_size), cfg, self.sparse)
            self.encoders["visual"] = SequenceEncoder(cfg, cfg.max_faces)
        # ω of the weighted sum of the modalities' classification scores (Sec. 4.2).
        self.modality_weights = nn.Parameter(torch.zeros(len(cfg.modalities)))

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.config.labels)

    @property
    def modality_names(self) -> list[str]:
        return [MODALITY_NAMES[m] for m in self.config.modalities]

    # ----------------------------------------------------------------- batching

    @classmethod
    def collate(cls, items: list[Features], config: MESMConfig, device: torch.device | str = "cpu"
                ) -> dict[str, Tensor]:
        """Features → batch: mel chunks (made here), face crops, the MiniLM CLS vectors."""
        if not items:
            raise InputError("collate needs at least one utterance.")
        B = len(items)
        sentence = []
        for f in items:
            vec = f.extra.get("sentence")
            if vec is None:
                raise InputError("MESM needs the transcript's sentence vector (feats.extra['sentence']).")
            vec = np.asarray(vec, dtype=np.float32).reshape(-1)
            if vec.shape[0] != config.text_dim:
                raise InputError(f"The sentence vector has {vec.shape[0]} values; this model expects "
                                 f"{config.text_dim}. Was it made by the text encoder the model was trained on?")
            sentence.append(torch.from_numpy(vec))
        batch = {"sentence": torch.stack(sentence)}
        if "A" in config.modalities:
            chunks = [_utterance_chunks(f.audio, config) for f in items]
            N = max(c.shape[0] for c, _ in chunks)
            batch["chunks"] = torch.zeros(B, N, config.n_mels, CHUNK_FRAMES)
            batch["chunk_frames"] = torch.zeros(B, N, dtype=torch.long)
            for i, (c, frames) in enumerate(chunks):
                batch["chunks"][i, : c.shape[0]] = c
                batch["chunk_frames"][i, : c.shape[0]] = frames
            batch["chunk_mask"] = batch["chunk_frames"] == 0
        if "V" in config.modalities:
            faces = [_utterance_faces(f, config) for f in items]
            Fmax = max(x.shape[0] for x in faces)
            s = config.face_size
            batch["faces"] = torch.zeros(B, Fmax, s, s, 3, dtype=torch.uint8)
            batch["face_mask"] = torch.ones(B, Fmax, dtype=torch.bool)
            for i, x in enumerate(faces):
                batch["faces"][i, : x.shape[0]] = x
                batch["face_mask"][i, : x.shape[0]] = False
        return {k: v.to(device) for k, v in batch.items()}

    def axis_labels(self, feats: Features) -> dict[str, AxisLabels]:
        """Labels for one utterance: chunks, face frames, and every block's map points."""
        cfg = self.config
        out: dict[str, AxisLabels] = {}
        if "A" in cfg.modalities:
            n = _chunk_count(len(feats.audio), cfg)
            start = np.arange(n) * CHUNK_SECONDS
            end = np.minimum(start + CHUNK_SECONDS, max(feats.duration, 1e-9))
            out["spectrogram"] = AxisLabels("chunks", [f"{a:.1f}–{b:.2f} s" for a, b in zip(start, end)],
                                            start, end)
        if "V" in cfg.modalities:
            start, step = _face_times(feats, cfg)
            out["visual"] = AxisLabels("frames", [f"{t:.2f} s" for t in start], start, start + step)
        for name, cnn in self.cnns.items():
            for b, (H, W) in enumerate(cnn.map_shapes):
                rc = np.stack(np.divmod(np.arange(H * W), W), axis=1)
                out[f"{name}_map{b}"] = AxisLabels("patches", [f"({r}, {c})" for r, c in rc], coords=rc)
        return out

    # ----------------------------------------------------------------- forward

    def forward(self, batch: dict[str, Tensor] | None, keep_ratio: Any = None, top_p: float | None = None,
                record: bool = False, extracted: MESMExtracted | None = None,
                modalities: str | None = None) -> ModelOutput:
        """keep_ratio is not a MESM knob (ignored). top_p: nucleus p (None: the config's; ≥ 1
        keeps every point). modalities: a subset of the config's ("T", "TA", ...) to use.
        extracted: :meth:`extract`'s output for this batch (then ``batch`` may be None)."""
        mods = self._modalities(modalities)
        p = self.config.top_p if top_p is None else _check_top_p(top_p)
        if extracted is None:
            if batch is None:
                raise InputError("forward needs a batch (or the output of extract()).")
            extracted = self.extract(batch, modalities=mods)
        t = extracted.text
        B = t.shape[0]
        logits_m = {"text": extracted.text_logits}
        present = {"text": torch.ones(B, dtype=torch.bool, device=t.device)}
        raws: list[RawAttention] = []
        flops, flops_dense, layer_names = [], [], []
        map_shapes: dict[str, tuple[int, int]] = {}
        padding_masks: dict[str, Tensor] = {}
        for name in (MODALITY_NAMES[m] for m in mods if m != "T"):
            seq = extracted.sequences.get(name)
            if seq is None:
                raise InputError(f"The extracted features have no {name} part; run extract() with it.")
            cnn = self.cnns[name]
            f_item = t.new_zeros(B, len(cnn.layer_names), dtype=torch.float64)
            fd_item = f_item.clone()
            padding_masks[name] = seq.mask
            present[name] = ~seq.mask.all(dim=1)
            if seq.item.numel() == 0:  # no item of the batch has this modality
                logits_m[name] = t.new_zeros(B, self.config.num_classes)
            else:
                vectors, f_seq, results = cnn(seq.stem, seq.active, t.index_select(0, seq.item), p)
                logits_m[name] = self.encoders[name](vectors, seq)
                f_item.index_add_(0, seq.item, f_seq)
                fd_item.index_add_(0, seq.item, cnn.dense_flops(len(seq.item), t.device))
                for b, res in enumerate(results):
                    rname = f"{name}.attention{b}"
                    map_shapes[rname] = cnn.map_shapes[b]
                    if record:
                        raws.append(self._raw(rname, name, b, res, seq, p))
            flops.append(f_item)
            flops_dense.append(fd_item)
            layer_names += [f"{name}.{n}" for n in cnn.layer_names]

        # Weighted sum of the modalities' classification scores (Sec. 4.2), over those present.
        names = self.modality_names
        used = torch.tensor([m in mods for m in self.config.modalities], device=t.device)
        avail = torch.stack([present.get(n, torch.zeros(B, dtype=torch.bool, device=t.device)) for n in names], 1)
        avail &= used
        w = torch.softmax(self.modality_weights.masked_fill(~avail, float("-inf")), dim=-1)  # [B, M]
        stacked = torch.stack([logits_m.get(n, t.new_zeros(B, self.config.num_classes)) for n in names], 1)
        logits = (w[..., None] * stacked).sum(1)

        item_extras: dict[str, Tensor] = {
            "modality_weights": w.detach(),
            "modality_probs": torch.softmax(stacked.detach(), -1) * avail[..., None],
        }
        if flops:
            item_extras["flops"] = torch.cat(flops, 1)
            item_extras["flops_dense"] = torch.cat(flops_dense, 1)
        extras: dict[str, Any] = {
            "padding_masks": padding_masks,
            "item_extras": item_extras,
            "model_extras": {
                "modalities": [MODALITY_NAMES[m] for m in mods],
                "modality_order": names,
                "fusion_weights": torch.softmax(self.modality_weights.detach(), 0),
                "flops_layers": layer_names,
                "map_shapes": map_shapes,
                "top_p": p if self.sparse else None,
                "sparse": self.sparse,
                "labels": list(self.labels),
            },
        }
        return ModelOutput(logits=logits, probs=torch.softmax(logits, -1), attentions=raws, extras=extras)

    def extract(self, batch: dict[str, Tensor], record: bool = False, modalities: str | None = None
                ) -> MESMExtracted:
        """The top_p-independent first stage: text branch and each modality's dense stem."""
        mods = self._modalities(modalities)
        cfg = self.config
        sentence = _tensor(batch, "sentence", 2)
        if sentence.shape[1] != cfg.text_dim:
            raise InputError(f"sentence vectors must be [B, {cfg.text_dim}]; got {tuple(sentence.shape)}.")
        B = sentence.shape[0]
        t = self.text_proj(sentence)
        out = MESMExtracted(text=t, text_logits=self.text_head(t))
        if "A" in mods:
            chunks = _tensor(batch, "chunks", 4)
            frames = _tensor(batch, "chunk_frames", 2)
            mask = batch.get("chunk_mask", frames == 0)
            shape_ok = chunks.shape[0] == B and chunks.shape[2:] == (cfg.n_mels, CHUNK_FRAMES)
            if not shape_ok or frames.shape != chunks.shape[:2]:
                raise InputError(f"chunks must be [{B}, N, {cfg.n_mels}, {CHUNK_FRAMES}] with chunk_frames [B, N]; "
                                 f"got {tuple(chunks.shape)} and {tuple(frames.shape)}.")
            if chunks.shape[1] > cfg.max_chunks:
                raise InputError(f"At most {cfg.max_chunks} chunks per utterance; got {chunks.shape[1]}.")
            if bool(mask.all(dim=1).any()):
                raise InputError("An utterance has no audio chunk: it is empty or too short to analyse.")
            seq = _sequence(mask)
            cnn = self.cnns["spectrogram"]
            stem = cnn.run_stem(chunks[seq.item, seq.position].unsqueeze(1))
            # a stem point (2 frames wide) is active when it covers at least one real frame
            W0 = stem.shape[-1]
            first_frame = torch.arange(W0, device=stem.device) * (CHUNK_FRAMES // W0)
            cols = first_frame[None, :] < frames[seq.item, seq.position][:, None]
            seq.stem, seq.active = stem, cols[:, None, :].expand(-1, stem.shape[-2], -1)
            out.sequences["spectrogram"] = seq
        if "V" in mods:
            faces = _tensor(batch, "faces", 5)
            mask = batch.get("face_mask")
            s = cfg.face_size
            if faces.shape[0] != B or faces.shape[2:] != (s, s, 3) or mask is None or mask.shape != faces.shape[:2]:
                raise InputError(f"faces must be [{B}, F, {s}, {s}, 3] with face_mask [B, F]; got "
                                 f"{tuple(faces.shape)}.")
            if faces.shape[1] > cfg.max_faces:
                raise InputError(f"At most {cfg.max_faces} face frames per utterance; got {faces.shape[1]}.")
            seq = _sequence(mask)
            cnn = self.cnns["visual"]
            x = faces[seq.item, seq.position].permute(0, 3, 1, 2).float()
            if faces.dtype == torch.uint8:
                x = x / 127.5 - 1.0
            if cfg.face_local_contrast:
                x = x - F.avg_pool2d(x, 9, stride=1, padding=4, count_include_pad=False)
            seq.stem = cnn.run_stem(x)
            seq.active = torch.ones(seq.stem.shape[0], *seq.stem.shape[2:], dtype=torch.bool, device=x.device)
            out.sequences["visual"] = seq
        return out

    # ----------------------------------------------------------------- helpers

    def flops(self, batch: dict[str, Tensor], top_p: float | None = None, modalities: str | None = None
              ) -> dict[str, Any]:
        """FLOPs (2 × MACs) of the feature-extraction CNNs for a whole batch, and FE2E's."""
        with torch.no_grad():
            return self.count_flops(self(batch, top_p=top_p, modalities=modalities))

    @staticmethod
    def count_flops(output: ModelOutput) -> dict[str, Any]:
        """Sum an output's per-item FLOPs: {"flops", "dense_flops", "ratio", "per_layer"}."""
        extras = output.extras["item_extras"]
        if "flops" not in extras:
            return {"flops": 0.0, "dense_flops": 0.0, "ratio": float("nan"), "per_layer": {}}
        f, fd = extras["flops"].sum(0), extras["flops_dense"].sum(0)
        names = output.extras["model_extras"]["flops_layers"]
        total, dense = float(f.sum()), float(fd.sum())
        return {"flops": total, "dense_flops": dense, "ratio": total / dense if dense else float("nan"),
                "per_layer": {n: (float(a), float(b)) for n, a, b in zip(names, f, fd)}}

    def _modalities(self, modalities: str | None) -> str:
        if modalities is None:
            return self.config.modalities
        if modalities not in MODALITY_SETS or any(m not in self.config.modalities for m in modalities):
            raise InputError(f"modalities must be one of {MODALITY_SETS} within this model's "
                             f"{self.config.modalities!r}; got {modalities!r}.")
        return modalities

    def _raw(self, rname: str, name: str, b: int, res: BlockResult, seq: ModalitySequence, p: float
             ) -> RawAttention:
        """Scatter a block's [S, H·W] maps into the batch layout [B, 1, N, H·W]."""
        B, N = seq.mask.shape
        HW = res.keep.shape[1]
        weights = res.weights.new_zeros(B, N, HW).index_put_((seq.item, seq.position), res.weights * res.keep)
        keep = res.keep.new_zeros(B, N, HW).index_put_((seq.item, seq.position), res.keep)
        return RawAttention(name=rname, kind="nucleus", query_modality=name, key_modality=f"{name}_map{b}",
                            weights=weights[:, None], keep=keep[:, None], top_p=p)


@register_model("fe2e")
class FE2E(MESM):
    """FE2E, the fully end-to-end baseline (Sec. 4.2): MESM's network with dense CNN blocks and
    no cross-modal attention / nucleus sampling (top_p is ignored; nothing is recorded)."""

    model_name = "fe2e"
    sparse: ClassVar[bool] = False


# --------------------------------------------------------------------------- input helpers

def _check_top_p(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InputError(f"top_p must be a number in (0, 1] (≥ 1 keeps every point); got {value!r}.")
    return float(value)


def _tensor(batch: dict[str, Tensor], key: str, dim: int) -> Tensor:
    x = batch.get(key)
    if not isinstance(x, Tensor) or x.dim() != dim:
        raise InputError(f"The model input needs a {dim}-D {key!r} tensor (use MESM.collate).")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise InputError(f"The {key!r} input contains NaN or infinite values.")
    return x


def _sequence(mask: Tensor) -> ModalitySequence:
    """The (item, position) of every valid entry of a [B, N] padding mask, item after item."""
    item, position = (~mask).nonzero(as_tuple=True)
    return ModalitySequence(stem=mask.new_zeros(0), active=mask.new_zeros(0), item=item,
                            position=position, mask=mask)
