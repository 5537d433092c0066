"""Triage rules that need no model: combining similarities into intent scores, and priority from cues."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt
import yaml

from agentmesh.agents._support._keywords import PhraseMatcher, fold
from agentmesh.agents.kb_search._kb import ARTICLES_FILE, load_articles

__all__ = [
    "ARTICLE_INTENTS_FILE",
    "CATCH_ALL",
    "CUES_FILE",
    "CUE_WEIGHT",
    "FEW_WORDS",
    "GUESS_FLOOR",
    "INTENTS",
    "PRIORITIES",
    "PROTOTYPES_FILE",
    "Intent",
    "IntentScores",
    "asks_something",
    "assess_priority",
    "cue_bonus",
    "informative_words",
    "intent_scores",
    "load_cues",
    "load_prototypes",
    "no_signal",
    "nothing_to_go_on",
]

PROTOTYPES_FILE = Path(__file__).with_name("prototypes.yaml")
CUES_FILE = Path(__file__).with_name("cues.yaml")
# Which intent each knowledge-base article answers: its keywords are cues of that intent too.
ARTICLE_INTENTS_FILE = Path(__file__).with_name("article_intents.yaml")
# The first seven are the original intents; the others cover the rest of the knowledge base's topics.
Intent = Literal[
    "refund",
    "billing",
    "shipping",
    "technical",
    "account",
    "cancellation",
    "other",
    "privacy",
    "plans",
    "data",
    "outage",
    "integrations",
]
INTENTS: tuple[str, ...] = get_args(Intent)
# Added to an intent's combined similarity per keyword cue of it in the ticket (at most two count).
# Calibrated on the dev split of the evaluation set only.
CUE_WEIGHT = 0.1
PRIORITIES = ("low", "normal", "high", "urgent")
# Softmax temperature over cosine similarities: 0.05 turns a 0.1 similarity gap into ~7x the odds.
_TEMPERATURE = 0.05
# Base priority per intent: questions and praise ("other") can wait; money and access problems cannot.
_BASE_PRIORITY = {"other": 0}
_URGENCY = re.compile(
    r"\b(urgent(ly)?|asap|immediately|right (now|away)|emergency|as soon as possible|today|critical)\b", re.I
)
_SECURITY = re.compile(
    r"\b(hack(ed|er)?|fraud(ulent)?|unauthori[sz]ed|stolen|phishing|someone (else )?(is )?using my account|"
    r"never placed|did not place|didn't place)\b",
    re.I,
)
_MONEY = re.compile(
    r"\b(charged (me )?twice|double[- ]?charged?|duplicate (charge|payment)|two (payments|charges)|overcharged)\b",
    re.I,
)
# Thanks (folded text): a note that thanks and asks nothing is "other" (feedback), whatever it thanks for; in a
# message that asks something, thanks is a courtesy and says nothing about the topic.
_THANKS = re.compile(
    r"(?<!\w)(thank(s|ful)?|grateful|cheers|gracias|agradec\w*|dank|danke|dankeschon|bedank\w*|merci|remerci\w*)(?!\w)"
)
# Asking for something (folded text): a question, a request formula, or courtesy that goes with a request.
_REQUEST = re.compile(
    r"\?|(?<!\w)(please|pls|plz|bitte|in advance|d'avance|im voraus|de antemano|if you could|if someone could|"
    r"if anyone could|grateful if|appreciate it if|would appreciate|i was wondering|wondering if|not sure whether|"
    r"not sure how|could you|can you|would you|will you|i want|i'd like|i would like|i need|how do i|how can i|"
    r"let me know|por favor|puede|pueden|podeis|podrian|quiero|necesito|konnen sie|konnten sie|konnt ihr|"
    r"ich mochte|ich will|ich brauche|pouvez|pourriez|s'il vous plait|svp|merci de|je voudrais|je veux|"
    r"je souhaite)(?!\w)"
)
# A request formula whose object is thanks ("please pass my thanks on", "ich möchte mich bedanken") asks nothing.
_THANKS_WITHIN_WORDS = 4
# Sentiment at or below this (model score in [-1, 1]) means a clearly upset customer.
ANGRY_BELOW = -0.5
# The catch-all intent: what triage answers when a ticket gives it nothing to go on.
CATCH_ALL = "other"
# Words that say nothing about a ticket's topic (folded; en/es/de/fr): greetings, yes/no, "help", "test",
# function words. A ticket of these alone ("hello", "Hi, I need help") has no topic to find.
_FILLER = frozenset(
    "hi hello hey dear there good morning afternoon evening day ok okay yes yeah yep no nope please pls plz "
    "help need test testing question problem issue something anything hallo guten tag morgen abend ja nein "
    "hilfe frage bitte hola buenos buenas dias tardes noches si ayuda pregunta bonjour bonsoir salut oui non "
    "aide svp probleme problema the and my is to of it for with have has not was this you what can "
    "would could be are we our your me in an on at do am just some any el la los las que de en por para con "
    "mi un una es lo se der die das und ich ist mit mein meine wir sie ein eine zu le les et je ne pas "
    "est mon ma une des du pour avec vous nous il".split()
)
# Runs of letters (folded text); a word triage can read is two or more letters of the Latin script.
_LETTERS = re.compile(r"[^\W\d_]{2,}")
# A ticket of at most this many informative words, with no keyword cue of any intent, whose best intent is
# below GUESS_FLOOR, is too thin to classify ("asdf qwer"): the model's nearest prototype is a guess. Real
# short tickets carry a cue ("refund please") or a confident match ("app crashes" 100%, "where is my order"
# 99%); so do the evaluation set's shortest ("do u ship to ireland" 92%, "status | dashboard 503": a cue).
FEW_WORDS = 2
GUESS_FLOOR = 0.5


@dataclass(frozen=True)
class IntentScores:
    """The chosen intent, its probability, and every intent's probability."""

    intent: str
    confidence: float
    scores: dict[str, float]


