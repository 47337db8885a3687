"""Who may do what (ser_core.access): visitors and the teacher, and the folders corpora come from.

conftest makes every test the teacher's browser on the server machine with no password set and
allows pytest's temporary folders; the tests here make visitors, set passwords and narrow the
allowed folders themselves.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from streamlit.testing.v1 import AppTest

from ser_core import access, corpus_choice, jobs
from ser_core.data import manifest
from ser_core.errors import InputError

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 60
VISITOR_IP = "192.0.2.7"  # an address of another machine (TEST-NET-1)
PASSWORD = "correct horse battery"
REAL_PEER_ADDRESS = access.peer_address  # before conftest makes every test a loopback browser


@pytest.fixture
def visitor(monkeypatch):
    """This test's browser is on another machine."""
    monkeypatch.setattr(access, "peer_address", lambda: VISITOR_IP)
    monkeypatch.setattr(access, "WRONG_PASSWORD_DELAY_S", 0.0)


@pytest.fixture
def allowed(tmp_path, monkeypatch):
    """Only ``tmp_path/allowed`` (and this test's own cache folder) may hold corpora."""
    folder = tmp_path / "allowed"
    folder.mkdir()
    monkeypatch.setenv("SER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SER_CORPUS_DIR", raising=False)
    monkeypatch.setenv("SER_DATA_DIRS", str(folder))
    monkeypatch.setattr(access, "_secret", lambda name: None)  # no local secrets file interferes
    return folder


def _role_app():
    """A page that only asks for the teacher role (run by AppTest.from_function)."""
    import streamlit as st

    from ser_core import access

    st.markdown("teacher" if access.teacher_gate("Training a model") else "visitor")


def _role(at: AppTest) -> str:
    return at.markdown[-1].value


def _texts(at: AppTest) -> str:
    """Every message and caption the page shows (sidebar included)."""
    return "\n".join(e.value for kind in ("info", "warning", "error", "success", "caption", "markdown")
                     for e in getattr(at, kind))


def _keys(at: AppTest) -> set[str]:
    widgets = [*at.button, *at.checkbox, *at.text_input, *at.selectbox]
    return {w.key for w in widgets if w.key}


