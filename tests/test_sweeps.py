"""Sweeps: named grids, resume after kill -9, failures, Ray = local, papermill batches, report."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from capslib.experiments.grids import EXPERIMENTS, PAPER_TABLES
from capslib.experiments.report import report
from capslib.experiments.results import ResultsStore
from capslib.experiments.sweeps import parse_overrides, sweep

TINY = dict(train_size=256, val_size=128, test_size=128, batch_size=64)
TIMING_AND_PROVENANCE = {"wall_time", "timestamp", "device", "device_name", "torch_version", "cuda_version",
                         "capslib_version", "git_sha", "git_dirty", "python"}


def test_paper_grids_have_the_papers_run_counts():
    sizes = {name: len(exp.grid("paper")) for name, exp in EXPERIMENTS.items()}
    assert sizes["table1"] == 42 and sizes["table2"] == 44 and sizes["table3"] == 8 and sizes["table4"] == 4
    assert sizes["table5"] == 6 and sizes["fig3"] == 1
    assert len(PAPER_TABLES["table1"]) == 42 and len(PAPER_TABLES["table2"]) == 44
    assert all(len(exp.grid("smoke")) >= 1 for exp in EXPERIMENTS.values())


def test_cli_list_and_dry_run(tmp_path):
    out = subprocess.run([sys.executable, "-m", "capslib.cli", "sweep", "list"], capture_output=True, text=True)
    assert out.returncode == 0 and "table3" in out.stdout and " 42 " in out.stdout
    dry = subprocess.run([sys.executable, "-m", "capslib.cli", "sweep", "table2", "--profile", "paper", "--dry-run",
                          "--results", str(tmp_path)], capture_output=True, text=True)
    assert dry.returncode == 0 and dry.stdout.count("[todo]") == 44
    assert not list(tmp_path.rglob("*.csv"))  # a dry run writes nothing


def _clean(df: pd.DataFrame) -> pd.DataFrame:
    df = df.drop(columns=[c for c in df.columns if c in TIMING_AND_PROVENANCE]).copy()
    df["history"] = df["history"].map(lambda h: json.dumps([{k: v for k, v in e.items() if k != "wall_time"}
                                                            for e in json.loads(h)]))
    return df.sort_values("point_key").reset_index(drop=True)


def test_sweep_resume_skips_finished_points(real_data_root, tmp_path):
    s1 = sweep("table2", profile="smoke", overrides=TINY, results_root=tmp_path, progress=False)
    assert (s1.done, s1.failed, s1.skipped) == (3, 0, 0)
    s2 = sweep("table2", profile="smoke", overrides=TINY, results_root=tmp_path, progress=False)
    assert (s2.done, s2.skipped) == (0, 3)
    df = ResultsStore(s1.store).read()
    assert len(df) == 3 and df["point_key"].is_unique
    for col in ("config_hash", "model.C", "seed", "test_acc", "wall_time", "device", "torch_version", "cuda_version",
                "capslib_version", "git_sha", "git_dirty"):
        assert col in df.columns


def test_failed_points_are_retried_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPSLIB_OFFLINE", "1")
    empty = tmp_path / "no-data"
    empty.mkdir()
    s = sweep("table2", profile="smoke", overrides=dict(TINY, root=str(empty)), results_root=tmp_path / "r",
              retries=1, progress=False)
    assert (s.done, s.failed) == (0, 3)
    df = ResultsStore(s.store).read()
    assert (df["status"] == "failed").all() and df["error"].str.contains("DatasetUnavailableError").all()


WRITER = textwrap.dedent("""
    import hashlib, sys
    from capslib.experiments.results import ResultsStore
    store = ResultsStore(sys.argv[1])
    i = 0
    while True:
        payload = ("x" * 2000) + str(i)
        store.append_many([{"run_key": f"k{i}-{j}", "status": "ok", "payload": payload,
                            "check": hashlib.sha256(payload.encode()).hexdigest()} for j in range(3)])
        i += 1
