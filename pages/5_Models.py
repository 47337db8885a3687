"""Models: every shipped checkpoint side by side: what the paper's model is, its size and cost,
its demo-corpus test scores next to the paper's own (different data), learned choices, and how
faithful its attention is per corpus (the deletion test, when it was measured)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from ser_core import ui, viz  # noqa: E402
from ser_core.checkpoint import list_all_checkpoints  # noqa: E402
from ser_core.data.mix import SYNTHETIC  # noqa: E402
from ser_core.errors import InputError  # noqa: E402
from ser_core.experiments import (  # noqa: E402
    EXPERIMENT_TITLES,
    EXPERIMENTS,
    SHIPPED_RESULTS,
    found_results_dir,
    load_results,
)
from ser_core.model_notes import MODEL_NOTES, settings_table  # noqa: E402

ui.page_setup("Models")
st.title("Models")
st.caption(
    "Each model checkpoint (the ones that ship with the project and the ones trained here): the paper it implements, parameters, FLOPs for a 10 s clip "
    "(matrix products, convolutions and attention counted by PyTorch's FlopCounterMode), and its "
    "unweighted accuracy (UA: the mean of the per-emotion hit rates, so chance is 25 % for four "
    "emotions) on voices it never heard: real actors (RAVDESS, TESS) and the demo corpus's "
    "synthetic test voices. The papers' own numbers are on IEMOCAP with their own protocols: "
    "**a different corpus and protocol, not a comparison**."
)


cards, problems = [], []
for path in list_all_checkpoints():
    try:
        cards.append(ui.model_card_of(path))
    except InputError as exc:
        problems.append(f"{path.name}: {exc}")
for problem in problems:
    st.warning(problem)
if not cards:
    st.info("There is no model checkpoint yet. Train one on the Train page.")
    st.stop()


def pct(x):
    return "–" if x is None else f"{100 * x:.1f}"


def faithfulness_section(c) -> None:
    """The deletion test per corpus stored in the checkpoint, or the command that measures it."""
    name = c.checkpoint.rsplit("/", 1)[-1]
    if not c.faithfulness:
        corpora = " ".join(f"--corpus {k}" + ("" if k == "demo" else f" --root /path/to/{k}")
                           for k in (c.trained_on or ["demo"]) if k != "demo-calm")
        st.markdown(f"**Does its attention point at what it uses?** Not measured yet: run "
                    f"`python -m ser_core faithfulness --checkpoint {name} {corpora} --limit 40 --write`")
        return
    st.markdown(
        "**Does its attention point at what it uses?** For each clip, the words or stretches of "
        "speech a method ranks most important are removed, the top 10 %, 20 %, … up to 50 %, and the "
        "model runs again. **AOPC** is how much the probability of the emotion the model predicted "
        "falls on average over those steps (0.10 = 10 percentage points): the higher it is, the "
        "better the ranking found what the model uses. Removing at **random** is the yardstick: a "
        "ranking worth reading scores above it. Integrated Gradients and gradient × input rank by "
        "how the output changes with each input; attention rollout follows the attention through "
        "all layers. The last columns: the fall when the top 20 % are removed by attention and at "
        "random, and how many times larger attention's is."
    )
    st.dataframe(pd.DataFrame(c.faithfulness), hide_index=True, width="stretch")
    st.caption(c.faithfulness_measured + " A dash: that ranking does not apply to this model, or (last "
               "column) random removal hardly changes the probability, so there is nothing to compare with.")


real_corpora = sorted({k for c in cards for k in c.by_corpus if k not in (*SYNTHETIC, "manifest")})
table = pd.DataFrame([{
    "checkpoint": c.checkpoint.rsplit("/", 1)[-1],
    "model": c.name,
    "trained on": ", ".join(c.trained_on),
    "inputs": ", ".join(c.inputs),
    "parameters (M)": round(c.parameters / 1e6, 2),
    "GFLOPs / 10 s clip": round(c.flops_10s / 1e9, 2),
    **{f"{k.upper()} test UA %": pct(c.by_corpus.get(k, {}).get("ua")) for k in real_corpora},
    "demo test UA %": pct(c.demo_test.get("ua")),
    "paper UA %": pct(c.paper_results.get("ua")),
} for c in cards])
st.dataframe(table, hide_index=True, width="stretch")
ui.real_voices_section(cards)

for c in cards:
    st.divider()
    st.subheader(f"{c.name} · `{c.checkpoint.rsplit('/', 1)[-1]}`")
    note = MODEL_NOTES.get(c.name)
    st.markdown(f"**{note[0]}** {note[1]}" if note else c.summary)
    left, right = st.columns([1, 1])
    with left:
        m1, m2, m3 = st.columns(3)
        m1.metric("Parameters", f"{c.parameters / 1e6:.2f} M")
        m2.metric("FLOPs, 10 s clip", f"{c.flops_10s / 1e9:.2f} G")
        m3.metric("Classes", len(c.labels))
        for corpus, scores in c.by_corpus.items():
            if corpus in ("demo", "manifest"):
                continue
            title = ("Calm-voice set (synthetic; the words decide), test voices" if corpus == "demo-calm"
                     else f"{corpus.upper()}, held-out speakers")
            st.markdown(f"**{title}** (n = {scores.get('n')}): "
                        f"WA {pct(scores.get('wa'))} %, UA {pct(scores.get('ua'))} %")
        if c.demo_test:
            st.markdown(
                f"**Demo corpus, test voices** (n = {c.demo_test.get('n')}): WA {pct(c.demo_test.get('wa'))} %, "
                f"UA {pct(c.demo_test.get('ua'))} %, macro-F1 {pct(c.demo_test.get('macro_f1'))} %"
            )
        if c.paper_results:
            r = c.paper_results
            scores = (f"WA {pct(r['wa'])} %, UA {pct(r['ua'])} %" if r.get("wa") is not None
                      else "see note")
            st.markdown(f"**Paper** ({r['paper']}): {scores} — *{r['data']}*")
        epochs = c.training.get("epoch_seconds") or []
        if epochs:
            start = c.training.get("init_from")
            st.caption(f"Trained {len(epochs)} epochs, {sum(epochs) / len(epochs):.0f} s per epoch on "
                       f"average (chosen epoch {c.training.get('best_epoch')})"
                       + (f", starting from an earlier model's weights ({start.rsplit('/', 1)[-1]} at the "
                          "time; the README beside the shipped checkpoints gives every step)." if start else "."))
    with right:
        alpha = c.extras.get("alpha")
        if alpha:
            values = list(alpha.values())
            st.plotly_chart(viz.bar_figure(list(alpha), values, "Searched fusion-cell weights softmax(α)",
                                           highlight=values.index(max(values)), value_title="weight"),
                            width="stretch", key=f"alpha_{c.checkpoint}")
        st.markdown("**Settings**")
        st.table(settings_table(c), hide_index=True)
    faithfulness_section(c)

st.divider()
st.header("The papers' experiments")
st.caption("Each is one command; its table and plot appear here once it has run "
           "(on the demo corpus unless another corpus was given). One at a time: pick it below.")
# One experiment drawn at a time: six tables and plots in closed expanders were still all drawn
# by the browser, a second of the page's load.
chosen = st.selectbox("Experiment", EXPERIMENTS, key="models_experiment",
                      format_func=lambda n: EXPERIMENT_TITLES[n] + ("" if load_results(n) else " (not run yet)"))
saved = load_results(chosen)
st.markdown(f"`python -m ser_core experiment {chosen}`")
if not saved:
    st.info("Not run yet on this machine. Run the command above (add --epochs N / --max-utterances N "
            "for a quick run); its table and plot then appear here.")
else:
    settings = saved["settings"]
    shipped = found_results_dir(chosen) == SHIPPED_RESULTS / chosen
    root = str(settings.get("root") or "")
    corpus = "the demo corpus" if not root or "demo_corpus" in root else f"corpus {root}"
    model_args = ", ".join(f"{k} = {v}" for k, v in (settings.get("model_args") or {}).items())
    st.caption(f"{corpus} · protocol {settings.get('protocol')} · "
               f"epochs {settings.get('epochs') or 'preset'} · utterances "
               f"{settings.get('max_utterances') or 'all'}"
               + (f" · every row with {model_args}" if model_args else "")
               + (" · run by the project and shipped with it; the command above makes this machine's own"
                  if shipped else ""))
    st.dataframe(pd.DataFrame(saved["rows"]), hide_index=True, width="stretch")
    png = found_results_dir(chosen) / "results.png"
    if png.exists():
        st.image(str(png))
