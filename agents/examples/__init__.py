"""Example support tickets shipped with the agents (``tickets.json``), each with its expected triage.

Used by the tests, the demo and anyone trying the agents: ``load_tickets()``.
"""

from __future__ import annotations

from agentmesh.agents.examples._tickets import ExampleTicket, Expected, load_tickets

__all__ = [
    "ExampleTicket",
    "Expected",
    "load_tickets",
]
