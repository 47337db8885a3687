"""Generating the demo corpus (or its calm-voice set) from the app: ``python -m ser_core corpus``
as a detached process.

Like a training run (``ser_core.jobs``, whose process and file helpers this uses), the generator
outlives the Streamlit script run that started it (:func:`start_corpus`), one generation at a time
for the server; every session reads the same record (:func:`corpus_job`) and its progress from the
generator's log (:func:`corpus_progress`)::

    <cache>/jobs/corpus/job.json   the CorpusJob record; log.txt and exitcode beside it
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import jobs
from .data.mix import generated_folder
from .errors import InputError


# --- the demo corpus, generated from the app ------------------------------------------------------
DEMO_CORPUS_UTTERANCES = 2000  # what `python -m ser_core corpus` makes by default
CALM_SET_UTTERANCES = 800  # the calm-voice set the default KS-Transformer was fine-tuned with
#: the corpora the app generates: kind → (what it is called on screen, the generator's extra flags)
GENERATED = {"demo": ("demo corpus", []), "demo-calm": ("calm-voice set", ["--words-decide"])}
#: one worker's time per clip (espeak-ng, alignment, writing): 2000 clips took 161 s on 2 workers
CORPUS_SECONDS_PER_UTTERANCE = 0.16
CORPUS_STARTUP_SECONDS = 10.0  # loading Python, PyTorch and the aligner before the first clip
_CORPUS_BAR = re.compile(r"demo corpus:\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)\s*\[([\d:]+)<([\d:?]+)")


@dataclass
class CorpusJob(jobs.ProcessFiles):
    """One ``python -m ser_core corpus`` run started from the app. ``status``: running, finished, failed;
    ``kind``: which generated corpus (:data:`GENERATED`)."""

    out: str
    n: int
    workers: int
    command: list[str] = field(default_factory=list)
    pid: int = 0
    started: float = 0.0
    status: str = "running"
    exit_code: int | None = None
    ended: float | None = None
    pid_start: str | None = None
    message: str | None = None
    kind: str = "demo"

    @property
    def title(self) -> str:
        return GENERATED.get(self.kind, GENERATED["demo"])[0]

    @property
    def folder(self) -> Path:
        return jobs.jobs_dir() / "corpus"

    @property
    def active(self) -> bool:
        return self.status == "running"


@dataclass
class CorpusProgress:
    """How far a generation is: clips written, of how many, seconds so far and (estimated) left."""

    done: int
    total: int
    elapsed: float
    remaining: float | None

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / max(self.total, 1))


def corpus_folder(kind: str = "demo") -> Path:
    """Where the app keeps a generated corpus (the demo corpus, or ``demo-calm``: its calm-voice set)."""
    if kind not in GENERATED:
        raise InputError(f"{kind!r} is not a corpus the app generates; those are {', '.join(GENERATED)}.")
    return generated_folder(kind)


def demo_corpus_manifest(kind: str = "demo") -> Path:
    return corpus_folder(kind) / "manifest.csv"


def demo_corpus_ready(kind: str = "demo") -> bool:
    """Whether the demo corpus (or its calm-voice set) has been generated (its manifest, written
    last, exists)."""
    return demo_corpus_manifest(kind).exists()


def corpus_size(kind: str = "demo") -> int:
    """Clips the app generates for ``kind`` (read when asked, so a test can make it small)."""
    return DEMO_CORPUS_UTTERANCES if kind == "demo" else CALM_SET_UTTERANCES


def corpus_workers() -> int:
    """Processes a generation uses: at most 2, so that the server keeps a core for its users."""
    return max(1, min(2, os.cpu_count() or 1))


def estimate_corpus_seconds(n: int | None = None, workers: int | None = None) -> float:
    """About how long generating ``n`` clips (default: the demo corpus's) takes on this machine."""
    n = DEMO_CORPUS_UTTERANCES if n is None else n
    return CORPUS_STARTUP_SECONDS + n * CORPUS_SECONDS_PER_UTTERANCE / (workers or corpus_workers())


def format_duration(seconds: float) -> str:
    """``"about 3 min"``, ``"about 40 s"``: a time estimate for a person."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"about {max(5, int(round(seconds / 5.0)) * 5)} s"
    return f"about {int(round(seconds / 60.0))} min"


def _load_corpus_job() -> CorpusJob | None:
    try:
        data = json.loads((jobs.jobs_dir() / "corpus" / "job.json").read_text())
    except (OSError, ValueError):
        return None
    return CorpusJob(**{k: v for k, v in data.items() if k in CorpusJob.__dataclass_fields__})


def _settle_corpus(job: CorpusJob) -> CorpusJob:
    """If the generator has ended, record how (once)."""
    if not job.active:
        return job
    code = None
    if job.exit_path.exists():
        try:
            code = int(job.exit_path.read_text().strip())
        except ValueError:
            code = None
    elif jobs._alive(job):
        return job
    job.exit_code, job.ended = code, time.time()
    if code == 0 and (Path(job.out) / "manifest.csv").exists():
        job.status = "finished"
    else:
        job.status = "failed"
        errors = [line[len("error: "):] for line in job.log_tail(3000).splitlines() if line.startswith("error: ")]
        if errors:
            job.message = f"The {job.title} could not be generated: {errors[-1]}"
        elif code is None or code > 128:
            job.message = (f"Generating the {job.title} stopped before it finished (the server was "
                           "restarted, or it ran out of memory). Press the button again to start over.")
        else:
            job.message = (f"Generating the {job.title} failed (exit code {code}). The log below says "
                           "why; press the button again to retry.")
    proc = jobs._CHILDREN.pop(job.pid, None)
    if proc is not None:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    jobs._write_json(job.folder / "job.json", asdict(job))
    return job


def corpus_job() -> CorpusJob | None:
    """The latest corpus generation of this server (running or not; the demo corpus or its calm-voice
    set), as every session sees it."""
    with jobs._lock():
        job = _load_corpus_job()
        return _settle_corpus(job) if job is not None else None


def start_corpus(n: int | None = None, workers: int | None = None, kind: str = "demo") -> CorpusJob:
    """Generate the demo corpus (or, ``kind="demo-calm"``, its calm-voice set: ``--words-decide``)
    in the background (``python -m ser_core corpus --out <its folder>``): the page that starts it
    returns at once and every session sees its progress. Refused while a generation runs or when
    the corpus is already there; a half-written folder from a failed try is replaced (``--force``
    removes only the generator's own files)."""
    out = corpus_folder(kind)  # an unknown kind is refused here
    title = GENERATED[kind][0]
    n = corpus_size(kind) if n is None else int(n)
    workers = workers or corpus_workers()
    if shutil.which("espeak-ng") is None:
        raise InputError(f"The {title} needs the espeak-ng speech synthesiser, which is not installed "
                         f"on this server: ask whoever runs it to install espeak-ng (setup.sh does).")
    with jobs._lock():
        job = _load_corpus_job()
        if job is not None and _settle_corpus(job).active:
            raise InputError(f"The {job.title} is already being generated (see its progress); one "
                             f"generation at a time, so wait until it is done.")
        if (out / "manifest.csv").exists():
            raise InputError(f"The {title} is already there: choose it as the corpus.")
        job = CorpusJob(out=str(out), n=n, workers=workers, started=time.time(), kind=kind)
        job.folder.mkdir(parents=True, exist_ok=True)
        job.command = [sys.executable, "-m", "ser_core", "corpus", "--out", str(out), "--n", str(n),
                       "--workers", str(workers), "--force", *GENERATED[kind][1]]
        job.log_path.write_bytes(b"")  # a fresh log: progress is read from it
        jobs._spawn(job, job.command)
        jobs._write_json(job.folder / "job.json", asdict(job))
    return job


def corpus_progress(job: CorpusJob) -> CorpusProgress:
    """Clips written so far (from the generator's progress bar in its log) and the time left:
    the bar's own estimate once it has one, else :func:`estimate_corpus_seconds` minus the time spent."""
    end = job.ended if job.ended is not None else time.time()
    elapsed = max(0.0, end - job.started)
    found = _CORPUS_BAR.findall(job.log_raw(4000))
    done, remaining = 0, None
    if found:
        done_s, total_s, _, left = found[-1]
        done = int(done_s)
        if "?" not in left and done:
            parts = [int(x) for x in left.split(":")]
            remaining = float(sum(v * 60 ** i for i, v in enumerate(reversed(parts))))
    if job.status == "finished":
        done, remaining = job.n, 0.0
    elif remaining is None and job.active:
        remaining = max(0.0, estimate_corpus_seconds(job.n, job.workers) - elapsed)
    return CorpusProgress(done=done, total=job.n, elapsed=elapsed, remaining=remaining)
