"""``agentmesh agents list|get|discover|route|revoke|unrevoke|revocations``: the registry, as readable tables.

agentmesh agents list --namespace support
agentmesh agents get support/triage
agentmesh agents discover --skill classify_ticket --policy pii:allowed --intent "refund a damaged order"
agentmesh agents route support/triage --weights 1.0.0=90,1.1.0=10 --max-error-rate 0.2
agentmesh agents revoke support/triage --reason "key leaked"     # or --serial HEX, or --spiffe-id URI
agentmesh agents unrevoke support/triage
agentmesh agents revocations
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    import grpc
    from rich.console import Console

    from agentmesh._settings import Settings
    from agentmesh.v1 import agent_pb2, registry_pb2


def _agent_name(value: str) -> tuple[str, str]:
    namespace, sep, name = value.partition("/")
    if not sep or not namespace or not name:
        raise argparse.ArgumentTypeError(f"{value!r}: expected NAMESPACE/NAME, e.g. support/triage")
    return namespace, name


def _weights(value: str) -> dict[str, int]:
    weights: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        version, sep, weight = item.partition("=")
        if not sep or not weight.strip().isdigit():
            raise argparse.ArgumentTypeError(f"{item!r}: expected VERSION=WEIGHT, e.g. 1.0.0=90")
        weights[version.strip()] = int(weight)
    if not weights:
        raise argparse.ArgumentTypeError("expected VERSION=WEIGHT[,VERSION=WEIGHT...]")
    return weights


def _label(value: str) -> tuple[str, str]:
    key, sep, label = value.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{value!r}: expected KEY=VALUE")
    return key, label


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the actions of ``agentmesh agents``."""
    from agentmesh.cli._client import add_client_arguments

    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="list registered instances")
    listing.add_argument("--namespace", default="", help="only this namespace")
    listing.add_argument("--prefix", default="", help="only names starting with this")
    listing.add_argument("--all", action="store_true", help="include DRAINING and NOT_SERVING instances")
    listing.add_argument(
        "--limit", type=int, default=200, help="instances to print (default 200; says so when more exist)"
    )

    get = actions.add_parser("get", help="show one agent: card, skills, instances, routing")
    get.add_argument("agent", type=_agent_name, metavar="NAMESPACE/NAME")
    get.add_argument("--version", default="", help="this version (default: the highest live one)")

    discover = actions.add_parser("discover", help="ask which agents should do something, with reasons")
    discover.add_argument("--name", action="append", default=[], help="visible NAMESPACE/NAME (repeatable)")
    discover.add_argument(
        "--pattern", action="append", default=[], help="visible regex over NAMESPACE/NAME (repeatable)"
    )
    discover.add_argument("--purpose", default="")
    discover.add_argument(
        "--policy", action="append", default=[], help="required policy key:value (repeatable)"
    )
    discover.add_argument("--skill", default="")
    discover.add_argument("--label", action="append", type=_label, default=[], help="KEY=VALUE (repeatable)")
    discover.add_argument("--version-constraint", default="", help="PEP 440 specifier, e.g. '>=1.0,<2'")
    discover.add_argument("--intent", default="", help="free text ranked by relevance")
    discover.add_argument("--routing-key", default="", help="sticky key for version routing (e.g. a task id)")
    discover.add_argument("--max", type=int, default=10, dest="max_results", help="candidates (default 10)")

    route = actions.add_parser("route", help="show or set the version weights (canary) of an agent")
    route.add_argument("agent", type=_agent_name, metavar="NAMESPACE/NAME")
    route.add_argument(
        "--weights", type=_weights, default=None, help="VERSION=WEIGHT,... e.g. 1.0.0=90,1.1.0=10"
    )
    route.add_argument(
        "--max-error-rate",
        type=float,
        default=None,
        help="roll a canary back above this error rate (e.g. 0.2)",
    )
    route.add_argument(
        "--min-requests", type=int, default=20, help="outcomes needed before judging (default 20)"
    )
    route.add_argument("--window", type=float, default=60.0, help="seconds of outcomes judged (default 60)")
    route.add_argument("--reason", default="", help="why (kept with the policy)")

    revoke = actions.add_parser(
        "revoke",
        help="revoke an agent's identity (or one certificate) mesh-wide: refused everywhere within seconds",
    )
    _add_subject_arguments(revoke)
    revoke.add_argument("--reason", default="", help="why (kept with the revocation)")
    unrevoke = actions.add_parser("unrevoke", help="lift a revocation")
    _add_subject_arguments(unrevoke)
    revocations = actions.add_parser("revocations", help="list the identities and certificates revoked")

    for sub in (listing, get, discover, route, revoke, unrevoke, revocations):
        add_client_arguments(sub, default_address_setting="registry_address")


