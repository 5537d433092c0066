"""triage agent: a support ticket's intent and priority."""

from __future__ import annotations

from agentmesh.agents.triage._rules import INTENTS, PRIORITIES, assess_priority, intent_scores
from agentmesh.agents.triage.agent import TriageAgent, TriageOutput

__all__ = ["INTENTS", "PRIORITIES", "TriageAgent", "TriageOutput", "assess_priority", "intent_scores"]
