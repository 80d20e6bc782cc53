"""Running a study's runs with Optuna as the scheduler: ``study run`` and ``study tune``.

Every run is an ordinary ``scenemtl fit`` in a child process, logging into
``<study dir>/<variant>/seed_<k>/version_N`` (``study run``) or
``<study dir>/tune/trial_<n>/version_N`` (``study tune``). Optuna keeps the ledger:

* ``study run`` enqueues one trial per (variant, seed) that has no finished run yet, and
  each worker pops queued trials until none is left. Popping is atomic in Optuna's
  storage, so N workers started with the same command (on one machine or on many, with
  ``--storage`` pointing at a shared database) share the work.
* A worker records a heartbeat for its trial. A worker that dies (SIGKILL, a lost
  machine) stops beating; the next worker to look fails that trial and re-queues it
  (``RetryHeartbeatStaleTrialCallback``), and the retry resumes the run from its
  last.ckpt. Heartbeats need a database storage (SQLite, PostgreSQL, MySQL).
* A run that fails (bad option, crash) is recorded as a failed trial with the error line
  and the worker goes on with the next one; the next ``study run`` tries it again.
* Each run folder is also guarded by a file lock, so that a duplicate trial (two workers
  racing to enqueue) can never train into a folder another process is using.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from scenemtl.errors import UserError, raised_in
from scenemtl.reporting.run_dir import RunDir, RunFamily
from scenemtl.reporting.runs import finished_run, read_metrics, summarize_run
from scenemtl.studies.bf16 import bf16_notice
from scenemtl.studies.spec import Dimension, StudySpec, format_value, monitor_args
from scenemtl.tether import child_env

DEFAULT_HEARTBEAT_S = 30
STORAGE_FILE = "study.db"
RUN_STUDY_SUFFIX = ""
TUNE_STUDY_SUFFIX = "-tune"
VARIANT_ATTR = "variant"
SEED_ATTR = "seed"
RUN_ATTR = "run"
ERROR_ATTR = "error"
PRUNED_ATTR = "pruned_at_epoch"


def default_storage(study_dir: Path) -> str:
    return f"sqlite:///{(study_dir / STORAGE_FILE).resolve()}"


def open_storage(url: str, heartbeat_s: int | None) -> Any:
    """An Optuna storage for ``url``: a database URL (heartbeats and retries of dead
    workers' trials), or ``journal:PATH`` (a journal file on shared disk: no heartbeats).

    Raises:
        UserError: a URL Optuna cannot open, in one line.
    """
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            return JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite:"):
            # workers and their runs write at once: wait for the lock instead of failing
            kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
        if heartbeat_s:
            kwargs.update(
                heartbeat_interval=heartbeat_s,
                grace_period=2 * heartbeat_s,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
            )
        with _sqlite_schema_lock(url):
            return _open_racing_schema(lambda: RDBStorage(database_url(url), **kwargs))
    except (ImportError, ValueError, OSError) as e:
        raise UserError(f"--storage {url}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # sqlalchemy's errors: a database that cannot be reached
        if type(e).__module__.startswith("sqlalchemy"):
            raise UserError(f"--storage {url}: {str(e).splitlines()[0]}") from None
        raise


SCHEMA_ATTEMPTS = 5


def _open_racing_schema(open_: Callable[[], Any]) -> Any:
    """``open_()``, again when another worker was creating the same new database's tables
    at that moment. Optuna creates missing tables on opening; on a server database two
    workers started together both try, and one fails with a duplicate table or a
    duplicate key of the schema version (seen with two workers on PostgreSQL). The one
    that retries finds the tables made. (SQLite files are serialized by a lock file
    instead, :func:`_sqlite_schema_lock`.)"""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            return open_()
        except (IntegrityError, ProgrammingError):
            if attempt == SCHEMA_ATTEMPTS - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


DRIVERS = {
    # scheme -> (SQLAlchemy dialect+driver of the driver scenemtl's extra installs, extra)
    "postgresql": ("postgresql+psycopg", "postgres"),
    "postgres": ("postgresql+psycopg", "postgres"),
}


def database_url(url: str) -> str:
    """``url`` with the database driver that scenemtl's extra installs.

    SQLAlchemy reads ``postgresql://`` as psycopg2, a driver that needs a compiler to
    install; ``scenemtl[postgres]`` installs psycopg 3 instead, so a URL without a driver
    goes to it. A URL that names its driver (``postgresql+psycopg2://``) is kept.

    Raises:
        UserError: the URL's database needs a driver that is not installed (one line
            naming the extra).
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in DRIVERS:
        return url
    dialect, extra = DRIVERS[scheme]
    if importlib.util.find_spec(dialect.split("+")[1]) is None:
        raise UserError(
            f"--storage {url}: the {scheme} driver is not installed; "
            f"pip install 'scenemtl[{extra}]'"
        )
    return f"{dialect}://{rest}"


@contextlib.contextmanager
def _sqlite_schema_lock(url: str) -> Iterator[None]:
    """Held while Optuna opens a SQLite file. Opening a new database creates its tables
    and stamps its schema version, and two workers started together both try it: one
    fails on "table studies already exists" or a UNIQUE constraint of alembic_version
    (8 of 8 times with two processes released at one instant). A lock file beside the
    database serializes the opening; the one that comes second finds the schema made.
    Server databases retry instead (:func:`_open_racing_schema`)."""
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else ""
    if not path or path.startswith(":memory:"):
        yield
        return
    with open(f"{path}.lock", "ab") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _direction(spec: StudySpec) -> str:
    return "minimize" if spec.monitor_mode == "min" else "maximize"


# --------------------------------------------------------------------------------------
# one run in a child process


@dataclass
class CellResult:
    run: Path
    value: float | None
    resumed: bool
    seconds: float


@contextlib.contextmanager
def cell_lock(folder: Path) -> Iterator[IO[bytes] | None]:
    """An exclusive lock on a run folder family: yields the lock file, or None if another
    process holds it. The lock dies with its holder (flock), so a killed worker leaves
    nothing to clean up."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "ab") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        try:
            yield handle
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def best_value(run: RunDir, monitor: str | None, mode: str) -> float | None:
    """The best value of the run's monitor (``monitor``, else the run's own)."""
    summary = summarize_run(run.path)
    metric, direction = (monitor, mode) if monitor else (summary.monitor or (None, mode))
    if metric is None:
        return None
    values = []
    for row in read_metrics(run.path):
        with contextlib.suppress(TypeError, ValueError):
            values.append(float(row.get(metric) or "nan"))
    values = [v for v in values if v == v]
    if not values:
        return None
    return max(values) if direction == "max" else min(values)


ATTEMPT_MARK = "$ scenemtl fit "
"""Opens each attempt's section of a run's fit.log."""


def _error_line(log: Path) -> str:
    """What went wrong, from a failed run's log: the error line of its last attempt (the
    log collects every attempt), else the attempt's last line."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "no log"
    attempt = text[text.rfind(ATTEMPT_MARK) :] if ATTEMPT_MARK in text else text
    lines = [ln.strip() for ln in attempt.splitlines() if ln.strip()]
    for line in reversed(lines):
        if line.startswith("scenemtl: error:"):
            return line.removeprefix("scenemtl: error:").strip()
    return lines[-1][:300] if lines else "no output"


