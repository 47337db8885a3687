"""A class at once: N browser sessions press Analyze within a second while a training job runs.

    python bench/bench_load.py [--sessions 12] [--no-training] [--timeout 300] [--cold] [--browser-nice 19]

Starts ``streamlit run app.py`` and one headless Chromium with ``--sessions`` contexts (each one a
separate Streamlit session). Every session opens Analyze, uploads a clip of its own (made from the
sample clips in ``samples/wav/``, each of a different length, 2–6 s) and waits idle; then all press
Analyze at one shared moment. Meanwhile ``python -m ser_core train`` trains a tiny KS-Transformer on a
tiny generated corpus (40 utterances, batch size 4, ``--train-epochs`` 100000: longer than the load
lasts; it is stopped at the end) as a separate process at the lower priority the Train page gives
its jobs (``ser_core.jobs.background``), unless ``--no-training``; the presses wait
until it trains (its feature extraction comes first). Before the sessions open, one analysis
of a sample clip warms the server up (the models load), unless ``--cold``.

Prints, per session and as p50/p95 over the sessions:
  * wait: press → its analysis started (the page's "Waiting: N ahead of you" message went away;
    0 when it never appeared);
  * total: press → "Prediction: ..." shown and the script idle;
and the errors (an error box, "Traceback", a stopped analysis, or no answer within ``--timeout`` s),
whether each session got the prediction of its own clip (the duration in the result caption
"confidence NN% · D.D s · ..." must be its own clip's), and the peak memory (VmHWM from /proc) of
the server (the streamlit process and its children) and, separately, of the training job.
Target (issue 13, this 2-core machine): all answered, no error, p95 total ≤ 30 s for 12 sessions,
nothing mixed up.

``--browser-nice 19`` stands in for a real classroom, where each student's browser draws on its
own laptop: the browsers (Chromium runs in a session of its own) are lowered as a whole, as the
training job is. Without it, twelve Chromium renderers drawing on the server's two cores take
most of the CPU (110–120 of 136–150 core-seconds in a run) and the totals measure them.

Nothing is written into the repository: the server and the trainer use a temporary
``SER_CACHE_DIR`` (the converted Whisper weights are linked from the user cache, so only the
features are computed afresh) and ``SER_CHECKPOINTS_DIR``. The browsers share this machine's two
cores with the server and the trainer: the figures include their drawing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

SAMPLE_RATE = 16000
TINY = ["d_model=32", "ff_dim=64", "feature_layers=1", "ccab_layers=1", "fusion_layers=1"]
P95_TARGET_S = 30.0

# Installed in each page before the presses: records, with the machine's clock (Date.now, the same
# clock as Python's time.time), when Analyze was pressed, when the queue's waiting message was first
# seen and when it went away, and when the page was finished (result or error shown, script idle).
# Only element lookups and textContent: nothing that makes the browser lay the page out again.
WATCH = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  const w = {pressed: null, waitSeen: null, waitGone: null, done: null, visible: document.visibilityState};
  window.__load = w;
  document.addEventListener('click', () => { if (w.pressed === null) w.pressed = Date.now(); }, true);
  const texts = (selector) => Array.from(document.querySelectorAll(selector)).map(e => e.textContent);
  const tick = () => {
    if (w.pressed === null || w.done !== null) return;
    const now = Date.now();
    const waiting = texts('[data-testid="stAlertContentInfo"]').some(t => t.includes('ahead of you'));
    if (waiting && w.waitSeen === null) w.waitSeen = now;
    if (!waiting && w.waitSeen !== null && w.waitGone === null) w.waitGone = now;
    const idle = app.getAttribute('data-test-script-state') === 'notRunning';
    const predicted = texts('[data-testid="stHeading"]').some(t => t.startsWith('Prediction:'));
    const failed = document.querySelector('[data-testid="stAlertContentError"], [data-testid="stException"]');
    if (idle && (predicted || failed)) { w.done = now; clearInterval(window.__loadTimer); }
  };
  window.__loadTimer = setInterval(tick, 100);
}"""

