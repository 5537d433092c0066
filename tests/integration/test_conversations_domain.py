"""The conversation domain without gRPC, on SQLite and PostgreSQL: messages that start tasks, task results
answered once in the conversation (also after a planner restart), and roles by identity."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from agentmesh._errors import AbortedError, NotFoundError, PermissionDeniedError, UnavailableError
from agentmesh.services.planner.conversation_rules import Caller, RolePolicy
from agentmesh.services.planner.conversations import Conversations, TaskRequest, TaskStart
from agentmesh.services.planner.conversations_store import ConversationStore
from agentmesh.storage import Task, create_async_engine, utcnow

TD = "agentmesh.test"
ALICE = f"spiffe://{TD}/client/alice"
PLANNER = f"spiffe://{TD}/service/planner"
GATEWAY = f"spiffe://{TD}/service/gateway"
AS_ALICE = Caller(ALICE)
tasks = Task.__table__


@pytest.fixture
async def engine(migrated_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(migrated_database_url)
    yield engine
    await engine.dispose()


class FakePlanner:
    """Stores tasks the way the planner does (a row in `tasks`) and finishes them on demand."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.started: list[TaskStart] = []
        self.fail_next = False

    async def start(self, request: TaskStart) -> str:
        if self.fail_next:
            self.fail_next = False
            raise UnavailableError("the planner is busy")
        self.started.append(request)
        task_id = uuid.uuid4().hex
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.insert(tasks).values(
                    task_id=task_id,
                    request_id=request.request_id,
                    goal=request.goal,
                    input=request.input,
                    playbook=request.playbook,
                    state="RUNNING",
                    conversation_id=request.conversation_id,
                    submitted_by=request.submitted_by,
                    created_at=utcnow(),
                    updated_at=utcnow(),
                )
            )
        return task_id

    async def finish(self, task_id: str, state: str, output: dict | None = None, error: str = "") -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(tasks)
                .where(tasks.c.task_id == task_id)
                .values(state=state, output=output, error=error, updated_at=utcnow())
            )


async def test_a_message_starts_a_task_whose_result_is_appended_once(engine: AsyncEngine) -> None:
    planner = FakePlanner(engine)
    conversations = Conversations(ConversationStore(engine), trust_domain=TD, start_task=planner.start)
    conversation = await conversations.create(AS_ALICE, title="refund", labels={})
    cid = conversation.conversation_id

    sent = await conversations.send(
        AS_ALICE, cid, expected_version=0, role=None, text="Refund order 42 please",
        task=TaskRequest(input={"ticket": "Refund order 42 please"}, playbook="support"), request_id="m1",
    )
    assert sent.task_id and sent.message.version == 1
    started = planner.started[0]
    assert (started.goal, started.input, started.playbook) == (
        "Refund order 42 please", {"ticket": "Refund order 42 please"}, "support",
    )
    assert started.submitted_by == ALICE and started.request_id == f"conversation-message:{sent.message.message_id}"

    await conversations.tasks.poll()  # still running: nothing to say yet
    assert (await conversations.get(AS_ALICE, cid))[0].version == 1

    await planner.finish(sent.task_id, "SUCCEEDED", {"reply": "Your refund is on its way.", "amount": 42})
    await conversations.tasks.poll()
    await conversations.tasks.poll()
    await conversations.tasks.sweep()
    _, messages = await conversations.get(AS_ALICE, cid)
    assert [(m.role, m.text, m.task_id) for m in messages] == [
        ("USER", "Refund order 42 please", sent.task_id),
        ("AGENT", "Your refund is on its way.", sent.task_id),
    ]
    assert messages[1].author == PLANNER and messages[1].data == {"reply": "Your refund is on its way.", "amount": 42}


async def test_results_a_dead_planner_never_wrote_are_swept_at_start(engine: AsyncEngine) -> None:
    planner = FakePlanner(engine)
    first = Conversations(ConversationStore(engine), trust_domain=TD, start_task=planner.start)
    cid = (await first.create(AS_ALICE, title="t", labels={})).conversation_id
    sent = await first.send(AS_ALICE, cid, expected_version=0, role=None, text="cancel my plan", start_task=True)
    assert planner.started[0].input == {"text": "cancel my plan"}
    await planner.finish(sent.task_id, "FAILED", error="crm agent unavailable")
    # `first` died before it noticed; a new planner process sweeps at start.
    second = Conversations(ConversationStore(engine), trust_domain=TD, start_task=planner.start, poll_interval=0.05)
    assert await second.tasks.sweep() == 1
    assert await second.tasks.sweep() == 0
    _, messages = await second.get(AS_ALICE, cid)
    assert [(m.role, m.text) for m in messages][1] == ("SYSTEM", f"task {sent.task_id} failed: crm agent unavailable")


