"""Who may do what in the app: visitors and the teacher, and which server folders corpora come from.

Visitors analyse, compare and read. Training, evaluating on corpora, generating the demo corpus,
starting, stopping or resuming runs and overwriting checkpoints are for the **teacher**:

* when whoever starts the server set a teacher password (``SER_TEACHER_PASSWORD``, or
  ``teacher_password`` in the Streamlit secrets), a browser becomes the teacher by typing it in the
  sidebar (remembered for that browser tab's session);
* with no password set, only a browser on the server machine itself (a loopback connection that did
  not come through a proxy) is the teacher.

Corpus paths typed on the Train and Evaluate pages must lie inside the allowed folders
(:func:`allowed_roots`: the project's cache, ``~/ser-data`` and the folders listed in
``SER_DATA_DIRS`` or the secrets' ``data_dirs``); :func:`confine_path` checks one. The command line
(``python -m ser_core ...``) is run by the machine's owner and is never confined.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import time
from pathlib import Path
from typing import Any

from . import paths
from .errors import InputError

#: session_state key: this browser session is the teacher (set by the password box)
TEACHER_KEY = "access_teacher"
PASSWORD_BOX_KEY = "access_password_box"
_REFUSED_KEY = "access_password_refused"
#: seconds a wrong password waits before the page answers (slows guessing)
WRONG_PASSWORD_DELAY_S = 1.0
#: headers a reverse proxy adds: such a connection is not a browser on this machine
PROXY_HEADERS = ("X-Forwarded-For", "X-Real-Ip", "Forwarded")
PASSWORD_ENV = "SER_TEACHER_PASSWORD"
DATA_DIRS_ENV = "SER_DATA_DIRS"


# --- settings of whoever starts the server --------------------------------------------------------
def _secret(name: str) -> Any:
    """A value from the Streamlit secrets, or None (no secrets file, no such key, a broken file)."""
    try:
        import streamlit as st

        return st.secrets.get(name)
    except Exception:  # no secrets.toml is the ordinary case, never an error
        return None


def teacher_password() -> str | None:
    """The teacher password whoever started the server set (environment first, then the secrets);
    None when there is none."""
    value = os.environ.get(PASSWORD_ENV) or _secret("teacher_password")
    value = str(value) if value is not None else ""
    return value if value.strip() else None


def password_matches(typed: str) -> bool:
    """Whether ``typed`` is the teacher password (constant-time comparison; False when none is set)."""
    expected = teacher_password()
    if expected is None or not typed:
        return False
    return hmac.compare_digest(typed.encode("utf-8"), expected.encode("utf-8"))


# --- where the browser is --------------------------------------------------------------------------
def peer_address() -> str | None:
    """The IP address the current browser session connected from (the TCP peer), or None when the
    session has no browser connection (a script run without a server, streamlit.testing)."""
    try:
        from streamlit import runtime
        from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

        ctx = get_script_run_ctx()
        if ctx is None or not runtime.exists():
            return None
        client = runtime.get_instance().get_client(ctx.session_id)
        context = getattr(client, "client_context", None)
        return getattr(context, "remote_ip", None)
    except Exception:  # an unknown peer is never the server machine
        return None


def _came_through_proxy() -> bool:
    """Whether the connection carries a reverse proxy's forwarding header."""
    try:
        import streamlit as st

        headers = st.context.headers
        return any(headers.get(name) for name in PROXY_HEADERS)
    except Exception:
        return False


def is_loopback(address: str | None) -> bool:
    """Whether ``address`` is this machine (127.0.0.0/8, ::1, or ::ffff:127.x); None is not."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def on_server_machine() -> bool:
    """Whether this browser runs on the server machine itself (loopback, not through a proxy)."""
    return is_loopback(peer_address()) and not _came_through_proxy()


# --- the role --------------------------------------------------------------------------------------
def _session() -> Any:
    import streamlit as st

    return st.session_state


def is_teacher() -> bool:
    """Whether this browser session has the teacher role: unlocked with the password, or, with no
    password set, a browser on the server machine."""
    try:
        if _session().get(TEACHER_KEY) is True:
            return True
    except Exception:  # no session (a plain script): nobody is the teacher
        return False
    return teacher_password() is None and on_server_machine()


def _try_unlock() -> None:
    """The password box's callback: unlock on the right password, else say no (after a pause)."""
    state = _session()
    typed = state.get(PASSWORD_BOX_KEY) or ""
    state[PASSWORD_BOX_KEY] = ""  # never keep the password in the box
    if password_matches(typed):
        state[TEACHER_KEY] = True
        state.pop(_REFUSED_KEY, None)
    elif typed:
        time.sleep(WRONG_PASSWORD_DELAY_S)
        state[_REFUSED_KEY] = True