# What a finished page shows: its heading, its result caption and any error or stopped message.
RESULT = """() => {
  const texts = (selector) => Array.from(document.querySelectorAll(selector)).map(e => e.textContent);
  return {
    heading: texts('[data-testid="stHeading"]').find(t => t.startsWith('Prediction:')) || null,
    caption: texts('[data-testid="stCaptionContainer"]').find(t => t.startsWith('confidence')) || null,
    errors: texts('[data-testid="stAlertContentError"], [data-testid="stException"]'),
    notes: texts('[data-testid="stAlertContentInfo"]'),
    traceback: document.body.textContent.includes('Traceback'),
  };
}"""

STOPPED_WORDS = ("was stopped", "tab that asked", "earlier one was stopped")


# --- inputs ------------------------------------------------------------------------------------
def clip_lengths(n: int) -> list[float]:
    """``n`` distinct lengths from 2 s to 6 s (0.1 s apart at least, so the captions differ)."""
    if n == 1:
        return [3.0]
    step = max(0.1, 4.0 / (n - 1))
    return [round(2.0 + i * step, 1) for i in range(n)]


def make_clips(n: int, folder: Path) -> list[tuple[Path, float]]:
    """``n`` WAV clips of distinct lengths made from the sample clips (session i starts with sample
    i, the next samples follow after 0.2 s of silence, cut to length); returns (path, seconds)."""
    samples = sorted((REPO / "samples" / "wav").glob("*.wav"))
    if not samples:
        sys.exit("no sample clips in samples/wav/")
    gap = np.zeros(int(0.2 * SAMPLE_RATE), dtype=np.float32)
    clips = []
    for i, seconds in enumerate(clip_lengths(n)):
        need = int(round(seconds * SAMPLE_RATE))
        parts, have, j = [], 0, i
        while have < need:
            audio, sr = sf.read(samples[j % len(samples)], dtype="float32")
            assert sr == SAMPLE_RATE, f"{samples[j % len(samples)]} is not 16 kHz"
            parts += [audio, gap]
            have += len(audio) + len(gap)
            j += 1
        path = folder / f"session{i:02d}_{seconds:.1f}s.wav"
        sf.write(path, np.concatenate(parts)[:need], SAMPLE_RATE, subtype="PCM_16")
        clips.append((path, seconds))
    return clips


def cache_folder(folder: Path) -> Path:
    """A fresh cache folder that reuses the converted Whisper weights of the user cache."""
    folder.mkdir(parents=True, exist_ok=True)
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ser-explorer"
    if (user_cache / "whisper").is_dir():
        (folder / "whisper").symlink_to(user_cache / "whisper")
    return folder


