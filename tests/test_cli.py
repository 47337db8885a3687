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


@pytest.mark.parametrize("command", ["", "corpus", "train", "evaluate", "analyze", "faithfulness", "experiment"])
def test_help(command):
    result = _run(*([command] if command else []), "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: python -m ser_core" in result.stdout


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
