"""Features of one utterance, computed once and cached (DESIGN.md: "everything expensive happens once").

    audio (16 kHz) + words  ──encoders──▶  Features  ──▶  any model, any keep_ratio / top_p

A :class:`FeatureExtractor` owns the encoders (Whisper speech encoder, MiniLM word encoder) and
turns audio + words into :class:`Features`. Results are cached

* in memory (a small LRU, for the app's reruns), and
* on disk under ``cache_dir()/features/<extractor identity>/<key>.safetensors`` (tensors) with a
  JSON side file (words, times), so training epochs and the app share the work.

The cache key is a hash of the audio samples and the typed transcript (if any); face crops carry
the hash of the video they came from (``extra["faces_video"]``) and are redone for another video.
The folder is the encoders' identity, so a different encoder never reads another's
features. Files are written atomically and read without unpickling anything (safetensors + JSON).

Speech states and word states are always computed (every view shows the words). What only some
models read is computed on request (``extract(..., extras=("sentence", "faces"))``) and added to
the same cache file:

* ``"sentence"``: ``extra["sentence"]`` [Dt], the text encoder's CLS vector of the transcript (MESM).
* ``"faces"``: ``extra["faces"]`` [Nf, 64, 64, 3] uint8 RGB face crops at 5 fps and
  ``extra["face_times"]`` [Nf] seconds (Nf = 0 without a video); ``extra["face_boxes"]`` [Nf, 4].
* ``"sec_levels"``: MFSN's second speech encoder (``sec_encoder="hf:<local wav2vec2/data2vec
  dir>"``): its early, middle and last hidden states [3, T', D'] and ``extra["sec_times"]`` [T'].
  Its identity joins the cache folder's name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from . import limits
from .asr import Word
from .trace import AxisLabels
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


FACE_SIZE = 64
FACE_FPS = 5.0
# which Features.extra entries each on-request extra fills
EXTRAS: dict[str, tuple[str, ...]] = {
    "sentence": ("sentence",),
    "faces": ("faces", "face_times", "face_boxes", "faces_video"),
    "sec_levels": ("sec_levels", "sec_times"),
}


def content_key(audio: np.ndarray, transcript: str | None) -> str:
    """Hash of what determines the features: the samples and the typed transcript."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(audio, dtype=np.float32).tobytes())
    h.update(b"\0transcript\0")
    h.update((transcript or "").strip().encode("utf-8"))
    return h.hexdigest()[:24]


def video_bytes(video) -> bytes | None:
    """The bytes of a video given as a path, bytes or a file-like object (None for None)."""
    if video is None:
        return None
    if isinstance(video, (bytes, bytearray, memoryview)):
        return bytes(video)
    if isinstance(video, (str, os.PathLike)):
        return Path(video).read_bytes()
    if hasattr(video, "getvalue"):
        return bytes(video.getvalue())
    if hasattr(video, "read"):
        if hasattr(video, "seek"):
            video.seek(0)
        return video.read()
    raise TypeError(f"unsupported video source {type(video).__name__}")


#: Asked before an utterance's words are found: True lets the speech encoder run beside the ASR
#: (or the aligner) in a second thread. The app's server sets it to "no other analysis runs", when
#: the second core would idle; None (the default, e.g. training): one step after the other.
_overlap_when: Callable[[], bool] | None = None


def overlap_speech_with_words(when: Callable[[], bool] | None) -> None:
    """Set (or with None, clear) when the speech encoder may run beside the ASR (``_overlap_when``).
    Words and states are the same either way; a 60 s clip's features take the encoder's ~2 s less."""
    global _overlap_when
    _overlap_when = when


