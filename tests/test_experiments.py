"""`python -m ser_core experiment`: every row trained on one fold, a table and a plot written,
finished rows reused."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from ser_core.errors import InputError
from ser_core.experiments import EXPERIMENTS, _rows, load_results, run_experiment

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
TINY = {"d_model": 32, "ff_dim": 64, "feature_layers": 1, "fusion_layers": 1}


def test_every_experiment_names_its_rows():
    for name in EXPERIMENTS:
        rows, _ = _rows(name)
        assert len(rows) >= 4 and len({r.name for r in rows}) == len(rows)
    assert [r.model_args["ccab_layers"] for r in _rows("ks_ccab")[0]] == [0, 1, 2, 3, 4]
    assert {r.model_args["variant"] for r in _rows("cat")[0]} == {"full", "ctol", "ltoc", "sum"}
    with pytest.raises(InputError, match="Unknown experiment"):
        _rows("nope")


def test_this_machines_results_come_first_then_the_shipped_ones(tmp_path, monkeypatch):
    from ser_core import experiments

    monkeypatch.setenv("SER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(experiments, "SHIPPED_RESULTS", tmp_path / "shipped")
    assert load_results("mesm_top_p") is None and experiments.found_results_dir("mesm_top_p") is None
    shipped = tmp_path / "shipped" / "mesm_top_p"
    shipped.mkdir(parents=True)
    (shipped / "results.json").write_text(json.dumps({"rows": [{"setting": "shipped"}]}))
    assert load_results("mesm_top_p")["rows"][0]["setting"] == "shipped"
    assert experiments.found_results_dir("mesm_top_p") == shipped
    own = experiments.results_dir("mesm_top_p")
    own.mkdir(parents=True)
    (own / "results.json").write_text(json.dumps({"rows": [{"setting": "own"}]}))
    assert load_results("mesm_top_p")["rows"][0]["setting"] == "own"


def test_ccab_experiment_writes_table_and_plot_and_reuses_rows(cache, corpus, tmp_path, monkeypatch):
    out = tmp_path / "ks_ccab"
    rows = run_experiment("ks_ccab", root=str(corpus), epochs=1, out=out, model_args=TINY,
                          device="cpu", log=lambda *_: None)
    assert [r["setting"] for r in rows] == [f"{n} CCAB" for n in range(5)]
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 5 and all(0 <= float(r["test_ua"]) <= 1 for r in table)
    assert (out / "results.png").stat().st_size > 5000
    saved = load_results("ks_ccab", out)
    assert saved["rows"] == json.loads(json.dumps(rows)) and saved["settings"]["epochs"] == 1
    # the checkpoints really differ in depth
    from ser_core.checkpoint import read_meta

    depths = [read_meta(out / "runs" / f"{n}_CCAB.safetensors")["config"]["ccab_layers"] for n in range(5)]
    assert depths == [0, 1, 2, 3, 4]
    import ser_core.train

    monkeypatch.setattr(ser_core.train, "train", lambda *a, **k: pytest.fail("a finished row was retrained"))
    again = run_experiment("ks_ccab", root=str(corpus), epochs=1, out=out, model_args=TINY,
                           device="cpu", log=lambda *_: None)
    assert again == rows


def test_a_sweep_runs_only_the_values_asked_for(cache, corpus, tmp_path):
    out = tmp_path / "ks_keep_ratio"
    rows = run_experiment("ks_keep_ratio", root=str(corpus), epochs=1, out=out, model_args=TINY,
                          device="cpu", values=[0.1, 0.9], log=lambda *_: None)
    assert [r["value"] for r in rows] == [0.1, 0.9]
    saved = load_results("ks_keep_ratio", out)
    assert saved["settings"]["model_args"] == TINY and len(saved["rows"]) == 2
    with pytest.raises(InputError, match="0.25"):
        run_experiment("ks_keep_ratio", root=str(corpus), epochs=1, out=out, values=[0.25], log=lambda *_: None)


def test_a_curve_of_close_scores_is_drawn_flat_not_as_a_trend():
    from ser_core.experiments import plot_results

    rows = [{"value": k, "test_ua": 0.77 + 0.01 * i, "test_wa": 0.76 + 0.01 * i} for i, k in enumerate((0.1, 0.5, 0.9))]
    lo, hi = plot_results(rows, "keep_ratio k", "ks_keep_ratio").axes[0].get_ylim()
    assert hi - lo >= 0.2 - 1e-9 and lo <= 0.76 and hi >= 0.79
