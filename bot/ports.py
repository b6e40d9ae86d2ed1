"""The small interfaces (roles) the conversation core depends on, and their value types.

Implementations: retrieval.HybridRetriever (Retriever); handoff.SqlHandoffStore (ConversationStore,
TicketStore, Outbox) and handoff.HandoffService (Handoff: the ticket rules over a TicketStore);
channels.ChannelRegistry (ReplySender). Unit tests and `pbxbot chat` run the SQL store on an
in-memory SQLite database. Stdlib only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, ContextManager, Literal, Protocol, Sequence, runtime_checkable

from bot.messages import Address, InboundMessage, Reply

# ---------------------------------------------------------------- retrieval


@dataclass(frozen=True)
class Passage:
    chunk_id: str
    doc_id: str
    text: str
    score: float  # fused score, higher is better (not comparable across queries)
    title: str
    publisher: str
    url: str
    published: str | None
    language: str  # "ja" | "en"
    kind: str  # "source" (one official/news source) | "guide" (topic guide citing sources)
    carriers: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    heading: str = ""  # section heading path inside the document
    counterpart: str | None = None  # id of the other-language document
    facts: tuple[str, ...] = ()  # fact-sheet ids P... the document rests on
    # Section-level retrieval (all optional: a retriever that does not know them leaves them empty).
    section: str = ""  # "<doc_id>#<n>": the section this passage is (0 = the lead)
    section_facts: tuple[str, ...] = ()  # fact ids this section states
    question_score: float = 0.0  # cosine of the query to the closest of the section's questions
    sentence_scores: tuple[float, ...] = ()  # cosine of the query to each sentence (bot.text.split_sentences order)
    # Share of the query's words (weighted by rarity) each sentence contains, as the search analyses
    # words (Japanese inflections and synonyms included); same order as sentence_scores.
    sentence_coverage: tuple[float, ...] = ()
    # The learned question-sentence match of each sentence (retrieval/hybrid.py SentenceMatch), when
    # the retriever has one; same order.
    sentence_match: tuple[float, ...] = ()


@dataclass(frozen=True)
class SearchResult:
    query: str
    passages: tuple[Passage, ...]
    # Calibrated 0..1: how likely the top passage answers the query (see retrieval/confidence.py).
    confidence: float
    expanded_terms: tuple[str, ...] = ()
    # Share of the query's distinct words that no document contains at all ("Vietnam", "Teams"):
    # a sign that the sources do not cover the question (the answerability gate reads it).
    unknown_terms: float = 0.0
    # Names of products and companies the query mentions that are no term of the domain ("ドコモ",
    # "Teams"): the gate asks whether the chosen sentences mention them.
    names: tuple[str, ...] = ()


@runtime_checkable
class Retriever(Protocol):
    def search(
        self,
        query: str,
        k: int = 5,
        *,
        language: str | None = None,
        carrier: str | None = None,
        sentences_for: str | None = None,  # score the sentences against this text instead (HybridRetriever.search)
    ) -> SearchResult: ...

    def get_document(self, doc_id: str) -> dict[str, Any] | None:
        """Front matter + body of one document (for counterpart lookup), or None."""
        ...


# ---------------------------------------------------------------- conversation state

Role = Literal["user", "bot", "operator", "system"]


@dataclass
class StoredMessage:
    id: int
    conversation_id: str
    role: Role
    text: str
    created_at: datetime
    ticket_id: str | None = None
    handled: bool = True  # False: a user message whose reply was never produced (crash) -> reprocess
    meta: dict[str, Any] = field(default_factory=dict)
    outbox_id: int | None = None  # a bot reply owed through the outbox (complete_turn with outbox_lease)


@dataclass
class ConversationState:
    conversation_id: str
    address: Address
    language: str | None = None  # "ja" | "en", last detected
    carrier: str | None = None  # last carrier mentioned (ntt-east-west, ntt-com, kddi, softbank, ...)
    topics: list[str] = field(default_factory=list)  # recent topics, newest last
    failures: int = 0  # consecutive "that did not help"
    last_query: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)  # triage facts gathered: still_happening, noticed_at, vendor, ...
    updated_at: datetime | None = None


class TextEncoder(Protocol):
    """Sentence vectors for texts, as the retriever embeds queries (the intent classifier's
    features; one embedding of a message serves both)."""

    def encode_queries(self, texts: Sequence[str]) -> Any: ...  # (n, dim) array of unit rows

    @property
    def encoder_name(self) -> str: ...


class ConversationStore(Protocol):
    def get_state(self, conversation_id: str) -> ConversationState | None: ...
    def save_state(self, state: ConversationState) -> None: ...

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
        """Persist (commit) one message before anything else happens with it.

        Returns None when dedupe_key (channel message id) was already recorded: a retried webhook.
        If the conversation has an open ticket, the message is linked to it.
        """
        ...

    def begin_turn(
        self,
        address: Address,
        text: str,
        *,
        dedupe_key: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> tuple[StoredMessage | None, ConversationState | None]:
        """Start a turn in one transaction: record_message(address, "user", text, handled=False, ...)
        and read the conversation's state as it was before this message (None if it has none).
        The message is None for a duplicate (dedupe_key seen before)."""
        ...

    def complete_turn(
        self,
        address: Address,
        message_id: int,
        state: ConversationState | None,
        replies: Sequence[tuple[str, dict[str, Any]]],
        *,
        outbox_lease: float | None = None,
    ) -> list[StoredMessage]:
        """End a turn in one transaction: save `state` (when given), record the bot's `replies`
        ((text, meta) each, linked to an open ticket like record_message) and mark the user
        message `message_id` handled. All or nothing: on failure the message stays unhandled
        and recover_pending() answers it later. Returns the recorded replies, in order.

        With `outbox_lease` (seconds), each reply whose meta holds "reply" (Reply.to_payload())
        is also put in the outbox in the same transaction, leased for that long to the caller who
        sends it now (0: due at once); its item id is the returned message's outbox_id."""
        ...

    def resume_turn(self, message_id: int, conversation_id: str) -> tuple[bool, ConversationState | None]:
        """The start of a turn for a message recorded earlier (record(), then handle()): in one
        read, whether the user message has been answered (True when there is no such message) and
        the conversation's state (None when there is none)."""
        ...

    def mark_handled(self, message_id: int) -> None: ...
    def unhandled_messages(self) -> list[StoredMessage]: ...
    def transcript(self, conversation_id: str, limit: int | None = None) -> list[StoredMessage]: ...
    def messages_after(self, conversation_id: str, after_id: int) -> list[StoredMessage]: ...

    def exclusive(self, name: str) -> ContextManager[bool]:
        """A non-blocking lock shared by every process on this store: `with store.exclusive("x") as
        mine:` gives True to one holder at a time and False to the others (who skip the job)."""
        ...

    def conversation_turn(self, conversation_id: str) -> ContextManager[None]:
        """A blocking lock shared by every process on this store: one turn of a conversation at a
        time, also when two of its messages reach two worker processes at once. The caller holds
        its own in-process lock for the conversation first, so few threads ever wait here."""
        ...

    # The widget's live feed: every server process follows the transcript table itself, so an
    # operator reply written by one worker reaches a browser connected to another.
    def latest_message_id(self) -> int:
        """The highest message id so far (0 when there is none)."""
        ...

    def message_index_after(self, after_id: int, limit: int = 1000) -> list[tuple[int, str]]:
        """(id, conversation_id) of the messages with id > after_id, by id, at most `limit`."""
        ...

    def messages_by_id(self, ids: Sequence[int]) -> list[StoredMessage]:
        """The messages with these ids (unknown ids are left out), by id."""
        ...


