"""Command line: ``python -m ser_core {corpus,train,evaluate,analyze,faithfulness} --help``."""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from .errors import InputError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ser_core",
        description="SER attention explorer: demo corpus, training, evaluation and analysis.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    from . import corpus, experiments, expressive, probe, real_voices, train

    corpus.add_cli(sub)
    train.add_cli(sub)
    experiments.add_cli(sub)
    expressive.add_cli(sub)
    probe.add_cli(sub)
    real_voices.add_cli(sub)

    a = sub.add_parser("analyze", help="analyse one clip and print the prediction and trace as JSON")
    a.add_argument("audio", help="audio file (wav, flac, ogg, mp3, m4a, webm)")
    a.add_argument("--transcript", help="typed transcript (aligned to the audio instead of ASR)")
    a.add_argument("--checkpoint", default=None, help="default: the shipped KS-Transformer")
    a.add_argument("--keep-ratio", type=float, default=None)
    a.add_argument("--weights", action="store_true", help="include full attention weights")
    a.add_argument("--device")
    a.set_defaults(func=_analyze)

    f = sub.add_parser("faithfulness", help="share of emotion words kept by the text-side KS layers")
    f.add_argument("--checkpoint", default=None)
    f.add_argument("--root", default=None, help="demo corpus manifest (default: the generated one)")
    f.add_argument("--split", default="test")
    f.add_argument("--keep-ratio", type=float, default=None)
    f.add_argument("--limit", type=int, default=None, help="use only the first N utterances")
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
    from .faithfulness import faithfulness_report
    from .pipeline import DEFAULT_CHECKPOINT

    checkpoint = args.checkpoint or DEFAULT_CHECKPOINT
    report = faithfulness_report(checkpoint, args.root, split=args.split, keep_ratio=args.keep_ratio,
                                 device=args.device, limit=args.limit)
    print(json.dumps(report, indent=2))
    if args.write:
        from .checkpoint import update_meta

        update_meta(checkpoint, {"faithfulness": report})
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
