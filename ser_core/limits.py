"""The app's input and load limits, in one place.

Every value has a default here and can be changed by an environment variable set before
``streamlit run`` (e.g. ``SER_MAX_SECONDS=20 streamlit run app.py`` for a busy classroom):

=========================  ===========================================  ==========================
variable                   what it limits                               default
=========================  ===========================================  ==========================
``SER_MAX_SECONDS``        seconds of audio in one clip                 60
``SER_MAX_BYTES``          bytes of one upload or recording             50 MiB
``SER_MAX_ANALYSES``       analyses that run at the same time           one per CPU core (1-8)
``SER_MAX_EXPLAIN_SECONDS``  seconds of a clip the deletion test and     20
                           the attributions run on
=========================  ===========================================  ==========================

``check_upload(data)`` applies the first two to raw bytes before anything decodes them: the size
from the length alone, the duration from the file header where the format states one. The
decoders in ``ser_core.audio`` read the same limits and check again while decoding.
"""

from __future__ import annotations

import io
import math
import os
import threading
from typing import Callable

from .errors import InputError

MAX_SECONDS = 60.0
MAX_BYTES = 50 * 1024 * 1024
#: The deletion test re-runs the model ~50 times and Integrated Gradients runs it 16 times with
#: gradients, at a cost that grows with the square of the length. Measured on 2 cores (one thread):
#: Integrated Gradients alone 3-4 s for 10 s of speech, 9 s for 20 s, 136 s and 7 GB for 60 s
#: (attention rollout 12 s for 60 s).
MAX_EXPLAIN_SECONDS = 20.0


