"""Issue 12, "Nothing lost, every failure named": damaged stores, damaged checkpoints, concurrent sweeps,
outputs and plans checked before training, and messages that say what is wrong and where.

Every test reproduces one case of the issue on real files and real processes (tiny data, CPU, seconds).
"""
from __future__ import annotations

import csv
import io
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from capslib.engine.atomic import CheckpointError, load_checkpoint, read_json, save_atomic
from capslib.cli import main
from capslib.engine.config import profile
from capslib.experiments.report import report
from capslib.experiments.results import ResultsStore, StoreDamagedError, StoreDamageWarning

ROOT = Path(__file__).resolve().parent.parent
SWEEP_TINY = dict(train_size=128, val_size=128, test_size=128, batch_size=64)
TRAIN_TINY = dict(C=4, D=4, I=0, epochs=1, **SWEEP_TINY)
TORCH_ADVICE = "weights_only=False"


def _table2_rows(n: int = 3) -> list[dict]:
    return [{"run_key": f"k{i}", "status": "ok", "stage": "train", "kind": "train", "model.C": 20, "model.D": 8,
             "model.I": i, "seed": 0, "test_acc": 0.70 + i / 100, "history": json.dumps([{"epoch": 1}]),
             "data.dataset": "fashion-mnist", "profile": "fmnist", "device_name": "cpu", "capslib_version": "0.1.0"}
            for i in range(1, n + 1)]


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)


# ----------------------------------------------------------------------------- 1. empty timestamp


def test_a_row_with_an_empty_timestamp_does_not_empty_the_report(tmp_path):
    store = ResultsStore.for_experiment("table2", "fmnist", tmp_path)
    store.append_many(_table2_rows())
    lines = _lines(store.path)
    header = next(csv.reader([lines[0]]))
    bad = next(csv.reader([lines[1]]))
    bad[header.index("run_key")], bad[header.index("timestamp")] = "k9", ""
    bad[header.index("capslib_version")] = "9.9.9"  # would win as "newest" if an empty timestamp sorted last
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(bad)
    store.path.write_text("".join(lines) + buf.getvalue())

    with pytest.warns(StoreDamageWarning, match=rf"{store.path}, line 5: .*empty timestamp"):
        rep = report("table2", profile="fmnist", results_root=tmp_path, figure=False)
    ours = rep.table.dropna(subset=["ours"])
    assert sorted(ours["I"]) == [1, 2, 3] and rep.has_ours  # before: no "ours" at all, exit code 0

    # the report itself no longer lets a row without a timestamp choose the library version
    with pytest.warns(StoreDamageWarning):
        df = store.read()
    df.loc[len(df)] = dict(df.iloc[0], run_key="k8", timestamp=float("nan"), capslib_version="9.9.9")
    assert report("table2", profile="fmnist", results_root=tmp_path, store_df=df, figure=False).has_ours


# ----------------------------------------------------------------------------- 2. damaged store rows


def test_an_unterminated_quote_is_quarantined_verbatim_and_the_next_row_kept(tmp_path):
    store = ResultsStore(tmp_path / "table2" / "smoke.csv")
    store.append_many(_table2_rows(3))
    lines = _lines(store.path)
    assert lines[2].count('"[{""epoch"": 1}]"') == 1
    lines[2] = lines[2].replace('"[{""epoch"": 1}]"', '"[{""epoch"": 1}]', 1)  # the closing quote lost
    store.path.write_text("".join(lines))
    damaged = lines[2]

    # the issue, reproduced: a plain CSV reader lets row 2 swallow row 3
    with open(store.path, newline="") as f:
        assert [r["run_key"] for r in csv.DictReader(f)] == ["k1", "k2"]

    with pytest.warns(StoreDamageWarning, match=rf"{store.path}, line 3: damaged row ignored"):
        assert store.done_keys() == {"k1", "k3"}  # the damaged row is never counted as done
    with pytest.warns(StoreDamageWarning, match="moved verbatim to"):
        store.append({"run_key": "k4", "status": "ok", "test_acc": 0.5})
    assert [r["run_key"] for r in store.rows()] == ["k1", "k3", "k4"]  # every good row kept
    quarantine = store.quarantine_path.read_text()
    assert damaged in quarantine.splitlines(keepends=True)  # kept verbatim, never rewritten away
    assert "smoke.csv line 3" in quarantine
    store.append({"run_key": "k5", "status": "ok", "test_acc": 0.5})  # no damage left: nothing moved twice
    assert store.quarantine_path.read_text() == quarantine


