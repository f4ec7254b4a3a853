"""Gunicorn's threaded worker, with whole requests read before a thread is given one.

Gunicorn's ``gthread`` worker hands a connection to one of its few threads as
soon as it has any data (or after 5 s of nothing), and the thread then blocks
on the socket until the request is complete. A client that sends half its
headers and stops holds that thread as long as it likes: with 4 threads per
process, 8 such sockets silence two processes.

:class:`BufferingThreadWorker` reads the request in the worker's event loop
instead, without blocking and without a thread: the headers, and a body up
to ``MAX_BODY_BYTES`` when its length is known (``Content-Length``, or a
chunked body up to its last chunk). Only a complete request goes to a thread,
so the threads only ever wait for Redis. A connection that has not delivered
its request within :data:`READ_TIMEOUT_SECONDS` is answered 408 and closed. The
same applies to every request on a kept-alive connection.

Connections still count against ``worker_connections`` (1000 per process),
which bounds memory: a buffered request is at most ``MAX_HEAD_BYTES`` plus the
body limit.

It also spreads connections evenly over the worker processes. All of them
wait on the one listening socket and whichever wakes first accepts; the one
that just accepted tends to win again, so 16 keep-alive connections opened
together often all landed on one process, which then ran out of its one core
(the GIL) while the other idled: throughput halved for as long as the
connections lived. Now each process publishes its number of open connections
in memory shared by the workers (:class:`Placement`), and a process with more
than :data:`PLACEMENT_SLACK` above the least loaded one stops accepting until
the others catch up.

An app may also name requests that are cheaper answered on the event loop's
own thread than handed to the pool and back (:class:`InlineRequests`): each
hand-off wakes a thread and passes the GIL, and at a few hundred requests a
second per process those wake-ups cost more CPU than the request itself, and
queue behind one another. Such a request, once whole, is handled right there,
with its socket's reads and writes bounded by :data:`INLINE_SOCKET_SECONDS`;
the app promises each waits at most that long for anything else. One that
takes longer than :data:`INLINE_SLOW_SECONDS` (Redis slow, say) sends the
app's requests back to the pool for :data:`INLINE_PAUSE_SECONDS`.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import re
import selectors
import socket
import struct
import time
from concurrent.futures import Future
from enum import StrEnum
from functools import partial
from typing import Any, Protocol

from gunicorn.workers.gthread import TConn, ThreadWorker

#: A request must arrive whole within this many seconds of its first byte being awaited.
READ_TIMEOUT_SECONDS = 10.0
#: Request line and headers larger than this go to gunicorn's parser unread, which refuses them.
MAX_HEAD_BYTES = 64 * 1024
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*(\d{1,12})[ \t]*(?=\r\n|$)")
_CHUNKED = re.compile(rb"\r\ntransfer-encoding[ \t]*:[^\r\n]*chunked")
_EXPECT = re.compile(rb"\r\nexpect[ \t]*:")
_TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: application/json\r\n"
    b'Content-Length: 28\r\n\r\n{"error": "request timeout"}'
)


#: How many more open connections than the least loaded process a process may hold.
PLACEMENT_SLACK = 1
#: A process that has not reported for this long is gone (or stuck) and not waited for.
PLACEMENT_STALE_SECONDS = 2.5
#: How often a process that holds back looks again whether it may accept.
PLACEMENT_RECHECK_SECONDS = 0.02

#: An inline request's socket reads and writes fail after this long (SO_RCVTIMEO, SO_SNDTIMEO).
INLINE_SOCKET_SECONDS = 0.25
#: An inline request that took longer than this pauses inline handling ...
INLINE_SLOW_SECONDS = 0.1
#: ... for this long: meanwhile the pool's threads take those requests, as they take the rest.
INLINE_PAUSE_SECONDS = 5.0
#: The app's attribute that names its inline requests (an :class:`InlineRequests`).
INLINE_ATTRIBUTE = "inline_requests"
_INLINE_TIMEOUT = struct.pack("ll", 0, int(INLINE_SOCKET_SECONDS * 1_000_000))
_NO_TIMEOUT = struct.pack("ll", 0, 0)


class InlineRequests(Protocol):
    """What an app says about the requests web/gthread.py may handle on its event loop."""

    #: A request whose first bytes are one of these (method, space, path prefix).
    prefixes: tuple[bytes, ...]

    def bind_thread(self) -> bool:
        """Called once on the event loop's thread before it serves: make every wait of
        such a request on this thread short (at most INLINE_SOCKET_SECONDS). False: don't
        handle any inline."""
        ...


class Placement:
    """Each worker process's open connections, in shared memory made before the fork.

    One slot per process: its pid, its connection count and when it last
    reported (``time.monotonic``, the same clock in every process). Two
    processes may each see the other's count a moment late and both hold
    back; each looks again every :data:`PLACEMENT_RECHECK_SECONDS`, so that
    lasts no longer.
    """

    def __init__(self, slots: int) -> None:
        self.pids = multiprocessing.RawArray("q", slots)
        self.conns = multiprocessing.RawArray("q", slots)
        self.beats = multiprocessing.RawArray("d", slots)
        self.lock = multiprocessing.Lock()

    def claim(self, pid: int) -> int | None:
        """A slot for ``pid``: a free one, or one whose process has stopped reporting."""
        now = time.monotonic()
        with self.lock:
            for index in range(len(self.pids)):
                stale = now - self.beats[index] > PLACEMENT_STALE_SECONDS
                if self.pids[index] in (0, pid) or stale:
                    self.pids[index], self.conns[index], self.beats[index] = pid, 0, now
                    return index
        return None

    def report(self, index: int, conns: int) -> bool:
        """Publish this process's count; True when it may accept another connection."""
        now = time.monotonic()
        self.conns[index] = conns
        self.beats[index] = now
        fewest = min(
            (
                self.conns[i]
                for i in range(len(self.pids))
                if self.pids[i] and now - self.beats[i] <= PLACEMENT_STALE_SECONDS
            ),
            default=conns,
        )
        return conns <= fewest + PLACEMENT_SLACK

    def release(self, index: int) -> None:
        with self.lock:
            self.pids[index], self.conns[index], self.beats[index] = 0, 0, 0.0


