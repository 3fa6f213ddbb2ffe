"""`mars-bench report`: rankings that follow the runs' summaries, the same tables in Markdown and HTML, images
that exist, regressions between two real result sets, and the page in a real headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.config import RunConfig
from harness.experiment import run_experiment
from harness.report.load import load_results
from harness.report.style import DPI, FIGURE_WIDTH_IN, MAX_HEIGHT_IN

BACKENDS, SEEDS = ("vllm", "mars"), (1, 2)
CHROMIUM = Path("/usr/bin/chromium")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _grid(root: Path, loads: tuple[float, ...], **settings: float) -> Path:
    for rps in loads:
        for backend in BACKENDS:
            for seed in SEEDS:
                run_experiment(RunConfig(backend=backend, workload="swe-smoke", rps=rps, seed=seed, **settings), root)
    return root


@pytest.fixture(scope="session")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real runs: `base` at two loads, `slow` (half the GPU, a deliberately worse setting) at the higher one."""
    root = tmp_path_factory.mktemp("results")
    return {"base": _grid(root / "base", (0.5, 1.0)), "slow": _grid(root / "slow", (1.0,), gpu_share=0.5)}


@pytest.fixture(scope="session")
def report(sets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert main(["report", str(sets["base"]), "--out", str(out)]) == 0
    return out


# ------------------------------------------------------------------------------------------- parsing
def md_tables(text: str) -> list[tuple[str, list[list[str]]]]:
    """(title, header + rows) of every table in report.md."""
    tables, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| ") and not lines[i - 1].startswith("|"):
            title = lines[i - 2].strip("*")
            rows = []
            for row in lines[i:]:
                if not row.startswith("|"):
                    break
                cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row)[1:-1]]
                if not all(re.fullmatch(r"-+:?", c) for c in cells):
                    rows.append(cells)
            tables.append((title, rows))
    return tables


