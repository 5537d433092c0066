"""quality-check agent: reviews draft replies before they reach a customer."""

from __future__ import annotations

from agentmesh.agents.quality_check._checks import Verdict, verdict
from agentmesh.agents.quality_check.agent import CheckInput, CheckOutput, QualityCheckAgent

__all__ = [
    "CheckInput",
    "CheckOutput",
    "QualityCheckAgent",
    "Verdict",
    "verdict",
]
