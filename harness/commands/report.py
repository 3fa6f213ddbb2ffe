"""`mars-bench report`: a Markdown report and a static HTML leaderboard from result directories."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from harness.commands.extras import require_extra
from harness.commands.options import json_option, parse_list
from harness.console import ProgressReport, console, print_json, print_table, table
from harness.report.doc import Table
from harness.report.regressions import fail_if_any, summary_line

if TYPE_CHECKING:
    from harness.report.build import Report  # its plots import seaborn: the `report` extra, loaded by the command

_DIR = click.Path(file_okay=False, path_type=Path)


@click.command()
@click.argument("results_dirs", nargs=-1, required=True, type=_DIR, metavar="RESULTS_DIR...")
@click.option("--out", "out_dir", required=True, type=_DIR, help="Where report.md, index.html and img/ go.")
@click.option("--compare-to", type=_DIR, metavar="OTHER_DIR",
              help="Baseline result set: flag regressions and improvements against it.")
@click.option("--fail-on-regression", is_flag=True, help="Exit 1 when --compare-to finds a regression.")
@click.option("--sessions", "session_ids", metavar="ID,...",
              help="Sessions for the per-session timeline (default: the longest of the MARS run).")
@click.option("--reference", metavar="BACKEND",
              help="Backend the leaderboards' speedup is against (default: vllm, where it ran).")
@click.option("--include-noisy", is_flag=True,
              help="Rank runs whose host was oversubscribed (run.json `noisy`) too; by default they are listed "
                   "as excluded.")
@json_option
def report(results_dirs: tuple[Path, ...], out_dir: Path, compare_to: Path | None, fail_on_regression: bool,
           session_ids: str | None, reference: str | None, include_noisy: bool, as_json: bool) -> None:
    """Rank the runs under RESULTS_DIR... and write a Markdown report and a static HTML leaderboard with plots.

    Runs are found at any depth and grouped by workload, settings and load point (rps); each backend is ranked
    by goodput (then mean JCT; equal as shown: one rank) with the mean ± std over seeds, the 95% confidence
    interval, vLLM's per-call latencies and the speedup against --reference. Real-engine runs whose host was
    oversubscribed (`noisy`, see `results show`) are listed but not ranked unless --include-noisy.

    \b
    Examples:
      mars-bench sweep --backends vllm,mars --workload swe-smoke --seeds 1,2 --out results/before
      mars-bench report results/ --out report/
      mars-bench report results/ --out report/ --sessions swe-smoke-1-00000,swe-smoke-1-00001
      mars-bench report results/ --out report/ --reference mars
      mars-bench sweep --backends vllm,mars --workload swe-smoke --seeds 1,2 --out results/after
      mars-bench report results/after --out report/ --compare-to results/before --fail-on-regression
    """
    sessions = parse_list(session_ids, "--sessions") if session_ids is not None else None
    if fail_on_regression and compare_to is None:
        raise click.UsageError("--fail-on-regression needs --compare-to")
    require_extra("report", ("matplotlib", "seaborn"), "mars-bench report (its plots)")
    from harness.report.build import build_report  # noqa: PLC0415 - seaborn and matplotlib: the `report` extra

    with ProgressReport("report", enabled=not as_json) as progress:
        result = build_report(list(results_dirs), out_dir, compare_to, sessions, reference, progress.update,
                              include_noisy)
    if as_json:
        print_json(_finite(_as_json(result)))
    else:
        _print(result)
    if result.warning:
        click.echo(f"mars-bench: warning: {result.warning}", err=True)
    if fail_on_regression and result.regressions is not None:
        fail_if_any(result.regressions)


def _show(t: Table) -> None:
    print_table(table(t.title, t.columns, t.rows, numeric_from=t.numeric_from))


def _print(result: Report) -> None:
    from harness.report.bounds import bounds_text  # noqa: PLC0415

    for board, (_, runs) in zip(result.leaderboards, result.results.points(), strict=True):
        _show(board.table())
        if (line := bounds_text(runs)) is not None:
            console.print(line.text, highlight=False)
    if result.regressions is not None:
        for t in result.regressions.tables():
            if t.rows:
                _show(t)
        console.print(summary_line(result.regressions))
    runs, ranked = len(result.results.runs), len(result.results.included)
    images = len(result.document.figures())
    console.print(f"{runs} runs ({ranked} ranked); report written to {result.markdown_path} and {result.html_path} "
                  f"({images} images in {result.out_dir / 'img'}/)")


def _finite(value: Any) -> Any:
    """NaN and infinities as null, so the output stays strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _as_json(result: Report) -> dict:
    from harness.report.bounds import point_bounds  # noqa: PLC0415

    regressions = result.regressions
    return {
        "out_dir": str(result.out_dir), "report_md": str(result.markdown_path), "index_html": str(result.html_path),
        "images": [str(result.out_dir / f.path) for f in result.document.figures()],
        "runs": result.results.frame().to_dict(orient="records"),
        "leaderboards": [{"workload": b.point[0], "settings": b.point[1], "rps": b.point[2],
                          "ranked_by": "goodput" if b.by_goodput else "mean_jct_s", "not_like_for_like": b.mismatch,
                          "reference": b.reference, "bounds": point_bounds(runs),
                          "ranking": b.ranking.to_dict(orient="records")}
                         for b, (_, runs) in zip(result.leaderboards, result.results.points(), strict=True)],
        "regressions": None if regressions is None else {
            kind: [{"workload": c.point[0], "settings": c.point[1], "rps": c.point[2], "backend": c.backend,
                    "metric": c.metric, "baseline": c.baseline, "current": c.current, "change": c.delta,
                    "change_percent": c.percent, "threshold": c.threshold, "seeds": c.seeds} for c in changes]
            for kind, changes in (("regressions", regressions.regressions), ("improvements", regressions.improvements))
        } | {"matched": regressions.matched,
             "unmatched": [*regressions.only_current["run_id"], *regressions.only_baseline["run_id"]]},
    }
