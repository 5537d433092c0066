"""Version choice by weight (sticky per key) and the canary rollback rule."""

from __future__ import annotations

from agentmesh.services.registry.routing import (
    CanaryRule,
    OutcomeWindows,
    RoutePolicy,
    choose_version,
    rollback_reason,
)


def test_without_a_policy_the_highest_version_wins() -> None:
    assert choose_version(None, ["1.9.0", "1.10.0", "1.2.0"], "k")[0] == "1.10.0"


def test_weights_split_traffic_and_the_same_key_sticks() -> None:
    policy = RoutePolicy("support", "triage", {"1.0.0": 90, "1.1.0": 10})
    picks = [choose_version(policy, ["1.0.0", "1.1.0"], f"task-{i}")[0] for i in range(2000)]
    assert 0.07 < picks.count("1.1.0") / len(picks) < 0.13
    assert all(choose_version(policy, ["1.0.0", "1.1.0"], f"task-{i}")[0] == picks[i] for i in range(200))


def test_unweighted_or_missing_versions_fall_back_to_the_highest_live_one() -> None:
    policy = RoutePolicy("support", "triage", {"2.0.0": 100})
    version, reason = choose_version(policy, ["1.0.0", "1.1.0"], "k")
    assert version == "1.1.0" and "no weighted version live" in reason


def test_a_canary_is_rolled_back_only_past_the_threshold_with_enough_calls() -> None:
    rule = CanaryRule(max_error_rate=0.2, min_requests=10, window=60)
    policy = RoutePolicy("support", "triage", {"1.0.0": 90, "1.1.0": 10}, canary=rule)
    assert policy.baseline == "1.0.0" and policy.canaries() == ["1.1.0"]
    assert rollback_reason(policy, "1.1.0", 5, 9) is None  # too few calls to judge
    assert rollback_reason(policy, "1.1.0", 2, 10) is None  # 0.2 is not above 0.2
    assert "error rate 0.30 > 0.20" in (rollback_reason(policy, "1.1.0", 3, 10) or "")
    assert rollback_reason(policy, "1.0.0", 10, 10) is None  # the baseline is never rolled back


def test_outcome_windows_slide() -> None:
    now = [0.0]
    windows = OutcomeWindows(clock=lambda: now[0])
    key = ("support", "triage", "1.1.0")
    windows.record(key, False, 10)
    now[0] = 5
    assert windows.record(key, True, 10) == (1, 2)
    now[0] = 12
    assert windows.record(key, True, 10) == (0, 2)
