"""MARS as one backend: the external control plane (admission.py), the agent-centric MLFQ scheduler
(scheduler.py) and retain-or-evict at tool calls (retention.py), with every setting under `mars.*`.

Ablations (`--set mars.KEY=VALUE`): `admission=off` (admit everything, as vLLM), `scheduler=fcfs`
(vLLM's order, caps and victim), `chunk_shrink=false`, `retention=warm|lru|off`, `tool_order=fifo|shortest`
(the CPU half, tools.py), `long_lane=0` (long sessions only through the reference's short-wait gate,
admission.py). The `mars-preview` backend is the configuration of the public preview code: retention =
LRU prefix cache only, CPU high mark 2.0, FIFO tools, no long lane.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field

from harness.policy.admission import AdmissionController, AdmitAll
from harness.policy import PinView, RequestView, Retention, ScheduledStep
from mars_impl.admission import MarsAdmission, MarsAdmissionSettings
from mars_impl.retention import RetentionPolicy, RetentionSettings
from mars_impl.scheduler import MlfqScheduler, SchedulerSettings
from mars_impl.tools import MarsToolOrder, ToolOrderSettings


class MarsSettings(MarsAdmissionSettings, SchedulerSettings, RetentionSettings, ToolOrderSettings):
    """Every MARS parameter, flat, so `--set mars.window_min=4` and `--set mars.retention=lru` both work."""

    admission: bool = Field(default=True, description="ablation: false = admit every session at once")

    def part(self, cls: type) -> object:
        """The settings of one component, taken from this flat model."""
        return cls(**{name: getattr(self, name) for name in cls.model_fields})


PREVIEW_OVERRIDES = {"retention": "lru", "cpu_backlog_high": 2.0, "tool_order": "fifo", "long_lane": 0}


class MarsPolicy(MlfqScheduler):
    """The engine-side half of MARS: MLFQ ordering, caps, shrinking and victims, plus retention."""

    name = "mars"

    def __init__(self, settings: MarsSettings | None = None) -> None:
        settings = settings or MarsSettings()
        super().__init__(settings.part(SchedulerSettings))  # type: ignore[arg-type]
        self.retention = RetentionPolicy(settings.part(RetentionSettings))  # type: ignore[arg-type]

    def on_arrival(self, req: RequestView, now: float) -> None:
        super().on_arrival(req, now)
        self.retention.on_arrival(req)

    def on_scheduled(self, step: ScheduledStep) -> None:
        super().on_scheduled(step)
        self.retention.on_scheduled(step)

    def on_turn_end(self, req: RequestView, now: float) -> Retention:
        assert self.engine is not None, "MarsPolicy used before bind()"
        return self.retention.decide(req, self.engine, now)

    def choose_pin_to_release(self, pins: Mapping[str, PinView], now: float) -> str:
        return self.retention.pin_to_release(pins)

    def on_tool_end(self, session_id: str, tool_name: str, duration_s: float, now: float) -> None:
        self.retention.on_tool_end(session_id, tool_name, duration_s)


def mars_admission(settings: MarsSettings, tool_cores: int, rps: float | None) -> AdmissionController:
    if not settings.admission:
        return AdmitAll()
    return MarsAdmission(settings.part(MarsAdmissionSettings), tool_cores=tool_cores, rps=rps)  # type: ignore[arg-type]


def mars_tool_order(settings: MarsSettings) -> MarsToolOrder:
    return MarsToolOrder(settings.part(ToolOrderSettings))  # type: ignore[arg-type]
