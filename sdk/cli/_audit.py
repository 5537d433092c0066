"""``agentmesh audit list|verify``: read the hash-chained audit trail and check that it is intact."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the actions of ``agentmesh audit``."""
    from agentmesh.cli._client import add_client_arguments

    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="list audit records, oldest first")
    listing.add_argument("--actor", default="", help="only records of this SPIFFE id")
    listing.add_argument("--resource", default="", help="only records about this resource")
    listing.add_argument("--limit", type=int, default=50, help="records to print (default 50)")
    verify = actions.add_parser("verify", help="recompute the hash chain and report the first break")
    for sub in (listing, verify):
        add_client_arguments(sub, default_address_setting="planner_address")


def run(args: argparse.Namespace) -> int:
    """List or verify; verify exits 1 when the chain is broken."""
    from agentmesh.cli._client import call, print_json
    from agentmesh.v1 import audit_pb2, audit_pb2_grpc

    async def body(channel: object, settings: object) -> object:
        stub = audit_pb2_grpc.AuditServiceStub(channel)  # type: ignore[arg-type]
        if args.action == "verify":
            return await stub.VerifyAuditChain(audit_pb2.VerifyAuditChainRequest(), timeout=60)
        request = audit_pb2.ListAuditRecordsRequest(page_size=args.limit, actor=args.actor, resource=args.resource)
        return await stub.ListAuditRecords(request, timeout=30)

    reply = call(args, "planner_address", body)
    if args.json:
        print_json(reply)
    elif isinstance(reply, audit_pb2.VerifyAuditChainResponse):
        verdict = "intact" if reply.valid else f"BROKEN at record {reply.first_invalid_sequence}: {reply.message}"
        print(f"audit chain {verdict} ({reply.records_checked} records, head {reply.head_hash[:16]})")
    else:
        for record in reply.records:  # type: ignore[attr-defined]
            print(f"{record.sequence:>8} {record.record_time.ToJsonString()} {record.actor} {record.action} "
                  f"{record.resource} {record.outcome}")
    return 0 if not isinstance(reply, audit_pb2.VerifyAuditChainResponse) or reply.valid else 1
