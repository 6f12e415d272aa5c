"""The results store: one CSV row per finished run (or pipeline stage), with provenance.

A store is one CSV file, ``results/<experiment>/<profile>.csv``. Every append
rewrites the file through a temporary file, ``fsync`` and an atomic rename,
under an exclusive lock: a crash or ``kill -9`` at any instant leaves either the
old file or the new one, never a torn row, and rows are never duplicated.
CSV rather than Parquet: the tables are small (hundreds of rows), diff well in
git, and open anywhere without extra dependencies.

A row's ``run_key`` hashes the config, the stage, any extra key and the
capslib version, so a changed library never serves a stale row from cache.
"""
from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import pandas as pd

from .atomic import save_text_atomic
from .config import RunConfig
from .provenance import capslib_version

__all__ = ["run_key", "run_row", "failed_row", "ResultsStore", "default_results_dir", "parse_value", "parse_row"]

#: Columns that identify a row and say where it came from; metric columns follow.
LEAD_COLUMNS = ["run_key", "experiment", "stage", "status", "config_hash", "profile", "seed"]
PROVENANCE_COLUMNS = ["capslib_version", "torch_version", "cuda_version", "device", "device_name", "git_sha",
                      "git_dirty", "python", "timestamp"]


def default_results_dir() -> Path:
    """``$CAPSLIB_RESULTS`` when set, else ``results/`` in the repository (or the current folder)."""
    env = os.environ.get("CAPSLIB_RESULTS")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parent.parent
    return repo / "results" if (repo / "pyproject.toml").exists() else Path("results")


def run_key(cfg: RunConfig, stage: str = "train", extra: str = "") -> str:
    """Cache key of one run: config hash + stage + extra + capslib version."""
    blob = f"{cfg.config_hash()}|{stage}|{extra}|{capslib_version()}".encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def run_row(cfg: RunConfig, result: Any, *, experiment: str = "", stage: str = "train", key_extra: str = "",
            extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Flatten a :class:`capslib.train.RunResult` into one store row.

    ``extra`` adds columns (e.g. the pruning ratio, params after pruning, MACs).
    """
    r = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    row: dict[str, Any] = {
        "run_key": run_key(cfg, stage, key_extra),
        "experiment": experiment,
        "stage": stage,
        "status": "ok",
        "config_hash": cfg.config_hash(),
        "profile": cfg.profile,
        "seed": cfg.train.seed,
        "test_acc": r["test_acc"],
        "best_val_acc": r["best_val_acc"],
        "best_epoch": r["best_epoch"],
        "epochs_run": len(r["history"]),
        "params": r["params"],
        "wall_time": round(float(r["wall_time"]), 3),
        "collapsed": r["collapsed"],
        "dead_000": json.dumps(r["probe"]["dead_fraction"]["paper000"], sort_keys=True),
        "dead_002": json.dumps(r["probe"]["dead_fraction"]["paper002"], sort_keys=True),
        "history": json.dumps([{k: v for k, v in h.items() if k != "dead_002"} for h in r["history"]]),
        "error": "",
    }
    row.update(extra or {})
    row.update({k: v for k, v in cfg.flat().items() if k != "profile"})
    row.update({k: r["provenance"].get(k, "") for k in PROVENANCE_COLUMNS if k != "timestamp"})
    row["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return row


def failed_row(cfg: RunConfig, error: str, *, experiment: str = "", stage: str = "train", key_extra: str = "",
               extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """A row recording a run that failed after its retries."""
    from .provenance import provenance

    row: dict[str, Any] = {
        "run_key": run_key(cfg, stage, key_extra), "experiment": experiment, "stage": stage, "status": "failed",
        "config_hash": cfg.config_hash(), "profile": cfg.profile, "seed": cfg.train.seed, "error": error[-2000:],
    }
    row.update(extra or {})
    row.update({k: v for k, v in cfg.flat().items() if k != "profile"})
    row.update(provenance())
    row["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return row


class ResultsStore:
    """Append-only CSV of result rows with atomic writes (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @classmethod
    def for_experiment(cls, experiment: str, profile: str, root: Optional[str | os.PathLike] = None) -> "ResultsStore":
        return cls(Path(root or default_results_dir()) / experiment / f"{profile}.csv")

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(self.path.suffix + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_rows(self) -> list[dict[str, str]]:
        if not self.path.exists():
            return []
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def append(self, row: dict[str, Any]) -> None:
        """Add one row atomically (see :meth:`append_many`)."""
        self.append_many([row])

    def append_many(self, new_rows: list[dict[str, Any]]) -> None:
        """Add rows in one atomic write: after a crash either all of them are stored or none.

        A row whose ``run_key`` is already stored as ``ok`` is not added again; a ``failed`` row is
        replaced by a later row of the same key."""
        with self._lock():
            rows = self._read_rows()
            for row in new_rows:
                key = str(row.get("run_key", ""))
                if key and any(r.get("run_key") == key and r.get("status") == "ok" for r in rows):
                    continue
                rows = [r for r in rows if not (key and r.get("run_key") == key)]
                rows.append({k: ("" if v is None else v) for k, v in row.items()})
            columns = list(LEAD_COLUMNS)
            for r in rows:
                columns += [c for c in r if c not in columns]
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            save_text_atomic(self.path, buf.getvalue(), sync_dir=True)

    def read(self) -> pd.DataFrame:
        """All rows as a DataFrame (empty when the store does not exist yet)."""
        if not self.path.exists():
            return pd.DataFrame(columns=LEAD_COLUMNS)
        return pd.read_csv(self.path)

    def done_keys(self, column: str = "run_key") -> set[str]:
        """Values of ``column`` over the successful rows: what a resumed sweep skips."""
        return {r[column] for r in self._read_rows() if r.get("status") == "ok" and r.get(column)}

    def get(self, key: str) -> Optional[dict[str, str]]:
        """The successful row with this ``run_key``, or None."""
        for r in self._read_rows():
            if r.get("run_key") == key and r.get("status") == "ok":
                return r
        return None


# ----------------------------------------------------------------------------- reading values back
#: Columns whose text is JSON (decoded by parse_row), and columns that stay text even when they look
#: like numbers (a hex hash made only of digits, a version string).
JSON_COLUMNS = ("dead_000", "dead_002", "history")
TEXT_COLUMNS = ("run_key", "point_key", "config_hash", "git_sha", "capslib_version", "torch_version",
                "cuda_version", "label")


def parse_value(text: str) -> Any:
    """``"True"``/``"false"`` → bool, ``"3"`` → int, ``"0.5"`` → float, anything else unchanged."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def parse_row(row: dict[str, Any]) -> dict[str, Any]:
    """A stored CSV row with numbers as numbers, booleans as booleans and the JSON columns decoded."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, str) and k in JSON_COLUMNS and v:
            v = json.loads(v)
        elif isinstance(v, str) and k not in TEXT_COLUMNS:
            v = parse_value(v)
        out[k] = v
    return out
