"""Least-connections accepting for `pbxbot serve --workers N`: one listening socket, N processes.

Why: with a socket per worker (SO_REUSEPORT) Linux assigns each connection to a worker by a hash
of its addresses, so a few long-lived keep-alive connections are split at random. Measured with
the 16 connections of `scripts/bench_web.py --workers 2`: split 8/8 gave p95 138 ms, 12/4 gave
181 ms, and a split of 10/6 or worse comes up in about 45 % of runs. asyncio's own server on a
shared socket is worse: the worker that wakes first accepts a whole burst.

Here the supervisor binds one socket and every worker holds it. A worker accepts only while it
holds no more connections than the least-loaded worker, so connections go where there are fewest,
the way nginx's `least_conn` does. The counts live in a small shared array (`new_board`), one slot
per worker, written only by that worker (the supervisor marks a dead worker's slot OFF).

A worker that is not least loaded stops watching the socket and looks again a few milliseconds
later. If a waiting connection is still there after STALL seconds (the least-loaded worker is
busy, hung or dying), it takes it anyway: balance is a preference, a waiting client is not.
"""

from __future__ import annotations

import asyncio
import logging
import select
import socket
import time
from collections.abc import Callable, Sized

log = logging.getLogger("bot.serve")

OFF = 1 << 62  # the slot of a worker that is not accepting (not started yet, stopped or dead)
RETRY = 0.002  # seconds between looks while another worker is less loaded
STALL = 0.05  # after this long waiting for the least-loaded worker, accept anyway
PUBLISH_EVERY = 0.1  # closed connections are published at least this often
MAX_ACCEPTS_PER_WAKEUP = 16


def new_board(context, workers: int):
    """The shared counts: one 64-bit slot per worker, all OFF. `context` is a multiprocessing
    context; the array is shared memory and may be passed to spawned processes as an argument."""
    board = context.RawArray("q", workers)
    for i in range(workers):
        board[i] = OFF
    return board


def all_accepting(board) -> bool:
    return all(load < OFF for load in board)


class LeastConnectionsAcceptor:
    """Accepts from `sock` (a listening socket shared with the other workers) into this event loop,
    handing each connection to `protocol_factory` as asyncio's own server would.

    `connections` is the live set of this worker's connections (uvicorn's
    `server_state.connections`: protocols add themselves when a connection is made and leave when
    it is lost, also across a WebSocket upgrade), so the published load is always what is open now.
    """

    def __init__(self, sock: socket.socket, board, index: int, protocol_factory: Callable[[], asyncio.Protocol],
                 connections: Sized, *, stall: float = STALL, retry: float = RETRY,
                 publish_every: float = PUBLISH_EVERY) -> None:
        self._sock = sock
        self._board = board
        self._index = index
        self._factory = protocol_factory
        self._connections = connections
        self._stall = stall
        self._retry = retry
        self._publish_every = publish_every
        self._attaching = 0  # accepted, transport not made yet
        # While a connection waits for a less-loaded worker: since when the others' loads are unchanged
        # (no worker accepted anything), and those loads.
        self._waiting_since: float | None = None
        self._others_seen: tuple[int, ...] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._publisher: asyncio.TimerHandle | None = None
        self._watching = False
        self._stopped = False
        self._tasks: set[asyncio.Task] = set()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock.setblocking(False)
        self.publish()
        self._watch()
        self._publish_periodically()

    def stop(self) -> None:
        """Stop accepting (shutdown): the other workers no longer defer to this one."""
        self._stopped = True
        self._unwatch()
        for handle in (self._timer, self._publisher):
            if handle is not None:
                handle.cancel()
        self._board[self._index] = OFF

    # ------------------------------------------------------------------ load
    def load(self) -> int:
        return len(self._connections) + self._attaching

    def publish(self) -> None:
        if not self._stopped:
            self._board[self._index] = self.load()

    def _publish_periodically(self) -> None:
        self.publish()
        self._publisher = self._loop.call_later(self._publish_every, self._publish_periodically)

    def _my_turn(self) -> bool:
        mine = self._board[self._index]
        return all(mine <= load for i, load in enumerate(self._board) if i != self._index)

    # ------------------------------------------------------------------ accepting
    def _watch(self) -> None:
        if not self._watching and not self._stopped:
            self._loop.add_reader(self._sock.fileno(), self._on_readable)
            self._watching = True

    def _unwatch(self) -> None:
        if self._watching:
            self._loop.remove_reader(self._sock.fileno())
            self._watching = False

    def _look_again(self, delay: float) -> None:
        self._unwatch()
        self._timer = self._loop.call_later(delay, self._rewatch)

    def _rewatch(self) -> None:
        self._timer = None
        if not _readable(self._sock):
            self._waiting_since = None  # another worker took what was waiting
        self._watch()

    def _on_readable(self) -> None:
        self.publish()
        if not self._my_turn():
            now = time.monotonic()
            others = tuple(load for i, load in enumerate(self._board) if i != self._index)
            if self._waiting_since is None or others != self._others_seen:
                # A burst keeps the socket readable for a while; only a stretch without any other
                # worker accepting counts as stalling.
                self._waiting_since, self._others_seen = now, others
            if now - self._waiting_since < self._stall:
                self._look_again(self._retry)
                return
            # The least-loaded worker has left a connection waiting too long: take it.
        for _ in range(MAX_ACCEPTS_PER_WAKEUP):
            try:
                conn, _addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # another worker was faster
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # out of file descriptors or memory: back off instead of
                # spinning on a socket that stays readable (what asyncio's own server does)
                log.error("accept failed (%s); pausing for 1 s", exc.strerror or exc)
                self._look_again(1.0)
                return
            self._waiting_since = None
            self._attaching += 1
            self.publish()
            task = self._loop.create_task(self._attach(conn))
            self._tasks.add(task)  # a reference until done: the loop keeps only a weak one
            task.add_done_callback(self._tasks.discard)
            if not self._my_turn():
                return

    def _protocol(self) -> asyncio.Protocol:
        """The server's protocol, publishing this worker's load as soon as the connection closes:
        a client that leaves and comes back at once (a load balancer's pool, the bench between its
        warm-up and its run) would otherwise find a stale count here for up to PUBLISH_EVERY and
        be sent to the wrong worker. (After a WebSocket upgrade another protocol owns the
        connection; the periodic publication covers that case.)"""
        protocol = self._factory()
        lost = protocol.connection_lost

        def connection_lost(exc: Exception | None) -> None:
            lost(exc)
            self.publish()

        protocol.connection_lost = connection_lost  # type: ignore[method-assign]
        return protocol

    async def _attach(self, conn: socket.socket) -> None:
        try:
            # Sets non-blocking and TCP_NODELAY, makes the transport, calls connection_made.
            await self._loop.connect_accepted_socket(self._protocol, sock=conn)
        except Exception:  # noqa: BLE001 - one bad connection never stops the accept loop
            log.exception("could not set up an accepted connection")
            conn.close()
        finally:
            self._attaching -= 1
            self.publish()


def _readable(sock: socket.socket) -> bool:
    """Is a connection waiting? (a zero-timeout poll; poll() has no limit on descriptor numbers)"""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    try:
        return bool(poller.poll(0))
    except OSError:
        return False
