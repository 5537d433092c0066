"""``RegistryService`` over gRPC: translate protos to domain calls and back, nothing else."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from agentmesh import security
from agentmesh._errors import InvalidArgumentError, PermissionDeniedError, UnavailableError
from agentmesh.services.registry.model import (
    DiscoveryQuery,
    DiscoveryResult,
    InstanceRecord,
    VersionRecord,
    basic_card,
)
from agentmesh.services.registry.registry import AgentView, Registry, check_reason
from agentmesh.services.registry.routing import CanaryRule, RoutePolicy
from agentmesh.services.registry.store import SPIFFE_ID, RevocationRow
from agentmesh.services.registry.validation import (
    compile_patterns,
    parse_specifier,
    parse_version,
    validate_agent_name,
    validate_labels,
    validate_policies,
    validate_visibility_names,
)
from agentmesh.services.registry.watch import WatchEvent
from agentmesh.v1 import agent_pb2, registry_pb2, registry_pb2_grpc

__all__ = ["InstanceProtos", "RegistryServicer", "discovery_query", "discovery_response", "revocation_proto"]

_MAX_RESULTS = 100
_MAX_PAGE = 1000
_MAX_INTENT = 512
_MAX_ROUTING_KEY = 256
_MAX_WEIGHT = 10_000
_MAX_WEIGHTED_VERSIONS = 64  # live versions of one agent a canary splits traffic over
_VIEWS = frozenset(registry_pb2.InstanceView.values())


def _caller() -> str | None:
    identity = security.current_identity()
    return identity.uri if identity is not None else None


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


def _set_time(stamp: timestamp_pb2.Timestamp, seconds: float) -> None:
    # What Timestamp.FromNanoseconds does, without its Python-level checks (hot in discovery and heartbeats).
    stamp.seconds, stamp.nanos = divmod(int(seconds * 1e9), 1_000_000_000)


def _lease(instance: InstanceRecord) -> registry_pb2.Lease:
    lease = registry_pb2.Lease()
    _fill_lease(lease, instance)
    return lease


def _fill_lease(lease: registry_pb2.Lease, instance: InstanceRecord) -> None:
    # Filled in place (no intermediate messages to copy): the heartbeat reply is built once per heartbeat.
    lease.lease_id = instance.lease_id
    lease.ttl.seconds, lease.ttl.nanos = divmod(int(instance.ttl * 1e9), 1_000_000_000)
    _set_time(lease.expire_time, instance.expires_at)


def policy_proto(policy: RoutePolicy) -> registry_pb2.RoutingPolicy:
    """The wire form of a routing policy."""
    message = registry_pb2.RoutingPolicy(
        namespace=policy.namespace, name=policy.name, weights=policy.weights, reason=policy.reason
    )
    if policy.canary is not None:
        message.canary.CopyFrom(
            registry_pb2.CanaryPolicy(
                max_error_rate=policy.canary.max_error_rate,
                min_requests=policy.canary.min_requests,
                window=_duration(policy.canary.window),
            )
        )
    message.update_time.CopyFrom(_timestamp(policy.updated_at.timestamp()))
    return message


def instance_proto(
    instance: InstanceRecord, record: VersionRecord, *, basic: bool = False
) -> registry_pb2.AgentInstance:
    """The wire form of a live instance, its card's endpoint filled in (``basic``: the BASIC view of the card)."""
    proto = registry_pb2.AgentInstance()
    _fill_instance(proto, instance, record, basic)
    return proto


