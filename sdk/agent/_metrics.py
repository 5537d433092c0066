"""Prometheus metrics of agent skills (created once per process in the default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Skills span a cached lookup (sub-millisecond) to a generative model call (tens of seconds).
SKILL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

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
