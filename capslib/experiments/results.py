"""The results store: one CSV row per finished run (or pipeline stage), with provenance.

A store is one CSV file, ``results/<experiment>/<profile>.csv``. Every append
rewrites the file through a temporary file, ``fsync`` and an atomic rename,
under an exclusive lock: a crash or ``kill -9`` at any instant leaves either the
old file or the new one, never a torn row, and rows are never duplicated.

Every read validates every row (:func:`row_problem`). A line damaged from outside
(an edit, a cut copy, a merge) is never served and never counted as done; a
warning names the file and line, and the next write moves the line verbatim to
``<store>.quarantine`` beside the store instead of rewriting it away.
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
import itertools
import json
import os
import re
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import pandas as pd

from ..engine.atomic import save_text_atomic
from ..engine.config import RunConfig
from ..engine.provenance import capslib_version

__all__ = ["run_key", "run_row", "failed_row", "ResultsStore", "default_results_dir", "parse_value", "parse_row",
           "read_store_csv", "row_problem", "scan_store_text", "StoreDamageWarning", "StoreDamagedError"]

#: Columns that identify a row and say where it came from; metric columns follow.
LEAD_COLUMNS = ["run_key", "experiment", "stage", "status", "config_hash", "profile", "seed"]
PROVENANCE_COLUMNS = ["capslib_version", "torch_version", "cuda_version", "device", "device_name", "cpu_isa",
                      "onednn_isa", "kernel_march", "git_sha", "git_dirty", "python", "timestamp"]


def default_results_dir() -> Path:
    """``$CAPSLIB_RESULTS`` when set, else ``results/`` in the repository (or the current folder)."""
    env = os.environ.get("CAPSLIB_RESULTS")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    return repo / "results" if (repo / "pyproject.toml").exists() else Path("results")


def run_key(cfg: RunConfig, stage: str = "train", extra: str = "") -> str:
    """Cache key of one run: config hash + stage + extra + capslib version."""
    blob = f"{cfg.config_hash()}|{stage}|{extra}|{capslib_version()}".encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def run_row(cfg: RunConfig, result: Any, *, experiment: str = "", stage: str = "train", key_extra: str = "",
            extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Flatten a :class:`capslib.engine.train.RunResult` into one store row.

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
    if r.get("warnings"):
        row["warnings"] = " | ".join(r["warnings"])
    row.update(extra or {})
    row.update({k: v for k, v in cfg.flat().items() if k != "profile"})
    row.update({k: r["provenance"].get(k, "") for k in PROVENANCE_COLUMNS if k != "timestamp"})
    row["timestamp"] = _timestamp()
    return row


def failed_row(cfg: RunConfig, error: str, *, experiment: str = "", stage: str = "train", key_extra: str = "",
               extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """A row recording a run that failed after its retries."""
    from ..engine.provenance import provenance

    row: dict[str, Any] = {
        "run_key": run_key(cfg, stage, key_extra), "experiment": experiment, "stage": stage, "status": "failed",
        "config_hash": cfg.config_hash(), "profile": cfg.profile, "seed": cfg.train.seed, "error": error[-2000:],
    }
    row.update(extra or {})
    row.update({k: v for k, v in cfg.flat().items() if k != "profile"})
    row.update(provenance())
    row["timestamp"] = _timestamp()
    return row


class StoreDamageWarning(UserWarning):
    """A results store holds damaged lines (they are ignored, and quarantined at the next write)."""


class StoreDamagedError(ValueError):
    """A results store cannot be used at all (its header line is damaged)."""


#: Every stored row has these, non-empty (``timestamp`` is stamped by the store when a row lacks it).
REQUIRED_COLUMNS = ("run_key", "status", "timestamp")
STATUSES = ("ok", "failed")
#: Columns that must read as numbers (or be empty / ``nan``) where a row has them.
NUMERIC_COLUMNS = ("seed", "test_acc", "best_val_acc", "best_epoch", "epochs_run", "params", "wall_time")
#: The only column whose text may span lines (a failed run's traceback).
MULTILINE_COLUMNS = ("error",)
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:Z|[+-]\d{2}:?\d{2})?$")
_EMPTY = ("", "nan", "NaN")


def _timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def row_problem(row: dict[str, Any]) -> Optional[str]:
    """Why a row (values as stored text) is not a valid store row, or None when it is."""
    key = row.get("run_key")
    if not isinstance(key, str) or not key.strip():
        return "empty run_key"
    if key != key.strip() or any(c.isspace() for c in key):
        return f"run_key {key[:40]!r} has white space"
    status = row.get("status")
    if status not in STATUSES:
        return f"status {str(status)[:40]!r} is not one of {STATUSES}"
    ts = row.get("timestamp")
    if not isinstance(ts, str) or not ts:
        return "empty timestamp"
    if not _TIMESTAMP.match(ts):
        return f"timestamp {ts[:40]!r} is not YYYY-MM-DDTHH:MM:SS+ZZZZ"
    for col, v in row.items():
        if not isinstance(v, str):
            return f"column {col!r} is missing"
        if col not in MULTILINE_COLUMNS and ("\n" in v or "\r" in v):
            return f"a line break inside column {col!r} (an unterminated quote swallowed the next line?)"
    for col in NUMERIC_COLUMNS:
        v = row.get(col, "")
        if v not in _EMPTY:
            try:
                float(v)
            except ValueError:
                return f"column {col!r} is {v[:40]!r}, not a number"
    for col in JSON_COLUMNS:
        v = row.get(col, "")
        if v not in _EMPTY:
            try:
                json.loads(v)
            except ValueError as err:
                return f"column {col!r} is not valid JSON ({err.msg} at char {err.pos}: cut short?)"
    if status == "ok" and "test_acc" in row and row["test_acc"] in _EMPTY:
        return "an 'ok' row without test_acc"
    return None


@dataclass
class DamagedLine:
    """One physical line of a store that is not part of a valid row, kept verbatim."""

    lineno: int  # 1-based, in the store file as read
    text: str  # the line exactly as stored (with its line end, if it had one)
    reason: str


@dataclass
class StoreScan:
    """What :meth:`ResultsStore.scan` read: the header, the valid rows and the damaged lines."""

    header: list[str]
    rows: list[dict[str, str]]
    damaged: list[DamagedLine]


def _split_lines(text: str) -> list[str]:
    """Physical lines with their ``\\n`` (the last one without, if the file does not end with one)."""
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def scan_store_text(text: str, path: str = "<store>") -> StoreScan:
    """Validate a store's text record by record (see :class:`ResultsStore`).

    A record that does not parse, has the wrong number of fields, or fails :func:`row_problem`
    marks only its *first* physical line as damaged; reading resumes at the next line, so an
    unterminated quote never swallows the rows after it.
    """
    lines = _split_lines(text)
    if not lines:
        return StoreScan([], [], [])
    try:
        header = next(csv.reader([lines[0]], strict=True))
    except (csv.Error, StopIteration) as err:
        header, herr = [], str(err)
    else:
        herr = ""
    if (herr or not lines[0].endswith("\n") or "run_key" not in header or "status" not in header
            or len(set(header)) != len(header)):
        raise StoreDamagedError(
            f"{path}: the header (line 1) is damaged{' (' + herr + ')' if herr else ''}: {lines[0][:120]!r}. "
            f"capslib will neither read nor rewrite this store; restore it from a backup (e.g. git) or move it "
            f"away to start a new one.")
    rows: list[dict[str, str]] = []
    damaged: list[DamagedLine] = []
    i = 1
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        reader = csv.reader(itertools.islice(lines, i, None), strict=True)
        fields: list[str] = []
        used, reason = 1, None
        if i == len(lines) - 1 and not lines[i].endswith("\n"):
            reason = "the file's last line is cut short (no line end: a write interrupted?)"
        else:
            try:
                fields = next(reader)
                used = reader.line_num
            except csv.Error as err:
                reason = f"malformed CSV ({err}; an unterminated or stray quote?)"
        if reason is None and len(fields) != len(header):
            reason = f"{len(fields)} fields where the header has {len(header)} (a line cut short or joined?)"
        if reason is None and not lines[i + used - 1].endswith("\n"):
            reason = "the file's last line is cut short (no line end: a write interrupted?)"
        row = dict(zip(header, fields))
        if reason is None:
            reason = row_problem(row)
        if reason is None:
            rows.append(row)
            i += used
        else:
            damaged.append(DamagedLine(i + 1, lines[i], reason))
            i += 1
    return StoreScan(header, rows, damaged)


class ResultsStore:
    """Append-only CSV of result rows with atomic writes and validated reads.

    Every row read is checked (:func:`row_problem`: field count, run key, status, timestamp,
    numbers, JSON, no stray line breaks). A damaged line is never served, never counted as done,
    and never rewritten away: a warning names the file and line, and the next write moves it,
    verbatim, to ``<store>.quarantine`` beside the store (fsynced before the store is rewritten).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @classmethod
    def for_experiment(cls, experiment: str, profile: str, root: Optional[str | os.PathLike] = None) -> "ResultsStore":
        return cls(Path(root or default_results_dir()) / experiment / f"{profile}.csv")

    @property
    def quarantine_path(self) -> Path:
        return self.path.with_name(self.path.name + ".quarantine")

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(self.path.suffix + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def scan(self, warn: bool = True) -> StoreScan:
        """The validated rows and the damaged lines (a warning per damaged line when ``warn``)."""
        if not self.path.exists():
            return StoreScan([], [], [])
        with open(self.path, newline="") as f:
            text = f.read()
        result = scan_store_text(text, str(self.path))
        if warn:
            for d in result.damaged:
                warnings.warn(f"{self.path}, line {d.lineno}: damaged row ignored ({d.reason}); it will be moved "
                              f"verbatim to {self.quarantine_path} at the next write", StoreDamageWarning,
                              stacklevel=3)
        return result

    def _read_rows(self) -> list[dict[str, str]]:
        return self.scan().rows

    def rows(self) -> list[dict[str, str]]:
        """The valid rows, values as stored text (damaged lines left out, with a warning)."""
        return self._read_rows()

    def _quarantine(self, damaged: list[DamagedLine]) -> None:
        """Append damaged lines verbatim to the quarantine file (each after a ``#`` note), durably."""
        q = self.quarantine_path
        old = q.read_text() if q.exists() else ""
        kept = set(_split_lines(old))
        text = old or (f"# capslib quarantine of {self.path.name}: damaged lines, each kept verbatim after a "
                       f"'#' note saying where it was and why\n")
        added = 0
        for d in damaged:
            line = d.text if d.text.endswith("\n") else d.text + "\n"
            if line in kept:
                continue
            text += f"# {self.path.name} line {d.lineno}, quarantined {_timestamp()}: {d.reason}\n" + line
            added += 1
        if added:
            save_text_atomic(q, text, sync_dir=True)
        for d in damaged:
            warnings.warn(f"{self.path}, line {d.lineno}: damaged row ({d.reason}) moved verbatim to {q}",
                          StoreDamageWarning, stacklevel=4)

    def append(self, row: dict[str, Any]) -> None:
        """Add one row atomically (see :meth:`append_many`)."""
        self.append_many([row])

    def append_many(self, new_rows: list[dict[str, Any]]) -> None:
        """Add rows in one atomic write: after a crash either all of them are stored or none.

        A row whose ``run_key`` is already stored as ``ok`` is not added again; a ``failed`` row is
        replaced by a later row of the same key. A row without a timestamp is stamped now. A row the
        store would not read back (:func:`row_problem`) is refused with ``ValueError``. Damaged lines
        already in the file go, verbatim, to the quarantine file before the store is rewritten."""
        clean = []
        for row in new_rows:
            r = {k: ("" if v is None else v) for k, v in row.items()}
            if not r.get("timestamp"):
                r["timestamp"] = _timestamp()
            problem = row_problem({k: str(v) for k, v in r.items()})
            if problem:
                raise ValueError(f"refusing to store a row that could not be read back ({problem}): "
                                 f"run_key={str(r.get('run_key'))[:40]!r} in {self.path}")
            clean.append(r)
        with self._lock():
            found = self.scan(warn=False)
            if found.damaged:
                self._quarantine(found.damaged)
            rows: list[dict[str, Any]] = list(found.rows)
            for row in clean:
                key = str(row["run_key"])
                if any(r.get("run_key") == key and r.get("status") == "ok" for r in rows):
                    continue
                rows = [r for r in rows if r.get("run_key") != key]
                rows.append(row)
            columns = list(LEAD_COLUMNS)
            for c in found.header:
                if c not in columns:
                    columns.append(c)
            for r in rows:
                columns += [c for c in r if c not in columns]
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            save_text_atomic(self.path, buf.getvalue(), sync_dir=True)

    def read(self) -> pd.DataFrame:
        """The valid rows as a DataFrame (empty when the store does not exist yet); damaged lines are
        left out with a :class:`StoreDamageWarning`."""
        found = self.scan()
        if not found.header:
            return pd.DataFrame(columns=LEAD_COLUMNS)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=found.header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(found.rows)
        buf.seek(0)
        return read_store_csv(buf)

    def done_keys(self, column: str = "run_key") -> set[str]:
        """Values of ``column`` over the valid successful rows: what a resumed sweep skips."""
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
TEXT_COLUMNS = ("run_key", "point_key", "stage_key", "config_hash", "git_sha", "capslib_version", "torch_version",
                "cuda_version", "cpu_isa", "onednn_isa", "kernel_march", "label")


def read_store_csv(source: Any) -> pd.DataFrame:
    """``pd.read_csv`` of a results store (a path or a text buffer) with :data:`TEXT_COLUMNS` read as text.

    Not only for types: pandas' C parser (2.3) crashes the process with a segmentation fault on a field such
    as the hex key ``72e3503140282a14``, which it tries to read as a float with a ten-digit exponent. Read
    as text, a key is never parsed as a number."""
    return pd.read_csv(source, dtype={c: str for c in TEXT_COLUMNS})


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
