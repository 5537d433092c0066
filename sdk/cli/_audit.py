"""``agentmesh audit list|verify``: read the hash-chained audit trail and check that it is intact.

Directly from the planner with a client certificate, or through the gateway with ``--token`` (scope audit:read).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc

    from agentmesh._settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the actions of ``agentmesh audit``."""
    from agentmesh.cli._client import add_client_arguments

    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="list audit records, oldest first")
    listing.add_argument("--actor", default="", help="only records of this SPIFFE id")
    listing.add_argument("--resource", default="", help="only records about this resource")
    listing.add_argument("--action", default="", help="only records of this action (e.g. /agentmesh.v1.TaskService/SubmitTask)")
    listing.add_argument("--outcome", default="", help="only records of this outcome (OK or a gRPC status name)")
    listing.add_argument("--limit", type=int, default=50, help="records to print (default 50)")
    verify = actions.add_parser("verify", help="recompute the hash chain and report the first break")
    verify.add_argument("--from", dest="from_sequence", type=int, default=0, help="first record to check (default: 1)")
    verify.add_argument("--to", dest="to_sequence", type=int, default=0, help="last record to check (default: the head)")
    for sub in (listing, verify):
        add_client_arguments(sub, default_address_setting="planner_address")


def run(args: argparse.Namespace) -> int:
    """List or verify; verify exits 1 when the chain is broken."""
    from agentmesh.cli._client import call, print_json
    from agentmesh.v1 import audit_pb2, audit_pb2_grpc

    async def body(
        channel: grpc.aio.Channel, settings: Settings
    ) -> audit_pb2.VerifyAuditChainResponse | audit_pb2.ListAuditRecordsResponse:
        stub = audit_pb2_grpc.AuditServiceStub(channel)
        if args.action == "verify":
            verify = audit_pb2.VerifyAuditChainRequest(from_sequence=args.from_sequence, to_sequence=args.to_sequence)
            return await stub.VerifyAuditChain(verify, timeout=120)
        listing = audit_pb2.ListAuditRecordsRequest(
            page_size=args.limit, actor=args.actor, resource=args.resource, action=args.action, outcome=args.outcome
        )
        return await stub.ListAuditRecords(listing, timeout=30)

    reply = call(args, "planner_address", body)
    if args.json:
        print_json(reply)
    elif isinstance(reply, audit_pb2.VerifyAuditChainResponse):
        verdict = "intact" if reply.valid else f"BROKEN at record {reply.first_invalid_sequence}: {reply.message}"
        print(f"audit chain {verdict} ({reply.records_checked} records, head {reply.head_hash[:16]})")
    else:
        for record in reply.records:
            who = f"{record.actor} for {record.on_behalf_of}" if record.on_behalf_of else record.actor
            print(
                f"{record.sequence:>8} {record.record_time.ToJsonString()} {who} {record.action} "
                f"{record.resource or '-'} {record.outcome}"
            )
    return 0 if not isinstance(reply, audit_pb2.VerifyAuditChainResponse) or reply.valid else 1