async def test_a_retried_message_starts_its_task_once(engine: AsyncEngine) -> None:
    planner = FakePlanner(engine)
    conversations = Conversations(ConversationStore(engine), trust_domain=TD, start_task=planner.start)
    cid = (await conversations.create(AS_ALICE, title="t", labels={})).conversation_id
    planner.fail_next = True
    with pytest.raises(UnavailableError):
        await conversations.send(AS_ALICE, cid, expected_version=0, role=None, text="hi", start_task=True, request_id="r")
    # The message was stored; the retry (same request id) starts the task the first try could not.
    retried = await conversations.send(
        AS_ALICE, cid, expected_version=0, role=None, text="hi", start_task=True, request_id="r"
    )
    again = await conversations.send(AS_ALICE, cid, expected_version=0, role=None, text="hi", start_task=True, request_id="r")
    assert retried.task_id and again.task_id == retried.task_id
    assert len(planner.started) == 1
    assert (await conversations.get(AS_ALICE, cid))[0].version == 1


async def test_the_planner_writes_agent_messages_and_clients_cannot(engine: AsyncEngine) -> None:
    conversations = Conversations(ConversationStore(engine), trust_domain=TD)
    cid = (await conversations.create(AS_ALICE, title="t", labels={})).conversation_id
    sent = await conversations.send(Caller(PLANNER), cid, expected_version=0, role=None, text="Hello, how can I help?")
    assert sent.message.role == "AGENT"
    with pytest.raises(PermissionDeniedError, match="may not write AGENT"):
        await conversations.send(AS_ALICE, cid, expected_version=1, role="AGENT", text="I am an agent")


def test_roles_by_identity() -> None:
    roles = RolePolicy(TD)
    assert roles.roles_of(ALICE) == ("USER",)
    assert roles.roles_of(f"spiffe://{TD}/service/gateway") == ("USER",)
    assert roles.roles_of(f"spiffe://{TD}/client/ops") == ("USER", "SYSTEM")
    assert roles.roles_of(PLANNER) == ("AGENT",)
    assert roles.roles_of(f"spiffe://{TD}/agent/support.responder") == ("AGENT",)
    assert roles.roles_of(f"spiffe://{TD}/service/registry") == ()
    assert roles.roles_of("spiffe://other.domain/client/alice") == ()
    assert roles.roles_of(None) == ("USER", "AGENT", "SYSTEM")  # --insecure-dev has no identities
    with pytest.raises(PermissionDeniedError):
        roles.resolve(f"spiffe://{TD}/service/registry", None)


async def test_an_end_user_sees_only_their_own_conversations(engine: AsyncEngine) -> None:
    conversations = Conversations(ConversationStore(engine), trust_domain=TD)
    alice, bob = Caller(GATEWAY, "alice", "acme"), Caller(GATEWAY, "bob", "acme")
    mine = await conversations.create(alice, title="alice's", labels={}, request_id="c1")
    theirs = await conversations.create(bob, title="bob's", labels={}, request_id="c1")  # same id, other user
    assert mine.conversation_id != theirs.conversation_id
    assert (mine.on_behalf_of, mine.tenant) == ("alice", "acme")
    cid = mine.conversation_id
    sent = await conversations.send(alice, cid, expected_version=0, role=None, text="hi", request_id="m1")
    assert sent.message.on_behalf_of == "alice" and sent.message.author == GATEWAY

    for attempt in (
        conversations.get(bob, cid),
        conversations.send(bob, cid, expected_version=1, role=None, text="peek"),
        conversations.send(bob, cid, expected_version=0, role=None, text="hi", request_id="m1"),
        conversations.rollback(bob, cid, expected_version=1, to_version=0),
        anext(conversations.watch(bob, cid)),
    ):
        with pytest.raises(NotFoundError, match="does not exist"):
            await attempt
    assert (await conversations.get(alice, cid))[0].version == 1
    assert [c.title for c in (await conversations.list_page(bob))[0]] == ["bob's"]
    assert [c.title for c in (await conversations.list_page(Caller(GATEWAY, "alice", "other-tenant")))[0]] == []
    # A workload acting for nobody (ops) sees them all.
    assert {c.title for c in (await conversations.list_page(AS_ALICE))[0]} == {"alice's", "bob's"}


