"""The Home, Compare k and Models pages' notes on a model: what it was trained on, how it does on
voices it never heard, and how faithful its kept keys are (read from checkpoint meta and the
shipped reports). Reached as ``ui.<name>``; split out of ``ser_core.ui``."""

from __future__ import annotations

import streamlit as st

from .data.mix import SYNTHETIC
from .errors import InputError


def faithfulness_note(checkpoint: str | None) -> str | None:
    """One sentence from the checkpoint's stored faithfulness report (see ser_core.faithfulness)."""
    from .ui import checkpoint_meta  # looked up on ui at call time: tests patch it there

    if not checkpoint:
        return None
    try:
        report = checkpoint_meta(checkpoint).get("faithfulness")
    except InputError:
        return None
    if not report:
        return None
    return (
        f"**Faithfulness** on {report['utterances']} demo-corpus {report['split']}-voice utterances: "
        f"the emotion-bearing word is among the keys kept by the text-side key-sparse layers in "
        f"**{report['key_sparse']:.0%}** of (utterance, layer) cases, against "
        f"{report['vanilla_top_half']:.0%} when vanilla attention keeps its top half of words by the "
        f"same column sums, and {report['chance']:.0%} for a random choice of the same size."
    )


def real_voices_section(cards) -> None:
    """The Models page's "real voices" tables: held-out speakers per corpus beside the linear
    probe, cross-corpus runs, what augmentation and mixing bought, and the corpora's licences."""
    import pandas as pd

    from .model_card import CORPUS_NOTES, real_voices_report

    report = real_voices_report()
    st.subheader("On real voices it never heard")
    if report is None:
        st.caption("No real-voice evaluation ships with these checkpoints.")
        return

    def pct(x):
        return "–" if x is None else f"{100 * x:.1f}"

    corpora = report.get("corpora", [])
    st.markdown(
        "Real acted speech, scored on **speakers held out of training** (each corpus split by "
        "speaker). The **linear probe** is the baseline to beat: a logistic regression on the same "
        "frozen Whisper states, averaged over time, trained on the same data."
    )
    rows = [{"model": c.name, "checkpoint": c.checkpoint.rsplit("/", 1)[-1].removesuffix(".safetensors"),
             **{f"{k.upper()} UA %": pct(c.by_corpus.get(k, {}).get("ua")) for k in corpora},
             **{f"{k.upper()} WA %": pct(c.by_corpus.get(k, {}).get("wa")) for k in corpora}} for c in cards]
    probe = report.get("probe", {}).get("by_corpus", {})
    rows.append({"model": "linear probe (baseline)", "checkpoint": "–",
                 **{f"{k.upper()} UA %": pct(probe.get(k, {}).get("ua")) for k in corpora},
                 **{f"{k.upper()} WA %": pct(probe.get(k, {}).get("wa")) for k in corpora}})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    margins = precision_note(report.get("by_corpus", {}), corpora)
    if margins:
        st.caption(margins)
    cross = report.get("cross_corpus", [])
    if cross:
        st.markdown("**A corpus the model never trained on** (every one of its clips is test data; each "
                    "model started from its demo-corpus-only file, so it never heard that corpus):")
        st.dataframe(pd.DataFrame([{
            "model": r.get("model_name", "ks_transformer"),  # rows written before other models had them
            "tested on": r["test"].upper(), "trained on": ", ".join(r["trained_on"]),
            "model UA %": pct(r["model"].get("ua")), "model WA %": pct(r["model"].get("wa")),
            "linear probe UA %": pct(r["probe"].get("ua")), "linear probe WA %": pct(r["probe"].get("wa")),
        } for r in cross]), hide_index=True, width="stretch", height=35 * (len(cross) + 1) + 3,  # every row
            column_config={"model": st.column_config.TextColumn(width="medium")})
    ablation = report.get("ablation", []) + report.get("probe_ablation", [])
    if len(ablation) > 1:
        st.markdown("**What augmentation and mixing bought** (same held-out speakers):")
        st.dataframe(pd.DataFrame([{"training data": r["setting"],
                                    **{f"{k.upper()} UA %": pct(r["by_corpus"].get(k, {}).get("ua"))
                                       for k in corpora + ["demo"]}} for r in ablation]),
                     hide_index=True, width="stretch")
    st.caption("Data: " + "; ".join(CORPUS_NOTES[k] for k in corpora + ["demo"] if k in CORPUS_NOTES)
               + ". The real corpora are non-commercial research licences: they are not part of this "
                 "project, and the models trained on them are for research and teaching.")


def precision_note(by_corpus: dict, corpora: list[str]) -> str | None:
    """How precise the held-out scores are, in words, from the default model's test sizes: the
    margin that the clips drawn alone give (``metrics.ua_margin``), and that the voices drawn add more."""
    from .metrics import ua_margin

    parts = [f"±{ua_margin(by_corpus[k]['ua'], by_corpus[k]['n']) * 100:.0f} points on {k.upper()} "
             f"({by_corpus[k]['n']} clips)" for k in corpora if by_corpus.get(k, {}).get("n")]
    if not parts:
        return None
    return ("How precise these figures are: which test clips happen to be drawn moves a score by up to about "
            + " and ".join(parts) + ", 95 % of the time; which test speakers are drawn can move it further (only a "
            "few voices per corpus are held out). A difference of a few points between two rows is not "
            "evidence that one model is better.")


def training_summary(checkpoint: str | None) -> str | None:
    """In plain words: what the checkpoint was trained on and how it does on voices it never heard
    (read from its meta, so it always matches the file)."""
    from .model_card import CORPUS_NOTES, held_out_scores, trained_on
    from .ui import checkpoint_meta  # looked up on ui at call time: tests patch it there

    if not checkpoint:
        return None
    try:
        meta = checkpoint_meta(checkpoint)
    except InputError:
        return None
    corpora = trained_on(meta)
    names = {"ravdess": "RAVDESS (real actors)", "tess": "TESS (two real actresses)",
             "savee": "SAVEE (real actors)", "demo": "the synthetic demo corpus",
             "demo-calm": "its calm-voice sentences, where the words decide the emotion",
             "iemocap": "IEMOCAP (real actors)", "cremad": "CREMA-D (real actors)",
             "meld": "MELD (TV series dialogue)", "manifest": "a corpus listed in a manifest CSV"}
    voices = {"ravdess": "RAVDESS's real actors", "tess": "TESS's real actresses",
              "savee": "SAVEE's real actors", "demo": "synthetic voices",
              "demo-calm": "calm synthetic voices whose words decide"}
    by = held_out_scores(meta)
    order = sorted(by, key=lambda k: k in SYNTHETIC)  # real voices first
    scores = [f"{100 * by[k]['ua']:.0f} % of the time on {voices.get(k, k)}" for k in order if "ua" in by[k]]
    if not corpora:
        return None
    listed = [names.get(c, c) for c in corpora]
    text = "This model was trained on " + (", ".join(listed[:-1]) + " and " + listed[-1] if len(listed) > 1
                                           else listed[0]) + "."
    if scores:
        text += (" On speakers it never heard, it names the right emotion " + ", ".join(scores)
                 + " (averaged over the four emotions; guessing gives 25 %).")
    if any(k not in SYNTHETIC and v.get("ua", 1) < 0.35 for k, v in by.items()):
        text += (" On real voices that is no better than guessing: this model shows what was learned "
                 "from synthetic speech, not how people sound.")
    elif any(c in CORPUS_NOTES and c not in SYNTHETIC for c in corpora):
        text += (" Actors exaggerate emotions: on everyday speech, other microphones and rooms, expect it "
                 "to be right less often.")
    return text
