"""The Train page in a real browser: start a short run, watch the loss curve grow, stop it.

Screenshots go to ``$SER_SCREENSHOTS`` (default: a pytest tmp dir) so a person can look at them.
The server writes trained checkpoints to ``SER_CHECKPOINTS_DIR``, here a temporary folder: nothing
is written into the repository's ``checkpoints/``.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from browser import CHROMIUM_FLAGS, REPO, chromium_path, settle_time, streamlit_server, wait_idle

playwright = pytest.importorskip("playwright.sync_api")
TINY = "d_model=32 ff_dim=64 feature_layers=1 ccab_layers=1 fusion_layers=1"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(chromium_path() is None, reason="Debian chromium is not installed"),
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed"),
]


@pytest.fixture(scope="module")
def cache(shared_features_cache):
    """Overrides conftest's: this module's own jobs folder, features shared with the others."""
    return shared_features_cache


def _shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("SER_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _loss_points(page) -> int:
    """Points in the first trace ('batch loss') of the Training loss chart, read from the figure the
    browser holds (past 300 points the chart draws a line without markers, so markers can't be counted)."""
    chart = page.locator(".js-plotly-plot", has_text="Training loss")
    if chart.count() == 0:
        return 0
    return chart.first.evaluate("el => (el.data && el.data[0] && el.data[0].x) ? el.data[0].x.length : 0")


def _fill(page, label: str, value: str) -> None:
    """Type a new value and wait for the rerun it starts to finish and paint (``settle_time``).
    A fixed pause was not enough on a loaded machine: the rerun could start after the pause, so
    the next click raced it (the Start button's click was then lost)."""
    box = page.get_by_label(label, exact=True)
    box.fill(value)
    settle_time(page, lambda: box.press("Enter"))


def test_train_page_live_loss_curve_and_stop(cache, corpus, tmp_path):
    name = f"browser_test_{os.getpid()}_{int(time.time())}"
    trained = tmp_path / "trained"
    shots = _shots(tmp_path)
    try:
        with streamlit_server(env={"SER_CACHE_DIR": str(cache), "SER_CHECKPOINTS_DIR": str(trained)}) \
                as (url, _, _), \
                playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.goto(url + "/Train", wait_until="domcontentloaded")
            corpus_box = page.get_by_role("combobox", name="Corpus")
            corpus_box.wait_for(timeout=90_000)
            wait_idle(page)

            corpus_box.click()
            page.get_by_role("option", name="Manifest CSV").click()
            wait_idle(page)
            _fill(page, "Path on this machine", str(corpus))
            _fill(page, "Epochs", "1000")  # far longer than the test watches it: it must still be running
            _fill(page, "Batch size", "1")
            page.get_by_text("Advanced", exact=True).click()
            _fill(page, "Use at most this many utterances (0: all)", "12")
            _fill(page, "Model settings (key=value, space-separated)", TINY)
            _fill(page, "Checkpoint name", name)
            page.screenshot(path=str(shots / "train_settings.png"), full_page=True)
            page.locator(".st-key-train_start_button button").click()
            try:
                page.get_by_text(f"Run {name}: running").wait_for(timeout=60_000)
            except Exception:
                raise AssertionError(f"the run did not start\n{_what_happened(page)}") from None

            # Each poll's count is the one used: a chart being redrawn by the page's own refresh can
            # hold no data for a moment, so reading it a second time after the loop could see 0.
            deadline = time.time() + 300  # features are extracted first; a loaded machine is slow
            first = _loss_points(page)
            while first == 0 and time.time() < deadline:
                page.wait_for_timeout(250)
                first = _loss_points(page)
            assert first > 0, f"the loss curve never appeared\n{_what_happened(page)}"
            grown = first
            while grown <= first and time.time() < deadline:
                page.wait_for_timeout(250)  # the page polls the run by itself: no clicks here
                grown = _loss_points(page)
            assert grown > first, f"the loss curve did not grow ({first} points)\n{_what_happened(page)}"
            assert page.get_by_text("epoch", exact=False).count() > 0
            page.screenshot(path=str(shots / "train_running.png"), full_page=True)

            page.locator(".st-key-train_stop button").click()
            page.get_by_text(f"Run {name}: stopped").wait_for(timeout=90_000)
            wait_idle(page)
            assert page.locator(".st-key-train_resume button").count() == 1
            assert "Traceback" not in page.content()
            page.screenshot(path=str(shots / "train_stopped.png"), full_page=True)
            browser.close()
    finally:
        _stop_any_job()  # the run is detached from the server: it would outlive it
    assert not list((REPO / "checkpoints").glob(f"{name}.*"))  # written to SER_CHECKPOINTS_DIR only


def _what_happened(page) -> str:
    """The page's words and the run's log, so a failure in CI says why."""
    from ser_core import jobs

    job = jobs.current_job()
    log = job.log_tail(3000) if job is not None else "(no run on record)"
    status = f"{job.status} pid={job.pid}" if job is not None else ""
    return f"page:\n{page.inner_text('body')[-3000:]}\nrun {status}:\n{log}"


def _stop_any_job() -> None:
    from ser_core import jobs

    job = jobs.current_job()
    if job is None or not job.active:
        return
    jobs.request_stop()
    try:
        jobs.wait(job, timeout=60)
    except TimeoutError:
        os.killpg(job.pid, signal.SIGKILL)


def test_a_visitor_cannot_train_or_evaluate_until_the_teacher_password(tmp_path):
    """With a teacher password set, a browser (even on this machine) is a visitor: no training
    settings, no Start, no evaluation; a wrong password is refused, the right one unlocks."""
    shots = _shots(tmp_path)
    with streamlit_server(env={"SER_TEACHER_PASSWORD": "chalk-and-talk", "SER_CACHE_DIR": str(tmp_path / "cache"),
                               "SER_CHECKPOINTS_DIR": str(tmp_path / "trained")}) as (url, _, _), \
            playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.goto(url + "/Evaluate", wait_until="domcontentloaded")
        page.get_by_text("is for the teacher").first.wait_for(timeout=90_000)
        wait_idle(page)
        assert page.get_by_role("button", name="Evaluate").count() == 0
        assert page.get_by_label("Path on this machine").count() == 0

        page.locator('[data-testid="stSidebar"] a', has_text="Train").click()
        page.get_by_text("is for the teacher").first.wait_for(timeout=60_000)
        wait_idle(page)
        assert page.locator(".st-key-train_start_button").count() == 0
        assert page.get_by_label("Checkpoint name").count() == 0
        page.screenshot(path=str(shots / "train_visitor.png"), full_page=True)

        box = page.get_by_label("Teacher password", exact=True).and_(page.locator("input"))
        box.fill("guess")
        box.press("Enter")
        page.get_by_text("That is not the teacher password.").wait_for(timeout=30_000)
        assert page.locator(".st-key-train_start_button").count() == 0

        box = page.get_by_label("Teacher password", exact=True).and_(page.locator("input"))
        box.fill("chalk-and-talk")
        box.press("Enter")
        page.locator(".st-key-train_start_button").wait_for(timeout=30_000)
        page.get_by_text("Teacher mode is on").wait_for(timeout=30_000)
        wait_idle(page)  # the run that unlocked is over: the password box is gone, not just stale
        assert "chalk-and-talk" not in page.content()  # the password is never shown back
        page.screenshot(path=str(shots / "train_teacher.png"), full_page=True)
        browser.close()
