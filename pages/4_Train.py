"""Train: start a training run in the background, watch its loss and validation curves, stop/resume.

The run is a separate process (``ser_core.jobs``): this page only starts it and reads its progress
files, so it stays responsive, and a refreshed or second browser sees the same run.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import shlex  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import plotly.graph_objects as go  # noqa: E402
import streamlit as st  # noqa: E402

from ser_core import access, corpus_choice, corpus_job, job_progress, jobs, ui, viz  # noqa: E402
from ser_core.checkpoint import list_all_checkpoints  # noqa: E402
from ser_core.errors import InputError  # noqa: E402
from ser_core.models.base import MODELS, _import_builtin_models  # noqa: E402
from ser_core.train import PRESETS  # noqa: E402

ui.page_setup("Train")
st.title("Train a model")


def device_name() -> str:
    import torch

    return f"the GPU ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "the CPU"


st.caption(
    f"Training runs in the background on {device_name()}, one run at a time for this server. "
    "Features are extracted once and cached on disk; the epoch kept is the one with the best "
    "validation UA, and the test part is scored once at the end."
)

job = jobs.current_job()
busy = job is not None and job.active
st.session_state["train_seen"] = (job.id, job.status) if job else None

# --- the generated corpora (the demo corpus, its calm-voice set), made in the background when missing --
GENERATE_KEYS = {"demo": "train_generate_corpus", "demo-calm": "train_generate_calm"}
ABOUT = {"demo": "short synthetic clips of four emotions",
         "demo-calm": "synthetic clips said calmly, where only the words say the emotion (the default "
                      "KS-Transformer learnt from them to look at the emotion words)"}


def corpus_generation() -> None:
    """Progress of a corpus being generated (any session started it); redraws the page once it is
    there, so that Start becomes available."""
    gen = corpus_job.corpus_job()
    if gen is None or not gen.active:
        st.rerun()
    p = corpus_job.corpus_progress(gen)
    left = f" · {corpus_job.format_duration(p.remaining)} left" if p.remaining else ""
    st.progress(p.fraction, text=f"Generating the {gen.title}: {p.done}/{p.total} clips{left}")


def generated_corpus_panel(kind: str) -> None:
    """A generated corpus is not there: a button that makes it in the background (or its progress)."""
    title = corpus_job.GENERATED[kind][0]
    gen = corpus_job.corpus_job()
    mine = gen is not None and gen.out == str(corpus_job.corpus_folder(kind))
    if gen is not None and gen.active:  # one generation at a time, whichever it is
        if mine:
            st.fragment(corpus_generation, run_every=2)()
        else:
            st.info(f"The {gen.title} is being generated; the {title} can be made once it is done.")
        return
    if mine and gen.status == "failed" and gen.message:
        st.error(gen.message)
    n = corpus_job.corpus_size(kind)
    st.info(f"The {title} is {n} {ABOUT[kind]}, made on this server. Generating it takes "
            f"{corpus_job.format_duration(corpus_job.estimate_corpus_seconds(n))} in the background; "
            f"the page stays usable.")
    if st.button(f"Generate {title}", key=GENERATE_KEYS[kind], icon=":material/graphic_eq:"):
        try:
            corpus_job.start_corpus(kind=kind)
            st.rerun()
        except Exception as exc:  # a message, never a traceback
            ui.show_error(exc)


# --- settings ------------------------------------------------------------------------------------
# the settings, the demo corpus button, Start and Overwrite: the teacher only (visitors watch the run)
if access.teacher_gate("Starting, stopping or resuming a training run"):
    with st.expander("New training run", expanded=not busy):
        if busy:
            st.info("A run is in progress (below). Stop it to start another.")
        _import_builtin_models()
        c1, c2 = st.columns(2)
        names = sorted(MODELS)
        model = c1.selectbox("Model", names, key="train_model",
                             index=names.index("ks_transformer") if "ks_transformer" in names else 0)
        start = c2.radio("Start from", ["scratch", "a checkpoint (fine-tune)"], horizontal=True, key="train_start")
        init_from = None
        if start != "scratch":
            same = []
            for path in list_all_checkpoints():  # trained here, then the shipped ones
                try:
                    if ui.checkpoint_meta(path).get("model") == model:
                        same.append(path)
                except InputError:
                    continue
            if same:
                init_from = str(c2.selectbox("Checkpoint to fine-tune", same, format_func=lambda p: p.name,
                                             key="train_init_from"))
            else:
                c2.warning(f"There is no saved {model} checkpoint yet: this run will start from scratch.")
        if init_from:  # what it learnt from, and what fine-tuning keeps of it
            about = ui.training_summary(init_from)
            st.caption((about + " " if about else "") + "Fine-tuning keeps its settings and encoders; it "
                       "learns from the corpora chosen below, in place of those.")

        corpora = ui.corpus_picker("train", mix=True)  # [(kind, path, test only)], the first one first
        is_mix = len(corpora) > 1
        missing = [k for k in corpus_job.GENERATED if any(c == k for c, _, _ in corpora)
                   and not corpus_job.demo_corpus_ready(k)]
        no_corpus = bool(missing)
        if missing:
            generated_corpus_panel(missing[0])
        st.caption(corpus_choice.MIX_NOTE)
        c1, c2, c3 = st.columns([2, 1, 1])
        protocol = c1.selectbox("Protocol", corpus_choice.TRAIN_PROTOCOLS, key="train_protocol", disabled=is_mix,
                                format_func=lambda p: f"{p} — {corpus_choice.PROTOCOL_TITLES[p]}",
                                help="A mix is always split by speaker per corpus.")
        fold = int(c2.number_input("Fold", min_value=0, max_value=99, value=0, step=1, key="train_fold",
                                   disabled=is_mix))
        augment = int(c3.number_input("Augmented copies per clip", min_value=0, max_value=4, value=0, step=1,
                                      key="train_augment", help=corpus_choice.AUGMENT_HELP))
        augment_corpora = None
        real = corpus_choice.real_corpora(corpora)
        if is_mix and augment and real and any(k not in real and not t for k, _, t in corpora):
            if st.checkbox("Augment only the recorded corpora (not the generated ones)", value=True,
                           key="train_augment_real"):
                augment_corpora = real

        preset = st.radio("Preset", sorted(PRESETS), horizontal=True, key="train_preset", format_func=lambda p: {
            "fast": "fast (AdamW, cosine decay: a usable model in minutes)",
            "paper": "paper (KS-Transformer sec. 3.2: SGD, lr halved every 30 epochs)"}.get(p, p))
        hyper = PRESETS[preset]
        h1, h2, h3, h4 = st.columns(4)  # keys carry the preset so that switching it resets the defaults
        epochs = int(h1.number_input("Epochs", 1, 1000, int(hyper["epochs"]), key=f"train_epochs_{preset}"))
        batch_size = int(h2.number_input("Batch size", 1, 1024, int(hyper["batch_size"]), key=f"train_bs_{preset}"))
        lr = float(h3.number_input("Learning rate", 1e-7, 1.0, float(hyper["lr"]), step=1e-4, format="%.6f",
                                   key=f"train_lr_{preset}"))
        dropout = float(h4.number_input("Dropout", 0.0, 0.95, float(hyper["dropout"]), step=0.05,
                                        key=f"train_dropout_{preset}"))
        with st.expander("Advanced"):
            a1, a2 = st.columns(2)
            max_utts = int(a1.number_input("Use at most this many utterances (0: all)", 0, 10**7, 0, step=100,
                                           key="train_max_utts", disabled=is_mix,
                                           help="A random subset of a single corpus, for a quick trial run "
                                                "(a mix uses every clip)."))
            seed = int(a2.number_input("Seed", 0, 10**6, 0, key="train_seed",
                                       help="Another seed starts the model from other random weights and "
                                            "draws the clips in another order. The speakers held out for "
                                            "validation and test stay the same, so runs can be compared."))
            shares = st.text_input("Corpus shares of each epoch (name=share, space-separated)", key="train_shares",
                                   placeholder="demo-calm=2.5", disabled=not is_mix,
                                   help="A mix gives every corpus the same part of each epoch; a share of 2 "
                                        "doubles a corpus's part, 0.5 halves it. The default KS-Transformer "
                                        "was fine-tuned with demo-calm=2.5. Names: "
                                        + ", ".join(sorted({k for k, _, t in corpora if not t})) + ".")
            a3, a4 = st.columns(2)
            epoch_items = int(a3.number_input(
                "Clips drawn per epoch (0: as many as the mix has)", 0, 10**7, 0, step=100, key="train_epoch_items",
                disabled=not is_mix, help="A mix draws its clips by the corpora's shares; this sets how many make "
                                          "one epoch (so an epoch can be shorter or longer than one pass)."))
            mixes_layers = hasattr(MODELS[model], "layer_mix_parameters")
            layer_mix_lr = float(a4.number_input(
                "Learning rate of the speech-layer weights (0: the network's)", 0.0, 9.0, 0.0, step=0.01,
                format="%.4f", key="train_layer_mix_lr", disabled=not mixes_layers,
                help="The model hears a weighted sum of the speech encoder's (Whisper's) layers. These few "
                     "weights barely move at the network's learning rate; the default KS-Transformer was "
                     "fine-tuned with 0.05 for them." if mixes_layers
                else f"{model} does not mix the speech encoder's layers."))
            group_by_length = st.checkbox(
                "Batches of clips of similar length", key="train_group_by_length",
                help="Less padding in each batch, so faster epochs with the same clips (the default "
                     "KS-Transformer's fine-tuning: 176 s an epoch instead of 248 s).")
            model_args = st.text_input("Model settings (key=value, space-separated)", key="train_model_args",
                                       placeholder="d_model=96 ff_dim=192",
                                       help="Overrides of the model's Config fields, e.g. a smaller d_model. "
                                            "Fine-tuning keeps the checkpoint's settings and encoders; "
                                            "settings typed here replace them, but may not change its size.")
        c1, c2 = st.columns([2, 1])
        # the suggested name follows the model (and corpora) until the user types a name of their own
        suggested = jobs.default_checkpoint_name(model, corpora)
        if st.session_state.get("train_name") in (None, st.session_state.get("train_name_suggested")):
            st.session_state["train_name"] = suggested
        st.session_state["train_name_suggested"] = suggested
        name = c1.text_input("Checkpoint name", key="train_name",
                             help="The name the trained model is saved under (letters, digits, - and _); it "
                                  "then appears in every page's model list.")
        overwrite = c2.checkbox("Overwrite an existing checkpoint of that name", key="train_overwrite")
        if st.button("Start training", type="primary", key="train_start_button", disabled=busy or no_corpus,
                     help=f"Generate the {corpus_job.GENERATED[missing[0]][0]} first (above)." if no_corpus else None):
            try:
                with st.spinner("Checking the corpora and starting the run…" if is_mix
                                else "Checking the corpus and starting the run…"):
                    corpus_choice.check_corpora(corpora, confine=True)  # only the folders the server allows
                    jobs.start_training(
                        name, model=model, corpora=corpora, protocol="speakers" if is_mix else protocol,
                        fold=0 if is_mix else fold, augment=augment, augment_corpora=augment_corpora,
                        preset=preset, epochs=epochs, batch_size=batch_size, lr=lr, dropout=dropout,
                        init_from=init_from, max_utterances=None if is_mix else max_utts or None,
                        model_args=model_args, overwrite=overwrite, seed=seed,
                        corpus_shares=shares if is_mix else None,
                        epoch_items=epoch_items if is_mix and epoch_items else None,
                        group_by_length=group_by_length,
                        layer_mix_lr=layer_mix_lr if mixes_layers and layer_mix_lr else None)
                st.rerun()
            except Exception as exc:  # a message, never a traceback
                ui.show_error(exc)


# --- figures -------------------------------------------------------------------------------------
def loss_figure(progress: job_progress.Progress) -> go.Figure:
    """Cross-entropy per training batch (x in epochs) and each finished epoch's mean."""
    fig = go.Figure()
    xs = [x for x, _ in progress.losses]
    fig.add_trace(go.Scatter(
        x=xs, y=[y for _, y in progress.losses], name="batch loss",
        mode="lines+markers" if len(xs) <= 300 else "lines", marker={"size": 5}, line={"width": 1.5},
        hovertemplate="epoch %{x:.2f}<br>loss %{y:.4f}<extra></extra>"))
    rows = progress.history
    if rows:
        fig.add_trace(go.Scatter(
            x=[r["epoch"] for r in rows], y=[r["train_loss"] for r in rows], name="epoch mean",
            mode="lines+markers", marker={"size": 9, "symbol": "diamond"}, line={"width": 3, "dash": "dot"},
            hovertemplate="epoch %{x}<br>mean loss %{y:.4f}<extra></extra>"))
    fig.update_layout(title={"text": "Training loss"}, height=340, margin={"t": 50, "b": 40},
                      xaxis={"title": {"text": "epoch"}, "range": [0, max(progress.epochs or 1, 1) + 0.05]},
                      yaxis={"title": {"text": "cross-entropy"}}, legend={"orientation": "h", "y": -0.25})
    return fig


