"""Per-run figures from the raw tables: hand-computed examples, edge cases, and properties (hypothesis)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.errors import BadInput
from harness.metrics import (
    RunSummary,
    parse_goodput,
    parse_metric_percentiles,
    parse_percentile_metrics,
    per_call_metrics,
    per_session_metrics,
    summarize,
    summary_table_rows,
)
from harness.tables import CALL_COLUMNS, SESSION_COLUMNS, conform, empty_frame

NAN = float("nan")

CALL_DEFAULTS: dict[str, Any] = {
    "session_id": "s0", "turn": 0, "arrival_s": 0.0, "first_scheduled_s": 0.0, "first_token_s": 0.5,
    "finish_s": 1.0, "prompt_tokens": 100, "output_tokens": 2, "cached_tokens": 0, "recomputed_tokens": 0,
    "preemptions": 0, "itl_s": [0.5], "error": None,
}
SESSION_DEFAULTS: dict[str, Any] = {
    "session_id": "s0", "arrival_s": 0.0, "admitted_s": 0.0, "finish_s": 1.0, "completed": True, "num_turns": 1,
    "turns_done": 1, "prompt_tokens": 100, "output_tokens": 2, "llm_s": 1.0, "tool_s": 0.0, "tool_wait_s": 0.0,
    "isolated_jct_s": 1.0,
    "floor_jct_s": NAN,
    "pool_jct_s": NAN,
}


def calls_table(*rows: dict[str, Any]) -> pd.DataFrame:
    """A calls table with the schema's types; columns a row leaves out take CALL_DEFAULTS."""
    if not rows:
        return empty_frame(CALL_COLUMNS)
    return conform(pd.DataFrame([CALL_DEFAULTS | row for row in rows]), CALL_COLUMNS)


def sessions_table(*rows: dict[str, Any]) -> pd.DataFrame:
    if not rows:
        return empty_frame(SESSION_COLUMNS)
    return conform(pd.DataFrame([SESSION_DEFAULTS | row for row in rows]), SESSION_COLUMNS)


def running(**row: Any) -> dict[str, Any]:
    """A session still running when the run stopped."""
    return {"finish_s": NAN, "completed": False} | row


def test_defaults_fill_every_schema_column() -> None:
    assert set(CALL_DEFAULTS) == set(CALL_COLUMNS)
    assert set(SESSION_DEFAULTS) == set(SESSION_COLUMNS)


# ------------------------------------------------------------------------ one small run, worked by hand
# Sessions: A and B completed, C still running.
#   A: arrival 0, admitted 1, finish 11 -> JCT 11, isolated 5 -> slowdown 2.2
#   B: arrival 2, admitted 2, finish 22 -> JCT 20, isolated 4 -> slowdown 5
#   C: arrival 4, admitted 6, running
SESSIONS = [
    {"session_id": "A", "arrival_s": 0.0, "admitted_s": 1.0, "finish_s": 11.0, "isolated_jct_s": 5.0,
     "tool_wait_s": 1.0, "tool_s": 2.0, "llm_s": 6.0},
    {"session_id": "B", "arrival_s": 2.0, "admitted_s": 2.0, "finish_s": 22.0, "isolated_jct_s": 4.0,
     "tool_wait_s": 3.0, "tool_s": 4.0, "llm_s": 17.0},
    running(session_id="C", arrival_s=4.0, admitted_s=6.0, isolated_jct_s=3.0, tool_wait_s=100.0, llm_s=100.0),
]
# Calls (ttft = first_token - arrival, e2el = finish - arrival, tpot = (e2el - ttft) / (out - 1)):
#   a0: ttft 1,   e2el 3,  out 5  -> tpot 2/4 = 0.5,  itl 4 x 0.5
#   a1: ttft 0.2, e2el 3,  out 1  -> tpot undefined,  no itl
#   b0: ttft 3,   e2el 20, out 11 -> tpot 17/10 = 1.7, itl 10 x 1.7, preempted twice, 50 recomputed
#   c0: ttft 1,   e2el 4,  out 3  -> tpot 3/2 = 1.5,  itl 2 x 1.5
#   c1: arrived at 12, never scheduled (not in the cache hit rate), not completed
CALLS = [
    {"session_id": "A", "turn": 0, "arrival_s": 1.0, "first_scheduled_s": 1.5, "first_token_s": 2.0, "finish_s": 4.0,
     "prompt_tokens": 100, "output_tokens": 5, "cached_tokens": 0, "itl_s": [0.5] * 4},
    {"session_id": "A", "turn": 1, "arrival_s": 8.0, "first_scheduled_s": 8.0, "first_token_s": 8.2, "finish_s": 11.0,
     "prompt_tokens": 300, "output_tokens": 1, "cached_tokens": 100, "itl_s": []},
    {"session_id": "B", "turn": 0, "arrival_s": 2.0, "first_scheduled_s": 3.0, "first_token_s": 5.0, "finish_s": 22.0,
     "prompt_tokens": 200, "output_tokens": 11, "cached_tokens": 0, "itl_s": [1.7] * 10, "preemptions": 2,
     "recomputed_tokens": 50},
    {"session_id": "C", "turn": 0, "arrival_s": 6.0, "first_scheduled_s": 6.5, "first_token_s": 7.0, "finish_s": 10.0,
     "prompt_tokens": 150, "output_tokens": 3, "cached_tokens": 50, "itl_s": [1.5, 1.5]},
    {"session_id": "C", "turn": 1, "arrival_s": 12.0, "first_scheduled_s": NAN, "first_token_s": NAN, "finish_s": NAN,
     "prompt_tokens": 500, "output_tokens": 0, "cached_tokens": 0, "itl_s": []},
]


