"""Crash safety and multi-process training, on real subprocesses.

* SIGKILL a training run in the middle of an epoch, resume it, and compare every epoch's
  metrics and the final weights with an uninterrupted run of the same settings.
* A 2-process DistributedDataParallel run on CPU (gloo) through torchrun.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ser_core.checkpoint import load_checkpoint, read_meta

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
REPO = Path(__file__).resolve().parent.parent
TINY = ["--model-arg", "d_model=32", "--model-arg", "ff_dim=64", "--model-arg", "feature_layers=1",
        "--model-arg", "ccab_layers=1", "--model-arg", "fusion_layers=1"]


def _command(corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["-m", "ser_core", "train", "--root", str(corpus), "--out", str(out), "--epochs", "3",
            "--batch-size", "2", "--state-every", "1", "--device", "cpu", *TINY, *extra]


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "SER_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}


def _rows(out: Path) -> list[dict]:
    run = out.with_suffix("").parent / (out.stem + ".run")
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _position(state: Path) -> dict | None:
    try:
        return json.loads(torch.load(state, map_location="cpu", weights_only=True)["position"])
    except Exception:  # not written yet
        return None


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(cache, corpus, tmp_path):
    env = _env(cache)
    whole = tmp_path / "whole.safetensors"  # the uninterrupted run goes on beside the killed one
    uninterrupted = subprocess.Popen([sys.executable, *_command(corpus, whole)], cwd=REPO, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    killed = tmp_path / "killed.safetensors"
    state = tmp_path / "killed.run" / "state.pt"
    proc = subprocess.Popen([sys.executable, *_command(corpus, killed)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:  # wait until the run is inside its second epoch
            pos = _position(state) if state.exists() else None
            if pos and pos["epoch"] == 1 and pos["batch"] >= 3:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.02)
        else:
            pytest.fail("the run never reached epoch 2")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        if sys.exc_info()[0] is not None:
            uninterrupted.kill()
    assert proc.returncode == -signal.SIGKILL
    # what the kill left is whole: the epoch-1 checkpoint loads, the state is readable
    assert read_meta(killed)["metrics"]["epoch"] == 1
    load_checkpoint(killed)
    pos = _position(state)
    assert pos["epoch"] == 1 and 0 < pos["batch"]

    subprocess.run([sys.executable, *_command(corpus, killed, "--resume")], cwd=REPO, env=env,
                   check=True, capture_output=True, timeout=600)
    _, err = uninterrupted.communicate(timeout=600)
    assert uninterrupted.returncode == 0, err[-3000:]
    a, b = _rows(whole), _rows(killed)
    assert [r["epoch"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        for key in ("train_loss", "val_ua", "val_wa", "lr"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-6), (key, ra["epoch"])
    wa, _ = load_checkpoint(whole)
    wb, _ = load_checkpoint(killed)
    for (name, x), y in zip(wa.state_dict().items(), wb.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=name)
    assert read_meta(killed)["metrics"]["test"] == read_meta(whole)["metrics"]["test"]


def test_two_process_ddp_training_on_cpu(cache, corpus, tmp_path):
    out = tmp_path / "ddp.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29500 + os.getpid() % 1000), *_command(corpus, out)]
    cmd[cmd.index("--epochs") + 1] = "2"
    result = subprocess.run(cmd, cwd=REPO, env=_env(cache), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    meta = read_meta(out)
    assert meta["training"]["world_size"] == 2
    assert [r["epoch"] for r in _rows(out)] == [1, 2]
    assert set(meta["metrics"]["test"]) >= {"wa", "ua", "n"}
    load_checkpoint(out)
