"""Training on a mix of corpora from the app (ser_core.jobs, the Train and Evaluate pages): the
command line the job runs, the checks made before anything starts, and the widgets.

No training process is started here: ``jobs._spawn`` is replaced by one that records the command.
Corpora are miniature real-layout folders (tests/fixtures/corpora.py) and a small demo-like
manifest under tmp_path; jobs live in this module's own cache folder, checkpoints in tmp_path.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from fixtures.corpora import build_manifest, build_ravdess, build_tess
from ser_core import corpus_choice, jobs
from ser_core.errors import InputError

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 120
FILES = [Path("/o.safetensors"), Path("/run"), Path("/events.jsonl"), Path("/stop")]


@pytest.fixture
def demo(tmp_path, monkeypatch):
    """A demo corpus (its own train/dev/test split, the four classes) where the app looks for it."""
    rows = [{"path": f"wav/{split}_{label}_{i}.wav", "label": label, "speaker": f"s{n}", "split": split}
            for n, split in enumerate(("train", "dev", "test")) for label in ("ang", "hap", "neu", "sad")
            for i in range(2)]
    manifest = build_manifest(tmp_path / "demo_corpus", rows)
    monkeypatch.setenv("SER_CORPUS_DIR", str(manifest.parent))
    return manifest


@pytest.fixture
def tess(tmp_path):
    return build_tess(tmp_path / "tess")


@pytest.fixture
def checkpoints(tmp_path, monkeypatch):
    import ser_core.paths
    import ser_core.ui

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    monkeypatch.setattr(ser_core.paths, "CHECKPOINTS_DIR", folder)
    monkeypatch.setenv("SER_CHECKPOINTS_DIR", str(folder))
    return folder


@pytest.fixture
def spawned(cache, monkeypatch):
    """Record the commands start_training would run; the job is marked finished at once."""
    commands = []

    def fake_spawn(job, command):
        commands.append(command)
        job.pid, job.status, job.exit_code = 0, "finished", 0

    monkeypatch.setattr(jobs, "_spawn", fake_spawn)
    return commands


def _corpus_flags(cmd: list[str]) -> list[tuple[str, str]]:
    return [(flag, cmd[i + 1]) for i, flag in enumerate(cmd) if flag in ("--corpus", "--root")]


def _parse(cmd: list[str]) -> argparse.Namespace:
    from ser_core.train_cli import add_cli

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    assert cmd[1:4] == ["-m", "ser_core", "train"]
    return parser.parse_args(cmd[3:])


# --- ser_core.jobs -------------------------------------------------------------------------------
def test_build_command_for_a_mix_repeats_corpus_and_root_in_order_and_adds_augment():
    cmd = jobs.build_command(
        *FILES, model="ks_transformer", corpora=[("ravdess", "/A"), ("tess", "/B"), ("demo", None),
                                                 {"kind": "savee", "path": "/C", "test_only": True}],
        augment=2, augment_corpora=["ravdess", "tess"])
    assert _corpus_flags(cmd) == [("--corpus", "ravdess"), ("--root", "/A"), ("--corpus", "tess"),
                                  ("--root", "/B"), ("--corpus", "demo"), ("--corpus", "test:savee"),
                                  ("--root", "/C")]
    assert "--protocol" not in cmd and "--fold" not in cmd  # a mix is always split by speaker
    args = _parse(cmd)  # the trainer's own parser pairs them back
    assert (args.corpus, args.root) == (["ravdess", "tess", "demo", "test:savee"], ["/A", "/B", "/C"])
    assert (args.augment, args.augment_corpora, args.out) == (2, "ravdess,tess", "/o.safetensors")

    # one corpus keeps today's command: its loader, its protocol and fold
    one = jobs.build_command(*FILES, model="ks_transformer", corpora=[("tess", "/B")], protocol="speakers",
                             fold=0, augment=1)
    args = _parse(one)
    assert (args.corpus, args.root, args.protocol, args.fold, args.augment) == (["tess"], ["/B"], "speakers", 0, 1)
    assert "--augment-corpora" not in one
    plain = jobs.build_command(*FILES, model="ks_transformer", corpus="manifest", root="/m.csv",
                               protocol="predefined", fold=0, preset="fast", epochs=None, batch_size=None,
                               lr=None, dropout=None, init_from=None, max_utterances=None, model_args={},
                               device=None, seed=0)
    assert "--augment" not in plain and _corpus_flags(plain) == [("--corpus", "manifest"), ("--root", "/m.csv")]
    with pytest.raises(InputError, match="Type the path of the TESS folder"):
        jobs.build_command(*FILES, model="ks_transformer", corpora=[("ravdess", "/A"), ("tess", " ")])


def test_start_training_refuses_a_bad_mix_with_a_plain_message(cache, checkpoints, demo, tess, spawned):
    before = jobs.current_job()
    good = [("tess", str(tess)), ("demo", None)]
    cases = [
        (dict(corpora=[("tess", str(tess)), ("savee", "  ")]), "Type the path of the SAVEE folder"),
        (dict(corpora=[("tess", str(tess)), ("ravdess", None)]), "Type the path of the RAVDESS folder"),
        (dict(corpora=[("tess", str(tess)), ("nosuch", "/x")]), "Unknown corpus kind"),
        (dict(corpora=[("tess", str(tess)), ("tess", str(tess))]), "chosen twice"),
        (dict(corpora=[("test:tess", str(tess)), ("demo", None, True)]), "Every corpus is marked test only"),
        (dict(corpora=good, augment=-1), "augmented copies"),
        (dict(corpora=good, augment=1.5), "augmented copies"),
        (dict(corpora=good, protocol="loso"), "always split by speaker"),
        (dict(corpora=good, max_utterances=10), "single corpus"),
        (dict(corpora=good, augment=1, augment_corpora=["savee"]), "Only corpora the mix trains on"),
        (dict(corpora=[("tess", str(tess))], protocol="all"), "nothing to train on"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InputError, match=message):
            jobs.start_training("mix_run", **kwargs)
    # the data check loads the mix as the trainer does: this RAVDESS has one usable speaker
    ravdess = build_ravdess(tess.parent / "ravdess", suffix=".flac")
    with pytest.raises(InputError, match="Only one speaker"):
        jobs.start_training("mix_run", corpora=[("ravdess", str(ravdess)), ("tess", str(tess))])
    demo.rename(demo.with_name("gone.csv"))
    with pytest.raises(InputError, match="python -m ser_core corpus"):
        jobs.start_training("mix_run", corpora=good)
    assert spawned == [] and jobs.current_job() == before  # nothing was started


def test_start_training_checks_the_mix_the_way_the_trainer_loads_it(cache, checkpoints, demo, tess, spawned,
                                                                      monkeypatch):
    import ser_core.train as train

    seen = []
    load_fold = train.load_fold

    def spy(cfg):
        seen.append(cfg)
        return load_fold(cfg)

    monkeypatch.setattr(train, "load_fold", spy)
    job = jobs.start_training("mix_run", corpora=[("tess", str(tess)), ("demo", None), ("test:ravdess", "/R")],
                              augment=2, augment_corpora=["tess"], check_data=False)
    assert seen == []
    assert _corpus_flags(spawned[-1]) == [("--corpus", "tess"), ("--root", str(tess)), ("--corpus", "demo"),
                                          ("--corpus", "test:ravdess"), ("--root", "/R")]
    job = jobs.start_training("mix_run2", corpora=[("tess", str(tess)), ("demo", None)], augment=2,
                              augment_corpora=["tess"], seed=1)
    args = _parse(spawned[-1])
    (cfg,) = seen
    # what the job will run gives the config the check used
    from ser_core.train_cli import corpus_choice as trainer_corpus_choice

    assert cfg.mix == trainer_corpus_choice(args.corpus, args.root)["mix"] and cfg.seed == args.seed == 1
    assert [(m["name"], m["test_only"]) for m in cfg.mix] == [("tess", False), ("demo", False)]
    assert (args.augment, args.augment_corpora) == (2, "tess")
    s = job.settings
    assert (s["corpus"], s["protocol"], s["augment"], s["augment_corpora"]) == ("mix", "speakers", 2, ["tess"])
    assert s["corpora"] == [{"kind": "tess", "root": str(tess), "test_only": False},
                            {"kind": "demo", "root": None, "test_only": False}]
    assert jobs.current_job().settings == s  # as every session reads it back
    assert corpus_choice.describe_data(s) == (f"a mix of TESS folder `{tess}` + Demo corpus (generated) · split by "
                                     "speaker per corpus, corpora and classes balanced · 2 augmented "
                                     "copies per clip (tess only)")
    # augmenting every corpus of the mix is the trainer's default: no --augment-corpora
    jobs.start_training("mix_run3", corpora=[("tess", str(tess)), ("demo", None)], augment=1,
                        augment_corpora=["demo", "tess"], check_data=False)
    assert "--augment-corpora" not in spawned[-1] and "--augment" in spawned[-1]
    # one corpus in the list: the old single-corpus run, its protocol kept
    job = jobs.start_training("one_run", corpora=[("demo", None)], protocol="random", augment=1)
    assert (job.settings["corpus"], job.settings["root"], job.settings["protocol"]) == ("manifest", str(demo), "random")
    assert job.settings["corpora"] is None and seen[-1].mix is None and seen[-1].protocol == "random"
    assert _parse(spawned[-1]).protocol == "random"
    assert job.settings["kind"] == "demo"  # named as the demo corpus, not as its manifest
    assert (corpus_choice.describe_data(job.settings)
            == "Demo corpus (generated) · random fold 0 · 1 augmented copy per clip")
    assert corpus_choice.real_corpora([("tess", "/T"), ("demo", None), ("test:savee", "/S")]) == ["tess"]


def test_the_calm_voice_set_is_chosen_like_the_demo_corpus(cache, checkpoints, demo, tess, spawned, tmp_path,
                                                           monkeypatch):
    """The calm-voice set (the default KS-Transformer's fourth corpus) can be chosen on the Train and
    Evaluate pages: no path, a message naming the command that makes it while it is missing, no
    --root in the job's command, left as generated when the recorded corpora are augmented, and
    named by its title, also in a one-corpus run."""
    import ser_core.paths

    monkeypatch.setattr(ser_core.paths, "calm_corpus_dir", lambda: tmp_path / "demo_calm")
    with pytest.raises(InputError, match="--words-decide"):
        corpus_choice.check_corpora([("tess", str(tess)), "demo", "demo-calm"])
    calm = build_manifest(tmp_path / "demo_calm", [
        {"path": f"wav/{split}_{label}.wav", "label": label, "speaker": f"s{n}", "split": split}
        for n, split in enumerate(("train", "val", "test")) for label in ("ang", "hap", "neu", "sad")])
    assert corpus_choice.resolve_corpus("demo-calm") == ("manifest", str(calm))
    mix = [("tess", str(tess)), "demo", "demo-calm"]
    assert corpus_choice.check_corpora(mix)[2] == {"kind": "demo-calm", "root": None, "test_only": False}
    assert corpus_choice.real_corpora(mix) == ["tess"]
    job = jobs.start_training("with_calm", corpora=mix, augment=2, augment_corpora=["tess"], check_data=False)
    assert _corpus_flags(spawned[-1]) == [("--corpus", "tess"), ("--root", str(tess)), ("--corpus", "demo"),
                                          ("--corpus", "demo-calm")]
    assert "+ Demo corpus (generated) + Calm-voice set (generated; the words decide) ·" in \
        corpus_choice.describe_data(job.settings)
    job = jobs.start_training("calm_only", corpora=["demo-calm"], check_data=False)
    assert (job.settings["root"], job.settings["kind"]) == (str(calm), "demo-calm")
    assert corpus_choice.describe_data(job.settings).startswith("Calm-voice set (generated; the words decide) ·")
    # an older record with no kind: told apart by its manifest, and any other manifest stays a manifest
    assert corpus_choice._single_kind({"corpus": "manifest", "root": str(calm)}) == "demo-calm"
    assert corpus_choice._single_kind({"corpus": "manifest", "root": str(tmp_path / "x.csv")}) == "manifest"
    # the page: the set's manifest instead of a path box
    at = AppTest.from_file(str(REPO / "pages/4_Train.py"), default_timeout=TIMEOUT).run()
    at.selectbox(key="train_corpus_kind").set_value("demo-calm").run()
    assert not at.exception, at.exception
    assert "train_corpus_path" not in [t.key for t in at.text_input]
    assert f"`{calm}`" in [c.value for c in at.caption]


def test_corpus_shares_go_from_the_page_to_the_trainer_and_are_checked_first(cache, checkpoints, demo, tess,
                                                                              spawned):
    """A mix's corpus shares (the default KS-Transformer's demo-calm=2.5): typed on the Train page,
    checked before anything starts, passed as --corpus-share, read back by the trainer's parser,
    and said in the run's description."""
    from ser_core.corpus_choice import parse_shares

    assert parse_shares("demo=2, tess=0.5") == {"demo": 2.0, "tess": 0.5} and parse_shares("  ") is None
    for bad, why in (("demo", "NAME=SHARE"), ("demo=x", "NAME=SHARE"), ("demo=0", "above 0")):
        with pytest.raises(InputError, match=why):
            parse_shares(bad)
    mix = [("tess", str(tess)), "demo"]
    with pytest.raises(InputError, match=r"trains on \(tess, demo\), not ravdess"):
        jobs.start_training("shares", corpora=mix, corpus_shares="ravdess=2", check_data=False)
    with pytest.raises(InputError, match="apply to a mix"):
        jobs.start_training("shares", corpora=["demo"], corpus_shares="demo=2", check_data=False)
    assert spawned == []

    at = AppTest.from_file(str(REPO / "pages/4_Train.py"), default_timeout=TIMEOUT).run()
    assert at.text_input(key="train_shares").disabled  # one corpus: nothing to share
    at.selectbox(key="train_corpus_kind").set_value("tess").run()
    at.text_input(key="train_corpus_path").set_value(str(tess))
    at.multiselect(key="train_mix_kinds").set_value(["demo"]).run()
    assert not at.text_input(key="train_shares").disabled
    at.text_input(key="train_shares").set_value("demo=2.5")
    at.text_input(key="train_name").set_value("page_shares")
    at.button(key="train_start_button").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    args = _parse(spawned[-1])
    assert args.corpus_share == ["demo=2.5"]
    assert jobs.current_job().settings["corpus_shares"] == {"demo": 2.5}
    assert corpus_choice.describe_data(jobs.current_job().settings).endswith(
        "corpora and classes balanced · Demo corpus (generated): 2.5 times its part of each epoch")



