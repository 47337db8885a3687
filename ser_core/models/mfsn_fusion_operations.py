"""The operation pool of MFSN's Fusion Cell (sec. 2.2, eqs. 1–5 of Sun et al.; see ``mfsn.py``).

Each operation takes x = h_T (TEC) and y = h_S^i (SEC), [N, F, d] with a padding mask [N, F],
and gives one tensor (plus its attention map, or None). The formulas, reconstructed where the
extracted paper text lost them, are tabulated above :data:`ser_core.models.mfsn.OPERATIONS`;
:class:`FusionOperation` builds one entry of the pool by name (a "_r" name: reversed).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ISM", "MASK_FILL", "Attention", "ConcatFC", "FusionOperation", "Product", "Sum", "Zero"]

MASK_FILL = -1e9  # finite: a segment without frames gives uniform (then zeroed) weights, no NaN


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over the valid frames (mask False): [N, F, d] → [N, d]; 0 for a segment without any."""
    valid = (~mask).to(x.dtype)[..., None]
    return (x * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1.0)


class Sum(nn.Module):
    """Sum(x, y) = x + y (BM-NAS)."""

    def forward(self, x: Tensor, y: Tensor, mask: Tensor) -> tuple[Tensor, None]:
        return x + y, None


class Product(nn.Module):
    """Product(x, y) = x ⊙ y (element-wise)."""

    def forward(self, x: Tensor, y: Tensor, mask: Tensor) -> tuple[Tensor, None]:
        return x * y, None


class Zero(nn.Module):
    """Zero(x, y) = 0 (DARTS's "none": the search may drop TEC)."""

    def forward(self, x: Tensor, y: Tensor, mask: Tensor) -> tuple[Tensor, None]:
        return torch.zeros_like(x), None


class Attention(nn.Module):
    """Attention(x, y) = LN(softmax(x yᵀ / √d) y): x's frames query y's (BM-NAS ScaleDotAttn:
    no projections, LayerNorm after). Padding frames of y get weight 0."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)

    def forward(self, x: Tensor, y: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        scores = x @ y.transpose(1, 2) / math.sqrt(x.shape[-1])  # [N, Fq, Fk]
        scores = scores.masked_fill(mask[:, None, :], MASK_FILL)
        weights = torch.softmax(scores, dim=-1).masked_fill(mask[:, None, :], 0.0)
        return self.norm(weights @ y), weights


class ConcatFC(nn.Module):
    """ConcatFC(x, y) = ReLU(W [x ; y] + b) (BM-NAS's 1×1 conv; its BatchNorm left out so that
    no statistic mixes utterances), then dropout."""

    def __init__(self, d: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(2 * d, d)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, y: Tensor, mask: Tensor) -> tuple[Tensor, None]:
        return self.dropout(F.relu(self.fc(torch.cat([x, y], dim=-1)))), None


class ISM(nn.Module):
    """Information Supplement Module (EmotionNAS): y's segment-level summary ȳ gates x's
    channels, ISM(x, y) = x ⊙ (1 + σ(W ȳ + b)) — an SE-style gate as in the ISM of STIL, the
    residual keeping x. (Reconstruction: the formula was lost from the extracted text.)"""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.gate = nn.Linear(d, d)

    def forward(self, x: Tensor, y: Tensor, mask: Tensor) -> tuple[Tensor, None]:
        gate = torch.sigmoid(self.gate(_masked_mean(y, mask)))  # [N, d]
        return x * (1.0 + gate[:, None, :]), None


class FusionOperation(nn.Module):
    """One entry of the pool: a base operation, applied as op(x, y), or reversed as op(y, x)
    ("Attention_r(x, y) = Attention(y, x)", sec. 2.2). TEC and SEC lie on the same frames (one
    mask), so a reversed operation's output lies on that axis too."""

    def __init__(self, name: str, d: int, dropout: float) -> None:
        super().__init__()
        self.name = name
        self.reverse = name.endswith("_r")
        base = name[:-2] if self.reverse else name
        self.base = base
        self.op = {
            "sum": lambda: Sum(), "product": lambda: Product(), "zero": lambda: Zero(),
            "attention": lambda: Attention(d), "concat_fc": lambda: ConcatFC(d, dropout),
            "ism": lambda: ISM(d),
        }[base]()

    def forward(self, x: Tensor, y: Tensor, mask: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.op(y, x, mask) if self.reverse else self.op(x, y, mask)
