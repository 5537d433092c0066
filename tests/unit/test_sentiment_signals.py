"""The sentiment model's signals and head (sdk/inference/models/sentiment/1/signals.py), without Triton:
the cues a lexicon misses are read in four languages, and the head served is the head fitted."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

FOLDER = Path(__file__).resolve().parents[2] / "sdk" / "inference" / "models" / "sentiment" / "1"


@pytest.fixture(scope="module")
def signals() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sentiment_signals", FOLDER / "signals.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _no_embedding(texts: list[str]) -> np.ndarray:
    raise AssertionError("lexical signals need no embedding")


def _cues(signals: ModuleType, text: str) -> dict[str, float]:
    values = signals.Signals(FOLDER, _no_embedding).lexical(text)
    return {name: v for name, v in zip(signals.SIGNALS, values, strict=False) if name.startswith("cue_")}


@pytest.mark.parametrize(
    ("text", "cue"),
    [
        ("My order is still missing after three weeks.", "cue_waited"),
        ("Llevo dos semanas esperando el paquete.", "cue_waited"),
        ("Ich warte seit zwei Wochen auf meine Bestellung.", "cue_waited"),
        ("J'attends ma commande depuis trois semaines.", "cue_waited"),
        ("The app crashes, so I can't do my job today.", "cue_blocked"),
        ("Seit einer Stunde können wir nicht arbeiten.", "cue_blocked"),
        ("La aplicación se cierra y no puedo trabajar.", "cue_blocked"),
        ("This is the third time I write and nobody answers.", "cue_repeated"),
        ("J'ai écrit plusieurs fois, personne ne répond.", "cue_repeated"),
        ("Someone placed orders I never placed, I think I was hacked.", "cue_wronged"),
        ("Muchas gracias, todo perfecto.", "cue_thanks"),
        ("I would like to change my delivery address.", "cue_request"),
    ],
)
def test_cues_a_lexicon_misses_are_read_in_four_languages(signals: ModuleType, text: str, cue: str) -> None:
    cues = _cues(signals, text)
    assert cues[cue] >= 1, cues


def test_a_calm_question_carries_no_frustration_cue(signals: ModuleType) -> None:
    cues = _cues(signals, "How do I export our orders to a CSV file?")
    frustration = ("cue_waited", "cue_repeated", "cue_blocked", "cue_wronged", "cue_damaged", "cue_upset")
    assert all(cues[c] == 0 for c in frustration), cues
    assert cues["cue_request"] >= 1


def test_the_head_learns_separable_classes_and_survives_a_round_trip(
    signals: ModuleType, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[-2.0, 0.0], [0.0, 0.0], [2.0, 0.0]])
    y = np.repeat(np.arange(3), 30)
    x = centres[y] + rng.normal(0, 0.3, (90, 2))
    head = signals.Head.fit(x, y, l2=0.01)
    assert np.mean(head.probabilities(x).argmax(axis=1) == y) > 0.95
    head.save(tmp_path / "head.npz")
    loaded = signals.Head.load(tmp_path / "head.npz")
    np.testing.assert_allclose(loaded.probabilities(x), head.probabilities(x), atol=1e-6)
    probabilities = loaded.probabilities(np.array([[-2.0, 0.0], [2.0, 0.0]]))
    assert probabilities.shape == (2, 3) and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert probabilities[0].argmax() == 0 and probabilities[1].argmax() == 2


def test_the_shipped_head_reads_the_signals_the_model_computes(signals: ModuleType) -> None:
    head = signals.Head.load(FOLDER / "head.npz")
    assert head.weights.shape == (len(signals.SIGNALS), len(signals.CLASSES))
    assert head.mean.shape == head.scale.shape == (len(signals.SIGNALS),)


def _signals_of(signals: ModuleType, text: str) -> dict[str, float]:
    values = signals.Signals(FOLDER, _no_embedding).lexical(text)
    return dict(zip(signals.SIGNALS, values, strict=False))


def test_the_served_config_declares_as_many_features_as_the_signals(signals: ModuleType) -> None:
    config = (FOLDER.parent / "config.pbtxt").read_text()
    features = config[config.index('name: "FEATURES"') :]
    dims = int(features[features.index("dims: [") + len("dims: [") : features.index("]")])
    assert dims == len(signals.SIGNALS)


def test_greetings_sign_offs_and_background_do_not_move_the_lexical_signals(signals: ModuleType) -> None:
    # Before session 8 a whole-text VADER score and the text's length were signals: a long polite email read
    # as strongly negative. Courtesy formulae are taken out and sentences are scored one by one.
    short = "I was charged twice for order NW-51120 and nobody has answered my two emails."
    polite = (
        f"Good afternoon,\n\nI hope this finds you well.\n\n{short}\n\nThank you.\n\n"
        "Kind regards,\nAgnes Moreau"
    )
    assert _signals_of(signals, polite) == _signals_of(signals, short)
    question = "Can I change the delivery day for order NW-41822?"
    background = (
        "Hello, I have ordered from you for years and I am usually at home. Next week I will be away at a "
        f"wedding and my neighbour is away too. {question} Many thanks and have a good day."
    )
    calm, long = _signals_of(signals, question), _signals_of(signals, background)
    assert {k: v for k, v in long.items() if k.startswith("cue_") and v} == {"cue_request": 1.0}
    assert long["vader_min_sentence"] >= calm["vader_min_sentence"] - 0.05


@pytest.mark.parametrize(
    "text",
    [
        "Great job guys. Locked out of my account again.",
        "Thanks a lot for charging me twice.",
        "Oh wonderful, the parcel is late again.",
        "Na toll. Zum dritten Mal keine Antwort.",
    ],
)
def test_praise_beside_trouble_is_ironic_and_not_thanks(signals: ModuleType, text: str) -> None:
    read = _signals_of(signals, text)
    assert read["ironic"] >= 1 and read["cue_thanks"] == 0, read
    assert read["vader_max_sentence"] <= 0.0, read


@pytest.mark.parametrize(
    "text",
    [
        "Great, that fixed it. Thanks a lot!",
        "Thank you so much, the replacement arrived and works perfectly.",
        "Genial, ya funciona todo. Mil gracias.",
    ],
)
def test_sincere_praise_is_not_ironic(signals: ModuleType, text: str) -> None:
    read = _signals_of(signals, text)
    assert read["ironic"] == 0 and read["cue_thanks"] >= 1, read


@pytest.mark.parametrize(
    "text", ["dashboard 503", "app wont open since the update", "le suivi dit livré mais rien reçu"]
)
def test_a_fault_said_the_short_way_is_a_cue(signals: ModuleType, text: str) -> None:
    assert _signals_of(signals, text)["cue_fault"] >= 1


def test_more_exclamation_or_question_marks_are_insistence_not_more_of_a_feeling(signals: ModuleType) -> None:
    # Before session 8 "late!!!" counted three exclamations, and the head (whose dev positives end with "!")
    # read "This is absolutely UNACCEPTABLE, third time my order is late!!!" as positive.
    once = _signals_of(signals, "Third time my order is late!")
    thrice = _signals_of(signals, "Third time my order is late!!!")
    changed = {k for k in once if once[k] != thrice[k] and not k.startswith("vader")}
    assert changed == {"cue_insist"} and thrice["cue_insist"] == 1


# The known gaps of the shipped model that the session-9 candidate closed (its signals are in
# /work/notes/session9_sentiment_candidateA; not shipped: 58/65 on the held-out split, below the 59/65 gate).
# Strict: the day a shipped model closes them, these must pass and the marks go.
_SESSION9_GAP = pytest.mark.xfail(
    strict=True, reason="known gap of the shipped sentiment signals (session-9 candidate not shipped)"
)


@_SESSION9_GAP
@pytest.mark.parametrize(
    "text",
    [
        # Session 9: praise that names what went well stays sincere beside a request or a small complaint
        # (before, "arrived two days early" counted as time waited and the praise beside it as irony).
        "The sofa arrived two days early and the drivers were brilliant. Could someone take the old boxes?",
        "Love the new dashboard, it's much faster! Tiny bug though: the search box is cut off on my laptop.",
        "It's been great these past three years, thank you. Please close my membership as I am moving.",
    ],
)
def test_praise_that_names_what_went_well_is_sincere_beside_a_request(signals: ModuleType, text: str) -> None:
    read = _signals_of(signals, text)
    assert read["ironic"] == 0 and read["cue_thanks"] >= 1, read


@_SESSION9_GAP
@pytest.mark.parametrize(
    "text",
    [
        "Wow, lovely wrapping as usual: the vase was in three pieces.",
        "Fantastic, the kettle died on day two. Exactly what I paid for.",
        "Super, the login code expires before the text message even arrives.",
        "Thanks so much for delivering to my old flat even though I updated my address. Love that for me.",
    ],
)
def test_ironic_praise_of_a_breakage_or_a_fault_is_read_as_irony(signals: ModuleType, text: str) -> None:
    read = _signals_of(signals, text)
    assert read["ironic"] >= 1 and read["cue_thanks"] == 0, read


@_SESSION9_GAP
def test_german_articles_are_not_read_as_english_words(signals: ModuleType) -> None:
    # VADER's English lexicon scores "die" and "war" -2.9: "die Lieferung war pünktlich" read as angry.
    read = _signals_of(signals, "Vielen Dank, die Lieferung war pünktlich und alles war perfekt verpackt.")
    assert read["vader_min_sentence"] >= 0.0 and read["cue_thanks"] >= 1, read
    assert _signals_of(signals, "The battery will die soon, I think.")["vader_min_sentence"] < 0


@_SESSION9_GAP
def test_a_french_person_is_not_nobody(signals: ModuleType) -> None:
    thanks = _signals_of(signals, "Je tiens à remercier la personne qui m'a aidé hier, tout fonctionne.")
    assert thanks["cue_repeated"] == 0 and thanks["cue_thanks"] >= 1, thanks
    assert _signals_of(signals, "J'ai écrit trois fois et personne ne me répond.")["cue_repeated"] >= 1
