"""Conversation tables: versioned threads of messages with optimistic concurrency and rollback."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from agentmesh.storage._base import Base
from agentmesh.storage._states import MESSAGE_ROLES, one_of
from agentmesh.storage._types import JSONDoc, UTCDateTime

__all__ = ["Conversation", "ConversationMessage"]

_ID = 64
_IDENTITY = 512


class Conversation(Base):
    """``conversations``: one conversation; ``version`` grows by one on every write.

    Optimistic concurrency in one statement: ``UPDATE conversations SET version = version + 1 ...
    WHERE conversation_id = :id AND version = :expected_version``; zero rows updated means a stale
    ``expected_version`` (ABORTED). Columns: ``conversation_id`` (primary key); ``request_id``
    (client-chosen idempotency key, unique per ``owner``; NULL when not given); ``title``; ``version``;
    ``labels`` (JSON object str -> str); ``owner`` (creating identity); ``on_behalf_of`` and ``tenant``
    (the end user it belongs to, from a delegation token; "" when none); ``created_at``; ``updated_at``.
    Listing pages newest first by ``(created_at, conversation_id)``, optionally for one ``owner`` or
    one end user.
    """

    __tablename__ = "conversations"
    __table_args__ = (
        UniqueConstraint("owner", "request_id"),
        Index(None, "created_at", "conversation_id"),
        Index(None, "owner", "created_at", "conversation_id"),
        Index(None, "tenant", "on_behalf_of", "created_at", "conversation_id"),
    )

    conversation_id: Mapped[str] = mapped_column(String(_ID), primary_key=True)
    request_id: Mapped[str | None] = mapped_column(String(128))
    title: Mapped[str] = mapped_column(Text, default="", server_default="")
    version: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    labels: Mapped[dict[str, str]] = mapped_column(JSONDoc, default=dict, server_default=text("'{}'"))
    owner: Mapped[str] = mapped_column(String(_IDENTITY), default="", server_default="")
    on_behalf_of: Mapped[str] = mapped_column(String(_IDENTITY), default="", server_default="")
    tenant: Mapped[str] = mapped_column(String(128), default="", server_default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=func.now())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=func.now())

    messages: Mapped[list[ConversationMessage]] = relationship(
        back_populates="conversation",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="ConversationMessage.version",
    )


class ConversationMessage(Base):
    """``conversation_messages``: the message that created one version of a conversation.

    ``(conversation_id, version)`` is unique: every version of a conversation is exactly one row, so the
    history has no gaps. Each message follows ``parent_version``: the previous version, or for a
    rollback (a SYSTEM message with ``rolled_back_to`` = N) version N. The messages of version V are the
    chain V, parent(V), parent(parent(V)), ... down to 0; ``hidden`` caches "not in the chain of the
    current version" (never deleted). Columns: ``message_id`` (primary key); ``conversation_id`` ->
    conversations; ``version``; ``parent_version``; ``rolled_back_to``; ``request_id`` (client-chosen
    idempotency key, unique per conversation; NULL when not given); ``role`` (USER, AGENT, SYSTEM);
    ``author`` (SPIFFE id); ``on_behalf_of`` (end user, when the write carried their token); ``text``; ``data`` (JSON, optional); ``task_id`` -> tasks (task started by or answering
    the message); ``hidden``; ``created_at``.
    """

    __tablename__ = "conversation_messages"
    __table_args__ = (
        one_of("role", MESSAGE_ROLES),
        UniqueConstraint("conversation_id", "version"),
        UniqueConstraint("conversation_id", "request_id"),
    )

    message_id: Mapped[str] = mapped_column(String(_ID), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(
        String(_ID), ForeignKey("conversations.conversation_id", ondelete="CASCADE")
    )
    version: Mapped[int] = mapped_column(BigInteger)
    parent_version: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    rolled_back_to: Mapped[int | None] = mapped_column(BigInteger)
    request_id: Mapped[str | None] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    author: Mapped[str] = mapped_column(String(_IDENTITY), default="", server_default="")
    on_behalf_of: Mapped[str] = mapped_column(String(_IDENTITY), default="", server_default="")
    text: Mapped[str] = mapped_column(Text, default="", server_default="")
    data: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)
    task_id: Mapped[str | None] = mapped_column(String(_ID), ForeignKey("tasks.task_id", ondelete="SET NULL"))
    hidden: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, server_default=func.now())

    conversation: Mapped[Conversation] = relationship(back_populates="messages")
