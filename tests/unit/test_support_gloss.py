"""The English gloss the support agents add to Spanish, German and French text before embedding it."""

from __future__ import annotations

import time

import pytest

from agentmesh.agents._support._gloss import Glossary, for_embedding, for_matching, language_of
from agentmesh.agents._support._spelling import repair_typos


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("Hace tres semanas que hice el pedido y sigue sin llegar.", "es"),
        ("Meine Bestellung ist seit drei Wochen unterwegs und ich habe nichts gehört.", "de"),
        ("Je souhaite fermer mon compte. Pouvez-vous m'indiquer la marche à suivre ?", "fr"),
        ("I was charged twice for my subscription and I want the second charge back.", "en"),
        ("My order from the shop in Madrid never arrived", "en"),  # place names do not make it Spanish
        ("Bestellung", ""),  # too short to tell
    ],
)
def test_the_language_is_told_by_function_words(text: str, language: str) -> None:
    assert language_of(text) == language


def test_foreign_tickets_carry_the_english_sense_of_their_support_words() -> None:
    assert for_embedding("Hace tres semanas que hice el pedido y sigue sin llegar.").endswith(
        "(weeks order still has not arrived)"
    )
    glossed = for_embedding("Können wir einen weiteren Benutzer zu unserem Team-Tarif hinzufügen?")
    assert glossed.startswith("Können wir") and "(user team plan add)" in glossed
    assert "close my account" in for_embedding("Je souhaite fermer mon compte, s'il vous plaît.")
    assert for_embedding("Écran blanc") == "Écran blanc (blank screen)"  # a subject line: foreign words only


@pytest.mark.parametrize(
    "text",
    [
        "I was charged twice for my subscription",
        "Cancel order",  # "cancel*" is also a Spanish stem: an English subject is left alone
        "App update error",
        "The app crashes when I export to CSV",
        "",
    ],
)
def test_english_text_is_embedded_as_it_is(text: str) -> None:
    assert for_embedding(text) == text


def test_longer_phrases_win_and_each_sense_is_given_once() -> None:
    glossary = Glossary({"pedido*": "order", "sigue sin": "still not", "sigue sin llegar": "still has not arrived"})
    assert glossary.gloss("El pedido sigue sin llegar, el pedido!") == "order still has not arrived"


def test_a_hostile_ticket_is_glossed_in_linear_time() -> None:
    hostile = ("pedidoooo sigue sin sin " * 20_000) + "x" * 200_000
    started = time.perf_counter()
    for_embedding("Hola, " + hostile)
    assert time.perf_counter() - started < 2.0


def test_typos_in_english_support_words_are_repaired_and_correct_words_left_alone() -> None:
    assert repair_typos("my pacakge never arived and the traking says deliverd") == (
        "my package never arrived and the tracking says delivered"
    )
    assert for_matching("wher can i downlod my invocie") == "wher can i download my invoice"
    # Known words, inflections of known words, other first letters, names and short words stay as written.
    for text in ("the mailing list", "the mug was chipped", "two logins", "Marta helped", "thx"):
        assert repair_typos(text) == text
    # Spanish, German and French text is not "repaired" into English.
    assert (
        for_matching("no me llega el pedido desde hace semanas") == "no me llega el pedido desde hace semanas"
    )



def test_a_hostile_ticket_is_repaired_in_linear_time() -> None:
    letters = str.maketrans("0123456789", "klmnopqrst")
    hostile = " ".join("abcdefghij"[i % 7 :] + str(i).translate(letters) for i in range(3000))
    started = time.perf_counter()
    for_matching(hostile[:20_000])
    for_embedding(hostile[:20_000])
    assert time.perf_counter() - started < 2.0
