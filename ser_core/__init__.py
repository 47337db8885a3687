"""ser_core: the library behind the SER attention explorer.

Data flows audio -> features -> model -> trace -> views:
``audio`` (decode/validate) -> ``asr`` (words with times) -> ``encoders`` (frames, word
states, faces) -> ``features`` (cached per utterance) -> ``models`` (one file per paper)
-> ``trace`` (AttentionTrace) -> ``viz`` (figures) -> ``pages/`` (Streamlit).
"""

__version__ = "0.1.0"