def validation_figure(progress: job_progress.Progress) -> go.Figure:
    """Validation UA, WA and macro-F1 after each epoch; the saved (best-UA) epochs are marked."""
    rows = progress.history
    fig = go.Figure()
    for key, name in (("val_ua", "UA"), ("val_wa", "WA"), ("val_macro_f1", "macro-F1")):
        fig.add_trace(go.Scatter(x=[r["epoch"] for r in rows], y=[r.get(key) for r in rows], name=name,
                                 mode="lines+markers",
                                 hovertemplate=f"epoch %{{x}}<br>{name} %{{y:.3f}}<extra></extra>"))
    saved = [r for r in rows if r.get("saved")]
    if saved:
        fig.add_trace(go.Scatter(x=[r["epoch"] for r in saved], y=[r["val_ua"] for r in saved], mode="markers",
                                 name="checkpoint saved", marker={"size": 14, "symbol": "circle-open", "color": "#000"},
                                 hoverinfo="skip"))
    fig.update_layout(title={"text": "Validation scores per epoch"}, height=340, margin={"t": 50, "b": 40},
                      xaxis={"title": {"text": "epoch"}, "range": [0.5, max(progress.epochs or 1, 1) + 0.5]},
                      yaxis={"title": {"text": "score"}, "range": [0, 1.02]}, legend={"orientation": "h", "y": -0.25})
    return fig


