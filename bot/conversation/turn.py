"""The turn runner: everything around answering one message, nothing about what it means.

One turn: record the user message (committed, deduplicated) under the conversation's lock ->
`respond` (the skill router) -> record the replies, the new state and "handled" in one
transaction. A crash anywhere leaves an unhandled message that `recover_pending()` answers through
the outbox; urgent tickets nobody claims are announced again by `reannounce_overdue()`.

Platform webhooks split the turn: `record()` commits the message before the platform is
acknowledged (it raises when the store cannot commit, so the platform is told to retry), and
`handle(message, recorded)` answers it later. Their replies go to the outbox in the transaction
that marks the message handled (InboundMessage.outbox), so no reply is owed only in memory.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Callable, Iterator

from bot.config import Settings
from bot.conversation.locks import KeyedLocks
from bot.conversation.texts import t
from bot.language import detect_language
from bot.conversation.understanding.text import clean_text
from bot.messages import Address, InboundMessage, Reply, as_utc, utcnow
from bot.ports import ConversationState, ConversationStore, Handoff, StoredMessage

log = logging.getLogger("bot.conversation")

RECOVER_AFTER_SECONDS = 60.0  # an unhandled message this old has no live turn answering it
# How long the outbox leaves a live turn's replies to the process sending them right away, before
# another worker (or this one after a restart) sends them instead: longer than a send can take.
INLINE_DELIVERY_LEASE = 30.0

Respond = Callable[[Address, StoredMessage, ConversationState], tuple[list[Reply], ConversationState]]


class TurnRunner:
    def __init__(self, *, store: ConversationStore, handoff: Handoff, settings: Settings, respond: Respond) -> None:
        self.store = store
        self.handoff = handoff
        self.settings = settings
        self.respond = respond
        # Test hook (crash tests): called after the user message is committed, before any reply.
        self.after_record_hook: Callable[[StoredMessage], None] | None = None
        # Messages recorded after this moment belong to this process and are being answered live;
        # recover_pending leaves them alone (a server takes traffic while it recovers).
        self.started_at = utcnow()
        self._turns = KeyedLocks()

    def record(self, message: InboundMessage) -> StoredMessage | None:
        """Commit the user message without answering it (the platform is acknowledged next).
        None: a retried delivery, recorded before. Raises when the store cannot commit."""
        return self._begin(message)[0]

    def _begin(self, message: InboundMessage) -> tuple[StoredMessage | None, ConversationState | None]:
        """store.begin_turn for `message`: its cleaned text, dedupe key and transcript meta."""
        limit = self.settings.max_text_chars
        return self.store.begin_turn(message.address, clean_text(message.text, limit),
                                     dedupe_key=_dedupe_key(message), meta=_meta(message, limit))

    def handle(self, message: InboundMessage, recorded: StoredMessage | None = None) -> list[Reply]:
        """Answer `message`: record it first, or, with `recorded` (record() did), answer that one,
        unless a recovery answered it meanwhile."""
        started = time.perf_counter()
        lease = INLINE_DELIVERY_LEASE if message.outbox else None
        # One turn at a time per conversation: a second message (a user typing fast, two webhooks
        # at once) starts from the state the first one saved, so no fact is lost. The in-process
        # lock first, then the store's lock, which also covers other worker processes.
        with self.one_turn(message.address.conversation_id):
            if recorded is not None:
                handled, prior = self.store.resume_turn(recorded.id, message.address.conversation_id)
                if handled:
                    return []  # recover_pending answered it (this turn waited a long time)
                stored = recorded
            else:
                try:
                    stored, prior = self._begin(message)
                except Exception:
                    log.exception("recording a user message failed (conversation %s)", message.address.conversation_id)
                    text = clean_text(message.text, self.settings.max_text_chars)
                    return [_with_id(error_reply(message.address, text), message.request_id)]
                if stored is None:
                    log.info("duplicate message ignored (conversation %s)", message.address.conversation_id)
                    return []
            prior = prior or ConversationState(conversation_id=message.address.conversation_id,
                                               address=message.address)
            if self.after_record_hook is not None:
                self.after_record_hook(stored)
            replies = self.answer(message.address, stored, request_id=message.request_id, state=prior,
                                  outbox_lease=lease)
        log.info(
            "turn conversation=%s kinds=%s escalation=%s ms=%.1f",
            message.address.conversation_id,
            ",".join(r.kind for r in replies) or "-",
            ",".join(r.escalation.priority for r in replies if r.escalation) or "-",
            (time.perf_counter() - started) * 1000,
        )
        return replies

    @contextmanager
    def one_turn(self, conversation_id: str) -> Iterator[None]:
        with self._turns.hold(conversation_id), self.store.conversation_turn(conversation_id):
            yield

    def answer(self, address: Address, stored: StoredMessage, *, request_id: str | None,
               state: ConversationState | None = None, outbox_lease: float | None = None) -> list[Reply]:
        """state: the conversation before this message, read with it (begin_turn); None: read it now.
        outbox_lease: put the replies in the outbox in the completing transaction (see complete_turn)."""
        if state is None:
            state = self.store.get_state(address.conversation_id) or ConversationState(
                conversation_id=address.conversation_id, address=address)
        try:
            replies, new_state = self.respond(address, stored, state)
        except Exception:
            log.exception("answering failed (conversation %s, message %s)", address.conversation_id, stored.id)
            replies, new_state = [error_reply(address, stored.text)], None  # the state is not saved
        replies = [_with_id(r, request_id) for r in replies]
        try:
            # One transaction: the replies, the new state and "handled" land together or not at all.
            recorded = self.store.complete_turn(
                address, stored.id, new_state,
                [(r.answer, {"reply": r.to_payload(), "reply_to": stored.id}) for r in replies],
                outbox_lease=outbox_lease,
            )
            replies = [replace(r, stored_id=m.id, reply_to=stored.id, outbox_id=m.outbox_id)
                       for r, m in zip(replies, recorded)]
        except Exception:
            # The user still gets the answer now; the message stays unhandled and recover_pending()
            # completes the transcript later (at worst the reply is sent twice, never lost).
            log.exception("recording the reply failed (conversation %s, message %s)", address.conversation_id, stored.id)
        return replies

    def recover_pending(self, now: datetime | None = None) -> int:
        """Answer user messages recorded but never handled; replies go to the outbox.

        A message is taken when it was recorded before this server started (the previous run
        stopped mid-turn) or more than RECOVER_AFTER_SECONDS ago (a worker process died mid-turn
        while others kept serving: no live turn takes that long). Newer ones are being answered
        right now by a live turn. One process at a time (store.exclusive): workers sharing a
        database never answer the same message twice."""
        stale = (now or utcnow()) - timedelta(seconds=RECOVER_AFTER_SECONDS)
        count = 0
        with self.store.exclusive("recover-pending") as mine:
            if not mine:
                return 0  # another worker is recovering right now
            for msg in self.store.unhandled_messages():
                created = as_utc(msg.created_at)  # (SQLite hands back naive UTC values)
                if created >= self.started_at and created >= stale:
                    continue  # a live turn is answering it right now
                if msg.role != "user":
                    self.store.mark_handled(msg.id)
                    continue
                address = self._address_of(msg)
                # A reply recorded just before the crash is re-sent, not recomputed (no second ticket).
                done = [
                    m for m in self.store.messages_after(msg.conversation_id, msg.id)
                    if m.role == "bot" and m.meta.get("reply_to") == msg.id and m.meta.get("reply")
                ]
                if done:  # (recorded by an older version, which sent replies before queueing them)
                    replies = [Reply.from_payload(m.meta["reply"]) for m in done]
                    for reply in replies:
                        self.handoff.enqueue(address, reply)
                    self.store.mark_handled(msg.id)
                else:
                    with self.one_turn(msg.conversation_id):  # not beside a live turn of it
                        handled, state = self.store.resume_turn(msg.id, msg.conversation_id)
                        if handled:
                            continue  # that live turn answered it while we waited for its lock
                        # the replies enter the outbox in the transaction that marks it handled
                        state = state or ConversationState(conversation_id=msg.conversation_id, address=address)
                        replies = self.answer(address, msg, request_id=msg.meta.get("request_id"), outbox_lease=0.0,
                                              state=state)
                count += 1
                log.info("recovered message %s of conversation %s (%d replies queued)", msg.id, msg.conversation_id,
                         len(replies))
        return count

    def _address_of(self, msg: StoredMessage) -> Address:
        if isinstance(msg.meta.get("address"), dict):
            return Address.from_dict(msg.meta["address"])
        state = self.store.get_state(msg.conversation_id)
        if state is not None:
            return state.address
        return Address(channel=msg.conversation_id.split(":", 1)[0], conversation_id=msg.conversation_id)


def _dedupe_key(message: InboundMessage) -> str | None:
    return f"{message.address.conversation_id}#{message.message_id}" if message.message_id else None


def _meta(message: InboundMessage, max_chars: int) -> dict[str, Any]:
    """What the transcript keeps with a user message besides its text."""
    meta: dict[str, Any] = {"address": message.address.to_dict()}
    if message.action:
        meta["action"] = message.action
    if message.request_id is not None:
        meta["request_id"] = str(message.request_id)
    if message.message_id is not None:  # the channel's own id (the widget matches its echo by it)
        meta["message_id"] = str(message.message_id)[:255]
    if len(message.text or "") > max_chars:
        meta["truncated_from"] = len(message.text or "")
    return meta


def error_reply(address: Address, text: str) -> Reply:
    lang = detect_language(text) or "en"
    return Reply(conversation_id=address.conversation_id, language=lang, answer=t("error", lang), kind="error",  # type: ignore[arg-type]
                 offer_human=True)


def _with_id(reply: Reply, request_id: str | None) -> Reply:
    return replace(reply, id=request_id) if request_id is not None else reply