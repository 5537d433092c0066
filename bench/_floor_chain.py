"""``bench_gateway.py --floor``: the least any durable gateway -> planner -> agent path costs on this machine.

Three bare ``grpc.aio`` servers, each in its own process (uvloop), as the mesh's processes are:

- *gateway role*: public TLS port (no client certificate), forwards the bytes over mTLS to the planner role;
- *planner role*: mTLS; with ``durable`` it commits a row before the call and another after it (one INSERT, one
  UPDATE, autocommit, on a persistent psycopg connection to the same kind of throwaway PostgreSQL the other
  benches use, ``fsync=off``), and calls the agent role over mTLS in between;
- *agent role*: mTLS echo.

No interceptors, no authorisation, no audit, no plan, no task state: every one of those is left out, so this is a
floor, not a model of the mesh. The client alternates between a bare mTLS call to the agent role (one hop, the
baseline every other bench divides by), the chain without the database, the chain with its two commits, and the
chain with the step token alone (issue 13: every Invoke carries one, made for that step: the planner role signs it,
the agent role checks it), and the chain with all three tokens issues 10, 13 and 14 put on this path (also the
caller's bearer JWT checked at the gateway role, and a delegation token the gateway role signs and the planner role
checks: both could be cached per caller token, the step token cannot); ES256 with PyJWT, as the mesh's. All paths
see the same machine load. Issue 14's target for the real path is p50 <= 2.5 ms.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SERVICE = "bench.Floor"
_ROLES = ("agent", "planner", "gateway")


_CLAIMS = {"iss": "bench-floor", "sub": "user-1", "scope": "tasks:submit"}


def _keys(home: Path) -> tuple[Any, Any]:
    """The one P-256 key pair every role signs and checks with (separate keys would cost the same)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = home / "floor-key.pem"
    if not path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    return private, private.public_key()  # type: ignore[union-attr]


def _sign(private: Any, audience: str) -> bytes:
    import jwt

    now = int(time.time())
    return jwt.encode({**_CLAIMS, "aud": audience, "iat": now, "nbf": now, "exp": now + 300}, private,
                      algorithm="ES256").encode()


def _check(public: Any, token: bytes, audience: str) -> None:
    import jwt

    jwt.decode(token, public, algorithms=["ES256"], audience=audience, issuer=_CLAIMS["iss"], leeway=5,
               options={"require": ["exp", "nbf", "aud", "iss"]})


def _settings(home: Path) -> Any:
    from agentmesh._settings import Settings

    return Settings(home=home, trust_domain="agentmesh.test")


async def serve_role(role: str, home: Path, port: int, upstream: str, database: str) -> None:
    """Run one role's server until killed (the child process's whole life)."""
    import grpc

    from agentmesh.security import add_port, channel_credentials

    settings = _settings(home)
    channel: grpc.aio.Channel | None = None
    if upstream:
        channel = grpc.aio.secure_channel(upstream, channel_credentials(settings, "service", role))
    forward = channel.unary_unary(f"/{SERVICE}/Call") if channel is not None else None
    conn: Any = None
    if database:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(database, autocommit=True)
    lock = asyncio.Lock()  # one connection: the client keeps one call in flight anyway
    private, public = _keys(home)
    # What each role checks, and whom it signs for: the caller's JWT at the gateway, the gateway's delegation token
    # at the planner, the planner's step token at the agent.
    audience, next_audience = {"gateway": ("gateway", "planner"), "planner": ("planner", "agent"),
                               "agent": ("agent", "")}[role]

    async def call(request: bytes, context: Any) -> bytes:
        if role == "agent" and request.startswith(b"step "):  # only the step token, signed by the planner role
            token, _, rest = request[5:].partition(b" ")
            _check(public, token, "agent")
            return rest
        if role == "planner" and request.startswith(b"step "):
            request = b"step " + _sign(private, "agent") + b" " + request[5:]
        if request.startswith(b"tokens "):
            token, _, rest = request[7:].partition(b" ")
            _check(public, token, audience)
            if forward is None:
                return rest
            request = b"tokens " + _sign(private, next_audience) + b" " + rest
        if forward is None:
            return request
        durable = conn is not None and b"durable" in request[-20:]
        if durable:
            async with lock:
                row = await (await conn.execute("INSERT INTO floor_tasks (state) VALUES ('RUNNING') RETURNING id")).fetchone()
        reply: bytes = await forward(request, timeout=10)
        if durable:
            async with lock:
                await conn.execute("UPDATE floor_tasks SET state = 'SUCCEEDED', output = %s WHERE id = %s",
                                   (reply.decode(), row[0]))
        return reply

    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        SERVICE, {"Call": grpc.unary_unary_rpc_method_handler(call)})])
    kind, name = ("agent", "testing/worker") if role == "agent" else ("service", role)
    add_port(server, f"127.0.0.1:{port}", settings, kind, name, require_client_auth=role != "gateway")
    await server.start()
    await server.wait_for_termination()