# --- the training job ----------------------------------------------------------------------------
class TrainingJob:
    """``python -m ser_core train`` on a tiny generated corpus (40 utterances), in the background,
    as its own process group; remembers when it ended (None while it runs)."""

    def __init__(self, folder: Path, epochs: int) -> None:
        from ser_core.corpus import generate_corpus, plan_corpus
        from ser_core.jobs import background, lower_group_priority  # the Train page's lower priority

        plans = plan_corpus(60, seed=5, video=False)
        by_split = {s: [p for p in plans if p.split == s] for s in ("train", "val", "test")}
        chosen = by_split["train"][:28] + by_split["val"][:6] + by_split["test"][:6]
        manifest = generate_corpus(folder / "corpus", plans=chosen, workers=1, progress=False)
        self.epochs = epochs
        self.events = folder / "train_events.jsonl"
        self.log = folder / "train.log"
        self.ended_at: float | None = None
        cmd = [sys.executable, "-m", "ser_core", "train", "--corpus", "manifest", "--root", str(manifest),
               "--model", "ks_transformer", "--epochs", str(epochs), "--batch-size", "4",
               "--out", str(folder / "checkpoints" / "load_bench.safetensors"), "--events", str(self.events)]
        for arg in TINY:
            cmd += ["--model-arg", arg]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "SER_CACHE_DIR": str(cache_folder(folder / "cache")),
               "SER_CHECKPOINTS_DIR": str(folder / "checkpoints")}
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(background(cmd), cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        lower_group_priority(self.proc.pid)  # its session too, as the Train page's jobs

    def last_event(self) -> dict | None:
        """The job's latest progress event (None before the first)."""
        last = None
        if self.events.exists():
            for line in self.events.read_text().splitlines():
                try:
                    last = json.loads(line)
                except json.JSONDecodeError:
                    pass  # a line being written
        return last

    def running(self) -> bool:
        """Whether the job still runs (notes when it ended)."""
        if self.proc.poll() is None:
            return True
        self.ended_at = self.ended_at or time.time()
        return False

    def phase(self) -> str:
        """Where the job is, in a few words (the end of its log when it failed)."""
        last = self.last_event() or {}
        if not self.running():
            ended = f"training job ended (exit {self.proc.returncode}, last event {last.get('event')})"
            if self.proc.returncode != 0:
                ended += ":\n" + self.log.read_text()[-2000:]
            return ended
        if last.get("event") in ("batch", "epoch"):
            return f"training job: training, epoch {last.get('epoch')} of {self.epochs}"
        return f"training job: {last.get('event', 'loading the corpus')}"

    def wait_until_training(self, timeout: float) -> None:
        """Wait (up to ``timeout`` s) until the job trains batches: it extracts features first."""
        deadline = time.time() + timeout
        while time.time() < deadline and self.running():
            if (self.last_event() or {}).get("event") in ("start", "batch", "epoch"):
                return
            time.sleep(1.0)

    def stop(self) -> None:
        """End the job and its process group."""
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except Exception:
            os.killpg(self.proc.pid, signal.SIGKILL)


# --- memory ------------------------------------------------------------------------------------
class PeakMemory:
    """Peak memory of a process and its descendants, sampled from /proc: each process's own peak
    (VmHWM, kept for those that ended) and the largest sum of resident memory seen at once."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.hwm_kib: dict[int, int] = {}
        self.rss_sum_kib = 0

    def sample(self) -> None:
        rss_sum = 0
        for pid in [self.pid] + descendants(self.pid):
            status = proc_status(pid)
            if "VmHWM" in status:
                self.hwm_kib[pid] = max(self.hwm_kib.get(pid, 0), status["VmHWM"])
                rss_sum += status.get("VmRSS", 0)
        self.rss_sum_kib = max(self.rss_sum_kib, rss_sum)

    def describe(self) -> str:
        own = self.hwm_kib.get(self.pid, 0)
        children = sum(v for pid, v in self.hwm_kib.items() if pid != self.pid)
        return (f"VmHWM {own / 1024:.0f} MiB (+ children {children / 1024:.0f} MiB, "
                f"{max(len(self.hwm_kib) - 1, 0)} of them); largest RSS sum seen {self.rss_sum_kib / 1024:.0f} MiB")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, s) used so far by ``pid`` and its descendants: each living one's
    own time and that of its children that have ended (their time moves to the parent when it
    reaps them, so a worker that ends between two readings is still counted)."""
    total = 0.0
    for one in [pid] + descendants(pid):
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime
    return total


def machine_cpu_seconds() -> float:
    """CPU time used by everything on the machine so far (all cores, from /proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    busy = sum(int(v) for i, v in enumerate(fields) if i not in (3, 4))  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def proc_status(pid: int) -> dict[str, int]:
    """The kB fields (VmHWM, VmRSS, ...) of /proc/<pid>/status ({} once the process is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    fields = {}
    for line in lines:
        name, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            fields[name] = int(value.split()[0])
    return fields


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc/*/stat's parent ids)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


# --- the browsers --------------------------------------------------------------------------------
def open_analyze(browser, url: str):
    """A new session (its own browser context) on the Analyze page, loaded and idle."""
    from browser import wait_idle

    context = browser.new_context(viewport={"width": 1400, "height": 1800})
    page = context.new_page()
    page.goto(url + "/Analyze", wait_until="domcontentloaded")
    page.get_by_text("Analyze an utterance").wait_for(timeout=180_000)
    wait_idle(page, 180_000)
    return page


def prepare_page(browser, url: str, clip: Path):
    """A new session on Analyze with ``clip`` uploaded, idle, and the watcher installed."""
    from browser import wait_idle

    page = open_analyze(browser, url)
    page.get_by_text("Upload a file", exact=True).click()
    wait_idle(page, 180_000)
    page.locator("input[type=file]").first.set_input_files(str(clip))
    wait_idle(page, 180_000)
    page.get_by_role("button", name="Analyze").wait_for(timeout=60_000)
    page.evaluate(WATCH)
    return page


def warm_up(browser, url: str) -> float:
    """One analysis of a sample clip in a session of its own (the teacher trying the app before the
    class comes): loads the models, so the load test measures a warm server. Returns its seconds."""
    from browser import wait_idle

    page = open_analyze(browser, url)
    start = time.time()
    page.get_by_role("button", name="Analyze").click()
    page.get_by_text("Prediction:").wait_for(timeout=300_000)
    wait_idle(page, 300_000)
    seconds = time.time() - start
    page.context.close()
    return seconds


def press_all(pages: list, margin_s: float = 2.0) -> list[float]:
    """Press Analyze on every page at the same moment: each page is told to click its button at
    one shared time (the machine's clock), ``margin_s`` after every page has been told; so slow
    round trips to a busy browser do not spread the presses. Returns the planned time."""
    moment = (time.time() + margin_s + 0.2 * len(pages)) * 1000
    for page in pages:
        page.evaluate("(at) => setTimeout(() => document.querySelector("
                      "'.st-key-analyze_button button').click(), at - Date.now())", moment)
    time.sleep(max(0.0, moment / 1000 - time.time()))
    return [moment / 1000] * len(pages)


def wait_all(pages: list, sent: list[float], timeout: float, memories: list[PeakMemory],
             trainer: TrainingJob | None) -> list[dict]:
    """Poll every page until each is finished or ``timeout`` s passed since its press; samples the
    memory and notes the training job's end meanwhile. Returns each page's watcher record (``done``
    None: timed out; ``pressed`` the click the page saw, else when it was planned)."""
    records: list[dict | None] = [None] * len(pages)
    while True:
        if trainer is not None:
            trainer.running()
        for memory in memories:
            memory.sample()
        for i, page in enumerate(pages):
            if records[i] is None:
                state = page.evaluate("() => window.__load")
                state["pressed"] = state["pressed"] or sent[i] * 1000
                if state["done"] is not None or time.time() * 1000 - state["pressed"] > timeout * 1000:
                    records[i] = state
        if all(r is not None for r in records):
            return records
        time.sleep(0.5)


# --- the report ----------------------------------------------------------------------------------
def session_row(record: dict, result: dict, seconds: float) -> dict:
    """One session's figures and what went wrong (an empty ``problems`` list: all well)."""
    problems = []
    pressed = record["pressed"]
    if record["done"] is None:
        problems.append("no answer in time")
    if result["errors"]:
        problems.append("error: " + " | ".join(t.strip()[:120] for t in result["errors"]))
    if result["traceback"]:
        problems.append("Traceback on the page")
    problems += ["stopped: " + t.strip()[:120] for t in result["notes"] if any(w in t for w in STOPPED_WORDS)]
    shown = re.search(r"confidence (\d+)% · ([\d.]+) s", result["caption"] or "")
    served = re.search(r"analysed in ([\d.]+) s", result["caption"] or "")
    own = shown is not None and abs(float(shown.group(2)) - seconds) < 0.05
    if shown is not None and not own:
        problems.append(f"MIXED UP: shows a {shown.group(2)} s clip, its own is {seconds:.1f} s")
    started = record["waitGone"] if record["waitSeen"] is not None else pressed if record["done"] else None
    wait = (started - pressed) / 1000 if started is not None else None  # None: not seen starting
    return {
        "pressed": pressed / 1000,
        "wait": wait,
        "total": (record["done"] - pressed) / 1000 if record["done"] is not None else None,
        "queued": record["waitSeen"] is not None,
        "label": (result["heading"] or "").removeprefix("Prediction:").strip() or "-",
        "confidence": shown.group(1) + "%" if shown else "-",
        "shown_s": shown.group(2) if shown else "-",
        "own": own,
        "analysed_s": float(served.group(1)) if served else None,
        "problems": problems,
    }


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def print_report(rows: list[dict], clips: list[tuple[Path, float]], sessions: int) -> None:
    """The per-session table, the p50/p95 lines, the errors and the mix-up check."""
    first = min(r["pressed"] for r in rows)
    print(f"\n{'session':>7} {'clip':>6} {'pressed':>8} {'queued':>6} {'wait':>7} {'total':>7}  "
          f"{'prediction':<10} {'conf':>5} {'shown':>6}  own clip")
    for i, (row, (_, seconds)) in enumerate(zip(rows, clips)):
        total = f"{row['total']:6.1f}s" if row["total"] is not None else "   -   "
        wait = f"{row['wait']:6.1f}s" if row["wait"] is not None else "   -   "
        print(f"{i:>7} {seconds:5.1f}s {row['pressed'] - first:+7.2f}s {'yes' if row['queued'] else 'no':>6} "
              f"{wait} {total}  {row['label']:<10} {row['confidence']:>5} {row['shown_s']:>5}s  "
              f"{'-' if row['shown_s'] == '-' else 'yes' if row['own'] else 'NO'}")
    waits = [r["wait"] for r in rows if r["wait"] is not None]
    totals = [r["total"] for r in rows if r["total"] is not None]
    spread = max(r["pressed"] for r in rows) - first
    print(f"\npresses spread over {spread:.2f} s (target: within 1 s)")
    print(f"wait  (press → analysis started): p50 {percentile(waits, 50):6.1f} s   p95 {percentile(waits, 95):6.1f} s"
          f"   (of the {len(waits)} seen starting)")
    print(f"total (press → prediction, idle): p50 {percentile(totals, 50):6.1f} s   p95 {percentile(totals, 95):6.1f} s"
          f"   (of the {len(totals)} answered; target p95 ≤ {P95_TARGET_S:.0f} s for 12 sessions)")
    served = [r["analysed_s"] for r in rows if r["analysed_s"] is not None]
    print(f"analysis in the server (decoding, words, encoders, model; the page's caption): p50 "
          f"{percentile(served, 50):6.1f} s   p95 {percentile(served, 95):6.1f} s")
    answered = sum(r["total"] is not None and r["label"] != "-" for r in rows)
    print(f"answered {answered}/{sessions}; queue message seen by {sum(r['queued'] for r in rows)}")
    failed = [(i, p) for i, r in enumerate(rows) for p in r["problems"]]
    print(f"errors: {len(failed)}" + "".join(f"\n  session {i}: {p}" for i, p in failed))
    mixed = [i for i, r in enumerate(rows) if r["shown_s"] != "-" and not r["own"]]
    print("each prediction belongs to its own clip (caption duration = own clip's): "
          + ("yes" if not mixed else f"NO, sessions {mixed}"))
    met = answered == sessions and not failed and not mixed and totals and percentile(totals, 95) <= P95_TARGET_S
    print(f"goal (all answered, no error, p95 total ≤ {P95_TARGET_S:.0f} s, nothing mixed up): "
          + ("met" if met else "NOT met"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=12, help="browser sessions pressing Analyze at once")
    ap.add_argument("--no-training", action="store_true", help="no training job beside the server")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds each session may take")
    ap.add_argument("--cold", action="store_true", help="no warm-up analysis: the presses load the models")
    ap.add_argument("--browser-nice", type=int, default=0,
                    help="run the browsers at this lower priority (e.g. 19): in a classroom each student's "
                         "browser draws on its own laptop, not on the server's cores")
    ap.add_argument("--train-epochs", type=int, default=100_000,
                    help="the training job's epochs (enough to outlast the load; it is stopped at the end)")
    args = ap.parse_args()
    from browser import CHROMIUM_FLAGS, chromium_path, streamlit_server
    from playwright.sync_api import sync_playwright

    from ser_core.jobs import lower_group_priority

    if chromium_path() is None:
        sys.exit("chromium is not installed")
    trainer = None
    with tempfile.TemporaryDirectory(prefix="bench_load_") as tmp:
        tmp = Path(tmp)
        clips = make_clips(args.sessions, tmp)
        print(f"{args.sessions} sessions, clips of {', '.join(f'{s:.1f}' for _, s in clips)} s; "
              f"SER_MAX_ANALYSES={os.environ.get('SER_MAX_ANALYSES', '(default)')}; {os.cpu_count()} cores; "
              f"browsers at nice {args.browser_nice}; "
              f"load average {os.getloadavg()[0]:.1f} before the start")
        try:
            if not args.no_training:
                trainer = TrainingJob(tmp / "training", args.train_epochs)
            env = {"SER_CACHE_DIR": str(cache_folder(tmp / "server_cache")),
                   "SER_CHECKPOINTS_DIR": str(tmp / "server_checkpoints")}
            with streamlit_server(timeout=180, env=env) as (url, server, _), sync_playwright() as p:
                memories = [PeakMemory(server.pid)] + ([PeakMemory(trainer.proc.pid)] if trainer else [])
                browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
                if args.browser_nice:  # its renderers, started later, inherit the priority
                    others = {server.pid, *descendants(server.pid)} | (
                        {trainer.proc.pid, *descendants(trainer.proc.pid)} if trainer else set())
                    for pid in set(descendants(os.getpid())) - others:
                        try:
                            os.setpriority(os.PRIO_PROCESS, pid, args.browser_nice)
                        except OSError:
                            pass
                        # Playwright starts Chromium in a session of its own, and Linux's autogroup
                        # scheduler shares the CPU between sessions before it looks at nice
                        lower_group_priority(pid, args.browser_nice)
                if not args.cold:
                    print(f"warm-up: one sample clip analysed in {warm_up(browser, url):.1f} s "
                          "(models loaded; --cold skips this)")
                t0 = time.time()
                pages = []
                for path, _ in clips:
                    pages.append(prepare_page(browser, url, path))
                    for memory in memories:
                        memory.sample()
                print(f"{len(pages)} sessions ready (clip uploaded, idle) in {time.time() - t0:.0f} s")
                if trainer is not None:
                    trainer.wait_until_training(300)
                    print(f"at the presses: {trainer.phase()}")
                cpu_before = (cpu_seconds(server.pid), trainer and cpu_seconds(trainer.proc.pid),
                              machine_cpu_seconds(), time.time())
                sent = press_all(pages)
                records = wait_all(pages, sent, args.timeout, memories, trainer)
                trainer_ran = trainer is not None and trainer.running()  # its CPU time is lost once it ends
                cpu_after = (cpu_seconds(server.pid), trainer_ran and cpu_seconds(trainer.proc.pid) or None,
                             machine_cpu_seconds(), time.time())
                results = [page.evaluate(RESULT) for page in pages]
                print(f"load average {os.getloadavg()[0]:.1f} after the last answer (this test's processes "
                      "and anything else on the machine)")
                used = [b - a if a is not None and b is not None else 0.0
                        for a, b in zip(cpu_before[:3], cpu_after[:3])]
                window = cpu_after[3] - cpu_before[3]
                training = (f"training job {used[1]:.0f} s" if trainer_ran else
                            "training job not counted (not running at the end)" if trainer else "no training job")
                print(f"CPU time from the presses to the last answer ({window:.0f} s × {os.cpu_count()} cores = "
                      f"{window * os.cpu_count():.0f} core-s): server {used[0]:.0f} s, {training}, "
                      f"browser and the rest {max(used[2] - used[0] - used[1], 0.0):.0f} s")
                if trainer is not None:
                    print(f"after the last answer: {trainer.phase()}")
                    if trainer.ended_at is not None:
                        print(f"  (it ended {trainer.ended_at - sent[0]:+.0f} s after the presses)")
                visible = {r["visible"] for r in records}
                if visible != {"visible"}:
                    print(f"note: page visibility {visible} (hidden pages check every second, not 0.1 s)")
                rows = [session_row(r, res, s) for r, res, (_, s) in zip(records, results, clips)]
                print_report(rows, clips, args.sessions)
                print(f"\nserver (streamlit and children): {memories[0].describe()}")
                if trainer is not None:
                    print(f"training job (separate process):  {memories[1].describe()}")
                browser.close()
        finally:
            if trainer is not None:
                trainer.stop()


if __name__ == "__main__":
    main()
