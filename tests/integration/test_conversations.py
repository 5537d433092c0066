"""Conversations through a real planner over mTLS, on SQLite and PostgreSQL: optimistic concurrency under 20
concurrent writers, rollback that keeps history, idempotent messages, roles by identity, watches that
resume, and state that survives a killed planner process."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from agentmesh._channel import create_channel
from agentmesh._health import wait_until_serving
from agentmesh._server import MeshServer, bind
from agentmesh._settings import Settings
from agentmesh.agent import AgentRuntime
from agentmesh.security import DelegationIssuer, DelegationVerifier, TokenKind
from agentmesh.services.planner.conversation_servicer import DELEGATION_METADATA, ConversationServicer
from agentmesh.services.planner.conversations import Conversations
from agentmesh.services.planner.conversations_store import ConversationStore
from agentmesh.services.planner.server import build_server as build_planner
from agentmesh.storage import create_async_engine
from agentmesh.v1 import conversation_pb2 as pb
from agentmesh.v1 import conversation_pb2_grpc, task_pb2
from tests.fixtures.planner import PlannerMesh
from tests.integration.planner_agents import Worker

NODE_CLIENT = Path(__file__).resolve().parents[1] / "node" / "conversation_client.js"
USER, AGENT, SYSTEM = pb.MESSAGE_ROLE_USER, pb.MESSAGE_ROLE_AGENT, pb.MESSAGE_ROLE_SYSTEM


@pytest.fixture
async def planner(mesh_settings: Settings, issue_identity, migrated_database_url: str) -> AsyncIterator[MeshServer]:
    issue_identity("service", "planner")
    for name in ("ops", "alice", "bob"):
        issue_identity("client", name)
    issue_identity("service", "gateway")
    server = build_planner(mesh_settings.replace(database_url=migrated_database_url), port=0)
    async with server:
        yield server


@pytest.fixture
async def connect(planner: MeshServer, mesh_settings: Settings) -> AsyncIterator:
    """``connect(kind, name)``: a ConversationService stub presenting that identity."""
    channels: list[grpc.aio.Channel] = []

    async def open_stub(kind: str = "client", name: str = "alice") -> conversation_pb2_grpc.ConversationServiceStub:
        channel = create_channel(planner.address, mesh_settings, kind=kind, name=name)
        channels.append(channel)
        await wait_until_serving(channel, within=20)
        return conversation_pb2_grpc.ConversationServiceStub(channel)

    yield open_stub
    for channel in channels:
        await channel.close()


def _conversation_server(
    settings: Settings, engine, verifier: DelegationVerifier | None = None, poll_interval: float = 0.5
) -> MeshServer:
    """ConversationService alone on a mesh server (a planner replica without its task engine)."""
    conversations = Conversations(
        ConversationStore(engine), trust_domain=settings.trust_domain, poll_interval=poll_interval
    )
    return MeshServer(
        name="planner", settings=settings, port=0,
        services=[bind(ConversationServicer(conversations, verifier),
                       conversation_pb2_grpc.add_ConversationServiceServicer_to_server,
                       "agentmesh.v1.ConversationService")],
    )


async def _create(stub, title: str = "refund for order 42", **labels: str) -> pb.Conversation:
    reply = await stub.CreateConversation(pb.CreateConversationRequest(title=title, labels=labels), timeout=10)
    return reply.conversation


async def _send(stub, conversation_id: str, version: int, text: str, **kw) -> pb.SendMessageResponse:
    request = pb.SendMessageRequest(conversation_id=conversation_id, expected_version=version, text=text, **kw)
    return await stub.SendMessage(request, timeout=30)


async def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call
    return failed.value.code()


async def test_twenty_concurrent_writers_one_winner_per_version(connect) -> None:
    alice = await connect()
    conversation = await _create(alice)
    cid = conversation.conversation_id

    # Five rounds: all 20 writers race for the same version; exactly one wins, 19 get ABORTED.
    for round_ in range(5):
        results = await asyncio.gather(
            *(_send(alice, cid, round_, f"writer {w} round {round_}") for w in range(20)), return_exceptions=True
        )
        winners = [r for r in results if isinstance(r, pb.SendMessageResponse)]
        losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(winners) == 1 and len(losers) == 19, results
        assert {e.code() for e in losers} == {grpc.StatusCode.ABORTED}
        assert "another write came first" in (losers[0].details() or "")
        assert winners[0].conversation.version == round_ + 1

    # Then 20 writers that re-read and retry until each has written 3 messages.
    async def writer(number: int) -> list[int]:
        won: list[int] = []
        while len(won) < 3:
            current = (await alice.GetConversation(pb.GetConversationRequest(conversation_id=cid), timeout=10))
            try:
                reply = await _send(alice, cid, current.conversation.version, f"w{number} #{len(won)}")
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.ABORTED
                continue
            won.append(reply.message.version)
        return won

    won = [v for versions in await asyncio.gather(*(writer(n) for n in range(20))) for v in versions]
    assert sorted(won) == list(range(6, 66))  # one success per version, none twice

    stored = await alice.GetConversation(pb.GetConversationRequest(conversation_id=cid), timeout=10)
    assert stored.conversation.version == 65
    assert [m.version for m in stored.messages] == list(range(1, 66))  # no gaps, no duplicates
    assert len({m.message_id for m in stored.messages}) == 65


async def test_a_stale_write_changes_nothing(connect) -> None:
    alice = await connect()
    cid = (await _create(alice)).conversation_id
    await _send(alice, cid, 0, "hello")
    assert await _code(_send(alice, cid, 0, "late")) == grpc.StatusCode.ABORTED
    rollback = pb.RollbackConversationRequest(conversation_id=cid, expected_version=0, to_version=0)
    assert await _code(alice.RollbackConversation(rollback, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
    stale = pb.RollbackConversationRequest(conversation_id=cid, expected_version=5, to_version=0)
    assert await _code(alice.RollbackConversation(stale, timeout=10)) == grpc.StatusCode.ABORTED
    stored = await alice.GetConversation(pb.GetConversationRequest(conversation_id=cid, include_hidden=True))
    assert stored.conversation.version == 1
    assert [m.text for m in stored.messages] == ["hello"]


async def test_rollback_makes_a_new_version_and_keeps_history(connect) -> None:
    alice = await connect()
    cid = (await _create(alice)).conversation_id
    for version, text in enumerate(["I want a refund", "order 42", "actually order 43"]):
        await _send(alice, cid, version, text)

    reply = await alice.RollbackConversation(
        pb.RollbackConversationRequest(conversation_id=cid, expected_version=3, to_version=1), timeout=10
    )
    assert reply.conversation.version == 4  # a rollback is a write: a new version
    await _send(alice, cid, 4, "order 44")

    visible = await alice.GetConversation(pb.GetConversationRequest(conversation_id=cid), timeout=10)
    assert [(m.version, m.text) for m in visible.messages] == [
        (1, "I want a refund"),
        (4, "rolled back to version 1"),
        (5, "order 44"),
    ]
    notice = visible.messages[1]
    assert notice.role == SYSTEM and notice.rolled_back_to_version == 1 and notice.parent_version == 1
    assert notice.author.endswith("/client/alice")

    history = await alice.GetConversation(pb.GetConversationRequest(conversation_id=cid, include_hidden=True))
    assert [m.version for m in history.messages] == [1, 2, 3, 4, 5]  # nothing destroyed
    assert [m.hidden for m in history.messages] == [False, True, True, False, False]

    # Rolling back to a version that was itself rolled away restores that branch.
    await alice.RollbackConversation(
        pb.RollbackConversationRequest(conversation_id=cid, expected_version=5, to_version=3), timeout=10
    )
    visible = await alice.GetConversation(pb.GetConversationRequest(conversation_id=cid), timeout=10)
    assert [m.version for m in visible.messages] == [1, 2, 3, 6]


async def test_request_id_makes_send_message_idempotent(connect) -> None:
    alice, bob = await connect(name="alice"), await connect(name="bob")
    cid = (await _create(alice)).conversation_id
    first = await _send(alice, cid, 0, "refund please", request_id="msg-1")
    await _send(alice, cid, 1, "anything else")
    # A retry after the version moved on still returns the first answer and writes nothing.
    again = await _send(alice, cid, 0, "refund please", request_id="msg-1")
    assert again.message == first.message
    assert again.conversation.version == 2

    # Ten copies of one new request racing: one message.
    copies = await asyncio.gather(
        *(_send(alice, cid, 2, "same", request_id="msg-2") for _ in range(10)), return_exceptions=True
    )
    assert {c.message.message_id for c in copies if isinstance(c, pb.SendMessageResponse)} == {
        copies[0].message.message_id  # type: ignore[union-attr]
    }
    assert all(isinstance(c, pb.SendMessageResponse) for c in copies), copies

    # The same id for another message, or from another caller, is refused without revealing the first.
    assert await _code(_send(alice, cid, 3, "different", request_id="msg-1")) == grpc.StatusCode.ALREADY_EXISTS
    assert await _code(_send(bob, cid, 3, "refund please", request_id="msg-1")) == grpc.StatusCode.ALREADY_EXISTS
    stored = await alice.GetConversation(pb.GetConversationRequest(conversation_id=cid), timeout=10)
    assert [m.text for m in stored.messages] == ["refund please", "anything else", "same"]


async def test_roles_follow_the_callers_identity(connect) -> None:
    alice, ops, gateway = await connect(name="alice"), await connect(name="ops"), await connect("service", "gateway")
    cid = (await _create(alice)).conversation_id

    # An unset role is the caller's own.
    reply = await _send(alice, cid, 0, "hi")
    assert reply.message.role == USER and reply.message.author.endswith("/client/alice")
    reply = await _send(gateway, cid, 1, "hi from the web", role=USER)
    assert reply.message.role == USER

    for stub, role in ((alice, AGENT), (alice, SYSTEM), (gateway, AGENT), (gateway, SYSTEM), (ops, AGENT)):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await _send(stub, cid, 2, "pretending", role=role)
        assert failed.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "may not write" in (failed.value.details() or "")

    reply = await _send(ops, cid, 2, "maintenance tonight", role=SYSTEM)
    assert reply.message.role == SYSTEM
    assert await _code(_send(alice, cid, 3, "x", role=7)) == grpc.StatusCode.INVALID_ARGUMENT


async def test_bad_input_gets_precise_codes(connect) -> None:
    alice = await connect()
    cid = (await _create(alice)).conversation_id
    get = pb.GetConversationRequest(conversation_id="no-such-conversation")
    assert await _code(alice.GetConversation(get, timeout=10)) == grpc.StatusCode.NOT_FOUND
    assert await _code(_send(alice, "no-such-conversation", 0, "hi")) == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await _send(alice, cid, 0, "x" * 40_000)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "text is longer" in failed.value.details()
    assert await _code(_send(alice, cid, 0, "")) == grpc.StatusCode.INVALID_ARGUMENT
    assert await _code(_send(alice, cid, 0, "nul \x00 inside")) == grpc.StatusCode.INVALID_ARGUMENT
    nul_data = pb.SendMessageRequest(conversation_id=cid, expected_version=0, text="x")
    nul_data.data.update({"nested": {"k": "a\x00b"}})
    assert await _code(alice.SendMessage(nul_data, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
    assert await _code(_send(alice, cid, -1, "hi")) == grpc.StatusCode.INVALID_ARGUMENT
    assert await _code(_send(alice, "", 0, "hi")) == grpc.StatusCode.INVALID_ARGUMENT
    create = pb.CreateConversationRequest(title="t" * 300)
    assert await _code(alice.CreateConversation(create, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
    create = pb.CreateConversationRequest(labels={"bad key!": "v"})
    assert await _code(alice.CreateConversation(create, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
    listing = pb.ListConversationsRequest(page_token="garbage")
    assert await _code(alice.ListConversations(listing, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_pages_newest_first_with_filters(connect) -> None:
    alice, bob = await connect(name="alice"), await connect(name="bob")
    made = [await _create(alice, f"alice {i}", team="billing" if i % 2 else "support") for i in range(7)]
    await _create(bob, "bob's", team="billing")

    seen: list[str] = []
    token = ""
    while True:
        page = await alice.ListConversations(
            pb.ListConversationsRequest(page_size=3, page_token=token, owner=made[0].owner), timeout=10
        )
        seen += [c.title for c in page.conversations]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"alice {i}" for i in reversed(range(7))]

    billing = await alice.ListConversations(pb.ListConversationsRequest(labels={"team": "billing"}), timeout=10)
    assert sorted(c.title for c in billing.conversations) == ["alice 1", "alice 3", "alice 5", "bob's"]

    first = await alice.ListConversations(pb.ListConversationsRequest(page_size=1), timeout=10)
    other_filters = pb.ListConversationsRequest(page_size=1, page_token=first.next_page_token, owner="x")
    assert await _code(alice.ListConversations(other_filters, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT

    again = await alice.CreateConversation(pb.CreateConversationRequest(title="once", request_id="c-1"))
    same = await alice.CreateConversation(pb.CreateConversationRequest(title="once", request_id="c-1"))
    assert again.conversation.conversation_id == same.conversation.conversation_id


async def test_watch_streams_changes_and_resumes_from_a_version(connect) -> None:
    alice = await connect()
    cid = (await _create(alice)).conversation_id
    await _send(alice, cid, 0, "one")
    await _send(alice, cid, 1, "two")

    stream = alice.WatchConversation(pb.WatchConversationRequest(conversation_id=cid, since_version=0))
    seen = [await stream.read(), await stream.read()]
    assert [(c.version, c.message.text) for c in seen] == [(1, "one"), (2, "two")]
    await _send(alice, cid, 2, "three")
    await alice.RollbackConversation(
        pb.RollbackConversationRequest(conversation_id=cid, expected_version=3, to_version=1), timeout=10
    )
    live = [await asyncio.wait_for(stream.read(), 10), await asyncio.wait_for(stream.read(), 10)]
    assert [(c.version, c.message.text) for c in live] == [(3, "three"), (4, "rolled back to version 1")]
    assert live[1].rolled_back_to_version == 1
    stream.cancel()

    resumed = alice.WatchConversation(pb.WatchConversationRequest(conversation_id=cid, since_version=2))
    assert [(await resumed.read()).version, (await resumed.read()).version] == [3, 4]
    resumed.cancel()

    ahead = alice.WatchConversation(pb.WatchConversationRequest(conversation_id=cid, since_version=99))
    assert await _code(ahead.read()) == grpc.StatusCode.INVALID_ARGUMENT


async def _start_planner_process(settings: Settings, url: str) -> tuple[asyncio.subprocess.Process, str]:
    from agentmesh.inference import free_port

    port = free_port()
    env = {
        **os.environ,
        "AGENTMESH_HOME": str(settings.home),
        "AGENTMESH_DATABASE_URL": url,
        "AGENTMESH_TRUST_DOMAIN": settings.trust_domain,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentmesh.cli", "planner", "--port", str(port),
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return process, f"127.0.0.1:{port}"


async def test_state_survives_a_killed_planner_process(
    mesh_settings: Settings, issue_identity, migrated_database_url: str
) -> None:
    issue_identity("service", "planner")
    issue_identity("client", "alice")
    process, address = await _start_planner_process(mesh_settings, migrated_database_url)
    channel = create_channel(address, mesh_settings, kind="client", name="alice")
    try:
        await wait_until_serving(channel, within=30)
        stub = conversation_pb2_grpc.ConversationServiceStub(channel)
        cid = (await _create(stub)).conversation_id
        for version in range(3):
            await _send(stub, cid, version, f"message {version}", request_id=f"r{version}")
        await stub.RollbackConversation(
            pb.RollbackConversationRequest(conversation_id=cid, expected_version=3, to_version=2), timeout=10
        )
        process.send_signal(signal.SIGKILL)
        await process.wait()
    finally:
        await channel.close()
        if process.returncode is None:
            process.kill()

    process, address = await _start_planner_process(mesh_settings, migrated_database_url)
    channel = create_channel(address, mesh_settings, kind="client", name="alice")
    try:
        await wait_until_serving(channel, within=30)
        stub = conversation_pb2_grpc.ConversationServiceStub(channel)
        stored = await stub.GetConversation(pb.GetConversationRequest(conversation_id=cid), timeout=10)
        assert stored.conversation.version == 4
        assert [m.text for m in stored.messages] == ["message 0", "message 1", "rolled back to version 2"]
        # The new process knows the old request ids and versions.
        replay = await _send(stub, cid, 0, "message 0", request_id="r0")
        assert replay.message.version == 1
        assert await _code(_send(stub, cid, 3, "stale")) == grpc.StatusCode.ABORTED
        assert (await _send(stub, cid, 4, "after the restart")).message.version == 5
    finally:
        await channel.close()
        process.terminate()
        await process.wait()


@pytest.mark.parametrize("migrated_database_url", ["sqlite"], indirect=True)
async def test_a_node_client_follows_the_same_rules(planner: MeshServer, connect, mesh_settings: Settings) -> None:
    node = shutil.which("node")
    assert node, "Node.js is missing: `make system-deps` installs it"
    assert (NODE_CLIENT.parents[1] / "node_modules" / "@grpc" / "grpc-js").is_dir(), "run `make node-deps`"
    certs = mesh_settings.home / "certs"
    process = await asyncio.create_subprocess_exec(
        node, str(NODE_CLIENT), planner.address, str(mesh_settings.home / "ca" / "ca.pem"),
        str(certs / "client-alice.pem"), str(certs / "client-alice-key.pem"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    seen = json.loads(stdout.decode().strip().splitlines()[-1])
    assert seen["winners"] == 1 and seen["losers"] == ["ABORTED", "ABORTED"]
    assert seen["idempotent"] is True
    assert seen["forbidden"]["code"] == "PERMISSION_DENIED" and "may not write SYSTEM" in seen["forbidden"]["details"]
    assert seen["stale"]["code"] == "ABORTED"
    assert seen["versionAfterRollback"] == 3
    assert [row[0] for row in seen["visible"]] == [1, 3]
    assert seen["visible"][1][1:] == ["MESSAGE_ROLE_SYSTEM", "rolled back to version 1"]
    assert seen["hidden"] == [2]
    assert seen["resumed"] == [
        {"version": 2, "text": "refund please", "rolledBackTo": 0},
        {"version": 3, "text": "rolled back to version 1", "rolledBackTo": 1},
    ]
    assert seen["listed"] == [seen["id"]]

    # What Node wrote, Python reads the same.
    alice = await connect()
    stored = await alice.GetConversation(pb.GetConversationRequest(conversation_id=seen["id"]), timeout=10)
    assert stored.conversation.version == 3 and stored.conversation.labels == {"client": "node"}


async def test_behind_the_gateway_each_end_user_sees_only_their_own(
    mesh_settings: Settings, issue_identity, migrated_database_url: str
) -> None:
    issue_identity("service", "planner")
    issue_identity("service", "gateway")
    settings = mesh_settings.replace(database_url=migrated_database_url)
    planner_id = f"spiffe://{settings.trust_domain}/service/planner"
    engine = create_async_engine(migrated_database_url)
    server = _conversation_server(settings, engine, DelegationVerifier.from_settings(settings, audience=planner_id))
    issuer = DelegationIssuer.from_settings(settings, "service", "gateway")

    def acting_for(user: str) -> tuple[tuple[str, str], ...]:
        token = issuer.issue(kind=TokenKind.END_USER, audience=planner_id, subject=user, tenant="acme", scopes=[])
        return ((DELEGATION_METADATA, token),)

    async with server:
        channel = create_channel(server.address, settings, kind="service", name="gateway")
        try:
            await wait_until_serving(channel, within=20)
            gateway = conversation_pb2_grpc.ConversationServiceStub(channel)
            alice, bob = acting_for("alice"), acting_for("bob")
            created = await gateway.CreateConversation(
                pb.CreateConversationRequest(title="alice's"), metadata=alice, timeout=10
            )
            cid = created.conversation.conversation_id
            assert (created.conversation.on_behalf_of, created.conversation.tenant) == ("alice", "acme")
            sent = await gateway.SendMessage(
                pb.SendMessageRequest(conversation_id=cid, expected_version=0, text="hi"), metadata=alice, timeout=10
            )
            assert sent.message.on_behalf_of == "alice" and sent.message.author.endswith("/service/gateway")

            peek = gateway.GetConversation(pb.GetConversationRequest(conversation_id=cid), metadata=bob, timeout=10)
            assert await _code(peek) == grpc.StatusCode.NOT_FOUND
            listed = await gateway.ListConversations(pb.ListConversationsRequest(), metadata=bob, timeout=10)
            assert list(listed.conversations) == []
            forged = ((DELEGATION_METADATA, "not-a-token"),)
            bad = gateway.ListConversations(pb.ListConversationsRequest(), metadata=forged, timeout=10)
            assert await _code(bad) == grpc.StatusCode.UNAUTHENTICATED
        finally:
            await channel.close()
    await engine.dispose()


async def test_a_watch_on_one_replica_sees_writes_made_through_another(
    mesh_settings: Settings, issue_identity, migrated_database_url: str
) -> None:
    issue_identity("service", "planner")
    issue_identity("client", "alice")
    settings = mesh_settings.replace(database_url=migrated_database_url)
    engines = [create_async_engine(migrated_database_url) for _ in range(2)]
    replicas = [_conversation_server(settings, engine, poll_interval=0.2) for engine in engines]
    channels: list[grpc.aio.Channel] = []
    try:
        stubs = []
        for replica in replicas:
            await replica.start()
            channel = create_channel(replica.address, settings, kind="client", name="alice")
            channels.append(channel)
            await wait_until_serving(channel, within=20)
            stubs.append(conversation_pb2_grpc.ConversationServiceStub(channel))
        first, second = stubs
        cid = (await _create(first)).conversation_id
        stream = first.WatchConversation(pb.WatchConversationRequest(conversation_id=cid))
        await _send(second, cid, 0, "written through the other replica")
        change = await asyncio.wait_for(stream.read(), 10)
        assert (change.version, change.message.text) == (1, "written through the other replica")
        # Both replicas agree on the version: a stale write through either is refused.
        assert await _code(_send(first, cid, 0, "stale")) == grpc.StatusCode.ABORTED
        assert (await _send(first, cid, 1, "next")).conversation.version == 2
        stream.cancel()
    finally:
        for channel in channels:
            await channel.close()
        for replica in replicas:
            await replica.stop(grace=0.5)
        for engine in engines:
            await engine.dispose()


REPLY = """
name: reply
defaults: {agent: {names: [testing/worker]}, timeout: 10}
steps:
  - {id: answer, skill: shout, input: {text: "${task.input.text}"}}
