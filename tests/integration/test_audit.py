"""The audit trail as an operator relies on it: append-only, tamper-evident, one chain under concurrent
appenders, readable and verifiable over AuditService (directly over mTLS, or through the gateway)."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from agentmesh._channel import create_channel
from agentmesh._health import wait_until_serving
from agentmesh._server import MeshServer, bind
from agentmesh.audit import AuditEntry, AuditLog, AuditServicer, append_audit, verify_chain
from agentmesh.storage import async_session_factory, create_async_engine, create_engine
from agentmesh.v1 import audit_pb2, audit_pb2_grpc

pytestmark = pytest.mark.asyncio


async def _fill(url: str, count: int) -> None:
    engine = create_async_engine(url)
    log = AuditLog(engine)
    try:
        await asyncio.gather(
            *(
                log.append(AuditEntry("/agentmesh.v1.TaskService/SubmitTask", resource=f"tasks/t{i}", detail={"n": i}))
                for i in range(count)
            )
        )
    finally:
        await engine.dispose()


@pytest.fixture
async def audit_server(mesh_settings: Any, issue_identity: Any, migrated_database_url: str) -> AsyncIterator[MeshServer]:
    """AuditService as the planner serves it, on the test database."""
    issue_identity("service", "planner")
    issue_identity("client", "ops")
    engine = create_async_engine(migrated_database_url)
    server = MeshServer(
        name="planner",
        settings=mesh_settings.replace(readiness_interval=0.1),
        port=0,
        services=[bind(AuditServicer(engine), audit_pb2_grpc.add_AuditServiceServicer_to_server, "agentmesh.v1.AuditService")],
    )
    await server.start()
    yield server
    await server.stop(grace=0.5)
    await engine.dispose()


async def test_tampering_with_one_row_is_pinpointed_by_verify_audit_chain(
    audit_server: MeshServer, mesh_settings: Any, migrated_database_url: str
) -> None:
    await _fill(migrated_database_url, 30)
    channel = create_channel(audit_server.address, mesh_settings, kind="client", name="ops")
    try:
        await wait_until_serving(channel)
        stub = audit_pb2_grpc.AuditServiceStub(channel)
        intact = await stub.VerifyAuditChain(audit_pb2.VerifyAuditChainRequest(), timeout=10)
        assert (intact.valid, intact.records_checked, intact.first_invalid_sequence) == (True, 30, 0)

        # An attacker with database access edits record 17 behind the application's back.
        engine = create_engine(migrated_database_url)
        with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                connection.execute(sa.text("ALTER TABLE audit_records DISABLE TRIGGER audit_records_append_only"))
            else:
                connection.execute(sa.text("DROP TRIGGER audit_records_no_update"))
            connection.execute(sa.text("UPDATE audit_records SET outcome = 'OK ', resource = 'tasks/x' WHERE sequence = 17"))
            if engine.dialect.name == "postgresql":  # leave the schema as found (test databases are reused)
                connection.execute(sa.text("ALTER TABLE audit_records ENABLE TRIGGER audit_records_append_only"))
        engine.dispose()

        broken = await stub.VerifyAuditChain(audit_pb2.VerifyAuditChainRequest(), timeout=10)
        assert (broken.valid, broken.first_invalid_sequence, broken.records_checked) == (False, 17, 16)
        assert "record 17" in broken.message
        # A range that ends before the damage still verifies.
        before = await stub.VerifyAuditChain(audit_pb2.VerifyAuditChainRequest(from_sequence=5, to_sequence=16), timeout=10)
        assert before.valid and before.records_checked == 12

        # Listing pages through in sequence order, filtered.
        first = await stub.ListAuditRecords(audit_pb2.ListAuditRecordsRequest(page_size=10), timeout=10)
        second = await stub.ListAuditRecords(
            audit_pb2.ListAuditRecordsRequest(page_size=10, page_token=first.next_page_token), timeout=10
        )
        assert [r.sequence for r in [*first.records, *second.records]] == list(range(1, 21))
        one = await stub.ListAuditRecords(audit_pb2.ListAuditRecordsRequest(resource="tasks/t3"), timeout=10)
        assert [r.resource for r in one.records] == ["tasks/t3"] and not one.next_page_token
    finally:
        await channel.close()


async def test_the_application_cannot_update_or_delete_a_record(migrated_database_url: str) -> None:
    engine = create_async_engine(migrated_database_url)
    sessions = async_session_factory(engine)
    try:
        async with sessions.begin() as session:
            [record] = await append_audit(session, [AuditEntry("step.attempt", resource="tasks/t1/steps/s1")])
        from agentmesh._errors import FailedPreconditionError

        async with sessions() as session:
            stored = await session.get(type(record), record.sequence)
            assert stored is not None
            stored.outcome = "FAILED_PRECONDITION"
            with pytest.raises(FailedPreconditionError):
                await session.commit()
            await session.rollback()
            await session.delete(stored)
            with pytest.raises(FailedPreconditionError):
                await session.commit()
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_update_and_delete_on_the_audit_table_fail_on_postgresql(migrated_postgres_url: str) -> None:
    await _fill(migrated_postgres_url, 3)
    engine = create_engine(migrated_postgres_url)
    try:
        for statement in (
            "UPDATE audit_records SET outcome = 'OK' WHERE sequence = 2",
            "DELETE FROM audit_records WHERE sequence = 3",
            "TRUNCATE audit_records",  # fires no row trigger: the table needs a statement trigger too
        ):
            with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as connection:
                connection.execute(sa.text(statement))
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT count(*) FROM audit_records")).scalar_one() == 3
    finally:
        engine.dispose()


_APPENDER = textwrap.dedent(
    """
    import asyncio, sys
    from agentmesh.audit import AuditEntry, AuditLog, append_audit
    from agentmesh.storage import async_session_factory, create_async_engine

    async def main(url, name, count):
        engine = create_async_engine(url)
        sessions = async_session_factory(engine)
        log = AuditLog(engine)

        async def in_transaction(i):  # the planner's way: inside its own transaction (ORM session or Core)
            entry = AuditEntry("step.attempt", actor=name, resource=f"tasks/{name}/{i}")
            if i % 2:
                async with sessions.begin() as session:
                    await append_audit(session, [entry])
            else:
                async with engine.begin() as connection:
                    await append_audit(connection, [entry])

        work = [log.append(AuditEntry("submit", actor=name, resource=f"tasks/{name}/g{i}")) for i in range(count)]
        work += [in_transaction(i) for i in range(count)]
        await asyncio.gather(*work)
        await engine.dispose()

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)


