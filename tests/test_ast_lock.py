"""``ast.parse`` one at a time on the Python versions where two threads parsing at once can fail
(python/cpython#106905; ``ser_core/ast_lock.py``)."""

from __future__ import annotations

import ast
import sys
import threading
import time

import pytest

from ser_core import ast_lock


def test_only_the_versions_with_the_bug_are_affected():
    assert ast_lock.affected((3, 11, 7)) and ast_lock.affected((3, 12, 1)) and ast_lock.affected((3, 11, 0))
    assert not ast_lock.affected((3, 11, 8)) and not ast_lock.affected((3, 12, 2))
    assert not ast_lock.affected((3, 10, 13)) and not ast_lock.affected((3, 13, 0))
    assert ast_lock.install((3, 13, 0)) is False  # nothing to do there


def test_the_pages_parse_under_one_lock_and_a_second_thread_waits(monkeypatch):
    import ser_core.ui  # noqa: F401  (installs it, as every page does)

    if not ast_lock.affected():
        pytest.skip(f"Python {sys.version.split()[0]} parses safely from several threads")
    assert getattr(ast.parse, "_ser_one_at_a_time", False)
    parse = ast.parse
    assert ast_lock.install() and ast.parse is parse  # once: installing again wraps nothing
    # the callers that matter go through it: Streamlit's magic and inspect call ast.parse,
    # literal_eval (matplotlib's settings) calls the module's parse
    calls = []
    monkeypatch.setattr(ast, "parse", lambda *a, **k: calls.append(a) or parse(*a, **k))
    assert ast.literal_eval("[1, 2]") == [1, 2] and calls
    monkeypatch.undo()
    # while one thread holds the lock (as a parse does), another thread's parse waits for it
    finished = []
    with ast_lock._LOCK:
        other = threading.Thread(target=lambda: finished.append(ast.parse("x = 1")))
        other.start()
        time.sleep(0.2)
        assert not finished  # still waiting
        assert isinstance(ast.parse("y = 2"), ast.Module)  # the same thread may parse again (re-entrant)
    other.join(5)
    assert len(finished) == 1 and isinstance(finished[0], ast.Module)
