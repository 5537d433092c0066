"""The sample call ``agentmesh up`` prints is one the shipped mesh answers: it names a playbook, its input fits
that playbook's schema, and every step's input can be made from it (the CRM step needs an email)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from agentmesh._settings import Settings
from agentmesh.cli import build_parser
from agentmesh.cli._token import how_to_call
from agentmesh.services.gateway.validation import validate_input
from agentmesh.services.planner.planning import Planner
from agentmesh.services.planner.playbooks import PlaybookLibrary

pytestmark = pytest.mark.asyncio


async def test_the_printed_submit_is_planned_with_a_playbook_whose_schema_its_input_fits(tmp_path: Path) -> None:
    lines = how_to_call(Settings(home=tmp_path, gateway_port=17443)).splitlines()
    argv = shlex.split(lines[-1].replace('"$TOKEN"', "TOKEN"))
    assert argv[0] == "agentmesh"
    args = build_parser(argv[1:]).parse_args(argv[1:])
    assert args.command == "submit" and args.token == "TOKEN" and args.gateway == "localhost:17443"
    task_input = json.loads(args.input)

    library = PlaybookLibrary.shipped()
    outcome = await Planner(library, dispatcher=None).plan(args.goal, task_input, args.playbook)
    assert {step["id"] for step in outcome.plan["steps"]} >= {"triage", "crm", "responder_1"}
    validate_input(library.get(args.playbook).source["input_schema"], task_input, what="the sample")
    assert task_input["ticket"]["email"] and task_input["ticket"]["text"]  # crm: an email; triage: the text
