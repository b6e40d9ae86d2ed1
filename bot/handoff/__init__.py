"""Handoff: tickets, the transcript store and the transactional outbox.

`HandoffService` (service.py) holds the ticket rules (bot.ports.Handoff) over a `TicketStore`;
`SqlHandoffStore` (sql_store.py, SQLAlchemy + Alembic, SQLite or PostgreSQL) is that store, the
transcript/state store (bot.ports.ConversationStore) and the outbox. Tests and the local chat use
it on an in-memory SQLite database (`SqlHandoffStore("sqlite://")`). Imported lazily so that
`import bot.handoff` never imports SQLAlchemy.

Errors: TicketNotFound (unknown id), TicketStateError (open -> claimed -> resolved forbids it).
"""

from bot.ports import HandoffError, TicketNotFound, TicketStateError

__all__ = ["HandoffError", "TicketNotFound", "TicketStateError", "HandoffService", "SqlHandoffStore"]


def __getattr__(name: str):
    if name == "HandoffService":
        from bot.handoff.service import HandoffService

        return HandoffService
    if name == "SqlHandoffStore":
        from bot.handoff.sql_store import SqlHandoffStore

        return SqlHandoffStore
    raise AttributeError(name)
