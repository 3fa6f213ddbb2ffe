"""Where runs execute: in this process, on a local process pool, or as tasks on a Ray cluster. Shared by
`compare` and `sweep`; one failed run never ends the others, and Ctrl-C stops the runs in flight (each is
marked interrupted, what it measured kept) before KeyboardInterrupt goes on."""

from __future__ import annotations

import fcntl
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from harness.config import RunConfig
from harness.errors import BadInput, stop_requested
from harness.experiment import run_experiment
from harness.proctree import die_with_parent

Executor = Literal["local", "ray"]


class Job(Protocol):
    """A run to execute: its config, and its run id ("" = a new time-stamped one)."""

    @property
    def config(self) -> RunConfig: ...
    @property
    def run_id(self) -> str: ...


@dataclass(frozen=True)
class Finished:
    run_dir: str
    summary: dict[str, Any]


# Called as each run ends: (the job as given, its result or None, an error message or None).
OnDone = Callable[[Any, "Finished | None", "str | None"], None]


def run_point(config: RunConfig, results_dir: str, run_id: str) -> Finished:
    """One run in a worker (process pool or Ray) or in this process. Ctrl-C ends it as interrupted."""
    stop_requested.clear()  # a worker process outlives its runs: an earlier run's Ctrl-C is not this one's
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _interrupt) if main else None
    try:
        result = run_experiment(config, Path(results_dir), run_id=run_id or None)
        return Finished(str(result.dir), result.summary.model_dump(mode="json"))
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _interrupt(signum: int, frame: object) -> None:
    """A worker's first SIGINT ends its run (marked interrupted); further ones must not break that cleanup."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop_requested.set()
    raise KeyboardInterrupt


_held: list[int] = []  # a pool worker's shared lock on its sweep directory (kept open for the worker's life)


def _worker_init(parent: int, lock: str | None = None) -> None:
    """Pool workers ignore SIGINT between runs (the parent process decides who stops), die with their parent
    (PR_SET_PDEATHSIG: a SIGKILLed sweep leaves no worker behind), and hold `lock` shared while they live,
    so a later sweep on the same directory sees them (harness.sweep.sweep_lock)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop_requested.clear()
    die_with_parent(signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)
    if lock is not None:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError:  # storage without locks: the sweep took none either (harness.sweep.sweep_lock)
            return
        _held.append(fd)


def execute(runs: Sequence[Job], results_dir: Path, on_done: OnDone, jobs: int = 1,
            executor: Executor = "local", address: str | None = None, worker_lock: Path | None = None) -> None:
    """Run each job (`jobs` at a time on a local pool, or on Ray); `on_done` hears of each as it ends. Ctrl-C
    stops the runs in flight (they end as interrupted) and raises KeyboardInterrupt. Local pool workers die
    with this process and hold `worker_lock` (a file) shared while they live."""
    if executor == "ray":
        _execute_ray(runs, results_dir, on_done, address)
    elif jobs <= 1:
        for job in runs:
            on_done(job, *_outcome(lambda j=job: run_point(j.config, str(results_dir), j.run_id)))
    else:
        _execute_pool(runs, results_dir, on_done, jobs, worker_lock)


def _outcome(call: Callable[[], Finished]) -> tuple[Finished | None, str | None]:
    """(result, None), or (None, message) for a run that failed. Bad input (a workload file that is not
    there, settings that cannot run) is every run's problem: it ends them all, as Ctrl-C does."""
    try:
        return call(), None
    except (KeyboardInterrupt, SystemExit, BadInput):
        raise
    except Exception as e:  # noqa: BLE001 - one failed run must not end the sweep
        return None, f"{type(e).__name__}: {e}"


def _execute_pool(runs: Sequence[Job], results_dir: Path, on_done: OnDone, jobs: int,
                  worker_lock: Path | None = None) -> None:
    pool = ProcessPoolExecutor(max_workers=jobs, initializer=_worker_init,
                               initargs=(os.getpid(), None if worker_lock is None else str(worker_lock)))
    pending: dict[Future, Job] = {}
    queue: Iterator[Job] = iter(runs)

    def submit() -> None:  # at most `jobs` runs in the pool, so Ctrl-C has nothing queued to undo
        while len(pending) < jobs and (job := next(queue, None)) is not None:
            pending[pool.submit(run_point, job.config, str(results_dir), job.run_id)] = job

    try:
        submit()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                job = pending.pop(future)
                on_done(job, *_outcome(future.result))
            submit()
    except BaseException:  # Ctrl-C, or bad input from one run: stop the others
        for process in list(getattr(pool, "_processes", {}).values()):  # the runs in flight end as interrupted
            try:
                os.kill(process.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


PACKAGES = ("harness", "workloads", "baselines", "mars_impl")  # pyproject's packages.find include list


def runtime_env() -> dict[str, Any]:
    """What Ray gives each worker: this process's code (the project's packages, uploaded by Ray: a worker
    node needs only the core's dependencies, not a checkout of the same commit) and its git state (the
    uploaded copy is no git tree, so run.json would lose the commit otherwise)."""
    import importlib  # noqa: PLC0415
    import json  # noqa: PLC0415

    from harness.results import git_state  # noqa: PLC0415

    modules = [str(Path(importlib.import_module(name).__file__).resolve().parent)  # type: ignore[arg-type]
               for name in PACKAGES]
    return {"py_modules": modules, "excludes": ["__pycache__", "*.pyc"],
            "env_vars": {"MARS_BENCH_GIT": json.dumps(git_state())}}


def _execute_ray(runs: Sequence[Job], results_dir: Path, on_done: OnDone, address: str | None) -> None:
    try:
        import ray  # noqa: PLC0415
    except ImportError:
        raise BadInput("--executor ray needs Ray: pip install -e '.[cluster]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        target = address or os.environ.get("RAY_ADDRESS")
        if target and target not in ("auto", "local"):
            from harness.ray_check import check_cluster  # noqa: PLC0415 - imports grpc (Ray's dependency)

            check_cluster(target, "--address" if address else "RAY_ADDRESS")
        try:
            ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                     runtime_env=runtime_env())
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"--address {address}" if address else f"RAY_ADDRESS {target}" if target else "a local Ray"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BadInput(f"{where}: Ray could not connect ({first})") from None
    remote = ray.remote(num_cpus=1, max_retries=0)(run_point)
    pending = {remote.remote(j.config, str(results_dir.resolve()), j.run_id): j for j in runs}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                on_done(job, *_outcome(lambda r=ref: ray.get(r)))
    except BaseException:  # Ctrl-C, or bad input from one run: stop the others
        for ref in pending:
            ray.cancel(ref)  # KeyboardInterrupt in the task: its run ends as interrupted
        ray.wait(list(pending), num_returns=len(pending), timeout=30)
        raise
    finally:
        if started_here:
            ray.shutdown()