class PageParser(HTMLParser):
    """Tables (with the caption before each) and image sources of index.html."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[tuple[str, list[list[str]]]] = []
        self.images: list[str] = []
        self._caption: list[str] | None = None
        self._cell: list[str] | None = None
        self._title = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        if tag == "p" and attr.get("class") == "caption":
            self._caption = []
        elif tag == "table":
            self.tables.append((self._title, []))
        elif tag == "tr":
            self.tables[-1][1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(str(attr["src"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "p" and self._caption is not None:
            self._title, self._caption = "".join(self._caption), None
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[-1][1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        for buffer in (self._caption, self._cell):
            if buffer is not None:
                buffer.append(data)


def page(report: Path) -> PageParser:
    parser = PageParser()
    parser.feed((report / "index.html").read_text())
    return parser


def summaries(root: Path) -> list[dict]:
    return [{**json.loads((d / "run.json").read_text())["config"], **json.loads((d / "summary.json").read_text())}
            for d in sorted(root.iterdir()) if (d / "summary.json").exists()]


def _not_json(name: str) -> None:
    raise AssertionError(f"{name} is not JSON")


# -------------------------------------------------------------------------------------------- tests
def test_runs_are_found_at_any_depth_and_grouped_by_settings_and_load(tmp_path: Path) -> None:
    root = tmp_path / "results"
    for cores in (1, 8):
        run_experiment(RunConfig(backend="mars", workload="swe-smoke", rps=1.0, seed=1, tool_cores=cores),
                       root / f"cores-{cores}")
    run_experiment(RunConfig(backend="mars", workload="swe-smoke", seed=1, tool_cores=8), root)  # the preset's rps: 1
    results = load_results([root, root / "cores-1"])
    assert len(results.runs) == 3
    assert [point for point, _ in results.points()] == [("swe-smoke", "tool_cores=1", 1.0),
                                                        ("swe-smoke", "tool_cores=8", 1.0)]
    left_out = [r for r in results.runs if not r.included]  # of the two tool_cores=8 runs, the older
    assert len(left_out) == 1 and left_out[0].settings == "tool_cores=8"
    assert left_out[0].excluded.startswith("superseded by ")


def test_ranking_per_load_point_follows_the_run_summaries(report: Path, sets: dict[str, Path]) -> None:
    tables = dict(md_tables((report / "report.md").read_text()))
    by_point: dict[float, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for s in summaries(sets["base"]):
        by_point[s["rps"]][s["backend"]].append(s)
    assert len(by_point) == 2
    for rps, backends in by_point.items():
        header, *rows = tables[f"swe-smoke · rps {rps:g}"]
        goodput = {b: float(np.mean([s["goodput"] for s in runs])) for b, runs in backends.items()}
        jct = {b: float(np.mean([s["mean_jct_s"] for s in runs])) for b, runs in backends.items()}
        shown = {b: (-float(f"{goodput[b]:.3f}"), float(f"{jct[b]:.2f}")) for b in backends}  # as printed
        expected = sorted(backends, key=lambda b: shown[b])
        column = {name: i for i, name in enumerate(header)}
        tied = shown[expected[0]] == shown[expected[1]]
        if tied:  # in either order, one rank
            assert sorted(r[column["backend"]] for r in rows) == sorted(expected)
        else:
            assert [r[column["backend"]] for r in rows] == expected
        assert [r[column["rank"]] for r in rows] == (["1", "1"] if tied else ["1", "2"])
        for row in rows:
            backend = row[column["backend"]]
            assert row[column["seeds"]] == str(len(SEEDS))
            values = [s["mean_jct_s"] for s in backends[backend]]
            half = 12.706205 * np.std(values, ddof=1) / np.sqrt(2)  # t(0.975, 1) x the standard error
            assert row[column["mean JCT s"]] == \
                f"{jct[backend]:.2f} ± {np.std(values):.2f} [{jct[backend] - half:.2f}, {jct[backend] + half:.2f}]"


def test_markdown_and_html_show_the_same_tables(report: Path) -> None:
    md = md_tables((report / "report.md").read_text())
    html = page(report).tables
    assert [title for title, _ in md] == [title for title, _ in html]
    assert md == html
    titles = [title for title, _ in md]
    assert {"swe-smoke · rps 0.5", "swe-smoke · rps 1", "8 runs", "Software and machines"} <= set(titles)


def test_every_image_exists_and_is_a_png(report: Path) -> None:
    from PIL import Image

    html_images = page(report).images
    md_images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (report / "report.md").read_text())
    assert html_images == md_images
    names = " ".join(html_images)
    for kind in ("jct-cdf", "jct-vs-load", "frontier", "slowdown", "engine-state", "sessions"):
        assert f"img/{kind}-" in names
    for src in html_images:
        assert not re.match(r"[a-z]+://", src)
        path = report / src
        assert path.read_bytes()[:8] == PNG_MAGIC
        with Image.open(path) as image:
            # one width for every figure, none taller than the cap (the old slowdown image was 2,740 px wide)
            assert image.format == "PNG" and image.width == FIGURE_WIDTH_IN * DPI
            assert 300 <= image.height <= MAX_HEIGHT_IN * DPI


def test_panels_fill_their_rows() -> None:
    from harness.report.plots import grid

    assert [grid(n) for n in (1, 2, 3, 4, 5, 6, 7, 8)] == [(1, 1), (1, 2), (1, 3), (2, 2), (2, 3), (2, 3), (3, 3),
                                                           (3, 3)]
    assert all(rows * cols - n < cols for n in range(1, 20) for rows, cols in [grid(n)])  # no empty row


def test_coinciding_distributions_are_named_and_distinct_ones_not() -> None:
    from harness.report.plots import coinciding

    rng = np.random.default_rng(0)
    base = rng.lognormal(3, 1, 400)
    groups = coinciding({"vllm": base, "sglang": base.copy(), "mars": base * 0.5, "infercept": base * 1.001,
                         "concur": base * 0.5})
    assert groups == [["vllm", "sglang", "infercept"], ["mars", "concur"]]
    assert coinciding({"a": base, "b": base * 1.2}) == []


def test_every_backend_has_its_own_line_style_and_marker() -> None:
    from harness.report.style import looks, palette

    names = ["vllm", "sglang", "continuum", "continuum-dy", "autellix", "infercept", "concur", "mars"]
    shown = looks(palette(names))
    assert len({(look["ls"], look["marker"]) for look in shown.values()}) == len(names)
    assert len({look["marker"] for look in shown.values()}) == len(names)


def test_html_is_self_contained(report: Path) -> None:
    text = (report / "index.html").read_text()
    assert "<style>" in text
    assert not re.search(r"""(src|href)=["'](https?:)?//""", text)
    assert "http://" not in text and "https://" not in text


