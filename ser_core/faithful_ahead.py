"""The deletion test, started the moment its view is opened.

Analyze's "Is this faithful?" view runs the deletion test when the student presses "Run the
deletion test": about 50 model runs and two gradient attributions, ~1.6 s for a 10 s clip on two
cores (``bench/bench_faithfulness.py``). Opening the view says that press is coming, so from that
moment the same work runs in the background, while the student reads what the test does:

* in this session's turn in the shared line of analyses (``ui.analysis_queue``), so a class
  sharing one server gets no more than one analysis per visitor;
* in the page's own order (:func:`quick_test`: attention against random, what the view's sentence
  says; then :func:`every_ranking`), asking ``should_stop`` between the steps (a closed tab stops
  it at the next one);
* into the analyzer's cache (no removal is run twice: ``run_deletion_test``'s ``known``).

When the press comes while it runs, the page takes each step's result from it
(:meth:`Ahead.result`: waiting for the step under way) instead of asking the line again: a
request of its own would replace this one and run beside the step under way, each on one math
thread (the server gives an analysis every core only while it runs alone). One still waiting for
its turn is simply replaced by the page's request. A student who presses at once waits for what is
left; one who read the view's caption first finds it done. Nothing is started for a clip too long
to explain.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from . import limits
from .deletion import QUICK_RANKINGS

__all__ = ["Ahead", "every_ranking", "quick_test", "start"]


def quick_test(analysis, layer: str | None):
    """Step 1: the chosen layer's attention against random (the view's sentence)."""
    return analysis.deletion_test(layer=layer, rankings=QUICK_RANKINGS)


def every_ranking(analysis, layer: str | None, should_stop: Callable[[], bool]):
    """Step 2: every ranking (step 1's removals reused) and, when words were tested, the words'
    Integrated Gradients scores (None otherwise, or when asked to stop)."""
    test = analysis.deletion_test(layer=layer)
    words = (analysis.attribution("integrated_gradients")["words"]
             if "words" in test.axes and not should_stop() else None)
    return test, words


class Ahead:
    """Both steps for one analysis and layer, run in a background thread (:func:`start`)."""

    def __init__(self, analysis, layer: str | None) -> None:
        self.analysis, self.layer = analysis, layer
        self.running = threading.Event()  # its turn in the line came
        self.results: dict[int, Any] = {}  # step → what the page's own call would return
        self._changed = threading.Condition()
        self.thread: threading.Thread | None = None

    def is_for(self, analysis, layer: str | None) -> bool:
        return analysis is self.analysis and layer == self.layer

    def work(self, should_stop: Callable[[], bool]) -> None:
        """The two steps, stopping between them when asked (run by the line)."""
        if should_stop():  # replaced by the page's own request the moment its turn came
            return
        self.running.set()
        self._done(1, quick_test(self.analysis, self.layer))
        if not should_stop():
            self._done(2, every_ranking(self.analysis, self.layer, should_stop))

    def _done(self, step: int, result: Any) -> None:
        with self._changed:
            self.results[step] = result
            self._changed.notify_all()

    def result(self, step: int):
        """Step ``step``'s (1 or 2) result, once this work has it; None when it ended without it,
        or when it is still waiting for its turn in the line (then the page asks for the step
        itself, and its request replaces this one)."""
        if not self.running.is_set() or self.thread is None:
            return None
        with self._changed:
            while step not in self.results and self.thread.is_alive():
                self._changed.wait(timeout=0.05)
            return self.results.get(step)


def start(analysis, layer: str | None, session: str | None, line: Any) -> Ahead | None:
    """Run both steps for ``analysis`` at ``layer`` in a background thread, in ``session``'s turn
    in ``line`` (an ``AnalysisQueue``). None when nothing is started (no session, a detached
    analysis, or a clip the deletion test does not accept)."""
    if session is None or getattr(analysis, "analyzer", None) is None:
        return None
    if limits.too_long_to_explain(analysis.features.duration):
        return None
    ahead = Ahead(analysis, layer)

    def run() -> None:
        try:
            line.run(session, ahead.work)
        except Exception:  # stopped, replaced, or failed: the press runs it and says why
            pass

    ahead.thread = threading.Thread(target=run, name="ser-faithful-ahead", daemon=True)
    ahead.thread.start()
    return ahead
