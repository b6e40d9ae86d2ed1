"""Handoff: tickets, the transcript store and the transactional outbox.

`InMemoryHandoffStore` (memory_store) and `SqlHandoffStore` (sql_store, SQLAlchemy + Alembic)
both implement bot.ports.ConversationStore and bot.ports.HandoffService. The SQL store is
imported lazily so that importing the fake never imports SQLAlchemy.
"""

from bot.ports import HandoffError, TicketNotFound, TicketStateError

__all__ = ["HandoffError", "TicketNotFound", "TicketStateError", "InMemoryHandoffStore", "SqlHandoffStore"]


def __getattr__(name: str):
    if name == "InMemoryHandoffStore":
        from bot.handoff.memory_store import InMemoryHandoffStore

        return InMemoryHandoffStore
    if name == "SqlHandoffStore":
        from bot.handoff.sql_store import SqlHandoffStore

        return SqlHandoffStore
    raise AttributeError(name)
