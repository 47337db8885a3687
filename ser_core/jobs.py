"""Training jobs for the app: one ``python -m ser_core train`` subprocess at a time per server.

The Train page must stay responsive while a model trains for minutes or hours, and a browser
refresh (or a second browser) must find the run where it is. So a job is a detached subprocess
(its own session: it outlives the Streamlit script run that started it, even the server), and
everything about it lives in files, never in one session's memory:

    <cache>/jobs/current.json      which job the page shows (the latest one)
    <cache>/jobs/<id>/job.json     the Job record: command, pid, status, exit code, settings
    <cache>/jobs/<id>/events.jsonl progress events the trainer appends (``--events``)
    <cache>/jobs/<id>/log.txt      the trainer's stdout and stderr
    <cache>/jobs/<id>/run/         metrics.jsonl and the resume state (``--run-dir``)
    <cache>/jobs/<id>/stop         created to ask the trainer to stop (``--stop-file``)
    <cache>/jobs/<id>/exitcode     written by the ``sh`` wrapper when the trainer exits

Any session calls :func:`current_job` to see the same state: a job whose process has gone is
settled once, from its exit code (0 finished, 3 stopped, 2 bad input, else failed) or, when the
process was killed before it could write one, from its events and the stop file.
``ser_core.job_progress.read_events`` turns the events into a ``Progress`` (epoch, batch,
per-batch losses, per-epoch validation rows) for the live curves.

A run trains on one corpus (with a protocol and fold) or on a mix of several (chosen and checked
by ``ser_core.corpus_choice``: ``--corpus``/``--root`` repeated, each corpus split by speaker,
corpora and classes balanced), optionally with augmented copies of every training clip (``--augment``).

The trained checkpoint is ``<name>.safetensors`` in ``paths.checkpoints_dir()`` (``SER_CHECKPOINTS_DIR``,
default the repo's ``checkpoints/``, read at call time so tests can point it elsewhere); the pickers
list that folder and the shipped checkpoints (``checkpoint.list_all_checkpoints``). The trainer uses
the GPU when there is one.

Generating the demo corpus from the app (``ser_core.corpus_job``) uses this module's process and
file helpers (:func:`_spawn`, :func:`_alive`, :func:`_lock`, :func:`_write_json`), looked up here
at call time.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import paths
from .corpus_choice import (PROTOCOL_TITLES, _corpus_items, _is_mix, build_command, check_corpora,
                            parse_model_args, parse_shares, resolve_corpus)
from .data.mix import ROOTLESS, SYNTHETIC
from .errors import InputError
from .job_progress import _events

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ACTIVE = ("running", "stopping")
EXIT_STOPPED = 3  # the trainer's exit code after a stop request (resume state saved)
EXIT_INPUT_ERROR = 2  # bad input; the message is on stderr (in the log)


# --- the job record ----------------------------------------------------------------------------
class ProcessFiles:
    """The files of a background process the app started: its folder (``folder``, given by each
    kind of job), the log it writes and the exit code it leaves, and the log read back."""

    @property
    def folder(self) -> Path:
        raise NotImplementedError

    @property
    def log_path(self) -> Path:
        return self.folder / "log.txt"

    @property
    def exit_path(self) -> Path:
        return self.folder / "exitcode"

    def log_raw(self, chars: int = 4000) -> str:
        """The last ``chars`` characters of the log, as written (tqdm's \\r included)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - chars))
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the log as a person reads it: each progress bar shown at its last state."""
        lines = []
        for line in self.log_raw(chars * 4).split("\n"):
            shown = [part for part in line.split("\r") if part.strip()]
            if shown:
                lines.append(shown[-1].rstrip())
        return "\n".join(lines)[-chars:]


@dataclass
class Job(ProcessFiles):
    """One training run and its files. ``status``: running, stopping, finished, stopped, failed."""

    id: str
    name: str
    out: str
    command: list[str]
    pid: int
    started: float
    status: str = "running"
    exit_code: int | None = None
    ended: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    pid_start: str | None = None  # the process's start time (tells a reused pid apart)
    resumes: int = 0
    message: str | None = None

    @property
    def folder(self) -> Path:
        return jobs_dir() / self.id

    @property
    def events_path(self) -> Path:
        return self.folder / "events.jsonl"

    @property
    def run_dir(self) -> Path:
        return self.folder / "run"

    @property
    def stop_path(self) -> Path:
        return self.folder / "stop"

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def resumable(self) -> bool:
        """Stopped, or killed/crashed with a resume state on disk (bad input is not retried)."""
        if self.active or self.status == "finished" or self.exit_code == EXIT_INPUT_ERROR:
            return False
        return self.status == "stopped" or (self.run_dir / "state.pt").exists()


def jobs_dir() -> Path:
    path = paths.cache_dir() / "jobs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def checkpoints_dir() -> Path:
    """Where trained checkpoints are written (``SER_CHECKPOINTS_DIR``, default ``checkpoints/``)."""
    return paths.checkpoints_dir()


def checkpoint_path(name: str) -> Path:
    """``<name>.safetensors`` in :func:`checkpoints_dir` for a user-given name (letters, digits, - and _)."""
    name = (name or "").strip()
    if name.endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    if not NAME_PATTERN.match(name):
        raise InputError(f"Checkpoint name {name!r}: use 1–64 letters, digits, '-' or '_' (no spaces, "
                         f"dots or slashes).")
    return checkpoints_dir() / f"{name}.safetensors"


def default_checkpoint_name(model: str, corpora: Any = None) -> str:
    """The name the Train page suggests: ``my_<model>`` on the demo corpus (``my_ilt``), with the
    recorded corpora it trains on after it otherwise (``my_ilt_ravdess_tess``)."""
    trained = []
    if corpora:
        trained = [k for k, _, test_only in _corpus_items(corpora) if not test_only and k not in SYNTHETIC]
    return "_".join([f"my_{model}", *trained])[:64]


def _write_json(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def _save(job: Job) -> None:
    _write_json(job.folder / "job.json", asdict(job))


def _load(job_id: str) -> Job | None:
    try:
        data = json.loads((jobs_dir() / job_id / "job.json").read_text())
    except (OSError, ValueError):
        return None
    return Job(**{k: v for k, v in data.items() if k in Job.__dataclass_fields__})


@contextmanager
def _lock():
    """Serialise starts, stops and status updates between sessions and processes."""
    with open(jobs_dir() / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --- processes ---------------------------------------------------------------------------------
_CHILDREN: dict[int, subprocess.Popen] = {}  # processes this server started (polled to reap them)


def _proc_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (field 22 of /proc/<pid>/stat), None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(job: Job) -> bool:
    proc = _CHILDREN.get(job.pid)
    if proc is not None:
        return proc.poll() is None  # also reaps it
    try:
        stat = Path(f"/proc/{job.pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel whether the pid exists
        try:
            os.kill(job.pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    fields = stat.rsplit(")", 1)[1].split()
    if job.pid_start is not None and fields[19] != job.pid_start:
        return False  # the pid now belongs to another process
    if fields[0] in ("Z", "X"):
        try:  # a zombie child of this process (started by an earlier module instance)
            os.waitpid(job.pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return True


#: Jobs run at this lower priority (``nice``): a teacher's training never slows the visitors'
#: analyses, which run in the server at normal priority; the job takes the CPU they leave.
BACKGROUND_NICENESS = 10


def background(command: list[str]) -> list[str]:
    """``command`` run at the jobs' lower priority (unchanged where there is no ``nice``)."""
    nice = shutil.which("nice")
    return [nice, "-n", str(BACKGROUND_NICENESS), *command] if nice else list(command)


def lower_group_priority(pid: int, niceness: int = BACKGROUND_NICENESS) -> bool:
    """Give the session that process ``pid`` leads (``start_new_session=True``) the jobs' lower
    priority as a whole. Linux's "autogroup" scheduler (on by default in most distributions)
    shares the CPU fairly between *sessions* first and applies a process's ``nice`` only inside
    its own session, so a detached job at nice 10 still took a full share beside the server:
    measured with bench/bench_load.py, the training job used 65 of 206 core-seconds while twelve
    analyses waited. The session's own niceness (``/proc/<pid>/autogroup``) is what counts
    between sessions. Returns whether it was set (False without autogroup or on another OS)."""
    try:
        Path(f"/proc/{int(pid)}/autogroup").write_text(str(int(niceness)))
    except OSError:
        return False
    return True


def _spawn(job: Job, command: list[str]) -> None:
    """Run ``command`` detached at the jobs' lower priority (``background``), its output
    appended to the log, its exit code to a file."""
    job.exit_path.unlink(missing_ok=True)
    tmp = job.exit_path.with_suffix(".tmp")
    script = f"{shlex.join(background(command))}; echo $? > {shlex.quote(str(tmp))} && mv {shlex.quote(str(tmp))} " \
             f"{shlex.quote(str(job.exit_path))}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    with open(job.log_path, "ab") as log:
        proc = subprocess.Popen(["sh", "-c", script], cwd=paths.REPO_ROOT, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    lower_group_priority(proc.pid)  # the job's own session, at the jobs' priority as well
    _CHILDREN[proc.pid] = proc
    job.pid, job.pid_start = proc.pid, _proc_start(proc.pid)
    job.status, job.exit_code, job.ended, job.message = "running", None, None, None


def _settle(job: Job) -> Job:
    """If the job's process has ended, record how (once; every session then reads the record)."""
    if not job.active:
        return job
    code = None
    if job.exit_path.exists():
        try:
            code = int(job.exit_path.read_text().strip())
        except ValueError:
            code = None
    elif _alive(job):
        return job
    # the last lifecycle event of the last attempt (a resumed job's file holds earlier ones too)
    last = None
    for e in _events(job.events_path):
        if e.get("event") in ("features", "start", "done", "stopped"):
            last = e["event"]
    job.exit_code, job.ended = code, time.time()
    if code == 0 and last == "done":
        job.status = "finished"
    elif code == EXIT_STOPPED:
        job.status = "stopped"
    elif code is None and job.stop_path.exists():  # ended by request_stop while extracting features
        job.status = "stopped"
    elif code is None and last == "done":  # killed between its last event and its exit
        job.status = "finished"
    else:
        job.status = "failed"
        job.message = _failure_message(job, code)
    proc = _CHILDREN.pop(job.pid, None)
    if proc is not None:  # reap the wrapper (it exits right after writing the code)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    _save(job)
    return job


def _failure_message(job: Job, code: int | None) -> str:
    tail = job.log_tail(3000)
    if code == EXIT_INPUT_ERROR:
        errors = [line[len("error: "):] for line in tail.splitlines() if line.startswith("error: ")]
        if errors:
            return errors[-1]
    if code is None:
        return ("The training process ended without an exit code (it was killed, or the machine "
                "restarted). Resume continues from the last saved state.")
    if code > 128:
        return (f"The training process was killed by signal {code - 128} (out of memory?). Resume "
                f"continues from the last saved state.")
    last = [line for line in tail.splitlines() if line.strip()]
    return f"Training exited with code {code}: " + (last[-1] if last else "no output.")


# --- public API --------------------------------------------------------------------------------
def current_job() -> Job | None:
    """The latest job (running or not), as every session sees it; None when there has been none."""
    with _lock():
        return current_job_unlocked()


def current_job_unlocked() -> Job | None:
    """:func:`current_job` for callers already holding the lock."""
    try:
        job_id = json.loads((jobs_dir() / "current.json").read_text())["id"]
    except (OSError, ValueError, KeyError):
        return None
    job = _load(job_id)
    return _settle(job) if job is not None else None


def start_training(
    name: str, model: str = "ks_transformer", corpus: str = "manifest", root: str | None = None,
    protocol: str = "predefined", fold: int = 0, preset: str = "fast", epochs: int | None = None,
    batch_size: int | None = None, lr: float | None = None, dropout: float | None = None,
    init_from: str | None = None, max_utterances: int | None = None,
    model_args: str | list[str] | dict[str, Any] | None = None, overwrite: bool = False,
    device: str | None = None, seed: int = 0, check_data: bool = True, corpora: Any = None,
    augment: int = 0, augment_corpora: list[str] | None = None,
    corpus_shares: str | dict[str, float] | None = None, epoch_items: int | None = None,
    group_by_length: bool = False, layer_mix_lr: float | None = None,
) -> Job:
    """Check the settings, then start the trainer in the background; refuses while a job runs.

    ``root`` None means the demo corpus. ``corpora`` (the app's choice: kinds with their paths,
    see :func:`check_corpora`) replaces ``corpus``/``root``: one corpus is trained as before, with
    ``protocol`` and ``fold``; several (or one marked test only) make a mix, split by speaker per
    corpus and balanced. ``augment`` augmented copies of every training clip (of the kinds in
    ``augment_corpora`` only, in a mix; None: all). With ``check_data`` the corpus (or the mix,
    as the trainer will) is loaded and split here first, so a wrong folder is reported at once
    instead of by a failed job. ``corpus_shares`` (a mix; ``"demo-calm=2.5"`` or a dict): how many
    times its usual part of each epoch a corpus gets; ``epoch_items`` (a mix): clips drawn per
    epoch (None: as many as it has). ``group_by_length``: batches of clips of similar length.
    ``layer_mix_lr`` (models that mix the speech encoder's layers): those weights' own learning rate.
    """
    from .models.base import model_class
    from .train import PRESETS, TrainConfig, check_fine_tune, check_same_split, load_fold
    from .train_cli import corpus_choice

    _refuse_if_running(current_job())  # at once; checked again below, under the lock
    out = checkpoint_path(name)
    if out.exists() and not overwrite:
        raise InputError(f"A checkpoint named {out.stem} already exists; choose another name or tick "
                         f"'overwrite' to replace it.")
    for folder in paths.checkpoint_dirs():
        if folder / out.name != out and (folder / out.name).exists():  # a shipped one is never replaced
            raise InputError(f"{out.stem} is the name of a checkpoint that ships with the project; "
                             f"choose another name.")
    cls = model_class(model)  # unknown model → InputError listing the known ones
    if preset not in PRESETS:
        raise InputError(f"Unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}.")
    entries = check_corpora(corpora) if corpora else None
    mix = bool(entries) and _is_mix(_corpus_items(entries))
    kind = None  # a single corpus's kind, so that the page can name it ("Demo corpus", not "manifest")
    if entries and not mix:  # one corpus: today's run, with its protocol and fold
        kind = entries[0]["kind"]
        corpus, root = resolve_corpus(entries[0]["kind"], entries[0]["root"])
        entries = None
    if root is None and not mix:
        kind = "demo"
        corpus, root = resolve_corpus("demo")
    for label, value, low in (("epochs", epochs, 1), ("batch size", batch_size, 1),
                              ("max utterances", max_utterances, 2), ("augmented copies", augment, 0),
                              ("clips per epoch", epoch_items, 1)):
        if value is not None and (isinstance(value, bool) or int(value) != value or value < low):
            raise InputError(f"The {label} must be a whole number >= {low}, not {value!r}.")
    augment = int(augment or 0)
    if protocol == "all":
        raise InputError(f"The protocol 'all' ({PROTOCOL_TITLES['all']}) leaves nothing to train on; "
                         "it is for the Evaluate page. Choose another protocol.")
    if mix:
        if protocol not in ("predefined", "speakers"):
            raise InputError(f"A mix of corpora is always split by speaker per corpus; the protocol "
                             f"{protocol!r} applies to a single corpus only.")
        if max_utterances is not None:
            raise InputError("'Use at most this many utterances' works with a single corpus; a mix "
                             "uses every clip of its corpora.")
        trained = [e["kind"] for e in entries if not e["test_only"]]
        if augment and augment_corpora is not None:
            augment_corpora = list(dict.fromkeys(str(k).strip().lower() for k in augment_corpora))
            stray = [k for k in augment_corpora if k not in trained]
            if stray:
                raise InputError(f"Only corpora the mix trains on can be augmented ({', '.join(trained)}), "
                                 f"not {', '.join(stray)}.")
            if not augment_corpora:
                raise InputError("Augmented copies were asked for, but no corpus of the mix is chosen "
                                 "to be augmented.")
            if set(augment_corpora) == set(trained):
                augment_corpora = None  # all of them: the trainer's default
    if not (mix and augment):
        augment_corpora = None  # one corpus (or no copies): nothing to choose
    corpus_shares = parse_shares(corpus_shares)
    if corpus_shares:
        if not mix:
            raise InputError("Corpus shares apply to a mix of corpora; with one corpus, leave them empty.")
        trained = [e["kind"] for e in entries if not e["test_only"]]
        stray = [k for k in corpus_shares if k not in trained]
        if stray:
            raise InputError(f"A share can only be given to a corpus the mix trains on ({', '.join(trained)}), "
                             f"not {', '.join(stray)}.")
    if epoch_items is not None and not mix:
        raise InputError("'Clips drawn per epoch' applies to a mix of corpora; one corpus uses every "
                         "training clip once per epoch.")
    if layer_mix_lr is not None and not hasattr(cls, "layer_mix_parameters"):
        raise InputError(f"{model} has no weights that mix the speech encoder's layers, so they cannot "
                         "have a learning rate of their own; leave it empty.")
    for label, value in (("learning rate", lr), ("dropout", dropout), ("speech-layer learning rate", layer_mix_lr)):
        if value is not None and not (0 <= value < (1 if label == "dropout" else 10)):
            raise InputError(f"The {label} {value!r} is out of range.")
    args = parse_model_args(model_args)
    known = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(args) - known)
    if unknown:
        raise InputError(f"{model} has no setting(s) {', '.join(unknown)}; its settings are "
                         f"{', '.join(sorted(known))}.")
    if init_from:  # the same model, whose settings fine-tuning keeps: these may not resize it
        check_fine_tune(init_from, args, model)
        init_from = str(Path(init_from).resolve())
    if check_data:
        if mix:  # load and split the mix exactly as the trainer will (the same --corpus/--root lists)
            names = [("test:" if e["test_only"] else "") + e["kind"] for e in entries]
            roots = [e["root"] for e in entries if e["kind"] not in ROOTLESS]
            cfg = TrainConfig(model=model, **corpus_choice(names, roots), seed=seed)
        else:
            cfg = TrainConfig(model=model, corpus=corpus, root=root, protocol=protocol, fold=fold,
                              max_utterances=max_utterances, seed=seed)
        if init_from:
            check_same_split(dataclasses.replace(cfg, init_from=init_from))
        fold_ = load_fold(cfg)
        if not fold_.train or not fold_.val or not fold_.test:
            raise InputError(f"Fold {fold_.name!r} has an empty train, validation or test part.")

    with _lock():
        _refuse_if_running(current_job_unlocked())
        job_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
        folder = jobs_dir() / job_id
        (folder / "run").mkdir(parents=True)
        if mix:
            corpus, root, protocol, fold = "mix", "", "speakers", 0
        settings = dict(model=model, corpus=corpus, root=root, protocol=protocol, fold=fold,
                        preset=preset, epochs=epochs, batch_size=batch_size, lr=lr, dropout=dropout,
                        init_from=init_from, max_utterances=max_utterances, model_args=args,
                        device=device, seed=seed, corpora=entries, augment=augment,
                        augment_corpora=augment_corpora, corpus_shares=corpus_shares,
                        epoch_items=None if epoch_items is None else int(epoch_items),
                        group_by_length=bool(group_by_length), layer_mix_lr=layer_mix_lr)
        job = Job(id=job_id, name=out.stem, out=str(out), command=[], pid=0, started=time.time(),
                  settings={**settings, "kind": kind})
        job.command = build_command(out, job.run_dir, job.events_path, job.stop_path, **settings)
        _spawn(job, job.command)
        _save(job)
        _write_json(jobs_dir() / "current.json", {"id": job.id})
    return job


def _refuse_if_running(job: Job | None) -> None:
    if job is not None and job.active:
        raise InputError(f"A training job is already running ({job.name}, started "
                         f"{time.strftime('%H:%M:%S', time.localtime(job.started))}); stop it first — "
                         f"one job at a time.")


def request_stop() -> Job | None:
    """Ask the running job to stop: it saves its resume state before the next batch and exits
    (code 3). While it is still extracting features there is no state to save, so the process is
    ended at once (the features already computed stay in the disk cache)."""
    with _lock():
        job = current_job_unlocked()
        if job is None or not job.active:
            return job
        job.stop_path.touch()
        job.status = "stopping"
        _save(job)
        if not any(e.get("event") == "start" for e in _events(job.events_path)):
            try:
                os.killpg(job.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
    return job


def resume() -> Job:
    """Continue the stopped (or killed) job from its saved state, in a new process."""
    with _lock():
        job = current_job_unlocked()
        if job is None:
            raise InputError("There is no training job to resume.")
        if job.active:
            raise InputError("The training job is still running.")
        if not job.resumable:
            raise InputError(f"The job {job.name} is {job.status}; only a stopped or interrupted job "
                             f"can be resumed.")
        job.stop_path.unlink(missing_ok=True)
        command = job.command + ([] if "--resume" in job.command else ["--resume"])
        job.resumes += 1
        _spawn(job, command)
        _save(job)
    return job


def wait(job: Job | None = None, timeout: float = 600.0, poll: float = 0.2) -> Job:
    """Block until the current job has ended (for scripts and tests); returns its final record."""
    deadline = time.time() + timeout
    while True:
        now = current_job()
        if now is None or (job is not None and now.id != job.id):
            raise InputError("The job is no longer the current one.")
        if not now.active:
            return now
        if time.time() > deadline:
            raise TimeoutError(f"training job {now.name} still {now.status} after {timeout:.0f} s")
        time.sleep(poll)