@pytest.fixture(scope="module")
def run() -> RunSummary:
    return summarize(calls_table(*CALLS), sessions_table(*SESSIONS))


def test_per_call_columns() -> None:
    c = per_call_metrics(calls_table(*CALLS))
    assert c["ttft_s"].tolist()[:4] == pytest.approx([1.0, 0.2, 3.0, 1.0])
    assert c["e2el_s"].tolist()[:4] == pytest.approx([3.0, 3.0, 20.0, 4.0])
    assert c["queue_s"].tolist()[:4] == pytest.approx([0.5, 0.0, 1.0, 0.5])
    assert c["tpot_s"][0] == pytest.approx(0.5) and c["tpot_s"][2] == pytest.approx(1.7)
    assert math.isnan(c["tpot_s"][1])  # one output token: no tpot (vLLM)
    assert c["completed"].tolist() == [True, True, True, True, False]
    assert math.isnan(c["ttft_s"][4]) and math.isnan(c["queue_s"][4])


def test_per_session_columns() -> None:
    s = per_session_metrics(sessions_table(*SESSIONS))
    assert s["jct_s"].tolist()[:2] == [11.0, 20.0] and math.isnan(s["jct_s"][2])
    assert s["slowdown"].tolist()[:2] == pytest.approx([11 / 5, 20 / 4]) and math.isnan(s["slowdown"][2])
    assert s["admission_wait_s"].tolist() == [1.0, 0.0, 2.0]


def test_session_counts_and_duration(run: RunSummary) -> None:
    assert (run.num_sessions, run.completed_sessions, run.incomplete_sessions) == (3, 2, 1)
    assert run.duration == 22.0  # the benchmark's start 0 -> last completed finish 22


def test_jct(run: RunSummary) -> None:
    # JCTs 11 and 20: mean 15.5, population std 4.5, linear percentiles 11 + p/100 * 9
    assert run.mean_jct_s == pytest.approx(15.5)
    assert run.std_jct_s == pytest.approx(4.5)
    assert run.p50_jct_s == pytest.approx(15.5)
    assert run.p90_jct_s == pytest.approx(19.1)
    assert run.p95_jct_s == pytest.approx(19.55)
    assert run.p99_jct_s == pytest.approx(19.91)


def test_slowdown_and_goodput(run: RunSummary) -> None:
    # slowdowns 2.2 and 5 (C has none: running); only A is within alpha = 3
    assert run.mean_slowdown == pytest.approx(3.6)
    assert run.p50_slowdown == pytest.approx(3.6)
    assert run.p99_slowdown == pytest.approx(2.2 + 0.99 * 2.8)
    assert run.session_throughput == pytest.approx(2 / 22)
    assert run.goodput == pytest.approx(1 / 22)
    assert run.goodput_alpha == 3.0
    assert run.goodput_fraction == pytest.approx(1 / 3)
    wider = summarize(calls_table(*CALLS), sessions_table(*SESSIONS), alpha=5.0)
    assert wider.goodput == pytest.approx(2 / 22)  # slowdown 5 <= 5 counts


