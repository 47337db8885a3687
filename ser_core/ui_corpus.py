"""The Evaluate and Train pages' corpus picker. Reached as ``ui.corpus_picker``; split out of
``ser_core.ui``."""

from __future__ import annotations

import streamlit as st


def corpus_picker(key: str, mix: bool = False):
    """Corpus kind + path widgets (demo corpus, a corpus folder or a manifest CSV); returns
    (kind, path or None). Each kind says what layout it expects; a missing demo corpus names
    the command that makes it.

    With ``mix`` (the Train page) more corpora can be added to the first one, each with its own
    path box and a "test only" tick (cross-corpus: scored, never trained on); it then returns a
    list of (kind, path or None, test_only), the first corpus first. A path outside the folders
    the server allows (``ser_core.access``) gets a warning naming them."""
    from . import access, corpus_choice
    from .data.mix import ROOTLESS, demo_manifest
    from .errors import InputError
    from .paths import default_corpus_dir

    def title(kind: str) -> str:
        return corpus_choice.CORPUS_KINDS[kind]["title"]

    def where(kind: str, box, path_key: str, label: str) -> str | None:
        layout = corpus_choice.CORPUS_KINDS[kind]["layout"]
        if kind == "demo":
            manifest = default_corpus_dir() / "manifest.csv"
            if manifest.exists():
                box.caption(f"`{manifest}`")
            else:
                box.warning(f"No demo corpus at `{manifest}`: generate it with `python -m ser_core corpus`.")
            return None
        if kind in ROOTLESS:  # the calm-voice set
            try:
                box.caption(f"`{demo_manifest(kind)}`")
            except InputError as e:
                box.warning(str(e))
            return None
        path = box.text_input(label, key=path_key, help=f"Expected: {layout}.",
                              placeholder=corpus_choice.CORPUS_KINDS[kind]["example"])
        box.caption(f"Expected: {layout}.")
        if (path or "").strip() and not access.is_allowed(path.strip()):
            box.warning(access.outside_message())  # said at once; Start and Evaluate refuse it too
        return path

    c1, c2 = st.columns([1, 2])
    kind = c1.selectbox("Corpus", list(corpus_choice.CORPUS_KINDS), key=f"{key}_corpus_kind", format_func=title)
    path = where(kind, c2, f"{key}_corpus_path", "Path on this machine")
    if not mix:
        return kind, path
    chosen = [(kind, path, False)]
    more = st.multiselect("Mix in more corpora (optional)", list(corpus_choice.CORPUS_KINDS), key=f"{key}_mix_kinds",
                          format_func=title, placeholder="none: train on the corpus above only",
                          help=corpus_choice.MIX_NOTE)
    for extra in more:
        if extra == kind:
            st.caption(f"The {title(extra)} is already the first corpus.")
            continue
        c1, c2 = st.columns([1, 2])
        c1.markdown(f"**{title(extra)}**")
        test_only = c1.checkbox("Test only (cross-corpus)", key=f"{key}_test_only_{extra}",
                                help="Scored at the end, never trained on: how the model does on a "
                                     "corpus it never heard.")
        chosen.append((extra, where(extra, c2, f"{key}_corpus_path_{extra}", f"Path of the {title(extra)}"),
                       test_only))
    return chosen
