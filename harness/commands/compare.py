"""`mars-bench compare`: several backends, identical workload and seeds, one table."""

from __future__ import annotations

import time
from typing import Any
from datetime import datetime
from pathlib import Path

import click
import pandas as pd

from harness.backends import get_backend
from harness.commands.options import (DEFAULT_SEEDS, json_option, parse_list, parse_seeds, results_dir_option,
                                      load_options, seeds_option, workload_options,
                                      export_options)
from harness.commands.run import hardware_options
from harness.config import make_config
from harness.engines.registry import ENGINES
from harness.compare import COMPARED, ci_footer, comparison, markdown, run_grid, runs_frame, table_cells
from harness.console import ProgressReport, console, plural, print_json, print_table, table
from harness.errors import BadInput
from harness.inputs import check_writable_dir, make_dirs


@click.command()
@click.option("--backends", "-b", "backend_list", default="vllm,mars", show_default=True,
              help="Comma-separated backends (see `mars-bench backends`).")
@click.option("--engine", type=click.Choice(list(ENGINES)), default="sim", show_default=True)
@workload_options(default="swe-smoke", seed=False)
@load_options
@seeds_option(DEFAULT_SEEDS)
@hardware_options
@click.option("--tool-cores", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--tool-mode", type=click.Choice(["queue", "timeshare"]), default="queue", show_default=True)
@click.option("--reference", default=None, help="Backend the speedup is measured against (default: the first).")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True, help="Runs in parallel.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where comparison.csv/.md go (default: RESULTS_DIR/compare-<time>).")
@export_options
@results_dir_option
@json_option
def compare(backend_list: str, engine: str, workload: str, sessions: int | None, rps: float | None,
            arrival: str | None, burstiness: float | None, cv: float | None, sets: tuple[str, ...], force: bool,
            max_concurrency: int | None, warmup_sessions: int, seeds: str, gpu: str,
            model: str, tp: int, profile: str | None, tool_cores: int, tool_mode: str, reference: str | None,
            jobs: int, out_dir: Path | None, results_dir: Path, as_json: bool, exports: dict[str, Any]) -> None:
    """Run several backends on the identical workload and seeds and compare them: each figure as the mean
    ± 95% confidence interval over the seeds (five by default), the speedup paired per seed.

    \b
    Examples:
      mars-bench compare --backends vllm,mars --workload swe-smoke
      mars-bench compare -b vllm,sglang,continuum,continuum-dy,autellix,infercept,mars -w paper --seeds 1-5 -j 2
      mars-bench compare -b vllm,mars -w paper --rps 0.3 --reference vllm --out leaderboard/
    """
    names = parse_list(backend_list, "--backends")
    seed_list = parse_seeds(seeds)
    reference = reference or names[0]
    if reference not in names:
        raise BadInput(f"--reference {reference!r} is not one of --backends ({', '.join(names)})")
    configs = [
        make_config(sets, backend=name, engine=engine, workload=workload, sessions=sessions, rps=rps, arrival=arrival,
                    cv=cv, burstiness=burstiness, max_concurrency=max_concurrency, warmup_sessions=warmup_sessions, seed=s, gpu=gpu, model=model, tp=tp, profile=profile, tool_cores=tool_cores,
                    tool_mode=tool_mode, force=force, **exports)
        for name in names for s in seed_list
    ]
    for name in names:
        get_backend(name, engine)  # fail on a bad name before any run starts
    out_dir = out_dir or results_dir / f"compare-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    check_writable_dir(results_dir, "--results-dir")  # before any run: a bad path must not cost the runs
    check_writable_dir(out_dir, "--out")
    started = time.perf_counter()
    with ProgressReport("compare", "runs", enabled=not as_json) as progress:
        progress.update("runs", 0, len(configs))
        rows = run_grid(configs, results_dir, jobs=jobs,
                        progress=lambda done, total: progress.update("runs", done, total))
    elapsed = time.perf_counter() - started
    runs = runs_frame(rows)
    result = comparison(runs, reference)
    make_dirs(out_dir, "--out")
    runs.to_csv(out_dir / "runs.csv", index=False)
    result.to_csv(out_dir / "comparison.csv", index=False)
    text = markdown(result, reference)
    (out_dir / "comparison.md").write_text(text)
    if as_json:
        print_json({"elapsed_s": elapsed, "out_dir": str(out_dir), "seeds": seed_list, "confidence": 0.95,
                    "runs": _records(runs), "comparison": _records(result)})
        return
    columns = ["backend", "seeds", *[label for _, label in COMPARED], f"speedup vs {reference}"]
    body = [table_cells(r, reference) for _, r in result.iterrows()]
    shown = table(f"{workload}: {len(seed_list)} seed(s), reference {reference}", columns, body)
    print_table(shown)  # mean ± CI cells are wide: piped output gets the table's natural width
    console.print(ci_footer(result))
    if max_concurrency is not None or warmup_sessions:
        controls = [f"at most {max_concurrency} sessions in flight" if max_concurrency is not None else "",
                    f"{plural(warmup_sessions, 'warm-up session')} first, not measured" if warmup_sessions else ""]
        console.print("load: " + "; ".join(c for c in controls if c))
    console.print(f"{len(configs)} runs in {elapsed:.1f} s; written to {out_dir}/ (comparison.csv, comparison.md, runs.csv)")


def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows as dicts for JSON, NaN (an undefined figure or interval) as null."""
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
