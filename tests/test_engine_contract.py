"""What every engine behind harness.engines.base.Engine owes the agent runner, checked on each engine that runs
here (the simulated one always, real vLLM with the `engine` mark): built from the registry, driven by the
runner through a recording proxy, its calls, timeline, signals and stats are of the shared schema, and it is
closed once - also when the run fails."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.backends import get_backend
from harness.calls import CallRecord
from harness.config import make_config
from harness.engines.base import ENGINE_TIMELINE_KEYS, BuildContext, Engine
from harness.engines.registry import ENGINES, get_engine
from harness.experiment import make_tools
from harness.policy.signals import EngineSignals
from harness.runner import AgentRun
from harness.tables import CALL_COLUMNS, SESSION_COLUMNS, TIMELINE_COLUMNS
from workloads.source import WorkloadRequest, resolve


class Recorder:
    """An Engine that forwards to a real one and records how the runner used it."""

    def __init__(self, engine: Engine) -> None:
        self.inner = engine
        self.env = engine.env
        self.name = engine.name
        self.log: list[str] = []
        self.steps = 0
        self.records: list[CallRecord] = []
        self.signal_readings: list[EngineSignals | None] = []
        self.timelines: list[dict[str, Any]] = []

    def bind(self, on_step: Callable[[float], None]) -> None:
        self.log.append("bind")

        def step(now: float) -> None:
            self.steps += 1
            on_step(now)

        self.inner.bind(step)

    def start(self) -> None:
        self.log.append("start")
        self.inner.start()

    def fits(self, spec: Any) -> bool:
        return self.inner.fits(spec)

    def submit(self, spec: Any, measured: bool) -> Any:
        event = self.inner.submit(spec, measured)
        event.callbacks.append(lambda e: self.records.append(e.value))
        return event

    def tool_ended(self, session_id: str, tool_name: str, duration_s: float) -> None:
        self.log.append("tool_ended")
        self.inner.tool_ended(session_id, tool_name, duration_s)

    def signals(self) -> EngineSignals | None:
        reading = self.inner.signals()
        self.signal_readings.append(reading)
        return reading

    def timeline(self) -> dict[str, Any]:
        sample = self.inner.timeline()
        self.timelines.append(sample)
        return sample

    def stats(self) -> dict[str, Any]:
        return self.inner.stats()

    def close(self) -> None:
        self.log.append("close")
        self.inner.close()


def drive(tmp_path: Path, sets: tuple[str, ...] = (), fail_sink: bool = False, **values: Any) -> tuple[Recorder, Any]:
    """One run of `values` through the registry's engine, wrapped in a Recorder."""
    config = make_config(sets, **values)
    _, sessions = resolve(WorkloadRequest(source=config.workload, sessions=config.sessions, rps=config.rps,
                                          seed=config.seed))
    backend = get_backend(config.backend, config.engine)
    entry = get_engine(config.engine)
    entry.check(config)
    engine = Recorder(entry.build(BuildContext(config, backend.make_policy(config), sessions, tmp_path,
                                               tmp_path / ".cache")))

    class Sink:
        def event(self, kind: str, t: float, **fields: Any) -> None:
            pass

        def call(self, t: float, row: dict[str, Any]) -> None:
            if fail_sink:
                raise RuntimeError("the sink failed")

        def session(self, t: float, row: dict[str, Any]) -> None:
            pass

    run = AgentRun(engine, sessions, backend.make_admission(config), make_tools(config, engine.env), Sink(),
                   timeline_interval_s=0.05)
    return engine, run


def check_contract(engine: Recorder, outcome: Any, backend: str) -> None:
    assert engine.log[:2] == ["bind", "start"] and engine.log[-1] == "close" and engine.log.count("close") == 1
    assert engine.steps > 0 and "tool_ended" in engine.log
    calls, sessions = outcome.calls, outcome.sessions
    assert list(calls.columns) == list(CALL_COLUMNS) and list(sessions.columns) == list(SESSION_COLUMNS)
    assert sessions["completed"].all() and len(engine.records) == len(calls)
    for record in engine.records:
        assert isinstance(record, CallRecord) and record.num_output_tokens == record.max_tokens
        assert record.arrival_s <= record.first_scheduled_s <= record.first_token_s <= record.finish_s
        assert len(record.itl_s) == record.num_output_tokens - 1 and record.cached_tokens >= 0
        assert math.isclose(record.finish_s, record.last_token_s)
    assert list(outcome.timeline.columns[:len(TIMELINE_COLUMNS)]) == list(TIMELINE_COLUMNS)
    assert engine.timelines and all(set(t) <= set(ENGINE_TIMELINE_KEYS) for t in engine.timelines)
    readings = [r for r in engine.signal_readings if r is not None]
    assert all(0.0 <= r.kv_usage <= 1.0 and 0 <= r.free_blocks <= r.total_blocks for r in readings)
    if backend.startswith("mars"):
        assert readings  # admission read the engine's KV signal
    json.dumps(outcome.stats)  # summary.json can hold it
    assert outcome.stats["preemptions"] >= 0 and outcome.stats["engine_steps"] >= engine.steps


def test_every_engine_of_the_registry_is_covered_here_or_elsewhere() -> None:
    """sim and vllm are driven below; http and sglang by tests/test_http_engine.py (the latter needs a GPU)."""
    assert set(ENGINES) == {"sim", "vllm", "http", "sglang"}


@pytest.mark.parametrize("backend", ["vllm", "mars"])
def test_the_simulated_engine_keeps_the_contract(tmp_path: Path, backend: str) -> None:
    engine, run = drive(tmp_path, backend=backend, workload="swe-smoke", sessions=6, rps=2.0)
    check_contract(engine, run.run(), backend)


@pytest.mark.engine
@pytest.mark.parametrize("backend", ["vllm", "mars"])
def test_the_vllm_engine_keeps_the_contract(tmp_path: Path, tiny_model_dir: Path, backend: str) -> None:
    engine, run = drive(tmp_path, ("engine_args.num_gpu_blocks=50", "engine_args.block_size=32"), backend=backend,
                        engine="vllm", model=str(tiny_model_dir), workload="tiny", sessions=6)
    check_contract(engine, run.run(), backend)


def test_an_engine_is_closed_once_when_the_run_fails(tmp_path: Path) -> None:
    engine, run = drive(tmp_path, fail_sink=True, backend="vllm", workload="swe-smoke", sessions=2)
    with pytest.raises(RuntimeError, match="the sink failed"):
        run.run()
    assert engine.log.count("close") == 1