async def test_two_appending_processes_keep_one_valid_chain(migrated_database_url: str) -> None:
    count = 40
    processes = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", _APPENDER, migrated_database_url, f"planner-{n}", str(count))
        for n in range(2)
    ]
    for process in processes:
        assert await asyncio.wait_for(process.wait(), 120) == 0
    engine = create_async_engine(migrated_database_url)
    try:
        result = await verify_chain(engine)
        assert result.valid, result.message
        assert result.records_checked == 2 * 2 * count
        async with engine.connect() as connection:
            actors = (await connection.execute(sa.text("SELECT actor, count(*) FROM audit_records GROUP BY actor"))).all()
        assert dict(actors) == {"planner-0": 2 * count, "planner-1": 2 * count}
    finally:
        await engine.dispose()


async def test_audit_reads_go_through_the_gateway_with_the_audit_read_scope(
    audit_server: MeshServer, start_gateway: Any, migrated_database_url: str
) -> None:
    gateway = await start_gateway(planner=audit_server.address, database_url=migrated_database_url)
    async with gateway.channel() as channel:
        stub = audit_pb2_grpc.AuditServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListAuditRecords(audit_pb2.ListAuditRecordsRequest(), metadata=gateway.bearer(["tasks:read"]), timeout=10)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        reply = await stub.ListAuditRecords(audit_pb2.ListAuditRecordsRequest(), metadata=gateway.bearer(["audit:read"]), timeout=10)
        # The refusal just before is on record: who, what, outcome, the gateway as actor.
        [refusal] = reply.records
        assert refusal.action == "/agentmesh.v1.AuditService/ListAuditRecords"
        assert (refusal.outcome, refusal.on_behalf_of) == ("PERMISSION_DENIED", "acme/alice")
        assert refusal.actor.endswith("/service/gateway") and refusal.previous_hash == "0" * 64
        assert len(refusal.trace_id) == 32  # the call's trace, sampled or not
        verdict = await stub.VerifyAuditChain(audit_pb2.VerifyAuditChainRequest(), metadata=gateway.bearer(["audit:read"]), timeout=10)
        assert verdict.valid and verdict.records_checked == 1


