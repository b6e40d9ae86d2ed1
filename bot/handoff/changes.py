"""PostgreSQL's LISTEN/NOTIFY: every node hears of new messages and ticket changes at once.

Migration 0004 makes the database announce each committed message ("<id> <conversation id>" on
`pbxbot_messages`) and each ticket change ("<ticket id> <status>" on `pbxbot_tickets`). A
`ChangeListener` holds one connection of its own per server process, LISTENs on both channels
and hands each notification to a callback on the event loop. If the connection drops it
reconnects with back-off and calls `on_connect` again, so the followers catch up on what they
missed (notifications are not queued for a listener that is away). `connected` says whether
notifications are flowing; while they are not, the followers poll as they do on SQLite.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

log = logging.getLogger("bot.handoff.changes")

MESSAGES_CHANNEL = "pbxbot_messages"
TICKETS_CHANNEL = "pbxbot_tickets"


class ChangeListener:
    def __init__(self, conninfo: str, *, on_message: Callable[[int, str], None],
                 on_ticket: Callable[[str, str], None], on_connect: Callable[[], None] = lambda: None,
                 max_backoff: float = 10.0) -> None:
        self._conninfo = conninfo
        self.on_message, self.on_ticket, self.on_connect = on_message, on_ticket, on_connect
        self.max_backoff = max_backoff
        self.connected = False
        self.last_error: str | None = None

    async def run(self) -> None:
        import psycopg

        delay = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {MESSAGES_CHANNEL}")
                    await conn.execute(f"LISTEN {TICKETS_CHANNEL}")
                    self.connected, self.last_error, delay = True, None, 0.5
                    self.on_connect()
                    async for note in conn.notifies():
                        self._dispatch(note.channel, note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the database went away: poll, retry
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                if self.connected:
                    log.warning("change notifications interrupted (%s); polling until they are back", self.last_error)
            finally:
                self.connected = False
            await asyncio.sleep(delay)
            delay = min(self.max_backoff, delay * 2)

    def _dispatch(self, channel: str, payload: str) -> None:
        head, _, rest = payload.partition(" ")
        try:
            if channel == MESSAGES_CHANNEL:
                self.on_message(int(head), rest)
            elif channel == TICKETS_CHANNEL:
                self.on_ticket(head, rest)
        except Exception:  # noqa: BLE001 - one bad callback never stops the listener
            log.exception("handling a %s notification failed", channel)
