"""Which corpora the app offers, and how a chosen set becomes trainer arguments.

:data:`CORPUS_KINDS` is what the Train and Evaluate pages list (each kind's loader, an example path
and the folder layout it expects), :data:`PROTOCOL_TITLES` the splits they offer. A choice is one
corpus or a mix of several (some marked test only): :func:`check_corpora` checks it,
:func:`resolve_corpus` turns one kind and path into the loader name and root (the pages pass
``confine=True``: only the server's allowed folders, see ``ser_core.access``), ``_mix_flags`` a mix
into the trainer's repeated ``--corpus``/``--root`` flags, and :func:`describe_data` says in words
what a run trains on. :func:`build_command` is the trainer's command line the training job
(``ser_core.jobs``) runs, with :func:`parse_model_args` and :func:`parse_shares` reading what the
Train page's text boxes say.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from . import access, paths
from .data.mix import ROOTLESS, demo_manifest
from .errors import InputError


# What each corpus loader expects (shown by the pages next to the path box).
CORPUS_KINDS: dict[str, dict[str, str]] = {
    "demo": {
        "title": "Demo corpus (generated)", "corpus": "manifest", "example": "",
        "layout": "the synthetic demo corpus made by `python -m ser_core corpus`"},
    "demo-calm": {
        "title": "Calm-voice set (generated; the words decide)", "corpus": "manifest", "example": "",
        "layout": "the demo corpus's voices speaking calmly, each sentence with its emotion's word, made by "
                  "`python -m ser_core corpus --words-decide --n 800`"},
    "manifest": {
        "title": "Manifest CSV", "corpus": "manifest", "example": "/data/my_corpus/manifest.csv",
        "layout": "a CSV with at least path,label columns (optional id, transcript, speaker, session, split, "
                  "start, end, video); audio paths relative to the CSV's folder"},
    "iemocap": {
        "title": "IEMOCAP folder", "corpus": "iemocap", "example": "/data/IEMOCAP_full_release",
        "layout": "IEMOCAP_full_release: Session1..Session5, each with dialog/EmoEvaluation/*.txt and "
                  "sentences/wav/<dialog>/<utterance>.wav"},
    "ravdess": {
        "title": "RAVDESS folder", "corpus": "ravdess", "example": "/data/RAVDESS",
        "layout": "Actor_01..Actor_24 folders of files named like 03-01-05-01-02-01-12.wav (or .flac)"},
    "tess": {
        "title": "TESS folder", "corpus": "tess", "example": "/data/TESS",
        "layout": "one folder per speaker and emotion, like OAF_angry and YAF_sad, holding files named like "
                  "OAF_back_angry.wav (or any folder above them)"},
    "savee": {
        "title": "SAVEE folder", "corpus": "savee", "example": "/data/SAVEE",
        "layout": "an AudioData folder with one folder per speaker (DC, JE, JK, KL) of files named like "
                  "a01.wav, or one folder of files named like DC_a01.wav"},
    "cremad": {
        "title": "CREMA-D folder", "corpus": "cremad", "example": "/data/CREMA-D",
        "layout": "an AudioWAV folder of files named like 1001_DFA_ANG_XX.wav"},
    "meld": {
        "title": "MELD folder", "corpus": "meld", "example": "/data/MELD.Raw",
        "layout": "MELD.Raw: train/dev/test_sent_emo.csv beside train_splits/, dev_splits_complete/, "
                  "output_repeated_splits_test/"},
}

PROTOCOL_TITLES: dict[str, str] = {
    "predefined": "the corpus's own train/dev/test split",
    "loso": "leave one session out (IEMOCAP's 5 folds)",
    "lospk": "leave one speaker out",
    "random": "one random stratified hold-out split",
    "speakers": "each speaker's clips in one part only: test voices never heard in training",
    "all": "every clip is test data: a corpus the model never trained on",
}
#: protocols a model can be trained with ("all" leaves nothing to train on: it is for Evaluate)
TRAIN_PROTOCOLS: tuple[str, ...] = tuple(p for p in PROTOCOL_TITLES if p != "all")

MIX_NOTE = ("Several corpora make a mix: each corpus is split by speaker on its own (its test voices "
            "are never heard in training), the labels are mapped to anger, happiness, neutral and "
            "sadness, and every corpus, and every class in it, gets the same share of training "
            "(Advanced can give a corpus a larger or smaller share). "
            "The protocol and fold apply to a single corpus only.")
AUGMENT_HELP = ("Each copy adds every training clip again with random background noise, room echo, a "
                "phone or laptop microphone sound and a speed or pitch change; 0 trains on the "
                "recordings only.")


def resolve_corpus(kind: str, path: str | None = None, confine: bool = False) -> tuple[str, str]:
    """(loader name, root) for a corpus chosen in the app; the generated corpora (the demo corpus
    and its calm-voice set) need no path.

    ``confine`` (the pages, never the command line): the path must lie inside the folders the
    server allows (:func:`ser_core.access.confine_path`), else InputError naming them."""
    if kind not in CORPUS_KINDS:
        raise InputError(f"Unknown corpus kind {kind!r}; choose one of {', '.join(CORPUS_KINDS)}.")
    if kind == "demo":
        manifest = paths.default_corpus_dir() / "manifest.csv"
        if not manifest.exists():
            raise InputError("The demo corpus has not been generated yet: press **Generate demo corpus** "
                             "on the Train page (a few minutes), or run `python -m ser_core corpus`.")
        return "manifest", str(manifest)
    if kind in ROOTLESS:  # the calm-voice set: in the cache, or a message naming the command that makes it
        return "manifest", str(demo_manifest(kind))
    path = (path or "").strip()
    if not path:
        raise InputError(f"Type the path of the {CORPUS_KINDS[kind]['title']}: "
                         f"{CORPUS_KINDS[kind]['layout']}.")
    if confine:
        access.confine_path(path)
        _confine_files(CORPUS_KINDS[kind]["corpus"], path)
    return CORPUS_KINDS[kind]["corpus"], str(Path(path).expanduser())


def _confine_files(corpus: str, root: str) -> None:
    """Every audio and video file the corpus lists must lie inside the allowed folders too: a
    manifest may name any path, and a corpus folder may hold links that lead out of it."""
    from .data import load_corpus  # the loaders are heavy; only a confined check needs them here

    utts = load_corpus(corpus, root)
    outside = [u for u in utts if any(p is not None and not access.is_allowed(p) for p in (u.audio, u.video))]
    if outside:
        raise InputError(f"{len(outside)} of this corpus's {len(utts)} clips lie outside the allowed folders "
                         "(a manifest may name files anywhere, and a link may lead out of a folder); none "
                         "was read. " + access.outside_message())


def _corpus_items(corpora: Any) -> list[tuple[str, str | None, bool]]:
    """(kind, path, test only) for each corpus chosen in the app. An item is a kind (``"test:"`` in
    front: scored, never trained on), a (kind, path) or (kind, path, test_only) pair, or a dict
    with kind, path (or root) and test_only."""
    if isinstance(corpora, (str, dict)):
        corpora = [corpora]
    items = []
    for item in corpora:
        if isinstance(item, str):
            kind, path, test_only = item, None, False
        elif isinstance(item, dict):
            kind, path = item.get("kind"), item.get("path", item.get("root"))
            test_only = bool(item.get("test_only", False))
        else:
            kind, path, test_only = (list(item) + [None, False])[:3]
            test_only = bool(test_only)
        kind = str(kind or "").strip().lower()
        if kind.startswith("test:"):
            kind, test_only = kind[len("test:"):], True
        if kind not in CORPUS_KINDS:
            raise InputError(f"Unknown corpus kind {kind!r}; choose one of {', '.join(CORPUS_KINDS)}.")
        items.append((kind, None if path is None else str(path), test_only))
    if not items:
        raise InputError("Choose at least one corpus.")
    return items


def _is_mix(items: list[tuple[str, str | None, bool]]) -> bool:
    return len(items) > 1 or any(test_only for _, _, test_only in items)


def check_corpora(corpora: Any, confine: bool = False) -> list[dict[str, Any]]:
    """The app's chosen corpora as ``[{"kind", "root", "test_only"}]`` (a generated corpus's root is
    None: the trainer finds it), each checked: a known kind, a path for every kind but the
    generated ones, those generated, no kind twice, at least one corpus to train on; with
    ``confine`` (the pages) every path inside the folders the server allows."""
    entries = []
    for kind, path, test_only in _corpus_items(corpora):
        root = None
        if kind in ROOTLESS:
            resolve_corpus(kind)  # generated?
        else:
            # a missing path → "Type the path of the … folder"; with confine, one outside → the allowed folders
            _, root = resolve_corpus(kind, path, confine=confine)
        entries.append({"kind": kind, "root": root, "test_only": test_only})
    kinds = [e["kind"] for e in entries]
    for kind in dict.fromkeys(k for k in kinds if kinds.count(k) > 1):
        raise InputError(f"The {CORPUS_KINDS[kind]['title']} is chosen twice: a mix takes each corpus once.")
    if all(e["test_only"] for e in entries):
        raise InputError("Every corpus is marked test only: train on at least one of them.")
    return entries


def real_corpora(corpora: Any) -> list[str]:
    """The kinds of the recorded (not generated) corpora a mix trains on: what to augment when
    the generated corpora should stay as they are."""
    return [kind for kind, _, test_only in _corpus_items(corpora) if kind not in ROOTLESS and not test_only]


def _mix_flags(entries: list[tuple[str, str | None, bool]]) -> list[str]:
    """``--corpus K1 --root R1 --corpus demo --corpus test:K3 --root R3`` (the generated corpora
    take no root)."""
    cmd: list[str] = []
    for kind, root, test_only in entries:
        cmd += ["--corpus", ("test:" if test_only else "") + kind]
        if kind not in ROOTLESS:
            if not (root or "").strip():
                resolve_corpus(kind, root)  # raises: "Type the path of the … folder"
            cmd += ["--root", str(root)]
    return cmd


def describe_data(settings: dict[str, Any]) -> str:
    """What a run trains on, for a person: the corpus (or the mix), the split and augmentation."""
    entries = settings.get("corpora")
    if entries:
        parts = []
        for kind, root, test_only in _corpus_items(entries):
            title = CORPUS_KINDS[kind]["title"]
            parts.append(("test only: " if test_only else "") + (f"{title} `{root}`" if root else title))
        text = "a mix of " + " + ".join(parts) + " · split by speaker per corpus, corpora and classes balanced"
        shares = settings.get("corpus_shares") or {}
        if shares:
            text += " · " + ", ".join(f"{CORPUS_KINDS[k]['title'] if k in CORPUS_KINDS else k}: {v:g} times "
                                      "its part of each epoch" for k, v in shares.items())
        if settings.get("epoch_items"):
            text += f" · {int(settings['epoch_items'])} clips drawn per epoch"
    else:
        kind = _single_kind(settings)
        if kind in ROOTLESS:
            where = CORPUS_KINDS[kind]["title"]
        else:
            where = f"{CORPUS_KINDS[kind]['title'] if kind else settings.get('corpus')} `{settings.get('root')}`"
        protocol = settings.get("protocol")
        split = ("its own train/validation/test split" if protocol == "predefined"
                 else f"{protocol} fold {settings.get('fold')}")
        text = f"{where} · {split}"
    copies = int(settings.get("augment") or 0)
    if copies:
        which = settings.get("augment_corpora")
        text += (f" · {copies} augmented cop{'y' if copies == 1 else 'ies'} per clip"
                 + (f" ({', '.join(which)} only)" if which else ""))
    if settings.get("group_by_length"):
        text += " · batches of clips of similar length"
    return text


def _single_kind(settings: dict[str, Any]) -> str | None:
    """The corpus kind of a one-corpus run (``settings["kind"]``; older records: the demo corpus when
    its root is the generated manifest, else the kind whose loader it used)."""
    kind = settings.get("kind")
    if kind in CORPUS_KINDS:
        return kind
    corpus, root = settings.get("corpus"), str(settings.get("root") or "")
    if corpus == "manifest" and root:
        for kind, folder in (("demo", paths.default_corpus_dir()), ("demo-calm", paths.calm_corpus_dir())):
            if Path(root) == folder / "manifest.csv":
                return kind
    return next((k for k, v in CORPUS_KINDS.items() if k not in ROOTLESS and v["corpus"] == corpus), None)


def build_command(
    out: Path, run_dir: Path, events: Path, stop_file: Path, *, model: str, corpus: str = "manifest",
    root: str | None = None, protocol: str = "predefined", fold: int = 0, preset: str = "fast",
    epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
    dropout: float | None = None, init_from: str | None = None, max_utterances: int | None = None,
    model_args: dict[str, Any] | None = None, device: str | None = None, seed: int = 0,
    corpora: Any = None, augment: int = 0, augment_corpora: list[str] | None = None,
    corpus_shares: dict[str, float] | None = None, epoch_items: int | None = None,
    group_by_length: bool = False, layer_mix_lr: float | None = None,
) -> list[str]:
    """The ``python -m ser_core train`` command line for these settings.

    ``corpora`` (kinds with their paths, see :func:`check_corpora`) of two or more corpora, or one
    marked test only, is a mix: ``--corpus K --root R`` repeated in order (the demo corpus takes
    no root), split by speaker per corpus (no ``--protocol``/``--fold``). One corpus there stands
    for ``corpus``/``root`` and keeps ``protocol`` and ``fold``. ``augment`` > 0 adds
    ``--augment N`` (and, for a mix, ``--augment-corpora`` when only some are augmented);
    ``corpus_shares`` (a mix) one ``--corpus-share NAME=SHARE`` each; ``epoch_items`` (a mix)
    ``--epoch-items``; ``group_by_length`` ``--group-by-length``; ``layer_mix_lr`` ``--layer-mix-lr``.
    """
    items = _corpus_items(corpora) if corpora else []
    mix = _is_mix(items) if items else False
    if items and not mix:
        corpus, root = resolve_corpus(items[0][0], items[0][1])
    cmd = [sys.executable, "-m", "ser_core", "train", "--model", model]
    if mix:
        cmd += _mix_flags(items)
    else:
        cmd += ["--corpus", corpus, "--root", str(root), "--protocol", protocol, "--fold", str(fold)]
    cmd += ["--preset", preset, "--seed", str(seed), "--out", str(out), "--run-dir", str(run_dir),
            "--events", str(events), "--stop-file", str(stop_file)]
    if augment:
        cmd += ["--augment", str(int(augment))]
        if mix and augment_corpora:
            cmd += ["--augment-corpora", ",".join(augment_corpora)]
    if mix:
        for name, share in (corpus_shares or {}).items():
            cmd += ["--corpus-share", f"{name}={share:g}"]
        if epoch_items:
            cmd += ["--epoch-items", str(int(epoch_items))]
    if group_by_length:
        cmd.append("--group-by-length")
    if layer_mix_lr:
        cmd += ["--layer-mix-lr", f"{layer_mix_lr:g}"]
    for flag, value in (("--epochs", epochs), ("--batch-size", batch_size), ("--lr", lr),
                        ("--dropout", dropout), ("--init-from", init_from),
                        ("--max-utterances", max_utterances), ("--device", device)):
        if value is not None:
            cmd += [flag, str(value)]
    for key, value in (model_args or {}).items():
        cmd += ["--model-arg", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    return cmd


def parse_model_args(text: str | list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """``"d_model=32 ff_dim=64"`` (spaces, commas or lines between) → {"d_model": 32, ...}."""
    if not text:
        return {}
    if isinstance(text, dict):
        return dict(text)
    items = text if isinstance(text, list) else re.split(r"[\s,;]+", text.strip())
    out: dict[str, Any] = {}
    for item in filter(None, items):
        key, sep, value = item.partition("=")
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key) or value == "":
            raise InputError(f"Model argument {item!r}: write key=value, e.g. d_model=96.")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def parse_shares(items: str | list[str] | dict[str, float] | None, option: str = "A corpus share",
                 example: str = "demo-calm=2.5") -> dict[str, float] | None:
    """``"ravdess=2 tess=0.5"`` (or the items as a list) → {"ravdess": 2.0, "tess": 0.5}; None when
    none is given. Each share is a positive number (how many times the usual part of an epoch)."""
    if isinstance(items, dict):
        items = [f"{k}={v}" for k, v in items.items()]
    if isinstance(items, str):
        items = re.split(r"[\s,;]+", items.strip())
    shares: dict[str, float] = {}
    for item in filter(None, items or []):
        name, _, value = item.partition("=")
        try:
            share = float(value)
        except ValueError:  # no "=" leaves value empty: the same message
            raise InputError(f"{option} is written NAME=SHARE, like {example}; got {item!r}.") from None
        if not (0 < share <= 100):
            raise InputError(f"{option} must be a number above 0; got {item!r}.")
        shares[name.strip().lower()] = share
    return shares or None
