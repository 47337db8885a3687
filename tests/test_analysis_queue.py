"""ser_core.analysis_queue: a fair line for analyses (FIFO, N at once, places and estimates,
one request per session, cancellation of waiting and running work), the input limits checked
before decoding, and the pipeline's cooperative stop. Fake work in threads: no model."""

from __future__ import annotations

import io
import os
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from ser_core import limits, ui  # ui imports streamlit and torch: once, at collection
from ser_core.analysis_queue import GONE, REPLACED, AnalysisQueue, Cancelled, Place
from ser_core.errors import InputError
from ser_core.paths import SAMPLES_DIR
from ser_core.pipeline import Analyzer

WAIT = 2.0  # seconds any event below may take at most


class Clock:
    """A clock the test moves by hand (for exact estimates)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def until(condition, timeout: float = WAIT) -> None:
    """Wait until ``condition()`` holds (fail after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def in_thread(line: AnalysisQueue, session: str, work) -> dict:
    """``line.run(session, work)`` in a thread; the returned dict gets "result" or "error"."""
    outcome: dict = {}

    def target():
        try:
            outcome["result"] = line.run(session, work, poll_s=0.01)
        except Cancelled as exc:
            outcome["error"] = exc

    outcome["thread"] = threading.Thread(target=target, daemon=True)
    outcome["thread"].start()
    return outcome


def stepping_work(started: threading.Event, steps: int = 400):
    """Fake analysis: many short steps, checking ``should_stop`` between them."""

    def work(should_stop):
        started.set()
        for _ in range(steps):
            if should_stop():
                raise Cancelled()
            time.sleep(0.005)
        return "finished"

    return work


def holding(line: AnalysisQueue, session: str = "holder") -> tuple[threading.Event, dict]:
    """A run that keeps its slot until the returned event is set."""
    release, started = threading.Event(), threading.Event()

    def work(should_stop):
        started.set()
        release.wait(WAIT)
        return session

    outcome = in_thread(line, session, work)
    assert started.wait(WAIT)
    return release, outcome


def test_first_come_first_served():
    line = AnalysisQueue(slots=1)
    release, _ = holding(line)
    order: list[str] = []
    runs = []
    for i, name in enumerate(["s1", "s2", "s3", "s4"]):
        runs.append(in_thread(line, name, lambda stop, name=name: order.append(name)))
        until(lambda: line.counts()[1] == i + 1)  # in line before the next one comes
    release.set()
    for run in runs:
        run["thread"].join(WAIT)
    assert order == ["s1", "s2", "s3", "s4"]
    assert line.counts() == (0, 0)


def test_at_most_n_run_at_once():
    line = AnalysisQueue(slots=2)
    lock, now, most = threading.Lock(), [0], [0]

    def work(stop):
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        time.sleep(0.05)
        with lock:
            now[0] -= 1
        return True

    runs = [in_thread(line, f"s{i}", work) for i in range(6)]
    for run in runs:
        run["thread"].join(WAIT)
    assert all(run.get("result") for run in runs)
    assert most[0] == 2


def test_place_and_estimate_from_the_mean_of_recent_runs():
    clock = Clock()
    line = AnalysisQueue(slots=1, first_guess_s=10.0, clock=clock)
    assert line.mean_seconds() == 10.0  # no run yet: the first guess
    for session, seconds in (("a", 4.0), ("b", 6.0)):  # two completed runs: mean 5 s
        ticket = line.submit(session)
        assert line.place(ticket) is None  # it runs at once: no place in line
        clock.now += seconds
        line.finish(ticket, completed=True)
    stopped = line.submit("c")
    clock.now += 50.0
    line.finish(stopped)  # not completed (failed or cancelled): does not count
    assert line.mean_seconds() == 5.0
    line.submit("running")
    clock.now += 2.0  # the running one needs about 3 s more
    second, third = line.submit("d"), line.submit("e")
    assert line.place(second) == Place(ahead=1, wait_s=3.0)
    assert line.place(third) == Place(ahead=2, wait_s=8.0)
    assert line.place(third).message() == "Waiting: 2 ahead of you, about 8 s."
    clock.now += 10.0  # the running one is late: "any moment now", never a negative wait
    assert line.place(second).message() == "Waiting: 1 ahead of you, any moment now."


def test_estimate_with_two_slots():
    clock = Clock()
    line = AnalysisQueue(slots=2, first_guess_s=6.0, clock=clock)
    line.submit("r1")
    clock.now += 4.0
    line.submit("r2")
    waiting = [line.submit(f"w{i}") for i in range(3)]
    # slots free after 2 s (r1) and 6 s (r2); then w0 → 2 + 6 = 8 s
    assert [line.place(t).wait_s for t in waiting] == [2.0, 6.0, 8.0]
    assert [line.place(t).ahead for t in waiting] == [2, 3, 4]


def test_a_second_request_from_a_session_takes_over_its_place():
    line = AnalysisQueue(slots=1)
    running = line.submit("x")
    mine, other = line.submit("me"), line.submit("other")
    newer = line.submit("me")
    assert mine.cancelled and mine.reason == REPLACED
    with pytest.raises(Cancelled, match="new analysis"):
        line.wait_turn(mine, 0)
    assert line.place(newer).ahead == 1  # the first one's place, ahead of "other"
    assert line.place(other).ahead == 2
    # a running request is stopped at its next step; the new one joins the end of the line
    again = line.submit("x")
    assert running.should_stop() and running.reason == REPLACED
    assert line.place(again).ahead == 3
    line.finish(running)
    assert line.wait_turn(newer, 0)


def test_cancel_a_waiting_request_and_the_others_move_up():
    line = AnalysisQueue(slots=1)
    line.submit("a")
    b, c, d = (line.submit(s) for s in "bcd")
    assert [line.place(t).ahead for t in (b, c, d)] == [1, 2, 3]
    assert line.cancel("c")
    assert [line.place(t).ahead for t in (b, d)] == [1, 2]
    assert line.place(c) is None
    with pytest.raises(Cancelled):
        line.wait_turn(c, 0)
    assert not line.cancel("nobody")


def test_cancel_a_running_request_stops_it_at_its_next_step_and_frees_the_slot():
    line = AnalysisQueue(slots=1)
    started = threading.Event()
    first = in_thread(line, "a", stepping_work(started))
    assert started.wait(WAIT)
    second = in_thread(line, "b", lambda stop: "b ran")
    until(lambda: line.counts() == (1, 1))
    t0 = time.monotonic()
    assert line.cancel("a")
    first["thread"].join(WAIT)
    second["thread"].join(WAIT)
    assert isinstance(first.get("error"), Cancelled)
    assert second.get("result") == "b ran"
    assert time.monotonic() - t0 < 0.5  # stopped at the next step, not after 400 of them
    assert line.counts() == (0, 0)


def test_a_session_that_goes_away_is_cancelled():
    open_tabs = {"a", "b", "c"}
    line = AnalysisQueue(slots=1, is_active=lambda session: session in open_tabs)
    started = threading.Event()
    first = in_thread(line, "a", stepping_work(started))
    assert started.wait(WAIT)
    third = line.submit("c")  # waits behind a
    second = in_thread(line, "b", lambda stop: "b ran")
    until(lambda: line.counts() == (1, 2))
    open_tabs.discard("c")  # a waiting tab closes: it leaves the line
    with pytest.raises(Cancelled, match="tab"):
        line.wait_turn(third, 0)
    assert line.counts() == (1, 1)
    open_tabs.discard("a")  # the running tab closes: its work stops at the next step
    first["thread"].join(WAIT)
    second["thread"].join(WAIT)
    assert str(first.get("error")) == GONE
    assert second.get("result") == "b ran"


def test_waiters_do_not_wake_each_other_while_nothing_moves():
    """Waiting requests sleep until their poll or a change: a waiter that looks and finds nothing
    changed wakes nobody (else each woken waiter would wake all the others again, a loop that
    kept the server's CPU busy while a classroom waited). Counted by the line's session checks
    while one run holds the only slot for 0.6 s: about waiters × polls × line length."""
    checks = []

    def is_active(session):
        checks.append(session)
        return True

    line = AnalysisQueue(slots=1, is_active=is_active)
    hold = threading.Event()
    first = in_thread(line, "first", lambda should_stop: hold.wait(WAIT))
    until(lambda: line.counts() == (1, 0))
    waiters = []
    for i in range(8):
        outcome: dict = {}

        def target(session=f"s{i}", outcome=outcome):
            outcome["result"] = line.run(session, lambda should_stop: True, poll_s=0.1)

        outcome["thread"] = threading.Thread(target=target, daemon=True)
        outcome["thread"].start()
        waiters.append(outcome)
    until(lambda: line.counts() == (1, 8))
    checks.clear()
    time.sleep(0.6)
    idle_checks = len(checks)
    hold.set()
    for outcome in [first] + waiters:
        outcome["thread"].join(WAIT)
        assert outcome.get("result") is True
    # 8 waiters poll about 6 times each in 0.6 s, look at the line twice per poll (before and after
    # the wait) and check the 8 waiting sessions each time: 8 × 6 × 2 × 8 ≈ 770 (752 measured)
    assert idle_checks < 2000, f"{idle_checks} session checks in 0.6 s while nothing moved"


def test_work_that_fails_frees_its_slot():
    line = AnalysisQueue(slots=1)

    def broken(stop):
        raise InputError("bad clip")

    with pytest.raises(InputError):
        line.run("a", broken)
    assert line.counts() == (0, 0)
    assert line.run("b", lambda stop: 7) == 7


def test_slots_default_to_one_per_core(monkeypatch):
    monkeypatch.delenv("SER_MAX_ANALYSES", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert limits.max_analyses() == 2
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    assert limits.max_analyses() == 8
    monkeypatch.setenv("SER_MAX_ANALYSES", "3")
    assert limits.max_analyses() == 3
    monkeypatch.setenv("SER_MAX_ANALYSES", "many")
    with pytest.raises(InputError, match="SER_MAX_ANALYSES"):
        limits.max_analyses()


# --- limits checked before decoding ---------------------------------------------------------


def test_an_oversized_upload_is_refused_before_decoding(monkeypatch):
    monkeypatch.setenv("SER_MAX_BYTES", "1000")

    def decoder(data):
        raise AssertionError("the upload was decoded")

    with pytest.raises(InputError, match="the limit is 1.0 kB"):
        limits.check_upload(b"\0" * 5000, seconds_of=decoder)
    limits.check_upload(b"\0" * 500, seconds_of=lambda data: None)  # under the limit: passes


def test_the_page_helper_refuses_before_queueing_or_decoding(monkeypatch):
    monkeypatch.setenv("SER_MAX_BYTES", "1000")
    monkeypatch.setattr(limits, "header_seconds", lambda data: pytest.fail("header read"))
    monkeypatch.setattr(ui, "get_analyzer", lambda checkpoint: pytest.fail("analyzer called"))
    monkeypatch.setattr(ui, "run_queued", lambda *a, **k: pytest.fail("queued"))
    with pytest.raises(InputError, match="limit is"):
        ui.analyze_queued("any.safetensors", b"\0" * 5000)


def test_a_clip_whose_header_is_too_long_is_refused(monkeypatch):
    monkeypatch.setenv("SER_MAX_SECONDS", "2")
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros((5 * 16000, 1), np.float32), 16000, format="WAV")
    with pytest.raises(InputError, match="5.0 s long; the limit is 2 s"):
        limits.check_upload(buffer.getvalue())


def test_without_a_script_run_the_work_runs_at_once():
    assert ui.run_queued(lambda should_stop: ("ran", should_stop())) == ("ran", False)


# --- the pipeline's cooperative stop --------------------------------------------------------


class NoExtractor:
    def extract(self, *args, **kwargs):
        raise AssertionError("the encoders ran after the stop")


def bare_analyzer():
    """An Analyzer without a model: enough for the steps before the encoders."""
    analyzer = Analyzer.__new__(Analyzer)
    analyzer.extractor = NoExtractor()
    return analyzer


def test_analyze_stops_before_decoding_when_asked():
    with pytest.raises(Cancelled):
        bare_analyzer().analyze(b"not audio at all", should_stop=lambda: True)


def test_analyze_stops_between_decoding_and_the_encoders():
    answers = iter([False, True])
    clip = sorted((SAMPLES_DIR / "wav").glob("*.wav"))[0]
    with pytest.raises(Cancelled):
        bare_analyzer().analyze(clip.read_bytes(), should_stop=lambda: next(answers))


def test_a_cancelled_analysis_stops_inside_whisper_and_between_the_encoders(cache, monkeypatch):
    from ser_core import asr
    from ser_core.audio import load_audio
    from ser_core.features import FeatureExtractor

    class Stop(Exception):
        pass

    def stop():
        raise Stop

    audio = load_audio(sorted((SAMPLES_DIR / "wav").glob("*.wav"))[0])
    with pytest.raises(Stop):  # asked after Whisper's first segment: nothing after it is decoded
        asr.transcribe(audio, stop_if_asked=stop)
    extractor = FeatureExtractor(device="cpu")
    steps = []
    encode_speech = extractor.speech.encode
    # the encoders are shared by every extractor of the process: patched for this test only
    monkeypatch.setattr(extractor.speech, "encode", lambda x: steps.append("speech") or encode_speech(x))
    monkeypatch.setattr(extractor.text_model, "encode_words",
                        lambda words, **kw: pytest.fail("the text encoder ran after the stop"))
    with pytest.raises(Stop):  # the tab went away while the speech encoder ran
        extractor.extract(audio, transcript="we were all livid",
                          stop_if_asked=lambda: steps and stop())
    assert steps == ["speech"]


def test_work_in_a_page_stops_when_its_tab_has_gone(monkeypatch):
    ui.stop_if_tab_closed()  # outside a script run: nothing to stop
    monkeypatch.setattr(ui, "session_id", lambda: "tab-1")
    open_tabs = {"tab-1"}
    monkeypatch.setattr(ui, "_session_is_active", lambda session: session in open_tabs)
    ui.stop_if_tab_closed()
    open_tabs.clear()
    with pytest.raises(Cancelled):
        ui.stop_if_tab_closed()


def _waiting_page():
    """A page that runs fake work in the shared line and writes what its status box said, when
    its spinner started and when the work ran."""
    import contextlib

    import streamlit as st

    from ser_core import ui

    said = []

    class Box:
        def info(self, text, icon=None):
            said.append(text)

        def empty(self):
            said.append("(cleared)")

    real_spinner = st.spinner

    @contextlib.contextmanager
    def spinner(text, **kwargs):
        said.append(f"(spinner: {text})")
        with real_spinner(text, **kwargs):
            yield

    st.spinner = spinner
    try:
        st.write(ui.run_queued(lambda should_stop: said.append("(work)") or "ran", status_box=Box(),
                               spinner="Working…"))
    finally:
        st.spinner = real_spinner
    st.write(" | ".join(said))


def test_a_page_waits_its_turn_and_says_so():
    from streamlit.testing.v1 import AppTest

    line = ui.analysis_queue()  # the line the page uses (one per server process)
    holders = [line.submit(f"another visitor {i}") for i in range(line.slots)]  # every slot taken

    def release_when_the_page_waits():
        until(lambda: line.counts() == (line.slots, 1))
        for holder in holders:
            line.finish(holder, completed=True)

    releaser = threading.Thread(target=release_when_the_page_waits, daemon=True)
    releaser.start()
    try:
        at = AppTest.from_function(_waiting_page, default_timeout=10).run()
    finally:
        for holder in holders:
            line.finish(holder)
        releaser.join(WAIT)
    assert not at.exception
    result, said = (m.value for m in at.markdown)
    assert result == "ran"
    assert said.startswith(f"Waiting: {line.slots} ahead of you, "), said
    # a still message while waiting; the spinner only once the work runs, and the work inside it
    assert said.endswith("(cleared) | (spinner: Working…) | (work)"), said
    assert said.count("(spinner") == 1
    assert line.counts() == (0, 0)


def _os_thread_ticks() -> dict[int, int]:
    """CPU ticks (user + system) of each of this process's OS threads, by thread id."""
    import os

    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        out[int(tid)] = int(fields[11]) + int(fields[12])
    return out


def _own_and_helper_ticks(work, older: set[int]) -> tuple[int, int]:
    """CPU ticks of the calling thread, and of the threads started after ``older`` was taken
    (the math library's helpers for this thread), while ``work()`` ran. Threads of other tests
    that are still running were there before and are not counted."""
    me = threading.get_native_id()
    before = _os_thread_ticks()
    work()
    after = _os_thread_ticks()
    spent = {t: after[t] - before.get(t, 0) for t in after}
    return spent.get(me, 0), sum(v for t, v in spent.items() if t != me and t not in older)


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads per-thread CPU time from /proc")
def test_the_one_math_thread_policy_holds_in_threads_started_later(monkeypatch):
    """The server's policy (ui._one_thread_per_analysis → limits.set_math_threads(1)) must hold in
    the new thread of every later rerun: the math library's matrix products follow
    torch.set_num_threads only in the thread that called it. Analyzer applies it per model run."""
    import torch

    before = torch.get_num_threads()
    a = torch.randn(1000, 1000)
    seen: list[tuple[int, int]] = []

    def in_a_new_thread() -> None:
        older = set(_os_thread_ticks())

        def work() -> None:
            limits.apply_math_threads()
            a @ a  # the math library's helper threads (if any) start
            seen.append(_own_and_helper_ticks(lambda: [a @ a for _ in range(40)], older))

        t = threading.Thread(target=work)
        t.start()
        t.join()

    monkeypatch.setattr(limits, "_math_threads", None)
    try:
        limits.set_math_threads(1)
        in_a_new_thread()
        own, helpers = seen[-1]
        assert own > 0 and helpers <= 0.1 * own, seen  # the thread did the work alone
        # a policy asked at each run (the server's: every core while one analysis runs alone)
        running = [1]
        limits.set_math_threads(lambda: 2 if running[0] <= 1 else 1)
        assert torch.get_num_threads() == 2
        running[0] = 2
        limits.apply_math_threads()
        assert torch.get_num_threads() == 1
        # and an analysis applies it in its own thread before anything else runs
        calls = []
        monkeypatch.setattr(limits, "apply_math_threads", lambda: calls.append(threading.get_ident()))
        with pytest.raises(InputError):
            bare_analyzer().analyze(b"not audio at all")
        assert calls == [threading.get_ident()]
    finally:
        monkeypatch.undo()
        limits.set_math_threads(None)
        torch.set_num_threads(before)