# ---------------------------------------------------------------- handoff

TicketStatus = Literal["open", "claimed", "resolved"]


@dataclass
class Ticket:
    id: str
    conversation_id: str
    address: Address
    status: TicketStatus
    priority: str  # "urgent" | "normal"
    reason: str
    summary: dict[str, Any]  # carrier, noticed_at, still_happening, amounts, destinations, vendor, language
    created_at: datetime
    updated_at: datetime
    operator: str | None = None
    reannounced_at: datetime | None = None


@dataclass
class AuditEntry:
    ticket_id: str
    actor: str  # "bot", "user", "operator:<name>", "system"
    action: str  # opened | user_message | claimed | replied | resolved | reannounced | delivered | delivery_failed
    detail: str
    at: datetime


@dataclass
class TicketDetail:
    ticket: Ticket
    transcript: list[StoredMessage]
    audit: list[AuditEntry]


@dataclass
class OutboxItem:
    id: int
    address: Address
    reply: dict[str, Any]  # Reply.to_json() plus "kind"
    attempts: int
    created_at: datetime


@dataclass
class UndeliveredItem(OutboxItem):
    """An outbox item that failed at least once (status pending, retried) or is dead (a permanent
    error, or given up by an attempt limit): what the console lists with a retry button."""

    status: str = "pending"
    last_error: str | None = None
    ticket_id: str | None = None
    next_attempt_at: datetime | None = None