output: {reply: "${steps.answer.output.text}"}
"""


async def test_a_message_starts_a_task_and_its_result_answers_in_the_conversation(
    planner_mesh: PlannerMesh, mesh_settings: Settings, issue_identity
) -> None:
    issue_identity("agent", "testing/worker")
    issue_identity("client", "alice")
    async with AgentRuntime(Worker(mesh_settings.replace(lease_ttl=2.0)), port=0,
                            registry_address=planner_mesh.registry.address) as runtime:
        async with asyncio.timeout(10):
            await runtime.wait_registered()
        planner_mesh.add_playbook(REPLY)
        channel = create_channel(planner_mesh.planner.address, mesh_settings, kind="client", name="alice")
        planner_mesh.channels.append(channel)
        alice = conversation_pb2_grpc.ConversationServiceStub(channel)
        cid = (await _create(alice)).conversation_id

        task = task_pb2.TaskTemplate(playbook="reply")
        task.input.update({"text": "where is my refund"})
        sent = await _send(alice, cid, 0, "where is my refund?", task=task, request_id="ask-1")
        assert sent.task_id and sent.message.task_id == sent.task_id
        assert (await _send(alice, cid, 0, "where is my refund?", task=task, request_id="ask-1")).task_id == sent.task_id

        stream = alice.WatchConversation(pb.WatchConversationRequest(conversation_id=cid, since_version=1))
        answer = await asyncio.wait_for(stream.read(), 30)
        stream.cancel()
        assert answer.message.role == AGENT and answer.message.task_id == sent.task_id
        assert answer.message.text == "WHERE IS MY REFUND"
        assert answer.message.author.endswith("/service/planner")
        done = await planner_mesh.wait(sent.task_id)
        assert done.state == task_pb2.TASK_STATE_SUCCEEDED and done.conversation_id == cid
        stored = await alice.GetConversation(pb.GetConversationRequest(conversation_id=cid), timeout=10)
        assert [m.role for m in stored.messages] == [USER, AGENT]  # answered once
