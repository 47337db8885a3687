"""Features of one utterance, computed once and cached (DESIGN.md: "everything expensive happens once").

    audio (16 kHz) + words  ──encoders──▶  Features  ──▶  any model, any keep_ratio / top_p

A :class:`FeatureExtractor` owns the encoders (Whisper speech encoder, MiniLM word encoder) and
turns audio + words into :class:`Features`. Results are cached

* in memory (a small LRU, for the app's reruns), and
* on disk under ``cache_dir()/features/<extractor identity>/<key>.safetensors`` (tensors) with a
  JSON side file (words, times), so training epochs and the app share the work.

The cache key is a hash of the audio samples and the typed transcript (if any); the folder is the
encoders' identity, so a different encoder never reads another's features. Files are written
atomically and read without unpickling anything (safetensors + JSON).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from .asr import Word
from .paths import cache_dir

SAMPLE_RATE = 16000


@dataclass
class Features:
    """Everything a model or a view needs about one utterance.

    speech: [L+1, T, D] hidden states of every speech-encoder layer (embedding output first),
        float16 on disk / float32 in memory; frame_times: [T] centre of each frame in seconds.
    text: [Nw, Dt] word states (sub-word pieces pooled back to words), one row per ``words`` entry.
    words: the words with their times (ASR, or a typed transcript aligned to the audio).
    transcript_source: "asr" or "typed".
    extra: named arrays other models need (log-mels, mel chunks, face crops, ...).
    """

    key: str
    audio: np.ndarray
    words: list[Word]
    speech: np.ndarray
    frame_times: np.ndarray
    text: np.ndarray
    transcript_source: str = "asr"
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    @property
    def transcript(self) -> str:
        return " ".join(w.text for w in self.words)


def content_key(audio: np.ndarray, transcript: str | None) -> str:
    """Hash of what determines the features: the samples and the typed transcript."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(audio, dtype=np.float32).tobytes())
    h.update(b"\0transcript\0")
    h.update((transcript or "").strip().encode("utf-8"))
    return h.hexdigest()[:24]


