"""``RegistryClient``: the registry's RPCs for other processes (planner, gateway, CLI), errors as MeshError.

async with RegistryClient(settings, kind="service", name="planner") as registry:
    answer = await registry.discover(skill="classify_ticket", intent="triage a refund", routing_key=task_id)
    best = answer.candidates[0]

An agent heartbeats over one long-lived stream (a message per heartbeat costs the registry a fraction of a call):

    stream = registry.heartbeat_stream()
    lease = await stream.heartbeat(lease_id, load=0.3)   # raises NotFoundError when the lease is gone
    await stream.close()
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import duration_pb2

from agentmesh._channel import create_channel
from agentmesh._errors import DeadlineExceededError, UnavailableError, from_rpc_error
from agentmesh._settings import Settings
from agentmesh.v1 import agent_pb2, registry_pb2, registry_pb2_grpc

__all__ = ["REGISTRY_IDENTITY", "HeartbeatStream", "RegistryClient"]

# Every registry replica presents this identity; clients verify it, not the address they dialled.
REGISTRY_IDENTITY = "service/registry"


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


class HeartbeatStream:
    """Heartbeats on one open ``StreamHeartbeats`` call.

    :meth:`heartbeat` waits for the renewed lease; :meth:`renew` only sends (one message, the routine
    case). The registry checks the caller once per stream and ends the stream at the first heartbeat that
    fails, with the status the unary ``Heartbeat`` would have returned: the next :meth:`heartbeat` or
    :meth:`renew` raises that error (e.g. ``NotFoundError``: register again), :meth:`wait_ended` returns as
    soon as it happens, and the stream is then :attr:`closed`; open a new one to go on. A registry without
    the RPC raises ``UnimplementedError`` (use :meth:`RegistryClient.heartbeat` instead).
    """

    def __init__(self, call: Any) -> None:
        self._call = call
        self._ended = asyncio.Event()
        call.add_done_callback(lambda _: self._ended.set())
        self.closed = False

    async def heartbeat(
        self,
        lease_id: str,
        *,
        state: int = agent_pb2.SERVING_STATE_SERVING,
        load: float = 0.0,
        deadline: float | None = None,
    ) -> registry_pb2.Lease:
        """Renew a lease over the stream, reporting state and load, and wait for the renewed lease."""
        reply = await self._send(lease_id, state, load, deadline, acknowledge=True)
        assert reply is not None
        return reply.lease

    async def renew(
        self,
        lease_id: str,
        *,
        state: int = agent_pb2.SERVING_STATE_SERVING,
        load: float = 0.0,
        deadline: float | None = None,
    ) -> None:
        """Renew a lease over the stream without waiting for an answer; a failure ends the stream (see above)."""
        await self._send(lease_id, state, load, deadline, acknowledge=False)

    async def wait_ended(self) -> None:
        """Return once the stream has ended (the registry refused a heartbeat, stopped, or the stream broke)."""
        await self._ended.wait()

    async def _send(
        self, lease_id: str, state: int, load: float, deadline: float | None, *, acknowledge: bool
    ) -> registry_pb2.StreamHeartbeatsResponse | None:
        if self.closed:
            raise UnavailableError("this heartbeat stream is closed; open a new one")
        request = registry_pb2.StreamHeartbeatsRequest(
            lease_id=lease_id, state=state, load=load, acknowledge=acknowledge  # type: ignore[arg-type]
        )
        try:
            async with asyncio.timeout(deadline):
                if not self._call.done():
                    with contextlib.suppress(asyncio.InvalidStateError):  # the registry already ended the stream:
                        await self._call.write(request)
                    if not acknowledge and not self._call.done():
                        return None  # sent: if it fails, the stream ends and the next call raises why
                reply = await self._call.read()  # the answer, or (ended) the status the stream ended with
        except grpc.RpcError as exc:
            self._abandon()
            raise from_rpc_error(exc) from None
        except TimeoutError:
            self._abandon()
            raise DeadlineExceededError(f"no heartbeat answer on the stream within {deadline}s") from None
        except BaseException:
            self._abandon()  # interrupted between a heartbeat and its answer: the stream is out of step
            raise
        if reply is grpc.aio.EOF:  # type: ignore[attr-defined]  # grpc-stubs lag aio
            self._abandon()
            raise UnavailableError("the registry ended the heartbeat stream; open a new one")
        return reply  # type: ignore[no-any-return]

    def _abandon(self) -> None:
        self.closed = True
        self._call.cancel()

    async def close(self) -> None:
        """End the stream cleanly (the registry sees it finish, not fail); a stuck stream is cancelled."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self._call.done_writing()
                await self._call.code()
        self._call.cancel()


