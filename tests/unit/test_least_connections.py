"""Least-connections accepting from one shared listening socket (`pbxbot serve --workers N`).

Two acceptors, each on its own event loop in its own thread, stand in for two worker processes:
they share the listening socket and the board exactly as the workers do. Each connection is told
which "worker" holds it (the protocol writes one byte when the connection is made).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import threading
import time

import pytest

from bot.web.least_connections import OFF, LeastConnectionsAcceptor, all_accepting, new_board


class Tagged(asyncio.Protocol):
    """Like uvicorn's protocols: in the worker's connection set while the connection is open."""

    def __init__(self, tag: bytes, connections: set) -> None:
        self.tag, self.connections = tag, connections

    def connection_made(self, transport) -> None:
        self.connections.add(self)
        transport.write(self.tag)

    def connection_lost(self, exc) -> None:
        self.connections.discard(self)


class Worker:
    """An event loop in a thread running one acceptor (a worker process, in miniature)."""

    def __init__(self, sock: socket.socket, board, index: int, **options) -> None:
        self.tag = b"AB"[index:index + 1]
        self.connections: set = set()
        self.loop = asyncio.new_event_loop()
        self.acceptor = LeastConnectionsAcceptor(sock, board, index, lambda: Tagged(self.tag, self.connections),
                                                 self.connections, **options)
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(self.acceptor.start)
            self.loop.call_soon(ready.set)
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(5)

    def stop(self) -> None:
        done = threading.Event()

        def stop_acceptor() -> None:
            self.acceptor.stop()
            done.set()

        self.loop.call_soon_threadsafe(stop_acceptor)
        done.wait(5)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def listener():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    yield sock
    sock.close()


@pytest.fixture
def board():
    return new_board(multiprocessing.get_context("spawn"), 2)


@pytest.fixture
def workers(listener, board):
    started: list[Worker] = []

    def start(*indexes, **options):
        for i in indexes:
            started.append(Worker(listener, board, i, **options))
        return started

    yield start
    for w in started:
        w.close()


def connect(listener, n: int) -> list[socket.socket]:
    """n clients connected at once (a burst in the backlog, like a load generator's start)."""
    return [socket.create_connection(listener.getsockname(), timeout=5) for _ in range(n)]


def holder(client: socket.socket) -> bytes:
    return client.recv(1)


def test_a_burst_of_connections_is_split_evenly_between_two_workers(listener, workers):
    workers(0, 1)
    clients = connect(listener, 16)
    tags = [holder(c) for c in clients]
    # asyncio's own server on a shared socket gives the whole burst to the worker that wakes first
    assert abs(tags.count(b"A") - tags.count(b"B")) <= 2, tags
    for c in clients:
        c.close()


def test_new_connections_go_to_the_worker_that_holds_fewest(listener, workers):
    workers(0, 1)
    clients = connect(listener, 8)
    by_worker = {b"A": [], b"B": []}
    for c in clients:
        by_worker[holder(c)].append(c)
    assert len(by_worker[b"A"]) >= 3 and len(by_worker[b"B"]) >= 3
    # Worker A's clients leave; once that is published, A holds 0 and B 4 or so.
    for c in by_worker[b"A"]:
        c.close()
    time.sleep(0.4)  # connection_lost, then the periodic publication (every 0.1 s)
    fresh = connect(listener, 3)
    assert [holder(c) for c in fresh] == [b"A"] * 3, "not round robin: the emptier worker takes them all"
    for c in fresh + by_worker[b"B"]:
        c.close()


def test_a_waiting_connection_is_taken_anyway_when_the_least_loaded_worker_does_not_accept(listener, board, workers):
    board[1] = 0  # worker B claims to be idle but never accepts (hung, or dying)
    workers(0, stall=0.3)
    [first] = connect(listener, 1)
    assert holder(first) == b"A"  # a tie (0 and 0): A may take it
    t0 = time.monotonic()
    [second] = connect(listener, 1)
    assert holder(second) == b"A"
    waited = time.monotonic() - t0
    # A holds more than B: it deferred to B for the stall time, then accepted
    assert 0.25 <= waited < 3, f"{waited:.2f} s"
    first.close()
    second.close()


def test_a_stopped_worker_takes_no_connections_and_others_stop_deferring_to_it(listener, board, workers):
    a, b = workers(0, 1, stall=2.0)
    assert all_accepting(board)
    a.stop()
    assert board[0] == OFF
    clients = connect(listener, 4)
    t0 = time.monotonic()
    assert [holder(c) for c in clients] == [b"B"] * 4
    assert time.monotonic() - t0 < 1.0, "B accepted at once instead of waiting out the stall (2 s) for A"
    for c in clients:
        c.close()


def test_connections_reset_by_their_clients_are_not_counted_and_accepting_goes_on(listener, board, workers):
    import struct

    workers(0, 1)
    for _ in range(10):  # each client resets (RST) as soon as it is connected
        c = socket.create_connection(listener.getsockname(), timeout=5)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
    deadline = time.monotonic() + 3
    while (board[0], board[1]) != (0, 0):  # published as closed within the publication period
        assert time.monotonic() < deadline, (board[0], board[1])
        time.sleep(0.05)
    clients = connect(listener, 4)
    assert sorted(holder(c) for c in clients) == [b"A", b"A", b"B", b"B"]
    for c in clients:
        c.close()


def test_a_closed_connection_is_published_at_once(listener, board, workers):
    a, b = workers(0, 1, publish_every=30.0)  # no periodic publication during the test
    clients = connect(listener, 4)
    tags = [holder(c) for c in clients]
    assert sorted(tags) == [b"A", b"A", b"B", b"B"]
    for c, tag in zip(clients, tags):
        if tag == b"A":
            c.close()
    deadline = time.monotonic() + 1.0
    while board[0] != 0:
        assert time.monotonic() < deadline, "the worker's count still includes closed connections"
        time.sleep(0.01)
    fresh = connect(listener, 2)  # right away: both go to the worker that has room
    assert [holder(c) for c in fresh] == [b"A", b"A"]
    for c in fresh + [c for c, tag in zip(clients, tags) if tag == b"B"]:
        c.close()


class OutOfDescriptors:
    """A listening socket whose accept() fails as it does when the process has no descriptors left."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.accepts = sock, 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)

    def accept(self):
        import errno

        self.accepts += 1
        raise OSError(errno.EMFILE, "Too many open files")


def test_a_failing_accept_backs_off_instead_of_spinning(listener, board, caplog):
    failing = OutOfDescriptors(listener)
    worker = Worker(failing, board, 0)
    try:
        pending = socket.create_connection(listener.getsockname(), timeout=5)  # the socket stays readable
        time.sleep(0.5)
        assert 1 <= failing.accepts <= 2, f"{failing.accepts} accept calls in 0.5 s"
        assert "accept failed (Too many open files); pausing for 1 s" in caplog.text
        pending.close()
    finally:
        worker.close()
