"""``agentmesh agent run``: finding the agent class, --help, and a real process that drains on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import pytest
from google.protobuf import json_format

from agentmesh._channel import create_channel
from agentmesh._health import wait_until_serving
from agentmesh._settings import Settings
from agentmesh.cli import _agent, main
from agentmesh.v1 import agent_pb2, agent_pb2_grpc
from tests.fixtures.certs import IssueIdentity
from tests.integration.echo_agent import EchoAgent

ROOT = Path(__file__).resolve().parents[2]


def test_help_explains_how_to_name_an_agent(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["agent", "run", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for expected in ("MODULE:CLASS", "agentmesh.agents.triage", "--namespace", "--no-register", "DRAINING"):
        assert expected in text


def test_agent_classes_resolve_from_a_shipped_name_a_module_or_module_class(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _agent.resolve_agent_class("tests.integration.echo_agent:EchoAgent") is EchoAgent
    assert _agent.resolve_agent_class("tests.integration.echo_agent") is EchoAgent
    monkeypatch.setattr(_agent, "SHIPPED_AGENTS", "tests.integration")
    assert _agent.resolve_agent_class("echo_agent") is EchoAgent


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_agent", "no agent module 'agentmesh.agents.no_such_agent'"),
        ("tests.integration.echo_agent:EchoIn", "is not an Agent class"),
        ("tests.integration.test_agent_cli", "exactly one Agent class (found: none)"),
        ("tests.integration.echo_agent --namespace Bad/NS", "--namespace 'Bad/NS': Value error, 'Bad/NS' is not"),
    ],
)
def test_a_wrong_name_is_a_clear_error(spec: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", "run", *spec.split(), "--no-register"]) == 2
    assert message in capsys.readouterr().err


async def test_a_served_agent_answers_and_drains_on_sigterm(mesh_settings: Settings, issue_identity: IssueIdentity) -> None:
    issue_identity("agent", "cli-test/echo")  # --namespace cli-test: the identity follows the card
    issue_identity("service", "planner")
    port = free_port()
    env = {
        **os.environ,
        "AGENTMESH_HOME": str(mesh_settings.home),
        "AGENTMESH_TRUST_DOMAIN": mesh_settings.trust_domain,
        "AGENTMESH_LOG_FORMAT": "text",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentmesh.cli", "agent", "run", "tests.integration.echo_agent",
        "--port", str(port), "--no-register", "--namespace", "cli-test",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        # Connect only once it listens: a channel that failed early backs off for seconds before retrying.
        assert process.stdout is not None
        async with asyncio.timeout(20):
            while b"serving at" not in (line := await process.stdout.readline()):
                assert line, "the agent exited before serving"
        async with create_channel(f"127.0.0.1:{port}", mesh_settings, kind="service", name="planner") as channel:
            await wait_until_serving(channel, "agentmesh.v1.AgentService", within=20)
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            assert (await stub.Describe(agent_pb2.DescribeRequest())).card.namespace == "cli-test"
            request = agent_pb2.InvokeRequest(skill="echo")
            request.input.update({"text": "hi"})
            response = await stub.Invoke(request)
            assert json_format.MessageToDict(response.output)["text"] == "hi"
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            output, _ = await process.communicate()
        assert process.returncode == 0, output.decode()
        assert b"draining" in output, output.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
