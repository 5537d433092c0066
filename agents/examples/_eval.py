"""The support evaluation set (``eval/dev.jsonl``, ``eval/heldout.jsonl``, ``eval/probe.jsonl``,
``eval/fresh.jsonl``, ``eval/fresh2.jsonl``, ``eval/fresh3.jsonl``, ``eval/heldout2.jsonl``,
``eval/heldout3.jsonl``): tickets
written for this project, each labelled with what a support lead would answer.

The dev split may be used to tune and calibrate (prototypes, thresholds, blend weights); the held-out split
never is: it only measures (bench/bench_support_quality.py). The probe split (40 tickets) was written after
the held-out figures were recorded, as a user trying the agents on tickets nobody had tuned for; it is never
used for calibration (no ``--calibrate-*`` option reads it), only to find and report weaknesses. The fresh
split (48 tickets, session 5) was written the same way after the probe's fixes, before any sentiment tuning of
that session, and is likewise only measured. The fresh2 split (52 tickets, session 7) was written before any
change of that session, in styles no other split uses (terse one-liners, long rambling emails, typos, forwarded
threads and quoted replies, sarcasm, mixed topics with one main ask, non-native English); only measured, its
misses read for kinds of failure, never for words. The fresh3 split (42 tickets, session 8) was written and
labelled before any change of that session, as the untouched test of its sentiment work: terse, typo-ridden,
long and polite, angry, sarcastic, how-to questions, thank-you notes, mixed-language; only measured.
The heldout2 split (150 tickets x001-x150, session 8) is a second, larger held-out split, written and
labelled blind (its author read no other split and no sentiment model code) to choose between two sentiment
models under a protocol fixed in advance: representative traffic (87 ordinary support emails, 48 in other
styles, 15 in Spanish, German or French); measured once per model, never tuned on. Its figures chose a model,
so from session 9 it may be tuned on like dev. The heldout3 split (120 tickets y001-y120, session 9) was
written and labelled blind in the same way (its author read no other split's tickets and no sentiment model
code) before any model change of that session: ordinary emails and terse, typo-ridden, long and polite,
angry, sarcastic, thank-you, praise-with-a-request, how-to, forwarded and non-native tickets, 19 in Spanish,
German or French; measured at most once per candidate, never tuned on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

__all__ = ["EVAL_DIR", "EvalTicket", "Split", "load_eval"]

EVAL_DIR = Path(__file__).with_name("eval")


class EvalTicket(BaseModel):
    """One labelled ticket; ``articles`` empty means the knowledge base has no answer (escalate)."""

    id: str
    name: str = Field(description="The customer's full name.")
    email: str
    lang: Literal["en", "es", "de", "fr"]
    subject: str
    text: str
    intent: str
    priority: Literal["low", "normal", "high", "urgent"]
    sentiment: Literal["negative", "neutral", "positive"]
    articles: list[str] = Field(description="Articles that answer it, best first; any of them is right.")
    pii_may_show: bool = Field(description="Whether the reply may show the customer's own personal data.")


Split = Literal["dev", "heldout", "probe", "fresh", "fresh2", "fresh3", "heldout2", "heldout3"]


def load_eval(split: Split) -> list[EvalTicket]:
    """The tickets of one split, in file order."""
    path = EVAL_DIR / f"{split}.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    return [EvalTicket.model_validate(json.loads(line)) for line in lines if line.strip()]