def buffering_worker(max_body_bytes: int, processes: int = 1) -> type[BufferingThreadWorker]:
    """The worker class for an app whose bodies are at most ``max_body_bytes``.

    Call it in gunicorn's master, before the workers are forked: the
    :class:`Placement` it makes is shared by every worker (and replacements).
    """
    placement = Placement(max(4, processes * 4)) if processes > 1 else None
    return type(
        "BufferingThreadWorker",
        (BufferingThreadWorker,),
        {"body_limit": max_body_bytes + 1, "placement": placement},
    )


class RequestState(StrEnum):
    """How much of a request :func:`request_state` found buffered."""

    INCOMPLETE = "incomplete"  # not yet: keep reading
    COMPLETE = "complete"  # enough to hand on: the rest, if any, is the app's to read or refuse
    WHOLE = "whole"  # every byte of it here, framed by its length


def request_state(data: bytes | bytearray, body_limit: int) -> RequestState:
    """Whether ``data`` holds a whole request head and as much body as is worth waiting for.

    The body is awaited only when its length is known and not over
    ``body_limit`` (the app refuses a longer one without reading it). With
    ``Expect: 100-continue`` the client waits for us, so the head is enough.
    ``WHOLE``: a ``Content-Length`` body within the limit, all of it read, no
    ``Expect``, no chunks; only such a request can be answered without
    waiting for its client.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return RequestState.COMPLETE if len(data) > MAX_HEAD_BYTES else RequestState.INCOMPLETE
    head = bytes(data[:end]).lower()
    if _EXPECT.search(head):
        return RequestState.COMPLETE
    body = len(data) - end - 4
    if _CHUNKED.search(head):
        done = body > body_limit or data.endswith(b"0\r\n\r\n")
        return RequestState.COMPLETE if done else RequestState.INCOMPLETE
    match = _CONTENT_LENGTH.search(head)
    if match is None:
        return RequestState.COMPLETE
    length = int(match.group(1))
    if length > body_limit:
        return RequestState.COMPLETE
    return RequestState.WHOLE if body >= length else RequestState.INCOMPLETE


class BufferingThreadWorker(ThreadWorker):  # type: ignore[misc]
    """``gthread`` that gives a thread only a connection whose request has fully arrived."""

    #: The most body worth buffering: the app's limit plus its one-byte overflow probe.
    body_limit = 64 * 1024 + 1
    #: Shared with the other workers; None with a single worker process.
    placement: Placement | None = None
    _slot: int | None = None
    _connection_limit = 1000
    #: Requests starting with one of these are handled on the event loop (InlineRequests).
    inline_prefixes: tuple[bytes, ...] = ()
    #: No request is handled inline before this time (time.monotonic()).
    inline_paused_until = 0.0

    def init_process(self) -> None:
        self.reading: dict[int, TConn] = {}
        if self.placement is not None:
            self._slot = self.placement.claim(os.getpid())
        super().init_process()

    @property
    def worker_connections(self) -> int:
        """gthread's run loop accepts while ``nr_conns < worker_connections``.

        Read once per loop turn, so it is where this process reports its
        connections and, when it holds more than its share, stops accepting.
        """
        if self._slot is None or self.placement is None or not self.alive:
            return self._connection_limit
        if self.placement.report(self._slot, self.nr_conns):
            return self._connection_limit
        return min(int(self.nr_conns), self._connection_limit)

    @worker_connections.setter
    def worker_connections(self, value: int) -> None:
        self._connection_limit = value

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        """While holding back (over its share), look again every few milliseconds."""
        held = self._slot is not None and not self._accepting and self.alive
        super().wait_for_and_dispatch_events(PLACEMENT_RECHECK_SECONDS if held else timeout)

    def run(self) -> None:
        inline: InlineRequests | None = getattr(self.wsgi, INLINE_ATTRIBUTE, None)
        # Not over TLS (its handshake happens in the thread), nor with cleartext HTTP/2 on
        # (an upgraded connection is served for as long as it lives, by whoever took it).
        plain_http1 = not self.cfg.is_ssl and getattr(self.cfg, "http2_cleartext", "off") == "off"
        if inline is not None and plain_http1 and inline.bind_thread():
            self.inline_prefixes = tuple(inline.prefixes)
        try:
            super().run()
        finally:
            if self._slot is not None and self.placement is not None:
                self.placement.release(self._slot)

    # ------------------------------------------------------------ reading
    def accept(self, listener: socket.socket) -> None:
        try:
            client, address = listener.accept()
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = TConn(self.cfg, client, address, listener.getsockname())  # non-blocking
        if self.cfg.is_ssl:  # the TLS handshake happens in the thread: nothing to buffer
            self.enqueue_req(conn)
            return
        self._await_request(conn)

    def on_client_socket_readable(self, conn: TConn, client: Any) -> None:
        """A kept-alive connection has a new request: read it here too, not in a thread."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        if self.cfg.is_ssl:
            self.enqueue_req(conn)
            return
        self._await_request(conn)
        self._on_readable(conn, client)

    def _await_request(self, conn: TConn) -> None:
        conn.prebuffer = bytearray()
        conn.read_deadline = time.monotonic() + READ_TIMEOUT_SECONDS
        self.reading[conn.sock.fileno()] = conn
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def _on_readable(self, conn: TConn, _client: Any) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        if not data:  # the client closed its side
            if conn.prebuffer:  # what it sent is all there is: let gunicorn and the app judge it
                self._stop_reading(conn)
                self.enqueue_req(conn)
            else:
                self._drop(conn)
            return
        conn.prebuffer += data
        state = request_state(conn.prebuffer, self.body_limit)
        if state is not RequestState.INCOMPLETE:
            self._stop_reading(conn)
            self._dispatch(conn, state)

    def _dispatch(self, conn: TConn, state: RequestState) -> None:
        """A request to handle: here when it is whole and the app allows it, else by a thread."""
        if (
            state is RequestState.WHOLE
            and self.inline_prefixes
            and conn.prebuffer.startswith(self.inline_prefixes)
            and time.monotonic() >= self.inline_paused_until
        ):
            self._handle_inline(conn)
        else:
            self.enqueue_req(conn)

    def _handle_inline(self, conn: TConn) -> None:
        """``handle`` on this thread, then what the pool's done-callback would do."""
        done: Future[Any] = Future()
        started = time.monotonic()
        try:
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _INLINE_TIMEOUT)
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _INLINE_TIMEOUT)
            done.set_result(self.handle(conn))
        except BaseException as err:  # noqa: BLE001 - as the pool would hand it on
            done.set_exception(err)
        took = time.monotonic() - started
        try:
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _NO_TIMEOUT)
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _NO_TIMEOUT)
        except OSError:
            pass  # closed: finish_request closes the connection
        if took > INLINE_SLOW_SECONDS:
            self.inline_paused_until = time.monotonic() + INLINE_PAUSE_SECONDS
            self.log.warning(
                "a request took %.3f s on the event loop; the pool's threads take such "
                "requests for the next %g s",
                took,
                INLINE_PAUSE_SECONDS,
            )
        self.finish_request(conn, done)

    def _stop_reading(self, conn: TConn) -> None:
        self.reading.pop(conn.sock.fileno(), None)
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass

    def _drop(self, conn: TConn, answer: bytes | None = None) -> None:
        self._stop_reading(conn)
        self.nr_conns -= 1
        if answer:
            try:
                conn.sock.send(answer)
            except OSError:
                pass
        conn.close()

    def murder_keepalived(self, force: bool = False) -> None:
        """Also close connections whose request is overdue (408), or idle while stopping."""
        super().murder_keepalived(force)
        now = time.monotonic()
        for conn in list(self.reading.values()):
            if now >= conn.read_deadline:
                self._drop(conn, _TIMEOUT_ANSWER if conn.prebuffer else None)
            elif (force or not self.alive) and not conn.prebuffer:
                self._drop(conn)

    def finish_request(self, conn: TConn, fs: Any) -> None:
        """A pipelined next request read ahead by the parser is awaited here too."""
        try:
            keep = fs.result() if not fs.cancelled() else False
        except Exception:  # noqa: BLE001 - gthread's own finish_request deals with it
            keep = False
        if keep is True and self.alive and not self.cfg.is_ssl:
            pending = conn.parser.unreader.take_buffered()
            if pending:
                conn.sock.setblocking(False)
                self._await_request(conn)
                conn.prebuffer += pending
                state = request_state(conn.prebuffer, self.body_limit)
                if state is not RequestState.INCOMPLETE:
                    self._stop_reading(conn)
                    # on the next loop turn: a long pipeline must not recurse through here
                    self.method_queue.defer(self._dispatch, conn, state)
                return
        super().finish_request(conn, fs)

    # ------------------------------------------------------------ handling
    def handle(self, conn: TConn) -> Any:
        """Feed the buffered request to gunicorn's parser, then handle it as gthread does."""
        data = getattr(conn, "prebuffer", None)
        if data is not None:
            conn.prebuffer = None
            conn.data_ready = True
            conn.sock.setblocking(True)
            try:
                conn.init()
            except OSError:
                return False
            conn.parser.unreader.unread(bytes(data))
        return super().handle(conn)
