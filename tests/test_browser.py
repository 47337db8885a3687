"""The main flow in a real browser: open Analyze, upload a clip, see the prediction and the figures.

Screenshots go to ``$SER_SCREENSHOTS`` (default: a pytest tmp dir) so a person can look at them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from browser import ARM, CHROMIUM_FLAGS, REPO, chromium_path, open_expander, streamlit_server, wait_idle

playwright = pytest.importorskip("playwright.sync_api")
CHECKPOINT = REPO / "checkpoints" / "ks_transformer_demo.safetensors"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(chromium_path() is None, reason="Debian chromium is not installed"),
    pytest.mark.skipif(not CHECKPOINT.exists(), reason="shipped checkpoint missing"),
]


@pytest.fixture(scope="module")
def server():
    with streamlit_server() as (url, proc, _):
        yield url


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(),
                              args=CHROMIUM_FLAGS)  # Playwright gives each launch a fresh profile
        yield b
        b.close()


def _shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("SER_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _sample_wav() -> Path:
    wavs = sorted((REPO / "samples").rglob("*.wav"))
    assert wavs, "no sample clips committed"
    return wavs[0]


def _choose_checkpoint(page, name: str) -> None:
    """Pick ``name`` in the sidebar's checkpoint select box."""
    page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"] [role="combobox"]').first.click()
    page.get_by_role("option", name=name).click()
    wait_idle(page)


def _upload_and_analyze(browser, server: str, path: Path, height: int, checkpoint: str | None = None,
                        preview_shot: Path | None = None):
    """Open Analyze, choose "Upload a file", upload ``path`` and press Analyze (``preview_shot``:
    first check the file's waveform is shown, not yet analysed, and take a screenshot there)."""
    page = browser.new_page(viewport={"width": 1400, "height": height})
    page.goto(server + "/Analyze", wait_until="domcontentloaded")
    page.get_by_text("Analyze an utterance").wait_for(timeout=90_000)
    wait_idle(page)
    if checkpoint:
        _choose_checkpoint(page, checkpoint)
    page.get_by_text("Upload a file", exact=True).click()
    wait_idle(page)
    page.locator("input[type=file]").first.set_input_files(str(path))  # face models add a video input
    wait_idle(page)
    if preview_shot is not None:  # before Analyze: the picked file's waveform, said to be not analysed yet
        page.get_by_text("(not analysed yet)").wait_for(timeout=60_000)
        wait_idle(page)
        page.screenshot(path=str(preview_shot), full_page=True)
    page.get_by_role("button", name="Analyze").click()
    return page


SHIPPED = sorted(p.name for p in (REPO / "checkpoints").glob("*.safetensors"))
# One model per family of views: token attention (KS-Transformer), sparse CNN masks (MESM), fusion
# cells (MFSN). Every shipped model is drawn on the Analyze page by test_app's streamlit.testing test.
IN_BROWSER = [n for n in SHIPPED if n.split("_demo")[0] in ("ks_transformer", "mesm", "mfsn")]


@pytest.mark.parametrize("checkpoint", IN_BROWSER)
def test_upload_on_analyze_shows_prediction_and_figures(server, browser, tmp_path, checkpoint):
    """KS-Transformer, MESM and MFSN on the Analyze page in Chromium."""
    preview = _shots(tmp_path) / "analyze_preview.png" if checkpoint.startswith("ks_transformer") else None
    page = _upload_and_analyze(browser, server, _sample_wav(), 2200, checkpoint, preview_shot=preview)
    page.get_by_text("Prediction:").wait_for(timeout=180_000)
    wait_idle(page)
    page.locator(".js-plotly-plot").nth(1).wait_for(timeout=60_000)  # charts draw after the text
    assert page.locator(".js-plotly-plot").count() >= 2 and page.locator(".ser-probs").count() == 1
    # a rendered plotly figure has drawn SVG/canvas content
    assert page.locator(".js-plotly-plot .main-svg").count() > 0
    content = page.content()
    assert "Traceback" not in content and "Something went wrong" not in content
    page.screenshot(path=str(_shots(tmp_path) / f"analyze_{checkpoint}.png"), full_page=True)