def test_a_half_written_last_line_is_not_done_and_is_kept(tmp_path):
    store = ResultsStore(tmp_path / "s.csv")
    store.append_many(_table2_rows(2))
    lines = _lines(store.path)
    cut = lines[2][: len(lines[2]) // 2].replace("k2", "k7", 1)  # a write cut short, no line end
    store.path.write_text("".join(lines) + cut)
    with pytest.warns(StoreDamageWarning, match="line 4: .*cut short"):
        assert store.done_keys() == {"k1", "k2"}
    with pytest.warns(StoreDamageWarning):
        store.append({"run_key": "k7", "status": "ok", "test_acc": 0.9})  # the point, run again
    assert [r["run_key"] for r in store.rows()] == ["k1", "k2", "k7"]
    assert store.get("k7")["test_acc"] == "0.9"  # the full row, not the cut one
    assert cut + "\n" in store.quarantine_path.read_text()


@pytest.mark.parametrize("field,value,reason", [
    ("test_acc", "0.7x", "not a number"), ("status", "okay", "status"), ("run_key", "", "empty run_key"),
    ("history", '[{"epoch": 1', "not valid JSON"), ("timestamp", "yesterday", "timestamp"),
])
def test_rows_with_wrong_types_or_empty_keys_are_refused(tmp_path, field, value, reason):
    store = ResultsStore(tmp_path / "s.csv")
    store.append_many(_table2_rows(2))
    lines = _lines(store.path)
    header = next(csv.reader([lines[0]]))
    row = next(csv.reader([lines[1]]))
    row[header.index(field)] = value
    if field != "run_key":
        row[header.index("run_key")] = "k9"
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(row)
    store.path.write_text(lines[0] + buf.getvalue() + "".join(lines[1:]))
    with pytest.warns(StoreDamageWarning, match=f"line 2: .*{reason}"):
        assert [r["run_key"] for r in store.rows()] == ["k1", "k2"]
    with pytest.raises(ValueError, match=reason):  # and the store never writes such a row itself
        store.append(dict(_table2_rows(1)[0], **{"run_key": "k10", field: value}))


def test_a_damaged_header_is_refused_and_the_file_left_alone(tmp_path):
    store = ResultsStore(tmp_path / "s.csv")
    store.append_many(_table2_rows(2))
    text = store.path.read_text()
    store.path.write_text("garbage\x00header\n" + text.split("\n", 1)[1])
    before = store.path.read_bytes()
    with pytest.raises(StoreDamagedError, match=r"s\.csv: the header \(line 1\) is damaged"):
        store.append({"run_key": "k9", "status": "ok", "test_acc": 0.5})
    assert store.path.read_bytes() == before


# ----------------------------------------------------------------------------- 3. damaged checkpoints


def _objects_pickle(path: Path) -> None:
    torch.save({"model": {"w": torch.zeros(2)}, "extra": pd.Timestamp("2024-01-01")}, path)


@pytest.mark.parametrize("damage,why", [("truncated", "cut short"), ("random", "not a torch checkpoint"),
                                        ("empty", "empty"), ("objects", "Python objects other than tensors"),
                                        ("foreign", "missing optimizer")])
def test_unreadable_checkpoints_name_the_file_and_what_to_do(tmp_path, damage, why):
    path = tmp_path / "last.pt"
    save_atomic({"model": {"w": torch.arange(1000.0)}, "epoch": 1}, path)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "random":
        path.write_bytes(os.urandom(4096))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "objects":
        _objects_pickle(path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, keys=("model", "epoch", "optimizer"))
    msg = str(err.value)
    assert str(path) in msg and why in msg and "Delete" in msg and "restore" in msg
    assert TORCH_ADVICE not in msg and "Errno 22" not in msg


def test_a_damaged_last_pt_stops_fit_and_a_sweep_point_with_its_path(real_data_root, tmp_path):
    from capslib.engine.config import apply_overrides
    from capslib.experiments.grids import get_experiment
    from capslib.experiments.grids import point_key
    from capslib.experiments.sweeps import run_point
    from capslib.engine.train import fit

    cfg = profile("smoke", **TRAIN_TINY)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "last.pt").write_bytes(os.urandom(512))
    with pytest.raises(CheckpointError, match=rf"{ckpt / 'last.pt'} is unreadable: it is not a torch checkpoint.*"
                                              rf"Delete {ckpt / 'last.pt'}"):
        fit(cfg, checkpoint_dir=ckpt, progress=False)

    point = get_experiment("table2").grid("smoke")[0]
    pcfg = apply_overrides(point.config("smoke"), **SWEEP_TINY)
    folder = tmp_path / "sweeps" / point_key("table2", pcfg, point)
    folder.mkdir(parents=True)
    path = folder / "last.pt"
    path.write_bytes(b"PK\x03\x04" + os.urandom(100))  # a zip cut short
    with pytest.raises(CheckpointError) as err:
        run_point("table2", point, pcfg, checkpoint_root=str(tmp_path / "sweeps"))
    assert str(path) in str(err.value) and TORCH_ADVICE not in str(err.value)