def _from_env(name: str, default: float, unit: str) -> float:
    """The number in environment variable ``name``, or ``default`` when it is unset or empty."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise InputError(f"{name} is set to {raw!r}, which is not a number{unit}.") from None


def _seconds(value: float | None, env: str, default: float, what: str) -> float:
    """``value``, else the number in ``env``, else ``default``: a positive number of seconds."""
    if value is None:
        value = _from_env(env, default, " of seconds")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"The {what} must be a positive number of seconds, not {value}.")
    return value


def max_seconds(value: float | None = None) -> float:
    """Seconds of audio one clip may hold: ``value``, else ``SER_MAX_SECONDS``, else 60."""
    return _seconds(value, "SER_MAX_SECONDS", MAX_SECONDS, "duration limit")


def max_bytes(value: int | None = None) -> int:
    """Bytes one upload may hold: ``value``, else ``SER_MAX_BYTES``, else 50 MiB."""
    if value is None:
        value = _from_env("SER_MAX_BYTES", MAX_BYTES, "")
    value = int(value)
    if value <= 0:
        raise InputError(f"The size limit must be a positive number of bytes, not {value}.")
    return value


def max_explain_seconds(value: float | None = None) -> float:
    """Seconds of a clip the deletion test and the attributions may run on: ``value``,
    else ``SER_MAX_EXPLAIN_SECONDS``, else 20."""
    return _seconds(value, "SER_MAX_EXPLAIN_SECONDS", MAX_EXPLAIN_SECONDS, "explanation length limit")


def too_long_to_explain(seconds: float) -> str | None:
    """Why a clip of ``seconds`` is too long for the deletion test and the attributions, in plain
    words; None when it is not."""
    limit = max_explain_seconds()
    if seconds <= limit + 1e-6:
        return None
    return (f"The deletion test and the attributions run on clips up to {limit:g} s; this one is "
            f"{seconds:.1f} s. They re-run the model dozens of times, and each run costs more than the "
            "length suggests (a 60 s clip would keep the server busy for minutes). Analyse a shorter "
            "part of the recording to see them.")


def check_explainable(seconds: float) -> None:
    """InputError (``too_long_to_explain``'s words) when a clip is too long to explain."""
    refusal = too_long_to_explain(seconds)
    if refusal:
        raise InputError(refusal)


def default_max_analyses() -> int:
    """One per CPU core (at most 8): in the server each analysis uses one thread
    (``ui.page_setup``), which stays fast on a busy machine where several threads of one
    analysis would wait for each other."""
    return max(1, min(8, os.cpu_count() or 1))


def max_analyses(value: int | None = None) -> int:
    """Analyses that may run at once: ``value``, else ``SER_MAX_ANALYSES``, else one per core."""
    if value is None:
        value = _from_env("SER_MAX_ANALYSES", default_max_analyses(), "")
    if not math.isfinite(value) or int(value) < 1:
        raise InputError(f"At least one analysis must be allowed to run at a time, not {value}.")
    return int(value)


_math_threads: int | Callable[[], int] | None = None  # the server's policy (None: the libraries' default)
_applied = threading.local()


def set_math_threads(n: int | Callable[[], int] | None) -> None:
    """Every thread that runs a model or an encoder from now on uses ``n`` math threads, or
    ``n()`` asked at each model run (the server: all cores while one analysis runs alone, one
    each when several run, see ``ui``); applied in the calling thread at once."""
    global _math_threads
    _math_threads = n if n is None or callable(n) else max(1, int(n))
    apply_math_threads()


def apply_math_threads() -> None:
    """Apply :func:`set_math_threads`'s number in the calling thread.

    ``torch.set_num_threads`` reaches only the thread that calls it: OpenMP's and MKL's thread
    counts are per thread, although ``torch.get_num_threads()`` reports the last value set
    anywhere. Measured (2 cores): after ``set_num_threads(1)`` in the main thread, a 1200×1200
    matrix product in a thread started later still ran on two OS threads (CPU time 66 + 63
    ticks), softmax on one; after the same call in that thread, on one (134 ticks). Streamlit
    runs every rerun in a new thread, so ``Analyzer`` calls this before each model run."""
    policy = _math_threads
    if policy is None:
        return
    n = max(1, int(policy() if callable(policy) else policy))
    if getattr(_applied, "n", None) != n:
        import torch

        torch.set_num_threads(n)
        _applied.n = n


def format_bytes(n: int) -> str:
    """``n`` bytes in plain words (kB / MB)."""
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def too_long(seconds: float, limit: float, at_least: bool = False, name: str | None = None) -> InputError:
    """The message for a clip over the duration limit (``name``: an uploaded file's name)."""
    how = "more than " if at_least else ""
    what, fix = ((f"The file {name!r}", "for example with Audacity") if name
                 else ("The recording", "or record again"))
    return InputError(
        f"{what} is {how}{seconds:.1f} s long; the limit is {limit:g} s. "
        f"Cut it to {limit:g} s or less ({fix}) and try again."
    )


def too_big(size: int, limit: int, name: str | None = None) -> InputError:
    """The message for an upload over the size limit."""
    what = f"The file {name!r}" if name else "The recording"
    return InputError(
        f"{what} is {format_bytes(size)}; the limit is {format_bytes(limit)}. "
        "Trim it or save it compressed (for example as MP3 or OGG), then try again."
    )


def header_seconds(source: bytes | str | os.PathLike) -> float | None:
    """The duration a file's header states (raw bytes or a path), without decoding any audio;
    None when the header states none or the data is not audio."""
    import soundfile as sf

    def handle():  # a fresh handle for each reader
        return io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else str(source)

    try:
        info = sf.info(handle())
        if info.frames > 0 and info.samplerate > 0:
            return info.frames / info.samplerate
    except Exception:  # not a format libsndfile reads: ask FFmpeg's demuxer
        pass
    try:
        import av

        with av.open(handle(), mode="r") as container:
            stream = container.streams.audio[0] if container.streams.audio else None
            if stream is not None and stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            if stream is not None and container.duration is not None:
                return container.duration / 1_000_000  # AV_TIME_BASE
    except Exception:  # undecodable: the decoder says so later, in the user's words
        pass
    return None


def check_upload(data: bytes, seconds_of: Callable[[bytes], float | None] | None = None,
                 name: str | None = None) -> None:
    """Refuse ``data`` (raw upload bytes) over the limits, before anything decodes it.

    The size is checked first, from the length alone (``seconds_of`` is then never called);
    then the duration the header states (``seconds_of``, default :func:`header_seconds`).
    Raises InputError with a message for the user (``name``: the uploaded file's; None: a recording)."""
    limit = max_bytes()
    if len(data) > limit:
        raise too_big(len(data), limit, name)
    seconds = (seconds_of or header_seconds)(data)
    if seconds is not None and seconds > max_seconds():
        raise too_long(seconds, max_seconds(), name=name)


def upload_hint() -> str:
    """The limits in a few words, for an upload box's label."""
    return f"up to {max_seconds():g} s and {format_bytes(max_bytes())}"