def test_first_sample_right_on_analyze_and_every_view_agrees_on_what_was_kept(server, browser, tmp_path):
    """The page as a visitor first finds it: the first sample, analysed with its known transcript,
    comes out as labelled; then the word chips, the heatmap, the key bars, the green strip under the
    waveform and the spectrogram's strip all count the same kept words and seconds."""
    import re

    from ser_core.ui import label_name, sample_clips

    first = sample_clips()[0]
    page = browser.new_page(viewport={"width": 1400, "height": 2200})
    page.goto(server + "/Analyze", wait_until="domcontentloaded")
    page.get_by_text("Analyze an utterance").wait_for(timeout=90_000)
    wait_idle(page)
    page.get_by_role("button", name="Analyze").click()
    page.get_by_text("Prediction:").wait_for(timeout=180_000)
    wait_idle(page)
    shots = _shots(tmp_path)
    page.screenshot(path=str(shots / "analyze_first_sample.png"), full_page=True)
    body = page.inner_text("body")
    assert f"Prediction: {label_name(first['label'])}" in body, body[:2000]
    assert "words from the clip's known transcript" in body

    word_layer = re.search(r"Words by key importance in\s+(\S+)", body).group(1)
    kept_words, n_words = map(int, re.search(r"= kept \((\d+) of (\d+)\)", body).groups())
    frame_layer, kept_s, clip_s = re.search(r"speech kept by most heads of\s+(\S+?): ([\d.]+) s of ([\d.]+) s",
                                            body).groups()

    def shows_title(*parts: str) -> None:
        """Wait until one figure's title holds every part: a radio click reruns the script, and on a
        busy machine the rerun can start after wait_idle's first look, so the old figure is still there."""
        title = page.locator(".js-plotly-plot .gtitle")
        for part in parts:
            title = title.filter(has_text=part)
        try:
            title.first.wait_for(timeout=60_000)
        except playwright.TimeoutError:
            shown = page.locator(".js-plotly-plot .gtitle").all_text_contents()
            raise AssertionError(f"no figure title with {parts}; titles shown: {shown}") from None

    # the heatmap starts on the first cross-modal key-sparse layer: the words' layer here
    shows_title(word_layer, f"{kept_words} of {n_words} keys kept")
    page.get_by_role("radio", name="Key importance").click()
    shows_title(f"{kept_words} kept / {n_words}")
    wait_idle(page)
    page.get_by_role("radio", name="Spectrogram").click()
    shows_title(f"green strip = kept keys of {frame_layer} ({kept_s} s of {clip_s} s)")
    wait_idle(page)
    page.screenshot(path=str(shots / "analyze_first_sample_spectrogram.png"), full_page=True)
    assert "Traceback" not in page.content()
    page.close()