def _spawn(role: str, home: Path, port: int, upstream: str = "", database: str = "") -> subprocess.Popen[bytes]:
    argv = [sys.executable, str(Path(__file__).resolve().parent / "bench_gateway.py"), "--floor-role", role,
            str(home), str(port), upstream or "-", database or "-"]
    return subprocess.Popen(argv, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})


async def _ready(channel: Any, payload: bytes) -> None:
    call = channel.unary_unary(f"/{SERVICE}/Call")
    deadline = time.monotonic() + 30
    while True:
        try:
            await call(payload, timeout=2)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def bench_floor(rounds: int) -> None:
    import grpc

    from agentmesh.inference import free_port
    from agentmesh.security import CertificateAuthority, channel_credentials
    from tests.fixtures.postgres import _throwaway_server

    with _throwaway_server() as server, tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        server.execute('CREATE DATABASE "bench_floor"')
        database = server.url("bench_floor").replace("+psycopg", "").replace("postgresql+psycopg", "postgresql")
        import psycopg

        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute("CREATE TABLE floor_tasks (id bigserial PRIMARY KEY, state text NOT NULL, output text)")
        home = Path(tmp)
        ca = CertificateAuthority.init(home, "agentmesh.test")
        for kind, name in (("service", "planner"), ("service", "gateway"), ("client", "ops"), ("agent", "testing/worker")):
            ca.issue(kind, name)
        ports = {role: free_port() for role in _ROLES}
        children = [
            _spawn("agent", home, ports["agent"]),
            _spawn("planner", home, ports["planner"], f"127.0.0.1:{ports['agent']}", database),
            _spawn("gateway", home, ports["gateway"], f"127.0.0.1:{ports['planner']}"),
        ]
        try:
            settings = _settings(home)
            agent = grpc.aio.secure_channel(f"127.0.0.1:{ports['agent']}", channel_credentials(settings, "client", "ops"))
            public = grpc.aio.secure_channel(
                f"127.0.0.1:{ports['gateway']}",
                grpc.ssl_channel_credentials(root_certificates=(home / "ca" / "ca.pem").read_bytes()),
            )
            for channel in (agent, public):
                await _ready(channel, b"hello")
            paths = {
                "one bare mTLS hop (client -> agent role)": (agent.unary_unary(f"/{SERVICE}/Call"), b"hello"),
                "three hops, no database": (public.unary_unary(f"/{SERVICE}/Call"), b"hello"),
                "three hops + two commits (the floor)": (public.unary_unary(f"/{SERVICE}/Call"), b"durable hello"),
                "three hops + two commits + the step token": (public.unary_unary(f"/{SERVICE}/Call"), b"step durable hello"),
                "three hops + two commits + the three tokens": (
                    public.unary_unary(f"/{SERVICE}/Call"), b"tokens " + _sign(_keys(home)[0], "gateway") + b" durable hello"),
            }
            times: dict[str, list[float]] = {name: [] for name in paths}
            for round_ in range(rounds + 200):  # 200 warm-up rounds, paths interleaved
                for name, (call, payload) in paths.items():
                    started = time.perf_counter()
                    await call(payload, timeout=10)
                    if round_ >= 200:
                        times[name].append((time.perf_counter() - started) * 1000)
            print(f"| path ({rounds} calls each, 1 in flight) | p50 | p90 | p99 |")
            print("|---|---|---|---|")
            for name, values in times.items():
                cuts = statistics.quantiles(values, n=100)
                print(f"| {name} | {statistics.median(values):.2f} ms | {cuts[89]:.2f} ms | {cuts[98]:.2f} ms |")
            await agent.close()
            await public.close()
        finally:
            for child in children:
                child.terminate()
            for child in children:
                try:
                    child.wait(10)
                except subprocess.TimeoutExpired:
                    child.kill()


def run_role(argv: list[str]) -> None:
    """The child side of :func:`_spawn`: ``ROLE HOME PORT UPSTREAM|- DATABASE|-``."""
    import uvloop

    role, home, port, upstream, database = argv
    uvloop.run(serve_role(role, Path(home), int(port), "" if upstream == "-" else upstream,
                          "" if database == "-" else database))