def fit_cell(
    family: RunFamily,
    args: list[str],
    monitor: str | None,
    mode: str,
    announce: Callable[[str], None],
) -> CellResult:
    """Train (or resume, or just read) the run ``family`` in a child process.

    Raises:
        UserError: the run failed; the message is its error line.
        CellBusy: another process is training this run right now.
    """
    started = time.monotonic()
    with cell_lock(family.path) as lock:
        if lock is None:
            raise CellBusy(f"{family.path} is being trained by another process")
        done = finished_run(family)
        if done is not None:
            return CellResult(done.path, best_value(done, monitor, mode), False, 0.0)
        resumable = any(r.last_ckpt.is_file() for r in family.versions())
        argv = [
            *args,
            "--run.root",
            str(family.root),
            "--run.name",
            family.name,
            "--trainer.enable_progress_bar=false",
        ]
        if resumable:
            argv += ["--ckpt_path", "last"]
        announce(f"{family.path}: {'resuming from last.ckpt' if resumable else 'training'}")
        log = family.path / "fit.log"
        env = child_env()  # the run dies with this worker (scenemtl.tether)
        with open(log, "ab") as out:
            out.write(f"\n{ATTEMPT_MARK}{' '.join(argv)}\n".encode())
            out.flush()
            child = subprocess.Popen(
                [sys.executable, "-m", "scenemtl", "fit", *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                pass_fds=(lock.fileno(),),  # an orphaned run keeps its folder locked
            )
            try:
                code = child.wait()
            except KeyboardInterrupt:
                _let_child_stop(child)
                raise
        if code == 130:
            raise KeyboardInterrupt
        if code != 0:
            raise UserError(f"{family.path}: {_error_line(log)} (log: {log})")
        done = finished_run(family)
        if done is None:
            raise UserError(f"{family.path}: the run ended without finishing (log: {log})")
        return CellResult(
            done.path, best_value(done, monitor, mode), resumable, time.monotonic() - started
        )


CHILD_STOP_S = (5.0, 10.0)
"""After Ctrl-C: seconds the worker waits for its run to end by itself, then after
forwarding SIGINT; then it kills it."""


def _let_child_stop(child: subprocess.Popen) -> None:
    """Ctrl-C in a worker: its ``fit`` child ends as interrupted (run.json says so, no
    checkpoint half-written) instead of being killed. A terminal's Ctrl-C reaches both
    (one process group), so the child normally ends within a second by itself;
    otherwise (SIGINT sent to the worker alone) it is forwarded, and a child that still
    runs is killed. (``subprocess.call`` killed the child at once.)"""
    import signal

    first, second = CHILD_STOP_S
    try:
        child.wait(first)
        return
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGINT)
    try:
        child.wait(second)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