def test_deletion_view_answers_attention_against_random_then_adds_the_attributions(server, browser, tmp_path):
    """Analyze → "Is this faithful?": the sentence comes first, then every ranking's curve."""
    page = browser.new_page(viewport={"width": 1400, "height": 3200})
    page.goto(server + "/Analyze", wait_until="domcontentloaded")
    page.get_by_role("button", name="Analyze").wait_for(timeout=90_000)
    wait_idle(page)
    page.get_by_role("button", name="Analyze").click()
    page.get_by_text("Prediction:").wait_for(timeout=180_000)
    wait_idle(page)
    open_expander(page, "Is this faithful? (deletion test)")
    page.get_by_text("Run the deletion test").click()
    playwright.expect(page.locator(".st-key-analyze_faithful input")).to_be_checked()
    page.get_by_text("model runs in", exact=False).wait_for(timeout=180_000)  # the last line it writes
    wait_idle(page)
    text = page.inner_text("body")
    assert "random" in text and "probability of" in text
    assert "being added" not in text  # the interim caption is gone once every ranking is in
    assert "Integrated Gradients" in text and "model runs in" in text
    legend = page.eval_on_selector_all(".js-plotly-plot .legendtext", "els => els.map(e => e.textContent)")
    assert any(t.startswith("attention") for t in legend) and any(t.startswith("random") for t in legend)
    assert any(t.startswith("Integrated Gradients") for t in legend)
    assert "Traceback" not in page.content()
    page.screenshot(path=str(_shots(tmp_path) / "analyze_deletion_test.png"), full_page=True)
    # off and closed; at the next keep_ratio the view is opened and read before the press: the test
    # ran in the background since the view opened (ser_core.faithful_ahead), and the press shows it
    page.get_by_text("Run the deletion test").click()
    playwright.expect(page.locator(".st-key-analyze_faithful input")).not_to_be_checked()
    wait_idle(page)
    page.get_by_text("Is this faithful? (deletion test)").click()
    wait_idle(page)
    page.get_by_role("slider").first.focus()
    page.keyboard.press("ArrowLeft")
    wait_idle(page)
    open_expander(page, "Is this faithful? (deletion test)")
    wait_idle(page)
    page.wait_for_timeout(3000)  # a student reading the view's caption
    page.get_by_text("Run the deletion test").click()
    playwright.expect(page.locator(".st-key-analyze_faithful input")).to_be_checked()
    try:
        page.get_by_text("model runs in", exact=False).wait_for(timeout=120_000)
    except playwright.TimeoutError:
        if page.get_by_text("Details for a bug report").count():
            page.get_by_text("Details for a bug report").click()
        pytest.fail("the deletion view never finished; the page says: " + page.inner_text("body")[-800:])
    wait_idle(page)
    text = page.inner_text("body")
    assert "probability of" in text and "being added" not in text and "Traceback" not in page.content()
    assert len(page.eval_on_selector_all(".js-plotly-plot .legendtext", "els => els")) >= len(legend)


def test_a_45_s_upload_finishes_with_its_maps_at_display_resolution(server, browser, tmp_path):
    """A 45 s file (longer than explanations accept): analysed and drawn, its heatmap from the
    maps kept at display resolution, and the deletion test says why it is not offered."""
    import numpy as np
    import soundfile as sf

    audio, sr = sf.read(_sample_wav(), dtype="float32")
    clip = tmp_path / "forty_five_seconds.wav"
    sf.write(clip, np.resize(audio, 45 * sr), sr)
    page = _upload_and_analyze(browser, server, clip, 2600)
    page.get_by_text("Prediction:").wait_for(timeout=240_000)
    wait_idle(page)
    page.locator(".js-plotly-plot").nth(1).wait_for(timeout=60_000)
    titles = page.eval_on_selector_all(".js-plotly-plot .gtitle", "els => els.map(e => e.textContent)")
    assert any("max-pooled over" in t for t in titles), titles
    open_expander(page, "Is this faithful? (deletion test)")
    page.get_by_text("run on clips up to", exact=False).wait_for(timeout=30_000)
    assert "Traceback" not in page.content()
    page.screenshot(path=str(_shots(tmp_path) / "analyze_45s_upload.png"), full_page=True)


