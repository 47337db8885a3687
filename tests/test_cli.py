"""`python -m ser_core` and its sub-commands."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHECKPOINT = REPO / "checkpoints" / "ks_transformer_demo.safetensors"


def _run(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ser_core", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_help_runs_as_a_module():
    result = _run("--help")
    assert result.returncode == 0, result.stderr
    assert "usage: python -m ser_core" in result.stdout


def test_every_subcommand_has_help(capsys):
    """Each subcommand's --help, in this process (one interpreter start is tested above)."""
    from ser_core.__main__ import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"corpus", "train", "evaluate", "analyze", "faithfulness", "experiment", "probe",
            "real-voices"} <= set(commands)
    for command in commands:
        with pytest.raises(SystemExit) as stop:
            parser.parse_args([command, "--help"])
        assert stop.value.code == 0
        out = capsys.readouterr().out
        assert f"usage: python -m ser_core {command}" in out, command


def test_bad_input_is_a_message_and_exit_code_2(tmp_path):
    bad = tmp_path / "notes.mp3"
    bad.write_text("not audio")
    result = _run("analyze", str(bad), "--checkpoint", str(CHECKPOINT))
    assert result.returncode == 2
    assert "error: " in result.stderr and "could not be read" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(not CHECKPOINT.exists(), reason="shipped checkpoint missing")
def test_analyze_prints_prediction_json():
    wav = sorted((REPO / "samples" / "wav").glob("*.wav"))[0]
    result = _run("analyze", str(wav), "--keep-ratio", "0.3")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["prediction"] in out["probabilities"]
    assert abs(sum(out["probabilities"].values()) - 1) < 1e-4
    assert out["keep_ratio"] == 0.3 and out["words"]
    assert any(r["name"].startswith("ccab") for r in out["trace"]["records"])