def test_vllm_call_fields(run: RunSummary) -> None:
    assert run.completed == 4 and run.failed == 0
    assert run.total_input_tokens == 100 + 300 + 200 + 150
    assert run.total_output_tokens == 5 + 1 + 11 + 3
    assert run.request_throughput == pytest.approx(4 / 22)
    assert run.output_throughput == pytest.approx(20 / 22)
    assert run.total_token_throughput == pytest.approx(770 / 22)
    assert run.request_goodput is None  # no SLO given


def test_ttft_ms(run: RunSummary) -> None:
    # [1000, 200, 3000, 1000] ms; sorted [200, 1000, 1000, 3000]
    assert run.mean_ttft_ms == pytest.approx(1300)
    assert run.median_ttft_ms == pytest.approx(1000)
    assert run.std_ttft_ms == pytest.approx(math.sqrt((1100**2 + 300**2 + 300**2 + 1700**2) / 4))
    assert run.p99_ttft_ms == pytest.approx(1000 + 0.97 * 2000)  # rank 0.99 * 3 = 2.97


def test_tpot_itl_e2el_ms(run: RunSummary) -> None:
    # tpot over the calls with > 1 output token only: [500, 1700, 1500]
    assert run.mean_tpot_ms == pytest.approx(3700 / 3)
    assert run.median_tpot_ms == pytest.approx(1500)
    # itl pooled over calls: 4 x 500, 10 x 1700, 2 x 1500 -> 16 gaps
    assert run.mean_itl_ms == pytest.approx((4 * 500 + 10 * 1700 + 2 * 1500) / 16)
    assert run.median_itl_ms == pytest.approx(1700)
    assert run.p99_itl_ms == pytest.approx(1700)  # 16 gaps, rank 14.85: between two 1700s
    # e2el [3000, 3000, 20000, 4000]
    assert run.mean_e2el_ms == pytest.approx(7500)
    assert run.median_e2el_ms == pytest.approx(3500)


def test_engine_and_agent_fields(run: RunSummary) -> None:
    assert run.prefix_cache_hit_rate == pytest.approx((0 + 100 + 0 + 50) / (100 + 300 + 200 + 150))
    assert run.preemptions == 2 and run.recomputed_tokens == 50
    # per completed session (A, B); C's 100 s would show if it were counted
    assert run.mean_tool_wait_s == pytest.approx(2.0)
    assert run.mean_tool_s == pytest.approx(3.0)
    assert run.mean_llm_s == pytest.approx(11.5)
    # admission waits [1, 0, 2] over all admitted sessions; p95 rank 0.95 * 2 = 1.9
    assert run.mean_admission_wait_s == pytest.approx(1.0)
    assert run.p95_admission_wait_s == pytest.approx(1.9)


def test_unadmitted_session_has_no_admission_wait() -> None:
    s = summarize(calls_table(), sessions_table({"admitted_s": 3.0, "arrival_s": 1.0, "finish_s": 5.0},
                                                running(session_id="s1", admitted_s=NAN)))
    assert s.mean_admission_wait_s == 2.0


def test_validity(run: RunSummary) -> None:
    assert run.valid is False
    assert run.invalid_reasons == ["1 of 3 sessions did not complete"]
    done = summarize(calls_table(*CALLS[:4]), sessions_table(*SESSIONS[:2]))
    assert done.valid is True and done.invalid_reasons == []


def test_request_goodput_against_slo() -> None:
    calls, sessions = calls_table(*CALLS), sessions_table(*SESSIONS)
    # ttft <= 1500 and tpot <= 1600: a0 yes, a1 yes (one token: tpot counts as 0), b0 no (ttft 3000), c0 yes
    s = summarize(calls, sessions, goodput_slo="ttft:1500 tpot:1600")
    assert s.request_goodput == pytest.approx(3 / 22)
    assert s.goodput_slo == {"ttft": 1500.0, "tpot": 1600.0}
    # e2el <= 3500: a0, a1 (3000 each)
    assert summarize(calls, sessions, goodput_slo=["e2el:3500"]).request_goodput == pytest.approx(2 / 22)
    # a parsed spec works the same
    assert summarize(calls, sessions, goodput_slo={"tpot": 1000}).request_goodput == pytest.approx(2 / 22)


