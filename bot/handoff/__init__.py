"""Handoff: tickets, the transcript store and the transactional outbox.

`InMemoryHandoffStore` (memory_store) and `SqlHandoffStore` (sql_store, SQLAlchemy + Alembic)
both implement bot.ports.ConversationStore and bot.ports.HandoffService. The SQL store is
imported lazily so that importing the fake never imports SQLAlchemy.

Beyond bot.ports, both stores offer:
- lease_outbox(limit=50, seconds=60): pending items leased to one worker (use it in a delivery
  loop instead of pending_outbox when several processes share the database);
- outbox_status(item_id): status/attempts/last_error/sent_at of one item;
- close().
SqlHandoffStore also has health() -> {"ok", "backend", "revision"} for /healthz.
Errors: TicketNotFound (unknown id), TicketStateError (open -> claimed -> resolved forbids it).
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