async def test_agentmesh_audit_works_through_the_gateway_with_a_token(
    audit_server: MeshServer, start_gateway: Any, migrated_database_url: str
) -> None:
    import os

    await _fill(migrated_database_url, 5)
    gateway = await start_gateway(planner=audit_server.address, database_url=migrated_database_url)
    env = {**os.environ, "AGENTMESH_HOME": str(gateway.settings.home), "AGENTMESH_TOKEN": gateway.token(["audit:read"])}
    outputs = []
    for action in (["list", "--resource", "tasks/t2"], ["verify"]):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agentmesh.cli", "audit", *action, "--gateway", gateway.address,
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, err.decode()
        outputs.append(out.decode())
    assert "tasks/t2" in outputs[0] and "tasks/t3" not in outputs[0]
    assert outputs[1].startswith("audit chain intact (5 records")


@pytest.mark.postgres
async def test_a_hostile_value_cannot_make_postgresql_refuse_a_batch_of_records(migrated_postgres_url: str) -> None:
    # A caller picks the task id the gateway records as the resource: over-long or with a NUL character, it once
    # made PostgreSQL refuse the insert, and with it every record group-committed in the same transaction.
    engine = create_async_engine(migrated_postgres_url)
    log = AuditLog(engine)
    hostile = [
        AuditEntry("/agentmesh.v1.TaskService/CancelTask", resource="tasks/" + "x" * 5_000, outcome="INVALID_ARGUMENT"),
        AuditEntry("/agentmesh.v1.TaskService/CancelTask", resource="tasks/a\x00b", detail={"message": "id a\x00b", "k\x00": 1}),
        AuditEntry("/agentmesh.v1.TaskService/SubmitTask", on_behalf_of="acme/" + "u" * 600, trace_id="t" * 40),
    ]
    try:
        stored = await asyncio.gather(
            log.append(AuditEntry("/agentmesh.v1.TaskService/SubmitTask", resource="tasks/honest")),
            *(log.append(entry) for entry in hostile),
        )
        assert [len(records) for records in stored] == [1, 1, 1, 1]
        assert (await verify_chain(engine)).valid
        async with engine.connect() as connection:
            rows = (await connection.execute(sa.text("SELECT resource, detail::text FROM audit_records"))).all()
        assert len(rows) == 4 and all(len(resource) <= 512 and "\x00" not in resource for resource, _ in rows)
        assert "tasks/honest" in {resource for resource, _ in rows}
    finally:
        await engine.dispose()


async def test_an_append_the_database_refuses_fails_alone_and_the_next_one_is_chained(migrated_postgres_url: str) -> None:
    # The group commit's transaction on PostgreSQL goes out pipelined on an autocommit connection: a batch the
    # server refuses must fail its callers, leave no half-open transaction on the pooled connection, and let the
    # next append extend the chain from the last committed record.
    engine = create_async_engine(migrated_postgres_url)
    log = AuditLog(engine)
    try:
        await log.append(AuditEntry("/agentmesh.v1.TaskService/SubmitTask", resource="tasks/first"))
        async with engine.begin() as connection:
            await connection.execute(sa.text(
                "CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.resource = 'tasks/boom' THEN RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$"
            ))
            await connection.execute(sa.text(
                "CREATE TRIGGER refuse_boom BEFORE INSERT ON audit_records FOR EACH ROW EXECUTE FUNCTION refuse_boom()"
            ))
        with pytest.raises(Exception, match="refused by the test"):
            await log.append(AuditEntry("/agentmesh.v1.TaskService/SubmitTask", resource="tasks/boom"))
        stored = await asyncio.gather(
            *(log.append(AuditEntry("/agentmesh.v1.TaskService/SubmitTask", resource=f"tasks/after-{i}")) for i in range(5))
        )
        assert [records[0].sequence for records in stored] == [2, 3, 4, 5, 6]
        result = await verify_chain(engine)
        assert result.valid and result.records_checked == 6, result.message
        async with engine.connect() as connection:
            resources = (await connection.execute(sa.text("SELECT resource FROM audit_records ORDER BY sequence"))).scalars().all()
        assert resources == ["tasks/first", *(f"tasks/after-{i}" for i in range(5))]
    finally:
        await log.close()
        await engine.dispose()