class FeatureExtractor:
    """Audio (+ optional transcript) → :class:`Features`, with a memory and a disk cache.

    Encoders load lazily on first use, so constructing one is free. ``speech_encoder`` and
    ``text_encoder`` name the encoders (``"whisper:tiny.en"``, ``"minilm"``); their identities
    (which include a hash of the weights) name the cache folder.
    """

    def __init__(
        self,
        speech_encoder: str = "whisper:tiny.en",
        text_encoder: str = "minilm",
        device: str | torch.device | None = None,
        disk_cache: bool = True,
        memory_items: int = 16,
    ) -> None:
        self.speech_encoder_name = speech_encoder
        self.text_encoder_name = text_encoder
        self.device = torch.device(device) if device is not None else default_device()
        self.disk_cache = disk_cache
        self._memory: OrderedDict[str, Features] = OrderedDict()
        self._memory_items = memory_items
        self._lock = threading.Lock()
        self._speech = None
        self._text = None

    # --- encoders (lazy) -------------------------------------------------------------------
    @property
    def speech(self):
        if self._speech is None:
            kind, _, name = self.speech_encoder_name.partition(":")
            if kind == "whisper":
                from .encoders.whisper import load_whisper_encoder

                self._speech = load_whisper_encoder(name or "tiny.en", device=self.device)
            elif kind == "hf":
                from .encoders.hf import HFSpeechEncoder

                self._speech = HFSpeechEncoder.from_dir(name).to(self.device).eval()
            else:
                raise ValueError(f"unknown speech encoder {self.speech_encoder_name!r}")
        return self._speech

    @property
    def text_model(self):
        if self._text is None:
            kind, _, path = self.text_encoder_name.partition(":")
            if kind == "minilm":
                from .encoders.text import load_text_encoder

                self._text = load_text_encoder(path or None, device=self.device)
            elif kind == "hf":
                from .encoders.hf import HFTextEncoder

                self._text = HFTextEncoder.from_dir(path).to(self.device).eval()
            else:
                raise ValueError(f"unknown text encoder {self.text_encoder_name!r}")
        return self._text

    @property
    def identity(self) -> str:
        """Names the cache folder: both encoders' identities (weights hashes included)."""
        raw = f"{self.speech.identity}|{self.text_model.identity}"
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in raw)
        return safe[:120]

    @property
    def speech_layers(self) -> int:
        return int(self.speech.num_layers) + 1

    @property
    def speech_dim(self) -> int:
        return int(self.speech.dim)

    @property
    def text_dim(self) -> int:
        return int(self.text_model.dim)

    # --- the work ----------------------------------------------------------------------------
    def extract(
        self,
        audio: np.ndarray,
        transcript: str | None = None,
        words: list[Word] | None = None,
    ) -> Features:
        """Features for one utterance (cached). ``words`` skips ASR/alignment when given."""
        key = content_key(audio, transcript if words is None else "|".join(w.text for w in words))
        with self._lock:
            hit = self._memory.get(key)
            if hit is not None:
                self._memory.move_to_end(key)
                return hit
        feats = self._read_disk(key) if self.disk_cache else None
        if feats is None:
            feats = self._compute(key, audio, transcript, words)
            if self.disk_cache:
                self._write_disk(feats)
        with self._lock:
            self._memory[key] = feats
            while len(self._memory) > self._memory_items:
                self._memory.popitem(last=False)
        return feats

    def _compute(
        self, key: str, audio: np.ndarray, transcript: str | None, words: list[Word] | None
    ) -> Features:
        from .asr import words_for

        if words is None:
            words = words_for(audio, transcript)
        source = "typed" if (transcript and transcript.strip()) else "asr"
        with torch.no_grad():
            hidden, frame_times = self.speech.encode(audio)
            text = self.text_model.encode_words([w.text for w in words])
        return Features(
            key=key,
            audio=np.asarray(audio, dtype=np.float32),
            words=list(words),
            speech=hidden.detach().float().cpu().numpy(),
            frame_times=np.asarray(frame_times, dtype=np.float32),
            text=text.detach().float().cpu().numpy(),
            transcript_source=source,
        )

    # --- disk cache --------------------------------------------------------------------------
    def _paths(self, key: str) -> tuple[Path, Path]:
        folder = cache_dir() / "features" / self.identity
        return folder / f"{key}.safetensors", folder / f"{key}.json"

    def _read_disk(self, key: str) -> Features | None:
        tensors_path, meta_path = self._paths(key)
        if not (tensors_path.exists() and meta_path.exists()):
            return None
        try:
            arrays = load_file(str(tensors_path))
            meta = json.loads(meta_path.read_text())
        except Exception:  # a torn or foreign file: recompute rather than fail
            return None
        return Features(
            key=key,
            audio=arrays.pop("audio").astype(np.float32),
            words=[Word(**w) for w in meta["words"]],
            speech=arrays.pop("speech").astype(np.float32),
            frame_times=arrays.pop("frame_times").astype(np.float32),
            text=arrays.pop("text").astype(np.float32),
            transcript_source=meta.get("transcript_source", "asr"),
            extra={k: v for k, v in arrays.items()},
        )

    def _write_disk(self, feats: Features) -> None:
        tensors_path, meta_path = self._paths(feats.key)
        tensors_path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {
            "audio": feats.audio.astype(np.float32),
            "speech": feats.speech.astype(np.float16),
            "frame_times": feats.frame_times.astype(np.float32),
            "text": feats.text.astype(np.float16),
            **feats.extra,
        }
        meta = {
            "words": [w.__dict__ for w in feats.words],
            "transcript_source": feats.transcript_source,
        }
        _atomic_write(meta_path, json.dumps(meta).encode("utf-8"))
        fd, tmp = tempfile.mkstemp(dir=tensors_path.parent, suffix=".tmp")
        os.close(fd)
        try:
            save_file(arrays, tmp)
            os.replace(tmp, tensors_path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def default_device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def collate_speech_text(
    items: list[Features],
    device: torch.device | str = "cpu",
    max_frames: int | None = None,
    max_words: int | None = None,
) -> dict[str, torch.Tensor]:
    """Pad a list of Features into one batch for speech+text models.

    Returns "audio" [B, L, Ta, D], "audio_mask" [B, Ta] (True = pad), "text" [B, Tw, Dt],
    "text_mask" [B, Tw]. ``max_frames`` / ``max_words`` cut long items (the paper caps audio at
    460 frames and text at 20 words); a batch whose items have no words gets Tw = 0.
    """
    speech = [torch.from_numpy(f.speech[:, :max_frames] if max_frames else f.speech) for f in items]
    text = [torch.from_numpy(f.text[:max_words] if max_words else f.text) for f in items]
    B = len(items)
    L, _, D = speech[0].shape
    Dt = text[0].shape[-1] if text[0].ndim == 2 else 0
    Ta = max(s.shape[1] for s in speech)
    Tw = max(t.shape[0] for t in text)
    audio = torch.zeros(B, L, Ta, D)
    audio_mask = torch.ones(B, Ta, dtype=torch.bool)
    words = torch.zeros(B, Tw, Dt)
    text_mask = torch.ones(B, Tw, dtype=torch.bool)
    for i, (s, t) in enumerate(zip(speech, text)):
        audio[i, :, : s.shape[1]] = s.float()
        audio_mask[i, : s.shape[1]] = False
        if t.shape[0]:
            words[i, : t.shape[0]] = t.float()
            text_mask[i, : t.shape[0]] = False
    return {
        "audio": audio.to(device),
        "audio_mask": audio_mask.to(device),
        "text": words.to(device),
        "text_mask": text_mask.to(device),
    }
