"""Example support tickets shipped with the agents (``tickets.json``), each with its expected triage, and
the labelled evaluation set (``eval/dev.jsonl``, ``eval/heldout.jsonl``, and ``eval/probe.jsonl``: fresh tickets
written after the held-out figures, never calibrated on).

Used by the tests, the demo, the benchmarks and anyone trying the agents: ``load_tickets()``, ``load_eval()``.
"""

from __future__ import annotations

from agentmesh.agents.examples._eval import EVAL_DIR, EvalTicket, load_eval
from agentmesh.agents.examples._tickets import ExampleTicket, Expected, load_tickets

__all__ = [
    "EVAL_DIR",
    "EvalTicket",
    "ExampleTicket",
    "Expected",
    "load_eval",
    "load_tickets",
]
