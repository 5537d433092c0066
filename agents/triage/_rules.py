"""Triage rules that need no model: combining similarities into intent scores, and priority from cues."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt
import yaml

from agentmesh.agents._support._keywords import PhraseMatcher

__all__ = [
    "CUES_FILE",
    "CUE_WEIGHT",
    "INTENTS",
    "PRIORITIES",
    "PROTOTYPES_FILE",
    "Intent",
    "IntentScores",
    "assess_priority",
    "cue_bonus",
    "intent_scores",
    "load_cues",
    "load_prototypes",
]

PROTOTYPES_FILE = Path(__file__).with_name("prototypes.yaml")
CUES_FILE = Path(__file__).with_name("cues.yaml")
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
# Sentiment at or below this (model score in [-1, 1]) means a clearly upset customer.
ANGRY_BELOW = -0.5


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


def load_cues(path: Path = CUES_FILE) -> dict[str, PhraseMatcher]:
    """A phrase matcher per intent of :data:`INTENTS` (intents without cues match nothing)."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if set(raw) - set(INTENTS):
        raise ValueError(f"{path}: unknown intents {sorted(set(raw) - set(INTENTS))}")
    return {intent: PhraseMatcher(str(c) for c in raw.get(intent) or []) for intent in INTENTS}


def cue_bonus(
    text: str, cues: dict[str, PhraseMatcher], intents: tuple[str, ...] = INTENTS
) -> npt.NDArray[np.float64]:
    """Per intent: :data:`CUE_WEIGHT` for each of its cues found in ``text`` (at most two)."""
    return np.array([CUE_WEIGHT * min(2, len(cues[i].find(text))) for i in intents], dtype=np.float64)


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
