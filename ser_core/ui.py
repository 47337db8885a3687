"""Streamlit building blocks shared by the pages (widgets and session state only).

Pages stay thin: they pick inputs with these helpers, call ``ser_core.pipeline`` and draw with
``ser_core.viz``. Nothing here computes features or runs a model itself.
"""

from __future__ import annotations

import atexit
import csv
import io
import logging
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import streamlit as st

from . import ast_lock, limits, ui_corpus, ui_model_notes
from .analysis_queue import AnalysisQueue, Cancelled, Place
from .checkpoint import DEFAULT_CHECKPOINT_NAME, list_all_checkpoints, read_meta
from .data.base import emotion_word
from .errors import InputError
from .kept import first_sparse_record
from .ui_trace import log_mel_for_display, mel_chunks_for_display, record_caption, show_model_extras  # noqa: F401
from .paths import SAMPLES_DIR

log = logging.getLogger("ser_core.ui")
T = TypeVar("T")
# before any page starts a background thread: Streamlit parses every page's script while those
# threads may parse too, which Python 3.11.7 cannot do safely (ser_core/ast_lock.py)
ast_lock.install()

# Pages call these as ui.<name>; they live in ui_corpus (the corpus picker) and ui_model_notes
# (what a model was trained on, how it does, how faithful its kept keys are).
corpus_picker = ui_corpus.corpus_picker
faithfulness_note = ui_model_notes.faithfulness_note
real_voices_section = ui_model_notes.real_voices_section
training_summary = ui_model_notes.training_summary


RECORDING_NAME = "recording.wav"  # a Clip recorded with the microphone (not an uploaded file)


@dataclass(frozen=True)
class Clip:
    """Audio chosen by the user: a display name, the raw bytes and an optional transcript/video."""

    name: str
    data: bytes
    transcript: str | None = None
    video: Path | bytes | None = None
    label: str | None = None
    origin: str | None = None  # where it came from, when another page opened it (said on screen)


#: The app's pages in the sidebar's order: (name, script relative to home.py, icon).
PAGES: tuple[tuple[str, str, str], ...] = (
    ("Home", "home.py", "🎙️"),
    ("Classroom", "pages/0_Classroom.py", "🎓"),
    ("Analyze", "pages/1_Analyze.py", "🔍"),
    ("Compare k", "pages/2_Compare_k.py", "⚖️"),
    ("Evaluate", "pages/3_Evaluate.py", "📊"),
    ("Train", "pages/4_Train.py", "🏋️"),
    ("Models", "pages/5_Models.py", "🧩"),
    ("Sparse masks", "pages/6_Sparse_masks.py", "🎭"),
)
#: The home page: the main script of the Streamlit app that ``app.py`` serves.
APP_SCRIPT = Path(__file__).resolve().parent.parent / "home.py"


