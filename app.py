"""SER attention explorer. Run: ``streamlit run app.py``.

This file only starts the server: the home page is ``home.py`` and the other pages are in
``pages/``. Written as a Streamlit ``App`` (ASGI) so that the models start loading when the
server starts (its lifespan), not when the first visitor opens a page: a class's first
analysis then finds Whisper and the encoders loaded (``ser_core.ui.warm_up``).
"""

import os
from contextlib import asynccontextmanager

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import streamlit as st  # noqa: E402


@asynccontextmanager
async def lifespan(_app):
    from ser_core.server_start import start_warm_up

    start_warm_up()  # a thread of its own: the server answers meanwhile
    yield


app = st.App("home.py", lifespan=lifespan)