def test_the_default_recipes_training_options_go_from_the_page_to_the_trainer(cache, checkpoints, demo, tess,
                                                                               spawned):
    """The default KS-Transformer's recipe can be set on the Train page (Advanced): clips drawn per
    epoch (a mix), batches of similar length, the speech-layer weights' own learning rate (models
    that mix the encoder's layers); refused in plain words where they do not apply."""
    mix = [("tess", str(tess)), "demo"]
    with pytest.raises(InputError, match="applies to a mix"):
        jobs.start_training("opts", corpora=["demo"], epoch_items=100, check_data=False)
    with pytest.raises(InputError, match="whole number >= 1"):
        jobs.start_training("opts", corpora=mix, epoch_items=0, check_data=False)
    with pytest.raises(InputError, match="cat has no weights that mix"):
        jobs.start_training("opts", model="cat", corpora=mix, layer_mix_lr=0.05, check_data=False)
    with pytest.raises(InputError, match="speech-layer learning rate -1.0 is out of range"):
        jobs.start_training("opts", corpora=mix, layer_mix_lr=-1.0, check_data=False)
    assert spawned == []

    at = AppTest.from_file(str(REPO / "pages/4_Train.py"), default_timeout=TIMEOUT).run()
    assert at.number_input(key="train_epoch_items").disabled  # one corpus: every clip once per epoch
    assert not at.number_input(key="train_layer_mix_lr").disabled  # the KS-Transformer mixes Whisper's layers
    at.selectbox(key="train_model").set_value("cat").run()
    assert at.number_input(key="train_layer_mix_lr").disabled
    at.selectbox(key="train_model").set_value("ks_transformer").run()
    at.selectbox(key="train_corpus_kind").set_value("tess").run()
    at.text_input(key="train_corpus_path").set_value(str(tess))
    at.multiselect(key="train_mix_kinds").set_value(["demo"]).run()
    at.number_input(key="train_epoch_items").set_value(300)
    at.number_input(key="train_layer_mix_lr").set_value(0.05)
    at.checkbox(key="train_group_by_length").check()
    at.text_input(key="train_name").set_value("page_recipe")
    at.button(key="train_start_button").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    args = _parse(spawned[-1])
    assert (args.epoch_items, args.group_by_length, args.layer_mix_lr) == (300, True, 0.05)
    settings = jobs.current_job().settings
    assert (settings["epoch_items"], settings["group_by_length"], settings["layer_mix_lr"]) == (300, True, 0.05)
    assert corpus_choice.describe_data(settings).endswith(
        "300 clips drawn per epoch · batches of clips of similar length")
    # left at their defaults, none of the three flags is passed
    spawned.clear()
    jobs.start_training("plain", corpora=mix, check_data=False, overwrite=True)
    assert not {"--epoch-items", "--group-by-length", "--layer-mix-lr"} & set(spawned[-1])

