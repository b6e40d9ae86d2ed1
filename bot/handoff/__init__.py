"""Handoff: tickets, the transcript store and the transactional outbox.

`HandoffService` (service.py) holds the ticket rules (bot.ports.Handoff) over a `TicketStore`;
`SqlHandoffStore` (sql_store.py, SQLAlchemy + Alembic, SQLite or PostgreSQL) is that store, the
transcript/state store (bot.ports.ConversationStore) and the outbox. Tests and the local chat use
it on an in-memory SQLite database (`SqlHandoffStore("sqlite://")`).

Errors (bot.ports): TicketNotFound (unknown id), TicketStateError (open -> claimed -> resolved forbids it).
"""