def test_end_s_extends_duration_while_sessions_run() -> None:
    s = summarize(calls_table(*CALLS), sessions_table(*SESSIONS), end_s=30.0)
    assert s.duration == 30.0
    assert s.session_throughput == pytest.approx(2 / 30)
    assert s.mean_jct_s == pytest.approx(15.5)  # C is not in JCT
    done = summarize(calls_table(*CALLS[:4]), sessions_table(*SESSIONS[:2]), end_s=30.0)
    assert done.duration == 22.0  # nothing was running: the span ends at the last finish


def test_custom_percentiles_follow_vllm_names() -> None:
    s = summarize(calls_table(*CALLS), sessions_table(*SESSIONS), percentiles=(25, 99.9))
    dump = s.model_dump(mode="json")
    assert dump["p25_jct_s"] == pytest.approx(11 + 0.25 * 9)
    assert dump["p99.9_ttft_ms"] == pytest.approx(1000 + 0.999 * 3 % 1 * 2000)  # rank 2.997
    assert dump["p99_jct_s"] == pytest.approx(19.91)  # the session figures keep theirs
    assert "p99_ttft_ms" not in dump  # not asked for
    assert (dump["metric_percentiles"], dump["percentile_metrics"]) == ([25.0, 99.9], ["ttft", "tpot", "itl"])
    with pytest.raises(BadInput):
        summarize(calls_table(), sessions_table(), percentiles=(50, 101))


def call_percentile_keys(dump: dict[str, Any]) -> set[str]:
    return {k for k in dump if k.startswith("p") and k.endswith("_ms")}


def test_default_percentiles_are_vllms_p99_of_ttft_tpot_itl(run: RunSummary) -> None:
    assert call_percentile_keys(run.model_dump()) == {"p99_ttft_ms", "p99_tpot_ms", "p99_itl_ms"}
    assert set(run.model_extra or {}) == {"p99_ttft_ms", "p99_tpot_ms", "p99_itl_ms"}


def test_percentile_metrics_choose_which_metrics_get_percentiles() -> None:
    s = summarize(calls_table(*CALLS), sessions_table(*SESSIONS), percentiles=(50, 90),
                  percentile_metrics=("e2el", "ttft"))
    dump = s.model_dump()
    assert call_percentile_keys(dump) == {"p50_e2el_ms", "p90_e2el_ms", "p50_ttft_ms", "p90_ttft_ms"}
    assert dump["p50_e2el_ms"] == pytest.approx(3500) and dump["p90_ttft_ms"] == pytest.approx(1000 + 0.7 * 2000)
    assert dump["mean_itl_ms"] is not None  # mean, median and std stay for every metric
    rows = dict(summary_table_rows(s))
    assert rows["p50 TTFT"] == "1,000 ms" and "p99 TTFT" not in rows
    assert "p50 TTFT" not in dict(summary_table_rows(summarize(calls_table(*CALLS), sessions_table(*SESSIONS),
                                                               percentile_metrics=("e2el",))))


