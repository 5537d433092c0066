"""``python -m agentmesh.services.gateway``: run the gateway until SIGTERM."""

from agentmesh.cli import main

raise SystemExit(main(["gateway"]))