class RegistryClient:
    """Typed calls to ``RegistryService`` over a mesh channel; failures raise :mod:`agentmesh._errors` classes."""

    def __init__(
        self,
        settings: Settings,
        *,
        kind: str,
        name: str,
        address: str | None = None,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        self._settings = settings
        self._own_channel = channel is None
        self.address = address or settings.registry_address
        self.channel = channel or create_channel(
            self.address, settings, kind=kind, name=name, server_identity=REGISTRY_IDENTITY
        )
        self.stub = registry_pb2_grpc.RegistryServiceStub(self.channel)

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel (when this client created it)."""
        if self._own_channel:
            await self.channel.close(grace=None)

    async def _call(self, method: str, request: Any, deadline: float | None) -> Any:
        try:
            return await getattr(self.stub, method)(
                request, timeout=deadline or self._settings.default_deadline
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def register(
        self, card: agent_pb2.AgentCard, *, lease_ttl: float = 0.0, deadline: float | None = None
    ) -> registry_pb2.RegisterAgentResponse:
        """Register one instance of ``card``; the reply carries the instance and its lease."""
        request = registry_pb2.RegisterAgentRequest(card=card)
        if lease_ttl:
            request.lease_ttl.CopyFrom(_duration(lease_ttl))
        return await self._call("RegisterAgent", request, deadline)  # type: ignore[no-any-return]

    async def heartbeat(
        self,
        lease_id: str,
        *,
        state: int = agent_pb2.SERVING_STATE_SERVING,
        load: float = 0.0,
        deadline: float | None = None,
    ) -> registry_pb2.Lease:
        """Renew a lease, reporting state and load."""
        request = registry_pb2.HeartbeatRequest(lease_id=lease_id, state=state, load=load)  # type: ignore[arg-type]
        return (await self._call("Heartbeat", request, deadline)).lease  # type: ignore[no-any-return]

    def heartbeat_stream(self) -> HeartbeatStream:
        """Open a long-lived heartbeat stream: one message per heartbeat instead of one call (see :class:`HeartbeatStream`)."""
        return HeartbeatStream(self.stub.StreamHeartbeats(None))

    async def deregister(self, lease_id: str, *, deadline: float | None = None) -> None:
        """Remove an instance at once."""
        await self._call("DeregisterAgent", registry_pb2.DeregisterAgentRequest(lease_id=lease_id), deadline)

    async def get_agent(
        self, namespace: str, name: str, version: str = "", *, deadline: float | None = None
    ) -> registry_pb2.GetAgentResponse:
        """One agent (the highest live version unless ``version`` is given) and its live instances."""
        request = registry_pb2.GetAgentRequest(namespace=namespace, name=name, version=version)
        return await self._call("GetAgent", request, deadline)  # type: ignore[no-any-return]

    async def list_agents(
        self,
        *,
        namespace: str = "",
        name_prefix: str = "",
        include_not_serving: bool = False,
        page_size: int = 0,
        page_token: str = "",
        deadline: float | None = None,
    ) -> registry_pb2.ListAgentsResponse:
        """One page of live instances."""
        request = registry_pb2.ListAgentsRequest(
            namespace=namespace,
            name_prefix=name_prefix,
            include_not_serving=include_not_serving,
            page_size=page_size,
            page_token=page_token,
        )
        return await self._call("ListAgents", request, deadline)  # type: ignore[no-any-return]

    async def iter_agents(self, **filters: Any) -> AsyncIterator[registry_pb2.AgentInstance]:
        """Every instance matching ``filters`` (as :meth:`list_agents`), page after page."""
        token = ""
        while True:
            page = await self.list_agents(page_token=token, **filters)
            for instance in page.instances:
                yield instance
            token = page.next_page_token
            if not token:
                return

    async def discover(
        self,
        *,
        names: Sequence[str] = (),
        patterns: Sequence[str] = (),
        purpose: str = "",
        required_policies: Sequence[str] = (),
        skill: str = "",
        labels: Mapping[str, str] | None = None,
        version_constraint: str = "",
        intent: str = "",
        max_results: int = 0,
        routing_key: str = "",
        view: int = registry_pb2.INSTANCE_VIEW_UNSPECIFIED,
        deadline: float | None = None,
    ) -> registry_pb2.DiscoverAgentsResponse:
        """Ranked candidates, best first, each with a score and reasons.

        ``view=registry_pb2.INSTANCE_VIEW_BASIC`` returns each card without descriptions and skill schemas
        (a smaller, faster answer); the default is the whole card.
        """
        request = registry_pb2.DiscoverAgentsRequest(
            visibility=registry_pb2.VisibilityScope(names=names, patterns=patterns),
            characteristics=registry_pb2.CharacteristicsScope(
                purpose=purpose,
                required_policies=required_policies,
                skill=skill,
                labels=dict(labels or {}),
                version_constraint=version_constraint,
                intent=intent,
            ),
            max_results=max_results,
            routing_key=routing_key,
            view=view,  # type: ignore[arg-type]
        )
        return await self._call("DiscoverAgents", request, deadline)  # type: ignore[no-any-return]

    async def watch(
        self, *, since_revision: int = 0, namespace: str = ""
    ) -> AsyncIterator[registry_pb2.WatchAgentsResponse]:
        """A snapshot (``since_revision=0``) or the changes after a revision, then every change as it happens."""
        call = self.stub.WatchAgents(
            registry_pb2.WatchAgentsRequest(since_revision=since_revision, namespace=namespace)
        )
        try:
            async for event in call:
                yield event
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()

    async def set_routing(
        self,
        namespace: str,
        name: str,
        weights: Mapping[str, int],
        *,
        max_error_rate: float | None = None,
        min_requests: int = 20,
        window: float = 60.0,
        reason: str = "",
        deadline: float | None = None,
    ) -> registry_pb2.RoutingPolicy:
        """Set the version weights of an agent; with ``max_error_rate`` canaries roll back automatically."""
        policy = registry_pb2.RoutingPolicy(
            namespace=namespace, name=name, weights=dict(weights), reason=reason
        )
        if max_error_rate is not None:
            policy.canary.CopyFrom(
                registry_pb2.CanaryPolicy(
                    max_error_rate=max_error_rate, min_requests=min_requests, window=_duration(window)
                )
            )
        reply = await self._call(
            "SetRoutingPolicy", registry_pb2.SetRoutingPolicyRequest(policy=policy), deadline
        )
        return reply.policy  # type: ignore[no-any-return]

    async def get_routing(
        self, namespace: str, name: str, *, deadline: float | None = None
    ) -> registry_pb2.RoutingPolicy:
        """The version weights of an agent."""
        request = registry_pb2.GetRoutingPolicyRequest(namespace=namespace, name=name)
        return (await self._call("GetRoutingPolicy", request, deadline)).policy  # type: ignore[no-any-return]

    async def report_outcome(
        self,
        namespace: str,
        name: str,
        version: str,
        *,
        success: bool,
        instance_id: str = "",
        error_code: str = "",
        latency: float = 0.0,
        deadline: float | None = None,
    ) -> bool:
        """Tell the registry how a call went; returns True when it rolled a canary back."""
        request = registry_pb2.ReportOutcomeRequest(
            namespace=namespace,
            name=name,
            version=version,
            instance_id=instance_id,
            success=success,
            error_code=error_code,
            latency=_duration(latency),
        )
        return bool((await self._call("ReportOutcome", request, deadline)).rolled_back)

    async def revoke(
        self, *, spiffe_id: str = "", certificate_serial: str = "", reason: str = "", deadline: float | None = None
    ) -> registry_pb2.RevokeIdentityResponse:
        """Revoke an identity (``spiffe_id``) or one certificate (``certificate_serial``, hex) mesh-wide."""
        request = registry_pb2.RevokeIdentityRequest(reason=reason)
        if spiffe_id:
            request.spiffe_id = spiffe_id
        if certificate_serial:
            request.certificate_serial = certificate_serial
        return await self._call("RevokeIdentity", request, deadline)  # type: ignore[no-any-return]

    async def unrevoke(
        self, *, spiffe_id: str = "", certificate_serial: str = "", deadline: float | None = None
    ) -> registry_pb2.Revocation:
        """Lift a revocation; returns it as it was (``NotFoundError`` when there is none)."""
        request = registry_pb2.UnrevokeIdentityRequest()
        if spiffe_id:
            request.spiffe_id = spiffe_id
        if certificate_serial:
            request.certificate_serial = certificate_serial
        return (await self._call("UnrevokeIdentity", request, deadline)).revocation  # type: ignore[no-any-return]

    async def list_revocations(self, *, deadline: float | None = None) -> registry_pb2.ListRevocationsResponse:
        """Every revocation in force."""
        return await self._call(  # type: ignore[no-any-return]
            "ListRevocations", registry_pb2.ListRevocationsRequest(), deadline
        )

    async def watch_revocations(self) -> AsyncIterator[tuple[int, list[str], list[int]]]:
        """``(revision, spiffe_ids, serials)``: the whole revocation set now and again after every change."""
        call = self.stub.WatchRevocations(registry_pb2.WatchRevocationsRequest())
        try:
            async for message in call:
                ids = [r.spiffe_id for r in message.revocations if r.WhichOneof("subject") == "spiffe_id"]
                serials = [
                    int(r.certificate_serial, 16)
                    for r in message.revocations
                    if r.WhichOneof("subject") == "certificate_serial"
                ]
                yield message.revision, ids, serials
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()
