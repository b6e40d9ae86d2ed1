"""initial handoff schema: conversations, messages, tickets, audit, outbox

Revision ID: 0001
Revises:
Create Date: 2026-11-28

Frozen: uses plain SQLAlchemy types (not bot.handoff.models), so later model changes never
rewrite history. DateTime(timezone=True) is TIMESTAMPTZ on PostgreSQL and text on SQLite
(the store writes naive UTC there); JSON is JSONB on PostgreSQL.
"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def _json() -> sa.types.TypeEngine:
    return sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def _id() -> sa.types.TypeEngine:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts() -> sa.types.TypeEngine:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("address", _json(), nullable=False),
        sa.Column("state", _json(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_conversations"),
    )
    op.create_table(
        "outbox",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("address", _json(), nullable=False),
        sa.Column("reply", _json(), nullable=False),
        sa.Column("ticket_id", sa.String(32), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("sent_at", _ts(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
    )
    op.create_index("ix_outbox_status_id", "outbox", ["status", "id"])

    op.create_table(
        "tickets",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("conversation_id", sa.String(255), nullable=False),
        sa.Column("address", _json(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("priority", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("summary", _json(), nullable=False),
        sa.Column("operator", sa.String(128), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.Column("reannounced_at", _ts(), nullable=True),
        sa.ForeignKeyConstraint(
            ["conversation_id"], ["conversations.id"], name="fk_tickets_conversation_id_conversations"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_tickets"),
    )
    op.create_index("ix_tickets_conversation_id", "tickets", ["conversation_id"])
    op.create_index("ix_tickets_status_created_at", "tickets", ["status", "created_at"])
    op.create_index(
        "uq_tickets_active_conversation",
        "tickets",
        ["conversation_id"],
        unique=True,
        sqlite_where=sa.text("status IN ('open', 'claimed')"),
        postgresql_where=sa.text("status IN ('open', 'claimed')"),
    )

    op.create_table(
        "audit",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("ticket_id", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(160), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("at", _ts(), nullable=False),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"], name="fk_audit_ticket_id_tickets"),
        sa.PrimaryKeyConstraint("id", name="pk_audit"),
    )
    op.create_index("ix_audit_ticket_id", "audit", ["ticket_id"])

    op.create_table(
        "messages",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("conversation_id", sa.String(255), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("ticket_id", sa.String(32), nullable=True),
        sa.Column("handled", sa.Boolean(), nullable=False),
        sa.Column("dedupe_key", sa.String(255), nullable=True),
        sa.Column("meta", _json(), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"], ["conversations.id"], name="fk_messages_conversation_id_conversations"
        ),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"], name="fk_messages_ticket_id_tickets"),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
        sa.UniqueConstraint("conversation_id", "dedupe_key", name="uq_messages_dedupe"),
    )
    op.create_index("ix_messages_conversation_id_id", "messages", ["conversation_id", "id"])
    op.create_index("ix_messages_ticket_id", "messages", ["ticket_id"])
    op.create_index(
        "ix_messages_unhandled",
        "messages",
        ["handled"],
        sqlite_where=sa.text("handled = 0"),
        postgresql_where=sa.text("handled = false"),
    )


def downgrade() -> None:
    op.drop_table("messages")
    op.drop_table("audit")
    op.drop_table("tickets")
    op.drop_table("outbox")
    op.drop_table("conversations")
