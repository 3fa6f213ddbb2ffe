"""Admission: which backlog sessions start their agent loop. The default admits everything at once
(vLLM, SGLang and every baseline have no admission control); MARS's control plane replaces it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from workloads.model import Session


@dataclass(frozen=True)
class EngineSignals:
    """GPU side of the information stream, as the engine reports it."""

    kv_usage: float
    free_blocks: int
    total_blocks: int
    block_size: int
    running: int
    waiting: int


class AdmitAll:
    """No admission control: every session starts the moment it arrives."""

    name = "admit-all"
    interval_s: float | None = None  # no periodic re-evaluation needed

    def admit(self, backlog: Sequence[Session], active: int, engine: EngineSignals, tools: object, now: float) -> list[Session]:
        return list(backlog)