def _lock() -> None:
    _session().pop(TEACHER_KEY, None)


def role_sidebar() -> None:
    """The sidebar's role line: who this browser is, and the teacher password box when one is set."""
    import streamlit as st

    box = st.sidebar
    unlocked = _session().get(TEACHER_KEY) is True
    if unlocked:
        box.success("Teacher mode is on in this browser tab.")
        box.button("Leave teacher mode", key="access_lock", on_click=_lock)
    elif teacher_password() is not None:
        box.text_input("Teacher password", type="password", key=PASSWORD_BOX_KEY, on_change=_try_unlock,
                       help="Training and evaluating are for the teacher. Press Enter after typing it.")
        if _session().pop(_REFUSED_KEY, False):
            box.error("That is not the teacher password.")
    elif is_teacher():
        box.info("You are the teacher: this browser runs on the server machine itself, and no teacher "
                 "password was set, so only this machine can train and evaluate.")
    else:
        box.caption("You are a visitor: you can analyse and compare clips and read about the models.")


def refusal(what: str) -> str:
    """Why a visitor may not do ``what`` (a phrase like "Starting a training run"), in plain words."""
    if teacher_password() is not None:
        return f"{what} is for the teacher: type the teacher password in the sidebar to unlock it."
    return (f"{what} is for the teacher. No teacher password was set when this server was started, "
            "so only a browser on the server machine itself can do it. To teach from another computer, "
            "whoever starts the server must set a teacher password.")


def teacher_gate(what: str) -> bool:
    """Draw the sidebar's role line (once per page run) and return whether the teacher may go on;
    for a visitor, say why ``what`` is not available."""
    import streamlit as st

    role_sidebar()
    if is_teacher():
        return True
    st.info(refusal(what), icon=":material/lock:")
    return False


# --- which server folders corpora may come from ----------------------------------------------------
def _listed_dirs() -> list[str]:
    """The extra folders whoever starts the server allowed (``SER_DATA_DIRS``, secrets ``data_dirs``)."""
    listed = [p for p in (os.environ.get(DATA_DIRS_ENV) or "").split(os.pathsep) if p.strip()]
    extra = _secret("data_dirs")
    if isinstance(extra, str):
        listed += [p for p in extra.split(os.pathsep) if p.strip()]
    elif isinstance(extra, (list, tuple)):
        listed += [str(p) for p in extra if str(p).strip()]
    return listed


def allowed_roots() -> list[Path]:
    """The resolved folders corpora may be read from: the project's cache (which holds the demo
    corpus), the demo corpus's folder, ``~/ser-data`` and the listed extra folders."""
    candidates = [paths.cache_dir(), paths.default_corpus_dir(), Path("~/ser-data"),
                  *(Path(p.strip()) for p in _listed_dirs())]
    roots: list[Path] = []
    for candidate in candidates:
        try:
            root = candidate.expanduser().resolve()
        except (OSError, RuntimeError):  # no home folder to expand ~ in, a symlink loop
            continue
        if root not in roots:
            roots.append(root)
    return roots


def is_allowed(path: str | Path) -> bool:
    """Whether ``path``, resolved (``..`` and symlinks followed), lies inside an allowed folder."""
    try:
        resolved = Path(path).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        return False
    return any(resolved.is_relative_to(root) for root in allowed_roots())


def outside_message() -> str:
    """What to say about a path outside the allowed folders: which folders are allowed, and how
    whoever starts the server adds one (the project's shared corpora are outside by default)."""
    roots = ", ".join(f"`{root}`" for root in allowed_roots())
    text = (f"This path is outside the folders corpora may be read from on this server: {roots}. "
            "Put the corpus in one of them, or have whoever starts the server add its folder to the "
            "allowed ones (the README's \"Serving to a class\" says how).")
    shared = paths.REPO_ROOT.parent / "shared" / "data"
    if shared.is_dir() and not is_allowed(shared):
        text += f" The real corpora beside the project, in `{shared.resolve()}`, are not allowed yet."
    return text


def confine_path(path: str | Path) -> Path:
    """``path`` resolved, when it lies inside an allowed folder; else InputError naming them."""
    if not is_allowed(path):
        raise InputError(outside_message())
    return Path(path).expanduser().resolve()