class HandoffError(Exception):
    """Base of the errors the HandoffService raises for operator mistakes (never for user input)."""


class TicketNotFound(HandoffError, LookupError):
    """No ticket with that id."""


class TicketStateError(HandoffError):
    """The lifecycle open -> claimed -> resolved forbids this action in the ticket's current state."""


class TicketTransaction(Protocol):
    """One write transaction of a TicketStore: what it reads is locked until it ends (committed
    when the `with` block ends, rolled back when it raises). No rules: the HandoffService decides."""

    now: datetime  # the store's clock when the transaction began

    def active_ticket(self) -> Ticket | None:
        """The open or claimed ticket of the transaction's conversation."""
        ...

    def ticket(self, ticket_id: str) -> Ticket | None: ...
    def ticket_id_taken(self, ticket_id: str) -> bool: ...
    def add_ticket(self, ticket: Ticket) -> tuple[Ticket, int]:
        """Insert it and link the conversation's messages that have no ticket yet: (as stored, linked)."""
        ...

    def save_ticket(self, ticket: Ticket) -> Ticket:
        """Write its status, priority, summary, operator, updated_at and reannounced_at; as stored."""
        ...

    def audit(self, ticket_id: str, actor: str, action: str, detail: str = "") -> None: ...
    def conversation(self, conversation_id: str) -> tuple[Address | None, str | None]:
        """The conversation's newest address and its state's language (None when unknown)."""
        ...

    def add_message(self, address: Address, role: Role, text: str, meta: dict[str, Any],
                    ticket_id: str | None) -> StoredMessage: ...
    def enqueue(self, address: Address, reply: Reply, ticket_id: str | None) -> int: ...


class TicketStore(Protocol):
    """Where tickets live: plain reads and writes (bot.handoff.HandoffService holds the rules)."""

    def ticket_transaction(self, conversation: Address | None = None) -> ContextManager[TicketTransaction]:
        """A write transaction; with `conversation`, its row exists, holds the newest address and is
        locked (one ticket opener per conversation at a time, across processes)."""
        ...

    def tickets(self, statuses: Sequence[str]) -> list[Ticket]: ...
    def active_ticket(self, conversation_id: str) -> Ticket | None:
        """The conversation's open or claimed ticket (a plain read, outside any transaction)."""
        ...

    def ticket_detail(self, ticket_id: str) -> TicketDetail | None: ...


