"""``bench_gateway.py --gateway``: the gateway's cost on the real path, against the planner called directly.

One process runs a registry, a planner (PostgreSQL, throwaway server), the test ``Worker`` agent (a trivial
``shout`` skill, no model) and a gateway; the client alternates between the two paths so both see the same
machine load:

- *hop*: ``GetTask`` of a finished task — gateway (TLS + JWT, admission, delegation token, forward over mTLS)
  vs the planner over mTLS as ``client/ops``;
- *task*: ``SubmitTask`` of a one-step playbook, then ``GetTask`` every millisecond until it has finished
  (or, with ``--watch``, one ``WatchTask`` stream that the planner pushes the task's events into: no polling
  traffic in the shared event loop): gateway → planner → agent vs planner → agent.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

SHOUT = """
name: shout_once
defaults: {agent: {names: [testing/worker]}, timeout: 10}
steps:
  - {id: only, skill: shout, input: {text: "${task.input.text}"}}
output: {answer: "${steps.only.output.text}"}
"""


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 2 else max(values)


async def _finish(stub: Any, task_id: str, metadata: Any) -> None:
    from agentmesh.v1 import task_pb2

    final = (task_pb2.TASK_STATE_SUCCEEDED, task_pb2.TASK_STATE_FAILED, task_pb2.TASK_STATE_CANCELLED)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        task = (await stub.GetTask(task_pb2.GetTaskRequest(task_id=task_id), metadata=metadata, timeout=10)).task
        if task.state in final:
            if task.state != task_pb2.TASK_STATE_SUCCEEDED:
                raise RuntimeError(f"task {task_id} ended {task.state}: {task.error}")
            return
        await asyncio.sleep(0.001)
    raise TimeoutError(f"task {task_id} did not finish within 60 s")


async def _watch(stub: Any, task_id: str, metadata: Any) -> None:
    from agentmesh.v1 import task_pb2

    final = (task_pb2.TASK_STATE_SUCCEEDED, task_pb2.TASK_STATE_FAILED, task_pb2.TASK_STATE_CANCELLED)
    stream = stub.WatchTask(task_pb2.WatchTaskRequest(task_id=task_id), metadata=metadata, timeout=60)
    async for event in stream:
        if event.task.state in final:
            stream.cancel()
            if event.task.state != task_pb2.TASK_STATE_SUCCEEDED:
                raise RuntimeError(f"task {task_id} ended {event.task.state}: {event.task.error}")
            return
    raise RuntimeError(f"the watch of task {task_id} ended before the task did")


async def bench_gateway_path(tasks: int, watch: bool = False) -> None:
    import grpc

    from agentmesh._channel import create_channel
    from agentmesh._health import wait_until_serving
    from agentmesh._settings import Settings
    from agentmesh.agent import AgentRuntime
    from agentmesh.security import CertificateAuthority
    from agentmesh.services.gateway.devtokens import DevIssuer
    from agentmesh.services.gateway.server import build_server as build_gateway
    from agentmesh.services.planner.playbooks import Playbook
    from agentmesh.services.planner.server import build_server as build_planner
    from agentmesh.services.registry import build_server as build_registry
    from agentmesh.storage import upgrade
    from agentmesh.v1 import task_pb2, task_pb2_grpc
    from tests.fixtures.postgres import _throwaway_server
    from tests.integration.planner_agents import Worker

    with _throwaway_server() as server, tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        server.execute('CREATE DATABASE "bench_gateway"')
        url = server.url("bench_gateway")
        upgrade(url)
        home = Path(tmp)
        ca = CertificateAuthority.init(home, "agentmesh.test")
        for kind, name in (("service", "registry"), ("service", "planner"), ("service", "gateway"),
                           ("client", "ops"), ("agent", "testing/worker")):
            ca.issue(kind, name)
        settings = Settings(home=home, trust_domain="agentmesh.test", database_url=url, readiness_interval=0.1,
                            planner_poll_interval=0.02, gateway_rate_per_principal=1e6,
                            gateway_burst_per_principal=1e6, gateway_rate_per_tenant=1e6,
                            gateway_burst_per_tenant=1e6, trace_sampling=0.0)
        registry = build_registry(settings, port=0)
        await registry.start()
        settings = settings.replace(registry_address=registry.address)
        planner = build_planner(settings, port=0)
        await planner.start()
        planner.engine.planner.playbooks.add(Playbook.from_yaml(SHOUT))
        settings = settings.replace(planner_address=planner.address)
        issuer = DevIssuer(home / "dev-jwks", issuer=settings.gateway_jwt_issuer, audience=settings.gateway_jwt_audience)
        issuer.rotate()
        gateway = build_gateway(settings, port=0)
        await gateway.start()
        direct_channel = create_channel(planner.address, settings, kind="client", name="ops")
        public_channel = grpc.aio.secure_channel(
            gateway.address, grpc.ssl_channel_credentials(root_certificates=(home / "ca" / "ca.pem").read_bytes())
        )
        async with AgentRuntime(Worker(settings), port=0, registry_address=registry.address) as runtime:
            await runtime.wait_registered()
            await wait_until_serving(direct_channel)
            await wait_until_serving(public_channel)
            token = issuer.issue(subject="bench", scopes=["tasks:submit", "tasks:read"], ttl_seconds=3600)
            paths = {
                "gateway": (task_pb2_grpc.TaskServiceStub(public_channel), [("authorization", f"Bearer {token}")]),
                "direct": (task_pb2_grpc.TaskServiceStub(direct_channel), []),
            }
            hop: dict[str, list[float]] = {name: [] for name in paths}
            full: dict[str, list[float]] = {name: [] for name in paths}
            request = task_pb2.SubmitTaskRequest(goal="shout", playbook="shout_once")
            request.input.update({"text": "hello"})
            # Submitted through the gateway: its end user's tenant may read it there, and ops may read any task.
            gateway_stub, gateway_metadata = paths["gateway"]
            warm = (await gateway_stub.SubmitTask(request, metadata=gateway_metadata, timeout=10)).task.task_id
            await _finish(gateway_stub, warm, gateway_metadata)
            for round_ in range(tasks + 20):  # 20 warm-up rounds, then measured ones, paths interleaved
                for name, (stub, metadata) in paths.items():
                    started = time.perf_counter()
                    await stub.GetTask(task_pb2.GetTaskRequest(task_id=warm), metadata=metadata, timeout=10)
                    hop_time = time.perf_counter() - started
                    started = time.perf_counter()
                    task = (await stub.SubmitTask(request, metadata=metadata, timeout=10)).task
                    await (_watch if watch else _finish)(stub, task.task_id, metadata)
                    if round_ >= 20:
                        hop[name].append(hop_time * 1000)
                        full[name].append((time.perf_counter() - started) * 1000)
            print("| path | GetTask p50 | p99 | submit→finished p50 | p99 |")
            print("|---|---|---|---|---|")
            for name in paths:
                print(f"| {name} | {statistics.median(hop[name]):.2f} ms | {_p(hop[name], 99):.2f} ms | "
                      f"{statistics.median(full[name]):.2f} ms | {_p(full[name], 99):.2f} ms |")
            print(f"\ngateway / direct, p50: GetTask {statistics.median(hop['gateway']) / statistics.median(hop['direct']):.2f}x, "
                  f"submit→finished {statistics.median(full['gateway']) / statistics.median(full['direct']):.2f}x "
                  f"(+{statistics.median(hop['gateway']) - statistics.median(hop['direct']):.2f} ms per call)")
        await public_channel.close()
        await direct_channel.close()
        await gateway.stop(grace=0.5)
        await planner.stop(grace=0.5)
        await registry.stop(grace=0.5)