def load_prototypes(path: Path = PROTOTYPES_FILE) -> dict[str, list[str]]:
    """Prototype sentences per intent; every intent in :data:`INTENTS` must have some."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    missing = [intent for intent in INTENTS if not raw.get(intent)]
    if missing or set(raw) - set(INTENTS):
        raise ValueError(f"{path}: intents must be exactly {INTENTS} with prototypes (missing: {missing})")
    return {intent: [str(s) for s in raw[intent]] for intent in INTENTS}


def load_cues(
    path: Path = CUES_FILE,
    article_intents: Path | None = ARTICLE_INTENTS_FILE,
    articles: Path = ARTICLES_FILE,
) -> dict[str, PhraseMatcher]:
    """A phrase matcher per intent of :data:`INTENTS` (intents without cues match nothing): the intent's
    cues, plus the keywords of the knowledge-base articles that ``article_intents`` maps to it (None: none).
    """
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if set(raw) - set(INTENTS):
        raise ValueError(f"{path}: unknown intents {sorted(set(raw) - set(INTENTS))}")
    cues = {intent: [str(c) for c in raw.get(intent) or []] for intent in INTENTS}
    if article_intents is not None:
        mapping = yaml.safe_load(article_intents.read_text(encoding="utf-8")) or {}
        keywords = {a.article_id: a.keywords for a in load_articles(articles)}
        unknown = sorted({str(a) for ids in mapping.values() for a in ids or []} - set(keywords))
        if set(mapping) - set(INTENTS) or unknown:
            raise ValueError(
                f"{article_intents}: unknown intents or articles {sorted(set(mapping) - set(INTENTS))} {unknown}"
            )
        for intent, ids in mapping.items():
            cues[intent] += [k for article in ids or [] for k in keywords[str(article)]]
    return {intent: PhraseMatcher(cues[intent]) for intent in INTENTS}


def asks_something(text: str) -> bool:
    """Whether ``text`` asks for anything: a question mark or a request formula (in en/es/de/fr), unless
    the request is to pass on thanks.
    """
    folded = fold(text)
    for match in _REQUEST.finditer(folded):
        after = " ".join(folded[match.end() :].split()[:_THANKS_WITHIN_WORDS])
        if match.group(0) == "?" or _THANKS.search(after) is None:
            return True
    return False


def cue_bonus(
    text: str,
    cues: dict[str, PhraseMatcher],
    intents: tuple[str, ...] = INTENTS,
    sentiment: float | None = None,
) -> npt.NDArray[np.float64]:
    """Per intent: :data:`CUE_WEIGHT` for each of its cues found in ``text`` (at most two).

    Thanks is read by what else the message does. In a message that asks something, a thanks cue of
    "other" is a courtesy and does not count. A message that thanks, asks nothing and reads positive
    (``sentiment`` above 0; unknown: not applied) is a thank-you note: "other" gets the full two cues, so
    that what it thanks for (a delivery, a refund, an export) does not make it that topic's ticket.
    """
    asks = asks_something(text)
    found = {i: cues[i].find(text) for i in intents}
    if asks and "other" in found:
        found["other"] = [c for c in found["other"] if _THANKS.search(c) is None]
    bonus = {i: CUE_WEIGHT * min(2, len(found[i])) for i in intents}
    if (
        "other" in bonus
        and not asks
        and sentiment is not None
        and sentiment > 0
        and _THANKS.search(fold(text))
    ):
        bonus["other"] += 2 * CUE_WEIGHT
    return np.array([bonus[i] for i in intents], dtype=np.float64)


def intent_scores(
    similarities: npt.NDArray[np.floating[Any]],
    owners: npt.NDArray[np.int_],
    intents: tuple[str, ...] = INTENTS,
    bonus: npt.NDArray[np.floating[Any]] | None = None,
) -> IntentScores:
    """Intent probabilities from cosine similarities of the ticket's segments to the prototypes.

    ``similarities`` has one row per segment: row 0 is the whole ticket, the others its subject and
    sentences; ``owners[j]`` is the intent index of prototype ``j``. A label's similarity per segment is its
    closest prototype's; the ticket's is half the whole-ticket value and half the mean over the segments,
    so one sentence about an order in a thank-you note does not outvote the rest. ``bonus`` (keyword cues,
    per intent) is added before the softmax.
    """
    per_label = np.stack([similarities[:, owners == i].max(axis=1) for i in range(len(intents))], axis=1)
    parts = per_label[1:] if per_label.shape[0] > 1 else per_label
    combined = 0.5 * per_label[0] + 0.5 * parts.mean(axis=0)
    if bonus is not None:
        combined = combined + bonus
    logits = combined / _TEMPERATURE
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    best = int(probabilities.argmax())
    return IntentScores(
        intent=intents[best],
        confidence=float(probabilities[best]),
        scores={intent: round(float(p), 4) for intent, p in zip(intents, probabilities, strict=True)},
    )


def informative_words(text: str) -> list[str]:
    """The words of ``text`` (folded) that triage can read and that could name a topic: two or more Latin
    letters (the script of English, Spanish, German and French), not a greeting, "yes", "help" or a function
    word. Emoji, digits, punctuation and other scripts (Chinese, Arabic, Thai...) give none: the English
    embedding model sees them as unknown tokens.
    """
    return [
        word
        for word in _LETTERS.findall(fold(text))
        if word not in _FILLER and all(unicodedata.name(c, "").startswith("LATIN") for c in word)
    ]


def no_signal(text: str, result: IntentScores, bonus: npt.NDArray[np.floating[Any]]) -> str | None:
    """Why ``text`` gives triage nothing to go on, or None when it has a signal.

    A keyword cue (``bonus`` not all zero: "refund", "503") is a signal. Without one: no informative word at
    all (emoji, digits, punctuation, a script the models do not cover, only a greeting) means whatever
    prototype is nearest is arbitrary; at most :data:`FEW_WORDS` of them and a best intent below
    :data:`GUESS_FLOOR` is too thin to name a topic.
    """
    if np.any(bonus):
        return None
    words = informative_words(text)
    if not words:
        return "no words to go on (only symbols, digits, greetings or a script triage does not read)"
    if len(words) <= FEW_WORDS and result.confidence < GUESS_FLOOR:
        return (
            f"too little to go on ({len(words)} informative word{'s' if len(words) > 1 else ''}, "
            f"no keyword cue, best guess under {GUESS_FLOOR:.0%})"
        )
    return None


def nothing_to_go_on(intents: tuple[str, ...] = INTENTS) -> IntentScores:
    """The catch-all intent at the confidence of no evidence: every intent equally likely."""
    share = round(1.0 / len(intents), 4)
    return IntentScores(intent=CATCH_ALL, confidence=share, scores=dict.fromkeys(intents, share))


def assess_priority(intent: str, sentiment: float, text: str) -> tuple[str, list[str]]:
    """Priority from the intent, the customer's sentiment and urgency, security and money cues,
    with the reasons that raised it.
    """
    level = _BASE_PRIORITY.get(intent, 1)
    reasons = [f"intent {intent!r} starts at {PRIORITIES[level]}"]
    if (match := _SECURITY.search(text)) is not None:
        level += 2
        reasons.append(f"possible account compromise or fraud ({match.group(0)!r})")
    if (match := _MONEY.search(text)) is not None:
        level += 1
        reasons.append(f"customer was charged wrongly ({match.group(0)!r})")
    if (match := _URGENCY.search(text)) is not None:
        level += 1
        reasons.append(f"customer asks for urgency ({match.group(0)!r})")
    if sentiment <= ANGRY_BELOW:
        level += 1
        reasons.append(f"customer is upset (sentiment {sentiment:+.2f})")
    return PRIORITIES[min(level, len(PRIORITIES) - 1)], reasons