# --- pages ---------------------------------------------------------------------------------------
def test_train_page_picks_a_mix_with_augmentation_and_shows_it(cache, checkpoints, demo, tess, spawned):
    at = AppTest.from_file(str(REPO / "pages/4_Train.py"), default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    assert corpus_choice.MIX_NOTE in [c.value for c in at.caption]
    augment = at.number_input(key="train_augment")
    assert (augment.label, augment.value, augment.min, augment.max) == ("Augmented copies per clip", 0, 0, 4)
    assert augment.help == corpus_choice.AUGMENT_HELP
    protocol = at.selectbox(key="train_protocol")
    assert "speakers" in protocol.options[-1] and not any(o.startswith("all") for o in protocol.options)
    assert not protocol.disabled
    kinds = at.selectbox(key="train_corpus_kind")
    assert {"TESS folder", "SAVEE folder"} <= set(kinds.options)

    kinds.set_value("tess").run()
    at.text_input(key="train_corpus_path").set_value(str(tess))
    at.multiselect(key="train_mix_kinds").set_value(["demo", "savee"]).run()
    assert not at.exception, at.exception
    assert at.selectbox(key="train_protocol").disabled and at.number_input(key="train_fold").disabled
    assert at.text_input(key="train_corpus_path_savee").label == "Path of the SAVEE folder"
    assert at.checkbox(key="train_test_only_savee").value is False
    assert "train_corpus_path_demo" not in [t.key for t in at.text_input]  # the demo corpus needs no path
    at.number_input(key="train_augment").set_value(2).run()
    assert at.checkbox(key="train_augment_real").value is True  # the demo corpus is left as generated

    at.text_input(key="train_name").set_value("page_mix")
    at.button(key="train_start_button").click().run()  # SAVEE's path is empty
    assert not at.exception, at.exception
    layout = corpus_choice.CORPUS_KINDS["savee"]["layout"]
    assert [e.value for e in at.error] == [f"Type the path of the SAVEE folder: {layout}."]
    assert spawned == []

    at.multiselect(key="train_mix_kinds").set_value(["demo"]).run()
    at.button(key="train_start_button").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    args = _parse(spawned[-1])
    assert (args.corpus, args.root, args.augment, args.augment_corpora) == (["tess", "demo"], [str(tess)], 2, "tess")
    assert "Run `page_mix`: finished" in [s.value for s in at.subheader]
    mix = f"ks_transformer on a mix of TESS folder `{tess}` + Demo corpus (generated) · split by speaker per corpus"
    assert any(c.value.startswith(mix) and "2 augmented copies per clip (tess only)" in c.value
               for c in at.caption), [c.value for c in at.caption]


def test_evaluate_page_offers_the_mix_protocols_and_the_new_corpora(cache, checkpoints):
    at = AppTest.from_file(str(REPO / "pages/3_Evaluate.py"), default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    protocols = at.selectbox(key="eval_protocol").options
    assert any(o.startswith("speakers — ") for o in protocols) and any(o.startswith("all — ") for o in protocols)
    kinds = at.selectbox(key="eval_corpus_kind")
    assert {"TESS folder", "SAVEE folder"} <= set(kinds.options)
    kinds.set_value("savee").run()
    assert corpus_choice.CORPUS_KINDS["savee"]["layout"] in at.text_input(key="eval_corpus_path").help


def test_jobs_run_at_a_lower_priority_than_the_server():
    """A teacher's training must not slow the visitors' analyses: the job's process is niced."""
    command = jobs.background([sys.executable, "-c", "import os; print(os.nice(0))"])
    niceness = int(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    assert niceness >= min(os.nice(0) + jobs.BACKGROUND_NICENESS, 19)


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="no autogroup scheduler here")
def test_a_detached_job_s_session_gets_the_lower_priority_too():
    """With Linux's autogroup scheduler a process's nice only counts inside its own session, and a
    job runs in a session of its own: that session's niceness is lowered as well."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        assert jobs.lower_group_priority(proc.pid)
        group = Path(f"/proc/{proc.pid}/autogroup").read_text()
        assert group.split()[-1] == str(jobs.BACKGROUND_NICENESS)  # "/autogroup-123 nice 10"
        assert Path("/proc/self/autogroup").read_text() != group  # the test's own session is untouched
    finally:
        proc.kill()
        proc.wait()
    assert not jobs.lower_group_priority(proc.pid)  # a process that is gone: False, no error
