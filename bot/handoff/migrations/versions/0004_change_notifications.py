"""PostgreSQL: NOTIFY on every new message and every ticket change, so that each node hears of them

A committed message is announced on channel `pbxbot_messages` as "<id> <conversation id>", a new or
changed ticket on `pbxbot_tickets` as "<ticket id> <status>"; PostgreSQL delivers a notification
only when (and if) its transaction commits. Triggers, so that every writer announces: the server
processes of every node, the CLI, crash recovery. Nothing on SQLite (one process, which polls).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from typing import Sequence, Union

from alembic import op

revision: str = "0004"
down_revision: Union[str, Sequence[str], None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

MESSAGES_CHANNEL = "pbxbot_messages"
TICKETS_CHANNEL = "pbxbot_tickets"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"""
        CREATE OR REPLACE FUNCTION pbxbot_notify_message() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('{MESSAGES_CHANNEL}', NEW.id::text || ' ' || NEW.conversation_id);
            RETURN NULL;
        END $$ LANGUAGE plpgsql""")
    op.execute("""CREATE TRIGGER messages_notify AFTER INSERT ON messages
                  FOR EACH ROW EXECUTE FUNCTION pbxbot_notify_message()""")
    op.execute(f"""
        CREATE OR REPLACE FUNCTION pbxbot_notify_ticket() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('{TICKETS_CHANNEL}', NEW.id || ' ' || NEW.status);
            RETURN NULL;
        END $$ LANGUAGE plpgsql""")
    op.execute("""CREATE TRIGGER tickets_notify AFTER INSERT OR UPDATE ON tickets
                  FOR EACH ROW EXECUTE FUNCTION pbxbot_notify_ticket()""")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS tickets_notify ON tickets")
    op.execute("DROP TRIGGER IF EXISTS messages_notify ON messages")
    op.execute("DROP FUNCTION IF EXISTS pbxbot_notify_ticket()")
    op.execute("DROP FUNCTION IF EXISTS pbxbot_notify_message()")
