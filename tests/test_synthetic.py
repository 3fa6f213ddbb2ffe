"""Synthetic presets: determinism, stability across sizes and rates, documented shapes, overrides."""

from __future__ import annotations

import numpy as np
import pytest

from harness.errors import BadInput
from workloads.arrivals import arrival_times
from workloads.model import dump_session
from workloads.synthetic import PRESETS, customize, generate, get_preset


def _lines(spec) -> list[str]:
    return [dump_session(s) for s in generate(spec)]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_generates_valid_deterministic_sessions(name: str) -> None:
    spec = customize(get_preset(name), ["sessions=30", "seed=5"])
    first, second = _lines(spec), _lines(spec)
    assert first == second
    assert len(first) == 30


def test_different_seeds_differ() -> None:
    a = _lines(customize(get_preset("swe"), ["sessions=20", "seed=1"]))
    b = _lines(customize(get_preset("swe"), ["sessions=20", "seed=2"]))
    assert a != b


def test_session_content_independent_of_count_and_rate() -> None:
    small = list(generate(customize(get_preset("paper"), ["sessions=10", "seed=3"])))
    big = list(generate(customize(get_preset("paper"), ["sessions=50", "seed=3", "rps=0.05", "arrival=poisson"])))
    assert [s.turns for s in small] == [s.turns for s in big[:10]]
    assert [s.arrival_s for s in small] != [s.arrival_s for s in big[:10]]


def test_swe_preset_matches_published_shape() -> None:
    sessions = list(generate(customize(get_preset("swe"), ["sessions=400", "seed=0"])))
    turns = np.array([len(s.turns) for s in sessions])
    first = np.array([s.first_prompt_tokens for s in sessions])
    outputs = np.array([t.output_tokens for s in sessions for t in s.turns])
    assert turns.min() >= 5 and turns.max() <= 40
    assert 10 <= turns.mean() <= 15
    assert 5000 <= np.median(first) <= 9000
    assert outputs.min() >= 30 and outputs.max() <= 300
    assert all(2000 <= s.prefix_tokens <= 4000 and s.prefix_id == sessions[0].prefix_id for s in sessions)
    tests = [t.tool.cpu_seconds for s in sessions for t in s.turns if t.tool and t.tool.name == "run_tests"]
    reads = [t.tool.cpu_seconds for s in sessions for t in s.turns if t.tool and t.tool.name == "read_file"]
    assert max(tests) > 60 and np.median(reads) < 0.05  # heavy-tailed test runs, millisecond reads


def test_paper_preset_has_long_sessions_and_at_most_8_rounds() -> None:
    sessions = list(generate(get_preset("paper")))
    assert len(sessions) == 400
    assert max(len(s.turns) for s in sessions) <= 8
    long = sum(s.first_prompt_tokens > 50_000 for s in sessions)
    assert 20 <= long <= 80
    assert sessions[-1].arrival_s == pytest.approx(399 / 0.2)


def test_chat_is_single_turn_without_tools() -> None:
    sessions = list(generate(customize(get_preset("chat"), ["sessions=50"])))
    assert all(len(s.turns) == 1 and s.turns[0].tool is None for s in sessions)


def test_overrides_reach_every_kind_and_are_validated() -> None:
    spec = customize(get_preset("paper"), ["turns.median=4", "mix.swe.weight=0"])
    assert all(k.turns.median == 4 for k in spec.mix.values())
    assert {s.kind for s in generate(customize(spec, ["sessions=60"]))} == {"long", "terminal"}
    with pytest.raises(BadInput, match="sessions: must be >= 1"):
        customize(get_preset("swe"), ["sessions=0"])
    with pytest.raises(BadInput, match="unknown setting 'nope'"):
        customize(get_preset("paper"), ["mix.nope.turns.median=3"])
    with pytest.raises(BadInput, match="expected key=value"):
        customize(get_preset("paper"), ["turns"])
    with pytest.raises(BadInput, match="unknown workload preset 'nope'"):
        get_preset("nope")


def test_arrival_processes() -> None:
    rng = np.random.default_rng(0)
    fixed = arrival_times("fixed", 5, 2.0, rng)
    assert list(fixed) == [0.0, 0.5, 1.0, 1.5, 2.0]
    poisson = arrival_times("poisson", 20000, 2.0, np.random.default_rng(1))
    gaps = np.diff(poisson)
    assert gaps.mean() == pytest.approx(0.5, rel=0.05) and gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)
    bursty = np.diff(arrival_times("gamma", 20000, 2.0, np.random.default_rng(1), cv=3.0))
    assert bursty.mean() == pytest.approx(0.5, rel=0.1) and bursty.std() / bursty.mean() == pytest.approx(3.0, rel=0.1)
    assert list(arrival_times("trace", 2, 1.0, rng, timestamps=[0.0, 7.5, 9.0])) == [0.0, 7.5]
    with pytest.raises(BadInput, match="non-decreasing"):
        arrival_times("trace", 2, 1.0, rng, timestamps=[3.0, 1.0])