class CellBusy(Exception):
    """Another process holds the run's lock."""


# --------------------------------------------------------------------------------------
# study run


@dataclass
class _Tally:
    ran: int = 0
    failed: int = 0
    skipped: int = 0

    def format(self, spec: StudySpec, pending: int, seconds: float) -> str:
        parts = [
            f"{self.ran} run(s) trained here in {seconds / 60:.1f} min",
            f"{self.failed} failed",
        ]
        if pending:
            parts.append(f"{pending} still running in other workers")
        return f"study {spec.name}: " + ", ".join(parts)


def _states() -> Any:
    from optuna.trial import TrialState

    return TrialState


def _cell_of(trial: Any, spec: StudySpec) -> tuple[str, int] | None:
    """The (variant, seed) a trial of ``study run`` stands for, or None when its user
    attributes do not name one of ``spec``'s cells.

    The values are read back from a storage that other processes (or people) write: a
    variant is used only if it is one of the spec's variant names (never a path taken
    from the database), a seed only if it is one of its seeds (an int: not a bool, a
    float, a string or NaN)."""
    attrs = trial.user_attrs
    variant, seed = attrs.get(VARIANT_ATTR), attrs.get(SEED_ATTR)
    if not isinstance(variant, str) or variant not in {v.name for v in spec.all_variants}:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or seed not in spec.seeds:
        return None
    return variant, seed


def _claims_a_cell(trial: Any) -> bool:
    """Whether a trial was queued as a cell (it has the attributes, valid or not)."""
    return VARIANT_ATTR in trial.user_attrs or SEED_ATTR in trial.user_attrs


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: values read back from a storage are
    named in messages, and may be megabytes long."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


STORAGE_LIBRARIES = ("optuna", "sqlalchemy", "json", "alembic")
"""Packages whose exceptions, raised while reading a storage, mean its data is broken."""