def _add_subject_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "agent", type=_agent_name, metavar="NAMESPACE/NAME", nargs="?", help="the agent (its identity is derived)"
    )
    parser.add_argument("--serial", default="", help="one certificate's serial, hex (from `agentmesh certs show`)")
    parser.add_argument("--spiffe-id", default="", help="any identity, e.g. spiffe://TD/service/planner")


class _Subject(TypedDict, total=False):
    """Whom revoke/unrevoke target (keyword arguments of RegistryClient.revoke and .unrevoke)."""

    spiffe_id: str
    certificate_serial: str


def _subject(args: argparse.Namespace, trust_domain: str) -> _Subject:
    """The revoke/unrevoke target: exactly one of NAMESPACE/NAME, --spiffe-id and --serial."""
    from agentmesh._errors import InvalidArgumentError
    from agentmesh.security import agent_spiffe_id

    given = [bool(args.agent), bool(args.spiffe_id), bool(args.serial)]
    if sum(given) != 1:
        raise InvalidArgumentError("name exactly one of NAMESPACE/NAME, --spiffe-id and --serial")
    if args.serial:
        return {"certificate_serial": args.serial}
    if args.spiffe_id:
        return {"spiffe_id": args.spiffe_id}
    return {"spiffe_id": agent_spiffe_id(trust_domain, *args.agent)}


def run(args: argparse.Namespace) -> int:
    """Call the registry and print a table (or JSON with --json)."""
    from rich.console import Console

    from agentmesh._errors import MeshError
    from agentmesh.cli._client import call, print_json

    console = Console()

    async def body(channel: grpc.aio.Channel, settings: Settings) -> Any:
        from agentmesh._registry_client import RegistryClient

        client = RegistryClient(settings, kind="client", name=args.identity, channel=channel)
        if args.action == "list":
            instances = []
            async for instance in client.iter_agents(
                namespace=args.namespace,
                name_prefix=args.prefix,
                include_not_serving=args.all,
                page_size=min(200, args.limit + 1),
            ):
                instances.append(instance)
                if len(instances) > args.limit:  # one more than asked: more exist
                    break
            return instances
        if args.action == "get":
            namespace, name = args.agent
            return await client.get_agent(namespace, name, args.version)
        if args.action == "discover":
            from agentmesh.v1 import registry_pb2

            # The table shows names, endpoints, scores and reasons only: ask for the lighter BASIC cards.
            view = registry_pb2.INSTANCE_VIEW_FULL if args.json else registry_pb2.INSTANCE_VIEW_BASIC
            return await client.discover(
                names=args.name,
                patterns=args.pattern,
                purpose=args.purpose,
                required_policies=args.policy,
                skill=args.skill,
                labels=dict(args.label),
                version_constraint=args.version_constraint,
                intent=args.intent,
                max_results=args.max_results,
                routing_key=args.routing_key,
                view=view,
            )
        if args.action == "revoke":
            return await client.revoke(**_subject(args, settings.trust_domain), reason=args.reason)
        if args.action == "unrevoke":
            return await client.unrevoke(**_subject(args, settings.trust_domain))
        if args.action == "revocations":
            return await client.list_revocations()
        namespace, name = args.agent
        if args.weights is None:
            return await client.get_routing(namespace, name)
        return await client.set_routing(
            namespace,
            name,
            args.weights,
            max_error_rate=args.max_error_rate,
            min_requests=args.min_requests,
            window=args.window,
            reason=args.reason,
        )

    try:
        reply = call(args, "registry_address", body)
    except MeshError as exc:  # one unwrapped line on stderr, like every other command's refusal
        field = f" (field {exc.metadata['field']})" if "field" in exc.metadata else ""
        print(f"agentmesh agents: {exc.code.name}: {exc.message}{field}", file=sys.stderr)
        return 1
    more = args.action == "list" and len(reply) > args.limit
    if more:
        reply = reply[: args.limit]
        hint = f"more instances exist than the {args.limit} shown; raise --limit or narrow with --namespace/--prefix"
    if args.json:
        if args.action == "list":  # JSON Lines: one instance per line; the note goes to stderr
            for message in reply:
                print_json(message, indent=None)
            if more:
                Console(stderr=True).print(hint)
            return 0
        print_json(reply)
        return 0
    _print(console, args.action, reply)
    if more:
        console.print(f"[yellow]{hint}[/]")
    if args.action == "list" and not args.all:  # an agent whose dependency (Triton) is down is not listed
        console.print("serving instances only; --all shows the NOT_SERVING and DRAINING ones too", style="dim")
    return 0


