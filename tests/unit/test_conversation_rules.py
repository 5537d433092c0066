"""Conversation rules that need no database: which versions make up a version, page tokens, bounds, answers."""

from __future__ import annotations

import pytest

from agentmesh._errors import InvalidArgumentError
from agentmesh.services.planner.conversation_rules import Caller, check_labels
from agentmesh.services.planner.conversation_tasks import answer_of
from agentmesh.services.planner.conversations_store import TaskOutcome, visible_versions


def test_a_version_is_its_chain_of_parents() -> None:
    # 1, 2, 3 written; 4 rolls back to 1; 5 follows 4; 6 rolls back to 3 (a version that was hidden).
    parents = {1: 0, 2: 1, 3: 2, 4: 1, 5: 4, 6: 3}
    assert visible_versions(parents, 3) == {1, 2, 3}
    assert visible_versions(parents, 5) == {1, 4, 5}
    assert visible_versions(parents, 6) == {1, 2, 3, 6}
    assert visible_versions(parents, 0) == set()


def test_labels_are_bounded_and_named_plainly() -> None:
    assert check_labels({"team": "billing", "app.kubernetes.io/name": "x"}) == {
        "team": "billing",
        "app.kubernetes.io/name": "x",
    }
    with pytest.raises(InvalidArgumentError) as bad:
        check_labels({"-bad": "x"})
    assert bad.value.field == "labels.-bad"
    with pytest.raises(InvalidArgumentError, match="at most 32 labels"):
        check_labels({f"k{i}": "v" for i in range(33)})
    with pytest.raises(InvalidArgumentError, match="longer than 256"):
        check_labels({"k": "v" * 257})


def test_end_users_request_ids_never_meet() -> None:
    alice, bob = Caller("gw", "alice", "acme"), Caller("gw", "bob", "acme")
    assert alice.request_key("r1") != bob.request_key("r1")
    assert alice.request_key("r1") == Caller("gw", "alice", "acme").request_key("r1")
    assert Caller("spiffe://td/client/ops").request_key("r1") == "r1"
    assert alice.request_key(None) is None


def test_a_task_answers_with_its_reply_or_reports_its_failure() -> None:
    done = TaskOutcome("t1", "c1", "SUCCEEDED", {"reply": "Refund issued", "amount": 42}, "")
    assert answer_of(done) == ("AGENT", "Refund issued", {"reply": "Refund issued", "amount": 42})
    bare = TaskOutcome("t2", "c1", "SUCCEEDED", {"amount": 42}, "")
    assert answer_of(bare) == ("AGENT", '{"amount": 42}', {"amount": 42})
    failed = TaskOutcome("t3", "c1", "FAILED", None, "crm unavailable")
    assert answer_of(failed) == ("SYSTEM", "task t3 failed: crm unavailable", {"task_id": "t3", "state": "FAILED"})
    cancelled = TaskOutcome("t4", "c1", "CANCELLED", None, "")
    assert answer_of(cancelled)[1] == "task t4 was cancelled"
