"""Run the real app (streamlit server) and drive it with headless Chromium (Playwright).

Used by the browser tests and by bench/bench_pipeline.py (cold start). Debian's chromium is used
(no browser download); the flags keep it off the network.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def streamlit_server(timeout: float = 90.0, env: dict[str, str] | None = None):
    """Start ``streamlit run app.py`` on a free loopback port; yields (url, process, start time)."""
    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"),
           "--server.headless", "true", "--server.address", "127.0.0.1", "--server.port", str(port),
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("streamlit exited:\n" + Path(log.name).read_text()[-3000:])
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.3)
        else:
            raise TimeoutError("streamlit did not become healthy in time")
        yield url, proc, started
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except Exception:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        os.unlink(log.name)


#: Streamlit's grey placeholder, shown while an element's code (tables, metrics, figures are
#: loaded lazily) or its first drawing is not there yet. A page is not settled while one is left.
PLACEHOLDER = '[data-testid="stSkeleton"]'


def wait_idle(page, timeout_ms: int = 120_000) -> None:
    """Wait until Streamlit has finished running the script (its status widget is gone) and every
    element is drawn (no grey placeholder left)."""
    page.wait_for_timeout(300)
    page.wait_for_function(
        f"() => !document.querySelector('[data-testid=\"stStatusWidget\"]') "
        f"&& !document.querySelector('{PLACEHOLDER}')",
        timeout=timeout_ms)


def open_expander(page, title: str) -> None:
    """Click an expander open and wait until its opening animation (half a second of height
    growing) has finished: a click aimed at its content while it still grows can land beside the
    widget on a loaded machine and be lost (seen with the deletion test's toggle)."""
    page.get_by_text(title).click()
    page.wait_for_function("() => document.getAnimations().every(a => a.playState !== 'running')")


# --- timing a user action to the settled page (tests and bench/bench_page.py) ----------------------
ARM = """() => {
  window.__settled = null;
  const app = document.querySelector('[data-testid="stApp"]');
  let running = false;
  const seen = () => {
    const state = app.getAttribute('data-test-script-state');
    if (state === 'running' && !running) { running = true; window.__running = performance.now(); }
    if (running && state === 'notRunning') {
      window.__finished = performance.now();
      observer.disconnect();
      // settled: two animation frames after the last grey placeholder is gone (new elements drawn)
      const drawn = () => document.querySelector('PLACEHOLDER')
        ? requestAnimationFrame(drawn)
        : requestAnimationFrame(() => requestAnimationFrame(() => { window.__settled = performance.now(); }));
      drawn();
    }
  };
  const observer = new MutationObserver(seen);
  observer.observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
  window.__armed = performance.now();
}""".replace("PLACEHOLDER", PLACEHOLDER)


VERBOSE = False


def settle_time(page, act, timeout_ms: int = 120_000) -> float:
    """Seconds from ``act()`` to the settled page (first waits for the script to be idle)."""
    page.wait_for_function(
        "() => document.querySelector('[data-testid=\"stApp\"]').getAttribute('data-test-script-state') "
        "!== 'running'", timeout=timeout_ms)
    page.wait_for_timeout(200)
    page.evaluate(ARM)
    start = page.evaluate("() => performance.now()")
    act()
    page.wait_for_function("() => window.__settled !== null", timeout=timeout_ms)
    parts = page.evaluate("() => [window.__running, window.__finished, window.__settled]")
    if VERBOSE:
        print(f"    to running {parts[0] - start:6.0f} ms · script {parts[1] - parts[0]:6.0f} ms · "
              f"paint {parts[2] - parts[1]:6.0f} ms")
    return (parts[2] - start) / 1000