class FeatureExtractor:
    """Audio (+ optional transcript) → :class:`Features`, with a memory and a disk cache.

    Encoders load lazily on first use, so constructing one is free. ``speech_encoder`` and
    ``text_encoder`` name the encoders (``"whisper:tiny.en"``, ``"minilm"``, ``"minilm-isolated"``); their identities
    (which include a hash of the weights) name the cache folder.
    """

    def __init__(
        self,
        speech_encoder: str = "whisper:tiny.en",
        text_encoder: str = "minilm",
        device: str | torch.device | None = None,
        disk_cache: bool = True,
        memory_items: int = 16,
        sec_encoder: str | None = None,
    ) -> None:
        self.sec_encoder_name = sec_encoder
        self._sec = None
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
            if kind in ("minilm", "minilm-isolated"):  # isolated: each word encoded on its own
                from .encoders.text import load_text_encoder

                self._text = load_text_encoder(path or None, device=self.device, isolated=kind == "minilm-isolated")
            elif kind == "hf":
                from .encoders.hf import HFTextEncoder

                self._text = HFTextEncoder.from_dir(path).to(self.device).eval()
            else:
                raise ValueError(f"unknown text encoder {self.text_encoder_name!r}")
        return self._text

    @property
    def sec(self):
        """MFSN's second speech encoder (a local Hugging Face model directory), if one is set."""
        if self._sec is None:
            kind, _, path = (self.sec_encoder_name or "").partition(":")
            if kind != "hf" or not path:
                raise ValueError(f"the second speech encoder must be 'hf:<local dir>'; got {self.sec_encoder_name!r}")
            from .encoders.hf import HFSpeechEncoder

            self._sec = HFSpeechEncoder.from_dir(path).to(self.device).eval()
        return self._sec

    @property
    def identity(self) -> str:
        """Names the cache folder: the encoders' identities (weights hashes included)."""
        raw = f"{self.speech.identity}|{self.text_model.identity}"
        if self.sec_encoder_name:
            raw += f"|{self.sec.identity}"
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
        video=None,
        extras: tuple[str, ...] | list[str] = (),
        stop_if_asked: Callable[[], None] | None = None,
        report: dict[str, Any] | None = None,
    ) -> Features:
        """Features for one utterance (cached). ``words`` skips ASR/alignment when given.

        ``video`` (path, bytes or file-like) is read only for the ``"faces"`` extra; a video in
        which no face is found raises InputError. ``extras`` names on-request entries (EXTRAS).
        ``stop_if_asked()`` is called between the steps (during ASR, after it, after the speech
        encoder, before each extra); it raises to stop an analysis nobody waits for any more.
        ``report``, when given, gets ``"reused"``: True when the words and speech states (ASR
        and the speech encoder, the costly part) came from the memory or disk cache; extras may
        still have been computed.
        """
        stop = stop_if_asked or (lambda: None)
        report = {} if report is None else report
        report["reused"] = True
        unknown = sorted(set(extras) - set(EXTRAS))
        if unknown:
            raise ValueError(f"unknown extras {unknown}; known: {sorted(EXTRAS)}")
        vbytes = video_bytes(video) if "faces" in extras else None
        vkey = hashlib.sha256(vbytes).hexdigest()[:24] if vbytes else ""
        key = content_key(audio, transcript if words is None else "|".join(w.text for w in words))
        with self._lock:
            hit = self._memory.get(key)
            if hit is not None and all(_has_extra(hit, e, vkey) for e in extras):
                self._memory.move_to_end(key)
                return hit
        feats = hit
        if feats is None and self.disk_cache:
            feats = self._read_disk(key)
        dirty = False
        if feats is None:
            feats = self._compute(key, audio, transcript, words, stop)
            dirty = True
        report["reused"] = not dirty
        for name in extras:
            if not _has_extra(feats, name, vkey):
                stop()
                feats.extra.update(self._compute_extra(name, feats, vbytes, vkey))
                dirty = True
        if dirty and self.disk_cache:
            self._write_disk(feats)
        with self._lock:
            self._memory[key] = feats
            while len(self._memory) > self._memory_items:
                self._memory.popitem(last=False)
        return feats

    def _compute(
        self, key: str, audio: np.ndarray, transcript: str | None, words: list[Word] | None,
        stop: Callable[[], None] = lambda: None,
    ) -> Features:
        speech = None
        if words is None:
            words, speech = self._words_and_speech(audio, transcript, stop)
        source = "typed" if (transcript and transcript.strip()) else "asr"
        stop()
        with torch.no_grad():
            hidden, frame_times = speech if speech is not None else self.speech.encode(audio)
            stop()
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

    def _words_and_speech(self, audio: np.ndarray, transcript: str | None, stop: Callable[[], None]):
        """The words (ASR or alignment), and the speech states when they were computed beside them
        (``overlap_speech_with_words``: a second thread runs the speech encoder meanwhile), else None."""
        from .asr import words_for

        overlap = _overlap_when
        if overlap is None or not overlap():
            return words_for(audio, transcript, stop_if_asked=stop), None

        def encode():
            with torch.no_grad():
                return self.speech.encode(audio)

        pool = ThreadPoolExecutor(1, thread_name_prefix="ser-speech-encoder", initializer=limits.apply_math_threads)
        try:
            speech = pool.submit(encode)
            words = words_for(audio, transcript, stop_if_asked=stop)
            return words, speech.result()
        finally:  # a stopped or failed run does not wait for the encoder (it ends on its own)
            pool.shutdown(wait=False, cancel_futures=True)

    def _compute_extra(self, name: str, feats: Features, vbytes: bytes | None, vkey: str) -> dict[str, np.ndarray]:
        if name == "sentence":
            with torch.no_grad():
                vec = self.text_model.sentence_embedding([w.text for w in feats.words], pooling="cls")
            return {"sentence": vec.detach().float().cpu().numpy().astype(np.float32)}
        if name == "faces":
            source = np.frombuffer(vkey.encode("ascii"), dtype=np.uint8).copy()
            if vbytes is None:
                return {"faces": np.zeros((0, FACE_SIZE, FACE_SIZE, 3), np.uint8),
                        "face_times": np.zeros(0, np.float32), "face_boxes": np.zeros((0, 4), np.int32),
                        "faces_video": source}
            from .encoders.faces import extract_faces

            track = extract_faces(vbytes, fps=FACE_FPS, size=FACE_SIZE)
            return {"faces": track.crops.astype(np.uint8), "face_times": track.times.astype(np.float32),
                    "face_boxes": track.boxes.astype(np.int32), "faces_video": source}
        if name == "sec_levels":
            with torch.no_grad():
                hidden, times = self.sec.encode(feats.audio)
            last = hidden.shape[0] - 1
            levels = hidden[[min(1, last), max(1, last // 2), last]]  # early, middle, last
            return {"sec_levels": levels.float().cpu().numpy().astype(np.float16),
                    "sec_times": np.asarray(times, dtype=np.float32)}
        raise ValueError(f"unknown extra {name!r}")

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
        atomic_write(meta_path, json.dumps(meta).encode("utf-8"))
        fd, tmp = tempfile.mkstemp(dir=tensors_path.parent, suffix=".tmp")
        os.close(fd)
        try:
            save_file(arrays, tmp)
            os.replace(tmp, tensors_path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _has_extra(feats: Features, name: str, video_key: str = "") -> bool:
    if not all(k in feats.extra for k in EXTRAS[name]):
        return False
    if name == "faces":  # crops of this very video (or none for no video)
        return bytes(feats.extra["faces_video"]).decode("ascii", "replace") == video_key
    return True


def atomic_write(path: Path, data: bytes) -> None:
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


def pooled_speech(feats: Features, factor: int) -> Features:
    """``feats`` with its speech frames averaged in consecutive groups of ``factor`` (the last
    group may be shorter): every layer's states, and the frame times (each group's mean). A
    model that reads 25 frames a second instead of Whisper's 50 sees half the positions.
    factor 1 returns ``feats`` itself."""
    if factor <= 1:
        return feats
    T = feats.speech.shape[1]
    starts = np.arange(0, T, factor)
    counts = np.diff(np.append(starts, T)).astype(np.float32)  # factor, the last group maybe fewer
    pooled = np.add.reduceat(np.asarray(feats.speech, dtype=np.float32), starts, axis=1) / counts[None, :, None]
    times = np.add.reduceat(np.asarray(feats.frame_times, dtype=np.float64), starts) / counts
    return dataclasses.replace(feats, speech=pooled.astype(feats.speech.dtype), frame_times=times.astype(np.float32))


def pooled_axis(labels: AxisLabels, factor: int) -> AxisLabels:
    """Frame labels for groups of ``factor`` frames (as :func:`pooled_speech` makes them): each
    group spans its first frame's start to its last frame's end."""
    if factor <= 1:
        return labels
    start, end = np.asarray(labels.start), np.asarray(labels.end)
    first = np.arange(0, len(start), factor)
    last = np.minimum(first + factor - 1, len(start) - 1)
    return AxisLabels(kind=labels.kind, names=[f"{(start[i] + end[j]) / 2:.2f} s" for i, j in zip(first, last)],
                      start=start[first], end=end[last])


def speech_text_axis_labels(feats: Features) -> dict[str, AxisLabels]:
    """The labels that index each modality's positions: words with times, frames with times."""
    words = AxisLabels(
        kind="words",
        names=[w.text for w in feats.words],
        start=np.array([w.start for w in feats.words], dtype=np.float32),
        end=np.array([w.end for w in feats.words], dtype=np.float32),
    )
    half = 0.5 / 50.0 if len(feats.frame_times) < 2 else 0.5 * float(np.diff(feats.frame_times[:2])[0])
    frames = AxisLabels(
        kind="frames",
        names=[f"{t:.2f} s" for t in feats.frame_times],
        start=feats.frame_times - half,
        end=feats.frame_times + half,
    )
    return {"audio": frames, "text": words}