""")


def test_store_survives_kill_9_during_writes(tmp_path):
    """A real process appends rows as fast as it can and is killed with SIGKILL at random instants."""
    path = tmp_path / "store.csv"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rng = random.Random(0)
    seen = 0
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, str(script), str(path)])
        deadline = time.time() + 120
        while not path.exists() and time.time() < deadline:  # wait for the first write (imports take a while)
            time.sleep(0.05)
        time.sleep(0.5 + rng.random())
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        keys = [r["run_key"] for r in rows]
        assert len(keys) == len(set(keys))  # never duplicated
        assert len(rows) % 3 == 0 and len(rows) >= seen  # all rows of a write, or none; never lost
        for r in rows:
            assert hashlib.sha256(r["payload"].encode()).hexdigest() == r["check"]  # no torn row
        seen = len(rows)
    assert seen > 0


def test_sweep_killed_mid_run_resumes_without_duplicates(real_data_root, tmp_path):
    env = dict(os.environ, TQDM_DISABLE="1")
    cmd = [sys.executable, "-m", "capslib.cli", "sweep", "table2", "--profile", "smoke", "--results", str(tmp_path),
           "--quiet", "--set"] + [f"{k}={v}" for k, v in TINY.items()]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = tmp_path / "table2" / "smoke.csv"
    deadline = time.time() + 300
    while time.time() < deadline and not (store.exists() and len(ResultsStore(store).read()) >= 1):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(ResultsStore(store).read())
    assert 1 <= n_before <= 3
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"{3 - n_before} done" in done.stdout or n_before == 3
    df = ResultsStore(store).read()
    assert len(df) == 3 and df["point_key"].is_unique and (df["status"] == "ok").all()


def test_ray_backend_gives_the_same_rows_as_local(real_data_root, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"CAPSLIB_DATA": str(real_data_root), "OMP_NUM_THREADS": "1"}})
    try:
        remote = sweep("table2", profile="smoke", overrides=TINY, results_root=tmp_path / "ray", backend="ray",
                       progress=False)
    finally:
        ray.shutdown()
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # Ray gives each task one CPU; match it so float reductions agree bit for bit
    try:
        local = sweep("table2", profile="smoke", overrides=TINY, results_root=tmp_path / "local", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert remote.done == local.done == 3
    a, b = _clean(ResultsStore(remote.store).read()), _clean(ResultsStore(local.store).read())
    pd.testing.assert_frame_equal(a[sorted(a.columns)], b[sorted(b.columns)])


def test_papermill_batch_runs_notebooks_and_collects_rows(real_data_root, tmp_path):
    from capslib.book.batch import run_batch

    nb = Path(__file__).parent / "fixtures" / "batch" / "tiny.ipynb"
    res = run_batch(nb, {"C": [4, 6], "D": [4]}, runs_dir=tmp_path, progress=False)
    assert not res.failed
    assert sorted(p.name for p in res.outputs) == ["C4_D4.ipynb", "C6_D4.ipynb"]
    assert all(p.exists() for p in res.outputs)
    assert sorted(res.rows["param.C"]) == [4, 6] and (res.rows["model.C"] == res.rows["param.C"]).all()
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['Q'\].*valid parameters: C="):
        run_batch(nb, {"Q": [1]}, runs_dir=tmp_path, progress=False)


def test_report_joins_paper_and_ours_with_deltas(tmp_path):
    rows = []
    for seed, acc in ((0, 0.70), (1, 0.74)):
        rows.append({"run_key": f"k{seed}", "status": "ok", "stage": "train", "kind": "train", "model.C": 20,
                     "model.D": 8, "model.I": 3, "seed": seed, "test_acc": acc, "data.dataset": "fashion-mnist",
                     "profile": "fmnist", "device_name": "cpu", "capslib_version": "0.1.0"})
    store = ResultsStore.for_experiment("table2", "fmnist", tmp_path)
    store.append_many(rows)
    rep = report("table2", profile="fmnist", results_root=tmp_path)
    row = rep.table[(rep.table["C"] == 20) & (rep.table["D"] == 8) & (rep.table["I"] == 3)].iloc[0]
    assert row["paper"] == 77.7 and row["ours"] == pytest.approx(72.0) and row["seeds"] == 2
    assert row["ours_std"] == pytest.approx(2.828, abs=1e-3) and row["delta"] == pytest.approx(72.0 - 77.7)
    assert row["dataset"] == "fashion-mnist"
    assert rep.csv_path.exists() and rep.png_path.exists()
    assert "77.70" in rep.text() and "fashion-mnist" in rep.text()


def test_parse_row_reads_numbers_booleans_and_json_but_keeps_keys_as_text():
    from capslib.experiments.results import parse_row

    row = parse_row({"config_hash": "012345678901", "run_key": "1234", "capslib_version": "0.1.0",
                     "test_acc": "0.5", "model.C": "8", "collapsed": "False", "amp": "true",
                     "dead_002": '{"inter1": 0.25}', "acts_test": '{"inter1": [0.5]}', "label": "em I=1"})
    assert row == {"config_hash": "012345678901", "run_key": "1234", "capslib_version": "0.1.0", "test_acc": 0.5,
                   "model.C": 8, "collapsed": False, "amp": True, "dead_002": {"inter1": 0.25},
                   "acts_test": '{"inter1": [0.5]}', "label": "em I=1"}
    assert type(row["model.C"]) is int


def test_parse_overrides():
    assert parse_overrides(["C=4", "lr=0.01", "amp=true", "dataset=mnist"]) == dict(C=4, lr=0.01, amp=True,
                                                                                    dataset="mnist")
    with pytest.raises(ValueError):
        parse_overrides(["C"])


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_named_experiment_runs_under_smoke(real_data_root, tmp_path, name):
    """Each paper experiment's smoke grid runs end to end (tiny data: a code-path check, not a result)."""
    tiny = dict(train_size=128, val_size=1000, test_size=128, batch_size=64)
    if name == "seed002_depth":  # 12 runs of two epochs, each probing the validation split twice more
        tiny.update(val_size=128, epochs=1)
    s = sweep(name, profile="smoke", overrides=tiny, results_root=tmp_path, checkpoint_root="", progress=False)
    assert s.failed == 0, s.errors
    assert s.done == len(EXPERIMENTS[name].grid("smoke"))
    rep = report(name, profile="smoke", results_root=tmp_path, figure=False)
    assert rep.table["ours"].notna().any()


def test_cache_key_changes_when_the_library_changes(monkeypatch):
    import capslib.experiments.results as results
    from capslib.engine.config import profile
    from capslib.engine.provenance import capslib_version

    cfg = profile("smoke")
    assert "+" in capslib_version()  # release + source fingerprint
    before = results.run_key(cfg)
    monkeypatch.setattr(results, "capslib_version", lambda: "0.1.0+00000000")
    assert results.run_key(cfg) != before
