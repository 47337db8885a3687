"""Any `transformers` speech or text encoder from a local directory.

Speech: wav2vec 2.0, data2vec-audio, HuBERT, WavLM (a convolutional feature encoder, then a
transformer); text: RoBERTa, BERT and kin (pooled to words like the MiniLM encoder).
Attention is always ``eager`` so every layer's weights can be returned. Directories are
loaded with ``local_files_only``; a model-hub name is accepted only through the explicit
``from_hub`` constructors (for users who are online), never by default.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ser_core.encoders.text import (
    WordPooledTextEncoder,
    directory_identity,
    load_tokenizer_and_model,
)
from ser_core.errors import InputError

SAMPLE_RATE = 16_000


def _require_model_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise InputError(
            f"{path} is not a model directory: expected a folder saved with transformers' "
            "save_pretrained (config.json and model.safetensors / pytorch_model.bin)."
        )
    return path


class HFSpeechEncoder(nn.Module):
    """A wav2vec2-family speech encoder: waveform -> per-layer frame states with times."""

    def __init__(self, model: nn.Module, feature_extractor, identity: str):
        super().__init__()
        cfg = model.config
        if not hasattr(cfg, "conv_stride") or not hasattr(cfg, "conv_kernel"):
            raise InputError(
                f"{identity} is not a speech encoder: expected a wav2vec2 / HuBERT / WavLM / "
                "data2vec-audio model (a config with conv_stride and conv_kernel)."
            )
        self.model = model
        self.feature_extractor = feature_extractor
        self.identity = identity
        self.dim: int = int(cfg.hidden_size)
        self.num_layers: int = int(cfg.num_hidden_layers)
        self.sample_rate: int = int(getattr(feature_extractor, "sampling_rate", SAMPLE_RATE) or SAMPLE_RATE)
        # One output frame per product of the conv strides (wav2vec2: 5*2^6 = 320 samples,
        # 20 ms). Its receptive field: r = 1 + sum_l (k_l - 1) * prod_{j<l} s_j (400 samples).
        self.hop: int = int(math.prod(cfg.conv_stride))
        receptive, jump = 1, 1
        for k, s in zip(cfg.conv_kernel, cfg.conv_stride):
            receptive += (k - 1) * jump
            jump *= s
        self.receptive_field: int = receptive
        self.frame_rate: float = self.sample_rate / self.hop
        self.model.eval()

    @classmethod
    def from_dir(cls, path: str | Path, device: str | torch.device | None = None) -> "HFSpeechEncoder":
        """Load from a local directory (never downloads)."""
        path = _require_model_dir(path)
        enc = cls._load(str(path), True, None)
        enc.identity = directory_identity(path, enc.model.config.model_type)
        return enc.to(device) if device is not None else enc

    @classmethod
    def from_hub(cls, name: str, device: str | torch.device | None = None) -> "HFSpeechEncoder":
        """Explicit option for online users: a model-hub name (downloads)."""
        enc = cls._load(name, False, name)
        return enc.to(device) if device is not None else enc

    @classmethod
    def _load(cls, source: str, local_files_only: bool, identity: str | None) -> "HFSpeechEncoder":
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

        try:
            config = AutoConfig.from_pretrained(source, local_files_only=local_files_only)
        except Exception as exc:
            raise InputError(f"{source}: config.json is not a transformers model config ({exc}).") from exc
        if not hasattr(config, "conv_stride"):
            raise InputError(
                f"{source} is a {config.model_type} model, not a speech encoder: expected "
                "wav2vec2 / HuBERT / WavLM / data2vec-audio."
            )
        feature_extractor = None
        if not local_files_only or (Path(source) / "preprocessor_config.json").is_file():
            try:
                feature_extractor = AutoFeatureExtractor.from_pretrained(source, local_files_only=local_files_only)
            except Exception as exc:
                if local_files_only:
                    raise InputError(f"{source}: preprocessor_config.json could not be read ({exc}).") from exc
        try:
            model = AutoModel.from_pretrained(
                source, local_files_only=local_files_only, attn_implementation="eager"
            )
        except Exception as exc:
            raise InputError(f"{source}: the model weights could not be loaded ({exc}).") from exc
        return cls(model, feature_extractor, identity or f"{config.model_type}:{source}")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _inputs(self, audio: np.ndarray) -> torch.Tensor:
        """input_values [1, N]: the directory's feature extractor, else zero-mean unit-variance."""
        x = np.asarray(audio, dtype=np.float32)
        if x.ndim != 1:
            raise InputError(f"The audio must be mono (a 1-D array of samples); got shape {x.shape}.")
        if not np.isfinite(x).all():
            raise InputError("The audio contains NaN or infinite samples.")
        if self.sample_rate != SAMPLE_RATE:
            import librosa

            x = librosa.resample(x, orig_sr=SAMPLE_RATE, target_sr=self.sample_rate, res_type="soxr_hq")
        if len(x) < self.receptive_field:
            raise InputError(
                f"The audio is too short for {self.identity}: at least "
                f"{1000 * self.receptive_field / self.sample_rate:.0f} ms is needed."
            )
        if self.feature_extractor is not None:
            feats = self.feature_extractor(x, sampling_rate=self.sample_rate, return_tensors="pt")
            values = feats["input_values"]
        else:  # the normalisation wav2vec2's feature extractor applies (do_normalize)
            t = torch.from_numpy(x)
            values = ((t - t.mean()) / torch.sqrt(t.var(unbiased=False) + 1e-7))[None]
        return values.to(self.device)

    def frame_times(self, n_frames: int) -> np.ndarray:
        """Centre (seconds) of each output frame's receptive field: (i*hop + r/2) / sr."""
        return (np.arange(n_frames) * self.hop + self.receptive_field / 2) / self.sample_rate

    def encode(self, audio: np.ndarray, output_attentions: bool = False):
        """(hidden [L+1, T, dim], frame_times [T]) for one 16 kHz waveform.

        hidden[0] is the transformer's input (projected conv features), hidden[l] layer l's
        output. With ``output_attentions`` also attentions [L, heads, T, T]. Gradients flow
        unless called under ``torch.no_grad()`` (fine-tuning).
        """
        values = self._inputs(audio)
        out = self.model(values, output_hidden_states=True, output_attentions=output_attentions)
        hidden = torch.stack(out.hidden_states)[:, 0]  # [L+1, T, dim]
        times = self.frame_times(hidden.shape[1])
        if output_attentions:
            return hidden, times, torch.stack(out.attentions)[:, 0]
        return hidden, times

    def forward(self, audio: np.ndarray) -> torch.Tensor:
        return self.encode(audio)[0]


class HFTextEncoder(WordPooledTextEncoder):
    """A RoBERTa / BERT-like text encoder from a local directory, pooled to words.

    Same interface as :class:`~ser_core.encoders.text.MiniLMWordEncoder` (``encode_words``,
    ``sentence_embedding``); byte-level BPE tokenizers get ``add_prefix_space=True``.
    """

    @classmethod
    def from_hub(cls, name: str, device=None, max_length: int | None = None) -> "HFTextEncoder":
        """Explicit option for online users: a model-hub name (downloads)."""
        tokenizer, model = load_tokenizer_and_model(name, local_files_only=False)
        enc = cls(tokenizer, model, f"{model.config.model_type}:{name}", max_length)
        return enc.to(device) if device is not None else enc
