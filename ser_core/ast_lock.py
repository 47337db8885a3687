"""One ``ast.parse`` at a time in this process, on the Python versions where two at once can fail.

CPython 3.11 before 3.11.8 (and 3.12 before 3.12.2) keeps the depth counter that ``ast.parse``
uses while it builds the tree in state shared by every thread. When a garbage collection inside
that build runs a finalizer that lets another thread in, and that thread parses too, the counter
is left wrong and the first parse fails with ``SystemError: AST constructor recursion depth
mismatch`` (python/cpython#106905, fixed upstream by giving each parse its own counter).

The server has such threads: the warm-up thread (``ui._warm_up_in_background``) and the
background runs call libraries that parse (``inspect.signature`` of built-in functions parses their
text signature; torch parses sources), while Streamlit parses each page's script before it runs it
(its "magic"). Seen once in CI: the Analyze page failed to compile ("Script compilation error")
while the warm-up thread was making the Models page's cards.

:func:`install` wraps ``ast.parse`` in a re-entrant lock on the affected versions (every caller
that goes through ``ast.parse`` or ``ast.literal_eval``: Streamlit, ``inspect``, torch, matplotlib),
and does nothing on the others. Parses are short (milliseconds), so waiting costs nothing measurable.
"""

from __future__ import annotations

import ast
import sys
import threading

__all__ = ["affected", "install"]

_LOCK = threading.RLock()


def affected(version: tuple[int, ...] = tuple(sys.version_info[:3])) -> bool:
    """Whether this Python's ``ast.parse`` can fail when two threads parse at once."""
    return (3, 11, 0) <= version < (3, 11, 8) or (3, 12, 0) <= version < (3, 12, 2)


def install(version: tuple[int, ...] = tuple(sys.version_info[:3])) -> bool:
    """Make ``ast.parse`` take one lock on the affected versions (once); returns whether it does."""
    if not affected(version):
        return False
    if getattr(ast.parse, "_ser_one_at_a_time", False):
        return True
    unlocked = ast.parse

    def parse(*args, **kwargs):
        with _LOCK:
            return unlocked(*args, **kwargs)

    parse.__doc__, parse.__wrapped__ = unlocked.__doc__, unlocked
    parse._ser_one_at_a_time = True
    ast.parse = parse
    return True
