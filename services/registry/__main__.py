"""``python -m agentmesh.services.registry``: run the registry until SIGTERM."""

from agentmesh.cli import main

raise SystemExit(main(["registry"]))
