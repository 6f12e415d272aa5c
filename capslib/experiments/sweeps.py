"""Sweeps: run a named experiment's grid as independent, resumable runs.

    capslib sweep list
    capslib sweep table2 --profile fmnist --seeds 3
    capslib sweep table3 --backend ray --address ray://head:10001

* Every grid point goes through the same code as ``capslib train`` /
  ``capslib prune`` / ``capslib depth`` and yields result rows.
* All rows of a point are appended to ``results/<experiment>/<profile>.csv``
  in one atomic write, tagged with the point's ``point_key``; a re-run skips
  points whose key is stored, so it never duplicates or loses rows.
* A failing point is retried ``retries`` times, then stored as ``failed``
  with its error, and the sweep goes on.
* Before a point runs, the sweep claims it: an atomic claim file beside the
  store, with the owner's host and pid and a heartbeat (:class:`PointClaims`).
  Sweeps of one experiment running at the same time on one store - two
  processes here, or drivers on several machines sharing the store's folder -
  each run a different point and never the same one twice. A claim whose owner
  died (``kill -9``: its pid is gone; another machine: no heartbeat for
  ``--claim-timeout`` seconds) is taken over.
* Unplannable points and unwritable output folders are refused before any
  point trains.
* The Ray backend runs each point as a Ray task (``num_gpus=1`` where the
  cluster has GPUs, one CPU otherwise); rows come back to the driver, which
  holds the claims and alone writes the store.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import socket
import tempfile
import threading
import time
import traceback
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from tqdm.auto import tqdm

from ..engine.atomic import check_writable
from ..engine.config import RunConfig, apply_overrides
from .grids import EXPERIMENTS, Point, get_experiment, point_key, tag_rows
from .results import ResultsStore, failed_row, parse_value, run_row

__all__ = ["run_point", "sweep", "SweepSummary", "PointClaims", "check_plan", "parse_overrides",
           "register_cli"]


def run_point(experiment: str, point: Point, cfg: RunConfig, progress: bool = False,
              checkpoint_root: Optional[str] = None) -> list[dict[str, Any]]:
    """Run one grid point and return its result rows (the caller writes them to the store).

    With ``checkpoint_root``, the point checkpoints under ``<root>/<point_key>/`` so an
    interrupted point resumes (epochs for a training, stages for a pipeline).
    """
    ckpt = None
    if checkpoint_root is not None:
        ckpt = Path(checkpoint_root) / point_key(experiment, cfg, point)
        if point.kind == "prune" and get_experiment(experiment).shared_stages:
            ckpt = Path(checkpoint_root) / f"pipeline-{cfg.config_hash()}"  # stage folders keyed by their chain
            with _folder_lock(ckpt):  # one pipeline at a time in a shared folder
                return _run_point_in(experiment, point, cfg, progress, ckpt)
    return _run_point_in(experiment, point, cfg, progress, ckpt)


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` (created if missing), held until the block ends; released by the OS
    if the process dies."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run_point_in(experiment: str, point: Point, cfg: RunConfig, progress: bool,
                  ckpt: Optional[Path]) -> list[dict[str, Any]]:
    if point.kind == "train":
        from ..engine.train import fit

        result, _ = fit(cfg, progress=progress, checkpoint_dir=ckpt)
        rows = [run_row(cfg, result, experiment=experiment, stage="train", key_extra=point.key_extra())]
        return tag_rows(rows, experiment, cfg, point)
    if point.kind == "snapshots":
        from .depth_study import study_row

        return tag_rows([study_row(cfg, point, experiment, checkpoint_dir=ckpt, progress=progress)], experiment, cfg, point)
    from .pipeline import depth_search, prune_pipeline

    with tempfile.TemporaryDirectory() as tmp:  # the pipeline writes its stage rows here; we hand them back
        scratch = ResultsStore(Path(tmp) / "rows.csv")
        if point.kind == "prune":
            prune_pipeline(cfg, point.pr, I=point.I_after, checkpoint_dir=ckpt, store=scratch,
                           experiment=experiment, progress=progress, selection=point.selection)
            rows = scratch.read().to_dict(orient="records")
        elif point.kind == "depth":
            res = depth_search(cfg, pr=point.pr or None, max_I=point.max_I or 10, checkpoint_dir=ckpt,
                               store=scratch, experiment=experiment, progress=progress)
            rows = scratch.read().to_dict(orient="records")
            summary = dict(rows[-1], stage="depth_summary", max_depth="" if res.max_depth is None else res.max_depth,
                           collapsed_at="" if res.collapsed_at is None else res.collapsed_at,
                           depths_tried=json.dumps([t.I for t in res.trials]))
            summary["run_key"] = f"{summary['run_key']}-summary"
            rows.append(summary)
        else:
            raise ValueError(f"unknown point kind {point.kind!r}")
    return tag_rows(rows, experiment, cfg, point)


def _run_with_retries(experiment: str, point: Point, cfg: RunConfig, retries: int,
                      checkpoint_root: Optional[str] = None) -> tuple[list[dict], Optional[str]]:
    error = None
    for _attempt in range(retries + 1):
        try:
            return run_point(experiment, point, cfg, checkpoint_root=checkpoint_root), None
        except Exception:  # a failed point must not stop the sweep
            error = traceback.format_exc()
    rows = [failed_row(cfg, error or "unknown error", experiment=experiment, stage=point.kind,
                       key_extra=point.key_extra())]
    return tag_rows(rows, experiment, cfg, point), error


@dataclass
class SweepSummary:
    experiment: str
    profile: str
    store: str
    planned: int
    skipped: int
    done: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    wall_time: float = 0.0
    by_others: int = 0  # points another sweep on the same store finished while this one ran
    left_claimed: int = 0  # points left to another sweep's live claim (wait=False)
    taken_over: list[str] = field(default_factory=list)  # stale claims this sweep took over


def plan(experiment: str, profile: str, seeds: int = 1, overrides: Optional[dict[str, Any]] = None,
         only: Sequence[str] = ()) -> list[tuple[Point, RunConfig]]:
    """Every (point, config) a sweep would run, seeds included, in the order it runs them: seed by seed,
    or point by point (every seed of a point, then the next) for a ``point_major`` experiment. ``only``:
    keep the points whose label contains one of these texts (ValueError when none does)."""
    exp = get_experiment(experiment)
    grid = exp.grid(profile)
    if only:
        grid = [p for p in grid if any(text in p.label for text in only)]
        if not grid:
            labels = "; ".join(p.label for p in exp.grid(profile))
            raise ValueError(f"--only {list(only)} matches no point label of {experiment}: {labels}")
    order = ([(p, s) for p in grid for s in range(seeds)] if exp.point_major
             else [(p, s) for s in range(seeds) for p in grid])
    out = []
    for point, seed in order:
        cfg = point.config(profile, seed=seed)
        if overrides:
            cfg = apply_overrides(cfg, **overrides)
        out.append((point, cfg))
    return out


def check_plan(experiment: str, runs: list[tuple[Point, RunConfig]]) -> None:
    """Refuse, before anything trains, a grid with a point whose pruning cannot be planned."""
    from .pipeline import check_prunable

    problems = []
    for point, cfg in runs:
        if point.kind in ("prune", "depth") and point.pr:
            try:
                check_prunable(cfg, point.pr, I=point.I_after if point.kind == "prune" else None)
            except ValueError as err:
                problems.append(f"seed={cfg.train.seed} {point.describe()}: {err}")
    if problems:
        raise ValueError(f"sweep {experiment}: {len(problems)} point(s) cannot be planned; nothing was run:\n  "
                         + "\n  ".join(problems))


def _store_state(store: ResultsStore) -> tuple[set[str], dict[str, str]]:
    """(point keys stored ok, point key -> timestamp of its failed row)."""
    ok, failed = set(), {}
    for r in store.rows():
        key = r.get("point_key")
        if not key:
            continue
        if r.get("status") == "ok":
            ok.add(key)
        else:
            failed[key] = r.get("timestamp", "")
    return ok, failed


def sweep(experiment: str, profile: Optional[str] = None, seeds: int = 1, backend: str = "local",
          address: Optional[str] = None, retries: int = 1, dry_run: bool = False,
          overrides: Optional[dict[str, Any]] = None, results_root: Optional[str] = None,
          progress: bool = True, checkpoint_root: Optional[str] = None, wait: bool = True,
          claim_timeout: float = 600.0, poll: float = 2.0, only: Sequence[str] = ()) -> SweepSummary:
    """Run (or with ``dry_run`` list) the grid of ``experiment``; see the module docstring.

    ``checkpoint_root`` (CLI ``--checkpoints``, default ``runs/sweeps/<experiment>``) keeps each point's
    checkpoints, so an interrupted point resumes; pass ``""`` to keep none.

    Each point is claimed (:class:`PointClaims`) before it runs, so sweeps of one experiment running
    at the same time on one store - here or on other machines - split the points instead of
    repeating them. ``wait``: when only points claimed by another live sweep are left, wait for
    them (taking over any claim that goes stale, see ``claim_timeout``) rather than return.
    """
    exp = get_experiment(experiment)
    profile = profile or exp.default_profile
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    if backend not in ("local", "ray"):
        raise ValueError(f"backend must be 'local' or 'ray', got {backend!r}")
    store = ResultsStore.for_experiment(experiment, profile, results_root)
    if checkpoint_root is None:
        checkpoint_root = str(Path("runs") / "sweeps" / experiment)
    checkpoint_root = checkpoint_root or None
    runs = plan(experiment, profile, seeds, overrides, only)
    keyed = [(point_key(experiment, c, p), p, c) for p, c in runs]
    done_keys, failed_before = _store_state(store)
    todo = [(k, p, c) for k, p, c in keyed if k not in done_keys]
    summary = SweepSummary(experiment, profile, str(store.path), planned=len(runs), skipped=len(runs) - len(todo))
    claims = PointClaims(store, stale_after=claim_timeout)
    if dry_run:
        for k, p, c in keyed:
            owner = claims.owner(k) if k not in done_keys else None
            state = "done" if k in done_keys else ("todo" if owner is None else
                                                   f"claimed by {owner.get('host')}:{owner.get('pid')}")
            label = f"  [{p.label}]" if p.label else ""
            print(f"[{state}] seed={c.train.seed} {p.describe()}{label}  (config {c.config_hash()})")
        print(f"{len(runs)} runs, {summary.skipped} already in {store.path}")
        return summary
    # refuse, before anything trains: an unplannable point, an unwritable store or checkpoint folder
    check_plan(experiment, [(p, c) for _, p, c in todo])
    check_writable(store.path, "the results store")
    if checkpoint_root is not None and todo:
        check_writable(checkpoint_root, "--checkpoints", folder=True)
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), desc=f"sweep {experiment} [{profile}]", disable=not progress, unit="run")

    def record(rows: list[dict[str, Any]], error: Optional[str]) -> None:
        store.append_many(rows)
        if error:
            summary.failed += 1
            summary.errors.append(error.strip().splitlines()[-1])
        else:
            summary.done += 1
        bar.update(1)
        bar.set_postfix(done=summary.done, failed=summary.failed, others=summary.by_others)

    if backend == "local":
        executor: _Executor = _LocalExecutor(experiment, retries, checkpoint_root)
    else:
        executor = _RayExecutor(experiment, retries, checkpoint_root, address)
    pending = list(todo)
    waiting_said = False
    try:
        with executor:
            while pending or executor.in_flight:
                ok_now, failed_now = _store_state(store)
                for item in list(pending):  # finished by another sweep meanwhile
                    k = item[0]
                    if k in ok_now or (k in failed_now and failed_now[k] != failed_before.get(k)):
                        pending.remove(item)
                        summary.by_others += 1
                        bar.update(1)
                launched = False
                for item in list(pending):
                    if len(executor.in_flight) >= executor.capacity:
                        break
                    k, p, c = item
                    if claims.try_claim(k) is not None:
                        continue
                    ok_now, failed_now = _store_state(store)  # it may have finished just before our claim
                    if k in ok_now or (k in failed_now and failed_now[k] != failed_before.get(k)):
                        claims.release(k)
                        pending.remove(item)
                        summary.by_others += 1
                        bar.update(1)
                        continue
                    executor.submit(k, p, c)
                    pending.remove(item)
                    launched = True
                if executor.in_flight:
                    for k, rows, error in executor.collect(timeout=poll):
                        try:
                            record(rows, error)
                        finally:
                            claims.release(k)
                    continue
                if pending and not launched:
                    if not wait:
                        summary.left_claimed = len(pending)
                        break
                    if not waiting_said and progress:
                        owners = sorted({f"{o.get('host')}:{o.get('pid')}" for o in
                                         (claims.owner(k) for k, _, _ in pending) if o})
                        tqdm.write(f"sweep {experiment}: waiting for {len(pending)} point(s) claimed by "
                                   f"{', '.join(owners) or 'another sweep'}")
                        waiting_said = True
                    time.sleep(poll)
    finally:
        claims.close()
        bar.close()
    summary.taken_over = list(claims.taken_over)
    summary.wall_time = time.perf_counter() - t0
    return summary


class _Executor:
    """Runs claimed points; ``collect`` yields ``(point key, rows, error)`` as they finish."""

    capacity = 1

    def __init__(self) -> None:
        self.in_flight: dict[Any, str] = {}

    def __enter__(self) -> "_Executor":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def submit(self, key: str, point: Point, cfg: RunConfig) -> None:
        raise NotImplementedError

    def collect(self, timeout: float) -> list[tuple[str, list[dict], Optional[str]]]:
        raise NotImplementedError


class _LocalExecutor(_Executor):
    """In this process, one point at a time."""

    def __init__(self, experiment: str, retries: int, checkpoint_root: Optional[str]):
        super().__init__()
        self.args = (experiment, retries, checkpoint_root)
        self.results: list[tuple[str, list[dict], Optional[str]]] = []

    def submit(self, key: str, point: Point, cfg: RunConfig) -> None:
        experiment, retries, checkpoint_root = self.args
        self.in_flight[key] = key
        rows, error = _run_with_retries(experiment, point, cfg, retries, checkpoint_root)
        self.results.append((key, rows, error))

    def collect(self, timeout: float) -> list[tuple[str, list[dict], Optional[str]]]:
        out, self.results = self.results, []
        for k, _, _ in out:
            self.in_flight.pop(k, None)
        return out


class _RayExecutor(_Executor):
    """Each point a Ray task (``num_gpus=1`` where the cluster has GPUs, one CPU otherwise); the
    driver holds the claims and writes the store, and keeps as many tasks in flight as the cluster
    has GPUs (or CPUs), so that a second sweep can still claim the rest."""

    def __init__(self, experiment: str, retries: int, checkpoint_root: Optional[str], address: Optional[str]):
        super().__init__()
        self.args = (experiment, retries, checkpoint_root)
        self.address = address

    def __enter__(self) -> "_RayExecutor":
        try:
            import ray
        except ImportError as err:
            raise RuntimeError("the ray backend needs Ray: pip install 'capslib[ray]'") from err
        self.ray = ray
        self.started_here = not ray.is_initialized()
        if self.started_here:
            env = {k: os.environ[k] for k in ("CAPSLIB_DATA", "CAPSLIB_RESULTS", "CAPSLIB_OFFLINE") if k in os.environ}
            ray.init(address=self.address, runtime_env={"env_vars": env} if env else None, log_to_driver=False,
                     include_dashboard=False)
        res = ray.cluster_resources()
        gpus = res.get("GPU", 0)
        opts = {"num_gpus": 1} if gpus > 0 else {"num_cpus": 1}
        self.capacity = max(1, int(gpus if gpus > 0 else res.get("CPU", 1)))
        self.task = ray.remote(**opts)(_run_with_retries)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.started_here:
            self.ray.shutdown()

    def submit(self, key: str, point: Point, cfg: RunConfig) -> None:
        experiment, retries, checkpoint_root = self.args
        self.in_flight[self.task.remote(experiment, point, cfg, retries, checkpoint_root)] = key

    def collect(self, timeout: float) -> list[tuple[str, list[dict], Optional[str]]]:
        ready, _ = self.ray.wait(list(self.in_flight), num_returns=1, timeout=timeout)
        out = []
        for ref in ready:
            key = self.in_flight.pop(ref)
            rows, error = self.ray.get(ref)
            out.append((key, rows, error))
        return out


def parse_overrides(items: Optional[list[str]]) -> dict[str, Any]:
    """``["train_size=512", "epochs=2"]`` -> ``{"train_size": 512, "epochs": 2}`` (ints, floats, bools, strings)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like name=value")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_value(v.strip())
    return out


