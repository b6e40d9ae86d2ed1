"""The one fake conversation core of the tests, for web and channel tests that do not need retrieval.

It is the real turn runner (bot.conversation.turn: the message recorded and deduplicated first,
one turn per conversation at a time, replies, state and "handled" in one transaction, recovery)
on the real SQL store in memory and the real HandoffService, with a scripted `respond` instead of
the skill router: every question gets one cited answer; "request_human" (or a message asking for a
person) opens a ticket; while a ticket is active, user messages join it silently.
"""

from __future__ import annotations

import socket
import threading
import time
from datetime import datetime

from sqlalchemy.exc import OperationalError

from bot.config import Settings
from bot.conversation.turn import TurnRunner
from bot.handoff.service import HandoffService
from bot.handoff.sql_store import SqlHandoffStore
from bot.messages import Address, Citation, Escalation, InboundMessage, Reply
from bot.ports import ConversationState, StoredMessage, TicketListener

CITATION = Citation(n=1, doc_id="src-soumu-pbx-2024-ja", title="IP-PBXの不正利用に関する注意喚起",
                    publisher="総務省", url="https://www.soumu.go.jp/example", published="2024-03-01")
CITATION_EN = Citation(n=1, doc_id="src-jpcert-pbx-en", title="Unauthorized use of IP-PBX",
                       publisher="JPCERT/CC", url="https://www.jpcert.or.jp/example", published=None)


class FakeCore:
    """`fail_on`: a text that makes handle() raise (a bug in the core); `hold`: an event every turn
    waits for (a busy core); `prefetched`: texts announced while waiting for a worker thread."""

    def __init__(self, store: SqlHandoffStore | None = None, *, fail_on: str | None = None,
                 hold: threading.Event | None = None) -> None:
        self.store = store or SqlHandoffStore("sqlite://")
        self.handoff = HandoffService(self.store)
        self.listeners: list[TicketListener] = []
        self.handled: list[InboundMessage] = []
        self.prefetched: list[str] = []
        self.recovered = 0
        self.fail_on, self.hold = fail_on, hold
        self.turns = TurnRunner(store=self.store, handoff=self.handoff, settings=Settings(_env_file=None),
                                respond=self._respond)

    def add_ticket_listener(self, listener: TicketListener) -> None:
        self.listeners.append(listener)

    def recover_pending(self) -> int:
        self.recovered += 1
        return self.turns.recover_pending()

    def reannounce_overdue(self, now: datetime) -> int:
        return 0

    def prefetch(self, message: InboundMessage) -> None:
        self.prefetched.append(message.text)

    def record(self, message: InboundMessage) -> StoredMessage | None:
        return self.turns.record(message)

    def handle(self, message: InboundMessage, recorded: StoredMessage | None = None) -> list[Reply]:
        if self.fail_on and self.fail_on in message.text:
            raise RuntimeError("boom (test)")
        if self.hold is not None:
            self.hold.wait(5)
        return self.turns.handle(message, recorded)

    def _respond(self, address: Address, stored: StoredMessage, state: ConversationState
                 ) -> tuple[list[Reply], ConversationState]:
        action = stored.meta.get("action")
        self.handled.append(InboundMessage(address=address, text=stored.text, action=action,
                                           message_id=stored.meta.get("message_id")))
        cid, text = address.conversation_id, stored.text
        lang = "en" if text and text.isascii() else "ja"
        ticket = self.handoff.active_ticket(cid)
        if action == "request_human" or "担当者" in text or "person" in text.lower():
            if ticket is None:
                ticket = self.handoff.open_ticket(address, reason="user_request", priority="normal",
                                                  summary={"language": lang})
                for listener in self.listeners:
                    listener("opened", ticket)
            answer = ("担当者に引き継ぎました。受付番号 " + ticket.id if lang == "ja"
                      else "A person will take over. Ticket " + ticket.id)
            return [Reply(cid, lang, answer, escalation=Escalation("user_request", "normal", ticket.id),
                          kind="handoff")], state
        if ticket is not None:
            return [], state
        answer = "回線を止めるには通信事業者に連絡してください [1]。" if lang == "ja" else "Call your carrier to stop the calls [1]."
        return [Reply(cid, lang, answer, citations=(CITATION if lang == "ja" else CITATION_EN,), confidence=0.8,
                      offer_human=True)], state


# ---------------------------------------------------------------- a real server on loopback


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn.Server in a daemon thread; `url` once started; stop() shuts it down."""

    def __init__(self, app, port: int) -> None:
        import uvicorn

        self.app = app
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                                timeout_graceful_shutdown=1, log_config=None, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{port}", daemon=True)

    def start(self, timeout: float = 60.0) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("server thread died during start-up")
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        loop = self.app.state.registry.loop
        if loop is not None and not loop.is_closed():  # end the widgets' event streams first
            loop.call_soon_threadsafe(self.app.state.web_channel.close_streams)
        self.server.should_exit = True
        self.thread.join(timeout=10)


def down_for(store: SqlHandoffStore, calls: int) -> None:
    """The store's next `calls` commits of a user message fail as a database outage does."""
    real = store.begin_turn
    left = {"n": calls}

    def begin_turn(*args, **kwargs):
        if left["n"] > 0:
            left["n"] -= 1
            raise OperationalError("INSERT INTO messages", {}, ConnectionRefusedError("database is down"))
        return real(*args, **kwargs)

    store.begin_turn = begin_turn  # type: ignore[method-assign]