@contextlib.contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Errors Optuna and SQLAlchemy raise on data they cannot decode (a corrupted or
    hand-edited study database: a value that is not a number, broken JSON, an unknown
    trial state, a parameter outside its distribution) become one line naming the
    storage. Errors raised in scenemtl's own code keep their traceback (a bug)."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        if not raised_in(e, STORAGE_LIBRARIES):
            raise
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise UserError(
            f"--storage {url}: unreadable study data ({type(e).__name__}: {reason})"
        ) from None


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def enqueue_missing(study: Any, spec: StudySpec, study_dir: Path) -> list[tuple[str, int]]:
    """Queue a trial for every cell without a finished run, a queued or a running trial."""
    from optuna.storages import fail_stale_trials

    states = _states()
    with _file_lock(study_dir / ".enqueue.lock"):
        fail_stale_trials(study)  # dead workers' trials: failed and re-queued
        covered = set()
        for trial in study.get_trials(deepcopy=False):
            cell = _cell_of(trial, spec)
            if cell is not None and trial.state in (states.WAITING, states.RUNNING):
                covered.add(cell)
        queued = []
        for variant, seed in spec.cells():
            family = RunFamily(study_dir / variant, f"seed_{seed}")
            if (variant, seed) in covered or finished_run(family) is not None:
                continue
            study.enqueue_trial({}, user_attrs={VARIANT_ATTR: variant, SEED_ATTR: seed})
            queued.append((variant, seed))
        return queued


def worker_seed(seed: int) -> int:
    """The TPE seed of this worker: ``seed`` mixed with the process id. Workers started
    together with one seed would otherwise draw the same start-up points and train the
    same configuration N times; the price is that a search is not bit-reproducible."""
    import numpy as np

    return int(np.random.SeedSequence([seed, os.getpid()]).generate_state(1)[0])