def test_a_truncated_result_json_names_the_file(tmp_path):
    from capslib.experiments.pipeline import _Runner

    cfg = profile("smoke", **TRAIN_TINY)
    stage = tmp_path / "base-abc"
    stage.mkdir()
    (stage / "config.json").write_text(cfg.to_json(indent=2))
    (stage / "result.json").write_text('{"config": {"model": {"C": 4')
    runner = _Runner(data=None, device=torch.device("cpu"), root=tmp_path, store=ResultsStore(tmp_path / "r.csv"),
                     experiment="x", progress=False, key_extra="", extra={})
    with pytest.raises(CheckpointError, match=rf"stage result {stage / 'result.json'} is not valid JSON.*"
                                              rf"cut short.*Delete"):
        runner.load_finished(stage, cfg)
    with pytest.raises(CheckpointError, match="config.json is missing"):
        read_json(tmp_path / "config.json", what="config.json")


# ----------------------------------------------------------------------------- 4. concurrent sweeps


def _sweep_cmd(results: Path, checkpoints: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "capslib.cli", "sweep", "table2", "--profile", "smoke", "--results", str(results),
            "--checkpoints", str(checkpoints), "--quiet", *extra, "--set",
            *[f"{k}={v}" for k, v in SWEEP_TINY.items()]]


