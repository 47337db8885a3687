"""Evaluate: score a checkpoint on a corpus fold — WA, UA, macro-F1, confusion matrix, errors."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import csv  # noqa: E402
import io  # noqa: E402
from pathlib import Path  # noqa: E402

import streamlit as st  # noqa: E402

from ser_core import access, corpus_choice, ui, viz  # noqa: E402

ui.page_setup("Evaluate")
st.title("Evaluate a checkpoint")
st.caption(
    "Score the checkpoint chosen in the sidebar on a corpus: weighted accuracy (WA, share of "
    "utterances right), unweighted accuracy (UA, mean recall over classes), macro-F1, the confusion "
    "matrix and the utterances it got wrong. Features are cached on disk: a second run encodes nothing."
)

checkpoint = ui.checkpoint_picker()
if not access.teacher_gate("Evaluating a checkpoint on a corpus of this server"):
    st.stop()  # visitors analyse and compare clips; the server's corpora are the teacher's

kind, path = ui.corpus_picker("eval")
p1, p2, p3 = st.columns(3)
protocol = p1.selectbox("Protocol", list(corpus_choice.PROTOCOL_TITLES), key="eval_protocol",
                        format_func=lambda p: f"{p} — {corpus_choice.PROTOCOL_TITLES[p]}",
                        help="For a model trained on a mix of corpora: speakers scores one of its corpora "
                             "on the voices held out from training, all scores a corpus it never "
                             "trained on (use the test split).")
fold = int(p2.number_input("Fold", min_value=0, max_value=99, value=0, step=1, key="eval_fold",
                           help="Which fold of the protocol (e.g. the held-out session for loso)."))
split = p3.selectbox("Split", ["test", "val", "train"], key="eval_split")
augmented = st.toggle(
    "Other rooms and microphones: score an augmented copy of each clip", key="eval_augmented",
    help="Each clip is first changed the way training augments it (another voice pitch and speed, a room's "
         "echo, noise, a phone or laptop microphone, another level), the same way on every run. How much "
         "lower the scores are shows how much the model depends on the corpus's own studio. The copies "
         "are new audio, so their features are computed the first time.")

settings = {"checkpoint": checkpoint, "kind": kind, "path": path, "protocol": protocol, "fold": fold,
            "split": split, "augmented": augmented}
if checkpoint and st.button("Evaluate", type="primary", key="eval_button"):
    bar = st.progress(0.0, text="Loading the corpus and the model…")

    def on_progress(stage: str, done: int, total: int) -> None:
        ui.stop_if_tab_closed()  # a closed tab stops the evaluation at its next utterance
        if stage == "features":
            bar.progress(0.9 * done / total, text=f"Features {done}/{total} (cached ones are read from disk)")
        else:
            bar.progress(0.9 + 0.1 * done / total, text=f"Running the model {done}/{total}")

    try:
        from ser_core.scoring import AUGMENTED_COPY_SEED, evaluate

        corpus, root = corpus_choice.resolve_corpus(kind, path, confine=True)
        result = evaluate(checkpoint, corpus, root, protocol=protocol, fold=fold, split=split,
                          progress=False, on_progress=on_progress,
                          augment_seed=AUGMENTED_COPY_SEED if augmented else None)
        st.session_state["eval_result"] = {"settings": settings, "result": result}
    except Exception as exc:  # every failure becomes a message, never a traceback
        st.session_state.pop("eval_result", None)
        ui.show_error(exc)  # the loaders' messages say what layout they expected
    finally:
        bar.empty()

stored = st.session_state.get("eval_result")
if stored is None:
    st.info("Choose a corpus, protocol, fold and split, then press **Evaluate**.")
    st.stop()

result, shown = stored["result"], stored["settings"]
labels = result["labels"]
where = corpus_choice.CORPUS_KINDS[shown["kind"]]["title"] + (f" `{shown['path']}`" if shown["path"] else "")
if shown["protocol"] == "all":
    heading = "every clip of the corpus (cross-corpus: it never trained on it)"
else:
    part = {"predefined": "the corpus's own split",
            "speakers": "the split by speaker (test voices never heard in training)"}.get(
        shown["protocol"],
        f"fold {shown['fold']} ({result['fold']}) of {corpus_choice.PROTOCOL_TITLES[shown['protocol']]}")
    heading = f"the {shown['split']} part of {part}"
if shown.get("augmented"):
    heading += ", each clip as an augmented copy (another room and microphone)"
st.subheader(f"{Path(shown['checkpoint']).name} on {heading}")
st.caption(f"{where} · {result['n']} utterances"
           + (" · these are the last results; press **Evaluate** to score the settings above"
              if shown != settings else ""))
m1, m2, m3, m4 = st.columns(4)
m1.metric("WA", f"{result['wa']:.3f}", help="Weighted accuracy: share of utterances classified right.")
m2.metric("UA", f"{result['ua']:.3f}", help="Unweighted accuracy: recall averaged over the classes.")
m3.metric("macro-F1", f"{result['macro_f1']:.3f}")
m4.metric("utterances", result["n"])

left, right = st.columns([3, 2])
with left:
    view = st.radio("Confusion matrix", ["counts", "row-normalised (% of each true class)"],
                    horizontal=True, key="eval_cm_view")
    cm_figure = viz.confusion_matrix_figure(result["confusion_matrix"], [ui.label_name(lb) for lb in labels],
                                            normalize=view != "counts")
    st.plotly_chart(cm_figure, width="content", key="eval_cm")
with right:
    st.markdown("**Per class**")
    st.dataframe(
        [{"class": ui.label_name(r["label"]), "precision": r["precision"], "recall": r["recall"],
          "F1": r["f1"], "support": r["support"]} for r in result["per_class"]],
        hide_index=True, width="stretch", key="eval_per_class",
        column_config={k: st.column_config.NumberColumn(format="%.3f") for k in ("precision", "recall", "F1")},
    )

wrong = [p for p in result["predictions"] if p["true"] != p["pred"]]
st.subheader(f"Misclassified utterances ({len(wrong)} of {result['n']})")
if wrong:
    st.dataframe(
        [{"id": p["id"], "true": ui.label_name(p["true"]), "predicted": ui.label_name(p["pred"]),
          "confidence": p["confidence"],
          "transcript": p["transcript"] or "", "audio": p["audio"]} for p in wrong],
        hide_index=True, width="stretch", key="eval_wrong",
        column_config={"confidence": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0, format="%.2f")},
    )
    o1, o2 = st.columns([3, 1])
    choice = o1.selectbox(
        "See where the model looked", range(len(wrong)), key="eval_open_choice",
        format_func=lambda i: (f"{wrong[i]['id']} · true {ui.label_name(wrong[i]['true'])} → predicted "
                               f"{ui.label_name(wrong[i]['pred'])}"),
    )
    o2.write("")  # align the button with the select box
    if o2.button("Open on Analyze", key="eval_open", icon=":material/search:"):
        chosen = wrong[choice]
        st.session_state["analyze_request"] = {
            "audio": chosen["audio"], "transcript": chosen["transcript"] or None,
            "video": chosen["video"], "name": chosen["id"], "label": chosen["true"],
            "augment": chosen.get("augment"),  # an augmented copy: Analyze makes the same copy
        }
        st.switch_page("pages/1_Analyze.py")
else:
    st.success("Every utterance of this split was classified right.")


def predictions_csv() -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "true", "predicted", "correct", "confidence", "audio", "transcript", "video"])
    for p in result["predictions"]:
        writer.writerow([p["id"], p["true"], p["pred"], int(p["true"] == p["pred"]), f"{p['confidence']:.4f}",
                         p["audio"], p["transcript"] or "", p["video"] or ""])
    return buffer.getvalue()


def per_class_csv() -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["label", "precision", "recall", "f1", "support"])
    for r in result["per_class"]:
        writer.writerow([r["label"], f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}", r["support"]])
    # the overall scores, each in its own column (as in scikit-learn's classification report)
    writer.writerow(["WA (accuracy)", "", "", f"{result['wa']:.4f}", result["n"]])
    writer.writerow(["UA (mean recall)", "", f"{result['ua']:.4f}", "", result["n"]])
    writer.writerow(["macro-F1", "", "", f"{result['macro_f1']:.4f}", result["n"]])
    return buffer.getvalue()


stem = f"{Path(shown['checkpoint']).stem}_{shown['kind']}_{shown['protocol']}_fold{shown['fold']}_{shown['split']}"
st.subheader("Export")
e1, e2, e3 = st.columns(3)
# built only when clicked (callables), never on an ordinary rerun
e1.download_button("Predictions (CSV)", predictions_csv, f"{stem}_predictions.csv", "text/csv", on_click="ignore")
e2.download_button("Per-class scores (CSV)", per_class_csv, f"{stem}_per_class.csv", "text/csv", on_click="ignore")
e3.download_button("Confusion matrix (PNG)", lambda: viz.figure_to_png(cm_figure, scale=2.0),
                   f"{stem}_confusion.png", "image/png", on_click="ignore")
