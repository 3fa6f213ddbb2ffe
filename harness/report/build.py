"""The whole report: load the runs, rank them, draw the figures, assemble the document and write
report.md and index.html (images under img/)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from harness.compare import format_ci
from harness.errors import BadInput
from harness.report import plots, timelines
from harness.report.bounds import bounds_text, with_bounds
from harness.report.doc import Block, Code, Document, Figure, Section, Table, Text
from harness.report.leaderboard import NOT_LIKE_FOR_LIKE, Leaderboard, leaderboard
from harness.report.load import ResultSet, Run, common_config, load_results, representatives, session_frame
from harness.report.regressions import Regressions, compare_sets
from harness.report.render import html_page, markdown
from harness.report.style import palette

Progress = Callable[[str, int, int], None]  # (phase, steps done, steps in the phase)
GANTT_SESSIONS = 4  # sessions in the per-session timeline when none are chosen
FIGURES_PER_SETUP = 6  # drawn by _setup_section (one may be left out), counted for the progress


@dataclass(frozen=True)
class Report:
    out_dir: Path
    results: ResultSet
    leaderboards: list[Leaderboard]
    regressions: Regressions | None
    document: Document

    @property
    def warning(self) -> str:
        return mismatch_warning(self.leaderboards)

    @property
    def markdown_path(self) -> Path:
        return self.out_dir / "report.md"

    @property
    def html_path(self) -> Path:
        return self.out_dir / "index.html"


def build_report(roots: Sequence[Path], out_dir: Path, compare_to: Path | None = None,
                 sessions: Sequence[str] | None = None, reference: str | None = None,
                 progress: Progress | None = None, include_noisy: bool = False) -> Report:
    """Read the runs under `roots` (and `compare_to`), write the report into `out_dir`. `reference`: the backend
    speedups are against (default vllm, where it ran). `progress(phase, done, total)` hears of each step. Runs
    on a noisy host are listed but not ranked unless `include_noisy`."""
    step = progress or (lambda phase, done, total: None)
    step("reading runs", 0, 1)
    results = load_results(roots, include_noisy)
    baseline = load_results([compare_to], include_noisy) if compare_to is not None else None
    step("reading runs", 1, 1)
    results = with_bounds(results, step)
    if reference is not None and reference not in {r.backend for r in results.runs}:
        ran = ", ".join(sorted({r.backend for r in results.runs}))
        raise BadInput(f"--reference {reference}: no run of that backend under {', '.join(map(str, roots))} "
                       f"(backends: {ran})")
    boards = [leaderboard(point, runs, reference) for point, runs in results.points()]
    colours = palette(r.backend for r in results.runs)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"--out {out_dir}: cannot create it ({e.strerror or e})") from None
    setups = [plots.Setup(workload, settings, runs, colours, out_dir)
              for (workload, settings), runs in results.panels()]
    if sessions and not any(_known_sessions(s.runs) & set(sessions) for s in setups):
        raise BadInput(f"--sessions: none of {', '.join(sessions)} is in the runs shown (ids look like "
                       f"{_example_ids(results)})")
    total, drawn = FIGURES_PER_SETUP * len(setups), 0

    def drew() -> None:
        nonlocal drawn
        drawn += 1
        step("figures", drawn, total)

    step("figures", 0, total)
    sections = [_setup_section(s, boards, sessions, drew) for s in setups]
    regressions = compare_sets(results, baseline) if baseline is not None else None
    if regressions is not None:
        sections.append(_regressions_section(regressions))
    sections += [_runs_section(results), _provenance_section(results)]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    document = Document("mars-bench leaderboard", f"Generated {stamp} by `mars-bench report`.",
                        _intro(results, regressions, boards), sections)
    report = Report(out_dir, results, boards, regressions, document)
    step("writing", 0, 1)
    report.markdown_path.write_text(markdown(document))
    report.html_path.write_text(html_page(document))
    step("writing", 1, 1)
    return report


def mismatch_warning(boards: Sequence[Leaderboard]) -> str:
    """One line when the backends of some leaderboard ran other seeds or workloads; "" when none did."""
    odd = [b for b in boards if b.mismatch]
    if not odd:
        return ""
    more = f" (and {len(odd) - 1} more)" if len(odd) > 1 else ""
    points = "1 load point" if len(odd) == 1 else f"{len(odd)} load points"
    return (f"backends compared over different seeds or workloads at {points}, marked {NOT_LIKE_FOR_LIKE}: "
            f"{odd[0].title}: {odd[0].mismatch}{more}")


def _intro(results: ResultSet, regressions: Regressions | None, boards: Sequence[Leaderboard]) -> list[Block]:
    ranked, total = len(results.included), len(results.runs)
    roots = ", ".join(f"`{r}`" for r in results.roots)
    text = f"{total} runs under {roots}; {ranked} ranked."
    if ranked < total:
        text += (f" {total - ranked} left out of rankings and plots (not completed or invalid, or superseded by a "
                 "newer run of the same point): see Runs.")
    blocks: list[Block] = [Text(text)]
    if warning := mismatch_warning(boards):
        blocks.append(Text(f"Warning: {warning}."))
    if regressions is not None:
        blocks.append(Text(f"Against `{regressions.baseline}`: {len(regressions.regressions)} regression(s), "
                           f"{len(regressions.improvements)} improvement(s); see Regressions."))
    return blocks


def _setup_section(setup: plots.Setup, boards: Sequence[Leaderboard], sessions: Sequence[str] | None,
                   drew: Callable[[], None] = lambda: None) -> Section:
    mine = [b for b in boards if b.point[:2] == (setup.workload, setup.settings)]
    blocks: list[Block] = []
    for board in mine:
        blocks.append(board.table())
        at_point = [r for r in setup.runs if r.point == board.point or
                    (r.point[:2] == board.point[:2] and math.isnan(r.rps) and math.isnan(board.point[2]))]
        if (line := bounds_text(at_point)) is not None:
            blocks.append(line)
    frame = session_frame(setup.runs)
    alpha = next((r.figure("goodput_alpha") for r in setup.runs if r.summary), 3.0)
    reps = representatives(setup.runs)
    draw: list[Callable[[], Figure | None]] = [
        lambda: plots.jct_cdf(setup, frame), lambda: plots.jct_vs_load(setup), lambda: plots.frontier(setup),
        lambda: plots.slowdown(setup, frame, alpha), lambda: timelines.engine_state(setup, reps),
        lambda: _session_figure(setup, reps, mine[-1].order if mine else [], sessions),
    ]
    figures = []
    for make in draw:
        figures.append(make())
        drew()
    blocks += [f for f in figures if f is not None]
    return Section(setup.title, blocks)


def _session_figure(setup: plots.Setup, reps: list[Run], ranking: list[str],
                    sessions: Sequence[str] | None) -> Figure | None:
    """The per-session timeline: the chosen sessions, else the longest of the MARS run (or the best backend's)."""
    if sessions:
        known = _known_sessions(reps)
        ids = [s for s in sessions if s in known]
        return timelines.session_timeline(setup, reps, ids, "chosen with --sessions") if ids else None
    by_backend = {r.backend: r for r in reps}
    source = by_backend.get("mars") or next((by_backend[b] for b in ranking if b in by_backend), None)
    if source is None:
        return None
    ids = timelines.longest_sessions(source, GANTT_SESSIONS)
    return timelines.session_timeline(setup, reps, ids, f"with the largest JCT in the {source.backend} run")


def _known_sessions(runs: Sequence[Run]) -> set[str]:
    """Session ids of the runs whose per-session timeline is drawn."""
    return {sid for run in representatives(runs) for sid in run.record.sessions()["session_id"]}


def _example_ids(results: ResultSet) -> str:
    run = next(iter(results.included), None)
    return ", ".join(run.record.sessions()["session_id"].head(2)) if run else "-"


def _regressions_section(result: Regressions) -> Section:
    intro = Text(f"Current: `{result.current}`; baseline: `{result.baseline}`. {result.matched} runs matched by "
                 "workload, settings, rps, backend and seed.")
    return Section("Regressions", [intro, *result.tables()])


def _runs_section(results: ResultSet) -> Section:
    # what tells runs apart comes first and the long ids last, so a table wider than the page, scrolled or
    # not, never hides a backend's name
    columns = ("backend", "workload", "settings", "status", "ranked", "valid", "seed", "rps", "sessions",
               "mean JCT s", "goodput/s", "run", "directory")
    rows = tuple(
        (r.backend, r.workload, r.settings or "-", r.record.status, r.excluded or "yes",
         _yes_no((r.summary or {}).get("valid")), str(r.seed), "-" if math.isnan(r.rps) else f"{r.rps:g}",
         str(r.record.config.get("num_sessions", "-")), format_ci(r.figure("mean_jct_s"), 0),
         format_ci(r.figure("goodput"), 0), r.run_id, _relative(r, results.roots))
        for r in results.runs
    )
    note = ("Every run found; runs not completed or invalid, or superseded by a newer run of the same point, are "
            "not ranked.")
    return Section("Runs", [Table(f"{len(rows)} runs", columns, rows, numeric_from=6, note=note,
                                          numeric_to=11)])


def _yes_no(value: object) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _relative(run: Run, roots: Sequence[Path]) -> str:
    for root in roots:
        try:
            return str(Path(root.name) / run.record.dir.resolve().relative_to(root.resolve()))
        except ValueError:
            continue
    return str(run.record.dir)


def _provenance_section(results: ResultSet) -> Section:
    """Versions, commits and machines of the runs, and the configuration they share."""
    combos: dict[str, list[Run]] = {}
    for run in results.runs:
        meta = run.record.meta
        key = json.dumps([meta.get("versions"), meta.get("git"), meta.get("hardware", {}).get("host")], sort_keys=True)
        combos.setdefault(key, []).append(run)
    packages = list(dict.fromkeys(k for runs in combos.values() for k in runs[0].record.meta.get("versions", {})))
    columns = ("runs", "git commit", *packages, "host", "cpu", "cpus", "gpus")
    rows = []
    for runs in combos.values():
        meta = runs[0].record.meta
        git, hw, versions = meta.get("git") or {}, meta.get("hardware") or {}, meta.get("versions") or {}
        commit = str(git.get("commit") or "-")[:10] + (" (uncommitted changes)" if git.get("dirty") else "")
        rows.append((str(len(runs)), commit, *(str(versions.get(p, "-")) for p in packages), str(hw.get("host", "-")),
                     str(hw.get("cpu", "-")), str(hw.get("cpus", "-")), ", ".join(hw.get("gpus") or []) or "none"))
    shared = common_config([r.record.config for r in results.runs])
    text = ("A run is reproduced from its configuration and seed: the configuration every run shares is below, "
            "the rest (backend, seed, rps, settings) is in the run list; `mars-bench run --set KEY=VALUE` reaches "
            "every key.")
    return Section("Reproducibility", [
        Table("Software and machines", columns, tuple(rows), numeric_from=len(columns)), Text(text),
        Code(json.dumps(shared, indent=2), "Configuration common to every run (JSON)"),
    ])
