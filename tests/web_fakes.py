"""A small ConversationCore for web tests that do not need retrieval (fast, deterministic).

Answers every question with one cited passage; "request_human" (or a message asking for a
person) opens a ticket on the InMemoryHandoffStore; while a ticket is active, user messages join
it silently, as the real ConversationService does.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import replace
from datetime import datetime

from bot.handoff.memory_store import InMemoryHandoffStore
from bot.messages import Citation, Escalation, InboundMessage, Reply
from bot.ports import TicketListener

CITATION = Citation(n=1, doc_id="src-soumu-pbx-2024-ja", title="IP-PBXの不正利用に関する注意喚起",
                    publisher="総務省", url="https://www.soumu.go.jp/example", published="2024-03-01")
CITATION_EN = Citation(n=1, doc_id="src-jpcert-pbx-en", title="Unauthorized use of IP-PBX",
                       publisher="JPCERT/CC", url="https://www.jpcert.or.jp/example", published=None)


class FakeCore:
    def __init__(self, store: InMemoryHandoffStore | None = None, *, fail_on: str | None = None) -> None:
        self.handoff = store or InMemoryHandoffStore()
        self.store = self.handoff
        self.listeners: list[TicketListener] = []
        self.handled: list[InboundMessage] = []
        self.recovered = 0
        self.fail_on = fail_on
        self._lock = threading.Lock()

    def add_ticket_listener(self, listener: TicketListener) -> None:
        self.listeners.append(listener)

    def recover_pending(self) -> int:
        self.recovered += 1
        return 0

    def reannounce_overdue(self, now: datetime) -> int:
        return 0

    def handle(self, message: InboundMessage) -> list[Reply]:
        if self.fail_on and self.fail_on in message.text:
            raise RuntimeError("boom (test)")
        meta = {k: v for k, v in (("action", message.action), ("message_id", message.message_id)) if v}
        stored = self.store.record_message(message.address, "user", message.text or f"[{message.action}]",
                                           dedupe_key=message.message_id, meta=meta)
        if stored is None:
            return []
        self.handled.append(message)
        cid = message.conversation_id
        lang = "en" if message.text and message.text.isascii() else "ja"
        ticket = self.handoff.active_ticket(cid)
        if message.action == "request_human" or "担当者" in message.text or "person" in message.text.lower():
            if ticket is None:
                ticket = self.handoff.open_ticket(message.address, reason="user_request", priority="normal",
                                                  summary={"language": lang})
                for listener in self.listeners:
                    listener("opened", ticket)
            text = ("担当者に引き継ぎました。受付番号 " + ticket.id if lang == "ja"
                    else "A person will take over. Ticket " + ticket.id)
            reply = Reply(cid, lang, text, escalation=Escalation("user_request", "normal", ticket.id), kind="handoff")
        elif ticket is not None:
            return []
        else:
            cit = CITATION if lang == "ja" else CITATION_EN
            text = ("回線を止めるには通信事業者に連絡してください [1]。" if lang == "ja"
                    else "Call your carrier to stop the calls [1].")
            reply = Reply(cid, lang, text, citations=(cit,), confidence=0.8, offer_human=True)
        # like the real core: the reply JSON in the transcript, its ids on the Reply
        [bot] = self.store.complete_turn(message.address, stored.id, None,
                                         [(reply.answer, {"reply": reply.to_payload(), "reply_to": stored.id})])
        return [replace(reply, stored_id=bot.id, reply_to=stored.id)]


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
