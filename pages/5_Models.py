"""Models: every shipped checkpoint side by side: what the paper's model is, its size and cost,
its demo-corpus test scores next to the paper's own (different data), and learned choices."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from ser_core import ui, viz  # noqa: E402
from ser_core.checkpoint import list_checkpoints  # noqa: E402
from ser_core.errors import InputError  # noqa: E402
from ser_core.experiments import EXPERIMENTS, load_results, results_dir  # noqa: E402
from ser_core.model_card import model_card, model_doc  # noqa: E402
from ser_core.models.base import model_class  # noqa: E402
from ser_core.paths import CHECKPOINTS_DIR  # noqa: E402

st.set_page_config(page_title="Models · SER attention explorer", page_icon="🧩", layout="wide")
st.title("Models")
st.caption(
    "Each checkpoint in `checkpoints/`: the paper it implements, parameters, FLOPs for a 10 s clip "
    "(matrix products, convolutions and attention counted by PyTorch's FlopCounterMode), and its "
    "test WA / UA on the demo corpus's held-out voices. The papers' own numbers are on IEMOCAP with "
    "their own protocols: **a different corpus and protocol, not a comparison**."
)


@st.cache_data(show_spinner="Counting parameters and FLOPs…", max_entries=32)
def card(path: str, mtime: float):
    return model_card(path)


cards, problems = [], []
for path in list_checkpoints(CHECKPOINTS_DIR):
    try:
        cards.append(card(str(path), path.stat().st_mtime))
    except InputError as exc:
        problems.append(f"{path.name}: {exc}")
for problem in problems:
    st.warning(problem)
if not cards:
    st.info("No checkpoint in checkpoints/. Train one with `python -m ser_core train --model NAME`.")
    st.stop()


def pct(x):
    return "–" if x is None else f"{100 * x:.1f}"


table = pd.DataFrame([{
    "checkpoint": c.checkpoint.rsplit("/", 1)[-1],
    "model": c.name,
    "inputs": ", ".join(c.inputs),
    "parameters (M)": round(c.parameters / 1e6, 2),
    "GFLOPs / 10 s clip": round(c.flops_10s / 1e9, 2),
    "demo test WA %": pct(c.demo_test.get("wa")),
    "demo test UA %": pct(c.demo_test.get("ua")),
    "paper WA %": pct(c.paper_results.get("wa")),
    "paper UA %": pct(c.paper_results.get("ua")),
} for c in cards])
st.dataframe(table, hide_index=True, width="stretch")

for c in cards:
    st.divider()
    st.subheader(f"{c.name} · `{c.checkpoint.rsplit('/', 1)[-1]}`")
    st.markdown(c.summary)
    left, right = st.columns([1, 1])
    with left:
        m1, m2, m3 = st.columns(3)
        m1.metric("Parameters", f"{c.parameters / 1e6:.2f} M")
        m2.metric("FLOPs, 10 s clip", f"{c.flops_10s / 1e9:.2f} G")
        m3.metric("Classes", len(c.labels))
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
            st.caption(f"Trained {len(epochs)} epochs, {sum(epochs) / len(epochs):.0f} s per epoch on "
                       f"average (chosen epoch {c.training.get('best_epoch')}).")
    with right:
        alpha = c.extras.get("alpha")
        if alpha:
            values = list(alpha.values())
            st.plotly_chart(viz.bar_figure(list(alpha), values, "Searched fusion-cell weights softmax(α)",
                                           highlight=values.index(max(values)), value_title="weight"),
                            width="stretch", key=f"alpha_{c.checkpoint}")
        st.json({k: v for k, v in c.config.items()}, expanded=False)
    with st.expander("How it works (from the model's source file)"):
        st.markdown(model_doc(model_class(c.name)))

st.divider()
st.header("The papers' experiments")
st.caption("Each is one command; its table and plot appear here once it has run "
           "(on the demo corpus unless another corpus was given).")
for name in EXPERIMENTS:
    saved = load_results(name)
    with st.expander(f"`python -m ser_core experiment {name}`" + ("" if saved else " — not run yet"),
                     expanded=False):
        if not saved:
            st.code(f"python -m ser_core experiment {name}  # add --epochs N / --max-utterances N for a quick run")
            continue
        settings = saved["settings"]
        st.caption(f"corpus {settings.get('root') or 'demo'} · protocol {settings.get('protocol')} · "
                   f"epochs {settings.get('epochs') or 'preset'} · utterances "
                   f"{settings.get('max_utterances') or 'all'}")
        st.dataframe(pd.DataFrame(saved["rows"]), hide_index=True, width="stretch")
        png = results_dir(name) / "results.png"
        if png.exists():
            st.image(str(png))
