"""What the Models page says about each model in plain words: a title and a few sentences per
paper's model, and its settings explained for a student (the model files' docstrings hold the
details and the papers' equations)."""

from __future__ import annotations

import pandas as pd

from .ui import label_name

# What each model does, in plain words (the model files' docstrings hold the details and equations).
MODEL_NOTES: dict[str, tuple[str, str]] = {
    "ks_transformer": (
        "KS-Transformer: listens to the voice and reads the words together.",
        "The voice comes in as the inner layers of the Whisper speech recogniser, the words as a small "
        "language model's reading of the transcript; each first gets a summary of its own. Then the voice "
        "looks at the words and the words look at the voice with *key-sparse* attention: for every "
        "position it keeps only the best-scoring half of the other side (words or moments of sound) and "
        "ignores the rest, so that one telling word such as \"furious\" can stand out. A last stage mixes "
        "the two streams, averages each and picks one of the emotions. How much it keeps (keep_ratio) can "
        "be changed on the Analyze page without retraining."),
    "mesm": (
        "MESM: words, sound and face, looking only where it matters.",
        "It uses three inputs: one summary of the transcript's words, the sound as a spectrogram (a picture "
        "of its frequencies over time, cut into 0.4 s pieces) and, when there is one, a video of the face. "
        "The words act as a searchlight: in each picture of the sound and of the face an attention layer "
        "scores every point and keeps only the best ones that together hold a share *top_p* of the "
        "attention. The image network (a CNN) then computes only at the kept points, which saves work. "
        "Each input votes and a learned weighting of the votes gives the prediction; the Sparse masks page "
        "shows which points were kept."),
    "fe2e": (
        "FE2E: MESM's baseline, looking everywhere.",
        "The same network as MESM (words, sound spectrogram and face video) but without the attention "
        "layers that drop points: its image network computes at every point of every sound piece and face "
        "picture. It is the yardstick MESM is measured against: same inputs, more computation. Comparing "
        "their FLOPs shows how much MESM's sparse attention saves."),
    "mfsn": (
        "MFSN: the voice seen from two perspectives, mixed by a searched recipe.",
        "It listens to the voice only, through two levels of the same speech recogniser (Whisper): its last "
        "layer, which mostly knows *what* was said, and an earlier layer, which keeps more of *how* it "
        "sounded (which level is used is chosen on validation clips). A fusion cell tries eight ways of "
        "combining the two (adding, multiplying, attention and others) and learns a weight for each: the "
        "bar chart shows these weights. The result is cut into 3 s segments, analysed together with the "
        "sound's spectrogram and MFCCs (a compact description of its timbre), and the segments' votes are "
        "averaged into one prediction."),
    "ilt": (
        "ILT: a spectrogram read two ways at once.",
        "It listens to the voice only, as a spectrogram (a picture of the sound's frequencies over time, "
        "up to 7.5 s). A small image network (a CNN) turns the picture into a sequence of 80 ms steps. That "
        "sequence goes two ways in parallel: a recurrent network (LSTM) that reads it in order and weighs "
        "the steps that matter, and a Transformer in which every step can look at every other. The two "
        "summaries are added with a learned weight and classified."),
    "cat": (
        "CAT: two views of the spectrogram that question each other.",
        "It listens to the voice only, as a spectrogram. One branch is an image network (a CNN); the other "
        "shortens the sequence and reads it in order with a recurrent network (LSTM). Two cross-attention "
        "Transformers then let each branch look at the other: the CNN's steps ask the LSTM's steps, and the "
        "other way round. Their answers are added and classified into the emotions."),
}

MODALITIES = {"T": "words (text)", "A": "sound", "V": "face video"}
FUSIONS = {"concat": "placed side by side", "plus": "added with a fixed weight",
           "trainable_plus": "added with a learned weight"}
VARIANTS = {"full": "both directions", "ctol": "CNN asks LSTM only", "ltoc": "LSTM asks CNN only",
            "sum": "branches added, no cross attention"}


def _list(value) -> str:
    return ", ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