@pytest.mark.parametrize(("text", "message"), [
    ("ttft,bogus", "unknown metric 'bogus'"), ("ttft,,itl", "not a comma-separated list"),
    ("itl,itl", "itl given more than once"), ("", "not a comma-separated list"),
])
def test_bad_percentile_metrics(text: str, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        parse_percentile_metrics(text)


@pytest.mark.parametrize(("text", "message"), [
    ("99,x", "'x' is not a number"), ("101", "101 is not between 0 and 100"), ("nan", "nan is not between"),
    ("50,50", "50 given more than once"), ("-1", "-1 is not between"),
])
def test_bad_metric_percentiles(text: str, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        parse_metric_percentiles(text)


def test_metric_percentiles_parse_as_vllm() -> None:
    assert parse_metric_percentiles("25, 50,99.9") == (25.0, 50.0, 99.9)
    assert parse_percentile_metrics("TTFT,e2el") == ("ttft", "e2el")


def test_peak_figures_count_as_vllm() -> None:
    # whole seconds from the first start (a0's, 1 s): a0 spans buckets 0-3, b0 1-21, c0 5-9, a1 7-10 -> 3 in 7-9
    s = summarize(calls_table(*CALLS), sessions_table(*SESSIONS))
    assert s.max_concurrent_requests == 3
    # chunks, as seconds after 1: a0 1, 1.5, 2, 2.5, 3; a1 7.2; b0 4, 5.7, 7.4, 9.1, ...; c0 6, 7.5, 9
    # -> bucket 7 holds a1's 7.2, b0's 7.4 and c0's 7.5, every other at most 2
    assert s.max_output_tokens_per_s == 3.0
    burst = summarize(calls_table({"first_token_s": 0.1, "itl_s": [0.1] * 4, "output_tokens": 5, "finish_s": 0.6}),
                      sessions_table({"finish_s": 0.6}))
    assert burst.max_output_tokens_per_s == 5.0 and burst.max_concurrent_requests == 1


def test_duration_runs_from_the_benchmark_start() -> None:
    calls = calls_table({"arrival_s": 5.0, "first_token_s": 5.5, "finish_s": 6.0})
    sessions = sessions_table({"arrival_s": 5.0, "finish_s": 6.0})
    assert summarize(calls, sessions).duration == 6.0  # the first arrival came 5 s after the start
    assert summarize(calls, sessions, start_s=4.0).duration == 2.0  # e.g. a warm-up ended at 4 s
    assert summarize(calls, sessions, start_s=5.5).duration == 1.0  # never after the first arrival


def test_a_summary_written_with_the_old_names_reads_with_vllms() -> None:
    old = {"duration_s": 9.0, "completed_calls": 4, "failed_calls": 1, "p99_ttft_ms": 3.0}
    s = RunSummary(**old)
    assert (s.duration, s.completed, s.failed) == (9.0, 4, 1)
    rows = dict(summary_table_rows(old))
    assert rows["duration"] == "9.00 s" and rows["calls completed"] == "4" and rows["p99 TTFT"] == "3.00 ms"


@pytest.mark.parametrize("alpha", [0, -1.0, NAN, "x"])
def test_bad_alpha(alpha: Any) -> None:
    with pytest.raises(BadInput, match="alpha"):
        summarize(calls_table(), sessions_table(), alpha=alpha)


# -------------------------------------------------------------------------------------------- edge cases
def test_no_completed_sessions() -> None:
    calls = calls_table({"finish_s": NAN, "first_token_s": NAN})
    sessions = sessions_table(running(), running(session_id="s1", arrival_s=1.0))
    s = summarize(calls, sessions)
    assert s.duration is None and s.session_throughput is None and s.goodput is None
    assert s.request_throughput is None
    assert s.mean_jct_s is None and s.p99_jct_s is None and s.mean_slowdown is None and s.mean_ttft_ms is None
    assert (s.completed_sessions, s.incomplete_sessions, s.completed) == (0, 2, 0)
    assert s.valid is False and s.invalid_reasons == ["no session completed"]
    assert s.goodput_fraction == 0.0
    stopped = summarize(calls, sessions, end_s=10.0)
    assert stopped.duration == 10.0
    assert stopped.session_throughput == 0.0 and stopped.goodput == 0.0 and stopped.request_throughput == 0.0


def test_a_failed_call_counts_as_failed_not_completed_and_makes_the_run_invalid() -> None:
    calls = calls_table({}, {"session_id": "s1", "first_token_s": NAN, "finish_s": NAN, "output_tokens": 0,
                             "itl_s": [], "error": "the server's stream ended without a token"})
    s = summarize(calls, sessions_table({}, running(session_id="s1")))
    assert (s.completed, s.failed) == (1, 1)
    assert s.mean_ttft_ms == 500.0  # over the call that streamed only
    assert s.valid is False and s.invalid_reasons == ["1 of 2 sessions did not complete", "1 call failed"]
    assert dict(summary_table_rows(s))["calls failed"] == "1"


def test_a_run_that_stopped_early_says_how_far_it_got() -> None:
    sessions = sessions_table({}, running(session_id="s1"))
    s = summarize(calls_table({}), sessions, stopped="interrupted", planned_sessions=3000)
    assert (s.num_sessions, s.completed_sessions, s.incomplete_sessions) == (3000, 1, 2999)
    assert s.valid is False and s.invalid_reasons == ["interrupted after 1 of 3000 sessions"]
    assert dict(summary_table_rows(s))["valid"] == "no (interrupted after 1 of 3000 sessions)"
    assert summarize(calls_table({}), sessions, stopped="failed").invalid_reasons == ["failed after 1 of 2 sessions"]


def test_empty_tables() -> None:
    s = summarize(calls_table(), sessions_table(), end_s=5.0)
    assert s.num_sessions == 0 and s.duration is None and s.goodput_fraction is None
    assert s.prefix_cache_hit_rate is None
    assert s.valid is False and s.invalid_reasons == ["no sessions"]


def test_one_session() -> None:
    s = summarize(calls_table({"arrival_s": 1.0, "first_token_s": 1.5, "finish_s": 3.0}),
                  sessions_table({"arrival_s": 1.0, "finish_s": 3.0, "isolated_jct_s": 1.0}))
    assert s.duration == 3.0  # from the benchmark's start (0), not the first arrival (1), as vLLM's
    assert s.mean_jct_s == s.p50_jct_s == s.p99_jct_s == 2.0 and s.std_jct_s == 0.0
    assert s.mean_slowdown == 2.0 and s.goodput == pytest.approx(1 / 3) and s.session_throughput == pytest.approx(1 / 3)
    assert s.valid is True


def test_one_token_calls_have_no_tpot_or_itl() -> None:
    s = summarize(calls_table({"output_tokens": 1, "itl_s": []}), sessions_table({}))
    assert s.mean_tpot_ms is None and s.p99_tpot_ms is None and s.mean_itl_ms is None
    assert s.mean_ttft_ms == 500.0
    both = summarize(calls_table({"output_tokens": 1, "itl_s": []}, {"output_tokens": 3, "itl_s": [0.2, 0.3]}),
                     sessions_table({}))
    assert both.mean_tpot_ms == pytest.approx(250.0)  # (1.0 - 0.5) / 2 from the 3-token call only
    assert both.mean_itl_ms == pytest.approx(250.0)


def test_unknown_isolated_jct_is_left_out_of_slowdown() -> None:
    s = summarize(calls_table(), sessions_table({"finish_s": 2.0, "isolated_jct_s": 1.0},
                                                {"session_id": "s1", "finish_s": 4.0, "isolated_jct_s": NAN}))
    assert s.mean_slowdown == 2.0  # only s0's 2/1
    assert s.mean_jct_s == 3.0 and s.goodput_fraction == 0.5  # s1 is completed but cannot be shown good


def test_running_calls_count_in_engine_figures_only() -> None:
    calls = calls_table({}, {"session_id": "s1", "first_token_s": 2.0, "finish_s": NAN, "itl_s": [9.0] * 3,
                             "preemptions": 3, "recomputed_tokens": 40})
    s = summarize(calls, sessions_table({}, running(session_id="s1")))
    assert s.preemptions == 3 and s.recomputed_tokens == 40  # the work was done even if the call never ended
    assert s.mean_itl_ms == 500.0 and s.mean_ttft_ms == 500.0  # like vLLM: finished calls only
    assert s.completed == 1 and s.total_output_tokens == 2


def test_session_flags_and_finish_times_must_agree() -> None:
    flagged_only = {"session_id": "s1", "finish_s": NAN, "completed": True}
    finish_only = {"session_id": "s2", "finish_s": 3.0, "completed": False}
    s = summarize(calls_table(), sessions_table({}, flagged_only, finish_only))
    assert (s.completed_sessions, s.incomplete_sessions) == (1, 2)
    assert s.mean_jct_s == 1.0 and s.duration == 1.0


def test_finished_calls_of_running_sessions_extend_duration() -> None:
    # s0 finished at 1; s1 still runs but its first call finished at 7: the run did work until at least 7
    calls = calls_table({}, {"session_id": "s1", "arrival_s": 2.0, "first_token_s": 3.0, "finish_s": 7.0})
    s = summarize(calls, sessions_table({}, running(session_id="s1", arrival_s=2.0)))
    assert s.duration == 7.0 and s.request_throughput == pytest.approx(2 / 7)


def test_itl_cells_read_back_as_arrays() -> None:
    calls = calls_table({"itl_s": [0.1, 0.3]})
    calls.at[0, "itl_s"] = np.array([0.1, 0.3])  # parquet gives numpy arrays
    assert summarize(calls, sessions_table({})).mean_itl_ms == pytest.approx(200.0)


def test_nan_never_dumped() -> None:
    dump = RunSummary(mean_jct_s=NAN, p99_ttft_ms=float("inf"), **{"p99.9_ttft_ms": NAN}).model_dump(mode="json")
    assert dump["mean_jct_s"] is None and dump["p99_ttft_ms"] is None and dump["p99.9_ttft_ms"] is None
    json.dumps(summarize(calls_table(*CALLS), sessions_table(*SESSIONS)).model_dump(mode="json"), allow_nan=False)


# ------------------------------------------------------------------------------------------ goodput SLO
@pytest.mark.parametrize(("spec", "expected"), [
    ("ttft:500 tpot:50", {"ttft": 500.0, "tpot": 50.0}),
    (["ttft:500", "tpot:50"], {"ttft": 500.0, "tpot": 50.0}),
    (["e2el:1e3"], {"e2el": 1000.0}),
    ("  TTFT:0.5  ", {"ttft": 0.5}),
])
def test_parse_goodput(spec: str | list[str], expected: dict[str, float]) -> None:
    assert parse_goodput(spec) == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("foo:5", "unknown metric 'foo' (expected ttft, tpot, e2el)"),
    ("ttft", "'ttft' is not KEY:VALUE"),
    ("ttft:abc", "ttft value 'abc' is not a number"),
    ("ttft:5:5", "is not a number"),
    ("ttft:0", "positive"),
    ("tpot:-3", "positive"),
    ("e2el:nan", "positive"),
    ("ttft:1 ttft:2", "ttft given twice"),
    ("", "no KEY:VALUE pair"),
    ([], "no KEY:VALUE pair"),
])
def test_parse_goodput_rejects(spec: str | list[str], message: str) -> None:
    with pytest.raises(BadInput) as err:
        parse_goodput(spec)
    text = str(err.value)
    assert message in text and text.startswith("--goodput: ") and "\n" not in text