def _open_study(
    spec: StudySpec,
    runs_root: str | os.PathLike,
    storage: str | None,
    heartbeat_s: int,
    suffix: str,
    **create_options: Any,
) -> tuple[Path, str, Any]:
    """(study folder, storage URL, the Optuna study ``spec.name + suffix``), created on
    first use and loaded by every later worker."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study_dir = spec.study_dir(runs_root)
    study_dir.mkdir(parents=True, exist_ok=True)
    url = storage or default_storage(study_dir)
    study = optuna.create_study(
        study_name=spec.name + suffix,
        storage=open_storage(url, heartbeat_s),
        direction=_direction(spec),
        load_if_exists=True,
        **create_options,
    )
    return study_dir, url, study


def run_study(
    spec: StudySpec,
    runs_root: str | os.PathLike,
    storage: str | None = None,
    heartbeat_s: int = DEFAULT_HEARTBEAT_S,
    announce: Callable[[str], None] = print,
) -> int:
    """Train every (variant, seed) of ``spec`` that has not finished; returns the number
    of runs that failed (0: every cell this worker took finished)."""
    with storage_errors(storage or default_storage(spec.study_dir(runs_root))):
        return _run_study(spec, runs_root, storage, heartbeat_s, announce)


def _run_study(
    spec: StudySpec,
    runs_root: str | os.PathLike,
    storage: str | None,
    heartbeat_s: int,
    announce: Callable[[str], None],
) -> int:
    import optuna

    study_dir, url, study = _open_study(spec, runs_root, storage, heartbeat_s, RUN_STUDY_SUFFIX)
    started = time.monotonic()
    queued = enqueue_missing(study, spec, study_dir)
    total = len(spec.cells())
    announce(
        f"study {spec.name}: {total} run(s), {total - len(queued)} finished or taken, "
        f"{len(queued)} queued now; storage {url}"
    )
    tally = _Tally()
    states = _states()
    if study.get_trials(deepcopy=False, states=(states.WAITING,)):
        notice = bf16_notice(spec.all_variants)
        if notice:  # once per worker; each run's fit.log has it too
            announce(notice)

    def objective(trial: Any) -> float:
        cell = _cell_of(trial, spec)
        if cell is None and _claims_a_cell(trial):
            # a queued trial whose attributes name no cell of this study (edited or
            # corrupted storage, or a variant removed from the file): skipped, not run
            attrs = trial.user_attrs
            why = (
                f"trial {trial.number} names no run of study {spec.name} (variant "
                f"{shown(attrs.get(VARIANT_ATTR))}, seed {shown(attrs.get(SEED_ATTR))})"
            )
            announce(f"skipped {why}")
            trial.set_user_attr(ERROR_ATTR, why)
            raise optuna.TrialPruned()
        if cell is None:
            # another worker took the last queued trial between our look and our ask
            trial.set_user_attr(ERROR_ATTR, "no queued run left for this worker")
            raise optuna.TrialPruned()
        variant_name, seed = cell
        variant = spec.variant(variant_name)
        family = RunFamily(study_dir / variant_name, f"seed_{seed}")
        args = [*variant.cli_args(), f"--seed_everything={seed}", *monitor_args(spec, variant)]
        monitor = None if variant.baseline_of else spec.monitor
        try:
            result = fit_cell(family, args, monitor, spec.monitor_mode, announce)
        except CellBusy as e:
            trial.set_user_attr(ERROR_ATTR, str(e))
            raise optuna.TrialPruned() from None
        except UserError as e:
            tally.failed += 1
            trial.set_user_attr(ERROR_ATTR, str(e))
            announce(f"FAILED {variant_name} seed {seed}: {e}")
            raise
        trial.set_user_attr(RUN_ATTR, str(result.run))
        if result.seconds:
            tally.ran += 1
            value = "n/a" if result.value is None else f"{result.value:.4g}"
            announce(
                f"finished {variant_name} seed {seed} in {result.seconds:.0f} s: "
                f"best {monitor or 'monitor'} {value}"
            )
        return float("nan") if result.value is None else result.value

    while True:
        optuna.storages.fail_stale_trials(study)
        waiting = study.get_trials(deepcopy=False, states=(states.WAITING,))
        if not waiting:
            break
        study.optimize(objective, n_trials=1, catch=(UserError,))
    running = [
        t for t in study.get_trials(deepcopy=False, states=(states.RUNNING,)) if _cell_of(t, spec)
    ]
    announce(tally.format(spec, len(running), time.monotonic() - started))
    return tally.failed


# --------------------------------------------------------------------------------------
# study tune


def median_pruner(startup_trials: int, warmup_epochs: int) -> Any:
    """The pruner of ``study tune``. Optuna does not store pruners with a study: the
    worker and its runs (which decide) each build this same one."""
    import optuna

    return optuna.pruners.MedianPruner(
        n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs
    )


def suggest(trial: Any, dim: Dimension) -> Any:
    """The trial's value for one searched option."""
    if dim.choices is not None:
        return trial.suggest_categorical(dim.key, list(dim.choices))
    if dim.is_int:
        step = int(dim.step) if dim.step else 1
        return trial.suggest_int(dim.key, int(dim.low), int(dim.high), step=step, log=dim.log)
    return trial.suggest_float(dim.key, float(dim.low), float(dim.high), step=dim.step, log=dim.log)


def tune_study(
    spec: StudySpec,
    runs_root: str | os.PathLike,
    storage: str | None = None,
    trials: int | None = None,
    heartbeat_s: int = DEFAULT_HEARTBEAT_S,
    announce: Callable[[str], None] = print,
) -> int:
    """Search ``spec.search`` with TPE, pruning runs whose monitor falls behind the median
    at the same epoch; returns the number of trials that failed in this worker."""
    if spec.search is None:
        raise UserError(f"{spec.path}: no search section: nothing to tune")
    if not spec.monitor:
        raise UserError(f"{spec.path}: tuning needs a monitor (e.g. monitor: val/grader)")
    with storage_errors(storage or default_storage(spec.study_dir(runs_root))):
        return _tune_study(spec, runs_root, storage, trials, heartbeat_s, announce)


def retried_number(trial_number: int, original: Any) -> int:
    """The number of the trial a retry continues (its run folder ``trial_<n>``), read
    back from the storage: used only if it is an earlier trial's number (an int below
    ``trial_number``), else the trial is its own (a value such as ``"../x"`` or
    ``1e300`` would name a folder elsewhere)."""
    if isinstance(original, bool) or not isinstance(original, int):
        return trial_number
    return original if 0 <= original < trial_number else trial_number