# (config key, setting, how to show the value, what it means): only the settings a reader can follow
SETTINGS = [
    ("modalities", "Inputs", lambda v: ", ".join(MODALITIES.get(m, m) for m in str(v)),
     "What the model takes in."),
    ("d_model", "Width", str, "Numbers describing each position inside the model: wider can learn more, "
                               "but is slower and needs more data."),
    ("heads", "Attention heads", str, "Attention patterns computed side by side in each attention layer."),
    ("feature_layers", "Layers per input", str, "Transformer layers that first process the voice and the "
                                                 "words separately."),
    ("audio_pool", "Speech moments per second", lambda v: f"{50 // max(int(v), 1)}",
     "How often the model looks at the voice: Whisper describes it 50 times a second, and the model may "
     "average neighbours (25: each moment on the maps is 40 ms, and the model does about half the work)."),
    ("ccab_layers", "Cross-attention blocks", str, "Blocks in which the voice looks at the words and the "
                                                    "words at the voice."),
    ("fusion_layers", "Fusion layers", str, "Layers that mix the two streams before the decision."),
    ("transformer_layers", "Transformer layers", str, "Layers in which every step can look at every other."),
    ("cross_layers", "Cross-attention layers", str, "Layers per direction in which one branch looks at the "
                                                     "other."),
    ("ccab_keep_ratio", "Share kept (cross attention)", lambda v: f"{float(v):.0%}",
     "Key-sparse attention keeps this share of the best-scoring words or moments and ignores the rest."),
    ("fusion_keep_ratio", "Share kept (fusion)", lambda v: f"{float(v):.0%}",
     "The same, in the layers that mix the two streams."),
    ("top_p", "Attention kept (top_p)", lambda v: f"{float(v):.0%}",
     "Only the best points holding this share of the attention are computed; the rest is skipped."),
    ("fusion", "Branches combined", lambda v: FUSIONS.get(v, v), "How the LSTM's and the Transformer's "
                                                                  "summaries are joined."),
    ("variant", "Cross attention", lambda v: VARIANTS.get(v, v), "Which branch looks at which."),
    ("positional_encoding", "Told the time of each step", lambda v: "yes" if v else "no",
     "Whether the Transformer knows where each step lies in time."),
    ("n_mels", "Frequency bands", str, "Rows of the spectrogram: how finely the range of pitches is divided."),
    ("max_frames", "Longest clip used", lambda v: f"{int(v) / 100:g} s",
     "Longer clips are cut, shorter ones padded."),
    ("max_chunks", "Longest clip used", lambda v: f"{int(v) * 0.4:g} s",
     "Later sound is left out."),
    ("max_faces", "Face pictures", str, "At most this many face pictures per clip."),
    ("sec_layers", "Speech-model levels", _list, "Which of Whisper's layers the earlier perspective can "
                                                 "come from."),
    ("segment_seconds", "Segment length", lambda v: f"{float(v):g} s", "The voice is judged in pieces of "
                                                                       "this length, then the votes averaged."),
    ("dropout", "Dropout", lambda v: f"{float(v):.0%}", "While training, this share of values is switched "
                                                         "off at random so that the model cannot memorise "
                                                         "the training clips."),
]


def settings_table(c) -> pd.DataFrame:
    """The settings that matter, in words, with the emotions it tells apart first."""
    rows = [{"setting": "Emotions", "value": ", ".join(label_name(label) for label in c.labels),
             "what it means": "The classes the model chooses between."}]
    for key, setting, show, meaning in SETTINGS:
        value = c.config.get(key)
        if value is None or (key == "top_p" and c.name == "fe2e"):  # FE2E computes every point
            continue
        try:
            shown = show(value)
        except (TypeError, ValueError):
            shown = _list(value)
        rows.append({"setting": setting, "value": shown, "what it means": meaning})
        if key == "sec_layers" and c.config.get("chosen_level") is not None:
            level = int(c.config["chosen_level"])
            names = ("early", "middle", "last") if len(value) == 3 else [f"level {i + 1}" for i in range(len(value))]
            if 0 <= level < len(value):
                rows.append({"setting": "Level used", "value": f"{names[level]} (layer {value[level]})",
                             "what it means": "The level the model uses, chosen on validation clips."})
        if key == "sec_layers" and c.config.get("operations"):
            rows.append({"setting": "Ways of combining tried", "value": str(len(c.config["operations"])),
                         "what it means": "The fusion cell weighs these against each other while training."})
    return pd.DataFrame(rows)
