"""The policy contract: everything a scheduling policy (baselines/, mars_impl/) may import.

* `hooks` - the engine-side hooks (`Policy`) and what they read and return: request, pin and engine views,
  retention actions, the scheduled step;
* `signals` - the unified information stream's data (KV and tool-pool snapshots);
* `admission` - the harness-side admission-controller protocol and its default (admit everything);
* `tools` - the CPU half: the tool-order protocol (which waiting tool call runs next) and its default (FIFO);
* `helpers` - quantities more than one policy computes the same way (tool-duration statistics, context
  sizes, pin-release orders).

The policy driver (`driver`) sits on the other side of the contract: the engines' shared machinery that
calls the hooks (pins, turn ends, recompute ledger, chunk caps). Policies never import it.
"""

from harness.policy.admission import AdmissionController, AdmitAll
from harness.policy.hooks import (DISCARD, FREE, OFFLOAD, EngineView, PinView, Policy, R, RequestView, Retention,
                                  ScheduledStep)
from harness.policy.signals import EngineSignals, Signals, ToolSignals
from harness.policy.tools import FifoTools, ToolOrder, ToolRequest

__all__ = ["DISCARD", "FREE", "OFFLOAD", "AdmissionController", "AdmitAll", "EngineSignals", "EngineView", "FifoTools",
           "PinView", "Policy", "R", "RequestView", "Retention", "ScheduledStep", "Signals", "ToolOrder", "ToolRequest",
           "ToolSignals"]
