"""The gateway's own Prometheus metrics (its /metrics page), on a registry of its own (several gateways in
one process, as in the tests, do not collide). Names start with `mars_gateway_`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
WAIT_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)


class _ControlCollector:
    """Reads the control plane's state when /metrics is scraped (no bookkeeping on the request path)."""

    def __init__(self, state: Callable[[], dict[str, Any]]) -> None:
        self.state = state

    def collect(self) -> Any:
        s = self.state()
        yield _gauge("mars_gateway_backlog_sessions", "Sessions whose first call waits for admission", s["backlog"])
        yield _gauge("mars_gateway_admitted_sessions", "Admitted sessions not ended", s["admitted"])
        yield _gauge("mars_gateway_tool_inflight", "Tool calls in flight (reported, or sessions between calls)",
                     s["tool_inflight"])
        if s.get("window") is not None:
            yield _gauge("mars_gateway_window", "MARS admission window", s["window"])
        if s.get("active_limit") is not None:
            yield _gauge("mars_gateway_active_limit", "Most sessions admitted at once now", s["active_limit"])
        if s.get("kv_usage") is not None:
            yield _gauge("mars_gateway_upstream_kv_usage", "KV-cache usage of the upstreams (combined)", s["kv_usage"])
        held = GaugeMetricFamily("mars_gateway_upstream_sessions", "Sessions routed to each upstream",
                                 labels=["upstream"])
        for i, n in enumerate(s["sessions_per_upstream"]):
            held.add_metric([str(i)], n)
        yield held


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class GatewayMetrics:
    def __init__(self, state: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("mars_gateway_requests", "Calls answered, by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.admission_wait = Histogram("mars_gateway_admission_wait_seconds",
                                        "Time a session's first call waited in the backlog", buckets=WAIT_BUCKETS,
                                        registry=r)
        self.upstream_latency = Histogram("mars_gateway_upstream_latency_seconds",
                                          "Upstream time to the response's headers", ["upstream"],
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.call_seconds = Histogram("mars_gateway_call_seconds", "Whole call through the gateway, admission "
                                      "wait included", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.tool_gap = Histogram("mars_gateway_tool_gap_seconds", "Gap between a session's consecutive calls",
                                  buckets=WAIT_BUCKETS, registry=r)
        self.streams = Gauge("mars_gateway_streams_in_flight", "Streams being relayed now", registry=r)
        self.sessions_admitted = Counter("mars_gateway_sessions_admitted", "Sessions admitted", registry=r)
        self.sessions_ended = Counter("mars_gateway_sessions_ended", "Sessions ended, by reason", ["reason"],
                                      registry=r)
        self.upstream_errors = Counter("mars_gateway_upstream_errors", "Upstream failures, by kind", ["kind"],
                                       registry=r)
        r.register(_ControlCollector(state))

    def page(self) -> bytes:
        return generate_latest(self.registry)
