"""`mars-bench serve`: MARS's control plane as an OpenAI-compatible gateway in front of unmodified vLLM or
SGLang servers, for real agent frameworks. identity.py reads who a call belongs to and its prompt length;
control.py is the sans-IO control plane (sessions, backlog, the harness's own admission controller, routing,
the tool signals, the priority field); metrics.py the gateway's Prometheus page; app.py the web layer
(Starlette on uvicorn, httpx to the upstreams). See README, "MARS in front of your server"."""
