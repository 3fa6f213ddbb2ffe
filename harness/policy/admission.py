"""Admission: which backlog sessions start their agent loop, and when.

An admission controller is sans-IO: the runner tells it about arrivals, session ends and the end of the
arrival process, and asks it, with a snapshot of the information stream, which backlog sessions to
start now. The default admits everything at once (vLLM, SGLang and every baseline have no admission
control); MARS's control plane (mars_impl/admission.py) replaces it. Part of the policy contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from harness.policy.signals import Signals
from workloads.model import Session


class AdmissionController(Protocol):
    name: str
    interval_s: float | None  # also re-evaluate this often (None: only on arrivals and session ends)
    event_keys: tuple[str, ...]  # state() keys whose change is logged as an event

    def on_arrival(self, session: Session, now: float) -> None: ...
    def on_session_end(self, session: Session, now: float) -> None: ...
    def on_arrivals_done(self, now: float) -> None: ...
    def admit(self, backlog: Sequence[Session], signals: Signals, now: float) -> list[Session]:
        """Sessions of `backlog` (arrival order) to start now; the rest stay in the backlog."""
    def state(self) -> dict[str, Any]:
        """The controller's state for the timeline and event log (e.g. the admission window)."""


class AdmitAll:
    """No admission control: every session starts the moment it arrives."""

    name = "admit-all"
    interval_s: float | None = None
    event_keys: tuple[str, ...] = ()

    def on_arrival(self, session: Session, now: float) -> None:
        pass

    def on_session_end(self, session: Session, now: float) -> None:
        pass

    def on_arrivals_done(self, now: float) -> None:
        pass

    def admit(self, backlog: Sequence[Session], signals: Signals, now: float) -> list[Session]:
        return list(backlog)

    def state(self) -> dict[str, Any]:
        return {}
