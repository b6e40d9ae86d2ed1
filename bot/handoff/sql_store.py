"""SqlHandoffStore: ConversationStore + HandoffService on SQLAlchemy 2 (SQLite or PostgreSQL).

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

import hashlib
import logging
import threading
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from sqlalchemy import text as sql_text
from sqlalchemy import bindparam, case, create_engine, event, func, insert, or_, select, update
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from bot.handoff import common
from bot.handoff.migrate import current_revision, upgrade_to_head
from bot.handoff.models import AuditRow, ConversationRow, MessageRow, OutboxRow, RevokedSessionRow, TicketRow
from bot.messages import Address, Reply, utcnow
from bot.ports import (
    AuditEntry,
    ConversationState,
    OutboxItem,
    Role,
    StoredMessage,
    Ticket,
    TicketDetail,
    TicketNotFound,
)

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 15_000


def normalize_url(url: str) -> str:
    """Accept postgres:// and postgresql:// (psycopg 3 is the installed driver)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


class SqlHandoffStore:
    """Both roles of bot.ports on a SQL database.

    `SqlHandoffStore(url)`: any SQLAlchemy URL (sqlite:///path, postgresql+psycopg://...).
    `clock()` returns an aware UTC datetime (tests pass a fake clock).
    `max_attempts`: failed deliveries before an outbox item is given up ('failed').
    `migrate=False` skips the Alembic upgrade (the schema must already be at head).
    `sqlite_synchronous`: NORMAL (default; durable when the process dies) or FULL (also on power loss).
    """

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], datetime] = utcnow,
        max_attempts: int = common.DEFAULT_MAX_ATTEMPTS,
        migrate: bool = True,
        echo: bool = False,
        sqlite_synchronous: str = "NORMAL",
    ) -> None:
        self.url: URL = make_url(normalize_url(url))
        self._clock = clock
        self._max_attempts = max_attempts
        synchronous = sqlite_synchronous.upper()
        self.engine: Engine = _create_engine(self.url, echo=echo, synchronous=synchronous)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False, autoflush=True)
        self._insert_conversation = _insert_ignoring_duplicates(self.engine.dialect.name)
        self._local_exclusive = common.TryLocks()
        self._turn = threading.local()  # .conn: the connection holding this thread's turn lock (PostgreSQL)
        self.revision = upgrade_to_head(self.engine) if migrate else None

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
            with self.engine.connect() as conn:
                rev = current_revision(conn)
            return {"ok": rev is not None, "backend": self.backend, "revision": rev}
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            return {"ok": False, "backend": self.backend, "error": type(exc).__name__}

    # ------------------------------------------------------------ plumbing

    def _now(self) -> datetime:
        return common.as_utc(self._clock())

    @contextmanager
    def _turn_transaction(self) -> Iterator[Connection | None]:
        """Inside a turn on PostgreSQL (conversation_turn): a transaction on the connection that
        holds the turn's lock (one pool checkout a turn, not one a transaction). None elsewhere."""
        conn: Connection | None = getattr(self._turn, "conn", None)
        if conn is None or conn.in_transaction():
            yield None
            return
        with conn.begin():
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read-only transaction. On SQLite it begins DEFERRED, not IMMEDIATE: under WAL a reader
        sees a consistent snapshot without taking the write lock, so the console's polling and
        the widget's event feed never queue behind the writer."""
        with self._turn_transaction() as turn:
            if turn is not None:
                yield turn
                return
        with self.engine.connect().execution_options(pbxbot_read_only=True) as conn, conn.begin():
            yield conn

    @contextmanager
    def _read_session(self) -> Iterator[Session]:
        with self._read() as conn, Session(bind=conn, expire_on_commit=False) as session:
            yield session

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction (BEGIN IMMEDIATE on SQLite)."""
        with self._turn_transaction() as turn:
            if turn is not None:
                yield turn
                return
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        """An ORM session in one write transaction (ticket operations)."""
        with self._sessions() as session, session.begin():
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
        addr_json = common.clean_json(address.to_dict())
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
        values = {"conversation_id": conversation_id, "role": role, "text": common.clean_text(text),
                  "created_at": self._now(), "ticket_id": ticket_id, "handled": handled,
                  "dedupe_key": dedupe_key, "meta": common.clean_json(dict(meta or {}))}
        new_id = conn.execute(_Q.message_insert, values).scalar_one()
        values.pop("dedupe_key")
        return StoredMessage(id=int(new_id), **values)

    def _insert_audit(self, conn: Connection, ticket_id: str, actor: str, action: str, detail: str = "") -> None:
        conn.execute(_Q.audit_insert, {"ticket_id": ticket_id, "actor": actor, "action": action,
                                       "detail": detail, "at": self._now()})

    def _ticket(self, s: Session, ticket_id: str, *, lock: bool = True) -> TicketRow:
        stmt = select(TicketRow).where(TicketRow.id == common.normalize_ticket_id(ticket_id))
        if lock:
            stmt = stmt.with_for_update()
        row = s.execute(stmt).scalar_one_or_none()
        if row is None:
            raise common.not_found(ticket_id)
        return row

    def _audit(self, s: Session, ticket_id: str, actor: str, action: str, detail: str = "") -> None:
        s.flush()  # the ticket row first (foreign key)
        self._insert_audit(s.connection(), ticket_id, actor, action, detail)

    def _enqueue(self, s: Session, address: Address, reply: Reply, ticket_id: str | None) -> int:
        row = OutboxRow(address=common.clean_json(address.to_dict()),
                        reply=common.clean_json(reply.to_payload()), ticket_id=ticket_id,
                        status="pending", attempts=0, created_at=self._now())
        s.add(row)
        s.flush()
        return int(row.id)

    # ------------------------------------------------------------ ConversationStore

    def get_state(self, conversation_id: str) -> ConversationState | None:
        with self._read() as conn:
            row = conn.execute(_Q.state_select, {"cid": conversation_id}).first()
        if row is None or row.state is None:
            return None
        return common.state_from_json(row.state, row.updated_at)

    def save_state(self, state: ConversationState) -> None:
        now = self._now()
        data = common.clean_json(common.state_to_json(state))
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
            dedupe_key = common.clean_text(dedupe_key)
        try:
            with self._write() as conn:
                row = self._ensure_conversation(conn, address, self._now(), refresh=True, dedupe_key=dedupe_key)
                state = common.state_from_json(row.state, row.updated_at) if row.state else None
                if row.dup_id is not None:
                    return None, state
                ticket_id = row.ticket_id
                msg = self._insert_message(conn, cid, role, text, handled=handled, meta=meta,
                                           ticket_id=ticket_id, dedupe_key=dedupe_key)
                if ticket_id is not None:
                    self._insert_audit(conn, ticket_id, common.actor_for_role(role, meta), f"{role}_message",
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
    ) -> list[StoredMessage]:
        cid = address.conversation_id
        now = self._now()
        data = common.clean_json(common.state_to_json(state)) if state is not None else None
        out: list[StoredMessage] = []
        with self._write() as conn:
            # No _ensure_conversation: record_message created the row earlier in this turn, and
            # this transaction only updates that row and inserts after it.
            if data is not None:
                conn.execute(_Q.state_update, {"cid": cid, "state": data, "now": now})
            ticket_id = conn.execute(_Q.active_ticket_id, {"cid": cid}).scalar() if replies else None
            for text, meta in replies:
                msg = self._insert_message(conn, cid, "bot", text, handled=True, meta=meta, ticket_id=ticket_id)
                if ticket_id is not None:
                    self._insert_audit(conn, ticket_id, "bot", "bot_message", f"message #{msg.id}")
                out.append(msg)
            conn.execute(_Q.message_mark_handled, {"mid": message_id})
        if state is not None:
            state.updated_at = now
        return out

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
        if self.backend == "postgresql":
            with self._advisory_lock(name.encode(), wait=False) as got:
                yield got
            return
        with self._local_exclusive.try_hold(name) as got:
            yield got

    @contextmanager
    def conversation_turn(self, conversation_id: str) -> Iterator[None]:
        """PostgreSQL: a session advisory lock held for the turn, so that two messages of one
        conversation reaching two processes or nodes at once are answered one after the other;
        released by the server if the holder dies. Lock and unlock are one statement each outside
        any transaction, and the turn's store calls in this thread run on the lock's connection
        (_turn_transaction). SQLite serves one process, where the core's own lock is enough."""
        if self.backend != "postgresql":
            yield
            return
        key = {"k": _lock_key(b"turn\0" + conversation_id.encode())}
        with self.engine.connect() as conn:
            default_level = conn.default_isolation_level
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(sql_text("SELECT pg_advisory_lock(:k)"), key)
            conn.commit()  # ends SQLAlchemy's autobegun transaction; nothing is sent in autocommit
            conn.execution_options(isolation_level=default_level)
            previous = getattr(self._turn, "conn", None)
            self._turn.conn = conn
            try:
                yield
            finally:
                self._turn.conn = previous
                try:  # the pool resets the isolation level when the connection goes back
                    conn.execution_options(isolation_level="AUTOCOMMIT").execute(
                        sql_text("SELECT pg_advisory_unlock(:k)"), key)
                    conn.commit()
                except Exception:  # noqa: BLE001 - a dropped connection released it already
                    log.warning("releasing a turn lock failed; dropping its connection")
                    conn.invalidate()

    @contextmanager
    def _advisory_lock(self, name: bytes, *, wait: bool) -> Iterator[bool]:
        """A PostgreSQL session advisory lock on a connection of its own; True when this holder
        got it (always, with wait)."""
        key = _lock_key(name)
        with self.engine.connect() as conn:
            if wait:
                conn.execute(sql_text("SELECT pg_advisory_lock(:k)"), {"k": key})
                got = True
            else:
                got = bool(conn.execute(sql_text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
            conn.commit()
            try:
                yield got
            finally:
                if got:
                    try:
                        conn.execute(sql_text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                        conn.commit()
                    except Exception:  # noqa: BLE001 - a dropped connection released it already
                        log.warning("releasing an advisory lock failed; dropping its connection")
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

    # ------------------------------------------------------------ HandoffService

    def open_ticket(
        self, address: Address, *, reason: str, priority: str, summary: dict[str, Any]
    ) -> Ticket:
        """Core statements on the turn's connection (an incident turn opens a ticket: on SQLite the
        ORM's unit of work cost more CPU here than the rest of the turn's SQL together)."""
        common.check_priority(priority)
        cid = address.conversation_id
        summary = common.clean_json(dict(summary or {}))
        with self._write() as conn:
            now = self._now()
            self._ensure_conversation(conn, address, now, refresh=True)  # locks: one opener at a time
            row = conn.execute(_Q.active_ticket_row, {"cid": cid}).first()
            if row is not None:
                ticket = _ticket(row)
                changed = []
                if priority == "urgent" and ticket.priority != "urgent":
                    ticket.priority = "urgent"
                    changed.append("priority urgent")
                merged = common.merge_summary(ticket.summary, summary)
                if merged != ticket.summary:
                    ticket.summary = merged
                    changed.append("summary")
                if changed:
                    ticket.updated_at = now
                    conn.execute(_Q.ticket_escalate, {"tid": ticket.id, "priority": ticket.priority,
                                                      "summary": merged, "now": now})
                    self._insert_audit(conn, ticket.id, "bot", "updated",
                                       f"escalated again ({reason}): {', '.join(changed)}")
                return ticket
            tid = common.new_ticket_id(now)
            while conn.execute(_Q.ticket_exists, {"tid": tid}).first() is not None:
                tid = common.new_ticket_id(now)
            values = {"id": tid, "conversation_id": cid, "address": common.clean_json(address.to_dict()),
                      "status": "open", "priority": priority, "reason": reason, "summary": summary,
                      "operator": None, "created_at": now, "updated_at": now, "reannounced_at": None}
            conn.execute(_Q.ticket_insert, values)
            linked = conn.execute(_Q.messages_link_ticket, {"cid": cid, "tid": tid}).rowcount
            self._insert_audit(conn, tid, "bot", "opened", f"reason={reason} priority={priority}; {linked} messages linked")
            return Ticket(id=tid, conversation_id=cid, address=Address.from_dict(values["address"]), status="open",
                          priority=priority, reason=reason, summary=dict(summary), created_at=now,  # type: ignore[arg-type]
                          updated_at=now, operator=None, reannounced_at=None)

    def merge_facts(self, ticket_id: str, facts: dict[str, Any]) -> Ticket:
        """Facts the user gave after the ticket opened fill the gaps of its summary (never overwrite)."""
        facts = common.clean_json(dict(facts or {}))
        with self._write() as conn:
            row = conn.execute(_Q.ticket_row, {"tid": ticket_id}).first()
            if row is None:
                raise TicketNotFound(ticket_id)
            ticket = _ticket(row)
            merged = common.merge_summary(ticket.summary, facts)
            if merged != ticket.summary:
                now = self._now()
                conn.execute(_Q.ticket_escalate, {"tid": ticket.id, "priority": ticket.priority, "summary": merged, "now": now})
                self._insert_audit(conn, ticket.id, "bot", "updated", f"facts from the user: {', '.join(sorted(facts))}")
                ticket.summary, ticket.updated_at = merged, now
            return ticket

    def active_ticket(self, conversation_id: str) -> Ticket | None:
        with self._read() as conn:
            row = conn.execute(_Q.active_ticket_row, {"cid": conversation_id}).first()
        return _ticket(row) if row else None

    def claim(self, ticket_id: str, operator: str) -> Ticket:
        with self._tx() as s:
            row = self._ticket(s, ticket_id)
            if common.check_claim(row.id, row.status, row.operator, operator):
                row.status, row.operator, row.updated_at = "claimed", operator, self._now()
                self._audit(s, row.id, common.operator_actor(operator), "claimed")
            return _ticket(row)

    def reply(self, ticket_id: str, operator: str, text: str) -> Ticket:
        with self._tx() as s:
            row = self._ticket(s, ticket_id)
            common.check_reply(row.id, row.status)
            now = self._now()
            actor = common.operator_actor(operator)
            if row.status == "open":  # replying is taking the ticket
                row.status, row.operator = "claimed", operator
                self._audit(s, row.id, actor, "claimed", "by replying")
            conv = s.get(ConversationRow, row.conversation_id)
            address = Address.from_dict(conv.address if conv is not None else row.address)
            language = (row.summary or {}).get("language")
            if language not in ("ja", "en") and conv is not None and conv.state:
                language = conv.state.get("language")
            reply = common.operator_reply(address, language, text)
            s.flush()
            # The reply JSON rides along in the transcript: the widget's feed shows it from there.
            msg = self._insert_message(s.connection(), row.conversation_id, "operator", text, handled=True,
                                       meta={"operator": operator, "reply": reply.to_payload()}, ticket_id=row.id)
            self._enqueue(s, address, reply, row.id)
            row.updated_at = now
            self._audit(s, row.id, actor, "replied", f"message #{msg.id}")
            return _ticket(row)

    def resolve(self, ticket_id: str, operator: str) -> Ticket:
        with self._tx() as s:
            row = self._ticket(s, ticket_id)
            common.check_resolve(row.id, row.status)
            row.status, row.updated_at = "resolved", self._now()
            if not row.operator:
                row.operator = operator
            self._audit(s, row.id, common.operator_actor(operator), "resolved")
            return _ticket(row)

    def list_queue(self, statuses: tuple[str, ...] = ("open", "claimed")) -> list[Ticket]:
        with self._read_session() as s:
            urgent_first = case((TicketRow.priority == "urgent", 0), else_=1)
            rows = s.execute(
                select(TicketRow)
                .where(TicketRow.status.in_(tuple(statuses)))
                .order_by(urgent_first, TicketRow.created_at, TicketRow.id)
            )
            return [_ticket(r) for r in rows.scalars()]

    def get_detail(self, ticket_id: str) -> TicketDetail | None:
        with self._read_session() as s:
            row = s.get(TicketRow, common.normalize_ticket_id(ticket_id))
            if row is None:
                return None
            msgs = s.execute(select(MessageRow).where(MessageRow.ticket_id == row.id).order_by(MessageRow.id))
            audit = s.execute(select(AuditRow).where(AuditRow.ticket_id == row.id).order_by(AuditRow.id))
            return TicketDetail(ticket=_ticket(row), transcript=[_message(m) for m in msgs.scalars()],
                                audit=[_audit(a) for a in audit.scalars()])

    def overdue_urgent(self, now: datetime, older_than_minutes: float) -> list[Ticket]:
        cutoff = common.as_utc(now) - timedelta(minutes=older_than_minutes)
        with self._read_session() as s:
            rows = s.execute(
                select(TicketRow)
                .where(
                    TicketRow.priority == "urgent",
                    TicketRow.status == "open",
                    or_(
                        TicketRow.reannounced_at <= cutoff,
                        (TicketRow.reannounced_at.is_(None)) & (TicketRow.created_at <= cutoff),
                    ),
                )
                .order_by(TicketRow.created_at, TicketRow.id)
            )
            return [_ticket(r) for r in rows.scalars()]

    def mark_reannounced(self, ticket_id: str, at: datetime) -> None:
        with self._tx() as s:
            row = self._ticket(s, ticket_id)
            row.reannounced_at = common.as_utc(at)
            self._audit(s, row.id, "system", "reannounced", "unclaimed urgent ticket announced again")

    # ------------------------------------------------------------ outbox

    def enqueue(self, address: Address, reply: Reply) -> int:
        with self._tx() as s:
            return self._enqueue(s, address, reply, common.ticket_id_of_reply(reply))

    def pending_outbox(self, limit: int = 50) -> list[OutboxItem]:
        with self._read_session() as s:
            rows = s.execute(
                select(OutboxRow).where(OutboxRow.status == "pending").order_by(OutboxRow.id).limit(limit)
            )
            return [
                OutboxItem(id=int(r.id), address=Address.from_dict(r.address), reply=dict(r.reply),
                           attempts=r.attempts, created_at=r.created_at)
                for r in rows.scalars()
            ]

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
            return [
                OutboxItem(id=int(r.id), address=Address.from_dict(r.address), reply=dict(r.reply),
                           attempts=r.attempts, created_at=r.created_at)
                for r in rows
            ]

    def mark_sent(self, item_id: int) -> None:
        with self._tx() as s:
            row = s.execute(select(OutboxRow).where(OutboxRow.id == item_id).with_for_update()).scalar_one_or_none()
            if row is None or row.status == "sent":
                return
            row.status, row.sent_at, row.attempts = "sent", self._now(), row.attempts + 1
            row.leased_until = None
            if row.ticket_id and s.get(TicketRow, row.ticket_id) is not None:
                self._audit(s, row.ticket_id, "system", "delivered", f"outbox #{row.id}")

    def mark_failed(self, item_id: int, error: str, retry_in: float | None = None) -> None:
        """Count a failed attempt; the item stays leased for `retry_in` seconds (back-off shared by
        every worker and kept across restarts), then is due again, until max_attempts."""
        with self._tx() as s:
            row = s.execute(select(OutboxRow).where(OutboxRow.id == item_id).with_for_update()).scalar_one_or_none()
            if row is None or row.status != "pending":
                return
            row.attempts += 1
            row.last_error = common.clean_text(error or "")[:1000]
            row.leased_until = self._now() + timedelta(seconds=retry_in) if retry_in else None
            if row.attempts >= self._max_attempts:
                row.status = "failed"
            if row.ticket_id and s.get(TicketRow, row.ticket_id) is not None:
                self._audit(s, row.ticket_id, "system", "delivery_failed",
                            f"outbox #{row.id} attempt {row.attempts}: {row.last_error[:200]}")

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
        try:
            with self._write() as conn:
                conn.execute(table.delete().where(table.c.expires_at < now))
                if conn.execute(select(table.c.sid).where(table.c.sid == sid[:64])).first() is None:
                    conn.execute(insert(table).values(sid=sid[:64], expires_at=common.as_utc(expires_at)))
        except IntegrityError:  # the same session revoked at once by another worker
            pass

    def session_revoked(self, sid: str) -> bool:
        with self._read() as conn:
            row = conn.execute(select(RevokedSessionRow.sid).where(RevokedSessionRow.sid == sid[:64])).first()
        return row is not None


# ---------------------------------------------------------------- prebuilt Core statements

_C, _M, _T, _A = ConversationRow.__table__, MessageRow.__table__, TicketRow.__table__, AuditRow.__table__
# open or claimed; spelled with plain comparisons, not IN: an IN list is rendered anew at every
# execution (an "expanding" parameter), these compile once.
_ACTIVE = or_(*(_T.c.status == status for status in common.ACTIVE_STATUSES))


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
    ticket_escalate = (update(_T).where(_T.c.id == bindparam("tid"))
                       .values(priority=bindparam("priority"), summary=bindparam("summary"), updated_at=bindparam("now")))
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
    messages_after = (select(_M).where(_M.c.conversation_id == bindparam("cid"), _M.c.id > bindparam("after"))
                      .order_by(_M.c.id))


def _lock_key(name: bytes) -> int:
    return int.from_bytes(hashlib.sha256(name).digest()[:8], "big", signed=True)


class _NewConversation:
    """_ensure_conversation's answer for a conversation row this transaction just created."""

    address = state = updated_at = ticket_id = dup_id = None


_NEW_CONVERSATION = _NewConversation()


def _insert_ignoring_duplicates(dialect: str):
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:  # pragma: no cover - other databases: a plain insert (a race raises IntegrityError)
        return insert(_C)
    return dialect_insert(_C).on_conflict_do_nothing(index_elements=["id"])


# ---------------------------------------------------------------- engine


def _create_engine(url: URL, *, echo: bool, synchronous: str = "NORMAL") -> Engine:
    if synchronous not in ("NORMAL", "FULL", "EXTRA"):
        raise ValueError(f"sqlite_synchronous must be NORMAL, FULL or EXTRA, not {synchronous!r}")
    if url.get_backend_name() != "sqlite":
        # A turn holds one connection (its advisory lock, its transactions); the pool keeps one per
        # core thread and the background loops without opening and closing overflow connections.
        return create_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=20, future=True)

    database = url.database or ""
    memory = database in ("", ":memory:") or database.startswith("file::memory:")
    if memory:
        engine = create_engine(url, echo=echo, poolclass=StaticPool,
                               connect_args={"check_same_thread": False})
    else:
        Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo, connect_args={"check_same_thread": False,
                                                             "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001
        dbapi_conn.isolation_level = None  # the "begin" listener issues BEGIN itself
        cur = dbapi_conn.cursor()
        if not memory:
            cur.execute("PRAGMA journal_mode=WAL")
            # NORMAL under WAL: a commit survives the process dying (kill -9, crash); FULL also
            # survives the machine losing power, at one more fsync per commit.
            cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        # Take the write lock up front: a read-then-write transaction can then never fail
        # with SQLITE_BUSY half way when the CLI and the server write at the same time.
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("pbxbot_read_only") else "BEGIN IMMEDIATE")

    return engine


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


def _audit(r: AuditRow) -> AuditEntry:
    return AuditEntry(ticket_id=r.ticket_id, actor=r.actor, action=r.action, detail=r.detail, at=r.at)