# ----------------------------------------------------------------------------- claims

def _proc_start(pid: int) -> str:
    """The start time of ``pid`` in clock ticks since boot (Linux), or "" where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PointClaims:
    """One claim file per sweep point, so that concurrent sweeps on one store split the work.

    A claim is ``<store>.claims/<point_key>.claim``, created atomically (written to a temporary
    file, then hard-linked into place, which fails if the claim exists) and holding the owner's
    host, pid, process start time and a token. While the owner works on the point a heartbeat
    thread touches the file every ``heartbeat`` seconds. A claim is *stale*, and is taken over, when

    * its owner is on this host and its pid is gone (``kill -9``), or the pid now belongs to
      another process (a different start time), or
    * it has had no heartbeat for ``stale_after`` seconds (an owner on another machine that died).

    Checking and taking over happen under the store's lock file, so two sweeps never
    both take over the same stale claim. The folder must be on a file system that all sweeps
    share (the store's own folder), like the store itself.
    """

    def __init__(self, store: ResultsStore, stale_after: float = 600.0, heartbeat: Optional[float] = None):
        if stale_after <= 0:
            raise ValueError(f"the claim timeout must be > 0 seconds, got {stale_after}")
        self.store = store
        self.folder = store.path.with_name(store.path.name + ".claims")
        self.stale_after = float(stale_after)
        self.heartbeat = heartbeat if heartbeat is not None else max(0.05, min(30.0, self.stale_after / 4))
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.held: dict[str, str] = {}  # point key -> token
        self.taken_over: list[str] = []  # "point key from owner (why)"
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.claim"

    @contextmanager
    def _locked(self):
        with self.store._lock():  # the store's own lock file: short critical sections only
            yield

    def owner(self, key: str) -> Optional[dict[str, Any]]:
        """The claim's content (``{}`` when unreadable), or None when the point is not claimed."""
        p = self.path(key)
        try:
            text = p.read_text()
        except FileNotFoundError:
            return None
        try:
            info = json.loads(text)
            return info if isinstance(info, dict) else {}
        except ValueError:
            return {}

    def stale_reason(self, key: str, info: dict[str, Any]) -> Optional[str]:
        """Why the claim may be taken over, or None while its owner is alive."""
        try:
            age = time.time() - self.path(key).stat().st_mtime
        except FileNotFoundError:
            return "it is gone"
        host, pid = info.get("host"), info.get("pid")
        if host == self.host and isinstance(pid, int):
            if not _pid_alive(pid):
                return f"its owner, pid {pid} on this host, is gone"
            start = _proc_start(pid)
            if info.get("start") and start and start != info.get("start"):
                return f"pid {pid} on this host is now another process"
        if age > self.stale_after:
            return f"no heartbeat for {age:.0f}s (> {self.stale_after:g}s)"
        return None

    def try_claim(self, key: str) -> Optional[dict[str, Any]]:
        """Claim the point: None when it is now ours, else the current owner's claim."""
        token = uuid.uuid4().hex
        info = {"host": self.host, "pid": self.pid, "start": _proc_start(self.pid), "token": token,
                "claimed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "heartbeat_s": self.heartbeat}
        with self._locked():
            self.folder.mkdir(parents=True, exist_ok=True)
            current = self.owner(key)
            if current is not None:
                why = self.stale_reason(key, current)
                if why is None:
                    return current
                self.path(key).unlink(missing_ok=True)
                self.taken_over.append(f"{key} from {current.get('host')}:{current.get('pid')} ({why})")
            tmp = self.folder / f".{key}.{token}.tmp"
            tmp.write_text(json.dumps(info))
            try:
                os.link(tmp, self.path(key))  # atomic, and fails if someone else holds the claim
            except FileExistsError:
                return self.owner(key) or {}
            finally:
                tmp.unlink(missing_ok=True)
        self.held[key] = token
        self._start_heartbeat()
        return None

    def release(self, key: str) -> None:
        """Drop our claim (only if it is still ours)."""
        token = self.held.pop(key, None)
        if token is None:
            return
        with self._locked():
            current = self.owner(key)
            if current and current.get("token") == token:
                self.path(key).unlink(missing_ok=True)

    def _start_heartbeat(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._beat, name="capslib-claim-heartbeat", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            for key in list(self.held):
                try:
                    os.utime(self.path(key))
                except FileNotFoundError:
                    pass

    def close(self) -> None:
        """Release every claim still held and stop the heartbeat; remove the folder when empty."""
        for key in list(self.held):
            self.release(key)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._locked():
            try:
                self.folder.rmdir()  # only when empty: other sweeps' claims stay
            except OSError:
                pass


# ---------------------------------------------------------------------------------------- CLI

def _cmd_sweep(args: argparse.Namespace) -> int:
    if args.name == "list":
        print(f"{'experiment':10s} {'runs (smoke)':>12s} {'runs (paper)':>12s}  title")
        for name, exp in EXPERIMENTS.items():
            print(f"{name:10s} {len(exp.grid('smoke')):12d} {len(exp.grid('paper')):12d}  {exp.title}")
        return 0
    summary = sweep(args.name, profile=args.profile, seeds=args.seeds, backend=args.backend, address=args.address,
                    retries=args.retries, dry_run=args.dry_run, overrides=parse_overrides(args.set),
                    results_root=args.results, progress=not args.quiet, checkpoint_root=args.checkpoints,
                    wait=not args.no_wait, claim_timeout=args.claim_timeout, only=args.only or ())
    if not args.dry_run:
        others = f", {summary.by_others} done by another sweep" if summary.by_others else ""
        print(f"sweep {summary.experiment} [{summary.profile}]: {summary.done} done, {summary.failed} failed, "
              f"{summary.skipped} skipped (already stored){others} in {summary.wall_time:.0f}s -> {summary.store}")
        for t in summary.taken_over:
            print(f"  took over the stale claim of point {t}")
        if summary.left_claimed:
            print(f"  {summary.left_claimed} point(s) left to another sweep that holds their claims (--no-wait)")
        for e in summary.errors:
            print(f"  failed: {e}")
    return 1 if summary.failed else 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import report

    rep = report(args.name, profile=args.profile, results_root=args.results, out_dir=args.out)
    print(rep.text())
    return 0 if rep.has_ours else 1


def register_cli(sub: Any) -> None:
    p = sub.add_parser("sweep", help="run a paper experiment grid (resumable; local or Ray)",
                       description="Run the grid of a named experiment (table1..table5, fig3) as independent runs. "
                                   "Finished points are skipped on re-run; failures are retried, then recorded. "
                                   "'capslib sweep list' lists the experiments.")
    p.add_argument("name", help="experiment name, or 'list'")
    p.add_argument("--profile", default=None, help="smoke, cpu, fmnist or paper (default: the experiment's own)")
    p.add_argument("--seeds", type=int, default=1, help="run seeds 0..N-1 (default 1)")
    p.add_argument("--backend", choices=["local", "ray"], default="local", help="where runs execute")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--retries", type=int, default=1, help="retries of a failing point before it is recorded")
    p.add_argument("--dry-run", action="store_true", help="print the runs, run nothing")
    p.add_argument("--set", nargs="*", metavar="NAME=VALUE", help="override config fields of every run")
    p.add_argument("--results", default=None, help="results folder (default results/ or $CAPSLIB_RESULTS)")
    p.add_argument("--checkpoints", default=None,
                   help="per-point checkpoint folder, so an interrupted point resumes (default runs/sweeps/<name>; "
                        "'' for none)")
    p.add_argument("--no-wait", action="store_true",
                   help="return when only points claimed by another running sweep are left, instead of waiting")
    p.add_argument("--claim-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="a point's claim with no heartbeat for this long is stale and taken over (default 600; "
                        "a claim whose owner process on this host is gone is taken over at once)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--only", nargs="+", metavar="TEXT",
                   help="run only the points whose label contains one of these texts")
    p.set_defaults(func=_cmd_sweep)

    r = sub.add_parser("report", help="the paper's table beside ours, with deltas",
                       description="Print the paper's table beside the stored results (mean ± std over seeds), "
                                   "with deltas; write a CSV and a seaborn figure.")
    r.add_argument("name", help="experiment name (table1..table5, fig3)")
    r.add_argument("--profile", default=None, help="which store to read (default: the experiment's own)")
    r.add_argument("--results", default=None, help="results folder (default results/)")
    r.add_argument("--out", default=None, help="folder for the CSV and PNG (default: beside the store)")
    r.set_defaults(func=_cmd_report)
