"""One agent session's loop, sans-IO: LLM call -> tool call -> next LLM call ... -> done.

The simulated and the real runner both drive this object; it owns the session's bookkeeping (what the
next call is, time spent in LLM calls and tools) and produces the session's results row.
"""

from __future__ import annotations

import math

from harness.calls import CallSpec
from workloads.model import Session, ToolCall


class AgentLoop:
    """Progress of one admitted session."""

    def __init__(self, session: Session, admitted_s: float) -> None:
        self.session = session
        self.admitted_s = admitted_s
        self.turn = 0
        self.finish_s = math.nan
        self.failed: str | None = None
        self.prompt_tokens = 0
        self.output_tokens = 0
        self.llm_s = 0.0
        self.tool_s = 0.0
        self.tool_wait_s = 0.0

    @property
    def done(self) -> bool:
        return not math.isnan(self.finish_s)

    def next_call(self) -> CallSpec:
        s, k = self.session, self.turn
        turn = s.turns[k]
        return CallSpec(
            session_id=s.id,
            turn=k,
            prompt_tokens=s.prompt_tokens(k),
            max_tokens=turn.output_tokens,
            is_last_turn=k == len(s.turns) - 1,
            tool_name=turn.tool.name if turn.tool else None,
            prefix_id=s.prefix_id,
            prefix_tokens=s.prefix_tokens,
            session_arrival_s=s.arrival_s,
        )

    def call_finished(self, started_s: float, now: float, prompt_tokens: int, output_tokens: int) -> ToolCall | None:
        """Record the call; return the tool to run next, or None when the session is complete."""
        self.llm_s += now - started_s
        self.prompt_tokens += prompt_tokens
        self.output_tokens += output_tokens
        tool = self.session.turns[self.turn].tool
        if tool is None:
            self.turn += 1
            self.finish_s = now
        return tool

    def tool_finished(self, wait_s: float, run_s: float) -> None:
        self.tool_wait_s += wait_s
        self.tool_s += run_s
        self.turn += 1

    def fail(self, reason: str) -> None:
        self.failed = reason

    def row(self, isolated_jct_s: float = math.nan, floor_jct_s: float = math.nan, pool_jct_s: float = math.nan) -> dict:
        """The session as a row of the sessions table (harness.tables.SESSION_COLUMNS)."""
        return {
            "session_id": self.session.id,
            "arrival_s": self.session.arrival_s,
            "admitted_s": self.admitted_s,
            "finish_s": self.finish_s,
            "completed": self.done,
            "num_turns": len(self.session.turns),
            "turns_done": self.turn,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "llm_s": self.llm_s,
            "tool_s": self.tool_s,
            "tool_wait_s": self.tool_wait_s,
            "isolated_jct_s": isolated_jct_s,
            "floor_jct_s": floor_jct_s,
            "pool_jct_s": pool_jct_s,
        }
