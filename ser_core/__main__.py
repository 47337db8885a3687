"""Command line: ``python -m ser_core {corpus,train,evaluate,analyze,faithfulness,soup,...} --help``."""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from .errors import InputError  # noqa: E402


class _RootOfCorpus(argparse.Action):
    """``--root`` after a ``--corpus`` is that corpus's folder; before any, the demo manifest."""

    def __call__(self, parser, namespace, value, option_string=None):
        corpora = getattr(namespace, "corpora", None)
        if not corpora:
            namespace.root = value
            return
        roots = dict(getattr(namespace, "corpus_roots", None) or {})
        if len(corpora) - 1 in roots:
            parser.error(f"two --root folders after --corpus {corpora[-1]}")
        roots[len(corpora) - 1] = value
        namespace.corpus_roots = roots


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ser_core",
        description="SER attention explorer: demo corpus, training, evaluation and analysis.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    from . import corpus, cross_validation, experiments, expressive, probe, real_voices, soup, train_cli

    corpus.add_cli(sub)
    train_cli.add_cli(sub)
    experiments.add_cli(sub)
    expressive.add_cli(sub)
    probe.add_cli(sub)
    real_voices.add_cli(sub)
    soup.add_cli(sub)
    cross_validation.add_cli(sub)

    a = sub.add_parser("analyze", help="analyse one clip and print the prediction and trace as JSON")
    a.add_argument("audio", help="audio file (wav, flac, ogg, mp3, m4a, webm)")
    a.add_argument("--transcript", help="typed transcript (aligned to the audio instead of ASR)")
    a.add_argument("--checkpoint", default=None, help="default: the shipped KS-Transformer")
    a.add_argument("--keep-ratio", type=float, default=None)
    a.add_argument("--weights", action="store_true", help="include full attention weights")
    a.add_argument("--device")
    a.set_defaults(func=_analyze)

    f = sub.add_parser(
        "faithfulness", help="does the attention point at what the model uses? (emotion words kept; deletion test "
                             "per corpus with --corpus)",
        description="Without --corpus: the share of the demo corpus's emotion words kept by the text-side "
                    "key-sparse layers. With --corpus (repeat it): the deletion test on each corpus's "
                    "held-out speakers, e.g. --corpus demo --corpus ravdess --root ../shared/data/ravdess "
                    "--corpus tess --root ../shared/data/tess --limit 40 --write")
    f.add_argument("--checkpoint", default=None)
    f.add_argument("--corpus", dest="corpora", action="append", default=None,
                   help="a corpus to run the deletion test on (demo, ravdess, tess, ...; repeat); "
                        "a --root after it gives its folder (the demo corpus needs none)")
    f.add_argument("--root", default=None, action=_RootOfCorpus,
                   help="without --corpus: the demo corpus manifest (default: the generated one); "
                        "after a --corpus: that corpus's folder")
    f.add_argument("--split", default="test")
    f.add_argument("--keep-ratio", type=float, default=None)
    f.add_argument("--limit", type=int, default=None,
                   help="without --corpus: the first N utterances; with --corpus: at most N clips per corpus "
                        "(default 40), the same number of each emotion as far as they go")
    f.add_argument("--seed", type=int, default=0, help="with --corpus: which clips are chosen")
    f.add_argument("--json", action="store_true", help="with --corpus: print the whole report as JSON")
    f.add_argument("--write", action="store_true", help="store the report in the checkpoint (the app shows it)")
    f.add_argument("--device")
    f.set_defaults(func=_faithfulness)
    return parser


def _analyze(args) -> int:
    from .pipeline import DEFAULT_CHECKPOINT, Analyzer

    analyzer = Analyzer(args.checkpoint or DEFAULT_CHECKPOINT, device=args.device)
    analysis = analyzer.analyze(args.audio, transcript=args.transcript, keep_ratio=args.keep_ratio)
    print(json.dumps(analysis.to_dict(with_weights=args.weights), indent=2))
    return 0


def _faithfulness(args) -> int:
    from .pipeline import DEFAULT_CHECKPOINT

    checkpoint = args.checkpoint or DEFAULT_CHECKPOINT
    if args.corpora:
        return _faithfulness_by_corpus(args, checkpoint)
    from .faithfulness import faithfulness_report

    report = faithfulness_report(checkpoint, args.root, split=args.split, keep_ratio=args.keep_ratio,
                                 device=args.device, limit=args.limit)
    print(json.dumps(report, indent=2))
    if args.write:
        from .checkpoint import update_meta

        update_meta(checkpoint, {"faithfulness": report})
    return 0


def _faithfulness_by_corpus(args, checkpoint) -> int:
    """``faithfulness --corpus A [--root R] --corpus B ...``: the deletion test per corpus."""
    import shlex

    import pandas as pd

    from .data.base import LABEL_NAMES
    from .faithfulness import faithfulness_by_corpus
    from .model_card import faithfulness_table

    if args.root:
        raise InputError("With --corpus, put each --root after the --corpus it belongs to.")
    roots = getattr(args, "corpus_roots", None) or {}
    corpora = [(name, roots.get(i)) for i, name in enumerate(args.corpora)]
    limit = 40 if args.limit is None else args.limit
    words = ["python -m ser_core faithfulness", "--checkpoint", str(checkpoint)]
    for name, root in corpora:
        words += ["--corpus", name] + (["--root", root] if root else [])
    words += ["--limit", str(limit), "--seed", str(args.seed)]
    words += ["--split", args.split] if args.split != "test" else []
    words += ["--keep-ratio", str(args.keep_ratio)] if args.keep_ratio is not None else []
    command = " ".join(words[:1] + [shlex.quote(w) for w in words[1:]])
    report = faithfulness_by_corpus(checkpoint, corpora, limit=limit, seed=args.seed, split=args.split,
                                    keep_ratio=args.keep_ratio, device=args.device, command=command,
                                    log=lambda text: print(text, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(pd.DataFrame(faithfulness_table(report)).to_string(index=False))
        for name, result in report["corpora"].items():
            emotions = ", ".join(f"{LABEL_NAMES.get(k, k)} {v}" for k, v in result["emotions"].items())
            print(f"{name}: {result['utterances']} clips ({emotions}) of {result['held_out_clips']} held out, "
                  f"{result['seconds']:.0f} s" + (f", {len(result['skipped'])} skipped" if result["skipped"] else ""))
            kept = result.get("keyword_kept")
            if kept:
                print(f"{name}: emotion word kept by the key-sparse layers in {kept['key_sparse']:.0%} of "
                      f"(clip, layer) cases; vanilla top half {kept['vanilla_top_half']:.0%}; "
                      f"chance {kept['chance']:.0%}")
    if args.write:
        from .checkpoint import update_meta

        update_meta(checkpoint, {"faithfulness_by_corpus": report})
        print(f"stored in {checkpoint} (faithfulness_by_corpus)", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