def test_runs_not_completed_are_listed_but_not_ranked(sets: dict[str, Path], tmp_path: Path, run_cli) -> None:
    mixed = tmp_path / "mixed"
    shutil.copytree(sets["base"], mixed)
    victim = next(d for d in sorted(mixed.iterdir()) if "mars" in d.name)
    meta = json.loads((victim / "run.json").read_text())
    failed = mixed / "nested" / "failed-run"
    shutil.copytree(victim, failed)
    (failed / "summary.json").unlink()
    (failed / "run.json").write_text(json.dumps({**meta, "run_id": "failed-run", "status": "failed"}))
    result = run_cli("report", str(mixed), "--out", str(tmp_path / "out"), "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout, parse_constant=_not_json)
    runs = {r["run_id"]: r for r in data["runs"]}
    assert len(runs) == 9 and runs["failed-run"]["excluded"] == "status failed"
    assert all(r["seeds"] == 2 for board in data["leaderboards"] for r in board["ranking"])
    md = (tmp_path / "out" / "report.md").read_text()
    # the backend first, so a wide Runs table never hides it; the long ids after what tells runs apart
    assert re.search(r"\| mars \| swe-smoke \| [^|]+ \| failed \| status failed \| ([^|]+ \| ){6}failed-run \|", md)
    assert "9 runs under" in md and "8 ranked. 1 left out of rankings" in md



@pytest.mark.parametrize("reasons", [["3 calls failed"], ["4 of 16 sessions did not complete"]])
def test_an_invalid_run_is_listed_but_not_ranked_even_when_newer(sets: dict[str, Path], tmp_path: Path, run_cli,
                                                                 reasons: list[str]) -> None:
    mixed = tmp_path / "mixed"
    shutil.copytree(sets["base"], mixed)
    victim = next(d for d in sorted(mixed.iterdir()) if "mars" in d.name)
    meta = json.loads((victim / "run.json").read_text())
    invalid = mixed / "invalid-run"  # the same point, backend and seed, run again later: calls failed in it
    shutil.copytree(victim, invalid)
    (invalid / "run.json").write_text(json.dumps({**meta, "run_id": "invalid-run", "started": "9999-01-01T00:00:00"}))
    summary = json.loads((invalid / "summary.json").read_text())
    (invalid / "summary.json").write_text(json.dumps({**summary, "valid": False, "invalid_reasons": reasons}))
    result = run_cli("report", str(mixed), "--out", str(tmp_path / "out"), "--json")
    assert result.exit_code == 0, result.stderr
    runs = {r["run_id"]: r for r in json.loads(result.stdout, parse_constant=_not_json)["runs"]}
    assert runs["invalid-run"]["excluded"] == f"invalid: {reasons[0]}"
    assert runs[meta["run_id"]]["excluded"] == ""  # the valid run of the point stays ranked

def test_compare_to_flags_a_worse_setting_with_its_size(sets: dict[str, Path], tmp_path: Path, run_cli) -> None:
    result = run_cli("report", str(sets["slow"]), "--out", str(tmp_path / "out"), "--compare-to", str(sets["base"]),
                     "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)["regressions"]
    base = {(s["backend"], s["seed"]): s for s in summaries(sets["base"]) if s["rps"] == 1.0}
    slow = {(s["backend"], s["seed"]): s for s in summaries(sets["slow"])}
    flagged = {(r["backend"], r["metric"]): r for r in data["regressions"]}
    for backend in BACKENDS:
        before = np.mean([base[(backend, s)]["mean_jct_s"] for s in SEEDS])
        after = np.mean([slow[(backend, s)]["mean_jct_s"] for s in SEEDS])
        assert after > 1.2 * before  # the setting is really worse
        change = flagged[(backend, "mean_jct_s")]
        assert change["change"] == pytest.approx(after - before)
        assert change["change_percent"] == pytest.approx((after - before) / before * 100)
    assert data["improvements"] == []
    assert data["matched"] == 4 and len(data["unmatched"]) == 4  # the base set's rps 0.5 runs
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Regressions" in md and "| gpu_share | 1.0 | 0.5 |" in md
    percent = f"+{flagged[('mars', 'mean_jct_s')]['change_percent']:.1f}%"
    assert percent in md and percent in (tmp_path / "out" / "index.html").read_text()


def test_compare_to_the_other_way_lists_improvements(sets: dict[str, Path], tmp_path: Path, run_cli) -> None:
    result = run_cli("report", str(sets["base"]), "--out", str(tmp_path), "--compare-to", str(sets["slow"]))
    assert result.exit_code == 0, result.stderr
    assert "0 regression(s)" in result.stdout and "Improvements" in result.stdout


def test_fail_on_regression_sets_the_exit_code(sets: dict[str, Path], tmp_path: Path, run_cli) -> None:
    worse = run_cli("report", str(sets["slow"]), "--out", str(tmp_path / "a"), "--compare-to", str(sets["base"]),
                    "--fail-on-regression")
    assert worse.exit_code == 1
    assert worse.stderr.count("\n") == 1 and "regression(s)" in worse.stderr
    same = run_cli("report", str(sets["base"]), "--out", str(tmp_path / "b"), "--compare-to", str(sets["base"]),
                   "--fail-on-regression")
    assert same.exit_code == 0 and "0 regression(s), 0 improvement(s)" in same.stdout


@pytest.mark.parametrize("case", ["missing", "empty", "bad-session", "bad-reference"])
def test_bad_input_is_one_line_and_exit_2(case: str, sets: dict[str, Path], tmp_path: Path, run_cli) -> None:
    (tmp_path / "empty").mkdir()
    args = {"missing": [str(tmp_path / "nope")], "empty": [str(tmp_path / "empty")],
            "bad-session": [str(sets["base"]), "--sessions", "no-such-session"],
            "bad-reference": [str(sets["base"]), "--reference", "sglang"]}[case]
    result = run_cli("report", *args, "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert result.stderr.startswith("mars-bench: error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_chosen_sessions_get_the_timeline(sets: dict[str, Path], tmp_path: Path, run_cli) -> None:
    session_id = "swe-smoke-1-00002"
    result = run_cli("report", str(sets["slow"]), "--out", str(tmp_path), "--sessions", f"{session_id},not-there")
    assert result.exit_code == 0, result.stderr
    assert "chosen with --sessions" in (tmp_path / "report.md").read_text()


def test_report_opens_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.fail("/usr/bin/chromium is missing: apt-get install -y --no-install-recommends chromium")
    from PIL import Image
    from playwright.sync_api import sync_playwright

    shot = tmp_path / "page.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            view = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            view.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
            view.on("pageerror", lambda e: errors.append(str(e)))
            view.goto((report / "index.html").as_uri(), wait_until="load")
            images = view.evaluate("Array.from(document.images, i => [i.complete, i.naturalWidth])")
            view.click("table >> nth=0 >> th:text-is('mean JCT s')")  # the sort script runs without error
            sorted_jct = view.eval_on_selector_all(
                "table >> nth=0 >> tbody tr", "rows => rows.map(r => parseFloat(r.cells[4].textContent))")
            view.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert len(images) == 6 and all(complete and width > 0 for complete, width in images)
    assert sorted_jct == sorted(sorted_jct)
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=float)
    assert pixels.shape[1] == 1280 and pixels.shape[0] > 3000  # the whole page: tables and six figures
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100


def test_bounds_stand_beside_every_leaderboard(report: Path) -> None:
    text = (report / "report.md").read_text()
    boards = [t for t, _ in md_tables(text) if t.startswith("swe-smoke · rps")]
    assert len(boards) == 2
    assert text.count("Bounds from the workload and testbed") == len(boards)
    assert "ideal prefix-cache hit rate" in text and "throughput bound" in text
    for _, rows in md_tables(text):
        if "hit bound" in rows[0]:
            hit, bound = rows[0].index("cache hit"), rows[0].index("hit bound")
            for row in rows[1:]:  # the measured rate never above the Bélády bound of the run's own order
                assert float(row[hit].split()[0]) <= float(row[bound].split()[0]) + 1e-9


def test_the_report_draws_without_warnings(sets: dict[str, Path], tmp_path: Path) -> None:
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["report", str(sets["base"]), "--out", str(tmp_path)]) == 0
    assert [str(w.message) for w in caught if "palette" in str(w.message) or w.category is UserWarning] == []


def test_runs_with_trace_arrivals_get_the_figures_that_need_no_load(tmp_path: Path) -> None:
    """A workload file replayed at its own timestamps has no offered load: no JCT-vs-load or frontier figure
    (not an empty one, nor a crash), the rest drawn, the bounds beside the leaderboard."""
    import warnings

    from workloads.model import Session, ToolCall, Turn, save_sessions

    trace = tmp_path / "trace.jsonl"
    save_sessions([Session(id=f"t{i}", arrival_s=0.4 * i, prefix_id="sys", prefix_tokens=64,
                           turns=(Turn(new_tokens=80, output_tokens=8, tool=ToolCall(name="t", cpu_seconds=0.2)),
                                  Turn(new_tokens=40, output_tokens=8))) for i in range(4)], trace)
    for backend in BACKENDS:
        run_experiment(RunConfig(backend=backend, workload=str(trace), seed=1), tmp_path / "runs")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    assert [str(w.message) for w in caught if w.category is UserWarning] == []
    images = " ".join(page(tmp_path / "out").images)
    assert "jct-cdf" in images and "jct-vs-load" not in images and "frontier" not in images
    assert "Bounds from the workload and testbed" in (tmp_path / "out" / "report.md").read_text()
