"""Two worker processes (or nodes) sharing one PostgreSQL store answer one conversation's messages
in turn.

Each "worker" here is its own ConversationService with its own SqlHandoffStore on the same
database, as two nodes run them; their in-process locks know nothing of each other, so only the
store's conversation lock (an advisory lock) keeps the turns apart.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

from bot.conversation.service import ConversationService
from bot.handoff.service import HandoffService
from bot.handoff.sql_store import SqlHandoffStore
from bot.messages import Address, InboundMessage
from tests.fakes import FakeRetriever, make_settings


@dataclass
class SlowRetriever(FakeRetriever):
    """Searches take a while, so that a second message arrives in the middle of a turn."""

    delay: float = 0.3

    def search(self, *args, **kwargs):
        time.sleep(self.delay)
        return super().search(*args, **kwargs)


pytestmark = pytest.mark.integration


@pytest.fixture
def workers(new_pg_database):
    url = new_pg_database()
    stores = [SqlHandoffStore(url), SqlHandoffStore(url, migrate=False)]
    services = [ConversationService(retriever=SlowRetriever(), store=s, handoff=HandoffService(s), settings=make_settings())
                for s in stores]
    yield services, stores[0]
    for s in stores:
        s.close()


def message(text: str, cid: str = "web:fast-typist") -> InboundMessage:
    return InboundMessage(address=Address("web", cid, "u1", {}), text=text)


def test_a_second_message_on_another_worker_waits_for_the_first_turn(workers):
    (a, b), store = workers
    first = threading.Thread(target=a.handle, args=(message("How do I stop international calls?"),))
    first.start()
    time.sleep(0.1)  # the first turn is searching on worker A
    b.handle(message("Which logs should we keep?"))
    first.join(10)
    roles = [(m.role, m.text) for m in store.transcript("web:fast-typist")]
    assert [r for r, _ in roles] == ["user", "bot", "user", "bot"], roles
    assert roles[0][1] == "How do I stop international calls?"
    assert roles[2][1] == "Which logs should we keep?"


def test_other_conversations_do_not_wait(workers):
    (a, b), _ = workers
    other = "web:someone-else"
    a.retriever.delay = 1.0  # waiting for it would take 0.9 s or more
    first = threading.Thread(target=a.handle, args=(message("How do I stop international calls?"),))
    first.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    b.handle(message("Which logs should we keep?", cid=other))
    took = time.monotonic() - t0
    first.join(10)
    assert took < 0.8, f"waited for another conversation's turn ({took:.2f} s)"