def _tune_study(
    spec: StudySpec,
    runs_root: str | os.PathLike,
    storage: str | None,
    trials: int | None,
    heartbeat_s: int,
    announce: Callable[[str], None],
) -> int:
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.study import MaxTrialsCallback

    assert spec.search is not None and spec.monitor
    search = spec.search
    budget = trials or search.trials
    study_dir, url, study = _open_study(
        spec,
        runs_root,
        storage,
        heartbeat_s,
        TUNE_STUDY_SUFFIX,
        sampler=optuna.samplers.TPESampler(seed=worker_seed(search.seed)),
        pruner=median_pruner(search.startup_trials, search.warmup_epochs),
    )
    if study.direction.name.lower() != _direction(spec):
        # TPE and the pruner would go on optimizing the stored direction
        raise UserError(
            f"{spec.path}: the search in {url} was made to {study.direction.name.lower()} "
            f"its monitor, this file asks to {_direction(spec)} {spec.monitor}; "
            "tune into another --storage"
        )
    states = _states()
    base = spec.variants[0]
    seed = spec.seeds[0]
    failures = 0

    def objective(trial: Any) -> float:
        nonlocal failures
        frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
        original = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
        number = retried_number(trial.number, original)
        values = {dim.key: suggest(trial, dim) for dim in search.space}
        family = RunFamily(study_dir / "tune", f"trial_{number}")
        pruning = {
            "class_path": "scenemtl.studies.pruning.OptunaPruning",
            "init_args": {
                "storage": url,
                "study_name": study.study_name,
                "trial_id": trial._trial_id,
                "monitor": spec.monitor,
                "startup_trials": search.startup_trials,
                "warmup_epochs": search.warmup_epochs,
            },
        }
        args = [
            *base.cli_args(),
            *(f"--{k}={format_value(v)}" for k, v in values.items()),
            f"--seed_everything={seed}",
            *monitor_args(spec),
            f"--trainer.callbacks+={json.dumps(pruning)}",
        ]
        try:
            result = fit_cell(family, args, spec.monitor, spec.monitor_mode, announce)
            trial.set_user_attr(RUN_ATTR, str(result.run))
            stored = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
            if PRUNED_ATTR in stored.user_attrs:
                announce(f"pruned trial {number} at epoch {shown(stored.user_attrs[PRUNED_ATTR])}")
                raise optuna.TrialPruned()
            if result.value is None:
                # a run that diverged: a failure, so that it neither counts toward the
                # budget nor lets a space that keeps diverging loop past it
                raise UserError(f"{result.run}: no finite value of {spec.monitor} was logged")
        except CellBusy as e:
            # a retried trial whose first run still holds its folder (another worker)
            trial.set_user_attr(ERROR_ATTR, str(e))
            raise optuna.TrialPruned() from None
        except UserError as e:
            failures += 1
            trial.set_user_attr(ERROR_ATTR, str(e))
            announce(f"FAILED trial {number}: {e}")
            raise
        announce(f"trial {number} {values}: best {spec.monitor} {result.value:.4g}")
        return result.value

    def counted() -> int:
        done = (states.COMPLETE, states.PRUNED)
        return len(study.get_trials(deepcopy=False, states=done))

    announce(f"study {study.study_name}: {counted()} of {budget} trial(s) done; storage {url}")
    notice = bf16_notice([base], search) if counted() < budget else None
    if notice:  # once per worker; each trial's fit.log has it too
        announce(notice)
    consecutive_failures = 0
    while counted() < budget and consecutive_failures < 3:
        before = failures
        study.optimize(
            objective,
            n_trials=1,
            catch=(UserError,),
            callbacks=[MaxTrialsCallback(budget, states=(states.COMPLETE, states.PRUNED))],
        )
        consecutive_failures = consecutive_failures + 1 if failures > before else 0
    if consecutive_failures >= 3:
        announce("stopped: three trials in a row failed (see their fit.log)")
    with contextlib.suppress(ValueError):
        best = study.best_trial
        announce(
            f"best trial {best.number}: {spec.monitor} {shown(best.value)} with "
            f"{shown(best.params, 300)}"
        )
    return failures