def _fill_instance(
    proto: registry_pb2.AgentInstance, instance: InstanceRecord, record: VersionRecord, basic: bool
) -> None:
    """Set the empty ``proto`` to the ``AgentInstance`` of ``instance``."""
    proto.instance_id = instance.instance_id
    proto.state = instance.state  # type: ignore[assignment]
    proto.load = instance.load
    card = proto.card  # filled in place: one copy of the card, not two
    if not basic:
        card.MergeFromString(record.card_bytes)  # parsed straight into the answer
    elif record.basic_card is not None:
        card.MergeFromString(record.basic_card)  # the BASIC view, serialized when the index took the card
    else:
        card.CopyFrom(basic_card(record.card))
    card.endpoint = instance.endpoint
    _set_time(proto.register_time, instance.registered_at)
    _set_time(proto.lease_expire_time, instance.expires_at)


class InstanceProtos:
    """The wire form of each instance answered more than once recently, kept between discovery calls.

    Most answered instances are answered once in a while only (a free-text query's top ten among 100k cards are
    mostly new ones), so an instance's first answer is built straight into the response (one card copy, not two:
    ~6 µs instead of ~12 with a whole card) and only remembered as seen; its second answer builds the message
    kept for the later ones (~4 µs each: the fields a heartbeat changes refreshed, one copy). An entry is rebuilt
    when the instance or its card is replaced; the oldest entries (and sightings) go first once ``capacity`` is
    reached. ``basic`` answers the BASIC view of each card (no descriptions, no skill schemas) and keeps
    nothing: the index serialized that view when it took the card, and parsing it into the response (~4 µs in
    all) costs what copying a kept message would.
    """

    def __init__(self, capacity: int = 32_768, *, basic: bool = False) -> None:
        self._capacity = capacity
        self._basic = basic
        # instance id -> [instance, version record, state, load, expires_at, proto]
        self._entries: dict[str, list[Any]] = {}
        # instance id -> the instance and version record (its card) it was last built from, uncached
        self._seen: dict[str, tuple[InstanceRecord, VersionRecord]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def fill(
        self, target: registry_pb2.AgentInstance, instance: InstanceRecord, record: VersionRecord
    ) -> None:
        """Set the empty ``target`` to the current ``AgentInstance`` of ``instance``."""
        if self._basic and record.basic_card is not None:
            # Parsing the card's serialized BASIC view costs what copying a kept message would: nothing to keep.
            _fill_instance(target, instance, record, True)
            return
        if instance.instance_id in self._entries:
            target.CopyFrom(self.get(instance, record))
            return
        seen = self._seen.get(instance.instance_id)
        if seen is not None and seen[0] is instance and seen[1] is record:
            del self._seen[instance.instance_id]
            target.CopyFrom(self.get(instance, record))
            return
        _fill_instance(target, instance, record, self._basic)
        if seen is None and len(self._seen) >= self._capacity:
            del self._seen[next(iter(self._seen))]
        self._seen[instance.instance_id] = (instance, record)

    def get(self, instance: InstanceRecord, record: VersionRecord) -> registry_pb2.AgentInstance:
        """The current ``AgentInstance`` of ``instance``, kept; the caller copies it, never changes it."""
        entry = self._entries.get(instance.instance_id)
        if entry is None or entry[0] is not instance or entry[1] is not record:
            proto = instance_proto(instance, record, basic=self._basic)
            if entry is None and len(self._entries) >= self._capacity:
                del self._entries[next(iter(self._entries))]
            self._entries[instance.instance_id] = [
                instance,
                record,
                instance.state,
                instance.load,
                instance.expires_at,
                proto,
            ]
            return proto
        proto = entry[5]
        if entry[2] != instance.state:
            proto.state = entry[2] = instance.state
        if entry[3] != instance.load:
            proto.load = entry[3] = instance.load
        if entry[4] != instance.expires_at:
            entry[4] = instance.expires_at
            _set_time(proto.lease_expire_time, instance.expires_at)
        return proto  # type: ignore[no-any-return]


def discovery_response(
    result: DiscoveryResult, protos: InstanceProtos
) -> registry_pb2.DiscoverAgentsResponse:
    """The wire form of a discovery answer (each instance built in place or copied from the cache)."""
    response = registry_pb2.DiscoverAgentsResponse(
        visible_count=result.visible_count, matched_count=result.matched_count
    )
    add, fill = response.candidates.add, protos.fill
    for candidate in result.candidates:
        fill(
            add(
                score=candidate.score, reasons=candidate.reasons, matched_skill=candidate.matched_skill
            ).instance,
            candidate.instance,
            candidate.version,
        )
    return response


def discovery_query(request: registry_pb2.DiscoverAgentsRequest) -> DiscoveryQuery:
    """Validate a DiscoverAgents request into a query (INVALID_ARGUMENT naming the field otherwise)."""
    visibility, traits = request.visibility, request.characteristics
    validate_visibility_names(visibility.names)
    patterns = compile_patterns(visibility.patterns)
    validate_policies(traits.required_policies, "characteristics.required_policies")
    validate_labels(traits.labels, "characteristics.labels")
    if len(traits.intent) > _MAX_INTENT:
        raise InvalidArgumentError(
            f"intent longer than {_MAX_INTENT} characters", field="characteristics.intent"
        )
    if len(request.routing_key) > _MAX_ROUTING_KEY:
        raise InvalidArgumentError(
            f"routing_key longer than {_MAX_ROUTING_KEY} characters", field="routing_key"
        )
    if request.max_results < 0:
        raise InvalidArgumentError("max_results must not be negative", field="max_results")
    if request.view not in _VIEWS:
        raise InvalidArgumentError(f"unknown view {request.view}", field="view")
    return DiscoveryQuery(
        names=frozenset(visibility.names),
        patterns=patterns,
        purpose=traits.purpose,
        required_policies=tuple(traits.required_policies),
        skill=traits.skill,
        labels=tuple(sorted(traits.labels.items())),
        version_constraint=parse_specifier(traits.version_constraint) if traits.version_constraint else None,
        intent=traits.intent,
        max_results=min(request.max_results or 10, _MAX_RESULTS),
        routing_key=request.routing_key,
    )


def _list_filter(request: registry_pb2.ListAgentsRequest) -> str:
    # What a page token is bound to: continuing a listing under another filter would skip or repeat rows.
    return f"{request.namespace}\x00{request.name_prefix}\x00{int(request.include_not_serving)}"


def _page_token(key: tuple[str, str, str, str], request: registry_pb2.ListAgentsRequest) -> str:
    filter_hash = hashlib.blake2b(_list_filter(request).encode(), digest_size=8).hexdigest()
    return base64.urlsafe_b64encode(json.dumps([*key, filter_hash]).encode()).decode()


def _parse_page_token(request: registry_pb2.ListAgentsRequest) -> tuple[str, str, str, str] | None:
    token = request.page_token
    if not token:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(token.encode()))
        if isinstance(key, list) and len(key) == 5 and all(isinstance(part, str) for part in key):
            if key[4] != hashlib.blake2b(_list_filter(request).encode(), digest_size=8).hexdigest():
                raise InvalidArgumentError(
                    "page_token belongs to a listing with another filter (namespace, name_prefix, "
                    "include_not_serving); start again without a token",
                    field="page_token",
                )
            return (key[0], key[1], key[2], key[3])
    except ValueError:
        pass
    raise InvalidArgumentError("page_token is not a token this registry issued", field="page_token")