def _state(value: agent_pb2.ServingState.ValueType) -> str:
    from agentmesh.v1 import agent_pb2

    return agent_pb2.ServingState.Name(value).removeprefix("SERVING_STATE_")


def _print(console: Console, action: str, reply: Any) -> None:
    from rich.table import Table

    if action == "list":
        table = Table(title=f"{len(reply)} instance(s)")
        for column in ("agent", "version", "purpose", "endpoint", "state", "load", "skills", "lease expires"):
            table.add_column(column)
        for instance in reply:
            card = instance.card
            table.add_row(
                f"{card.namespace}/{card.name}",
                card.version,
                card.purpose,
                card.endpoint,
                _state(instance.state),
                f"{instance.load:.2f}",
                ", ".join(s.name for s in card.skills),
                instance.lease_expire_time.ToDatetime().strftime("%H:%M:%S"),
            )
        console.print(table)
    elif action == "get":
        card = reply.card
        console.print(f"[bold]{card.namespace}/{card.name}[/] {card.version} — {card.purpose}")
        console.print(f"  {card.description}")
        console.print(f"  owner {card.owner or '-'}, identity {card.spiffe_id}")
        console.print(f"  policies: {', '.join(card.policies) or '-'}")
        console.print(f"  labels: {', '.join(f'{k}={v}' for k, v in sorted(card.labels.items())) or '-'}")
        skills = Table(title="skills")
        skills.add_column("skill")
        skills.add_column("description")
        for skill in card.skills:
            skills.add_row(skill.name, skill.description)
        console.print(skills)
        instances = Table(title="live instances")
        for column in ("instance", "endpoint", "state", "load"):
            instances.add_column(column)
        for instance in reply.instances:
            instances.add_row(
                instance.instance_id, instance.card.endpoint, _state(instance.state), f"{instance.load:.2f}"
            )
        console.print(instances)
        if reply.HasField("routing_policy"):
            _print_policy(console, reply.routing_policy)
    elif action == "discover":
        table = Table(title=f"{reply.matched_count} matched of {reply.visible_count} visible; best first")
        for column in ("#", "agent", "version", "endpoint", "score", "skill", "why"):
            table.add_column(column)
        for rank, candidate in enumerate(reply.candidates, start=1):
            card = candidate.instance.card
            table.add_row(
                str(rank),
                f"{card.namespace}/{card.name}",
                card.version,
                card.endpoint,
                f"{candidate.score:.3f}",
                candidate.matched_skill or "-",
                "\n".join(candidate.reasons),
            )
        console.print(table)
    elif action == "revoke":
        console.print(
            f"revoked {_revoked_subject(reply.revocation)}; "
            f"{reply.removed_instances} instance(s) removed from the registry"
        )
    elif action == "unrevoke":
        console.print(f"unrevoked {_revoked_subject(reply)}")
    elif action == "revocations":
        table = Table(title=f"{len(reply.revocations)} revocation(s) (revision {reply.revision})")
        for column in ("revoked", "reason", "by", "since"):
            table.add_column(column)
        for revocation in reply.revocations:
            table.add_row(
                _revoked_subject(revocation),
                revocation.reason or "-",
                revocation.revoked_by or "-",
                revocation.revoke_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
            )
        console.print(table)
    else:
        _print_policy(console, reply)


def _revoked_subject(revocation: registry_pb2.Revocation) -> str:
    if revocation.WhichOneof("subject") == "certificate_serial":
        return f"certificate {revocation.certificate_serial}"
    return str(revocation.spiffe_id)


def _print_policy(console: Console, policy: registry_pb2.RoutingPolicy) -> None:
    from rich.table import Table

    table = Table(title=f"routing of {policy.namespace}/{policy.name}")
    table.add_column("version")
    table.add_column("weight", justify="right")
    total = sum(policy.weights.values()) or 1
    for version, weight in sorted(policy.weights.items()):
        table.add_row(version, f"{weight} ({100 * weight / total:.0f}%)")
    console.print(table)
    if policy.HasField("canary"):
        canary = policy.canary
        console.print(
            f"  canary rollback above {canary.max_error_rate:.0%} errors "
            f"(at least {canary.min_requests} calls in {canary.window.ToNanoseconds() / 1e9:g}s)"
        )
    if policy.reason:
        console.print(f"  reason: {policy.reason}")
