"""The Engine interface: the system under test as the agent runner sees it (the registry of engines is
harness.engines.registry).

As MLPerf's loadgen, the runner (harness.runner) knows nothing of the engine behind this interface: it
hands over calls and is told when they finish. An engine owns its clock (a simpy environment: simulated
time, or real time for a real engine), its scheduler and the policy inside it (through the policy driver),
and whatever processes or servers it starts.

Adding an engine = a class implementing `Engine`, a builder function, and one `EngineEntry` in
harness.engines.registry (with the check that refuses bad settings in one line before anything is
written); it then has to pass the engine contract tests (tests/test_engine_contract.py) and, if it runs a
mars-bench policy itself, the conformance test (tests/test_conformance.py). See docs/extending.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import simpy

    from harness.calls import CallSpec
    from harness.config import RunConfig
    from harness.policy import EngineSignals, Policy
    from workloads.model import Session

# The engine-side columns of a timeline sample (harness.tables.TIMELINE_COLUMNS has the runner's beside them).
# An engine reports the ones it knows; a missing one is NaN in the table.
ENGINE_TIMELINE_KEYS = ("kv_usage", "free_blocks", "running", "waiting", "pinned", "gpu_busy_s", "preemptions")


class Engine(Protocol):
    """One engine for one run."""

    name: str
    env: simpy.Environment  # the clock the run lives on: the engine's (simulated or real time)

    def bind(self, on_step: Callable[[float], None]) -> None:
        """`on_step(now)` is called at the start of every engine step (timeline samples, the stop check)."""

    def start(self) -> None:
        """The run's clock starts now (a real engine that took minutes to load does not count them)."""

    def fits(self, spec: CallSpec) -> bool:
        """Whether the call's whole context can ever fit this engine (else its session fails)."""

    def submit(self, spec: CallSpec, measured: bool) -> simpy.Event:
        """Hand a call to the engine; the event succeeds with its harness.calls.CallRecord once it finished.
        `measured` is False for background traffic."""

    def tool_ended(self, session_id: str, tool_name: str, duration_s: float) -> None:
        """A session's tool call finished after `duration_s` (the policy's `on_tool_end`, now or with the
        session's next call)."""

    def signals(self) -> EngineSignals | None:
        """KV usage and queue lengths now; None when the engine cannot tell (the signal is then missing)."""

    def timeline(self) -> dict[str, Any]:
        """This engine's columns of a timeline sample (keys from ENGINE_TIMELINE_KEYS)."""

    def stats(self) -> dict[str, Any]:
        """The run's engine figures (steps, busy time, preemptions, pins, versions) for summary.json."""

    def close(self) -> None:
        """Stop whatever the engine started (servers, threads); safe to call twice."""


@dataclass(frozen=True)
class BuildContext:
    """What an engine builder gets: the run's config and policy, the sessions it will serve (background
    traffic included, for context limits), where to write its files, and the shared cache directory."""

    config: RunConfig
    policy: Policy
    sessions: Sequence[Session]
    run_dir: Path
    cache_dir: Path
