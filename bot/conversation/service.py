"""ConversationService: the one conversation core every channel, the web app and the CLI use.

A turn: record the user message (committed, deduplicated) -> route it to an open ticket, or
understand it (language, carrier, follow-up, incident, intent) -> retrieve -> compose a grounded
reply -> decide escalation (open a ticket) -> record the reply -> mark the message handled.
A crash anywhere leaves an unhandled message that `recover_pending()` answers through the outbox.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator, Sequence

from bot.config import Settings
from bot.conversation import composer as C
from bot.conversation import signals as S
from bot.conversation.escalation import EscalationPolicy, Signals, is_billing_dispute
from bot.conversation.language import detect_language, has_english_words, has_letters
from bot.conversation.locks import KeyedLocks
from bot.conversation.texts import LIST_SEP, t
from bot.conversation.triage import IncidentFacts, detect_incident, extract_facts, missing_facts
from bot.messages import Address, Escalation, InboundMessage, Reply, utcnow
from bot.ports import (
    ConversationState,
    ConversationStore,
    HandoffService,
    Passage,
    Retriever,
    SearchResult,
    StoredMessage,
    Ticket,
    TicketListener,
)

log = logging.getLogger(__name__)

MORE_KEY = "_more"  # state.facts: sentences not shown yet, for "more"
ACK_KEY = "_acked_ticket"  # state.facts: ticket id whose first joined message was acknowledged
FACT_KEYS = ("carrier", "still_happening", "noticed_at", "amounts", "destinations", "vendor")

_CONTAINMENT_QUERY = {
    "ja": "乗っ取り 今すぐやること 国際電話の発信を止める 利用休止 発信規制",
    "en": "what to do right now stop international outgoing calls bar suspend",
}
_STOP_QUERY = {
    "ja": "{carrier} 国際電話 発信 止める 利用休止 申し込み",
    "en": "{carrier} stop international outgoing calls suspend block apply",
}
_IP050_QUERY = {"ja": "050 IP電話 乗っ取り ID パスワード プロバイダ", "en": "050 IP phone hijacked SIP ID password provider"}
_NUMBER_ASKED = S._rx(r"番号|電話番号|連絡先|窓口|number|phone|contact")
_PHONE = S._rx(r"\d{2,4}-\d{2,4}-\d{3,4}|0120")
OFF_DOMAIN_CONFIDENCE = 0.9
RECOVER_AFTER_SECONDS = 60.0  # an unhandled message this old has no live turn answering it
MORE_MAX_PIECES = 16  # sentences kept for "more" (about three pages)
SEARCH_MAX_CHARS = 1000  # a search query is cut here (the dense part sees less still)


def _answered_without_searching(text: str) -> bool:
    """Messages _bot_turn answers without searching their own text, whatever the conversation's
    state: an incident (fixed containment searches, remembered), a request for a person, a
    greeting, thanks, "more". Used only to skip a prefetch that would be wasted."""
    norm = S.normalize(text)
    return bool(detect_incident(text) or S.wants_human(norm) or S.is_more(norm) or S.is_greeting(norm)
                or S.is_capabilities(norm) or S.is_thanks(norm) or S.is_hostile(norm))


@dataclass
class _Turn:
    """What one user message means, worked out before any retrieval."""

    address: Address
    text: str
    norm: str
    lang: str
    state: ConversationState
    action: str | None = None


class ConversationService:
    """Implements bot.ports.ConversationCore."""

    def __init__(
        self,
        *,
        retriever: Retriever,
        store: ConversationStore,
        handoff: HandoffService,
        settings: Settings,
        policy: EscalationPolicy | None = None,
    ) -> None:
        self.retriever = retriever
        self.store = store
        self.handoff = handoff
        self.settings = settings
        self.policy = policy or EscalationPolicy(min_confidence=settings.min_confidence)
        self._listeners: list[TicketListener] = []
        # Fixed queries (containment steps, a carrier's stop line) give the same passages every time
        # for one opened index: kept per (query, language, carrier, k).
        self._fixed_results: dict[tuple, SearchResult] = {}
        self.vocabulary = S.DomainVocabulary.load(settings.knowledge_dir / "lexicon" / "terms.yaml")
        # Test hook (crash tests): called after the user message is committed, before any reply.
        self.after_record_hook: Callable[[StoredMessage], None] | None = None
        # Messages recorded after this moment belong to this process and are being answered live;
        # recover_pending leaves them alone (a server takes traffic while it recovers).
        self.started_at = utcnow()
        self._turns = KeyedLocks()

    # ------------------------------------------------------------------ ConversationCore

    def add_ticket_listener(self, listener: TicketListener) -> None:
        self._listeners.append(listener)

    def handle(self, message: InboundMessage) -> list[Reply]:
        started = time.perf_counter()
        text = S.clean_text(message.text, self.settings.max_text_chars)
        meta: dict[str, Any] = {"address": message.address.to_dict()}
        if message.action:
            meta["action"] = message.action
        if message.request_id is not None:
            meta["request_id"] = str(message.request_id)
        if message.message_id is not None:  # the channel's own id (the widget matches its echo by it)
            meta["message_id"] = str(message.message_id)[:255]
        if len(message.text or "") > self.settings.max_text_chars:
            meta["truncated_from"] = len(message.text or "")
        dedupe = f"{message.address.conversation_id}#{message.message_id}" if message.message_id else None
        # One turn at a time per conversation: a second message (a user typing fast, two webhooks
        # at once) starts from the state the first one saved, so no fact is lost. The in-process
        # lock first, then the store's lock, which also covers other worker processes.
        with self._one_turn(message.address.conversation_id):
            try:
                stored, prior = self.store.begin_turn(message.address, text, dedupe_key=dedupe, meta=meta)
            except Exception:
                log.exception("recording a user message failed (conversation %s)", message.address.conversation_id)
                return [self._with_id(self._error_reply(message.address, text), message.request_id)]
            if stored is None:
                log.info("duplicate message ignored (conversation %s)", message.address.conversation_id)
                return []
            if self.after_record_hook is not None:
                self.after_record_hook(stored)
            state = prior or ConversationState(conversation_id=message.address.conversation_id, address=message.address)
            replies = self._answer(message.address, stored, request_id=message.request_id, state=state)
        log.info(
            "turn conversation=%s kinds=%s escalation=%s ms=%.1f",
            message.address.conversation_id,
            ",".join(r.kind for r in replies) or "-",
            ",".join(r.escalation.priority for r in replies if r.escalation) or "-",
            (time.perf_counter() - started) * 1000,
        )
        return replies

    @contextmanager
    def _one_turn(self, conversation_id: str) -> Iterator[None]:
        with self._turns.hold(conversation_id), self.store.conversation_turn(conversation_id):
            yield

    def prefetch(self, message: InboundMessage) -> None:
        """The message will wait for a free worker thread: hand the retriever the query a plain
        question turn searches first (see _question), so that the queries of waiting messages
        share one embedding pass (bot/retrieval/batching.py). Only a guess: a follow-up, a
        greeting or a message for an open ticket searches something else or nothing, and then
        costs its share of a pass, never a wrong answer. Cheap, and never raises."""
        prefetch = getattr(self.retriever, "prefetch", None)
        if prefetch is None or message.action:
            return
        try:
            text = S.clean_text(message.text, self.settings.max_text_chars)
            if text and not _answered_without_searching(text):
                prefetch(S.kana_to_kanji(text)[:SEARCH_MAX_CHARS])
        except Exception:  # noqa: BLE001 - an optimisation must never fail a message
            log.exception("prefetching a query failed")

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
                created = _aware(msg.created_at)
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
                if done:
                    replies = [Reply.from_payload(m.meta["reply"]) for m in done]
                    self.store.mark_handled(msg.id)
                else:
                    with self._one_turn(msg.conversation_id):  # not beside a live turn of it
                        replies = self._answer(address, msg, request_id=msg.meta.get("request_id"))
                for reply in replies:
                    self.handoff.enqueue(address, reply)
                count += 1
                log.info("recovered message %s of conversation %s (%d replies queued)", msg.id, msg.conversation_id,
                         len(replies))
        return count

    def reannounce_overdue(self, now: datetime) -> int:
        tickets = self.handoff.overdue_urgent(now, self.settings.urgent_reannounce_minutes)
        for ticket in tickets:
            lang = ticket.summary.get("language") if ticket.summary.get("language") in ("ja", "en") else "ja"
            carrier = ticket.summary.get("carrier")
            try:
                reply = self._reannounce_reply(ticket, lang, carrier)
                self.store.record_message(ticket.address, "bot", reply.answer, meta={"reply": reply.to_payload(), "reannounce": True})
                self.handoff.enqueue(ticket.address, reply)
            except Exception:
                log.exception("re-announcing ticket %s: self-help reply failed", ticket.id)
            self.handoff.mark_reannounced(ticket.id, now)
            self._notify("reannounced", ticket)
        return len(tickets)

    # ------------------------------------------------------------------ one turn

    def _answer(self, address: Address, stored: StoredMessage, *, request_id: str | None,
                state: ConversationState | None = None) -> list[Reply]:
        """state: the conversation before this message, read with it (begin_turn); None: read it now."""
        try:
            replies, state = self._respond(address, stored, state)
        except Exception:
            log.exception("answering failed (conversation %s, message %s)", address.conversation_id, stored.id)
            replies, state = [self._error_reply(address, stored.text)], None  # the state is not saved
        replies = [self._with_id(r, request_id) for r in replies]
        try:
            # One transaction: the replies, the new state and "handled" land together or not at all.
            recorded = self.store.complete_turn(
                address, stored.id, state,
                [(r.answer, {"reply": r.to_payload(), "reply_to": stored.id}) for r in replies],
            )
            replies = [replace(r, stored_id=m.id, reply_to=stored.id) for r, m in zip(replies, recorded)]
        except Exception:
            # The user still gets the answer now; the message stays unhandled and recover_pending()
            # completes the transcript later (at worst the reply is sent twice, never lost).
            log.exception("recording the reply failed (conversation %s, message %s)", address.conversation_id, stored.id)
        return replies

    def _respond(self, address: Address, stored: StoredMessage,
                 state: ConversationState | None = None) -> tuple[list[Reply], ConversationState]:
        """The replies to one recorded user message, and the conversation state after it (unsaved)."""
        cid, text, action = address.conversation_id, stored.text, stored.meta.get("action")
        if state is None:
            state = self.store.get_state(cid) or ConversationState(conversation_id=cid, address=address)
        state.address = address
        norm = S.normalize(text)
        detected = detect_language(text)
        unknown_language = detected is None and has_letters(text)
        if detected == "en" and state.language == "ja" and not has_english_words(text):
            detected = None  # "/human", "KDDI?", "OCN": no signal, keep Japanese
        lang = detected or state.language or "en"
        if detected:
            state.language = detected
        facts = extract_facts(text, IncidentFacts.from_dict(state.facts))
        state.facts.update(facts.to_dict())
        if facts.carrier and S.find_carriers(norm):
            state.carrier = facts.carrier
        turn = _Turn(address, text, norm, lang, state, action)

        # record_message linked the message to the ticket that was active when it arrived: with
        # none, there is no ticket to look up (one query less per turn).
        ticket = self.handoff.active_ticket(cid) if stored.ticket_id is not None else None
        if ticket is not None:
            replies = self._join_ticket(turn, ticket)
        else:
            replies = self._bot_turn(turn, unknown_language)
        return replies, state

    def _join_ticket(self, turn: _Turn, ticket: Ticket) -> list[Reply]:
        """While a ticket is open the bot does not answer: the message is for the operator.
        The first message after the ticket opened is acknowledged (and any explicit request for a
        person); later ones join silently."""
        st = turn.state
        self._fill_summary(turn, ticket)
        if ticket.priority != "urgent" and detect_incident(turn.text):
            # An incident reported while a normal ticket waits: the same ticket becomes urgent, and
            # the user gets the containment steps now rather than after an operator reads it.
            return [self._incident(turn, requested=False)]
        if st.facts.get(ACK_KEY) == ticket.id and not (turn.action == "request_human" or S.wants_human(turn.norm)):
            return []
        st.facts[ACK_KEY] = ticket.id
        key = "ticket_ack_urgent" if ticket.priority == "urgent" else "ticket_ack"
        return [self._reply(turn, t(key, turn.lang, ticket=ticket.id), kind="handoff")]

    def _bot_turn(self, turn: _Turn, unknown_language: bool) -> list[Reply]:
        st, norm, lang = turn.state, turn.norm, turn.lang
        requested = turn.action == "request_human" or S.wants_human(norm)

        if not turn.text and not requested:
            return [self._reply(turn, t("empty", lang) if st.language else f"{t('empty', 'en')}\n{t('empty', 'ja')}", kind="notice")]
        if S.is_hostile(norm):
            return [self._reply(turn, t("refusal", lang), kind="scope")]
        if unknown_language and not requested:
            note = f"{t('unknown_language', 'en')} / {t('unknown_language', 'ja')}"
            return [self._reply(turn, f"{note}\n{t('intro', 'en')}", kind="notice", lang="en")]
        incident = detect_incident(turn.text)
        if requested and not incident:
            st.failures = 0
            return [self._escalate(turn, "", (), 0.0, self.policy.decide(Signals(requested_human=True)), kind="handoff")]
        if not incident:
            if S.is_more(norm):
                return [self._more(turn)]
            if S.is_greeting(norm) or S.is_capabilities(norm):
                return [self._reply(turn, t("intro", lang), kind="greeting")]
            if S.is_thanks(norm):
                st.failures = 0
                return [self._reply(turn, t("thanks", lang), kind="greeting")]
            if st.last_query and S.says_not_helped(norm):
                st.failures += 1
                decision = self.policy.decide(Signals(failures=st.failures))
                if decision:
                    st.failures = 0
                    return [self._escalate(turn, "", (), 0.0, decision, kind="handoff")]
                return [self._reply(turn, t("not_helped", lang), kind="notice", offer_human=True)]
        if incident:
            st.failures = 0
            return [self._incident(turn, requested)]
        # A new question keeps the count of "that did not help": the bot has just asked the user to
        # put it another way, and the rephrased question is the same unmet need ("not helpful" ->
        # rephrased -> "still not helpful" is repeated failure). A thanks or a ticket starts it again.
        reply = self._question(turn)
        if reply.escalation is not None:
            st.failures = 0
        return [reply]

    # ------------------------------------------------------------------ questions

    def _question(self, turn: _Turn) -> Reply:
        st, norm, lang = turn.state, turn.norm, turn.lang
        carriers = S.find_carriers(norm)
        query, focus, header = S.kana_to_kanji(turn.text), turn.text, ""
        if st.last_query and carriers and S.is_followup(norm):
            # "KDDIの場合は？": the last question again, for the new carrier
            query = f"{S.strip_carriers(S.normalize(st.last_query))} {S.CARRIER_NAMES[carriers[0]][lang]}"
            focus = query
            header = t("carrier_header", lang, carrier=S.CARRIER_NAMES[carriers[0]][lang])
        elif st.last_query and S.is_contextual(norm):
            query = f"{st.last_query} {query}"
        carrier = carriers[0] if carriers else (st.carrier if S.wants_to_stop_calls(S.normalize(query)) else None)

        boost_numbers = bool(_NUMBER_ASKED.search(norm))
        result = self._search(query, lang, carrier)
        hint = S.retrieval_hint(norm, lang)
        if hint and (result.confidence < self.settings.min_confidence or (boost_numbers and not _has_phone(result.passages))):
            second = self._search(f"{query} {hint}", lang, carrier)
            if second.confidence >= result.confidence or (boost_numbers and _has_phone(second.passages)):
                result = second
        passages, other_language = _in_language(result.passages, lang)
        note = t("other_language_note", lang) if other_language else ""
        in_domain = S.in_domain(norm, self.vocabulary) or (query != turn.text and S.in_domain(S.normalize(query), self.vocabulary))
        # Without a single domain word, only a very sure match counts ("who won the world cup").
        needed = self.settings.min_confidence if in_domain else max(self.settings.min_confidence, OFF_DOMAIN_CONFIDENCE)
        confident = bool(passages) and result.confidence >= needed
        if not confident and not in_domain:
            return self._reply(turn, t("scope", lang), kind="scope", confidence=result.confidence)

        dispute = is_billing_dispute(turn.text)
        decision = self.policy.decide(
            Signals(billing_dispute=dispute, in_scope=True, confidence=result.confidence, answered=bool(passages))
        )
        st.last_query = query[-300:]
        if passages:
            st.topics = (st.topics + [tp for tp in passages[0].topics if tp not in st.topics])[-6:]
        if not confident:
            st.facts.pop(MORE_KEY, None)
            return self._escalate(turn, t("low_confidence", lang), (), result.confidence, decision, kind="handoff")

        passages = _for_carrier(passages, carrier)
        pieces = C.pieces_of(passages, query, focus=focus, boost=_PHONE if boost_numbers else None, max_passages=len(passages))
        fixed = [header, note, t("more_hint", lang)]
        if decision:
            fixed.append(t("handoff", lang, ticket="T-00000000-0000"))
        shown, rest = C.select(pieces, lang, self._budget(lang, fixed))
        book = C.CitationBook()
        body = C.render(shown, lang, book)
        lines = [x for x in (header, note, body) if x]
        self._keep_more(st, rest, lang)
        if rest:
            lines.append(t("more_hint", lang))
        answer = "\n".join(lines)
        if decision:
            return self._escalate(turn, answer, book.citations(), result.confidence, decision, kind="answer")
        return self._reply(turn, answer, kind="answer", citations=book.citations(), confidence=result.confidence, offer_human=True)

    def _more(self, turn: _Turn) -> Reply:
        st, lang = turn.state, turn.lang
        pending = st.facts.get(MORE_KEY) or {}
        pieces = C.unpack(pending)
        if not pieces:
            return self._reply(turn, t("no_more", lang), kind="notice")
        lang = pending.get("lang", lang)
        shown, rest = C.take_in_order(pieces, lang, self._budget(lang, [t("more_header", lang), t("more_hint", lang)]))
        book = C.CitationBook()
        lines = [t("more_header", lang), C.render(shown, lang, book)]
        self._keep_more(st, rest, lang)
        if rest:
            lines.append(t("more_hint", lang))
        return self._reply(turn, "\n".join(lines), kind="answer", citations=book.citations(), lang=lang)

    # ------------------------------------------------------------------ incidents

    def _incident(self, turn: _Turn, requested: bool) -> Reply:
        st, lang = turn.state, turn.lang
        facts = IncidentFacts.from_dict(st.facts)
        carrier = facts.carrier or st.carrier
        ip050 = "050" in turn.norm
        missing = missing_facts(IncidentFacts.from_dict({**st.facts, "carrier": carrier}))
        ask = ""
        if missing:
            ask = t("ask_facts", lang, items=LIST_SEP[lang].join(t(f"fact_{m}", lang) for m in missing))
        decision = self.policy.decide(Signals(incident=True, requested_human=requested))
        fixed = [t("incident_header", lang), ask, t("handoff_urgent", lang, ticket="T-00000000-0000")]
        answer, citations, confidence, rest = self._containment(lang, carrier, ip050, fixed)
        self._keep_more(st, rest, lang)
        answer = "\n".join(x for x in (t("incident_header", lang), answer, ask) if x)
        st.last_query = turn.text
        return self._escalate(turn, answer, citations, confidence, decision, kind="incident")

    def _containment(
        self, lang: str, carrier: str | None, ip050: bool, fixed: Sequence[str]
    ) -> tuple[str, tuple, float, list[C.Piece]]:
        """The containment steps in order (first-steps guide), then the carrier's stop line."""
        budget = self._budget(lang, fixed)
        res = self._fixed_search(_CONTAINMENT_QUERY[lang], lang, None)
        steps_passage = _pick(_in_language(res.passages, lang)[0], topics=("containment",), prefer_lead=True)
        stop_passage = None
        stop_header = ""
        if carrier in S.CARRIER_NAMES:
            name = S.CARRIER_NAMES[carrier][lang]
            stop_res = self._fixed_search(_STOP_QUERY[lang].format(carrier=name), lang, carrier)
            stop_passage = _pick(_in_language(stop_res.passages, lang)[0], topics=("stop-international",), carrier=carrier, prefer_lead=True)
            stop_header = t("carrier_header", lang, carrier=name)
        elif ip050:
            stop_res = self._fixed_search(_IP050_QUERY[lang], lang, None)
            stop_passage = _pick(_in_language(stop_res.passages, lang)[0], topics=("050-ip",), prefer_lead=True)
        if stop_passage is not None and steps_passage is not None and stop_passage.doc_id == steps_passage.doc_id:
            stop_passage = None
        book = C.CitationBook()
        parts: list[str] = []
        rest: list[C.Piece] = []
        stop_budget = 0
        stop_pieces: list[C.Piece] = []
        if stop_passage is not None:
            stop_pieces = C.pieces_of([stop_passage], "", max_passages=1)
            stop_budget = min(budget // 2, max(C.measure(stop_pieces[0].text, lang) + 8, budget // 3)) if stop_pieces else 0
        if steps_passage is not None:
            shown, rest = C.take_in_order(C.pieces_of([steps_passage], "", max_passages=1), lang, budget - stop_budget - C.measure(stop_header, lang))
            parts.append(C.render(shown, lang, book))
        if stop_pieces:
            shown, more = C.take_in_order(stop_pieces, lang, stop_budget)
            parts.append(f"{stop_header}\n{C.render(shown, lang, book)}" if stop_header else C.render(shown, lang, book))
            rest = rest + more
        return "\n".join(parts), book.citations(), res.confidence, rest

    def _reannounce_reply(self, ticket: Ticket, lang: str, carrier: str | None) -> Reply:
        header = t("reannounce_header", lang, ticket=ticket.id)
        answer, citations, confidence, _ = self._containment(lang, carrier, False, [header])
        return Reply(
            conversation_id=ticket.conversation_id, language=lang, answer=f"{header}\n{answer}".strip(),
            citations=citations, confidence=confidence, kind="incident",
        )

    # ------------------------------------------------------------------ escalation

    def _escalate(self, turn: _Turn, answer: str, citations: tuple, confidence: float, decision, *, kind: str) -> Reply:
        if decision is None:
            return self._reply(turn, answer, kind=kind, citations=citations, confidence=confidence)
        st = turn.state
        summary = self._summary(turn, decision.reason)
        ticket = self.handoff.open_ticket(turn.address, reason=decision.reason, priority=decision.priority, summary=summary)
        st.facts[ACK_KEY] = None
        key = "handoff_urgent" if decision.priority == "urgent" else "handoff"
        text = "\n".join(x for x in (answer, t(key, turn.lang, ticket=ticket.id)) if x)
        self._notify("opened", ticket)
        return self._reply(
            turn, text, kind=kind, citations=citations, confidence=confidence,
            escalation=Escalation(reason=decision.reason, priority=decision.priority, ticket_id=ticket.id),
        )

    def _summary(self, turn: _Turn, reason: str) -> dict[str, Any]:
        return {**self._facts(turn), "language": turn.lang, "reason": reason, "message": turn.text[:500]}

    def _facts(self, turn: _Turn) -> dict[str, Any]:
        facts = {k: turn.state.facts.get(k) for k in FACT_KEYS}
        if not facts.get("carrier"):
            facts["carrier"] = turn.state.carrier
        return facts

    def _fill_summary(self, turn: _Turn, ticket: Ticket) -> None:
        """Facts the user gives after the ticket opened (the carrier, when it started, the vendor...)
        fill the gaps of the operator's summary. Never overwrites: the transcript has the rest."""
        empty = (None, "", [], {})
        missing = {k: v for k, v in self._facts(turn).items()
                   if v not in empty and ticket.summary.get(k) in empty}
        if missing:
            try:
                self.handoff.open_ticket(turn.address, reason="more_facts", priority=ticket.priority, summary=missing)
            except Exception:  # the summary is a convenience; the message itself is already recorded
                log.exception("updating the summary of ticket %s failed", ticket.id)

    def _notify(self, event: str, ticket: Ticket) -> None:
        for listener in list(self._listeners):
            try:
                listener(event, ticket)
            except Exception:
                log.exception("ticket listener failed on %s %s", event, ticket.id)

    # ------------------------------------------------------------------ helpers

    def _search(self, query: str, lang: str, carrier: str | None, *, k: int | None = None) -> SearchResult:
        return self.retriever.search(query[:SEARCH_MAX_CHARS], k or self.settings.retrieval_k, language=lang,
                                     carrier=carrier)

    def _fixed_search(self, query: str, lang: str, carrier: str | None) -> SearchResult:
        key = (query, lang, carrier)
        if key not in self._fixed_results:
            result = self._search(query, lang, carrier, k=10)
            if not result.passages:
                return result  # an index being rebuilt: do not remember "nothing"
            self._fixed_results[key] = result
        return self._fixed_results[key]

    def _budget(self, lang: str, fixed: Sequence[str]) -> int:
        limit = self.settings.answer_max_chars_ja if lang == "ja" else self.settings.answer_max_words_en
        used = sum(C.measure(x, lang) for x in fixed if x)
        return max(limit - used, limit // 3)

    @staticmethod
    def _keep_more(state: ConversationState, rest: list[C.Piece], lang: str) -> None:
        if rest:
            state.facts[MORE_KEY] = {"lang": lang, **C.pack(rest[:MORE_MAX_PIECES])}
        else:
            state.facts.pop(MORE_KEY, None)

    def _reply(
        self, turn: _Turn, answer: str, *, kind: str, citations: tuple = (), confidence: float = 0.0,
        escalation: Escalation | None = None, offer_human: bool = False, lang: str | None = None,
    ) -> Reply:
        return Reply(
            conversation_id=turn.address.conversation_id, language=lang or turn.lang, answer=answer,  # type: ignore[arg-type]
            citations=tuple(citations), escalation=escalation, confidence=confidence, kind=kind,  # type: ignore[arg-type]
            offer_human=offer_human,
        )

    def _error_reply(self, address: Address, text: str) -> Reply:
        lang = detect_language(text) or "en"
        return Reply(conversation_id=address.conversation_id, language=lang, answer=t("error", lang), kind="error", offer_human=True)  # type: ignore[arg-type]

    @staticmethod
    def _with_id(reply: Reply, request_id: str | None) -> Reply:
        return replace(reply, id=request_id) if request_id is not None else reply

    def _address_of(self, msg: StoredMessage) -> Address:
        if isinstance(msg.meta.get("address"), dict):
            return Address.from_dict(msg.meta["address"])
        state = self.store.get_state(msg.conversation_id)
        if state is not None:
            return state.address
        return Address(channel=msg.conversation_id.split(":", 1)[0], conversation_id=msg.conversation_id)


def _has_phone(passages: Sequence[Passage]) -> bool:
    return any(_PHONE.search(p.text) for p in passages)


def _in_language(passages: Sequence[Passage], lang: str) -> tuple[list[Passage], bool]:
    """The passages in the user's language; the other language's only when none is (flagged)."""
    same = [p for p in passages if p.language == lang]
    if same or not passages:
        return same, False
    return list(passages), True


def _for_carrier(passages: Sequence[Passage], carrier: str | None) -> list[Passage]:
    """Drop passages about other carriers when the user named one (keeps general ones)."""
    if not carrier:
        return list(passages)
    kept = [p for p in passages if not p.carriers or carrier in p.carriers or "all" in p.carriers]
    return kept or list(passages)


def _pick(
    passages: Sequence[Passage], *, topics: Sequence[str], carrier: str | None = None, prefer_lead: bool = False
) -> Passage | None:
    """The best passage on one of `topics`: for `carrier` when given, else a guide for all carriers;
    with prefer_lead, that document's opening section (guides open with what to do first)."""
    def ok(p: Passage) -> bool:
        if topics and not set(topics) & set(p.topics):
            return False
        return carrier in p.carriers if carrier else True

    matching = [p for p in passages if ok(p)]
    if not matching:
        return passages[0] if passages and carrier is None else None
    if carrier is None:
        general = [p for p in matching if "all" in p.carriers]
        matching = general or matching
    if prefer_lead:
        guides = [p for p in matching if p.kind == "guide"]
        pool = guides or matching
        top_doc = pool[0].doc_id
        leads = [p for p in passages if p.doc_id == top_doc and not p.heading and not _is_summary(p)]
        return leads[0] if leads else next((p for p in pool if not _is_summary(p)), pool[0])
    return matching[0]


def _is_summary(p: Passage) -> bool:
    return p.chunk_id.endswith("#s")  # the document's one-line summary passage (retrieval/chunking.py)


def _aware(at: datetime) -> datetime:
    """SQLite hands back naive datetimes for UTC values."""
    return at if at.tzinfo is not None else at.replace(tzinfo=timezone.utc)