class Outbox(Protocol):
    """Every message to a user that is not sent inline, until delivered (transactional outbox)."""

    def enqueue(self, address: Address, reply: Reply, ticket_id: str | None = None) -> int: ...
    def pending_outbox(self, limit: int = 50) -> list[OutboxItem]: ...
    def lease_outbox(self, limit: int = 50, seconds: float = 60.0) -> list[OutboxItem]:
        """Due pending items, each leased to this caller for `seconds` (other workers skip it)."""
        ...

    def mark_sent(self, item_id: int) -> None: ...
    def mark_failed(self, item_id: int, error: str, retry_in: float | None = None, *,
                    permanent: bool = False) -> None: ...
    def retry_outbox(self, item_id: int, actor: str = "system") -> bool: ...
    def undelivered(self, limit: int = 100, ticket_id: str | None = None) -> list[UndeliveredItem]: ...
    def outbox_counts(self) -> dict[str, int]: ...


class Handoff(Outbox, Protocol):
    """Tickets as the core and the operators see them (bot.handoff.HandoffService), and the outbox
    (its messages are the ones tickets send)."""

    def open_ticket(
        self, address: Address, *, reason: str, priority: str, summary: dict[str, Any]
    ) -> Ticket:
        """Open (or return the already open) ticket for the conversation; links its transcript."""
        ...

    def active_ticket(self, conversation_id: str) -> Ticket | None: ...
    def merge_facts(self, ticket_id: str, facts: dict[str, Any]) -> Ticket:
        """Fill the gaps of the ticket's summary with facts the user gave later (never overwrite)."""
        ...

    def claim(self, ticket_id: str, operator: str) -> Ticket: ...
    def reply(self, ticket_id: str, operator: str, text: str) -> Ticket:
        """Record the operator message and enqueue it in the outbox, in one transaction."""
        ...

    def resolve(self, ticket_id: str, operator: str) -> Ticket: ...
    def list_queue(self, statuses: tuple[str, ...] = ("open", "claimed")) -> list[Ticket]:
        """Sorted by priority (urgent first), then age (oldest first)."""
        ...

    def get_detail(self, ticket_id: str) -> TicketDetail | None: ...
    def overdue_urgent(self, now: datetime, older_than_minutes: float) -> list[Ticket]:
        """Urgent tickets still 'open' (unclaimed) whose last announcement is older than the limit."""
        ...

    def mark_reannounced(self, ticket_id: str, at: datetime) -> None: ...


class ReplySender(Protocol):
    """Delivers a reply to a user through the channel of `address.channel`."""

    async def send(self, address: Address, reply: Reply) -> None: ...


# ---------------------------------------------------------------- the conversation core, as channels see it

TicketListener = Callable[[str, Ticket], None]  # (event: "opened" | "reannounced" | "claimed" | "resolved", ticket)


class ConversationCore(Protocol):
    """What channels, the web app and the CLI call. Implemented by conversation.ConversationService."""

    handoff: Handoff
    store: ConversationStore  # the transcript (the widget's event feed reads it)

    def record(self, message: InboundMessage) -> StoredMessage | None:
        """Commit the user message before its platform is acknowledged; None for a retried delivery
        recorded before. Raises when the store cannot commit (the webhook answers 503)."""
        ...

    def handle(self, message: InboundMessage, recorded: StoredMessage | None = None) -> list[Reply]:
        """Persist the message (unless `recorded` by record()), then answer, escalate or route it
        to the open ticket.

        Returns the replies to send now (possibly empty: a duplicate webhook, a message a recovery
        answered already, or one that only joined an open ticket and is acknowledged silently).
        With message.outbox, each reply's outbox_id names the outbox item to mark sent once it is
        delivered. Never raises on user input.
        """
        ...

    def recover_pending(self) -> int:
        """Re-handle user messages recorded but never answered (a crash, a worker that died mid-turn);
        replies go to the outbox. Run at start-up and periodically; one process at a time."""
        ...

    def reannounce_overdue(self, now: datetime) -> int:
        """Urgent tickets unclaimed past the limit: notify listeners again and enqueue the user's self-help
        steps and their carrier's stop line again. Returns how many tickets were re-announced."""
        ...

    def add_ticket_listener(self, listener: TicketListener) -> None: ...
