"""``python -m agentmesh.services.planner``: run the planner until SIGTERM."""

from agentmesh.cli import main

raise SystemExit(main(["planner"]))