# --- the role --------------------------------------------------------------------------------------
def test_no_password_and_a_browser_on_the_server_machine_is_the_teacher(monkeypatch):
    for address in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "127.0.1.1"):
        monkeypatch.setattr(access, "peer_address", lambda a=address: a)
        assert access.on_server_machine(), address
    for address in (VISITOR_IP, "10.0.0.3", "fe80::1", None, "not an address"):
        monkeypatch.setattr(access, "peer_address", lambda a=address: a)
        assert not access.on_server_machine(), address
    monkeypatch.setattr(access, "peer_address", lambda: "127.0.0.1")
    monkeypatch.setattr(access, "_came_through_proxy", lambda: True)  # a proxy on this machine
    assert not access.on_server_machine()

    monkeypatch.setattr(access, "_came_through_proxy", lambda: False)
    at = AppTest.from_function(_role_app, default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    assert _role(at) == "teacher"
    assert "this browser runs on the server machine itself" in at.sidebar.info[0].value


def test_without_a_connection_nobody_is_the_teacher(monkeypatch):
    """streamlit.testing has no browser connection: the real peer_address says None, a visitor."""
    monkeypatch.setattr(access, "peer_address", REAL_PEER_ADDRESS)
    assert access.peer_address() is None
    at = AppTest.from_function(_role_app, default_timeout=TIMEOUT).run()
    assert _role(at) == "visitor"


def test_a_visitor_is_told_in_plain_words_that_a_password_must_be_set(visitor):
    at = AppTest.from_function(_role_app, default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    assert _role(at) == "visitor"
    text = _texts(at)
    assert "whoever starts the server must set a teacher password" in text
    assert "SER_" not in text and "secrets" not in text  # no setting names for students
    assert not at.text_input  # nothing to type: there is no password


def test_a_wrong_password_is_refused_and_the_right_one_unlocks(visitor, monkeypatch):
    monkeypatch.setenv("SER_TEACHER_PASSWORD", PASSWORD)
    at = AppTest.from_function(_role_app, default_timeout=TIMEOUT).run()
    assert _role(at) == "visitor"
    assert "type the teacher password in the sidebar" in _texts(at)

    at.sidebar.text_input(key=access.PASSWORD_BOX_KEY).set_value("correct horse").run()
    assert _role(at) == "visitor"
    assert [e.value for e in at.sidebar.error] == ["That is not the teacher password."]
    assert at.sidebar.text_input(key=access.PASSWORD_BOX_KEY).value == ""  # never kept in the box

    at.sidebar.text_input(key=access.PASSWORD_BOX_KEY).set_value(PASSWORD).run()
    assert not at.exception, at.exception
    assert _role(at) == "teacher"
    assert not at.sidebar.error and "Teacher mode is on" in at.sidebar.success[0].value
    at.run()
    assert _role(at) == "teacher"  # remembered in the session

    at.sidebar.button(key="access_lock").click().run()
    assert _role(at) == "visitor"


def test_with_a_password_the_server_machine_types_it_too_and_secrets_set_it(monkeypatch):
    """conftest's browser is on the server machine; a password from the secrets still applies."""
    monkeypatch.setattr(access, "WRONG_PASSWORD_DELAY_S", 0.0)
    at = AppTest.from_function(_role_app, default_timeout=TIMEOUT)
    at.secrets["teacher_password"] = PASSWORD
    at.run()
    assert _role(at) == "visitor"
    at.sidebar.text_input(key=access.PASSWORD_BOX_KEY).set_value(PASSWORD).run()
    assert _role(at) == "teacher"


def test_password_matches_compares_the_whole_password(monkeypatch):
    monkeypatch.setattr(access, "_secret", lambda name: None)
    assert not access.password_matches(PASSWORD)  # no password set: nothing matches
    monkeypatch.setenv("SER_TEACHER_PASSWORD", PASSWORD)
    assert access.password_matches(PASSWORD)
    for wrong in ("", PASSWORD[:-1], PASSWORD + " ", PASSWORD.upper()):
        assert not access.password_matches(wrong)


def test_a_wrong_password_waits_before_answering(visitor, monkeypatch):
    monkeypatch.setenv("SER_TEACHER_PASSWORD", PASSWORD)
    monkeypatch.setattr(access, "WRONG_PASSWORD_DELAY_S", 0.3)
    at = AppTest.from_function(_role_app, default_timeout=TIMEOUT).run()
    started = time.perf_counter()
    at.sidebar.text_input(key=access.PASSWORD_BOX_KEY).set_value("guess").run()
    assert time.perf_counter() - started >= 0.3


# --- the pages -------------------------------------------------------------------------------------
def _fake_job(status: str) -> jobs.Job:
    return jobs.Job(id="20240101-000000-abcdef", name="class_run", out="/nowhere/class_run.safetensors",
                    command=["python", "-m", "ser_core", "train"], pid=0, started=time.time() - 60,
                    status=status, settings={"model": "ks_transformer", "kind": "demo", "protocol": "predefined",
                                             "fold": 0, "preset": "fast"})


TEACHER_ONLY = {"train_start_button", "train_overwrite", "train_generate_corpus", "train_corpus_path",
                "train_stop", "train_resume"}


@pytest.mark.parametrize("status, button", [("running", "train_stop"), ("stopped", "train_resume")])
def test_a_visitor_watches_the_run_on_train_but_cannot_start_stop_or_resume(
        cache, tmp_path, monkeypatch, status, button):
    monkeypatch.setenv("SER_CORPUS_DIR", str(tmp_path / "no_demo_corpus"))  # the Generate button shows
    monkeypatch.setattr(jobs, "current_job", lambda: _fake_job(status))
    teacher = AppTest.from_file(str(REPO / "pages/4_Train.py"), default_timeout=TIMEOUT).run()
    assert not teacher.exception, teacher.exception
    assert {button, "train_overwrite", "train_generate_corpus"} <= _keys(teacher)

    monkeypatch.setattr(access, "peer_address", lambda: VISITOR_IP)
    at = AppTest.from_file(str(REPO / "pages/4_Train.py"), default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    assert not TEACHER_ONLY & _keys(at), TEACHER_ONLY & _keys(at)
    assert "Run `class_run`: " + status in [s.value for s in at.subheader]  # the run, read-only
    assert "Starting, stopping or resuming a training run is for the teacher" in _texts(at)


def test_a_visitor_cannot_evaluate_on_the_servers_folders(cache, visitor):
    at = AppTest.from_file(str(REPO / "pages/3_Evaluate.py"), default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    assert not {"eval_button", "eval_corpus_path", "eval_corpus_kind"} & _keys(at)
    assert "Evaluating a checkpoint on a corpus of this server is for the teacher" in _texts(at)


def test_evaluate_refuses_a_path_outside_the_allowed_folders_without_showing_it(allowed):
    at = AppTest.from_file(str(REPO / "pages/3_Evaluate.py"), default_timeout=TIMEOUT).run()
    at.selectbox(key="eval_corpus_kind").set_value("manifest").run()
    at.text_input(key="eval_corpus_path").set_value("/etc/passwd").run()
    assert any(str(allowed) in w.value for w in at.warning)  # said at once, naming the folders
    at.button(key="eval_button").click().run()
    assert not at.exception, at.exception
    assert "outside the folders corpora may be read from" in at.error[0].value
    assert str(allowed) in at.error[0].value
    assert "root:x" not in _texts(at)


# --- the folders corpora come from ----------------------------------------------------------------
def test_paths_outside_the_allowed_folders_are_refused(allowed, tmp_path):
    inside = allowed / "corpus" / "manifest.csv"
    inside.parent.mkdir()
    inside.write_text("path,label\n")
    (allowed / "link").symlink_to("/etc")
    (allowed / "passwd_link").symlink_to("/etc/passwd")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    assert access.is_allowed(inside) and access.confine_path(str(inside)) == inside.resolve()
    assert access.is_allowed(allowed / "corpus" / "not_made_yet")
    for path in ("/etc/passwd", f"{allowed}/../../etc", f"{allowed}/corpus/../../elsewhere", str(outside),
                 str(allowed / "link"), str(allowed / "link" / "passwd"), str(allowed / "passwd_link"),
                 "~/../../etc/passwd", "/"):
        assert not access.is_allowed(path), path
        with pytest.raises(InputError, match="outside the folders") as refused:
            access.confine_path(path)
        assert str(allowed.resolve()) in str(refused.value)  # names the allowed folders


def test_the_cache_the_demo_corpus_and_the_listed_folders_are_allowed(allowed, tmp_path, monkeypatch):
    extra = tmp_path / "extra"
    monkeypatch.setenv("SER_DATA_DIRS", os.pathsep.join([str(allowed), "", str(extra)]))
    monkeypatch.setenv("SER_CORPUS_DIR", str(tmp_path / "demo_elsewhere"))
    monkeypatch.setattr(access, "_secret", lambda name: [str(tmp_path / "from_secrets")] if name == "data_dirs"
                        else None)
    roots = access.allowed_roots()
    for folder in ("cache", "demo_elsewhere", "allowed", "extra", "from_secrets"):
        assert (tmp_path / folder).resolve() in roots, folder
    assert Path("~/ser-data").expanduser().resolve() in roots


def test_the_pages_confine_corpus_paths_the_command_line_does_not(allowed):
    assert corpus_choice.resolve_corpus("manifest", "/etc/passwd") == ("manifest", "/etc/passwd")  # CLI
    with pytest.raises(InputError, match="outside the folders"):
        corpus_choice.resolve_corpus("manifest", "/etc/passwd", confine=True)
    _tess_clip(allowed / "OAF_angry" / "OAF_back_angry.wav")
    with pytest.raises(InputError, match="outside the folders"):
        corpus_choice.check_corpora([("tess", str(allowed)), ("ravdess", "/etc")], confine=True)
    with pytest.raises(InputError, match="Type the path of the TESS folder"):  # the plain message first
        corpus_choice.check_corpora([("tess", "")], confine=True)
    assert corpus_choice.check_corpora([("tess", str(allowed))], confine=True)[0]["root"] == str(allowed)


def _tess_clip(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(1600, np.float32), 16000)
    return path


def test_a_corpus_inside_the_allowed_folders_may_not_list_files_outside_them(allowed, tmp_path):
    outside = tmp_path / "outside"
    secret_clip = _tess_clip(outside / "OAF_sad" / "OAF_back_sad.wav")
    own_clip = _tess_clip(allowed / "mine" / "clip.wav")
    sheet = allowed / "manifest.csv"
    sheet.write_text(f"path,label\nmine/clip.wav,ang\n{secret_clip},sad\n")  # an absolute path out
    with pytest.raises(InputError, match="1 of this corpus's 2 clips lie outside") as refused:
        corpus_choice.resolve_corpus("manifest", str(sheet), confine=True)
    assert str(secret_clip) not in str(refused.value) and str(allowed.resolve()) in str(refused.value)
    sheet.write_text("path,label\nmine/clip.wav,ang\nmine/../../outside/OAF_sad/OAF_back_sad.wav,sad\n")
    with pytest.raises(InputError, match="outside"):  # a relative path climbing out
        corpus_choice.resolve_corpus("manifest", str(sheet), confine=True)
    sheet.write_text("path,label\nmine/clip.wav,ang\n")
    assert corpus_choice.resolve_corpus("manifest", str(sheet), confine=True) == ("manifest", str(sheet))
    assert own_clip.is_file()
    # a corpus folder with a link that leads out of it
    tess = allowed / "tess"
    _tess_clip(tess / "OAF_angry" / "OAF_back_angry.wav")
    (tess / "OAF_sad").mkdir()
    (tess / "OAF_sad" / "OAF_back_sad.wav").symlink_to(secret_clip)
    with pytest.raises(InputError, match="1 of this corpus's 2 clips lie outside"):
        corpus_choice.check_corpora([("tess", str(tess))], confine=True)
    assert corpus_choice.resolve_corpus("tess", str(tess)) == ("tess", str(tess))  # the command line: not confined


# --- messages never show a file's content --------------------------------------------------------
@pytest.mark.parametrize("content", [
    "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n",
    "API_TOKEN=s3cr3t-value,other\nmore,lines\n",
    "file,emotion\nsecret_clip.wav,ang\n",
])
def test_the_missing_columns_message_names_them_without_the_files_content(tmp_path, content):
    path = tmp_path / "notes.csv"
    path.write_text(content)
    with pytest.raises(InputError) as refused:
        manifest.load(path)
    message = str(refused.value)
    assert "lacks the column(s) path, label" in message
    for word in ("root", "daemon", "s3cr3t", "API_TOKEN", "emotion", "secret_clip"):
        assert word not in message
