"""vllm bench serve's reporting and exports: --percentile-metrics/--metric-percentiles, --save-detailed,
--label/--metadata, and --result-format vllm, whose keys are held to those vllm/benchmarks/serve.py writes
(read from the installed vLLM's source, so a change on its side fails here)."""

from __future__ import annotations

import ast
import importlib.util
import json
import math
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from harness.exports import DETAILED_LISTS
from harness.metrics import CALL_METRICS, DEFAULT_PERCENTILE_METRICS, DEFAULT_PERCENTILES, percentile_word
from tests.test_bad_input import one_line

# What vllm/benchmarks/serve.py (vLLM 0.x, the version this repository pins) writes, pinned here so the test
# says what it expects even where vLLM is not installed; where it is, `test_the_pinned_keys_are_vllms` holds
# them to its source.
PINNED = {
    "header": ["date", "endpoint_type", "backend", "label", "model_id", "tokenizer_id", "num_prompts",
               "request_rate", "burstiness", "max_concurrency"],
    "result": ["duration", "completed", "failed", "total_input_tokens", "total_output_tokens", "request_throughput",
               "request_goodput", "output_throughput", "total_token_throughput", "input_lens", "output_lens", "ttfts",
               "itls", "latencies", "start_times", "queue_times", "generated_texts", "errors",
               "max_output_tokens_per_s", "max_concurrent_requests", "rtfx"],
    "detailed": ["input_lens", "output_lens", "start_times", "ttfts", "itls", "generated_texts", "errors"],
    "stats": ["mean", "median", "std", "p"],
    "metrics": ["ttft", "tpot", "itl", "e2el"],
    "default_percentile_metrics": "ttft,tpot,itl",
    "default_metric_percentiles": "99",
}


def _serve_py() -> Path | None:
    """vLLM's serve.py, found without importing vLLM (slow, and not needed to read a file)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "benchmarks" / "serve.py"
    return path if path.is_file() else None


@cache
def vllm_layout() -> dict[str, Any]:
    """The keys serve.py writes, read from its syntax tree (PINNED's shape)."""
    path = _serve_py()
    if path is None:
        return PINNED
    tree = ast.parse(path.read_text())
    funcs = {n.name: n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    bench = funcs["benchmark"]
    result = next(n for n in ast.walk(bench) if isinstance(n, ast.Dict)
                  and any(isinstance(k, ast.Constant) and k.value == "failed" for k in n.keys))
    main = next(f for f in funcs.values() if any(
        isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Constant) and n.slice.value == "date"
        and isinstance(n.value, ast.Name) and n.value.id == "result_json" for n in ast.walk(f)))
    header = [t.slice.value for stmt in main.body if isinstance(stmt, ast.Assign) for t in stmt.targets
              if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name) and t.value.id == "result_json"
              and isinstance(t.slice, ast.Constant)]  # unconditional ones only: not ramp-up's
    detailed = next(
        [e.value for e in loop.iter.elts]
        for node in ast.walk(main) if isinstance(node, ast.If) and isinstance(node.test, ast.UnaryOp)
        and isinstance(node.test.operand, ast.Attribute) and node.test.operand.attr == "save_detailed"
        for loop in node.body if isinstance(loop, ast.For) and isinstance(loop.iter, ast.List))
    stats = [n.slice.values[0].value for n in ast.walk(funcs["process_one_metric"])
             if isinstance(n, ast.Subscript) and isinstance(n.ctx, ast.Store) and isinstance(n.slice, ast.JoinedStr)]
    metrics = [c.args[0].value for c in ast.walk(bench) if isinstance(c, ast.Call)
               and isinstance(c.func, ast.Name) and c.func.id == "process_one_metric"
               and isinstance(c.args[0], ast.Constant)]
    defaults = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument" \
                and node.args and isinstance(node.args[0], ast.Constant):
            for kw in node.keywords:
                if kw.arg == "default" and isinstance(kw.value, ast.Constant):
                    defaults[node.args[0].value] = kw.value.value
    default_metrics = next(n.value.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                           and any(isinstance(t, ast.Name) and t.id == "default_percentile_metrics" for t in n.targets))
    return {"header": header, "result": [k.value for k in result.keys], "detailed": detailed,
            "stats": [s.rstrip("_") for s in stats], "metrics": metrics,
            "default_percentile_metrics": default_metrics,
            "default_metric_percentiles": defaults["--metric-percentiles"]}