def test_bad_slo_given_to_summarize() -> None:
    with pytest.raises(BadInput, match="unknown metric"):
        summarize(calls_table(), sessions_table(), goodput_slo="itl:5")


# ------------------------------------------------------------------------------------------------ table
def test_summary_table_rows(run: RunSummary) -> None:
    rows = dict(summary_table_rows(run))
    assert rows["sessions completed"] == "2/3"
    assert rows["duration"] == "22.0 s"
    assert rows["mean JCT"] == "15.5 s"
    assert rows["goodput (slowdown <= 3)"].endswith("sessions/s")
    assert rows["prefix cache hit rate"] == "20.0%"
    assert rows["preemptions"] == "2"
    assert rows["valid"] == "no (1 of 3 sessions did not complete)"
    assert "request goodput" not in rows  # no SLO given
    assert all(isinstance(label, str) and isinstance(value, str) for label, value in summary_table_rows(run))
    for label in ("p50 JCT", "p95 JCT", "p99 JCT", "mean slowdown", "throughput", "token throughput", "mean TTFT",
                  "p99 TTFT", "mean TPOT", "mean tool wait", "mean admission wait"):
        assert rows[label] != "-", label


def test_summary_table_rows_from_json_with_missing_values() -> None:
    dump = summarize(calls_table(), sessions_table(running()), goodput_slo="ttft:5").model_dump(mode="json")
    rows = dict(summary_table_rows(dump))  # `results show` passes summary.json's dict
    assert rows["sessions completed"] == "0/1"
    assert rows["mean JCT"] == "-" and rows["mean TTFT"] == "-" and rows["throughput"] == "-"
    assert rows["request goodput"] == "-"
    assert rows["valid"] == "no (no session completed)"
    assert dict(summary_table_rows({}))["duration"] == "-"


