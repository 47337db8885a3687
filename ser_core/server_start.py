"""What the server does once, when ``streamlit run app.py`` starts it (``app.py``'s lifespan).

The models are loaded in a background thread from the moment the server listens, so that the
first visitor's analysis does not wait for the imports (transformers alone takes ~5 s on 2
cores) and the model files. ``ser_core.ui`` is imported in that thread too: importing it pulls
in torch, and the server should answer its health check and first page meanwhile.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)

_started = threading.Event()

#: The server's own background threads (this module's, and ``ui``'s warm-up).
BACKGROUND_THREADS = frozenset({"ser-server-start", "ser-warm-up"})


class QuietBackgroundThreads(logging.Filter):
    """Streamlit warns "missing ScriptRunContext" each time a cached function runs outside a
    page's script run; the server's background threads do so on purpose, and a teacher's
    terminal would fill with it. Only their records are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return threading.current_thread().name not in BACKGROUND_THREADS


def quiet_background_threads() -> None:
    """Install :class:`QuietBackgroundThreads` on Streamlit's script-context logger (once)."""
    logger = logging.getLogger("streamlit.runtime.scriptrunner_utils.script_run_context")
    if not any(isinstance(f, QuietBackgroundThreads) for f in logger.filters):
        logger.addFilter(QuietBackgroundThreads())


def start_warm_up() -> threading.Thread | None:
    """Set one thread per analysis and start ``ui.warm_up`` in the background, once per process
    (a second call returns None). Returns the thread that does it."""
    if _started.is_set():
        return None
    _started.set()
    quiet_background_threads()

    def run() -> None:
        try:
            from . import ui

            ui.start_server_work()
        except Exception:  # a broken checkpoint says so when a visitor opens it; never here
            log.exception("starting the server's background work failed")

    thread = threading.Thread(target=run, name="ser-server-start", daemon=True)
    thread.start()
    return thread
