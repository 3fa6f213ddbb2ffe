"""The CPU half of a policy: which waiting tool call runs next. Part of the policy contract.

A tool-order policy is sans-IO and shared by both tool pools (the modelled one, `harness.tools.ToolPool`,
and the real pinned processes, `harness.real_tools.RealToolPool`). In queue mode, whenever cores free up or
a call arrives with two or more waiting, the pool asks `order` for the waiting calls in the order they
should start, and starts them head-of-line in that order (the first that does not fit waits for cores, and
nobody overtakes it - so a policy that ages its calls never starves a wide one). In timeshare mode every
call starts at once and the order is not asked. The pool reports every finished call to `on_tool_end`.

What a policy sees of a call is what a real system knows before the call runs: its session, the tool's name,
the cores it asks for, when it was submitted - never its CPU time (the simulated pool knows it; a real one
does not). Vanilla engines and every baseline keep FIFO (`FifoTools`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ToolRequest:
    """A waiting tool call as a tool-order policy sees it; `seq` is its submission order in the pool."""

    job_id: Hashable
    session_id: str
    tool: str
    cores: int
    submitted_s: float
    seq: int


class ToolOrder(Protocol):
    name: str

    def order(self, waiting: Sequence[ToolRequest], now: float) -> list[ToolRequest]:
        """The waiting calls (submission order) in the order they should start; the same calls, each once."""

    def on_tool_end(self, call: ToolRequest, run_s: float, now: float) -> None:
        """A call finished after running `run_s` seconds (started to finished)."""


class FifoTools:
    """First come, first served: the pools' own order (vLLM, SGLang and every baseline)."""

    name = "fifo"

    def order(self, waiting: Sequence[ToolRequest], now: float) -> list[ToolRequest]:
        return list(waiting)

    def on_tool_end(self, call: ToolRequest, run_s: float, now: float) -> None:
        pass


def checked_order(policy: ToolOrder, waiting: Sequence[ToolRequest], now: float) -> list[ToolRequest]:
    """`policy.order(waiting, now)`, refused unless it is a permutation of `waiting` (a call lost or run twice
    would corrupt the pool)."""
    out = policy.order(waiting, now)
    if len(out) != len(waiting) or {id(r) for r in out} != {id(r) for r in waiting}:
        raise ValueError(f"tool order {policy.name!r} did not return a permutation of the {len(waiting)} waiting calls")
    return list(out)