def test_sparse_masks_page_shows_kept_points_and_flops(server, browser, tmp_path):
    if not (REPO / "checkpoints" / "mesm_demo.safetensors").exists():
        pytest.skip("no shipped MESM checkpoint")
    page = browser.new_page(viewport={"width": 1400, "height": 5600})  # the whole page in the screenshots
    page.goto(server + "/Sparse_masks", wait_until="domcontentloaded")
    page.get_by_role("button", name="Analyze").wait_for(timeout=90_000)
    wait_idle(page)
    page.get_by_role("button", name="Analyze").click()  # the first sample has a face video
    page.get_by_text("Kept points per layer").wait_for(timeout=180_000)
    wait_idle(page)
    page.locator(".js-plotly-plot").nth(5).wait_for(timeout=60_000)
    page.screenshot(path=str(_shots(tmp_path) / "sparse_masks.png"), full_page=True)
    assert page.locator('[data-testid="stMetric"]').count() == 3
    assert page.locator(".js-plotly-plot .main-svg").count() >= 6
    assert "Traceback" not in page.content()
    # beside each mask, Integrated Gradients of the same points
    page.get_by_text("Beside each mask: Integrated Gradients of the same points").click()
    page.get_by_text("of the attribution").first.wait_for(timeout=120_000)
    wait_idle(page)
    assert "Traceback" not in page.content()
    page.screenshot(path=str(_shots(tmp_path) / "sparse_masks_attribution.png"), full_page=True)


def test_models_page_renders_every_checkpoint(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 3000})
    page.goto(server + "/Models", wait_until="domcontentloaded")
    page.get_by_text("The papers' experiments").wait_for(timeout=180_000)
    wait_idle(page)
    content = page.content()
    assert "Traceback" not in content
    for name in SHIPPED:
        assert name in content
    page.screenshot(path=str(_shots(tmp_path) / "models.png"), full_page=True)


def _angry_sample() -> Path:
    """"We were all livid after the exam", said angrily (one of the sample clips)."""
    return REPO / "samples" / "wav" / "demo_00384.wav"


def test_classroom_from_record_to_result(server, browser, tmp_path):
    """Chromium records from a fake microphone that plays a sample clip (``--use-file-for-fake-
    audio-capture``): a real recording through the real widget, then the large result."""
    url = server
    shots = _shots(tmp_path)
    microphone = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                  f"--use-file-for-fake-audio-capture={_angry_sample()}"]
    # a second Chromium of the same Playwright, with the fake microphone
    recorder = browser.browser_type.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS + microphone)
    try:
        context = recorder.new_context(viewport={"width": 1400, "height": 1500})
        context.grant_permissions(["microphone"], origin=url)
        page = context.new_page()
        page.goto(url + "/Classroom", wait_until="domcontentloaded")
        page.get_by_text("Press the microphone and say one sentence").wait_for(timeout=90_000)
        wait_idle(page)
        page.screenshot(path=str(shots / "classroom_start.png"), full_page=True)

        page.get_by_role("button", name="Record").click()
        page.wait_for_timeout(3500)  # the fake microphone plays the 2.8 s sample
        page.get_by_role("button", name="Stop recording").click()
        try:
            page.locator(".classroom-emotion").wait_for(timeout=180_000)
        except Exception:
            page.screenshot(path=str(shots / "classroom_failed.png"), full_page=True)
            raise AssertionError("no result after recording; the page said:\n" + page.inner_text("body")[-2000:])
        wait_idle(page)
        page.locator(".js-plotly-plot .main-svg").first.wait_for(timeout=60_000)
        emotion = page.locator(".classroom-emotion").inner_text()
        assert emotion in {"Angry", "Happy", "Neutral", "Sad"}
        explanation = page.locator(".classroom-explain").inner_text()
        assert explanation.startswith(f"The model hears {emotion.lower()}")
        assert page.locator(".classroom-words").count() == 1
        assert "Traceback" not in page.content()
        page.screenshot(path=str(shots / "classroom_result.png"), full_page=True)
    finally:
        recorder.close()


