"""ser_core.session_memo: computed once per key and session, the latest few kept."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest


def _app():
    import streamlit as st

    from ser_core.session_memo import remembered

    calls = st.session_state.setdefault("calls", [])
    for key in st.session_state.get("keys", []):
        st.write(remembered("t", key, lambda key=key: calls.append(key) or f"value {key}", size=2))


def test_each_key_is_computed_once_and_only_the_latest_are_kept():
    at = AppTest.from_function(_app)
    at.session_state["keys"] = ["a", "b", "a"]
    at.run()
    assert not at.exception
    assert at.session_state["calls"] == ["a", "b"]  # "a" again: remembered
    assert [m.value for m in at.markdown] == ["value a", "value b", "value a"]
    at.session_state["keys"] = ["c", "b", "a"]  # "c" pushes out "b" (least recently used) …
    at.run()
    assert at.session_state["calls"] == ["a", "b", "c", "b", "a"]  # … and then "b" pushes out "a"


def _app_keep():
    import streamlit as st

    from ser_core.session_memo import remembered

    calls = st.session_state.setdefault("calls", [])
    for key in ("small", "big", "big"):
        remembered("k", key, lambda key=key: calls.append(key) or key, keep=lambda v: v != "big")


def test_a_value_that_keep_refuses_is_returned_but_computed_again_next_time():
    at = AppTest.from_function(_app_keep).run()
    assert not at.exception
    assert at.session_state["calls"] == ["small", "big", "big"]