def page_setup(name: str) -> None:
    """The page's title and icon (``st.set_page_config``), then the sidebar's links to every page,
    the first one called "Home" (Streamlit's own list would call it "app", after the file; it is
    hidden in ``.streamlit/config.toml``). The links are drawn only when the whole app runs (a
    single page run alone, e.g. by ``streamlit.testing``, has no other pages to link to). The
    server has started loading the default model in the background (``warm_up``, from
    ``app.py``'s lifespan); a server started some other way starts it with its first page."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    icon = next(page_icon for page, _, page_icon in PAGES if page == name)
    title = "SER attention explorer" if name == "Home" else f"{name} · SER attention explorer"
    st.set_page_config(page_title=title, page_icon=icon, layout="wide")
    ctx = get_script_run_ctx(suppress_warning=True)
    if ctx is None or Path(ctx.main_script_path).resolve() != APP_SCRIPT:
        return
    if st.runtime.exists():  # a real server (not streamlit.testing): load the models meanwhile
        start_server_work()
    with st.sidebar:
        for page, script, _ in PAGES:
            st.page_link(script, label=page)
        st.divider()


@st.cache_resource(show_spinner="Loading the model and encoders…")
def get_analyzer(checkpoint: str):
    """One Analyzer per checkpoint, shared by every session of this server."""
    from .pipeline import Analyzer

    return Analyzer(checkpoint)


def default_checkpoint() -> str | None:
    """The default model's checkpoint as the pickers name it (a trained one of the same name
    first), None when there is none."""
    return next((str(p) for p in list_all_checkpoints() if p.name == DEFAULT_CHECKPOINT_NAME), None)


def warm_up(yield_for_cards: bool = False) -> float:
    """Load the default model, its encoders and Whisper, analyse the first sample clip with
    Whisper's words and attribute its prediction: what the first analysis (and the first deletion
    test) of a visitor would otherwise wait for; then the
    Models page's cards, each only while no analysis runs or waits. Returns the seconds it took
    (0 when there is no default checkpoint or sample).

    ``yield_for_cards`` (the server's own warm-up thread): the cards are made at the lowest CPU
    priority (:func:`lower_this_thread`), since one card's FLOP count can take seconds and an
    analysis that starts meanwhile would otherwise share the cores with it (a 60 s clip's
    analysis on the server: 10.0–10.3 s beside the cards, 9.4 s with them lowered)."""
    started = time.perf_counter()
    checkpoint, samples = default_checkpoint(), sample_clips()
    if checkpoint is None or not samples:
        return 0.0
    from .asr import transcribe
    from .audio import load_audio

    analyzer = get_analyzer(checkpoint)
    audio = load_audio((SAMPLES_DIR / samples[0]["path"]).read_bytes())
    analyzer.extractor.speech, analyzer.extractor.text_model  # load (the features may be on disk)
    line = analysis_queue()
    _while_analyses_run(line)  # a visitor's analysis loads what it needs itself
    transcribe(audio)  # Whisper's decoder loads and runs once
    _while_analyses_run(line)
    analysis = analyzer.analyze(audio)
    # one Integrated Gradients run: the first "Is this faithful?" on the server would otherwise
    # import Captum and run the model's first backward pass (on the page: the deletion test of a
    # 10 s clip, 1.1 s of its 3 s measured with bench/bench_page.py)
    _while_analyses_run(line)
    try:
        analysis.attribution("integrated_gradients")
    except InputError:
        pass  # a model or clip explanations do not accept: the page says why when asked
    except Exception:  # the cards below are still made; the page says what is wrong when asked
        log.exception("warming up the attributions failed")
    if yield_for_cards:
        lower_this_thread()
    for path in list_all_checkpoints():  # the Models page's cards (parameters, FLOPs: ~0.4 s each)
        _while_analyses_run(line)
        try:
            model_card_of(path)
        except InputError:
            pass  # the Models page says what is wrong with it
    return time.perf_counter() - started


def lower_this_thread(niceness: int = 19) -> None:
    """Give the calling thread alone the lowest CPU priority (on Linux a thread is a task of its
    own with its own nice value; elsewhere nothing changes). A thread cannot raise it again, so
    only a thread made for background work calls this."""
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
        except OSError:
            pass


#: Set when the process exits: the background warm-up stops at its next step (see
#: ``_warm_up_in_background``).
_WARM_UP_STOP = threading.Event()


def _while_analyses_run(line) -> None:
    """Wait while a visitor's analysis runs or waits: the warm-up never takes cores from one.
    Raises Cancelled once the process is exiting (the warm-up stops between its steps)."""
    while sum(line.counts()) and not _WARM_UP_STOP.is_set():
        time.sleep(0.2)
    if _WARM_UP_STOP.is_set():
        raise Cancelled()


@st.cache_data(show_spinner="Counting parameters and FLOPs…", max_entries=32)
def _model_card(path: str, mtime: float):
    from .model_card import model_card

    return model_card(path)


def model_card_of(path: str | Path):
    """``ser_core.model_card.model_card(path)``, once per file version and server (the warm-up
    makes them all when the server starts, so the Models page opens without counting FLOPs)."""
    return _model_card(str(path), Path(path).stat().st_mtime)


def start_server_work() -> None:
    """One thread per analysis, and the models' warm-up started in the background: once per
    server (both are cached resources), whoever calls first (``app.py``'s lifespan when the
    server starts, else the first page)."""
    from .server_start import quiet_background_threads

    quiet_background_threads()
    _one_thread_per_analysis()
    _warm_up_in_background()


@st.cache_resource(show_spinner=False)
def _one_thread_per_analysis() -> int:
    """In the server, ``limits.max_analyses()`` (one per core) analyses run at once, and each
    model run uses one math thread while several analyses run, every core while one runs alone
    (a visitor alone on a laptop gets both cores for the sliders and explanations; a class
    sharing the server gets one each). Measured with bench/bench_load.py (12 sessions and a
    training job on 2 cores): p95 from ≈ 96 s (one analysis at a time, two threads each) to
    ≈ 59 s. Returns the number at once."""
    import os

    from . import asr, features

    slots = limits.max_analyses()
    line = analysis_queue()
    cores = os.cpu_count() or 1

    def alone() -> bool:  # at most one analysis running
        return line.counts()[0] <= 1

    # in every thread that runs a model (limits.apply_math_threads: each rerun's thread is new)
    limits.set_math_threads(lambda: cores if alone() else 1)
    asr.use_threads(1, slots)
    # An analysis running alone has a second core idle: its speech encoder runs beside Whisper's
    # decoder there (a 60 s clip's features ~2 s sooner; the decoder gains nothing from 2 threads).
    features.overlap_speech_with_words(alone)
    return slots


@st.cache_resource(show_spinner=False)
def _warm_up_in_background() -> threading.Thread:
    """``warm_up`` once per server, in a thread of its own: the page that starts it is not held up."""

    def run() -> None:
        try:
            log.info("models warmed up in %.1f s", warm_up(yield_for_cards=True))
        except Cancelled:
            pass  # the process is exiting
        except Exception:  # a broken checkpoint says so when a visitor opens it; never here
            log.exception("warming up the models failed")

    thread = threading.Thread(target=run, name="ser-warm-up", daemon=True)
    thread.start()
    # When the process exits, the warm-up stops at its next step and is waited for: a daemon
    # thread killed inside a backward pass aborts the interpreter ("terminate called without an
    # active exception", exit status 134), seen when a test process ended during the warm-up.
    atexit.register(_stop_warm_up, thread)
    return thread


def _stop_warm_up(thread: threading.Thread, timeout: float = 60.0) -> None:
    _WARM_UP_STOP.set()
    thread.join(timeout)


@st.cache_resource(show_spinner=False)
def analysis_queue() -> AnalysisQueue:
    """The one line of analyses shared by every session of this server (``ser_core.limits``
    sets how many run at once)."""
    return AnalysisQueue(slots=limits.max_analyses(), is_active=_session_is_active)


def session_id() -> str | None:
    """This browser session's id (None outside a Streamlit script run)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx(suppress_warning=True)
    return ctx.session_id if ctx is not None else None


def stop_if_tab_closed() -> None:
    """Raise Cancelled when this script run's browser tab has gone away: long work that runs in
    the page itself (not in the line of analyses) calls it between its steps, so nothing keeps
    a core busy for a page nobody is looking at."""
    session = session_id()
    if session is not None and not _session_is_active(session):
        raise Cancelled()


def _session_is_active(session_id: str) -> bool:
    """Whether the session's browser tab is still connected (True without a server runtime,
    e.g. under streamlit.testing)."""
    if not st.runtime.exists():
        return True
    return st.runtime.get_instance().is_active_session(session_id)


def run_queued(work: Callable[[Callable[[], bool]], T], status_box=None, spinner: str | None = None) -> T:
    """``work(should_stop)`` when this session's turn comes in the shared line of analyses.

    While it waits, ``status_box`` (default: a new ``st.empty()``) says how many analyses go
    first and about how long that takes; the box is cleared when the work starts, and only then
    does ``spinner`` (a message, optional) turn: a still "Waiting: 2 ahead of you", then a moving
    "Transcribing…" when it is one's own turn. (It also spares the CPU: a turning spinner cost a
    software-drawn browser tab about a fifth of a core, so twelve waiting tabs on the server's
    own machine took more than its two cores.) A second request from the same session replaces
    the first; a closed tab leaves the line, and its running work stops at its next step
    (``should_stop`` turns True). Outside a script run (no session) the work runs at once."""

    def spin(should_stop: Callable[[], bool]) -> T:
        if spinner is None:
            return work(should_stop)
        with st.spinner(spinner):
            return work(should_stop)

    session = session_id()
    if session is None:
        return spin(lambda: False)
    box = status_box if status_box is not None else st.empty()
    shown: list[str] = []

    def show(place: Place) -> None:
        text = place.message() + " Other visitors' analyses run first; yours starts by itself. Keep this tab open."
        if not shown or shown[-1] != text:  # a new message only when the words change
            box.info(text, icon="⏳")
            shown.append(text)

    def start(should_stop: Callable[[], bool]) -> T:
        if shown:
            box.empty()
        return spin(should_stop)

    return analysis_queue().run(session, start, on_wait=show)


def analyze_queued(checkpoint: str, data: bytes, transcript: str | None = None, video=None, status_box=None,
                   name: str | None = None, spinner: str | None = "Transcribing, encoding and running the model…"):
    """``get_analyzer(checkpoint).analyze(...)`` in the shared line of analyses. The upload's
    size and stated duration are checked first (``limits.check_upload``): an oversized clip is
    refused before it waits or is decoded. ``name``: an uploaded file's name, so that messages
    say "the file 'x.wav'" (None or :data:`RECORDING_NAME`: a microphone recording)."""
    file_name = name if name and name != RECORDING_NAME else None
    limits.check_upload(data, name=file_name)
    audio = data
    if file_name:
        audio = io.BytesIO(data)
        audio.name = file_name
    return run_queued(
        lambda should_stop: get_analyzer(checkpoint).analyze(audio, transcript=transcript, video=video,
                                                             should_stop=should_stop),
        status_box, spinner)


@st.cache_data(show_spinner=False, max_entries=32)
def _checkpoint_meta(path: str, mtime: float) -> dict:
    """A checkpoint's meta, read once per file version (pages ask for it on every rerun)."""
    return read_meta(path)


def checkpoint_meta(path: str) -> dict:
    return _checkpoint_meta(str(path), Path(path).stat().st_mtime)


def checkpoint_picker(models: tuple[str, ...] | None = None,
                      default: str = DEFAULT_CHECKPOINT_NAME) -> str | None:
    """Sidebar: choose a checkpoint (trained here first, then the shipped ones; only of
    ``models`` when given; ``default`` first selected when present); shows what it recognises,
    where it runs and how it does on voices it never heard."""
    paths = list_all_checkpoints()
    if models:
        def model_of(path):
            try:
                return checkpoint_meta(path).get("model")
            except InputError:
                return None

        paths = [p for p in paths if model_of(p) in models]
    if not paths:
        what = f"{' or '.join(models)} model" if models else "model"
        st.sidebar.error(f"No trained {what} was found. A teacher can train one on the Train page.")
        return None
    by_name = {}
    for p in paths:  # a trained model of the same name as a shipped one is listed first and wins
        by_name.setdefault(p.name, p)
    names = list(by_name)
    default = names.index(default) if default in names else 0
    chosen = st.sidebar.selectbox("Model checkpoint", names, index=default,
                                  key="checkpoint" if not models else f"checkpoint_{'_'.join(models)}")
    try:
        meta = checkpoint_meta(by_name[chosen])
    except InputError as exc:
        st.sidebar.error(str(exc))
        return None
    from .model_card import held_out_scores

    by = held_out_scores(meta)
    import torch

    device = "GPU (" + torch.cuda.get_device_name(0) + ")" if torch.cuda.is_available() else "CPU"
    names = {"demo": "synthetic voices", "demo-calm": "calm synthetic voices (the words decide)"}
    scores = " · ".join(f"{names.get(k, k.upper() + ' voices')} {100 * v['ua']:.0f} %"
                        for k, v in by.items() if "ua" in v)
    st.sidebar.caption(
        f"**{meta.get('model')}** · emotions: {', '.join(label_name(l) for l in meta['config']['labels'])} "
        f"· runs on {device}" + (f" · right on unseen speakers (mean over emotions): {scores}" if scores else "")
    )
    return str(by_name[chosen])


#: The sample every page offers first: a clear emotion word said in the matching voice ("That
#: exam left me gloomy last night", sad), one the default model gets right with its transcript
#: and with Whisper's words alike (tests/test_app.py checks it still does).
FIRST_SAMPLE = "wav/demo_00055.wav"


def sample_clips() -> list[dict[str, str]]:
    """Rows of samples/manifest.csv (the committed example clips), :data:`FIRST_SAMPLE` first."""
    manifest = SAMPLES_DIR / "manifest.csv"
    if not manifest.exists():
        return []
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    return sorted(rows, key=lambda row: row["path"] != FIRST_SAMPLE)  # stable: the rest keep their order


VIDEO_TYPES = ["mp4", "webm", "mov", "mkv", "avi"]


def model_sees_faces(model_name: str | None) -> bool:
    """Whether a registered model reads face crops (then pages offer a video)."""
    from .models.base import model_class, model_inputs

    try:
        return "faces" in model_inputs(model_class(model_name))
    except InputError:
        return False


def clip_picker(key: str = "clip", video: bool = False) -> Clip | None:
    """Sample / upload / record; returns the chosen clip (or None until one is chosen).

    ``video=True`` (models that see faces) adds an optional video upload; an uploaded video
    file is used for both its sound and its faces.
    """
    samples = sample_clips()
    source = st.radio(
        "Audio", ["Sample clip", "Upload a file", "Record"], horizontal=True, key=f"{key}_source"
    )
    if source == "Sample clip":
        if not samples:
            st.info("No sample clips found in samples/.")
            return None
        labels = [_sample_title(r) for r in samples]
        i = st.selectbox("Sample", range(len(samples)), format_func=lambda j: labels[j], key=f"{key}_sample")
        row = samples[i]
        path = SAMPLES_DIR / row["path"]
        video = SAMPLES_DIR / row["video"] if row.get("video") else None
        return Clip(path.name, path.read_bytes(), row.get("transcript") or None, video, row.get("label"))
    if source == "Upload a file":
        up = st.file_uploader(
            f"Speech (wav, flac, ogg, mp3, m4a, webm, mp4; {limits.upload_hint()})",
            type=["wav", "flac", "ogg", "mp3", "m4a", "webm", "mp4", "mov", "mkv"],
            key=f"{key}_upload",
        )
        face_video = None
        if video:
            vid = st.file_uploader("Video of the speaker's face (optional; mp4, webm, mov, mkv, avi)",
                                   type=VIDEO_TYPES, key=f"{key}_video")
            if vid is not None:
                face_video = vid.getvalue()
            elif up is not None and up.name.rsplit(".", 1)[-1].lower() in VIDEO_TYPES:
                face_video = up.getvalue()
        return Clip(up.name, up.getvalue(), video=face_video) if up is not None else None
    rec = st.audio_input("Record a sentence", key=f"{key}_record")
    return Clip(RECORDING_NAME, rec.getvalue()) if rec is not None else None


def requested_clip() -> Clip | None:
    """A clip another page asked this one to open (``st.session_state["analyze_request"]``:
    {"audio": path, "transcript", "video", "name", "label", "augment"}), taken once; with
    "augment" (an augmented copy the Evaluate page scored), that copy of the recording."""
    request = st.session_state.pop("analyze_request", None)
    if not request:
        return None
    audio = Path(request["audio"])
    video = Path(request["video"]) if request.get("video") else None
    try:
        data = audio.read_bytes()
        if request.get("augment"):
            from .augment import augmented_copy_wav

            data = augmented_copy_wav(data, request["augment"])
    except OSError as exc:
        st.error(f"Could not open {audio}: {exc.strerror or exc}.")
        return None
    except InputError as exc:
        st.error(str(exc))
        return None
    origin = "opened from Evaluate" + (": an augmented copy (another room and microphone)"
                                       if request.get("augment") else "")
    return Clip(request.get("name") or audio.name, data, request.get("transcript") or None,
                video if video is not None and video.exists() else None, request.get("label"), origin)


def words_in_context(analysis) -> bool:
    """Whether the analysis's word features were encoded in context (every word's state carries
    the sentence: see ``encoders/text.py``), not each word on its own."""
    analyzer = analysis.analyzer
    return analyzer is None or not getattr(analyzer.extractor.text_model, "isolated", False)


def sparsity_knob(analysis, key: str) -> dict:
    """The model's inference knob as a slider (keep_ratio for key-sparse layers, top_p for
    nucleus sampling); returns the rerun arguments ({} for models without one, and at the
    model's own setting), the value to the slider's 2 decimals."""
    from .knob_ahead import HIGH, LOW, STEP, knob_setting

    setting = knob_setting(analysis)
    if setting is None:
        return {}
    name, default = setting
    label, help_text = {
        "keep_ratio": ("keep_ratio (share of keys each key-sparse layer keeps)",
                       "1.0 is vanilla attention. Changing it re-runs only the model."),
        "top_p": ("top_p (attention mass the nucleus keeps)",
                  "1.0 keeps every point (dense). Changing it re-runs only the model."),
    }[name]
    value = round(st.slider(label, LOW, HIGH, default, STEP, key=f"{key}_{name}", help=help_text), 2)
    return {} if abs(value - default) < 1e-9 else {name: value}


def _sample_title(row: dict[str, str]) -> str:
    words = row.get("transcript", "")
    text = words if len(words) < 48 else words[:45] + "…"
    return f"{label_name(row.get('label', '?'))} voice · “{text}”" + (" · with face video" if row.get("video") else "")


def show_error(exc: BaseException) -> None:
    """A friendly message: InputError as-is, a stopped analysis as a note; anything else
    summarised, details folded away."""
    if isinstance(exc, InputError):
        st.error(str(exc))
        return
    if isinstance(exc, Cancelled):
        st.info(str(exc))
        return
    log.exception("unexpected error in the app")
    st.error(
        "Something went wrong while analysing this input. Nothing was lost: try another clip, "
        "or report the details below."
    )
    with st.expander("Details for a bug report"):
        st.code("".join(traceback.format_exception_only(type(exc), exc)).strip())


def label_name(label: str) -> str:
    """The emotion as a word ("angry"), never the code ("ang")."""
    return emotion_word(label)


def first_record(trace, key_kind: str, sparse: bool = True):
    """The first record whose keys are ``key_kind`` (words / frames), preferring sparse ones."""
    found = first_sparse_record(trace, key_kind) if sparse else None
    return found or next((r for r in trace.records if r.key_labels.kind == key_kind), None)


def default_layer_index(trace) -> int:
    """Start on the first cross-modal key-sparse layer: the most telling map."""
    for i, r in enumerate(trace.records):
        if r.keep is not None and r.query_modality != r.key_modality:
            return i
    return 0


def models_trained_at_other_k(checkpoint: str) -> list[tuple[str, float]]:
    """KS-Transformer checkpoints that read the same features as ``checkpoint`` (the same encoders),
    each with the keep ratio it was trained at, sorted by it: what Compare k puts side by side.
    [] unless at least two keep ratios are there."""
    identity = checkpoint_meta(checkpoint).get("encoders", {}).get("identity")
    found: dict[float, str] = {}
    for path in list_all_checkpoints():  # a trained one first: it wins over a shipped one of its k
        try:
            meta = checkpoint_meta(path)
        except InputError:
            continue
        if meta.get("model") != "ks_transformer" or meta.get("encoders", {}).get("identity") != identity:
            continue
        found.setdefault(round(float(meta["config"].get("ccab_keep_ratio", 0.5)), 2), str(path))
    return [(path, k) for k, path in sorted(found.items())] if len(found) > 1 else []


def run_checkpoint_on(checkpoint: str, base, **settings):
    """Another checkpoint's model on ``base``'s features (the same encoders: nothing is encoded
    again), e.g. ``keep_ratio=0.3``."""
    return get_analyzer(checkpoint).run_model(base.features, **settings)
