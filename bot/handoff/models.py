"""SQLAlchemy 2 declarative models of the handoff store (SQLite and PostgreSQL).

The schema itself is created by the Alembic migrations in bot/handoff/migrations/ (never by
create_all at run time); tests check that the migrations and these models agree.

Portability: JSON columns are JSON on SQLite and JSONB on PostgreSQL; datetimes go through
UTCDateTime, so an aware UTC datetime comes back aware and UTC on both (SQLite stores naive
UTC text with microseconds, which also keeps string comparison in time order).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from bot.handoff.storable import as_utc

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator):
    """Aware UTC in, aware UTC out, on SQLite and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use an aware datetime")
        value = value.astimezone(timezone.utc)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return as_utc(value)  # SQLite hands back the naive UTC value it stored


# none_as_null: Python None is SQL NULL, not the JSON literal null.
JsonType = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
# BIGINT on PostgreSQL; INTEGER on SQLite so that the primary key is the autoincrementing rowid.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JsonType}


class ConversationRow(Base):
    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    channel: Mapped[str] = mapped_column(String(32))
    address: Mapped[dict[str, Any]] = mapped_column(JsonType)  # newest Address.to_dict()
    state: Mapped[dict[str, Any] | None] = mapped_column(JsonType, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class MessageRow(Base):
    __tablename__ = "messages"
    __table_args__ = (
        # A retried webhook carries the same platform id in the same conversation.
        UniqueConstraint("conversation_id", "dedupe_key", name="uq_messages_dedupe"),
        Index("ix_messages_conversation_id_id", "conversation_id", "id"),
        Index(
            "ix_messages_unhandled",
            "handled",
            sqlite_where=text("handled = 0"),
            postgresql_where=text("handled = false"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"))
    role: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ticket_id: Mapped[str | None] = mapped_column(ForeignKey("tickets.id"), nullable=True, index=True)
    handled: Mapped[bool] = mapped_column(Boolean, default=True)
    dedupe_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)


class TicketRow(Base):
    __tablename__ = "tickets"
    __table_args__ = (
        # At most one active (open or claimed) ticket per conversation, enforced by the database.
        Index(
            "uq_tickets_active_conversation",
            "conversation_id",
            unique=True,
            sqlite_where=text("status IN ('open', 'claimed')"),
            postgresql_where=text("status IN ('open', 'claimed')"),
        ),
        Index("ix_tickets_status_created_at", "status", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # T-20261128-ab12
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"), index=True)
    address: Mapped[dict[str, Any]] = mapped_column(JsonType)
    status: Mapped[str] = mapped_column(String(16))  # open | claimed | resolved
    priority: Mapped[str] = mapped_column(String(16))  # urgent | normal
    reason: Mapped[str] = mapped_column(String(64))
    summary: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    operator: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    reannounced_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class AuditRow(Base):
    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    ticket_id: Mapped[str] = mapped_column(ForeignKey("tickets.id"), index=True)
    actor: Mapped[str] = mapped_column(String(160))
    action: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime())


class OutboxRow(Base):
    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_status_id", "status", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    address: Mapped[dict[str, Any]] = mapped_column(JsonType)
    reply: Mapped[dict[str, Any]] = mapped_column(JsonType)  # Reply.to_json() + kind, offer_human
    ticket_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | sent | dead (a permanent error)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Set by lease_outbox: until then, no other worker gets this item.
    leased_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class RevokedSessionRow(Base):
    """Console sessions ended by logout (their signed cookies are refused until they expire)."""

    __tablename__ = "revoked_sessions"

    sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
