"""The shipped example tickets and what a sensible triage of each looks like."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

__all__ = ["TICKETS_FILE", "ExampleTicket", "Expected", "load_tickets"]

TICKETS_FILE = Path(__file__).with_name("tickets.json")


class Expected(BaseModel):
    """The answer a person would give; ``None`` where it is not clear-cut."""

    intent: str
    articles: list[str] = Field(default_factory=list, description="Any of these in the top 3 is right.")
    sentiment: Literal["negative", "neutral", "positive"] | None = None
    priority: Literal["low", "normal", "high", "urgent"] | None = None


class ExampleTicket(BaseModel):
    """One example ticket."""

    id: str
    email: str
    subject: str
    text: str
    expected: Expected


def load_tickets(path: Path = TICKETS_FILE) -> list[ExampleTicket]:
    """The example tickets, in file order."""
    return [ExampleTicket.model_validate(item) for item in json.loads(path.read_text(encoding="utf-8"))]