async def test_stopping_ends_watches_with_where_to_resume(engine: AsyncEngine) -> None:
    conversations = Conversations(ConversationStore(engine), trust_domain=TD, poll_interval=30)
    cid = (await conversations.create(AS_ALICE, title="t", labels={})).conversation_id
    await conversations.send(AS_ALICE, cid, expected_version=0, role=None, text="one")
    watch = conversations.watch(AS_ALICE, cid)
    assert (await anext(watch)).text == "one"
    waiting = asyncio.ensure_future(anext(watch))
    await conversations.send(AS_ALICE, cid, expected_version=1, role=None, text="two")
    assert (await asyncio.wait_for(waiting, 5)).text == "two"  # woken at once, not after the 30 s poll
    waiting = asyncio.ensure_future(anext(watch))
    await asyncio.sleep(0)
    await conversations.stop()
    with pytest.raises(UnavailableError, match="watch again from version 2"):
        await asyncio.wait_for(waiting, 5)


async def test_a_rollback_is_in_the_audit_trail(engine: AsyncEngine) -> None:
    from agentmesh.audit import verify_chain
    from agentmesh.storage import AuditRecord

    conversations = Conversations(ConversationStore(engine), trust_domain=TD)
    alice = Caller(GATEWAY, "alice", "acme")
    cid = (await conversations.create(alice, title="t", labels={})).conversation_id
    for version in range(2):
        await conversations.send(alice, cid, expected_version=version, role=None, text=f"m{version}")
    await conversations.rollback(alice, cid, expected_version=2, to_version=1)
    with pytest.raises(AbortedError):  # a refused rollback leaves no record
        await conversations.rollback(alice, cid, expected_version=2, to_version=0)
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(AuditRecord.__table__))).all()
    assert [(r.action, r.resource, r.actor, r.on_behalf_of, r.detail) for r in rows] == [
        ("conversation.rollback", f"conversations/{cid}", GATEWAY, "alice", {"from_version": 2, "to_version": 1})
    ]
    assert (await verify_chain(engine)).valid


async def test_idle_watchers_cost_one_shared_poll_not_a_query_each(engine: AsyncEngine) -> None:
    class CountingStore(ConversationStore):
        reads = 0

        async def changes_after(self, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
            CountingStore.reads += 1
            return await super().changes_after(*args, **kwargs)  # type: ignore[arg-type]

    watching = Conversations(CountingStore(engine), trust_domain=TD, poll_interval=0.05)
    other_replica = Conversations(ConversationStore(engine), trust_domain=TD)
    ids = [(await other_replica.create(AS_ALICE, title=f"c{i}", labels={})).conversation_id for i in range(5)]
    watches = [watching.watch(AS_ALICE, cid) for cid in ids for _ in range(4)]  # 20 streams
    pending = [asyncio.ensure_future(anext(w)) for w in watches]
    await asyncio.sleep(0.6)  # ~12 poll rounds, nothing written
    assert CountingStore.reads == 20  # each stream read once; the idle rounds were one versions() query each
    await other_replica.send(AS_ALICE, ids[0], expected_version=0, role=None, text="through the other replica")
    woken = await asyncio.wait_for(asyncio.gather(*pending[:4]), 5)
    assert {m.text for m in woken} == {"through the other replica"}
    assert not any(p.done() for p in pending[4:])
    await watching.stop()
    for future in pending[4:]:
        with pytest.raises(UnavailableError):
            await future


async def test_an_unreachable_database_is_unavailable_not_a_traceback() -> None:
    from agentmesh.inference import free_port

    engine = create_async_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere")
    conversations = Conversations(ConversationStore(engine), trust_domain=TD)
    try:
        with pytest.raises(UnavailableError, match="cannot reach its database; retry shortly"):
            await conversations.create(AS_ALICE, title="t", labels={})
        with pytest.raises(UnavailableError):
            await conversations.send(AS_ALICE, "c1", expected_version=0, role=None, text="hi")
    finally:
        await engine.dispose()
