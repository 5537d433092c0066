"""Shapes that several support agents exchange (a ticket, a retrieved article)."""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["Article", "Ticket"]


class Ticket(BaseModel):
    """A customer's support ticket."""

    subject: str = Field(default="", max_length=500, description="Subject line, may be empty.")
    text: str = Field(min_length=1, max_length=20_000, description="The customer's message.")

    def as_text(self) -> str:
        """Subject and body as one passage (the subject often carries the intent)."""
        subject = self.subject.strip()
        if not subject:
            return self.text.strip()
        return f"{subject}{'' if subject[-1] in '.?!' else '.'} {self.text.strip()}"


class Article(BaseModel):
    """A knowledge-base article as kb_search returns it; ``body`` is optional extra text to quote from."""

    article_id: str = Field(min_length=1, max_length=100)
    title: str = ""
    score: float = 0.0
    snippet: str = Field(default="", description="The passage of the article that best matches the query.")
    body: str = Field(default="", description="Full text, when the caller has it (responder quotes from it).")
