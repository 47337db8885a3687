"""Sparse masks (MESM): which spectrogram and face points each cross-modal attention layer keeps
(nucleus sampling, top_p), what that saves in FLOPs, and what each modality predicts."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from ser_core import ui, viz  # noqa: E402
from ser_core.attribution import kept_share, points_on_grid  # noqa: E402
from ser_core.experiments import found_results_dir, load_results  # noqa: E402

ui.page_setup("Sparse masks")
st.title("Sparse masks")
st.caption(
    "MESM's cross-modal attention uses the transcript (text) to score every point of each 400 ms "
    "spectrogram chunk and each face crop; nucleus sampling keeps the smallest set of points holding "
    "top_p of the attention mass, and the sparse CNN computes only there. Move top_p or switch "
    "modalities off: only the model re-runs, on the features already computed for this clip."
)

checkpoint = ui.checkpoint_picker(models=("mesm", "fe2e"), default="mesm_demo.safetensors")
if not checkpoint:
    st.stop()
meta = ui.checkpoint_meta(checkpoint)
clip = ui.clip_picker("sparse", video=True)
if clip is not None and clip.video is None:
    st.caption("No video with this clip: MESM then predicts from text and audio only.")
clicked = bool(clip) and st.button("Analyze", type="primary", key="sparse_button")
run_area = st.container()  # made on every run: later elements keep their places (see Analyze)
if clicked:
    with run_area:
        try:
            st.session_state["sparse_analysis"] = ui.analyze_queued(
                checkpoint, clip.data, transcript=clip.transcript, video=clip.video, name=clip.name,
                spinner="Transcribing, finding faces, encoding and running the model…")
            st.session_state["sparse_clip"] = clip
        except Exception as exc:  # e.g. a video without a face: a message, never a traceback
            st.session_state.pop("sparse_analysis", None)
            ui.show_error(exc)
base = st.session_state.get("sparse_analysis")
if base is None or base.trace.model != meta["model"]:
    st.info("Pick a sample (those marked with a face have video), or upload audio and a face video, "
            "then press **Analyze**.")
    st.stop()

config = meta["config"]
has = config.get("modalities", "TAV")
feats = base.features
n_faces = len(feats.extra.get("face_times", ()))
c1, c2, c3, c4 = st.columns([3, 1, 1, 1])
sparse_model = meta["model"] == "mesm"
top_p = c1.slider("top_p (attention mass each layer keeps)", 0.05, 1.0, float(config.get("top_p", 0.5)), 0.05,
                  key="sparse_top_p", disabled=not sparse_model,
                  help="1.0 keeps every point (dense). FE2E has no attention layers: always dense.")
c2.checkbox("Text", value=True, disabled=True, key="sparse_T", help="The query of every attention layer.")
use_a = c3.checkbox("Audio", value="A" in has, disabled="A" not in has, key="sparse_A")
use_v = c4.checkbox("Faces", value="V" in has and n_faces > 0, disabled="V" not in has or n_faces == 0,
                    key="sparse_V")
modalities = "T" + ("A" if use_a else "") + ("V" if use_v else "")
analysis = base.rerun(top_p=top_p, modalities=modalities)
trace = analysis.trace

# --- predictions -----------------------------------------------------------------------------
left, right = st.columns([1, 1])
with left:
    st.subheader(f"Prediction: {ui.label_name(analysis.predicted)}")
    st.caption(f"confidence {analysis.confidence:.0%} · modalities {modalities} · "
               f"{feats.duration:.1f} s · {n_faces} face frames · “{feats.transcript}”")
    st.plotly_chart(viz.probabilities_figure(analysis.labels, analysis.probs, clip.label if clip else None),
                    width="stretch", key="sparse_probs")
with right:
    order = trace.extras.get("modality_order", [])
    per = np.asarray(trace.extras.get("modality_probs", np.zeros((0, 0))))
    weights = np.asarray(trace.extras.get("modality_weights", np.zeros(0)))
    rows = [{"modality": m, "weight in the sum": round(float(w), 3),
             "predicts": ui.label_name(analysis.labels[int(np.argmax(p))]) if p.sum() > 0 else "— (off / absent)",
             **{l: round(float(x), 3) for l, x in zip(analysis.labels, p)}}
            for m, w, p in zip(order, weights, per)]
    st.markdown("**Each modality's own prediction** and its weight in the final weighted sum (Sec. 4.2)")
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")

# --- FLOPs -----------------------------------------------------------------------------------
flops = np.asarray(trace.extras.get("flops", np.zeros(0)), dtype=float)
dense = np.asarray(trace.extras.get("flops_dense", np.zeros(0)), dtype=float)
layers = trace.extras.get("flops_layers", [])
if flops.size:
    st.subheader("FLOPs of the feature-extraction CNN")
    m1, m2, m3 = st.columns(3)
    m1.metric("This setting", f"{flops.sum() / 1e9:.3f} G")
    m2.metric("Dense (FE2E)", f"{dense.sum() / 1e9:.3f} G")
    m3.metric("Ratio", f"{flops.sum() / max(dense.sum(), 1):.2f}")
    fig = viz.bar_figure(layers, flops / 1e6, "MFLOPs per layer at this top_p (dense in the table)",
                         value_title="MFLOPs")
    st.plotly_chart(fig, width="stretch", key="sparse_flops")
    with st.expander("Per layer, sparse vs dense"):
        st.dataframe(pd.DataFrame({"layer": layers, "MFLOPs": np.round(flops / 1e6, 2),
                                   "dense MFLOPs": np.round(dense / 1e6, 2)}), hide_index=True)

# --- masks per layer -------------------------------------------------------------------------
records = [r for r in trace.records if r.kind == "nucleus"]
shapes = trace.extras.get("map_shapes", {})
if not records:
    st.info("No attention layer ran: FE2E is dense, or only the text modality is on.")
else:
    st.subheader("Kept points per layer (Fig. 3 / 4 of the paper)")
    st.caption("Tinted: the points each layer kept. The colour is the point's attention weight divided by "
               "the mean weight of the kept points: 1 is an even share, 2 twice as much. Colours that all "
               "sit close to 1 mean that, among the points it kept, the layer barely prefers one to another. "
               "On a face the kept cells are also outlined in yellow, with a lighter tint, so the face stays "
               "visible.")
    spec_records = [r for r in records if r.query_modality == "spectrogram"]
    face_records = [r for r in records if r.query_modality == "visual"]
    points = None  # Integrated Gradients of every input point, by modality, when asked for
    if st.toggle("Beside each mask: Integrated Gradients of the same points", key="sparse_ig",
                 help="Which points change the prediction, whatever the attention says: red raises the "
                      "predicted emotion, blue lowers it. If the nucleus keeps what the model uses, the "
                      "kept points hold much more of it than their share of the points (a few seconds)."):
        try:
            ig = ui.run_queued(lambda should_stop: analysis.attribution_details("integrated_gradients"),
                               spinner="Integrated Gradients of every spectrogram and face point…")
            points = ig.extras.get("points", {})
            st.caption(f"Integrated Gradients of {ui.label_name(ig.label)}, summed over each cell's input "
                       f"points: {ig.n_steps} steps from an all-zero input (every spectrogram point at the "
                       "clip's average level, mid-grey faces, no sentence) to this clip. Red: the point raises "
                       f"{ui.label_name(ig.label)}; blue: it lowers it.")
        except Exception as exc:  # e.g. a clip longer than explanations accept: a message
            ui.show_error(exc)

    def attribution_beside(col, r, j: int, flip: bool) -> None:
        """Under a layer's mask: the same points' attribution, and how much of it the kept hold."""
        if not points or r.query_modality not in points or j >= len(points[r.query_modality]):
            return
        grid = shapes[r.name]
        scores, keep = points_on_grid(points[r.query_modality][j], grid), r.keep[0, j].reshape(grid)
        scores, keep = (scores[::-1], keep[::-1]) if flip else (scores, keep)
        col.plotly_chart(viz.point_attribution_figure(scores, keep, r.name, face=not flip,
                                                      share=kept_share(scores, keep)),
                         width="stretch", key=f"ig_{r.name}")

    if spec_records:
        chunks = ui.mel_chunks_for_display(feats.audio)
        n = len(spec_records[0].query_labels)
        j = st.slider("Spectrogram chunk (400 ms)", 0, max(n - 1, 0), 0, key="sparse_chunk",
                      disabled=n < 2, format="%d") if n > 1 else 0
        st.caption(f"Chunk {j}: {spec_records[0].query_labels.names[j]} — low mel bands at the bottom.")
        cols = st.columns(len(spec_records))
        for col, r in zip(cols, spec_records):
            H, W = shapes[r.name]
            keep = r.keep[0, j].reshape(H, W)[::-1]
            w = r.weights[0, j].reshape(H, W)[::-1]
            col.plotly_chart(viz.nucleus_overlay_figure(chunks[j][::-1], keep, w, title=r.name),
                             width="stretch", key=f"spec_{r.name}")
            attribution_beside(col, r, j, flip=True)
    if face_records:
        starts = face_records[0].query_labels.start
        n = len(starts)
        j = st.slider("Face frame", 0, max(n - 1, 0), 0, key="sparse_face") if n > 1 else 0
        k = int(np.argmin(np.abs(feats.extra["face_times"] - starts[j])))
        st.caption(f"Face frame at {feats.extra['face_times'][k]:.2f} s.")
        cols = st.columns(len(face_records))
        for col, r in zip(cols, face_records):
            H, W = shapes[r.name]
            col.plotly_chart(viz.nucleus_overlay_figure(feats.extra["faces"][k], r.keep[0, j].reshape(H, W),
                                                        r.weights[0, j].reshape(H, W), title=r.name),
                             width="stretch", key=f"face_{r.name}")
            attribution_beside(col, r, j, flip=False)
    elif "V" in modalities:
        st.caption("No face frames for this clip.")

# --- corpus-level figures ----------------------------------------------------------------------
st.divider()
st.subheader("Accuracy and FLOPs over top_p (paper Fig. 5)")
sweep = load_results("mesm_top_p")
if sweep:
    if sweep["rows"] and sweep["rows"][0].get("test_clips_with_faces") == 0:
        st.caption("The corpus this sweep ran on has no face videos: MESM used the text and the audio "
                   "only, and the FLOPs are those of the spectrogram CNN.")
    st.image(str(found_results_dir("mesm_top_p") / "results.png"))
    st.dataframe(pd.DataFrame(sweep["rows"]), hide_index=True, width="stretch")
else:
    st.code("python -m ser_core experiment mesm_top_p   # the demo corpus's test voices, top_p 0.1 … 1.0")
report = meta.get("expressive_regions")
if report:
    st.subheader("Do kept face points fall on expressive regions?")
    st.dataframe(pd.DataFrame([{"layer": name, "kept points in brows/eyes/mouth": f"{v['share_kept']:.1%}",
                                "random mask of the same size": f"{v['share_random']:.1%}",
                                "kept points": v["kept_cells"],
                                **({"how bright the kept points are (× the whole face)": f"{v['brightness_kept']:.2f}×"}
                                   if "brightness_kept" in v else {})}
                               for name, v in report["layers"].items() if "share_kept" in v]),
                 hide_index=True)
    if any("brightness_kept" in v for v in report["layers"].values()):
        st.caption("The drawn faces' brows, eyes and mouth are darker than the skin around them: a layer "
                   "whose kept points are brighter than the face on average keeps skin, not those regions.")
    held = {name: v for name, v in report["layers"].items() if "ig_share_kept" in v}
    if held:
        st.markdown("**Do the kept points hold what changes the prediction?** Integrated Gradients of each "
                    "utterance, summed onto each layer's points: the share of its magnitude on the kept "
                    "points, against the share of points kept (equal shares: the mask ignores it).")
        st.dataframe(pd.DataFrame([{"layer": name, "points kept": f"{v['share_cells_kept']:.1%}",
                                    "attribution they hold": f"{v['ig_share_kept']:.1%}",
                                    "attribution in brows/eyes/mouth": (f"{v['ig_share_regions']:.1%} (area "
                                                                        f"{v['share_random']:.1%})"
                                                                        if "ig_share_regions" in v else "—")}
                                   for name, v in held.items()]), hide_index=True)
    st.caption(f"{report['utterances']} demo-corpus {report['split']} utterances with a face video "
               f"(`python -m ser_core regions {'--attribution ' if held else ''}--write`).")