def _event_type(name: str) -> registry_pb2.AgentEventType.ValueType:
    return registry_pb2.AgentEventType.Value(f"AGENT_EVENT_TYPE_{name}")


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    """Thin gRPC face of :class:`Registry`."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._protos = InstanceProtos()
        self._basic_protos = InstanceProtos(basic=True)
        # Long-lived streams and who opened them (SPIFFE id, certificate serial), so that a revocation ends them.
        self._streams: dict[asyncio.Task[Any], tuple[str | None, int | None]] = {}
        self._revoked_streams: set[asyncio.Task[Any]] = set()
        self._closing = False
        registry.revocations.add_listener(self._end_revoked_streams)

    def end_streams(self) -> None:
        """End every heartbeat and watch stream with UNAVAILABLE and refuse new ones (the replica is stopping).

        These streams never end by themselves: without this a stopping replica would wait for its whole
        shutdown grace, and its agents and watchers would learn only then that they should go elsewhere.
        """
        self._closing = True
        for task in self._streams:
            task.cancel()

    def _end_revoked_streams(self) -> None:
        """End, with PERMISSION_DENIED, the streams of callers that were just revoked (the check ran at open)."""
        revocations = self.registry.revocations
        for task, (caller, serial) in self._streams.items():
            if caller is not None and revocations.is_revoked(caller, serial):
                self._revoked_streams.add(task)
                task.cancel()

    @contextlib.contextmanager
    def _open_stream(self, advice: str, context: grpc.aio.ServicerContext[Any, Any]) -> Iterator[None]:
        # Tracks a long-lived stream so that end_streams() can end it; its cancellation then reads UNAVAILABLE
        # (or PERMISSION_DENIED when its caller was revoked while it was open).
        task = asyncio.current_task()
        assert task is not None
        caller = _caller()
        self._streams[task] = (caller, security.peer_certificate_serial(context) if caller else None)
        try:
            if self._closing:
                raise asyncio.CancelledError  # opened while stopping: refused like the streams already ended
            yield
        except asyncio.CancelledError:
            if task in self._revoked_streams:
                raise PermissionDeniedError(f"{caller} was revoked; this stream is closed") from None
            if not self._closing:
                raise  # the caller went away
            raise UnavailableError(f"this registry replica is stopping; {advice}") from None
        finally:
            self._streams.pop(task, None)
            self._revoked_streams.discard(task)

    async def _ready(self) -> None:
        if not await self.registry.ready():
            raise UnavailableError("the registry is loading or cannot reach its database; retry shortly")

    async def RegisterAgent(
        self, request: registry_pb2.RegisterAgentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> registry_pb2.RegisterAgentResponse:
        await self._ready()
        if not request.HasField("card"):
            raise InvalidArgumentError("card is required", field="card")
        ttl = request.lease_ttl.ToNanoseconds() / 1e9 if request.HasField("lease_ttl") else 0.0
        instance = await self.registry.register(
            request.card, ttl, _caller(), security.peer_certificate_serial(context)
        )
        record = self.registry.index.versions[instance.version_id]
        return registry_pb2.RegisterAgentResponse(
            instance=instance_proto(instance, record), lease=_lease(instance)
        )

    async def Heartbeat(
        self, request: registry_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> registry_pb2.HeartbeatResponse:
        response = registry_pb2.HeartbeatResponse()
        await self._renew(request, _caller(), response.lease)
        return response

    async def StreamHeartbeats(
        self,
        requests: AsyncIterator[registry_pb2.StreamHeartbeatsRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[registry_pb2.StreamHeartbeatsResponse]:
        await self._ready()
        caller = _caller()  # verified once for the whole stream by the server's interceptor
        with self._open_stream("heartbeat to another one", context):
            async for request in requests:
                # A failed heartbeat raises: the stream ends with the status the unary Heartbeat would return.
                if not request.acknowledge:  # a routine renewal: no answer, so one message per heartbeat
                    await self._renew(request, caller, None)
                    continue
                response = registry_pb2.StreamHeartbeatsResponse()
                await self._renew(request, caller, response.lease)
                yield response

    async def _renew(
        self,
        request: registry_pb2.HeartbeatRequest | registry_pb2.StreamHeartbeatsRequest,
        caller: str | None,
        lease: registry_pb2.Lease | None,
    ) -> None:
        # The one heartbeat path of both RPCs: ownership, state, load, in-memory renewal, the renewed lease.
        await self._ready()
        instance = await self.registry.heartbeat(request.lease_id, request.state, request.load, caller)
        if lease is not None:
            _fill_lease(lease, instance)

    async def DeregisterAgent(
        self, request: registry_pb2.DeregisterAgentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> registry_pb2.DeregisterAgentResponse:
        await self._ready()
        await self.registry.deregister(request.lease_id, _caller())
        return registry_pb2.DeregisterAgentResponse()

    async def GetAgent(
        self, request: registry_pb2.GetAgentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> registry_pb2.GetAgentResponse:
        await self._ready()
        view: AgentView = self.registry.get_agent(request.namespace, request.name, request.version)
        card = agent_pb2.AgentCard()
        card.MergeFromString(view.version.card_bytes)
        response = registry_pb2.GetAgentResponse(
            card=card, instances=[instance_proto(i, view.version) for i in view.instances]
        )
        if view.policy is not None:
            response.routing_policy.CopyFrom(policy_proto(view.policy))
        return response

    async def ListAgents(
        self, request: registry_pb2.ListAgentsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> registry_pb2.ListAgentsResponse:
        await self._ready()
        if request.page_size < 0:
            raise InvalidArgumentError("page_size must not be negative", field="page_size")
        page, last = self.registry.list_agents(
            page_size=min(request.page_size or 50, _MAX_PAGE),
            after=_parse_page_token(request),
            namespace=request.namespace,
            name_prefix=request.name_prefix,
            include_not_serving=request.include_not_serving,
        )
        return registry_pb2.ListAgentsResponse(
            instances=[instance_proto(i, r) for i, r in page],
            next_page_token=_page_token(last, request) if last else "",
        )

    async def DiscoverAgents(
        self, request: registry_pb2.DiscoverAgentsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> registry_pb2.DiscoverAgentsResponse:
        await self._ready()
        protos = self._basic_protos if request.view == registry_pb2.INSTANCE_VIEW_BASIC else self._protos
        query = discovery_query(request)
        await self.registry.index.prepare_visibility(query)  # new patterns: scanned off the event loop
        return discovery_response(self.registry.discover(query), protos)

    async def WatchAgents(
        self, request: registry_pb2.WatchAgentsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[registry_pb2.WatchAgentsResponse]:
        await self._ready()
        if request.since_revision < 0:
            raise InvalidArgumentError("since_revision must not be negative", field="since_revision")
        with self._open_stream("watch again from your last revision on another one", context):
            async for event in self.registry.watch(request.since_revision, request.namespace):
                yield _watch_response(event)

    async def SetRoutingPolicy(
        self, request: registry_pb2.SetRoutingPolicyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> registry_pb2.SetRoutingPolicyResponse:
        await self._ready()
        policy = request.policy
        validate_agent_name(policy.namespace, policy.name, "policy.")
        check_reason(policy.reason, "policy.reason")
        if len(policy.weights) > _MAX_WEIGHTED_VERSIONS:
            raise InvalidArgumentError(
                f"weights name {len(policy.weights)} versions; at most {_MAX_WEIGHTED_VERSIONS}",
                field="policy.weights",
            )
        weights: dict[str, int] = {}
        for version, weight in policy.weights.items():
            parse_version(version, f"policy.weights[{version}]")
            if not 0 <= weight <= _MAX_WEIGHT:
                raise InvalidArgumentError(
                    f"weight {weight} must be within [0, {_MAX_WEIGHT}]", field=f"policy.weights[{version}]"
                )
            weights[version] = weight
        if not weights:
            raise InvalidArgumentError("weights must name at least one version", field="policy.weights")
        canary = None
        if policy.HasField("canary"):
            rule = policy.canary
            if not 0.0 <= rule.max_error_rate <= 1.0:
                raise InvalidArgumentError(
                    "max_error_rate must be within [0, 1]", field="policy.canary.max_error_rate"
                )
            if rule.min_requests < 1:
                raise InvalidArgumentError(
                    "min_requests must be at least 1", field="policy.canary.min_requests"
                )
            window = rule.window.ToNanoseconds() / 1e9
            if window <= 0:
                raise InvalidArgumentError("window must be positive", field="policy.canary.window")
            canary = CanaryRule(rule.max_error_rate, rule.min_requests, window)
        stored = await self.registry.set_routing(
            policy.namespace, policy.name, weights, canary, policy.reason, _caller()
        )
        return registry_pb2.SetRoutingPolicyResponse(policy=policy_proto(stored))

    async def GetRoutingPolicy(
        self, request: registry_pb2.GetRoutingPolicyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> registry_pb2.GetRoutingPolicyResponse:
        await self._ready()
        return registry_pb2.GetRoutingPolicyResponse(
            policy=policy_proto(self.registry.get_routing(request.namespace, request.name))
        )

    async def ReportOutcome(
        self, request: registry_pb2.ReportOutcomeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> registry_pb2.ReportOutcomeResponse:
        await self._ready()
        validate_agent_name(request.namespace, request.name)
        parse_version(request.version, "version")
        rolled_back = await self.registry.report_outcome(
            request.namespace, request.name, request.version, request.success
        )
        return registry_pb2.ReportOutcomeResponse(rolled_back=rolled_back)

    async def RevokeIdentity(
        self, request: registry_pb2.RevokeIdentityRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> registry_pb2.RevokeIdentityResponse:
        await self._ready()
        record, removed = await self.registry.revoke(*_subject(request), request.reason, _caller())
        return registry_pb2.RevokeIdentityResponse(revocation=revocation_proto(record), removed_instances=removed)

    async def UnrevokeIdentity(
        self, request: registry_pb2.UnrevokeIdentityRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> registry_pb2.UnrevokeIdentityResponse:
        await self._ready()
        record = await self.registry.unrevoke(*_subject(request), _caller())
        return registry_pb2.UnrevokeIdentityResponse(revocation=revocation_proto(record))

    async def ListRevocations(
        self, request: registry_pb2.ListRevocationsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> registry_pb2.ListRevocationsResponse:
        await self._ready()
        return registry_pb2.ListRevocationsResponse(
            revocations=[revocation_proto(r) for r in self.registry.list_revocations()],
            revision=self.registry.revision,
        )

    async def WatchRevocations(
        self, request: registry_pb2.WatchRevocationsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[registry_pb2.WatchRevocationsResponse]:
        await self._ready()
        with self._open_stream("follow the revocation set on another one", context):
            async for revision, records in self.registry.watch_revocations():
                yield registry_pb2.WatchRevocationsResponse(
                    revision=revision, revocations=[revocation_proto(r) for r in records]
                )


def revocation_proto(record: RevocationRow) -> registry_pb2.Revocation:
    """The wire form of a revocation."""
    message = registry_pb2.Revocation(reason=record.reason, revoked_by=record.revoked_by)
    if record.subject_kind == SPIFFE_ID:
        message.spiffe_id = record.subject
    else:
        message.certificate_serial = record.subject
    _set_time(message.revoke_time, record.created_at)
    return message


def _subject(request: Any) -> tuple[str, str]:
    """``(spiffe_id, certificate_serial)`` of a request's ``subject`` oneof."""
    which = request.WhichOneof("subject")
    return (
        request.spiffe_id if which == "spiffe_id" else "",
        request.certificate_serial if which == "certificate_serial" else "",
    )


def _watch_response(event: WatchEvent) -> registry_pb2.WatchAgentsResponse:
    response = registry_pb2.WatchAgentsResponse(
        revision=event.revision,
        type=_event_type(event.event_type),
        reason=event.reason,
    )
    if event.instance is not None and event.version is not None:
        response.instance.CopyFrom(instance_proto(event.instance, event.version))
    if event.policy is not None:
        response.routing_policy.CopyFrom(policy_proto(event.policy))
    if event.event_time:
        response.event_time.CopyFrom(_timestamp(event.event_time))
    return response
