"""Results remembered per browser session: what a slider moved back and forth, or the columns a
move did not touch, is not computed again (Compare k re-ran all four models on every move)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import streamlit as st

T = TypeVar("T")

__all__ = ["remembered"]


def remembered(name: str, key: Hashable, compute: Callable[[], T], size: int = 8,
               keep: Callable[[T], bool] | None = None) -> T:
    """``compute()`` once per ``key`` in this session; the ``size`` latest keys of ``name`` are
    kept (an older one is computed again when it comes back). ``keep(value)`` False: the value is
    returned but not kept (e.g. too large to hold in every visitor's session)."""
    store: OrderedDict[Hashable, Any] = st.session_state.setdefault(f"_remembered_{name}", OrderedDict())
    if key in store:
        store.move_to_end(key)
        return store[key]
    value = compute()
    if keep is not None and not keep(value):
        return value
    store[key] = value
    while len(store) > size:
        store.popitem(last=False)
    return value