def test_two_concurrent_sweeps_run_each_point_once(real_data_root, tmp_path):
    """Two real processes sweep the same grid into one store; each keeps its checkpoints apart, so the
    point folders each creates count the points it actually trained."""
    results = tmp_path / "results"
    grid = 3
    procs = [subprocess.Popen(_sweep_cmd(results, tmp_path / f"ck{i}"), env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    trained = [{d.name for d in (tmp_path / f"ck{i}").iterdir()} if (tmp_path / f"ck{i}").exists() else set()
               for i in range(2)]
    assert len(trained[0]) + len(trained[1]) == grid and not trained[0] & trained[1]  # each point once
    done = [int(re.search(r"\]: (\d+) done", out).group(1)) for out, _ in outs]
    assert sum(done) == grid, outs
    df = ResultsStore(results / "table2" / "smoke.csv").read()
    assert len(df) == grid and df["point_key"].is_unique and set(df["point_key"]) == trained[0] | trained[1]
    assert not (results / "table2" / "smoke.csv.claims").exists()  # every claim released

    # a damaged row is quarantined and its point (only that one) runs again on resume
    store = ResultsStore(results / "table2" / "smoke.csv")
    lines = _lines(store.path)
    lines[2] = lines[2][:-30] + "\n"
    store.path.write_text("".join(lines))
    again = subprocess.run(_sweep_cmd(results, tmp_path / "ck2"), env=_env(), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr
    assert "1 done" in again.stdout and "2 skipped" in again.stdout
    assert "line 3" in again.stderr and "StoreDamageWarning" in again.stderr
    assert lines[2] in store.quarantine_path.read_text()
    assert len(store.rows()) == grid


def test_a_claim_left_by_kill_9_is_taken_over(real_data_root, tmp_path):
    results = tmp_path / "results"
    claims = results / "table2" / "smoke.csv.claims"
    proc = subprocess.Popen(_sweep_cmd(results, tmp_path / "ck"), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list(claims.glob("*.claim")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = list(claims.glob("*.claim"))
    assert len(left) == 1 and json.loads(left[0].read_text())["pid"] == proc.pid  # the dead owner's claim

    t0 = time.perf_counter()  # a process of its own, like the killed one (same library version, same keys)
    again = subprocess.run(_sweep_cmd(results, tmp_path / "ck"), env=_env(), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr
    assert re.search(r"\]: 3 done, 0 failed, 0 skipped", again.stdout), again.stdout
    assert f"took over the stale claim of point {left[0].stem} from " in again.stdout
    assert f"(its owner, pid {proc.pid} on this host, is gone)" in again.stdout  # at once, no timeout waited
    assert time.perf_counter() - t0 < 300
    assert not claims.exists()
    assert len(ResultsStore(results / "table2" / "smoke.csv").rows()) == 3


def test_claims_of_other_hosts_go_stale_only_without_heartbeat(tmp_path):
    from capslib.experiments.sweeps import PointClaims

    store = ResultsStore(tmp_path / "s.csv")
    mine = PointClaims(store, stale_after=30)
    path = mine.path("p1")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"host": "other-machine", "pid": 1, "token": "t"}))
    assert mine.try_claim("p1") == {"host": "other-machine", "pid": 1, "token": "t"}  # alive: heartbeat fresh
    old = time.time() - 60
    os.utime(path, (old, old))
    assert mine.try_claim("p1") is None and "no heartbeat for" in mine.taken_over[0]
    other = PointClaims(store, stale_after=30)
    assert other.try_claim("p1")["pid"] == os.getpid()  # now ours, and live
    mine.close()
    assert not path.exists()


# ----------------------------------------------------------------------------- 5. outputs and plans first


def _timed(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    return proc, time.perf_counter() - t0


def test_an_unwritable_out_is_refused_before_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for command, extra in (("train", []), ("prune", ["--pr", "0.25", "--store", str(tmp_path / "s.csv")])):
        proc, seconds = _timed([sys.executable, "-m", "capslib.cli", command, "--out", str(blocker / "r.json"),
                                "--checkpoint-dir", str(tmp_path / command), "--root", str(tmp_path / "no-data"),
                                *extra])
        assert proc.returncode == 2 and f"--out {blocker / 'r.json'} cannot be written" in proc.stderr
        assert "nothing was run" in proc.stderr and seconds < 30, (proc.stderr, seconds)
        assert not any((tmp_path / command).glob("*/*.pt"))


def test_an_unplannable_pruning_ratio_is_refused_before_training(tmp_path):
    proc, seconds = _timed([sys.executable, "-m", "capslib.cli", "prune", "--C", "4", "--D", "4", "--I", "0",
                            "--backbone_widths", "8", "16", "16", "--pr", "0.25", "0.9", "--root",
                            str(tmp_path / "no-data"), "--checkpoint-dir", str(tmp_path / "ck"),
                            "--store", str(tmp_path / "s.csv")])
    assert proc.returncode == 2, proc.stderr
    assert "PR=0.9 cannot be planned for CapsNet[C=4, D=4, I=0]" in proc.stderr and "conv1" in proc.stderr
    assert seconds < 30 and not (tmp_path / "s.csv").exists() and not list((tmp_path / "ck").iterdir())


def test_a_sweep_with_an_unplannable_point_runs_nothing(tmp_path):
    from capslib.experiments.sweeps import sweep

    with pytest.raises(ValueError, match=r"cannot be planned; nothing was run:\n  seed=0 prune .*PR=0.25"):
        sweep("table1", profile="smoke", overrides=dict(backbone_widths=(4, 4, 4)), results_root=tmp_path,
              progress=False, checkpoint_root=str(tmp_path / "ck"))
    assert not list(tmp_path.rglob("*.csv")) and not (tmp_path / "ck").exists()


# ----------------------------------------------------------------------------- 6. messages


def test_papermill_failures_carry_the_notebooks_error(tmp_path):
    import nbformat

    from capslib.book.batch import run_batch

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("X = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("raise ValueError(f'X={X} is not allowed')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "fails.ipynb"
    nbformat.write(nb, path)
    res = run_batch(path, {"X": [2]}, runs_dir=tmp_path / "runs", progress=False)
    (name, err), = res.failed
    assert name == "X2" and err.startswith("ValueError: X=2 is not allowed in cell")
    assert str(tmp_path / "runs" / "fails" / "X2.ipynb") in err


def test_report_parse_errors_name_the_source_row_and_column(tmp_path):
    rows = pd.DataFrame([{"run_key": "abc", "status": "ok", "stage": "train", "model.C": 4, "model.D": 4,
                          "model.I": 2, "seed": 0, "test_acc": 0.5, "history": '[{"epoch": 1, "val'}])
    with pytest.raises(ValueError, match=r"fig3 \[smoke\]: row 1 of the ok rows \(run_key abc\), column 'history'"):
        report("fig3", profile="smoke", results_root=tmp_path, store_df=rows, figure=False)


def test_config_file_errors_name_the_file(tmp_path, capsys):
    missing = tmp_path / "nope.json"
    assert main(["train", "--config", str(missing)]) == 2
    assert f"--config {missing}: no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": {"C": 4,}}')
    assert main(["train", "--config", str(bad)]) == 2
    assert f"--config {bad}: not valid JSON" in capsys.readouterr().err
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"model": {"C": 4, "colour": "red"}}')
    assert main(["train", "--config", str(wrong)]) == 2
    assert f"--config {wrong}: not a valid RunConfig" in capsys.readouterr().err


def test_nan_in_epoch_1_says_no_checkpoint_exists(real_data_root, tmp_path):
    from capslib.engine.train import TrainingDiverged, fit

    with pytest.raises(TrainingDiverged) as err:
        fit(profile("smoke", **TRAIN_TINY, lr=1e30), checkpoint_dir=tmp_path, progress=False)
    assert "no checkpoint was written yet" in str(err.value) and "last good checkpoint" not in str(err.value)
    assert not (tmp_path / "last.pt").exists()


def test_a_run_that_finishes_at_chance_is_flagged(real_data_root, tmp_path, capsys):
    out = tmp_path / "r.json"
    args = ["train", "--quiet", "--out", str(out), "--lr", "10"]
    for k, v in TRAIN_TINY.items():
        args += [f"--{k}", str(v)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "warning: finished at chance" in printed and "lr=10 is far above" in printed
    assert "finished at chance" in json.loads(out.read_text())["warnings"][0]


def test_report_on_a_missing_store_says_so(tmp_path, capsys):
    assert main(["report", "table2", "--profile", "smoke", "--results", str(tmp_path / "none"),
                 "--out", str(tmp_path / "out")]) == 1
    printed = capsys.readouterr().out
    assert f"no results store at {tmp_path / 'none' / 'table2' / 'smoke.csv'}" in printed
    assert "capslib sweep table2 --profile smoke" in printed


# ----------------------------------------------------------------------------- 7. durable and safe files


def test_save_atomic_fsyncs_the_checkpoint_and_its_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def spy(fd):  # records what is synced, then syncs it for real
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    save_atomic({"w": torch.ones(3)}, tmp_path / "best.pt")
    assert any(Path(p).name.startswith(".best.pt.tmp") for p in synced)  # the data, before the rename
    assert str(tmp_path) in synced  # the rename
    assert torch.equal(load_checkpoint(tmp_path / "best.pt")["w"], torch.ones(3))


class _Planted:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["CAPSLIB_TEST_MARKER"]),))


def test_a_planted_cifar10_pickle_is_refused_unopened(tmp_path, monkeypatch):
    from capslib.engine.data import DatasetUnavailableError, load_raw

    marker = tmp_path / "pwned"
    monkeypatch.setenv("CAPSLIB_TEST_MARKER", str(marker))
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "data_batch_1").write_bytes(pickle.dumps(_Planted()))
    with pytest.raises(DatasetUnavailableError, match=r"data_batch_1 does not match the published CIFAR-10 "
                                                      r"checksum.*pickle"):
        load_raw("cifar10", train=True, root=tmp_path / "data", download=False)
    assert not marker.exists()


def test_a_key_that_looks_like_a_float_with_a_huge_exponent_reads_back(tmp_path):
    """pandas' C parser segfaults on ``72e3503140282a14`` read as a number; the store reads keys as text.
    In a subprocess, so that a crash fails this test instead of killing the test run."""
    import subprocess
    import sys

    code = ("import sys; from capslib.experiments.results import ResultsStore; "
            "s = ResultsStore(sys.argv[1]); "
            "s.append({'run_key': '72e3503140282a14', 'status': 'ok', 'config_hash': '1e3503140282', 'seed': 0}); "
            "df = s.read(); print(df['run_key'][0], df['config_hash'][0])")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "rows.csv")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-1000:]
    assert out.stdout.split() == ["72e3503140282a14", "1e3503140282"]
