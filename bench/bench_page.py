"""What a user waits for in the browser: the page, not the function (headless Chromium, one run).

    python bench/bench_page.py [--moves 9] [--long 60]

Starts ``streamlit run app.py`` and drives it with Playwright. Prints, each as the median of
``--moves`` slider moves (the keyboard's left arrow on the slider: each move to a new value):
  * Analyze, 10 s clip: keep_ratio move → settled page (script finished, figures drawn). After a
    move the page runs the model at the next step in the same direction in the background
    (``ser_core.knob_ahead``), so every move but the first finds it ready, as stepping with the
    arrow keys or a slow drag does; the first move (nothing computed ahead) is printed too;
  * Compare k with 4 columns: one column's slider move → settled;
and once:
  * Models page: open → settled;
  * first analysis after the server started (models warming in the background or not);
  * a ``--long`` s clip uploaded and analysed on Analyze → settled (warm models);
  * Analyze's "Is this faithful?" on the 10 s clip: the click → its first sentence, and → every
    ranking's curve drawn (issue 11: ≤ 2 s), the click coming as soon as the view has opened
    (the test starts when it opens: ``ser_core.faithful_ahead``), and from the opening; then at
    another keep_ratio, the click 2 s after opening (a student reading the view first);
  * the server's resident memory at the end and at its peak.
Both clips carry a faint random dither (-80 dB), so no run finds their features in the disk cache
of an earlier run: every analysis here transcribes and encodes.
Measured 2026-12-04 (2 cores, idle, four runs): every ranking 1.64–1.96 s after a click as soon
as the view opened (2.2–2.55 s from the opening; before the test started on opening: 1.92–2.29 s
from the click), 0.21–0.22 s after a click 2 s after opening.
Targets (issue 12): slider ≤ 300 ms, Compare k ≤ 500 ms, long clip ≤ 8 s, first analysis ≤ 3 s,
Models ≤ 3 s. "Settled": the app's script state goes running → not running, no element still shows
Streamlit's grey placeholder (tables, metrics and figures are drawn by code the browser loads
lazily), then two animation frames (the browser has painted them).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

import soundfile as sf  # noqa: E402
from bench_whisper import synthesize  # noqa: E402  (same folder)
from browser import settle_time  # noqa: E402  (tests/browser.py)

def fresh(audio):
    """``audio`` with a faint dither from a new seed each run: other samples, so another cache key
    (the feature cache is keyed on the samples), and the same words."""
    import numpy as np

    noise = np.random.default_rng().normal(0.0, 1e-4, audio.shape).astype(audio.dtype)
    return audio + noise


def move_slider(page, slider, moves: int) -> list[float]:
    """Seconds per keyboard move of ``slider`` (a role=slider locator), one step each time towards
    the slider's farther end: every move is to a value not shown before (no result remembered from
    an earlier move; the model runs). At most as many moves as there are steps to that end."""
    now, low, high, step = (float(slider.get_attribute(a)) for a in ("value", "min", "max", "step"))
    key, room = ("ArrowLeft", now - low) if now - low >= high - now else ("ArrowRight", high - now)
    times = []
    for _ in range(min(moves, round(room / step))):
        slider.focus()
        times.append(settle_time(page, lambda: page.keyboard.press(key)))
    return times


def upload_and_analyze(page, url: str, clip: Path) -> float:
    page.goto(url + "/Analyze", wait_until="domcontentloaded")
    page.get_by_text("Analyze an utterance").wait_for(timeout=120_000)
    idle(page)
    page.get_by_text("Upload a file", exact=True).click()
    idle(page)
    page.locator("input[type=file]").first.set_input_files(str(clip))
    idle(page)
    return settle_time(page, lambda: page.get_by_role("button", name="Analyze").click(), 300_000)


def deletion_view(page, verbose: bool = False, pause: float = 0.0) -> tuple[float, float, float]:
    """Seconds from the click on "Run the deletion test" (Analyze's "Is this faithful?") to its
    first sentence on screen, and to the settled page (the fragment's run finished, every ranking's
    curve drawn: the same "settled" as every other figure here, no fixed wait added); and from the
    click that opened the view to the settled page. The test starts in the server when the view
    opens (``ser_core.faithful_ahead``); ``pause`` s pass between opening and the click (a student
    reading the view's caption; 0 = a click as soon as the view has opened)."""
    from browser import ARM, open_expander

    t_open = time.perf_counter()
    open_expander(page, "Is this faithful? (deletion test)")
    time.sleep(pause)
    page.evaluate(ARM)
    start = page.evaluate("() => performance.now()")
    t0 = time.perf_counter()
    page.get_by_text("Run the deletion test").click()
    # the caption under the first sentence (attention against random) says the rest is coming;
    # when the test was done before the click, the page draws everything at once
    page.get_by_text("probability of", exact=False).first.wait_for(timeout=120_000)
    first = time.perf_counter() - t0
    page.wait_for_function("() => window.__settled !== null", timeout=120_000)
    running, finished, settled = page.evaluate("() => [window.__running, window.__finished, window.__settled]")
    caption = page.get_by_text("model runs in", exact=False)
    assert caption.count() == 1, "the deletion view's last line is missing"
    if verbose:
        print(f"    to running {running - start:6.0f} ms · script {finished - running:6.0f} ms · "
              f"paint {settled - finished:6.0f} ms")
        print("    the page says:", caption.inner_text().split(";")[-1].strip())
    return first, (settled - start) / 1000, (settled - start) / 1000 + (t0 - t_open)


def close_deletion_view(page) -> None:
    """Turn the test off and close the view (as it was before :func:`deletion_view`)."""
    page.get_by_text("Run the deletion test").click()
    idle(page)
    page.get_by_text("Is this faithful? (deletion test)").click()
    idle(page)


def server_memory(pid: int) -> str:
    """The server process's resident memory now and at its peak (Linux /proc; elsewhere unknown)."""
    try:
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    except OSError:
        return "unknown on this system"
    mb = {k: int(status[k].split()[0]) // 1024 for k in ("VmRSS", "VmHWM")}
    return f"{mb['VmRSS']} MB / {mb['VmHWM']} MB"


def idle(page) -> None:
    from browser import wait_idle

    wait_idle(page)


def report(name: str, times: list[float], target: float) -> None:
    ms = [t * 1000 for t in times]
    print(f"{name:<44} median {statistics.median(ms):7.0f} ms   (min {min(ms):.0f}, max {max(ms):.0f}; "
          f"target ≤ {target * 1000:.0f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moves", type=int, default=9)
    ap.add_argument("--long", type=float, default=60.0, help="length of the long clip (s)")
    ap.add_argument("--verbose", action="store_true", help="print each move's parts")
    args = ap.parse_args()
    import browser as helpers  # tests/browser.py

    helpers.VERBOSE = args.verbose
    from browser import CHROMIUM_FLAGS, chromium_path, streamlit_server
    from playwright.sync_api import sync_playwright

    if chromium_path() is None:
        sys.exit("chromium is not installed")
    with tempfile.TemporaryDirectory() as tmp, streamlit_server() as (url, proc, started), \
            sync_playwright() as p:
        ten, long = Path(tmp) / "clip10s.wav", Path(tmp) / f"clip{args.long:.0f}s.wav"
        sf.write(ten, fresh(synthesize(10.0, Path(tmp))), 16000)
        sf.write(long, fresh(synthesize(args.long, Path(tmp))), 16000)
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})

        first = upload_and_analyze(page, url, ten)
        print(f"{'first analysis after start (10 s clip)':<44} {first * 1000:13.0f} ms   (target ≤ 3000; "
              f"server up {time.perf_counter() - started:.0f} s before the end of it)")
        slider = page.get_by_role("slider").first
        moves = move_slider(page, slider, args.moves)
        report("Analyze: keep_ratio move → settled", moves, 0.3)
        print(f"{'  its first move (nothing computed ahead)':<44} {moves[0] * 1000:13.0f} ms")

        # the sidebar link keeps the session (and its analysis); page.goto would start a new one
        page.locator('[data-testid="stSidebar"] a', has_text="Compare k").click()
        page.get_by_text("Compare keep ratios").wait_for(timeout=60_000)
        idle(page)
        page.locator('[data-testid="stRadio"] label', has_text="4").click()
        idle(page)

        report("Compare k (4 columns): slider move → settled",
               move_slider(page, page.get_by_role("slider").first, args.moves), 0.5)

        # back on Analyze (the sidebar keeps the session's 10 s analysis): the deletion test, then off again
        page.locator('[data-testid="stSidebar"] a', has_text="Analyze").click()
        page.get_by_text("Is this faithful? (deletion test)").wait_for(timeout=60_000)
        idle(page)
        time.sleep(3)  # whatever the slider moves computed ahead in the background is done
        deletion_first, deletion_all, from_open = deletion_view(page, args.verbose)
        print(f"{'Is this faithful?: first sentence':<44} {deletion_first * 1000:13.0f} ms   "
              "(clicked as soon as the view opened)")
        print(f"{'Is this faithful?: every ranking drawn':<44} {deletion_all * 1000:13.0f} ms   (target ≤ 2000)")
        print(f"{'  from opening the view':<44} {from_open * 1000:13.0f} ms")
        close_deletion_view(page)
        # again at another keep_ratio (nothing cached for it), clicked after reading the view for 2 s
        page.get_by_role("slider").first.focus()
        page.keyboard.press("ArrowRight")
        idle(page)
        time.sleep(3)  # whatever the slider move computed ahead in the background is done
        _, read_all, _ = deletion_view(page, args.verbose, pause=2.0)
        print(f"{'Is this faithful?, clicked 2 s after opening':<44} {read_all * 1000:13.0f} ms   "
              "(every ranking drawn)")
        close_deletion_view(page)

        t0 = time.perf_counter()  # a new page load: timed from here, to the last section drawn and idle
        page.goto(url + "/Models", wait_until="domcontentloaded")
        page.get_by_text("The papers' experiments").wait_for(timeout=180_000)
        idle(page)
        models = time.perf_counter() - t0
        print(f"{'Models page open → settled':<44} {models * 1000:13.0f} ms   (target ≤ 3000)")

        t_long = upload_and_analyze(page, url, long)
        print(f"{f'{args.long:.0f} s clip: Analyze → settled (warm)':<44} {t_long * 1000:13.0f} ms   "
              "(target ≤ 8000)")
        assert "Traceback" not in page.content()
        browser.close()
        print(f"{'server memory (resident now / at its peak)':<44} {server_memory(proc.pid)}")


if __name__ == "__main__":
    main()
