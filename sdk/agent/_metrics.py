"""Prometheus metrics of agent skills (created once per process in the default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from agentmesh.telemetry._metrics import LATENCY_BUCKETS

# Skills span a cached lookup (sub-millisecond) to a generative model call (up to a minute).
SKILL_BUCKETS = (*LATENCY_BUCKETS, 60.0)

SKILL_LATENCY = Histogram(
    "agentmesh_agent_skill_duration_seconds",
    "Time a skill run took, by agent, skill and outcome (OK or a gRPC status code name).",
    ("agent", "skill", "outcome"),
    buckets=SKILL_BUCKETS,
)
SKILL_REPLAYS = Counter(
    "agentmesh_agent_skill_replays_total",
    "Invocations answered from the idempotency cache without running the skill.",
    ("agent", "skill"),
)
SKILL_IN_FLIGHT = Gauge(
    "agentmesh_agent_in_flight",
    "Skill invocations being served right now.",
    ("agent",),
)
