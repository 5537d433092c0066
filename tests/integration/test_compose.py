"""deploy/compose is valid for docker compose, and every mesh command in it is one our CLI accepts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from agentmesh.cli import build_parser

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "compose" / "docker-compose.yml"


@pytest.fixture(scope="module")
def resolved_compose() -> dict:
    docker_compose = shutil.which("docker-compose")
    assert docker_compose, "docker-compose is missing: `make system-deps` installs Debian's package"
    result = subprocess.run(
        [docker_compose, "-f", str(COMPOSE), "config"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_file_is_valid_and_has_the_whole_mesh(resolved_compose: dict) -> None:
    services = resolved_compose["services"]
    for name in ("postgres", "triton", "registry", "planner", "gateway", "migrate", "certs"):
        assert name in services
    assert sum(1 for name in services if name.startswith("agent-")) >= 6


def test_every_mesh_command_parses_with_the_cli(resolved_compose: dict) -> None:
    for name, service in resolved_compose["services"].items():
        if service.get("image") != "agentmesh:local" or "entrypoint" in service:
            continue
        argv = [str(part) for part in service["command"]]
        args = build_parser(argv).parse_args(argv)  # exits (fails the test) on an unknown flag
        assert args.command == argv[0], name