def expected_keys(metrics: tuple[str, ...], percentiles: tuple[float, ...], detailed: bool,
                  metadata: tuple[str, ...] = ()) -> set[str]:
    layout = vllm_layout()
    result = set(layout["result"]) - (set() if detailed else set(layout["detailed"]))
    stats = {f"{stat}_{m}_ms" for m in metrics for stat in ("mean", "median", "std")}
    stats |= {f"p{percentile_word(p)}_{m}_ms" for m in metrics for p in percentiles}
    return set(layout["header"]) | set(metadata) | result | stats


def test_the_pinned_keys_are_vllms() -> None:
    if _serve_py() is None:
        pytest.skip("vLLM is not installed: the pinned keys stand in for its source")
    layout = vllm_layout()
    assert {k: v for k, v in layout.items() if k != "metrics"} == {k: v for k, v in PINNED.items() if k != "metrics"}
    # the metrics we measure are vLLM's generative ones; its two client-queue ones are `--max-concurrency` only
    assert set(layout["metrics"]) == {*PINNED["metrics"], "client_queue_time", "e2el_including_client_queue"}
    assert set(CALL_METRICS) == set(PINNED["metrics"])


def test_our_defaults_are_vllms() -> None:
    layout = vllm_layout()
    assert ",".join(DEFAULT_PERCENTILE_METRICS) == layout["default_percentile_metrics"]
    assert [float(p) for p in layout["default_metric_percentiles"].split(",")] == list(DEFAULT_PERCENTILES)
    assert set(DETAILED_LISTS) == set(layout["detailed"])