def _bad_files(folder: Path) -> list[tuple[Path, str]]:
    """The bad-input set, each with words its message must contain."""
    import io
    import struct

    import numpy as np
    import soundfile as sf

    def wav(x, sr, subtype=None) -> bytes:
        buf = io.BytesIO()
        sf.write(buf, x, sr, format="WAV", subtype=subtype)
        return buf.getvalue()

    good = wav((0.3 * np.sin(np.arange(32000) / 5)).astype(np.float32), 16000)
    cases = [
        ("empty.wav", b"", "empty"),
        ("random.wav", np.random.default_rng(0).bytes(20000), "could not be read as audio"),
        ("one_sample.wav", wav(np.zeros(1, dtype=np.float32), 16000), "at least 0.1 s"),
        ("truncated.wav", good[:30], "could not be read as audio"),
        ("nan.wav", wav(np.full(16000, np.nan, dtype=np.float32), 16000, "FLOAT"), "invalid samples"),
        ("notes.mp3", b"this is not audio at all\n" * 40, "could not be read as audio"),
        ("ten_minutes.wav", wav(np.zeros(8000 * 600, dtype=np.float32), 8000, "PCM_U8"), "the limit is"),
        # a header whose data chunk claims ~4 GB (hours of audio) over 2 kB of samples
        ("claims_hours.wav", good[:40] + struct.pack("<I", 0xFFFFFF00) + good[44:2044], "at least 0.1 s"),
        ("8ch_96k_tone.wav",
         wav((0.3 * np.sin(np.arange(96000 * 2) / 7)[:, None] * np.ones((1, 8))).astype(np.float32), 96000),
         "no speech"),
    ]
    out = []
    for name, data, words in cases:
        (folder / name).write_bytes(data)
        out.append((folder / name, words))
    return out


def test_bad_files_through_the_upload_widget_each_get_a_message_and_nothing_is_lost(server, browser, tmp_path):
    """Each bad file gets its message; the next upload in the same session works; meanwhile
    another session's page still answers."""
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(server + "/Analyze", wait_until="domcontentloaded")
    page.get_by_text("Analyze an utterance").wait_for(timeout=90_000)
    wait_idle(page)
    page.get_by_text("Upload a file", exact=True).click()
    wait_idle(page)
    other = browser.new_page()
    for path, words in _bad_files(tmp_path) + [(_sample_wav(), None)]:
        # the upload's rerun must be over before Analyze is pressed (a press while the file is
        # still being sent can be lost): the file's chip without its spinner, then the rerun seen
        # starting and ending (a very fast one may start and end in one frame, hence the bound)
        page.evaluate(ARM)
        page.locator("input[type=file]").first.set_input_files(str(path))
        page.locator('[data-testid="stFileChipName"]', has_text=path.name).wait_for(timeout=60_000)
        page.locator('[data-testid="stFileChipIconSpinner"]').wait_for(state="detached", timeout=60_000)
        try:
            page.wait_for_function("() => window.__settled !== null", timeout=15_000)
        except playwright.TimeoutError:
            pass
        wait_idle(page)
        page.get_by_role("button", name="Analyze").click()
        errors = page.locator('[data-testid="stAlertContentError"]')
        answer = page.get_by_text("Prediction:").first if words is None else errors.filter(has_text=words).first
        try:
            answer.wait_for(timeout=180_000)
        except Exception:  # say what the page showed instead
            raise AssertionError(f"{path.name}: no answer; the page shows:\n{page.inner_text('body')[-2000:]}")
        wait_idle(page)
        if words is None:  # the good clip after all of them: a prediction, no message
            page.get_by_text("Prediction:").first.wait_for(timeout=60_000)
            assert errors.count() == 0
        else:  # neighbours in the list have different messages: this one is the current file's
            errors.filter(has_text=words).first.wait_for(timeout=60_000)
            assert errors.count() == 1, (path.name, page.inner_text("body")[-1500:])
        assert "Traceback" not in page.content()
        if path.name == "ten_minutes.wav":  # the server still answers another visitor
            other.goto(server + "/Models", wait_until="domcontentloaded")
            other.get_by_text("Models").first.wait_for(timeout=60_000)
    page.locator(".js-plotly-plot .main-svg").first.wait_for(timeout=60_000)
    page.screenshot(path=str(_shots(tmp_path) / "analyze_after_bad_files.png"), full_page=True)
    other.close()
