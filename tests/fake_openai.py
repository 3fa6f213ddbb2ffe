"""What every fake OpenAI-compatible server of the tests shares: a request handler answering `/v1/models`
(one model, `fake-model`) and, when its server has a `metrics_page`, a Prometheus `/metrics`; the fakes add
their `/v1/completions` (do_POST)."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any


class OpenAIHandler(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        metrics = getattr(self.server, "metrics_page", None)
        if self.path == "/v1/models":
            self._send(200, json.dumps({"object": "list", "data": [{"id": "fake-model"}]}).encode())
        elif self.path == "/metrics" and metrics is not None:
            self._send(200, metrics.encode(), "text/plain")
        else:
            self._send(404, b"{}")
