"""One run end to end: resolve the workload and backend, check the engine's settings, compute the isolated
reference, run the agent sessions on the engine with events streamed to the results directory, summarise.
The engine comes from the registry (harness.engines.base): nothing here knows one engine from another."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.backends import get_backend
from harness.bound import bound_jcts
from harness.config import RunConfig
from harness.engines.base import BuildContext
from harness.engines.registry import get_engine
from harness.engines.sim.run import isolated_jcts
from harness.engines.sim.testbed import build_setup
from harness.exports import write_exports
from harness.errors import BadInput
from harness.inputs import make_dirs
from harness.policy.tools import ToolOrder
from harness.metrics import RunSummary, parse_goodput, summarize
from harness.runbounds import run_bounds
from harness.hostload import HostLoad
from harness.real_tools import RealToolPool
from harness.results import RunWriter, ending, make_run_id
from harness.runner import AgentRun, Outcome, TimedTools, ToolRunner
from harness.tools import ToolPool
from workloads.model import Session
from workloads.source import WorkloadRequest, resolve
from workloads.synthetic import background_chat

Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass(frozen=True)
class RunResult:
    dir: Path
    summary: RunSummary
    stats: dict[str, Any]
    bounds: dict[str, Any] = field(default_factory=dict)  # harness.runbounds: cache and capacity bounds


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
                                order=order, limits=config.tool_limits)
        except ValueError as exc:
            raise BadInput(f"--tools real: {exc}") from None
    return TimedTools(env, ToolPool(config.tool_cores, config.tool_mode, stress_cores=config.cpu_stress, order=order))


def warmup_sessions(sessions: list[Session], n: int) -> list[Session]:
    """`n` warm-up sessions: copies of the workload's first sessions (cycled when it has fewer), renamed
    `warmup-<i>-<id>` and arriving at 0. They keep their shared-prefix id, so a warm-up warms the shared
    system prompt as a real one would, but not the measured sessions' own contexts."""
    return [sessions[i % len(sessions)].model_copy(update={"id": f"warmup-{i}-{sessions[i % len(sessions)].id}",
                                                           "arrival_s": 0.0})
            for i in range(n)]


def run_experiment(config: RunConfig, results_dir: Path, progress: Progress | None = None,
                   run_id: str | None = None) -> RunResult:
    """Run `config` and write `results_dir/<run_id>/` (a new time-stamped id unless given); bad input raises
    BadInput before anything is written."""
    slo = parse_goodput(list(config.goodput)) if config.goodput else None
    backend = get_backend(config.backend, config.engine)
    engine_entry = get_engine(config.engine)
    name, sessions = resolve(WorkloadRequest(
        source=config.workload, sessions=config.sessions, rps=config.rps, arrival=config.arrival, cv=config.cv,
        burstiness=config.burstiness, seed=config.seed, sets=config.workload_sets, force=config.force,
    ))
    warmup = warmup_sessions(sessions, config.warmup_sessions)
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
        engine = engine_entry.build(BuildContext(config, policy, [*warmup, *sessions, *background], writer.dir,
                                                 results_dir / ".cache"))
        try:
            tools = make_tools(config, engine.env, backend.make_tool_order(config))
        except BaseException:
            engine.close()
            raise
        run = AgentRun(engine, sessions, admission, tools, sink, background, config.timeline_interval_s,
                       max_concurrency=config.max_concurrency, warmup=warmup)
        host = None if engine_entry.simulated else HostLoad().start()  # a real engine's timings can be noise
        try:
            outcome = run.run(isolated, bound)
        except BaseException as exc:  # failed or interrupted: its tables and summary say how far it got
            _stop_host(writer, host)
            _keep_partial(writer, lambda: run.outcome(isolated, bound), config, slo, exc)
            raise
        _stop_host(writer, host)
        summary = summarize(outcome.calls, outcome.sessions, alpha=config.alpha, goodput_slo=slo, end_s=outcome.end_s,
                            **reporting(config, outcome))
        try:
            bounds = run_bounds(sessions, config, outcome.calls, simulated)
        except (BadInput, ValueError) as exc:  # figures beside the measurement: never lose the run for them
            bounds = {"bounds_unavailable": str(exc)}
        payload = {**summary.model_dump(mode="json"), **bounds, "engine_stats": outcome.stats}
        if "load_controls" in outcome.stats:  # warm-up and concurrency cap, flagged beside the figures
            payload["load_controls"] = outcome.stats["load_controls"]
        if exported := write_exports(writer.dir, config, payload, outcome.calls, outcome.sessions):
            writer.meta["exports"] = exported
        writer.finish(outcome.calls, outcome.sessions, payload, timeline=outcome.timeline)
    return RunResult(writer.dir, summary, outcome.stats, bounds)


def reporting(config: RunConfig, outcome: Outcome) -> dict[str, Any]:
    """summarize's vLLM reporting arguments: the chosen percentiles, and the benchmark's start (after any
    warm-up) that `duration` runs from."""
    load = outcome.stats.get("load_controls") or {}
    return {"percentiles": config.metric_percentiles, "percentile_metrics": config.percentile_metrics,
            "start_s": float(load.get("warmup_end_s") or 0.0)}


def _stop_host(writer: RunWriter, host: HostLoad | None) -> None:
    """A real engine's run: record the host's load over it in run.json, and whether it was noisy."""
    if host is not None:
        load = host.stop()
        writer.meta.update(host_load=load, noisy=bool(load.get("noisy")))


def _keep_partial(writer: RunWriter, measured: Callable[[], Outcome], config: RunConfig,
                  slo: dict[str, float] | None, exc: BaseException) -> None:
    """Write what a run that stopped early measured, marked with how it stopped (summary: invalid, with the
    reason). Never hides why it stopped: should this fail, events.jsonl still holds what was measured."""
    status, error = ending(exc)
    try:
        outcome = measured()
        summary = summarize(outcome.calls, outcome.sessions, alpha=config.alpha, goodput_slo=slo,
                            end_s=outcome.end_s, stopped=status, **reporting(config, outcome))
        payload = {**summary.model_dump(mode="json"), "engine_stats": outcome.stats}
        writer.finish(outcome.calls, outcome.sessions, payload, timeline=outcome.timeline, status=status,
                      error=error)
    except Exception:  # noqa: BLE001, S110 - the original error is what the user must see
        pass
