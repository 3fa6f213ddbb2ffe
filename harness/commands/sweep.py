"""`mars-bench sweep`: a grid of runs over backends, loads, seeds and any setting; resumable."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import click
import pandas as pd

from harness.backends import get_backend
from harness.commands.options import (SESSIONS, export_options, json_option, load_options, parse_list, parse_seeds,
                                      results_dir_option, seeds_option)
from harness.commands.run import hardware_options
from harness.config import make_config
from harness.engines.registry import ENGINES
from harness.compare import format_spread
from harness.config import RunConfig
from harness.console import ProgressReport, console, print_json, table
from harness.errors import BadInput, RunsFailed
from harness.executors import Finished, execute
from harness.sweep import (GridPoint, finished_run, grid_points, is_completed, json_digest, runs_table, sweep_lock,
                           write_manifest)
from workloads.arrivals import ARRIVAL_PROCESSES
from harness.inputs import make_dirs
from workloads.source import WorkloadRequest, resolve

SHOWN = (("mean_jct_s", "mean JCT s"), ("p95_jct_s", "p95 JCT s"), ("session_throughput", "sessions/s"),
         ("goodput", "goodput/s"))


@click.command()
@click.option("--backends", "-b", "backend_list", default="vllm,mars", show_default=True,
              help="Comma-separated backends (see `mars-bench backends`).")
@click.option("--engine", type=click.Choice(list(ENGINES)), default="sim", show_default=True)
@click.option("--workload", "-w", default="paper", show_default=True, metavar="PRESET|FILE",
              help="Workload preset name or JSONL file.")
@click.option("--rps", "rps_list", default=None,
              help="Comma-separated session arrival rates, inf for a burst at t=0 (default: the preset's).")
@seeds_option()
@click.option("--sessions", type=SESSIONS, help="Number of sessions (default: the preset's).")
@click.option("--arrival", type=click.Choice(ARRIVAL_PROCESSES), help="Arrival process.")
@click.option("--burstiness", type=click.FloatRange(min=0, min_open=True), metavar="B",
              help="Arrivals on vllm bench's --burstiness schedule (gamma shape B, rescaled to span N/rps).")
@click.option("--cv", type=click.FloatRange(min=0, min_open=True), help="Gamma arrivals by the gaps' CV (shape 1/cv^2).")
@load_options
@click.option("--set", "sets", multiple=True, metavar="KEY=V1[,V2...]",
              help="A setting (repeatable); several comma-separated values make it an axis of the grid.")
@hardware_options
@click.option("--tool-cores", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--tool-mode", type=click.Choice(["queue", "timeshare"]), default="queue", show_default=True)
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="Runs in parallel (local executor).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: a process pool on this machine; ray: tasks on a Ray cluster (extra `cluster`).")
@click.option("--address", default=None, help="--executor ray: the cluster's address (default: a local Ray).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Sweep directory (default: RESULTS_DIR/sweep-<workload>-<grid hash>; the same command resumes).")
@click.option("--dry-run", is_flag=True, help="List the grid and what is already done; run nothing.")
@export_options
@results_dir_option
@json_option
def sweep(backend_list: str, engine: str, workload: str, rps_list: str | None, seeds: str, sessions: int | None,
          arrival: str | None, burstiness: float | None, cv: float | None, max_concurrency: int | None,
          warmup_sessions: int, sets: tuple[str, ...], gpu: str, model: str, tp: int,
          profile: str | None, tool_cores: int, tool_mode: str, jobs: int, executor: str, address: str | None,
          out_dir: Path | None, dry_run: bool, results_dir: Path, as_json: bool,
          exports: dict[str, Any]) -> None:
    """Run a grid of runs: every backend x load x seed x `--set` value. Resumable: a finished run is never
    run again, so an interrupted sweep continues where it stopped when the same command runs again (and a
    wider grid into the same --out runs only what is new).

    \b
    Examples:
      mars-bench sweep -b vllm,mars -w paper --rps 0.05,0.1,0.2,0.3 --seeds 1,2,3 -j 2
      mars-bench sweep -b mars -w paper --rps 0.2 --set mars.window_min=2,4,8 --set mars.retention=benefit,lru
      mars-bench sweep -b vllm,sglang,continuum,continuum-dy,autellix,infercept,mars --rps 0.1,0.2 \\
          --seeds 1,2,3 --executor ray --address ray://head:10001 --out /shared/sweeps/paper
    """
    names = parse_list(backend_list, "--backends")
    loads: list[float | None] = [None] if rps_list is None else parse_list(rps_list, "--rps", float)
    if any(r is not None and not r > 0 for r in loads):
        raise BadInput(f"--rps {rps_list}: every rate must be a positive number or inf")
    seed_list = parse_seeds(seeds)
    for name in names:
        get_backend(name, engine)  # fail on a bad name before any run starts
    if engine != "sim" and (jobs > 1 or executor == "ray"):
        raise BadInput("--engine vllm runs one real engine at a time: use -j 1 with the local executor")
    if address is not None and executor != "ray":
        raise BadInput("--address is for --executor ray")

    def make(values: dict[str, Any], run_sets: list[str]) -> RunConfig:
        return make_config(tuple(run_sets), engine=engine, workload=workload, sessions=sessions, arrival=arrival,
                           cv=cv, burstiness=burstiness, max_concurrency=max_concurrency,
                           warmup_sessions=warmup_sessions, gpu=gpu, model=model, tp=tp, profile=profile, tool_cores=tool_cores,
                           tool_mode=tool_mode, **exports, **values)

    points = grid_points(make, names, loads, seed_list, sets)
    check_workloads(points)
    spec = {"backends": names, "engine": engine, "workload": workload,
            "rps": [r if r is None or math.isfinite(r) else "inf" for r in loads], "seeds": seed_list,
            "sessions": sessions, "arrival": arrival, "cv": cv, "sets": list(sets), "gpu": gpu, "model": model,
            "tp": tp, "profile": profile, "tool_cores": tool_cores, "tool_mode": tool_mode}
    # the load controls join the spec (and so the sweep directory's name) only when given, so a sweep
    # directory made before they existed is still found and resumed
    spec.update({k: v for k, v in (("burstiness", burstiness), ("max_concurrency", max_concurrency),
                                   ("warmup_sessions", warmup_sessions)) if v})
    sweep_dir = out_dir or results_dir / f"sweep-{Path(workload).stem}-{json_digest(spec, 8)}"
    if dry_run:
        _print_dry_run(points, [p for p in points if is_completed(sweep_dir / p.run_id)], sweep_dir, as_json)
        return
    make_dirs(sweep_dir, "sweep directory")
    with sweep_lock(sweep_dir) as worker_lock:
        _run_grid(points, spec, sweep_dir, jobs, executor, address, worker_lock, as_json)


def _run_grid(points: list[GridPoint], spec: dict[str, Any], sweep_dir: Path, jobs: int, executor: str,
              address: str | None, worker_lock: Path, as_json: bool) -> None:
    """Run what the grid still lacks in `sweep_dir` (held by this sweep), then write and print the table."""
    # a finished run is kept; what an interrupted sweep left unfinished is removed before anything starts
    done_before = [p for p in points if finished_run(sweep_dir, p) is not None]
    finished = {p.run_id for p in done_before}
    todo = [p for p in points if p.run_id not in finished]
    write_manifest(sweep_dir, points, {"spec": spec, "command": ["mars-bench", *sys.argv[1:]]})
    failures: list[tuple[GridPoint, str]] = []
    started = time.perf_counter()
    interrupted = False
    with ProgressReport("sweep", "runs", enabled=not as_json) as progress:
        progress.update("runs", 0, len(todo), f"sweep ({len(done_before)} done before)")
        ran = 0

        def on_done(point: GridPoint, result: Finished | None, error: str | None) -> None:
            nonlocal ran
            ran += 1
            if error is not None:
                failures.append((point, error))
                console.print(f"[red]failed[/red] {point.run_id}: {error}")
            progress.update("runs", ran, len(todo), f"last: {point.run_id}")

        try:
            execute(todo, sweep_dir, on_done, jobs=jobs, executor=executor, address=address,  # type: ignore[arg-type]
                    worker_lock=worker_lock)
        except KeyboardInterrupt:
            interrupted = True
    elapsed = time.perf_counter() - started
    runs = runs_table(sweep_dir, points)
    runs.to_csv(sweep_dir / "sweep.csv", index=False)
    completed = int((runs["status"] == "completed").sum())
    if interrupted:
        console.print(f"interrupted: {completed} of {len(points)} runs done ({completed - len(done_before)} this "
                      f"time); the same command continues the sweep in {sweep_dir}/")
        raise KeyboardInterrupt
    if as_json:
        print_json({"sweep_dir": str(sweep_dir), "elapsed_s": elapsed, "runs": len(points),
                    "done_before": len(done_before), "ran": len(todo), "failed": len(failures),
                    "table": runs.to_dict(orient="records")})
    else:
        _print_summary(runs, points, sweep_dir)
        console.print(f"{len(points)} runs ({len(done_before)} done before, {len(todo)} run now) in {elapsed:.1f} s; "
                      f"written to {sweep_dir}/ (sweep.csv, sweep.json, one directory per run)")
    if failures:
        raise RunsFailed(f"{len(failures)} of {len(points)} runs failed (first: {failures[0][0].run_id}: "
                         f"{failures[0][1]}); the same command runs them again")


def check_workloads(points: list[GridPoint]) -> None:
    """Resolve each distinct workload of the grid as its runs will (harness.experiment.run_experiment), so a
    setting the workload rejects (`--set retention=lru`: no such preset field) fails here, in one line and
    before anything is written, for a dry run as for the sweep itself."""
    requests = {WorkloadRequest(source=c.workload, sessions=c.sessions, rps=c.rps, arrival=c.arrival, cv=c.cv,
                                burstiness=c.burstiness, seed=c.seed, sets=c.workload_sets, force=c.force)
                for c in (p.config for p in points)}
    for request in requests:
        resolve(request)


def _print_dry_run(points: list[GridPoint], done: list[GridPoint], sweep_dir: Path, as_json: bool) -> None:
    done_ids = {p.run_id for p in done}
    rows = [{**{k: str(v) for k, v in p.axes.items()}, "run_id": p.run_id, "done": p.run_id in done_ids} for p in points]
    if as_json:
        print_json({"sweep_dir": str(sweep_dir), "runs": rows})
        return
    columns = [*points[0].axes, "run id", "done"]
    console.print(table(f"{len(points)} runs, {len(done)} done, in {sweep_dir}/", columns,
                        [list(r.values()) for r in rows], numeric_from=len(columns)))


def _print_summary(runs: pd.DataFrame, points: list[GridPoint], sweep_dir: Path) -> None:
    """Per grid cell (all axes but seed): each figure's mean ± spread over seeds."""
    axes = [a for a in points[0].axes if a != "seed"]
    done = runs[runs["status"] == "completed"].copy()
    if done.empty:
        console.print(f"no completed runs in {sweep_dir}/")
        return
    for key, _ in SHOWN:
        done[key] = pd.to_numeric(done[key], errors="coerce")
    cells = done.groupby(axes, sort=False, dropna=False)
    body = []
    for values, group in cells:
        values = values if isinstance(values, tuple) else (values,)
        body.append([*map(str, values), len(group),
                     *[format_spread(group[k].mean(), group[k].std(ddof=0)) for k, _ in SHOWN]])
    console.print(table(f"sweep: {len(done)} completed runs", [*axes, "seeds", *[label for _, label in SHOWN]], body,
                        numeric_from=len(axes)))