def _ago(t: float) -> str:
    s = max(0, int(time.time() - t))
    return f"{s} s" if s < 120 else f"{s // 60} min" if s < 7200 else f"{s // 3600} h {s % 3600 // 60} min"


# --- the run (every session sees the same one; polled while it runs) -----------------------------
def job_panel() -> None:
    job = jobs.current_job()
    if job is None:
        st.info("No training run yet on this server.")
        return
    if st.session_state.get("train_seen") != (job.id, job.status):
        st.rerun()  # started, stopped or ended elsewhere: redraw the whole page (settings' state too)
    progress = job_progress.read_events(job)
    teacher = access.is_teacher()  # visitors watch the run; stopping and resuming are the teacher's
    s = job.settings
    st.subheader(f"Run `{job.name}`: {job.status}")
    st.caption(f"{s.get('model')} on {corpus_choice.describe_data(s)} · "
               f"{s.get('preset')} preset"
               + (f" · speech-layer weights at learning rate {s['layer_mix_lr']:g}" if s.get("layer_mix_lr") else "")
               + f" · started {_ago(job.started)} ago"
               + (f" · fine-tuned from {Path(s['init_from']).name}" if s.get("init_from") else "")
               + f" → saved as `{Path(job.out).stem}`")

    if job.active:
        if progress.phase in ("starting", "features"):
            if progress.features:
                part, done, total = progress.features
                st.progress(done / max(total, 1), text=f"Extracting {part} features {done}/{total} "
                                                       "(cached utterances are read from disk)")
            else:
                st.progress(0.0, text="Loading the corpus and the encoders…" if progress.phase == "starting"
                            else f"Extracting features for {progress.n_utterances} utterances…")
        else:
            st.progress(progress.fraction, text=f"epoch {max(progress.epoch, 1)}/{progress.epochs} · "
                                                f"batch {progress.batch}/{progress.batches}")
        if job.status == "stopping":
            st.warning("Stopping: the run saves its state after the current batch, then ends.")
        elif teacher and st.button("Stop", key="train_stop", icon=":material/stop:"):
            jobs.request_stop()
            st.rerun()
    elif job.status == "finished":
        test = progress.test or {}
        st.success(
            f"Done. Test WA **{test.get('wa', float('nan')):.3f}**, UA **{test.get('ua', float('nan')):.3f}**, "
            f"macro-F1 {test.get('macro_f1', float('nan')):.3f} on {test.get('n', '?')} utterances. "
            f"`{Path(job.out).name}` is now selectable on every page (sidebar: Model checkpoint)."
        )
    elif job.status == "stopped":
        done = max([r["epoch"] for r in progress.history], default=0)
        saved = f" The best epoch so far is saved as `{Path(job.out).name}`." if Path(job.out).exists() else ""
        st.warning(f"Stopped after {progress.steps_done} batches ({done} epoch{'s' * (done != 1)} finished). "
                   f"Resume continues exactly where it stopped.{saved}")
    else:
        st.error(job.message or "The run failed.")
    if job.resumable and teacher and st.button("Resume", key="train_resume", type="primary",
                                               icon=":material/play_arrow:"):
        try:
            jobs.resume()
            st.rerun()
        except Exception as exc:
            ui.show_error(exc)

    if progress.losses or progress.history:
        left, right = st.columns(2)
        left.plotly_chart(loss_figure(progress), width="stretch", key="train_loss_chart")
        if progress.history:
            right.plotly_chart(validation_figure(progress), width="stretch", key="train_val_chart")
            last = progress.history[-1]
            if last.get("val_confusion") and progress.labels:
                cm = viz.confusion_matrix_figure(last["val_confusion"],
                                                 [ui.label_name(label) for label in progress.labels])
                cm.update_layout(title={"text": f"Validation confusion matrix, epoch {last['epoch']}"})
                st.plotly_chart(cm, width="content", key="train_val_cm")
        else:
            right.info("Validation scores appear after the first epoch.")
    if teacher:  # the log and the command name the server's folders: the teacher's only
        with st.expander("Log and command"):
            st.code(job.log_tail(6000) or "(no output yet)", language=None)
            st.code(shlex.join(job.command + (["--resume"] if job.resumes and "--resume" not in job.command
                                              else [])), language="bash")


st.divider()
# poll every 2 s while a run is going; otherwise now and then, to notice a run started elsewhere
st.fragment(job_panel, run_every=2 if busy else 10)()
