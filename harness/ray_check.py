"""A look at a Ray cluster's address before `ray.init` connects to it.

`ray.init(address=...)` to an address where nothing answers retries for minutes, and against a cluster with
token auth (Ray's default for `ray start --head`) that this process sends no token or a wrong one it retries
for ~20 s and then says only "Failed to connect". One gRPC call to the address, with the token Ray itself
would send, tells these cases apart in well under 30 s, so each gets one line that names its fix.

Ray's rules (2.5x): a process connecting to an explicit address sends a token only when RAY_AUTH_MODE=token;
the token is RAY_AUTH_TOKEN, else the file at RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token (`ray
get-auth-token` prints the head node's). With TLS (RAY_USE_TLS) no look is taken: Ray's own errors apply.
"""

from __future__ import annotations

import os

from harness.errors import BadInput

CONNECT_TIMEOUT_S = 5.0
CALL_TIMEOUT_S = 5.0
GCS_PROBE = "/ray.rpc.NodeInfoGcsService/GetClusterId"  # an empty request is valid; answers with the id
CLIENT_PROBE = "/ray.rpc.RayletDriver/ClusterInfo"  # Ray Client (ray://): any answer but "no auth" will do
AUTH_FIX = ("set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN to the token `ray get-auth-token` prints on the head "
            "node (or RAY_AUTH_TOKEN_PATH=FILE), or run the cluster and mars-bench with RAY_AUTH_MODE=disabled")


def split_address(address: str) -> tuple[str, int, bool]:
    """(host, port, whether it is a Ray Client address) of `host:port` or `ray://host:port`."""
    client = address.startswith("ray://")
    rest = address[len("ray://"):] if client else address
    host, sep, port = rest.rpartition(":")
    if not sep:
        host, port = rest, "10001" if client else "6379"
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadInput(f"{address}: not a Ray address (HOST:PORT, or ray://HOST:PORT for Ray Client)")
    return host, int(port), client


def _token_header() -> tuple[list[tuple[str, str]], bool]:
    """(the metadata Ray would send to an explicit address, whether a token exists at all)."""
    try:
        from ray._raylet import AuthenticationTokenLoader  # noqa: PLC0415
    except ImportError:  # a Ray without token auth
        return [], False
    loader = AuthenticationTokenLoader.instance()
    exists = bool(loader.has_token(ignore_auth_mode=True))
    if not loader.has_token():  # RAY_AUTH_MODE is not "token": Ray sends none
        return [], exists
    return [(k.lower(), v) for k, v in loader.get_token_for_http_header().items()], exists


def check_cluster(address: str, flag: str = "--address") -> None:
    """Raise BadInput (one line, naming the fix) unless a Ray cluster answers at `address` and accepts this
    process's auth; returns at once for what it cannot judge (TLS)."""
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return
    import grpc  # noqa: PLC0415 - Ray's own dependency

    host, port, client = split_address(address)
    where = f"{flag} {address}"
    metadata, token_exists = _token_header()
    channel = grpc.insecure_channel(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    try:
        try:
            grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT_S)
        except grpc.FutureTimeoutError:
            raise BadInput(f"{where}: no Ray cluster answers at {host}:{port} within {CONNECT_TIMEOUT_S:.0f} s: "
                           "start one (`ray start --head` prints its address) or fix the address "
                           "(the head's GCS port, 6379 by default, or ray://HOST:10001 for Ray Client)") from None
        call = channel.unary_unary(CLIENT_PROBE if client else GCS_PROBE,
                                   request_serializer=lambda raw: raw, response_deserializer=lambda raw: raw)
        try:
            call(b"", timeout=CALL_TIMEOUT_S, metadata=metadata)
        except grpc.RpcError as e:
            code = e.code()
            if code == grpc.StatusCode.UNAUTHENTICATED:
                if metadata:
                    raise BadInput(f"{where}: the Ray cluster refused this machine's auth token: {AUTH_FIX}") from None
                have = " (a token is there, but RAY_AUTH_MODE is not token)" if token_exists else ""
                raise BadInput(f"{where}: the Ray cluster requires token auth and mars-bench sent no token{have}: "
                               f"{AUTH_FIX}") from None
            if code == grpc.StatusCode.UNIMPLEMENTED or (not client and code != grpc.StatusCode.OK):
                kind = "Ray Client server (ray://HOST:PORT)" if client else "Ray cluster's GCS (HOST:6379 by default)"
                raise BadInput(f"{where}: {host}:{port} answers, but not as a {kind} ({code.name})") from None
    finally:
        channel.close()
