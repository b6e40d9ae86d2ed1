"""SqlHandoffStore: the transcript and state (ConversationStore), tickets (TicketStore), the outbox
and revoked console sessions on SQLAlchemy 2 (SQLite or PostgreSQL). Plain reads and writes: the
ticket rules are bot.handoff.service.HandoffService's.

- Every public method is one transaction, committed before it returns: a user message recorded
  by `record_message` survives a crash one instruction later.
- SQLite (the default, a file in the data dir; one server process): WAL journal, busy_timeout,
  and every write transaction begins with BEGIN IMMEDIATE (SQLAlchemy's documented event
  recipe), so the CLI and a running server can share the file without "database is locked"
  upgrades failing half way.
- PostgreSQL (`postgresql+psycopg://...`): row locks (SELECT ... FOR UPDATE) on the conversation
  or ticket a method changes, so concurrent workers cannot open two tickets for one conversation
  or claim one ticket twice; a partial unique index backs the first rule in both databases.
- The schema is migrated to the newest Alembic revision on open.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Sequence

from sqlalchemy import text as sql_text
from sqlalchemy import and_, bindparam, case, func, insert, or_, select, update
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from bot.handoff import storable
from bot.handoff.service import ACTIVE_STATUSES
from bot.handoff.migrate import current_revision, upgrade_to_head
from bot.handoff.sql_engine import (
    TryLocks,
    copy_migrated_memory_database,
    create_store_engine,
    in_memory,
    normalize_url,
)
from bot.handoff.models import AuditRow, ConversationRow, MessageRow, OutboxRow, RevokedSessionRow, TicketRow
from bot.messages import Address, Reply, utcnow
from bot.ports import (
    AuditEntry,
    ConversationState,
    OutboxItem,
    Role,
    StoredMessage,
    Ticket,
    UndeliveredItem,
    TicketDetail,
)

log = logging.getLogger(__name__)

# An outbox item is retried for as long as it can still be delivered: only a permanent error (the
# user blocked the bot, the chat is gone) or an operator makes it 'dead'. None: no attempt limit.
DEFAULT_MAX_ATTEMPTS: int | None = None


class SqlHandoffStore:
    """ConversationStore, TicketStore and Outbox of bot.ports on a SQL database.

    `SqlHandoffStore(url)`: any SQLAlchemy URL (sqlite:///path, postgresql+psycopg://...).
    `clock()` returns an aware UTC datetime (tests pass a fake clock).
    `max_attempts`: failed deliveries before an outbox item is dead-lettered (None, the default: never;
    only a permanent error makes it dead).
    `migrate=False` skips the Alembic upgrade (the schema must already be at head).
    `sqlite_synchronous`: NORMAL (default; durable when the process dies) or FULL (also on power loss).
    """

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], datetime] = utcnow,
        max_attempts: int | None = DEFAULT_MAX_ATTEMPTS,
        migrate: bool = True,
        echo: bool = False,
        sqlite_synchronous: str = "NORMAL",
    ) -> None:
        self.url: URL = make_url(normalize_url(url))
        self._clock = clock
        self._max_attempts = max_attempts
        self.engine: Engine = create_store_engine(self.url, echo=echo, synchronous=sqlite_synchronous.upper())
        self._sessions = sessionmaker(self.engine, expire_on_commit=False, autoflush=True)
        self._insert_conversation = _insert_ignoring_duplicates(self.engine.dialect.name)
        self._local_exclusive = TryLocks()
        # An in-memory database is one connection shared by every thread: one transaction at a time.
        self._one_connection: Any = threading.RLock() if in_memory(self.url) else contextlib.nullcontext()
        self._turn = threading.local()  # .lock: this thread's _TurnLock (PostgreSQL, inside conversation_turn)
        if not migrate:
            self.revision = None
        elif in_memory(self.url):
            self.revision = copy_migrated_memory_database(self.engine)
        else:
            self.revision = upgrade_to_head(self.engine)

    @classmethod
    def from_settings(cls, settings: Any, **kwargs: Any) -> "SqlHandoffStore":
        """SQLite in settings.data_dir (created), or settings.database_url when set."""
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
        return cls(settings.resolved_database_url, **kwargs)

    @property
    def backend(self) -> str:
        return self.engine.dialect.name  # "sqlite" | "postgresql"

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "SqlHandoffStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:  # never the password
        return f"SqlHandoffStore({self.url.render_as_string(hide_password=True)!r})"

    def change_listener(self, **callbacks: Any) -> Any:
        """PostgreSQL: a bot.handoff.changes.ChangeListener (LISTEN/NOTIFY) with these callbacks
        (on_message, on_ticket, on_connect); SQLite: None (one process, its followers poll)."""
        if self.backend != "postgresql":
            return None
        from bot.handoff.changes import ChangeListener

        conninfo = self.url.set(drivername="postgresql").render_as_string(hide_password=False)
        return ChangeListener(conninfo, **callbacks)

    def health(self) -> dict[str, Any]:
        """For /healthz: {"ok", "backend", "revision"}; never raises, never shows the URL."""
        try:
            with self._one_connection, self.engine.connect() as conn:
                rev = current_revision(conn)
            return {"ok": rev is not None, "backend": self.backend, "revision": rev}
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            return {"ok": False, "backend": self.backend, "error": type(exc).__name__}

    # ------------------------------------------------------------ plumbing

    def _now(self) -> datetime:
        return storable.as_utc(self._clock())

    @contextmanager
    def _turn_transaction(self, *, completes_turn: bool = False) -> Iterator[Connection | None]:
        """Inside a turn on PostgreSQL (conversation_turn): a transaction on the connection that
        holds the turn's lock (one pool checkout a turn, not one a transaction). None elsewhere.

        The turn's first transaction is the one conversation_turn began with its lock statement.
        `completes_turn` (complete_turn): its COMMIT and the lock's release go in one round trip,
        the release after the COMMIT; later calls of the turn (there are none in TurnRunner) run
        without the lock."""
        turn: _TurnLock | None = getattr(self._turn, "lock", None)
        if turn is None:
            yield None
            return
        conn = turn.conn
        if turn.tx is not None:
            tx, turn.tx = turn.tx, None
        elif conn.in_transaction():
            yield None
            return
        else:
            tx = conn.begin()
        try:
            yield conn
        except BaseException:
            tx.rollback()  # a session advisory lock survives a rollback: conversation_turn releases it
            raise
        if completes_turn and turn.locked:
            # One simple query, run in order by the server: the COMMIT is durable before the
            # unlock runs, so the next turn of the conversation (any node) starts from this one's
            # state. tx.commit() then has nothing left to send (the driver sees no transaction).
            try:
                conn.exec_driver_sql(f"COMMIT; SELECT pg_advisory_unlock({turn.key:d})",
                                     execution_options={"no_parameters": True})
            except BaseException:
                tx.rollback()  # the COMMIT failed (the unlock did not run): conversation_turn unlocks
                raise
            turn.locked = False
        tx.commit()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read-only transaction. On SQLite it begins DEFERRED, not IMMEDIATE: under WAL a reader
        sees a consistent snapshot without taking the write lock, so the console's polling and
        the widget's event feed never queue behind the writer."""
        with self._turn_transaction() as turn:
            if turn is not None:
                yield turn
                return
        with self._one_connection, self.engine.connect().execution_options(pbxbot_read_only=True) as conn, \
                conn.begin():
            yield conn

    @contextmanager
    def _read_session(self) -> Iterator[Session]:
        with self._read() as conn, Session(bind=conn, expire_on_commit=False) as session:
            yield session

    @contextmanager
    def _write(self, *, completes_turn: bool = False) -> Iterator[Connection]:
        """A write transaction (BEGIN IMMEDIATE on SQLite). completes_turn: see _turn_transaction."""
        with self._turn_transaction(completes_turn=completes_turn) as turn:
            if turn is not None:
                yield turn
                return
        with self._one_connection, self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        """An ORM session in one write transaction (outbox operations)."""
        with self._one_connection, self._sessions() as session, session.begin():
            yield session

    # The per-turn hot path (record_message, get/save_state, active_ticket, mark_handled, transcript)
    # uses Core statements built once (_Q) on a plain connection: a third of the ORM's CPU cost.

    def _ensure_conversation(self, conn: Connection, address: Address, now: datetime, *, refresh: bool,
                             dedupe_key: str | None = None) -> Any:
        """The conversation row exists and is locked for this transaction (FOR UPDATE on PostgreSQL,
        the BEGIN IMMEDIATE write lock on SQLite); with refresh, it holds the newest address.

        Returns, read in the same statement (one round trip on the turn's hot path): its address,
        state and updated_at as they were, its active ticket id, and dup_id, the message already
        recorded under `dedupe_key` (None: not a duplicate). All None for a row just created."""
        cid = address.conversation_id
        addr_json = storable.clean_json(address.to_dict())
        params = {"cid": cid, "key": dedupe_key}
        row = conn.execute(_Q.conversation_context, params).first()
        if row is None:
            created = conn.execute(self._insert_conversation, {
                "id": cid, "channel": address.channel, "address": addr_json, "state": None,
                "created_at": now, "updated_at": now}).rowcount
            if created == 1:  # ours, and locked by our insert: nothing else to read
                return _NEW_CONVERSATION
            return conn.execute(_Q.conversation_context, params).first()  # another writer created it just now
        if refresh and row.address != addr_json:  # the newest route wins (Slack response_url...)
            conn.execute(_Q.conversation_set_address, {"cid": cid, "address": addr_json})
        return row

    def _insert_message(self, conn: Connection, conversation_id: str, role: str, text: str, *, handled: bool,
                        meta: dict[str, Any] | None, ticket_id: str | None,
                        dedupe_key: str | None = None) -> StoredMessage:
        values = {"conversation_id": conversation_id, "role": role, "text": storable.clean_text(text),
                  "created_at": self._now(), "ticket_id": ticket_id, "handled": handled,
                  "dedupe_key": dedupe_key, "meta": storable.clean_json(dict(meta or {}))}
        new_id = conn.execute(_Q.message_insert, values).scalar_one()
        values.pop("dedupe_key")
        return StoredMessage(id=int(new_id), **values)

    def _insert_audit(self, conn: Connection, ticket_id: str, actor: str, action: str, detail: str = "") -> None:
        conn.execute(_Q.audit_insert, {"ticket_id": ticket_id, "actor": actor, "action": action,
                                       "detail": detail, "at": self._now()})

    def _audit(self, s: Session, ticket_id: str, actor: str, action: str, detail: str = "") -> None:
        s.flush()  # the ticket row first (foreign key)
        self._insert_audit(s.connection(), ticket_id, actor, action, detail)

    def _insert_outbox(self, conn: Connection, address: dict[str, Any], reply: dict[str, Any], ticket_id: str | None,
                       now: datetime, leased_until: datetime | None = None) -> int:
        """A pending outbox item (`address`: already clean JSON), leased until `leased_until`; its id."""
        return int(conn.execute(_Q.outbox_insert, {
            "address": address, "reply": storable.clean_json(reply), "ticket_id": ticket_id, "status": "pending",
            "attempts": 0, "created_at": now, "leased_until": leased_until}).scalar_one())

    # ------------------------------------------------------------ ConversationStore

    def get_state(self, conversation_id: str) -> ConversationState | None:
        with self._read() as conn:
            row = conn.execute(_Q.state_select, {"cid": conversation_id}).first()
        if row is None or row.state is None:
            return None
        return storable.state_from_json(row.state, row.updated_at)

    def save_state(self, state: ConversationState) -> None:
        now = self._now()
        data = storable.clean_json(storable.state_to_json(state))
        with self._write() as conn:
            self._ensure_conversation(conn, state.address, now, refresh=False)
            conn.execute(_Q.state_update, {"cid": state.conversation_id, "state": data, "now": now})
        state.updated_at = now

    def record_message(
        self,
        address: Address,
        role: Role,
        text: str,
        *,
        handled: bool = True,
        dedupe_key: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> StoredMessage | None:
        return self._record(address, role, text, handled=handled, dedupe_key=dedupe_key, meta=meta)[0]

    def begin_turn(
        self,
        address: Address,
        text: str,
        *,
        dedupe_key: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> tuple[StoredMessage | None, ConversationState | None]:
        return self._record(address, "user", text, handled=False, dedupe_key=dedupe_key, meta=meta)

    def _record(
        self, address: Address, role: Role, text: str, *, handled: bool, dedupe_key: str | None,
        meta: dict[str, Any] | None,
    ) -> tuple[StoredMessage | None, ConversationState | None]:
        cid = address.conversation_id
        if dedupe_key is not None:
            dedupe_key = storable.clean_text(dedupe_key)
        try:
            with self._write() as conn:
                row = self._ensure_conversation(conn, address, self._now(), refresh=True, dedupe_key=dedupe_key)
                state = storable.state_from_json(row.state, row.updated_at) if row.state else None
                if row.dup_id is not None:
                    return None, state
                ticket_id = row.ticket_id
                msg = self._insert_message(conn, cid, role, text, handled=handled, meta=meta,
                                           ticket_id=ticket_id, dedupe_key=dedupe_key)
                if ticket_id is not None:
                    self._insert_audit(conn, ticket_id, _actor(role, meta), f"{role}_message",
                                       f"message #{msg.id}")
            return msg, state  # committed
        except IntegrityError:
            if dedupe_key is not None:
                with self._write() as conn:
                    if conn.execute(_Q.dedupe_select, {"cid": cid, "key": dedupe_key}).first():
                        return None, None  # a concurrent retry of the same webhook won the race
            raise

    def complete_turn(
        self,
        address: Address,
        message_id: int,
        state: ConversationState | None,
        replies: Sequence[tuple[str, dict[str, Any]]],
        *,
        outbox_lease: float | None = None,
    ) -> list[StoredMessage]:
        cid = address.conversation_id
        now = self._now()
        data = storable.clean_json(storable.state_to_json(state)) if state is not None else None
        addr_json = storable.clean_json(address.to_dict()) if outbox_lease is not None else None
        leased_until = now + timedelta(seconds=outbox_lease) if outbox_lease else None
        out: list[StoredMessage] = []
        with self._write(completes_turn=True) as conn:
            # No _ensure_conversation: record_message created the row earlier in this turn, and
            # this transaction only updates that row and inserts after it.
            if data is not None:
                conn.execute(_Q.state_update, {"cid": cid, "state": data, "now": now})
            if self.backend == "postgresql":
                # "handled" rides on the open-ticket read (a data-modifying WITH): one round trip
                # less. The read stays a statement of its own after the state's UPDATE, so its
                # snapshot is taken after any wait for the conversation's row, as before.
                ticket_id = conn.execute(_Q.pg_mark_handled_active_ticket, {"cid": cid, "mid": message_id}).scalar()
                ticket_id = ticket_id if replies else None
            else:
                ticket_id = conn.execute(_Q.active_ticket_id, {"cid": cid}).scalar() if replies else None
            for text, meta in replies:
                msg = self._insert_message(conn, cid, "bot", text, handled=True, meta=meta, ticket_id=ticket_id)
                if ticket_id is not None:
                    self._insert_audit(conn, ticket_id, "bot", "bot_message", f"message #{msg.id}")
                if addr_json is not None and isinstance(meta.get("reply"), dict):
                    # The transactional outbox: the reply is owed to the user from this commit on,
                    # whatever happens to the process that is about to send it (leased to it meanwhile).
                    msg.outbox_id = self._insert_outbox(conn, addr_json, meta["reply"], ticket_id, now, leased_until)
                out.append(msg)
            if self.backend != "postgresql":
                conn.execute(_Q.message_mark_handled, {"mid": message_id})
        if state is not None:
            state.updated_at = now
        return out

    def resume_turn(self, message_id: int, conversation_id: str) -> tuple[bool, ConversationState | None]:
        """Whether the user message has been answered (True also when it does not exist) and the
        conversation's state, in one statement (inside a turn on PostgreSQL: the one after the lock,
        in the lock's transaction)."""
        with self._read() as conn:
            row = conn.execute(_Q.handled_and_state, {"mid": message_id, "cid": conversation_id}).one()
        state = storable.state_from_json(row.state, row.updated_at) if row.state is not None else None
        return row.handled is None or bool(row.handled), state

    def mark_handled(self, message_id: int) -> None:
        with self._write() as conn:
            conn.execute(_Q.message_mark_handled, {"mid": message_id})

    def unhandled_messages(self) -> list[StoredMessage]:
        with self._read() as conn:
            return [_message(r) for r in conn.execute(_Q.messages_unhandled)]

    def transcript(self, conversation_id: str, limit: int | None = None) -> list[StoredMessage]:
        with self._read() as conn:
            if limit is None:
                rows = list(conn.execute(_Q.messages_all, {"cid": conversation_id}))
            else:
                rows = list(conn.execute(_Q.messages_last, {"cid": conversation_id, "n": max(limit, 0)}))
                rows.reverse()
        return [_message(r) for r in rows]

    def messages_after(self, conversation_id: str, after_id: int) -> list[StoredMessage]:
        with self._read() as conn:
            return [_message(r) for r in conn.execute(_Q.messages_after, {"cid": conversation_id, "after": after_id})]

    @contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """PostgreSQL: a session advisory lock (non-blocking, released when the holder's process
        dies), so that one process of all the nodes runs the job; SQLite: a lock in this process
        (SQLite serves one server process)."""
        if self.backend != "postgresql":
            with self._local_exclusive.try_hold(name) as got:
                yield got
            return
        key = _lock_key(name.encode())
        with self.engine.connect() as conn:  # a connection of its own, holding the lock while the job runs
            got = bool(conn.execute(sql_text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
            conn.commit()
            try:
                yield got
            finally:
                if got:
                    try:
                        conn.execute(_Q.advisory_unlock, {"k": key})
                        conn.commit()
                    except Exception:  # noqa: BLE001 - a dropped connection released it already
                        log.warning("releasing an advisory lock failed; dropping its connection")
                        conn.invalidate()

    @contextmanager
    def conversation_turn(self, conversation_id: str) -> Iterator[None]:
        """PostgreSQL: a session advisory lock held for the turn, so that two messages of one
        conversation reaching two processes or nodes at once are answered one after the other;
        released by the server if the holder dies. The turn's store calls in this thread run on
        the lock's connection (_turn_transaction).

        The lock is the first statement of a transaction begun here, which the turn's first store
        call (begin_turn, or resume_turn) continues: under READ COMMITTED each later statement
        reads a snapshot taken after the lock was granted, so it sees what the previous turn
        committed. A session lock outlives that transaction's COMMIT (and a rollback). The
        completing transaction (complete_turn) releases it in its COMMIT's round trip, after the
        COMMIT; a turn that ends otherwise releases it here. SQLite serves one process, where the
        core's own lock is enough."""
        if self.backend != "postgresql":
            yield
            return
        with self.engine.connect() as conn:
            turn = _TurnLock(conn, _lock_key(b"turn\0" + conversation_id.encode()))
            turn.tx = conn.begin()
            conn.execute(_Q.advisory_lock, {"k": turn.key})
            turn.locked = True
            previous = getattr(self._turn, "lock", None)
            self._turn.lock = turn
            try:
                yield
            finally:
                self._turn.lock = previous
                self._release_turn(turn)

    @staticmethod
    def _release_turn(turn: "_TurnLock") -> None:
        """The end of a turn whose completing transaction did not release its lock (a duplicate,
        an answered message, an error): end the lock's transaction if no store call used it, then
        unlock outside any transaction."""
        conn = turn.conn
        try:
            if turn.tx is not None:
                turn.tx.commit()  # only the lock statement ran in it
                turn.tx = None
            if turn.locked:
                if conn.in_transaction():  # not expected: every turn transaction ends in _turn_transaction
                    conn.rollback()
                # the pool resets the isolation level when the connection goes back
                conn.execution_options(isolation_level="AUTOCOMMIT").execute(_Q.advisory_unlock, {"k": turn.key})
                conn.commit()
                turn.locked = False
        except Exception:  # noqa: BLE001 - a dropped connection released it already
            log.warning("releasing a turn lock failed; dropping its connection")
            conn.invalidate()

    def latest_message_id(self) -> int:
        with self._read() as conn:
            return int(conn.execute(_Q.message_max_id).scalar() or 0)

    def message_index_after(self, after_id: int, limit: int = 1000) -> list[tuple[int, str]]:
        with self._read() as conn:
            return [(int(r.id), r.conversation_id)
                    for r in conn.execute(_Q.message_index_after, {"after": after_id, "n": max(1, limit)})]

    def messages_by_id(self, ids: Sequence[int]) -> list[StoredMessage]:
        if not ids:
            return []
        with self._read() as conn:
            return [_message(r) for r in conn.execute(_Q.messages_by_id, {"ids": [int(i) for i in ids]})]

    # ------------------------------------------------------------ TicketStore (the rules: bot.handoff.service)

    @contextmanager
    def ticket_transaction(self, conversation: Address | None = None) -> Iterator["SqlTicketTransaction"]:
        """Core statements on the turn's connection (an incident turn opens a ticket: on SQLite the
        ORM's unit of work cost more CPU here than the rest of the turn's SQL together)."""
        with self._write() as conn:
            now = self._now()
            if conversation is not None:  # the row exists, holds the newest route, and is locked
                self._ensure_conversation(conn, conversation, now, refresh=True)
            yield SqlTicketTransaction(self, conn, now, conversation)

    def tickets(self, statuses: Sequence[str]) -> list[Ticket]:
        stmt = select(_T).where(_T.c.status.in_(tuple(statuses))).order_by(_T.c.created_at, _T.c.id)
        with self._read() as conn:
            return [_ticket(r) for r in conn.execute(stmt)]

    def active_ticket(self, conversation_id: str) -> Ticket | None:
        with self._read() as conn:
            row = conn.execute(_Q.active_ticket_row, {"cid": conversation_id}).first()
        return _ticket(row) if row else None

    def ticket_detail(self, ticket_id: str) -> TicketDetail | None:
        with self._read() as conn:
            row = conn.execute(_Q.ticket_row, {"tid": ticket_id}).first()
            if row is None:
                return None
            msgs = conn.execute(select(_M).where(_M.c.ticket_id == row.id).order_by(_M.c.id))
            audit = conn.execute(select(_A).where(_A.c.ticket_id == row.id).order_by(_A.c.id))
            return TicketDetail(ticket=_ticket(row), transcript=[_message(m) for m in msgs],
                                audit=[_audit(a) for a in audit])

    # ------------------------------------------------------------ outbox

    def enqueue(self, address: Address, reply: Reply, ticket_id: str | None = None) -> int:
        """ticket_id: the ticket whose audit records the delivery (default: the reply's escalation's,
        else the conversation's open ticket, so that the console shows it with that ticket)."""
        if ticket_id is None and reply.escalation is not None:
            ticket_id = reply.escalation.ticket_id
        with self._tx() as s:
            conn = s.connection()
            if ticket_id is None:
                ticket_id = conn.execute(_Q.active_ticket_id, {"cid": address.conversation_id}).scalar()
            return self._insert_outbox(conn, storable.clean_json(address.to_dict()), reply.to_payload(), ticket_id,
                                       self._now())

    def pending_outbox(self, limit: int = 50) -> list[OutboxItem]:
        with self._read_session() as s:
            rows = s.execute(
                select(OutboxRow).where(OutboxRow.status == "pending").order_by(OutboxRow.id).limit(limit)
            )
            return [_outbox_item(r) for r in rows.scalars()]

    def lease_outbox(self, limit: int = 50, seconds: float = 60.0) -> list[OutboxItem]:
        """Like pending_outbox, but each item returned is leased to this caller for `seconds`:
        other workers (processes sharing the database) skip it until mark_sent/mark_failed or the
        lease runs out (the worker died). Use this, not pending_outbox, in a delivery loop."""
        now = self._now()
        with self._tx() as s:
            stmt = (
                select(OutboxRow)
                .where(OutboxRow.status == "pending",
                       or_(OutboxRow.leased_until.is_(None), OutboxRow.leased_until <= now))
                .order_by(OutboxRow.id)
                .limit(limit)
            )
            if self.backend == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True)
            rows = list(s.execute(stmt).scalars())
            until = now + timedelta(seconds=seconds)
            for r in rows:
                r.leased_until = until
            return [_outbox_item(r) for r in rows]

    def mark_sent(self, item_id: int) -> None:
        with self._tx() as s:
            row = s.execute(select(OutboxRow).where(OutboxRow.id == item_id).with_for_update()).scalar_one_or_none()
            if row is None or row.status == "sent":
                return
            row.status, row.sent_at, row.attempts = "sent", self._now(), row.attempts + 1
            row.leased_until = None
            if row.ticket_id and s.get(TicketRow, row.ticket_id) is not None:
                self._audit(s, row.ticket_id, "system", "delivered", f"outbox #{row.id}")

    def mark_failed(self, item_id: int, error: str, retry_in: float | None = None, *, permanent: bool = False) -> None:
        """Count a failed attempt; the item stays leased for `retry_in` seconds (back-off shared by
        every worker and kept across restarts), then is due again. `permanent` (the platform says the
        user or chat is gone) makes it dead: kept, listed in the console, sent again only on request."""
        with self._tx() as s:
            row = s.execute(select(OutboxRow).where(OutboxRow.id == item_id).with_for_update()).scalar_one_or_none()
            if row is None or row.status != "pending":
                return
            row.attempts += 1
            row.last_error = storable.clean_text(error or "")[:1000]
            row.leased_until = self._now() + timedelta(seconds=retry_in) if retry_in else None
            if permanent or (self._max_attempts is not None and row.attempts >= self._max_attempts):
                row.status, row.leased_until = "dead", None
            if row.ticket_id and s.get(TicketRow, row.ticket_id) is not None:
                action = "delivery_dead" if row.status == "dead" else "delivery_failed"
                self._audit(s, row.ticket_id, "system", action,
                            f"outbox #{row.id} attempt {row.attempts}: {row.last_error[:200]}")

    def retry_outbox(self, item_id: int, actor: str = "system") -> bool:
        """Make a dead or waiting item due now (the console's retry button). False: no such item
        or already sent."""
        with self._tx() as s:
            row = s.execute(select(OutboxRow).where(OutboxRow.id == item_id).with_for_update()).scalar_one_or_none()
            if row is None or row.status == "sent":
                return False
            row.status, row.leased_until = "pending", None
            if row.ticket_id and s.get(TicketRow, row.ticket_id) is not None:
                self._audit(s, row.ticket_id, actor, "delivery_retry", f"outbox #{row.id}")
            return True

    def undelivered(self, limit: int = 100, ticket_id: str | None = None) -> list[UndeliveredItem]:
        """Dead items and pending ones that have failed at least once, oldest first."""
        with self._read_session() as s:
            stmt = (select(OutboxRow)
                    .where(or_(OutboxRow.status == "dead", and_(OutboxRow.status == "pending", OutboxRow.attempts > 0)))
                    .order_by(OutboxRow.id).limit(limit))
            if ticket_id is not None:
                stmt = stmt.where(OutboxRow.ticket_id == ticket_id)
            return [UndeliveredItem(id=int(r.id), address=Address.from_dict(r.address), reply=dict(r.reply),
                                    attempts=r.attempts, created_at=r.created_at, status=r.status,
                                    last_error=r.last_error, ticket_id=r.ticket_id, next_attempt_at=r.leased_until)
                    for r in s.execute(stmt).scalars()]

    def outbox_counts(self) -> dict[str, int]:
        """How many items wait (pending), of which have failed at least once (failing), and are dead."""
        with self._read() as conn:
            failed = func.sum(case((OutboxRow.attempts > 0, 1), else_=0))
            rows = conn.execute(select(OutboxRow.status, func.count(), failed)
                                .where(OutboxRow.status != "sent").group_by(OutboxRow.status)).all()
        by_status = {status: (int(n), int(f or 0)) for status, n, f in rows}
        pending, failing = by_status.get("pending", (0, 0))
        return {"pending": pending, "failing": failing, "dead": by_status.get("dead", (0, 0))[0]}

    def outbox_status(self, item_id: int) -> dict[str, Any] | None:
        """status, attempts, last_error, sent_at of one outbox item (for tests and the console)."""
        with self._read_session() as s:
            r = s.get(OutboxRow, item_id)
            if r is None:
                return None
            return {"status": r.status, "attempts": r.attempts, "last_error": r.last_error,
                    "sent_at": r.sent_at, "ticket_id": r.ticket_id}

    # ------------------------------------------------------------ console sessions

    def revoke_session(self, sid: str, expires_at: datetime) -> None:
        """Refuse the console session `sid` from now until `expires_at` (logout); forgets expired ones."""
        now, table = self._now(), RevokedSessionRow.__table__
        # IntegrityError: the same session revoked at once by another worker
        with contextlib.suppress(IntegrityError), self._write() as conn:
            conn.execute(table.delete().where(table.c.expires_at < now))
            if conn.execute(select(table.c.sid).where(table.c.sid == sid[:64])).first() is None:
                conn.execute(insert(table).values(sid=sid[:64], expires_at=storable.as_utc(expires_at)))

    def session_revoked(self, sid: str) -> bool:
        with self._read() as conn:
            row = conn.execute(select(RevokedSessionRow.sid).where(RevokedSessionRow.sid == sid[:64])).first()
        return row is not None


# ---------------------------------------------------------------- prebuilt Core statements

_C, _M, _T, _A = ConversationRow.__table__, MessageRow.__table__, TicketRow.__table__, AuditRow.__table__
# open or claimed; spelled with plain comparisons, not IN: an IN list is rendered anew at every
# execution (an "expanding" parameter), these compile once.
_ACTIVE = or_(*(_T.c.status == status for status in ACTIVE_STATUSES))


class _Q:
    conversation_set_address = update(_C).where(_C.c.id == bindparam("cid")).values(address=bindparam("address"))
    state_select = select(_C.c.state, _C.c.updated_at).where(_C.c.id == bindparam("cid"))
    state_update = (update(_C).where(_C.c.id == bindparam("cid"))
                    .values(state=bindparam("state"), updated_at=bindparam("now")))
    dedupe_select = select(_M.c.id).where(_M.c.conversation_id == bindparam("cid"),
                                          _M.c.dedupe_key == bindparam("key"))
    active_ticket_id = (select(_T.c.id).where(_T.c.conversation_id == bindparam("cid"),
                                              _ACTIVE).limit(1))
    active_ticket_row = (select(_T).where(_T.c.conversation_id == bindparam("cid"),
                                          _ACTIVE).limit(1))
    ticket_exists = select(_T.c.id).where(_T.c.id == bindparam("tid"))
    ticket_row = select(_T).where(_T.c.id == bindparam("tid"))
    ticket_insert = insert(_T)
    ticket_row_locked = select(_T).where(_T.c.id == bindparam("tid")).with_for_update()
    ticket_update = update(_T).where(_T.c.id == bindparam("tid"))
    conversation_row = select(_C.c.address, _C.c.state).where(_C.c.id == bindparam("cid"))
    outbox_insert = insert(OutboxRow.__table__).returning(OutboxRow.__table__.c.id)
    messages_link_ticket = (update(_M).where(_M.c.conversation_id == bindparam("cid"), _M.c.ticket_id.is_(None))
                            .values(ticket_id=bindparam("tid")))
    message_insert = insert(_M).returning(_M.c.id)
    audit_insert = insert(_A)
    message_mark_handled = update(_M).where(_M.c.id == bindparam("mid")).values(handled=True)
    messages_unhandled = select(_M).where(_M.c.handled.is_(False)).order_by(_M.c.id)
    messages_all = select(_M).where(_M.c.conversation_id == bindparam("cid")).order_by(_M.c.id)
    messages_last = (select(_M).where(_M.c.conversation_id == bindparam("cid"))
                     .order_by(_M.c.id.desc()).limit(bindparam("n")))
    message_max_id = select(func.max(_M.c.id))
    message_index_after = (select(_M.c.id, _M.c.conversation_id).where(_M.c.id > bindparam("after"))
                           .order_by(_M.c.id).limit(bindparam("n")))
    messages_by_id = select(_M).where(_M.c.id.in_(bindparam("ids", expanding=True))).order_by(_M.c.id)
    conversation_context = (
        select(_C.c.address, _C.c.state, _C.c.updated_at,
               select(_T.c.id).where(_T.c.conversation_id == _C.c.id, _ACTIVE)
               .limit(1).scalar_subquery().label("ticket_id"),
               select(_M.c.id).where(_M.c.conversation_id == _C.c.id, _M.c.dedupe_key == bindparam("key"))
               .limit(1).scalar_subquery().label("dup_id"))
        .where(_C.c.id == bindparam("cid")).with_for_update(of=_C)
    )
    handled_and_state = select(  # one row, also when the message or the conversation does not exist
        select(_M.c.handled).where(_M.c.id == bindparam("mid")).scalar_subquery().label("handled"),
        select(_C.c.state).where(_C.c.id == bindparam("cid")).scalar_subquery().label("state"),
        select(_C.c.updated_at).where(_C.c.id == bindparam("cid")).scalar_subquery().label("updated_at"),
    )
    # PostgreSQL (complete_turn): mark the user message handled and read the open ticket, one statement.
    pg_mark_handled_active_ticket = (
        select(active_ticket_id.scalar_subquery())
        .add_cte(update(_M).where(_M.c.id == bindparam("mid")).values(handled=True).cte("handled"))
    )
    advisory_lock = sql_text("SELECT pg_advisory_lock(:k)")
    advisory_unlock = sql_text("SELECT pg_advisory_unlock(:k)")
    messages_after = (select(_M).where(_M.c.conversation_id == bindparam("cid"), _M.c.id > bindparam("after"))
                      .order_by(_M.c.id))


@dataclass(slots=True)
class _TurnLock:
    """A turn's advisory lock: its connection, key, the transaction the lock statement began (until
    the turn's first store call takes it over) and whether the lock is still held."""

    conn: Connection
    key: int
    tx: Any = None
    locked: bool = False


def _lock_key(name: bytes) -> int:
    return int.from_bytes(hashlib.sha256(name).digest()[:8], "big", signed=True)


# _ensure_conversation's answer for a conversation row this transaction just created.
_NEW_CONVERSATION = SimpleNamespace(address=None, state=None, updated_at=None, ticket_id=None, dup_id=None)


def _insert_ignoring_duplicates(dialect: str):
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:  # pragma: no cover - other databases: a plain insert (a race raises IntegrityError)
        return insert(_C)
    return dialect_insert(_C).on_conflict_do_nothing(index_elements=["id"])


# ---------------------------------------------------------------- rows -> values


def _message(r: MessageRow) -> StoredMessage:
    return StoredMessage(id=int(r.id), conversation_id=r.conversation_id, role=r.role, text=r.text,  # type: ignore[arg-type]
                         created_at=r.created_at, ticket_id=r.ticket_id, handled=bool(r.handled),
                         meta=dict(r.meta or {}))


def _ticket(r: TicketRow) -> Ticket:
    return Ticket(id=r.id, conversation_id=r.conversation_id, address=Address.from_dict(r.address),
                  status=r.status, priority=r.priority, reason=r.reason, summary=dict(r.summary or {}),  # type: ignore[arg-type]
                  created_at=r.created_at, updated_at=r.updated_at, operator=r.operator,
                  reannounced_at=r.reannounced_at)


def _outbox_item(r: OutboxRow) -> OutboxItem:
    return OutboxItem(id=int(r.id), address=Address.from_dict(r.address), reply=dict(r.reply), attempts=r.attempts,
                      created_at=r.created_at)


def _audit(r: AuditRow) -> AuditEntry:
    return AuditEntry(ticket_id=r.ticket_id, actor=r.actor, action=r.action, detail=r.detail, at=r.at)


def _actor(role: str, meta: dict[str, Any] | None = None) -> str:
    """The audit actor of a transcript message: user | bot | system | operator:<name>."""
    if role == "operator":
        name = (meta or {}).get("operator")
        return f"operator:{name}" if name else "operator"
    return role


class SqlTicketTransaction:
    """bot.ports.TicketTransaction on one connection in a write transaction (rows read are locked on
    PostgreSQL with FOR UPDATE; SQLite's BEGIN IMMEDIATE already holds the database's write lock)."""

    def __init__(self, store: SqlHandoffStore, conn: Connection, now: datetime, conversation: Address | None) -> None:
        self._store, self._conn, self.now, self._conversation = store, conn, now, conversation

    def active_ticket(self) -> Ticket | None:
        assert self._conversation is not None, "ticket_transaction(conversation) gives an active ticket"
        row = self._conn.execute(_Q.active_ticket_row, {"cid": self._conversation.conversation_id}).first()
        return _ticket(row) if row else None

    def ticket(self, ticket_id: str) -> Ticket | None:
        row = self._conn.execute(_Q.ticket_row_locked, {"tid": ticket_id}).first()
        return _ticket(row) if row else None

    def ticket_id_taken(self, ticket_id: str) -> bool:
        return self._conn.execute(_Q.ticket_exists, {"tid": ticket_id}).first() is not None

    def add_ticket(self, ticket: Ticket) -> tuple[Ticket, int]:
        values = _ticket_values(ticket)
        self._conn.execute(_Q.ticket_insert, {"id": ticket.id, "conversation_id": ticket.conversation_id,
                                              "created_at": ticket.created_at, **values})
        linked = self._conn.execute(_Q.messages_link_ticket, {"cid": ticket.conversation_id, "tid": ticket.id}).rowcount
        return _stored_ticket(ticket, values), linked

    def save_ticket(self, ticket: Ticket) -> Ticket:
        values = _ticket_values(ticket)
        self._conn.execute(_Q.ticket_update, {"tid": ticket.id, **values})
        return _stored_ticket(ticket, values)

    def audit(self, ticket_id: str, actor: str, action: str, detail: str = "") -> None:
        self._store._insert_audit(self._conn, ticket_id, actor, action, detail)

    def conversation(self, conversation_id: str) -> tuple[Address | None, str | None]:
        row = self._conn.execute(_Q.conversation_row, {"cid": conversation_id}).first()
        if row is None:
            return None, None
        return Address.from_dict(row.address), (row.state or {}).get("language")

    def add_message(self, address: Address, role: Role, text: str, meta: dict[str, Any],
                    ticket_id: str | None) -> StoredMessage:
        return self._store._insert_message(self._conn, address.conversation_id, role, text, handled=True,
                                           meta=meta, ticket_id=ticket_id)

    def enqueue(self, address: Address, reply: Reply, ticket_id: str | None) -> int:
        return self._store._insert_outbox(self._conn, storable.clean_json(address.to_dict()), reply.to_payload(),
                                          ticket_id, self._store._now())


def _ticket_values(t: Ticket) -> dict[str, Any]:
    return {"address": storable.clean_json(t.address.to_dict()), "status": t.status, "priority": t.priority,
            "reason": t.reason, "summary": storable.clean_json(dict(t.summary or {})), "operator": t.operator,
            "updated_at": t.updated_at, "reannounced_at": t.reannounced_at}


def _stored_ticket(t: Ticket, values: dict[str, Any]) -> Ticket:
    return replace(t, address=Address.from_dict(values["address"]), summary=dict(values["summary"]))
