"""One run end to end: resolve the workload and backend, check the engine's settings, compute the isolated
reference, run the agent sessions on the engine with events streamed to the results directory, summarise.
The engine comes from the registry (harness.engines.base): nothing here knows one engine from another."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.backends import get_backend
from harness.bound import bound_jcts
from harness.config import RunConfig
from harness.engines.base import BuildContext
from harness.engines.registry import get_engine
from harness.engines.sim.run import isolated_jcts
from harness.engines.sim.testbed import build_setup
from harness.errors import BadInput
from harness.inputs import make_dirs
from harness.policy.tools import ToolOrder
from harness.metrics import RunSummary, parse_goodput, summarize
from harness.real_tools import RealToolPool
from harness.results import RunWriter, make_run_id
from harness.runner import AgentRun, TimedTools, ToolRunner
from harness.tools import ToolPool
from workloads.source import WorkloadRequest, resolve
from workloads.synthetic import background_chat

Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass(frozen=True)
class RunResult:
    dir: Path
    summary: RunSummary
    stats: dict[str, Any]


class _CountingSink:
    """Forwards events to the writer and reports session completions to a progress callback."""

    def __init__(self, writer: RunWriter, total: int, progress: Progress | None) -> None:
        self.writer, self.total, self.progress, self.done = writer, total, progress, 0

    def event(self, kind: str, t: float, **fields: Any) -> None:
        self.writer.event(kind, t, **fields)
        if kind == "session_failed":
            self._tick()

    def call(self, t: float, row: dict[str, Any]) -> None:
        self.writer.call(t, row)

    def session(self, t: float, row: dict[str, Any]) -> None:
        self.writer.session(t, row)
        self._tick()

    def _tick(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress("simulating", self.done, self.total)


def make_tools(config: RunConfig, env: Any, order: ToolOrder | None = None) -> ToolRunner:
    """The run's tool pool on the engine's clock: modelled CPU time, or real pinned processes; `order`: the
    backend's tool-order policy (None: FIFO)."""
    if config.tools == "real":
        try:
            return RealToolPool(env, config.tool_cores, config.tool_mode, config.cpu_stress, config.allow_commands,
                                order=order)
        except ValueError as exc:
            raise BadInput(f"--tools real: {exc}") from None
    return TimedTools(env, ToolPool(config.tool_cores, config.tool_mode, stress_cores=config.cpu_stress, order=order))


def run_experiment(config: RunConfig, results_dir: Path, progress: Progress | None = None,
                   run_id: str | None = None) -> RunResult:
    """Run `config` and write `results_dir/<run_id>/` (a new time-stamped id unless given); bad input raises
    BadInput before anything is written."""
    slo = parse_goodput(list(config.goodput)) if config.goodput else None
    backend = get_backend(config.backend, config.engine)
    engine_entry = get_engine(config.engine)
    name, sessions = resolve(WorkloadRequest(
        source=config.workload, sessions=config.sessions, rps=config.rps, arrival=config.arrival, cv=config.cv,
        seed=config.seed, sets=config.workload_sets, force=config.force,
    ))
    engine_entry.check(config)  # bad settings or an unreachable server: one line, before anything is written
    # the isolated reference is the simulated testbed's; a real engine's needs its calibrated profile (see
    # `mars-bench calibrate`), so real runs report slowdown and goodput only with --profile
    simulated = engine_entry.simulated or config.profile is not None
    setup = build_setup(config) if simulated else None
    policy, admission = backend.make_policy(config), backend.make_admission(config)
    make_dirs(results_dir, "--results-dir")  # after every check of the input, before the caches below write

    total = len(sessions)
    done = 0

    def isolated_progress(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress("isolated reference", done, total)

    isolated = {} if setup is None else \
        isolated_jcts(sessions, setup, cache=results_dir / ".cache" / "isolated.json", progress=isolated_progress)
    bound = None if setup is None else bound_jcts(sessions, setup, cache=results_dir / ".cache" / "floors.json")
    run_id = run_id or make_run_id(config.backend, name, config.seed, results_dir)
    meta_config = {**config.model_dump(mode="json"), "workload_name": name, "num_sessions": total}
    with RunWriter(results_dir, run_id, meta_config, config.seed) as writer:
        background = background_chat(config.chat_rps, max(s.arrival_s for s in sessions), config.seed)
        sink = _CountingSink(writer, total, progress)
        engine = engine_entry.build(BuildContext(config, policy, [*sessions, *background], writer.dir,
                                                 results_dir / ".cache"))
        try:
            tools = make_tools(config, engine.env, backend.make_tool_order(config))
        except BaseException:
            engine.close()
            raise
        run = AgentRun(engine, sessions, admission, tools, sink, background, config.timeline_interval_s)
        outcome = run.run(isolated, bound)
        summary = summarize(outcome.calls, outcome.sessions, alpha=config.alpha, goodput_slo=slo, end_s=outcome.end_s)
        payload = {**summary.model_dump(mode="json"), "engine_stats": outcome.stats}
        writer.finish(outcome.calls, outcome.sessions, payload, timeline=outcome.timeline)
    return RunResult(writer.dir, summary, outcome.stats)
