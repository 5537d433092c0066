"""KeySlots: at most N holders per key, slots given back, empty keys forgotten."""

from __future__ import annotations

from agentmesh._key_slots import KeySlots


def test_a_key_holds_at_most_its_limit_and_gets_a_slot_again_once_one_is_given_back() -> None:
    slots: KeySlots[str] = KeySlots(2)
    assert slots.take("alice") and slots.take("alice")
    assert not slots.take("alice") and slots.held("alice") == 2  # a refused take takes nothing
    assert slots.take("bob")  # another key has its own slots
    slots.give_back("alice")
    assert slots.take("alice")
    for _ in range(2):
        slots.give_back("alice")
    slots.give_back("bob")
    assert slots.held("alice") == slots.held("bob") == 0 and not slots._held  # nothing left behind
