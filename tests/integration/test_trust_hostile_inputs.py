"""Hostile input from inside and outside the mesh gets a precise, short refusal: ids of a megabyte are refused
with their own status (not a client-side RESOURCE_EXHAUSTED because the echoed id overflowed the trailers),
and an IdP token whose subject or tenant cannot be stored is refused at the door (not INTERNAL further in), and
a conversation message whose task could never start is refused before the message is stored."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import grpc
import jwt
import pytest

from agentmesh import security
from agentmesh._channel import create_channel
from agentmesh.v1 import (
    agent_pb2,
    audit_pb2,
    audit_pb2_grpc,
    conversation_pb2,
    conversation_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    task_pb2,
    task_pb2_grpc,
)
from tests.fixtures.planner import PlannerMesh
from tests.fixtures.registry import RegistryReplica, make_card
from tests.integration.test_planner import worker  # noqa: F401  (a fixture)

pytestmark = pytest.mark.asyncio

HUGE = "x" * 1_000_000  # within the 4 MB message limit; far over what trailers can carry


async def _refusal(call: Any) -> grpc.aio.AioRpcError:
    started = time.perf_counter()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert time.perf_counter() - started < 2.0
    return caught.value


async def test_a_megabyte_id_is_refused_with_its_own_code_and_a_short_message(registry: RegistryReplica) -> None:
    registry.issue_identity("agent", "support/triage")
    async with create_channel(registry.address, registry.settings, kind="agent", name="support/triage") as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        await stub.RegisterAgent(registry_pb2.RegisterAgentRequest(card=make_card("triage")), timeout=5)
        calls = {
            "Heartbeat": stub.Heartbeat(registry_pb2.HeartbeatRequest(lease_id=HUGE), timeout=5),
            "DeregisterAgent": stub.DeregisterAgent(registry_pb2.DeregisterAgentRequest(lease_id=HUGE), timeout=5),
            "GetAgent": stub.GetAgent(registry_pb2.GetAgentRequest(namespace=HUGE, name="triage"), timeout=5),
        }
        for method, call in calls.items():
            refused = await _refusal(call)
            details = refused.details() or ""
            assert refused.code() == grpc.StatusCode.NOT_FOUND, (method, refused.code(), details[:200])
            assert len(details.encode()) <= 1024 and "\x00" not in details, method
            trailers = sum(len(key) + len(value) for key, value in refused.trailing_metadata() or ())
            assert trailers < 4096, (method, trailers)
        # The registry still answers, and the agent's own registration is untouched.
        reply = await stub.GetAgent(registry_pb2.GetAgentRequest(namespace="support", name="triage"), timeout=5)
        assert len(reply.instances) == 1


@pytest.fixture
async def door(start_gateway: Any, recording_planner: Any, migrated_database_url: str) -> Any:
    """A gateway in front of the recording planner."""
    return await start_gateway(planner=recording_planner.address, database_url=migrated_database_url)


def _signed(gateway: Any, **overrides: Any) -> str:
    """A token signed by the gateway's trusted issuer, with claims PyJWT's encoder would not write."""
    key, kid = gateway.issuer._key()
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": gateway.issuer.issuer,
        "aud": gateway.issuer.audience,
        "sub": "alice",
        "tenant": "acme",
        "scope": "tasks:submit tasks:read",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": "j-1",
        **overrides,
    }

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = {"alg": "ES256", "typ": "JWT", "kid": kid}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = jwt.algorithms.ECAlgorithm(jwt.algorithms.ECAlgorithm.SHA256).sign(signing_input.encode(), key)
    return f"{signing_input}.{b64(signature)}"


async def test_a_token_whose_subject_tenant_or_times_are_not_storable_is_refused_at_the_door(
    door: Any, recording_planner: Any
) -> None:
    gateway = door
    later = int(time.time()) + 600
    bad = {
        "subject with NUL": {"sub": "al\x00ice"},
        "subject with a newline": {"sub": "alice\nadmin logged in"},
        "subject longer than its column": {"sub": "a" * 513},
        "tenant with NUL": {"tenant": "ac\x00me"},
        "tenant longer than its column": {"tenant": "t" * 129},
        "exp as a string": {"exp": str(later)},
        "nbf as a boolean": {"nbf": True},
    }
    async with gateway.channel() as channel:
        stub = task_pb2_grpc.TaskServiceStub(channel)
        request = task_pb2.SubmitTaskRequest(goal="help me")
        for name, claims in bad.items():
            metadata = [("authorization", f"Bearer {_signed(gateway, **claims)}")]
            refused = await _refusal(stub.SubmitTask(request, metadata=metadata, timeout=10))
            assert refused.code() == grpc.StatusCode.UNAUTHENTICATED, (name, refused.code(), refused.details())
            assert "claim" in (refused.details() or ""), name
        assert recording_planner.calls == []  # nothing reached the planner, so nothing was stored
        # The same token with storable claims passes.
        ok = [("authorization", f"Bearer {_signed(gateway, sub='a' * 512, tenant='t' * 128)}")]
        assert (await stub.SubmitTask(request, metadata=ok, timeout=10)).task.task_id


async def test_a_message_whose_task_could_never_start_is_refused_and_stores_nothing(planner_mesh: PlannerMesh) -> None:
    planner_mesh.registry.issue_identity("client", "alice")
    async with create_channel(planner_mesh.planner.address, planner_mesh.settings, kind="client", name="alice") as ch:
        stub = conversation_pb2_grpc.ConversationServiceStub(ch)
        created = await stub.CreateConversation(conversation_pb2.CreateConversationRequest(title="t"), timeout=10)
        conversation_id = created.conversation.conversation_id
        send = conversation_pb2.SendMessageRequest
        refused = {
            "unknown playbook": (
                send(text="hi", task=task_pb2.TaskTemplate(goal="refund", playbook="no-such-playbook")),
                grpc.StatusCode.NOT_FOUND,
            ),
            "goal over the task bound": (
                send(text="hi", task=task_pb2.TaskTemplate(goal="g" * 10_001)),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            "text over the goal bound": (send(text="t" * 10_001, start_task=True), grpc.StatusCode.INVALID_ARGUMENT),
        }
        for name, (request, code) in refused.items():
            request.conversation_id, request.expected_version = conversation_id, 0
            error = await _refusal(stub.SendMessage(request, timeout=10))
            assert error.code() == code, (name, error.code(), error.details())
        got = await stub.GetConversation(conversation_pb2.GetConversationRequest(conversation_id=conversation_id), timeout=10)
        assert (got.conversation.version, list(got.messages)) == (0, [])  # nothing was stored
        # The caller fixes the message and sends it at the same version: no ABORTED from a half-done refusal.
        sent = await stub.SendMessage(send(conversation_id=conversation_id, expected_version=0, text="hi"), timeout=10)
        assert sent.conversation.version == 1


async def test_a_megabytes_wide_input_is_refused_before_it_is_unpacked(planner_mesh: PlannerMesh) -> None:
    wide = {f"k{i}": i for i in range(150_000)}  # ~3 MB encoded: unpacking it held the event loop for ~0.5 s
    submit = task_pb2.SubmitTaskRequest(goal="summarise", request_id="wide-1")
    submit.input.update(wide)
    ops = planner_mesh.stub()
    refused = await _refusal(ops.SubmitTask(submit, timeout=10))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT and "byte limit" in (refused.details() or "")
    assert list((await ops.ListTasks(task_pb2.ListTasksRequest(), timeout=10)).tasks) == []

    planner_mesh.registry.issue_identity("client", "alice")
    async with create_channel(planner_mesh.planner.address, planner_mesh.settings, kind="client", name="alice") as ch:
        stub = conversation_pb2_grpc.ConversationServiceStub(ch)
        created = await stub.CreateConversation(conversation_pb2.CreateConversationRequest(title="t"), timeout=10)
        send = conversation_pb2.SendMessageRequest(conversation_id=created.conversation.conversation_id, text="hi")
        send.data.update(wide)
        refused = await _refusal(stub.SendMessage(send, timeout=10))
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT and "data" in (refused.details() or "")


async def test_a_card_version_wider_than_its_column_is_invalid_argument(registry: RegistryReplica) -> None:
    registry.issue_identity("agent", "support/triage")
    async with create_channel(registry.address, registry.settings, kind="agent", name="support/triage") as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        for version in ("1.0.0+" + "a" * 59, "1" + ".0" * 40):  # PEP 440 normal forms of 65 and 81 characters
            refused = await _refusal(
                stub.RegisterAgent(registry_pb2.RegisterAgentRequest(card=make_card("triage", version=version)), timeout=5)
            )
            assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT, (version, refused.code(), refused.details())
            assert "longer than 64" in (refused.details() or "")
        widest = "1.0.0+" + "a" * 58
        registered = await stub.RegisterAgent(
            registry_pb2.RegisterAgentRequest(card=make_card("triage", version=widest)), timeout=5
        )
        assert registered.instance.card.version == widest


async def test_an_operator_reason_that_cannot_be_stored_is_invalid_argument_and_changes_nothing(
    registry: RegistryReplica,
) -> None:
    registry.issue_identity("agent", "support/triage")
    async with create_channel(registry.address, registry.settings, kind="agent", name="support/triage") as channel:
        agent = registry_pb2_grpc.RegistryServiceStub(channel)
        await agent.RegisterAgent(registry_pb2.RegisterAgentRequest(card=make_card("triage")), timeout=5)
    async with create_channel(registry.address, registry.settings, kind="client", name="ops") as channel:
        ops = registry_pb2_grpc.RegistryServiceStub(channel)

        def policy(**fields: Any) -> registry_pb2.SetRoutingPolicyRequest:
            return registry_pb2.SetRoutingPolicyRequest(
                policy=registry_pb2.RoutingPolicy(namespace="support", name="triage", **fields)
            )

        refusals = {
            "policy reason with NUL": ops.SetRoutingPolicy(policy(weights={"1.0.0": 100}, reason="ok\x00"), timeout=5),
            "policy reason of 100 KB": ops.SetRoutingPolicy(policy(weights={"1.0.0": 100}, reason="r" * 100_000), timeout=5),
            "weights over 5000 versions": ops.SetRoutingPolicy(
                policy(weights={f"1.{i}.0": 1 for i in range(5000)}), timeout=5
            ),
            "revocation reason with NUL": ops.RevokeIdentity(
                registry_pb2.RevokeIdentityRequest(spiffe_id="spiffe://agentmesh.test/agent/x/y", reason="leak\x00"),
                timeout=5,
            ),
        }
        for name, call in refusals.items():
            refused = await _refusal(call)
            assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, refused.code(), refused.details())
        missing = await _refusal(
            ops.GetRoutingPolicy(registry_pb2.GetRoutingPolicyRequest(namespace="support", name="triage"), timeout=5)
        )
        assert missing.code() == grpc.StatusCode.NOT_FOUND  # no policy was stored
        assert list((await ops.ListRevocations(registry_pb2.ListRevocationsRequest(), timeout=5)).revocations) == []


async def test_a_card_with_nul_in_any_free_text_is_invalid_argument_and_not_registered(registry: RegistryReplica) -> None:
    def card(change: Any) -> agent_pb2.AgentCard:
        made = make_card("triage")
        change(made)
        return made

    cards = {
        "description": card(lambda c: setattr(c, "description", "triage\x00")),
        "owner": card(lambda c: setattr(c, "owner", "team\x00")),
        "skill description": card(lambda c: setattr(c.skills[0], "description", "classify\x00")),
        "schema value": card(lambda c: c.skills[0].input_schema.update({"description": "text\x00"})),
        "schema key": card(lambda c: c.skills[0].output_schema.update({"x\x00": 1})),
    }
    registry.issue_identity("agent", "support/triage")
    async with create_channel(registry.address, registry.settings, kind="agent", name="support/triage") as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        for name, bad in cards.items():
            refused = await _refusal(stub.RegisterAgent(registry_pb2.RegisterAgentRequest(card=bad), timeout=5))
            assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, refused.code(), refused.details())
            assert "NUL" in (refused.details() or ""), name
        missing = await _refusal(stub.GetAgent(registry_pb2.GetAgentRequest(namespace="support", name="triage"), timeout=5))
        assert missing.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.usefixtures("worker")
async def test_a_goal_longer_than_a_discovery_intent_is_planned_from_its_start(planner_mesh: PlannerMesh) -> None:
    goal = "shout the text back in capitals " + "please, and mind the details of this long request. " * 40
    assert len(goal) > 2000
    task = (await planner_mesh.stub().SubmitTask(task_pb2.SubmitTaskRequest(goal=goal), timeout=30)).task
    done = await planner_mesh.wait(task.task_id)
    assert done.state == task_pb2.TASK_STATE_SUCCEEDED, done.error  # it was INVALID_ARGUMENT 'intent longer...'
    assert done.output  # the worker's shout, found by capability matching on the goal's start


def _token(body: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")


async def test_hand_made_page_tokens_and_filters_are_invalid_argument_not_internal(planner_mesh: PlannerMesh) -> None:
    from agentmesh.services.planner.conversation_rules import filter_fingerprint

    fingerprint = filter_fingerprint(None, None, {})  # what a listing without filters carries: anyone can compute it
    async with create_channel(planner_mesh.planner.address, planner_mesh.settings, kind="client", name="ops") as ch:
        audit = audit_pb2_grpc.AuditServiceStub(ch)
        conversations = conversation_pb2_grpc.ConversationServiceStub(ch)
        tasks = task_pb2_grpc.TaskServiceStub(ch)
        listing = audit_pb2.ListAuditRecordsRequest
        refused = {
            "audit resource with NUL": audit.ListAuditRecords(listing(resource="tasks/\x00"), timeout=5),
            "audit actor with NUL": audit.ListAuditRecords(listing(actor="\x00"), timeout=5),
            "audit page token over BIGINT": audit.ListAuditRecords(listing(page_token="9" * 30), timeout=5),
            "audit start time past year 9999": audit.ListAuditRecords(listing(start_time={"seconds": 2**62}), timeout=5),
            "conversation token with NUL id": conversations.ListConversations(
                conversation_pb2.ListConversationsRequest(
                    page_token=_token({"t": "2026-01-01T00:00:00+00:00", "id": "a\x00", "f": fingerprint})
                ),
                timeout=5,
            ),
        }
        for name, call in refused.items():
            error = await _refusal(call)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, error.code(), error.details())
        # A time without a zone in a hand-made token is read as UTC (it was INTERNAL: 'naive datetime').
        naive = _token({"t": "2026-01-01T00:00:00", "id": "x", "f": fingerprint})
        await conversations.ListConversations(conversation_pb2.ListConversationsRequest(page_token=naive), timeout=5)
        naive_task = base64.urlsafe_b64encode(json.dumps(["0001-01-01T00:00:00", "task-x"]).encode()).decode()
        await tasks.ListTasks(task_pb2.ListTasksRequest(page_token=naive_task), timeout=5)


@pytest.mark.usefixtures("worker")
async def test_one_end_user_holds_a_bounded_number_of_task_watches(planner_mesh: PlannerMesh) -> None:
    alice = planner_mesh.acting_for("alice", "acme", ["tasks:read", "tasks:submit"])
    ops = planner_mesh.stub()
    slow = task_pb2.SubmitTaskRequest(goal="wait", playbook="slow")  # its first step runs for 20 s
    task = (await ops.SubmitTask(slow, metadata=alice, timeout=10)).task
    watch = task_pb2.WatchTaskRequest(task_id=task.task_id)
    streams = []
    try:
        for _ in range(32):
            stream = ops.WatchTask(watch, metadata=alice, timeout=30)
            await stream.read()  # the first event: the stream is open
            streams.append(stream)
        refused = await _refusal(ops.WatchTask(watch, metadata=alice, timeout=10).read())
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "32" in (refused.details() or "")
        operator = ops.WatchTask(watch, timeout=10)  # an ops client acts for no end user: not counted
        assert (await operator.read()).task.task_id == task.task_id
        operator.cancel()
        streams.pop().cancel()  # one closed: alice may open another
        async with asyncio.timeout(5):
            while True:
                again = ops.WatchTask(watch, metadata=alice, timeout=30)
                try:
                    await again.read()
                    streams.append(again)
                    break
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    await asyncio.sleep(0.05)  # the server notices the cancelled stream a moment later
    finally:
        for stream in streams:
            stream.cancel()
        await ops.CancelTask(task_pb2.CancelTaskRequest(task_id=task.task_id), timeout=10)


async def test_concurrent_chain_verifications_share_one_run_and_another_range_waits_its_turn(
    planner_mesh: PlannerMesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    import agentmesh.audit._servicer as audit_servicer

    runs: list[tuple[int, int]] = []
    real = audit_servicer.verify_chain

    async def slow_verify(engine: Any, *, from_sequence: int = 0, to_sequence: int = 0) -> Any:
        runs.append((from_sequence, to_sequence))
        await asyncio.sleep(0.5)  # a long chain: about a second per 20,000 records
        return await real(engine, from_sequence=from_sequence, to_sequence=to_sequence)

    monkeypatch.setattr(audit_servicer, "verify_chain", slow_verify)
    # A bare channel: the SDK's clients wait out a RESOURCE_EXHAUSTED that carries retry info, and retry.
    credentials = security.channel_credentials(planner_mesh.settings, "client", "ops")
    async with grpc.aio.secure_channel(planner_mesh.planner.address, credentials) as ch:
        audit = audit_pb2_grpc.AuditServiceStub(ch)
        whole = [audit.VerifyAuditChain(audit_pb2.VerifyAuditChainRequest(), timeout=10) for _ in range(5)]
        answers = asyncio.gather(*whole)
        await asyncio.sleep(0.1)
        other = await _refusal(audit.VerifyAuditChain(audit_pb2.VerifyAuditChainRequest(from_sequence=2), timeout=10))
        assert other.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, other.details()
        replies = await answers
        assert runs == [(0, 0)]  # five callers, one run
        assert len({reply.SerializeToString() for reply in replies}) == 1 and replies[0].valid
        await audit.VerifyAuditChain(audit_pb2.VerifyAuditChainRequest(from_sequence=2), timeout=10)
        assert runs == [(0, 0), (2, 0)]  # its turn came


async def test_a_flood_of_bad_tokens_is_refused_but_cannot_flood_the_audit_trail(
    door: Any, migrated_database_url: str
) -> None:
    from sqlalchemy import text

    from agentmesh.audit import verify_chain
    from agentmesh.storage import create_async_engine

    async with door.channel() as channel:
        stub = task_pb2_grpc.TaskServiceStub(channel)

        async def bad_token(i: int) -> grpc.StatusCode:
            metadata = [("authorization", f"Bearer junk-{i}")]
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetTask(task_pb2.GetTaskRequest(task_id="t"), metadata=metadata, timeout=10)
            return caught.value.code()

        codes = await asyncio.gather(*(bad_token(i) for i in range(300)))
        assert set(codes) == {grpc.StatusCode.UNAUTHENTICATED}  # every one is refused
        engine = create_async_engine(migrated_database_url)
        try:
            async with engine.connect() as connection:
                rows = (await connection.execute(text("SELECT outcome FROM audit_records"))).all()
            # The first refusals of that address are each on record; the flood behind them is counted, not
            # appended one row per call (it was 300 rows: anyone could grow the undeletable chain at will).
            assert 1 <= len(rows) <= 15 and {r[0] for r in rows} == {"UNAUTHENTICATED"}
            assert (await verify_chain(engine)).valid
        finally:
            await engine.dispose()
        await asyncio.sleep(1.1)  # the budget refills: the next refusal is recorded with the count before it
        assert await bad_token(300) == grpc.StatusCode.UNAUTHENTICATED
        engine = create_async_engine(migrated_database_url)
        try:
            async with engine.connect() as connection:
                last = (await connection.execute(text("SELECT detail FROM audit_records ORDER BY sequence DESC"))).first()
        finally:
            await engine.dispose()
        detail = last[0] if isinstance(last[0], dict) else json.loads(last[0])
        assert detail["unrecorded_before"] >= 280


@pytest.mark.usefixtures("worker")
async def test_one_caller_holds_a_bounded_number_of_streams_at_the_gateway(
    planner_mesh: PlannerMesh, start_gateway: Any
) -> None:
    from agentmesh.services.gateway.gate import MAX_STREAMS_PER_CALLER

    gateway = await start_gateway(
        planner=planner_mesh.planner.address,
        database_url=planner_mesh.database_url,
        registry_address=planner_mesh.registry.address,
        gateway_rate_per_principal=1000.0,  # the rate limit is not what is tested here
        gateway_burst_per_principal=1000.0,
    )
    metadata = gateway.bearer(["agents:read"], subject="mallory")
    async with gateway.channel() as channel:
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        watch = registry_pb2.WatchAgentsRequest()
        streams = []
        try:
            for _ in range(MAX_STREAMS_PER_CALLER):
                stream = registry.WatchAgents(watch, metadata=metadata, timeout=30)
                await stream.read()  # the snapshot's first event: the stream is open end to end
                streams.append(stream)
            refused = await _refusal(registry.WatchAgents(watch, metadata=metadata, timeout=10).read())
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "streams open" in (refused.details() or "")
            other = registry.WatchAgents(watch, metadata=gateway.bearer(["agents:read"], subject="bob"), timeout=10)
            await other.read()  # another caller is not affected
            other.cancel()
        finally:
            for stream in streams:
                stream.cancel()


async def test_a_status_quoting_a_megabyte_of_input_is_cut_to_fit_the_trailers(planner_mesh: PlannerMesh) -> None:
    ops = planner_mesh.stub()
    for call in (
        ops.GetPlaybook(task_pb2.GetPlaybookRequest(name=HUGE), timeout=10),
        ops.SubmitTask(task_pb2.SubmitTaskRequest(goal="g", playbook=HUGE), timeout=10),
    ):
        refused = await _refusal(call)  # it was RESOURCE_EXHAUSTED 'Stream removed': the echo overflowed the trailers
        details = refused.details() or ""
        assert refused.code() == grpc.StatusCode.NOT_FOUND, (refused.code(), details[:200])
        assert len(details.encode()) <= 1024 and details.endswith("bytes in all]")


@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize("migrated_database_url", ["sqlite"], indirect=True)
async def test_explaining_a_wide_tree_explains_a_bounded_number_of_tasks(
    planner_mesh: PlannerMesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentmesh.services.planner import views

    monkeypatch.setattr(views, "MAX_EXPLAINED_TASKS", 8)  # the bound is 100; a smaller tree shows the same
    ops = planner_mesh.stub()

    async def child_of(parent: str, playbook: str) -> str:
        request = task_pb2.SubmitTaskRequest(goal="wait", playbook=playbook, parent_task_id=parent)
        return (await ops.SubmitTask(request, timeout=10)).task.task_id

    root = (await ops.SubmitTask(task_pb2.SubmitTaskRequest(goal="wait", playbook="slow"), timeout=10)).task.task_id
    children = [await child_of(root, "slow") for _ in range(3)]
    for child in children:
        for _ in range(3):
            await child_of(child, "slow")
    try:
        tree = (await ops.ExplainTask(task_pb2.ExplainTaskRequest(task_id=root), timeout=10)).explanation
        nodes = [*tree.subtasks, *(grandchild for child in tree.subtasks for grandchild in child.subtasks)]
        full = [node for node in nodes if node.task.goal]
        assert len(full) == 7  # 8 tasks (the root and 7 below it) explained in full, depth first ...
        assert len(nodes) == 9  # ... and the rest named by id: the last child, and the last grandchild before it
        assert all(node.task.task_id and not node.plan_versions for node in nodes if not node.task.goal)
    finally:
        for task_id in (root, *children):
            await ops.CancelTask(task_pb2.CancelTaskRequest(task_id=task_id), timeout=10)
