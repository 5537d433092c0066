"""The fixed wording of support replies, shared by the responder (which writes it) and quality_check (which
knows these sentences make no claim an article must support).
"""

from __future__ import annotations

import re

__all__ = [
    "CLOSING",
    "ESCALATION",
    "OPENINGS",
    "SIGNATURE",
    "SORRY",
    "TOPICS",
    "is_template",
]

SIGNATURE = "Kind regards,\nNorthwind Support"
CLOSING = "If anything is still unclear, just reply to this message and we will be happy to help."
# The holding reply when no article answers the ticket: a person takes over, nothing is claimed.
ESCALATION = (
    "I have passed your message to a member of our support team, who will look into it personally and "
    "get back to you."
)
TOPICS = {
    "refund": "about a refund or return",
    "billing": "about a charge or payment on your account",
    "shipping": "about your delivery",
    "technical": "about the technical problem you are having",
    "account": "about access to your account",
    "cancellation": "about cancelling",
    "privacy": "about your personal data",
    "plans": "about your plan and team",
    "data": "about importing or exporting your data",
    "outage": "about the service not being available",
    "integrations": "about your integration or API access",
}
SORRY = {
    "refund": "I'm sorry that your order did not work out.",
    "billing": "I'm sorry for the confusion with your payment.",
    "shipping": "I'm sorry for the trouble with your delivery.",
    "technical": "I'm sorry for the trouble this is causing.",
    "account": "I'm sorry for the trouble accessing your account.",
    "data": "I'm sorry for the trouble this is causing.",
    "outage": "I'm sorry for the disruption this is causing you.",
    "integrations": "I'm sorry for the trouble this is causing.",
}
OPENINGS = [
    *(f"Thank you for getting in touch {topic}." for topic in TOPICS.values()),
    "Thank you for your message.",
    "Thank you for taking the time to write to us, we really appreciate it.",
]
_PATTERNS = [
    re.compile(r"^(hi|hello|dear)\b[^.!?]*,?$", re.I),
    re.compile(r"^I can see your order [A-Z]{2}-\d+( \([^)]*\))?(, [^.]*)?\.$"),
    re.compile(r"^I can see you are on the Northwind Plus( \w+)? plan\.$"),
    re.compile(r'^You asked about ".*", so here is what applies to your case\.$'),
    re.compile(r"^(kind regards,?|northwind support|kind regards,? northwind support)[,.]?$", re.I),
]
_FIXED = {s.lower() for s in (*OPENINGS, *SORRY.values(), CLOSING, ESCALATION)}


def is_template(sentence: str) -> bool:
    """Whether ``sentence`` is the replies' fixed wording (greeting, opening, apology, what we see in the
    customer's record, closing, signature), which states nothing an article must back.
    """
    text = " ".join(sentence.split())
    return text.lower() in _FIXED or any(p.match(text) for p in _PATTERNS)