def run_dir(tmp_path: Path) -> Path:
    (path,) = [p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return path


RUN = ("run", "-b", "vllm", "-w", "tiny", "--sessions", "3")


def test_vllm_result_has_the_keys_vllm_bench_serve_writes(run_cli, tmp_path: Path) -> None:
    result = run_cli(*RUN, "--results-dir", str(tmp_path), "--result-format", "vllm")
    assert result.exit_code == 0, result.stderr
    out = json.loads((run_dir(tmp_path) / "vllm_result.json").read_text())
    assert set(out) == expected_keys(DEFAULT_PERCENTILE_METRICS, DEFAULT_PERCENTILES, detailed=False)
    summary = json.loads((run_dir(tmp_path) / "summary.json").read_text())
    for key in ("duration", "completed", "failed", "total_input_tokens", "total_output_tokens", "request_throughput",
                "output_throughput", "total_token_throughput", "max_concurrent_requests", "mean_ttft_ms",
                "p99_itl_ms"):
        assert out[key] == summary[key], key
    assert out["num_prompts"] == summary["completed"] + summary["failed"] == len(out["latencies"])
    assert out["request_rate"] == 1.0 and out["backend"] == "vllm" and out["label"] is None  # tiny's rate
    assert not (run_dir(tmp_path) / "calls_detailed.jsonl").exists()


def test_save_detailed_with_chosen_percentiles_and_metadata(run_cli, tmp_path: Path) -> None:
    result = run_cli(*RUN, "--results-dir", str(tmp_path), "--result-format", "vllm", "--save-detailed",
                     "--percentile-metrics", "e2el,itl", "--metric-percentiles", "50,99.9", "--label", "nightly",
                     "--metadata", "tp=1", "--metadata", "gpu = h100 ")
    assert result.exit_code == 0, result.stderr
    path = run_dir(tmp_path)
    out = json.loads((path / "vllm_result.json").read_text())
    assert set(out) == expected_keys(("e2el", "itl"), (50.0, 99.9), detailed=True, metadata=("tp", "gpu"))
    assert (out["label"], out["tp"], out["gpu"]) == ("nightly", "1", "h100")
    calls = pd.read_parquet(path / "calls.parquet").sort_values(["arrival_s", "session_id", "turn"])
    assert out["input_lens"] == calls["prompt_tokens"].tolist()
    assert out["output_lens"] == calls["output_tokens"].tolist()
    assert out["ttfts"] == pytest.approx((calls["first_token_s"] - calls["arrival_s"]).tolist())
    gaps = [g for gap in out["itls"] for g in gap]
    assert np.mean(gaps) * 1000 == pytest.approx(out["mean_itl_ms"])
    assert np.percentile(gaps, 99.9) * 1000 == pytest.approx(out["p99.9_itl_ms"])
    assert np.median(out["latencies"]) * 1000 == pytest.approx(out["p50_e2el_ms"])
    assert out["generated_texts"] == [""] * len(calls) and out["errors"] == [""] * len(calls)
    # the per-call JSONL: vllm's per-request fields under singular names, with the session and turn
    lines = [json.loads(line) for line in (path / "calls_detailed.jsonl").read_text().splitlines()]
    assert len(lines) == len(calls)
    assert [(r["session_id"], r["turn"]) for r in lines] == list(zip(calls["session_id"], calls["turn"], strict=True))
    assert [r["itl"] for r in lines] == out["itls"] and [r["latency"] for r in lines] == out["latencies"]
    assert all(len(r["itl"]) == r["output_len"] - 1 for r in lines)  # the sim streams one token per step
    assert {r["queue_time"] for r in lines if r["turn"] > 0} == {0.0}
    # the summary and the terminal block carry exactly the chosen percentiles
    summary = json.loads((path / "summary.json").read_text())
    assert {k for k in summary if k.startswith("p") and k.endswith("_ms")} == \
        {"p50_e2el_ms", "p99.9_e2el_ms", "p50_itl_ms", "p99.9_itl_ms"}
    block = result.stdout
    assert "P99.9 ITL (ms):" in block and "P50 E2EL (ms):" in block
    assert "Time to First Token" not in block and "P99 ITL" not in block and "P99 E2EL" not in block
    # label and metadata: in run.json, shown by `results show`
    config = json.loads((path / "run.json").read_text())["config"]
    assert (config["label"], config["metadata"]) == ("nightly", {"tp": "1", "gpu": "h100"})
    shown = run_cli("results", "show", "latest", "--results-dir", str(tmp_path))
    assert "nightly" in shown.stdout and "tp=1, gpu=h100" in shown.stdout and "vllm_result.json" in shown.stdout
    shown = json.loads(run_cli("results", "show", "latest", "--results-dir", str(tmp_path), "--json").stdout)
    assert (shown["label"], shown["metadata"]) == ("nightly", {"tp": "1", "gpu": "h100"})


def test_a_run_without_the_flags_writes_what_it_wrote_before(run_cli, tmp_path: Path) -> None:
    assert run_cli(*RUN, "--results-dir", str(tmp_path)).exit_code == 0
    path = run_dir(tmp_path)
    assert not (path / "vllm_result.json").exists() and not (path / "calls_detailed.jsonl").exists()
    config = json.loads((path / "run.json").read_text())["config"]
    assert not {"label", "metadata", "percentile_metrics", "metric_percentiles", "save_detailed",
                "result_format"} & set(config)  # at their defaults they stay out (a sweep's config hash holds)


def test_a_warm_up_is_not_in_the_duration(run_cli, tmp_path: Path) -> None:
    assert run_cli(*RUN, "--results-dir", str(tmp_path / "w"), "--warmup-sessions", "2", "--json").exit_code == 0
    summary = json.loads((run_dir(tmp_path / "w") / "summary.json").read_text())
    start = summary["load_controls"]["warmup_end_s"]
    calls = pd.read_parquet(run_dir(tmp_path / "w") / "calls.parquet")
    assert start > 0 and summary["duration"] == pytest.approx(calls["finish_s"].max() - start)


@pytest.mark.parametrize(("args", "needle"), [
    (["--percentile-metrics", "ttft,goodput"], "--percentile-metrics: unknown metric 'goodput'"),
    (["--metric-percentiles", "99,101"], "--metric-percentiles: 101 is not between 0 and 100"),
    (["--metric-percentiles", "p99"], "--metric-percentiles: 'p99' is not a number"),
    (["--metadata", "novalue"], "--metadata: 'novalue' is not KEY=VALUE"),
    (["--metadata", "=x"], "--metadata: '=x' is not KEY=VALUE"),
    (["--metadata", "a=1", "--metadata", "a=2"], "--metadata: a given twice"),
    (["--result-format", "csv"], "'csv' is not one of 'mars', 'vllm'"),
])
@pytest.mark.parametrize("command", ["run", "compare", "sweep"])
def test_bad_export_flags_are_one_line(run_cli, tmp_path: Path, command: str, args: list[str], needle: str) -> None:
    one_line(run_cli(command, "-w", "tiny", *args, "--results-dir", str(tmp_path)), needle)
    assert not list(tmp_path.glob("*/run.json"))


def test_compare_and_sweep_runs_take_the_export_flags(run_cli, tmp_path: Path) -> None:
    result = run_cli("sweep", "-b", "vllm", "-w", "tiny", "--sessions", "2", "--metric-percentiles", "90",
                     "--percentile-metrics", "ttft", "--result-format", "vllm", "--results-dir", str(tmp_path),
                     "--out", str(tmp_path / "sweep"), "--json")
    assert result.exit_code == 0, result.stderr
    (summary_path,) = (tmp_path / "sweep").glob("*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert {k for k in summary if k.startswith("p") and k.endswith("_ms")} == {"p90_ttft_ms"}
    out = json.loads((summary_path.parent / "vllm_result.json").read_text())
    assert set(out) == expected_keys(("ttft",), (90.0,), detailed=False)
    assert not math.isnan(out["p90_ttft_ms"])


def test_a_summary_rebuilt_from_the_tables_keeps_the_runs_choices(run_cli, tmp_path: Path) -> None:
    """A run that wrote no summary.json (killed): `results show` computes one with the run's percentiles and
    its benchmark start (the warm-up's end), the figures summary.json would have held."""
    assert run_cli(*RUN, "--results-dir", str(tmp_path), "--warmup-sessions", "1", "--metric-percentiles", "90",
                   "--percentile-metrics", "e2el").exit_code == 0
    path = run_dir(tmp_path)
    written = json.loads((path / "summary.json").read_text())
    (path / "summary.json").unlink()
    rebuilt = json.loads(run_cli("results", "show", "latest", "--results-dir", str(tmp_path), "--json").stdout)
    for key in ("duration", "p90_e2el_ms", "request_throughput"):
        assert rebuilt["summary"][key] == pytest.approx(written[key]), key
    assert "p99_ttft_ms" not in rebuilt["summary"]


def test_the_settings_take_set_too(run_cli, tmp_path: Path) -> None:
    one_line(run_cli(*RUN, "--set", "metric_percentiles=200", "--results-dir", str(tmp_path)),
             "metric_percentiles: 200 is not between 0 and 100")
    one_line(run_cli(*RUN, "--set", "percentile_metrics=ttft,jct", "--results-dir", str(tmp_path)),
             "percentile_metrics: unknown metric 'jct'")
    assert run_cli(*RUN, "--set", "metric_percentiles=90", "--results-dir", str(tmp_path)).exit_code == 0
    assert "p90_ttft_ms" in json.loads((run_dir(tmp_path) / "summary.json").read_text())
