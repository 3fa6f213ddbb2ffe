"""MARS's CPU half: the order of the waiting tool calls (harness.policy.tools), from what the information
stream knows before a call runs - its tool's name, the cores it asks for and how long it has waited - never
its CPU time.

`tool_order` (`--set mars.tool_order=...`); a call's expected run time is the running mean of its tool's
finished calls (of all tools' before its tool has one; `tool_order_prior_s` before any):
* ``shortest`` (default) - shortest expected core-seconds first (expected run x cores): short calls
  (greps, file reads, one-file builds) stop queueing behind minute-long, many-core test runs - the order
  that minimises mean completion time when the estimates are right. A long call can wait while shorter
  ones keep coming; on `paper` its p95 JCT still drops with the mean (README, "The CPU half");
* ``hrrn`` - highest response ratio next, (wait + expected) / expected: a long call's ratio grows while it
  waits, so none starves, at the cost of most of the gain;
* ``fifo`` - the pools' own order (the ablation; what every other backend does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from harness.policy.tools import ToolRequest


class ToolOrderSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    tool_order: Literal["shortest", "hrrn", "fifo"] = "shortest"
    tool_order_prior_s: float = Field(default=1.0, gt=0, description="expected tool run time before any finished")


class MarsToolOrder:
    """Orders the waiting tool calls by expected run time learned online per tool name (see the module)."""

    name = "mars"

    def __init__(self, settings: ToolOrderSettings | None = None) -> None:
        self.settings = settings or ToolOrderSettings()
        self._sum: dict[str, float] = {}
        self._count: dict[str, int] = {}
        self._total, self._n = 0.0, 0

    def expected_s(self, tool: str) -> float:
        """Mean run time of `tool`'s finished calls; of all tools' before it has one; the prior before any."""
        n = self._count.get(tool, 0)
        if n:
            return self._sum[tool] / n
        return self._total / self._n if self._n else self.settings.tool_order_prior_s

    def order(self, waiting: Sequence[ToolRequest], now: float) -> list[ToolRequest]:
        mode = self.settings.tool_order
        if mode == "fifo":
            return list(waiting)
        floor = 1e-3  # a tool that has only ever taken ~0 s still has a finite ratio
        if mode == "shortest":
            return sorted(waiting, key=lambda r: (max(self.expected_s(r.tool), floor) * r.cores, r.seq))

        def ratio(r: ToolRequest) -> float:
            expected = max(self.expected_s(r.tool), floor)
            return (now - r.submitted_s + expected) / expected

        return sorted(waiting, key=lambda r: (-ratio(r), r.seq))

    def on_tool_end(self, call: ToolRequest, run_s: float, now: float) -> None:
        self._sum[call.tool] = self._sum.get(call.tool, 0.0) + run_s
        self._count[call.tool] = self._count.get(call.tool, 0) + 1
        self._total += run_s
        self._n += 1
