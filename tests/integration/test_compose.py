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
    for name in ("postgres", "triton", "registry-1", "registry-2", "planner-1", "planner-2", "gateway", "migrate", "certs"):
        assert name in services
    assert sum(1 for name in services if name.startswith("agent-")) >= 6


def test_every_mesh_command_parses_with_the_cli(resolved_compose: dict) -> None:
    for name, service in resolved_compose["services"].items():
        if service.get("image") != "agentmesh:local" or "entrypoint" in service:
            continue
        argv = [str(part) for part in service["command"]]
        args = build_parser(argv).parse_args(argv)  # exits (fails the test) on an unknown flag
        assert args.command == argv[0], name


def test_every_service_has_a_health_check(resolved_compose: dict) -> None:
    for name, service in resolved_compose["services"].items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"


def test_registry_and_planner_run_two_replicas_and_clients_know_both(resolved_compose: dict) -> None:
    services = resolved_compose["services"]
    for role, port in (("registry", 7400), ("planner", 7401)):
        replicas = sorted(name for name in services if name.startswith(f"{role}-"))
        assert len(replicas) == 2, role
        for service in services.values():
            address = service.get("environment", {}).get(f"AGENTMESH_{role.upper()}_ADDRESS")
            if address is not None:
                assert address.split(",") == [f"{r}:{port}" for r in replicas]


def test_every_mesh_service_gets_a_certificate_the_certs_job_issues(resolved_compose: dict) -> None:
    """Each long-running mesh process points at its own certificate, and the one-shot job issues exactly it."""
    import re

    from agentmesh.security import workload_paths

    services = resolved_compose["services"]
    script = " ".join(services["certs"]["command"])
    issued = set()
    for kind, name in re.findall(r"--kind (\w+) --name (\S+)", script):
        if "$" in name:  # the agents' loop: expand it
            loop = re.search(r"for a in ([^;]+); do", script)
            assert loop, script
            issued |= {(kind, re.sub(r"\$+a", a, name)) for a in loop.group(1).split()}
        else:
            issued.add((kind, name))
    for service_name, service in services.items():
        if service.get("image") != "agentmesh:local" or service.get("restart") == "no":
            continue
        env = service["environment"]
        cert = Path(env["AGENTMESH_CERT_FILE"])
        expected = {workload_paths(cert.parent, kind, name) for kind, name in issued}
        assert (cert, Path(env["AGENTMESH_KEY_FILE"])) in expected, service_name
        probe = service["healthcheck"]["test"]
        kind, _, name = probe[probe.index("--as") + 1].partition("/")
        assert workload_paths(cert.parent, kind, name)[0] == cert, service_name
    assert "service_completed_successfully" in str(services["registry-1"]["depends_on"])


def test_gpu_override_reserves_a_gpu_for_triton() -> None:
    docker_compose = shutil.which("docker-compose")
    assert docker_compose
    gpu = COMPOSE.with_name("docker-compose.gpu.yml")
    result = subprocess.run(
        [docker_compose, "-f", str(COMPOSE), "-f", str(gpu), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    triton = yaml.safe_load(result.stdout)["services"]["triton"]
    (device,) = triton["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
