"""`mars-bench results ...`: list runs and show one run's summary."""

from __future__ import annotations

from pathlib import Path

import click

from harness.commands.options import json_option, results_dir_option
from harness.errors import BadInput
from harness.console import console, print_json, table
from harness.metrics import DEFAULT_PERCENTILE_METRICS, DEFAULT_PERCENTILES, summarize, summary_table_rows
from harness.results import RunRecord, find_run, list_runs


# the columns of `results list` after run_id and status
_FIGURES = ("backend", "engine", "workload", "sessions", "completed", "mean_jct_s", "p95_jct_s", "session_throughput",
            "goodput")


def run_summary(run: RunRecord) -> dict:
    """The run's summary.json, or one computed from its tables / event log when the run did not write one (it
    was killed, or is still running): over every session it was to run, invalid when it stopped early."""
    summary = run.summary()
    if summary is None:
        status, cfg = run.status, run.config
        stopped = status if status in ("interrupted", "failed") else None
        planned = cfg.get("num_sessions")
        chosen = {key: cfg[key] for key in ("metric_percentiles", "percentile_metrics") if cfg.get(key)}
        summary = summarize(run.calls(), run.sessions(), stopped=stopped,
                            planned_sessions=planned if isinstance(planned, int) else None,
                            percentiles=chosen.get("metric_percentiles", DEFAULT_PERCENTILES),
                            percentile_metrics=chosen.get("percentile_metrics", DEFAULT_PERCENTILE_METRICS),
                            start_s=_benchmark_start(run)).model_dump(mode="json")
    return summary


def _benchmark_start(run: RunRecord) -> float:
    """When the measured sessions started on the run's clock: the end of its warm-up (its event), else 0."""
    ends = [float(e["t"]) for e in run.events() if e.get("kind") == "warmup_done" and "t" in e]
    return ends[-1] if ends else 0.0


def tool_failures(stats: dict) -> str:
    """'2 of 14 (1 killed at a limit)' from a real tool pool's stats."""
    return (f"{stats.get('tool_calls_failed')} of {stats.get('tool_calls_run')} "
            f"({stats.get('tool_calls_killed', 0)} killed at a limit)")


@click.group()
def results() -> None:
    """Runs written under the results directory.

    \b
    Examples:
      mars-bench run --backend mars --workload swe-smoke
      mars-bench results list
      mars-bench results show latest
    """


@results.command("list")
@results_dir_option
@json_option
def list_cmd(results_dir: Path, as_json: bool) -> None:
    """List the runs under the results directory.

    \b
    Examples:
      mars-bench run --backend mars --workload swe-smoke
      mars-bench results list
      mars-bench results list --results-dir results/ --json
    """
    runs = list_runs(results_dir)
    rows = []
    for run in runs:
        try:
            run.check()
            cfg, summary = run.config, run_summary(run)
        except BadInput as e:  # one corrupt run is one flagged row; the others are listed as usual
            reason = str(e).removeprefix(f"{run.dir}/")  # the row names the run already
            rows.append({"run_id": run.run_id, "status": f"unreadable: {reason}", **dict.fromkeys(_FIGURES),
                         "noisy": None})
            continue
        rows.append({
            "run_id": run.run_id, "status": run.status, "backend": cfg.get("backend"), "engine": cfg.get("engine"),
            "workload": cfg.get("workload"), "sessions": summary.get("num_sessions"),
            "completed": summary.get("completed_sessions"), "mean_jct_s": summary.get("mean_jct_s"),
            "p95_jct_s": summary.get("p95_jct_s"), "session_throughput": summary.get("session_throughput"),
            "goodput": summary.get("goodput"), "noisy": run.noisy,
        })
    if as_json:
        print_json(rows)
        return
    if not rows:
        console.print(f"no runs under {results_dir}/")
        return
    columns = ["run", "status", "backend", "engine", "workload", "sessions", "done", "mean JCT s", "p95 JCT s",
               "sessions/s", "goodput/s"]
    body = [[r["run_id"], r["status"] + (" (noisy)" if r["noisy"] else ""), *list(r.values())[2:-1]] for r in rows]
    console.print(table(f"runs in {results_dir}/", columns, body, numeric_from=5))


@results.command()
@click.argument("run", metavar="RUN")
@results_dir_option
@json_option
def show(run: str, results_dir: Path, as_json: bool) -> None:
    """Show one run's summary. RUN is a run id, a unique prefix of one, a path, or `latest`.

    \b
    Examples:
      mars-bench run --backend mars --workload swe-smoke
      mars-bench results show latest
      mars-bench results show latest --json
    """
    record = find_run(results_dir, run)
    record.check()  # a corrupt run is one line, exit 2
    summary = run_summary(record)
    if as_json:
        print_json({"run_id": record.run_id, "status": record.status, "noisy": record.noisy,
                    "label": record.config.get("label"), "metadata": record.config.get("metadata") or {},
                    "host_load": record.meta.get("host_load"), "config": record.config, "summary": summary})
        return
    cfg = record.config
    header = [("run", record.run_id), ("status", record.status), ("backend", cfg.get("backend")),
              ("engine", cfg.get("engine")), ("workload", cfg.get("workload")), ("seed", record.meta.get("seed"))]
    if cfg.get("label"):
        header.append(("label", str(cfg["label"])))
    if cfg.get("metadata"):
        header.append(("metadata", ", ".join(f"{k}={v}" for k, v in dict(cfg["metadata"]).items())))
    if record.meta.get("exports"):
        header.append(("exports", ", ".join(record.meta["exports"])))
    if record.meta.get("error"):
        header.append(("error", record.meta["error"]))
    tools = summary.get("engine_stats") or {}
    if "tool_calls_failed" in tools:  # real tools (harness.real_tools)
        header.append(("tool calls failed", tool_failures(tools)))
    host = record.host_load()
    if host is not None:
        header.append(("noisy", f"{'yes' if record.noisy else 'no'} ({host})"))
    else:
        header.append(("noisy", "not measured" + (" (simulated)" if cfg.get("engine") == "sim" else "")))
    console.print(table(None, ["run", ""], header))
    console.print(table("summary", ["metric", "value"], summary_table_rows(summary)))
