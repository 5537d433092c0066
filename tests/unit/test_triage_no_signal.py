"""Triage's "nothing to go on" rule: which tickets carry no usable signal, and what triage answers for them."""

from __future__ import annotations

import numpy as np
import pytest

from agentmesh.agents.triage import INTENTS
from agentmesh.agents.triage._rules import (
    GUESS_FLOOR,
    IntentScores,
    informative_words,
    no_signal,
    nothing_to_go_on,
)

NO_CUE = np.zeros(len(INTENTS))
ONE_CUE = np.array([0.1 if i == "refund" else 0.0 for i in INTENTS])


@pytest.mark.parametrize(
    "text",
    [
        "😡😡😡",
        "123456 7890",
        "?!?!",
        "!!!!!!!!",
        "我的订单还没到",
        "注文した商品がまだ届きません",
        "สินค้ายังไม่มาถึง",
        "لم يصل طلبي بعد",
        "Здравствуйте, мой заказ не пришел",
        "hello",
        "Hi, I need help",
        "Hallo, bitte",
        "Bonjour",
        "hola",
        "ok",
    ],
)
def test_symbols_digits_uncovered_scripts_and_greetings_have_no_informative_word(text: str) -> None:
    assert informative_words(text) == []
    # Whatever the model's nearest prototype, however confident: there is nothing to go on.
    assert no_signal(text, IntentScores("privacy", 0.9, {}), NO_CUE) is not None


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("refund please", ["refund"]),
        ("app crashes", ["app", "crashes"]),
        ("Rückerstattung!!", ["ruckerstattung"]),
        ("我的 iPhone 坏了", ["iphone"]),
        ("Where is my order NW-10492?", ["where", "order", "nw"]),
    ],
)
def test_informative_words_are_latin_script_words_that_could_name_a_topic(
    text: str, words: list[str]
) -> None:
    assert informative_words(text) == words


def test_a_few_words_are_too_little_only_without_a_cue_and_without_a_confident_match() -> None:
    unsure = IntentScores("refund", GUESS_FLOOR - 0.01, {})
    reason = no_signal("asdf qwer", unsure, NO_CUE)
    assert reason is not None and "too little to go on" in reason
    assert no_signal("refund please", unsure, ONE_CUE) is None  # a keyword cue is a signal
    assert no_signal("app crashes", IntentScores("technical", 0.99, {}), NO_CUE) is None
    assert no_signal("my blender is making a strange noise", unsure, NO_CUE) is None  # enough words


def test_nothing_to_go_on_is_the_catch_all_intent_at_the_confidence_of_no_evidence() -> None:
    result = nothing_to_go_on()
    assert result.intent == "other"
    assert result.confidence == pytest.approx(1 / len(INTENTS), abs=1e-4) and result.confidence < 0.1
    assert set(result.scores) == set(INTENTS) and sum(result.scores.values()) == pytest.approx(1.0, abs=1e-3)