# -------------------------------------------------------------------------------------------- properties
times = st.floats(min_value=0.0, max_value=1e4, allow_nan=False)
spans = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False)


@st.composite
def runs(draw: st.DrawFn) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A random run: each session has one call that spans it; some sessions are still running."""
    n = draw(st.integers(min_value=1, max_value=8))
    sessions, calls = [], []
    for i in range(n):
        arrival, ttft, decode = draw(times), draw(spans), draw(spans)
        done = draw(st.booleans()) if i else True  # at least one completed
        out = draw(st.integers(min_value=1, max_value=6))
        finish = arrival + ttft + decode if done else NAN
        sessions.append({"session_id": f"s{i}", "arrival_s": arrival, "admitted_s": arrival, "finish_s": finish,
                         "completed": done, "isolated_jct_s": draw(st.one_of(spans, st.just(NAN)))})
        calls.append({"session_id": f"s{i}", "arrival_s": arrival, "first_scheduled_s": arrival,
                      "first_token_s": arrival + ttft, "finish_s": finish, "output_tokens": out,
                      "cached_tokens": draw(st.integers(0, 100)), "itl_s": [decode / max(out - 1, 1)] * (out - 1)})
    return calls_table(*calls), sessions_table(*sessions)


FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(runs(), st.floats(min_value=0.5, max_value=10), st.sampled_from(["ttft:100", "tpot:10 e2el:500", "e2el:1e5"]))
def test_properties(run_tables: tuple[pd.DataFrame, pd.DataFrame], alpha: float, slo: str) -> None:
    calls, sessions = run_tables
    s = summarize(calls, sessions, alpha=alpha, goodput_slo=slo, end_s=2e4, percentiles=(50, 90, 95, 99),
                  percentile_metrics=("ttft", "e2el"))
    for name in ("jct_s", "ttft_ms", "e2el_ms", "slowdown"):
        p = [getattr(s, f"p{q}_{name}") for q in (50, 90, 95, 99)]
        if name == "slowdown" and p[0] is None:  # no completed session with a known isolated JCT
            assert p == [None] * 4
            continue
        assert p == sorted(p), name
    assert s.session_throughput is not None
    # goodput is unknown (None) exactly when no session has an isolated reference
    assert (s.goodput is None) == bool(sessions["isolated_jct_s"].isna().all() and len(sessions))
    assert s.goodput is None or s.goodput <= s.session_throughput
    assert s.request_goodput is not None and s.request_throughput is not None
    assert s.request_goodput <= s.request_throughput
    assert 0 <= s.prefix_cache_hit_rate <= 1
    assert s.completed_sessions + s.incomplete_sessions == s.num_sessions
    assert s.valid == (s.incomplete_sessions == 0)
    assert 1 <= s.max_concurrent_requests <= s.completed
    assert 1 <= s.max_output_tokens_per_s <= s.total_output_tokens  # one chunk per token here
    json.dumps(s.model_dump(mode="json"), allow_nan=False)  # raises on NaN or inf


@FAST
@given(times, spans, st.floats(min_value=0.0, max_value=1e3, allow_nan=False))
def test_slowdown_is_one_at_isolated_jct_and_grows_with_jct(arrival: float, isolated: float, extra: float) -> None:
    finish = arrival + isolated
    jct = finish - arrival  # what the table gives as JCT; may differ from `isolated` in the last bit
    rows = per_session_metrics(sessions_table(
        {"arrival_s": arrival, "finish_s": finish, "isolated_jct_s": jct},
        {"session_id": "s1", "arrival_s": arrival, "finish_s": finish + extra, "isolated_jct_s": jct},
    ))
    assert rows["slowdown"][0] == 1.0
    assert rows["slowdown"][1] >= 1.0
    summary = summarize(calls_table(), sessions_table(
        {"arrival_s": arrival, "finish_s": finish, "isolated_jct_s": jct}), alpha=1.0)
    assert summary.mean_slowdown == 1.0 and summary.goodput_fraction == 1.0


@FAST
@given(runs())
def test_no_nan_in_partial_runs(run_tables: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    calls, sessions = run_tables
    for s in (summarize(calls, sessions), summarize(calls.iloc[:0], sessions), summarize(calls, sessions.iloc[:0])):
        for value in s.model_dump(mode="json").values():
            assert not (isinstance(value, float) and not math.isfinite(value))
