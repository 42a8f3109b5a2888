# -*- test-case-name: tests.test_benchmarks -*-
"""
The POP3 load generator (RFC 1939): log in with USER/PASS, STAT, then RETR
every message, pipelined (RFC 2449 §6.6) when the server offers
PIPELINING, then QUIT without deleting anything.

Logging in (Argon2 on the server) is timed apart from the RETRs: the
sessions log in first, wait at a barrier, then all start retrieving at
once.
"""

import time
from collections import deque
from typing import Callable, Deque, List, Optional, Tuple

import attr
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

# How many RETRs may be outstanding when pipelining.
WINDOW = 32


@attr.s(auto_attribs=True)
class POP3Session:
    """What one POP3 session saw."""

    user: str
    count: int = 0
    octets: int = 0
    retrieved: int = 0
    retrievedOctets: int = 0
    missingIds: int = 0
    errors: List[str] = attr.ib(factory=list)
    pipelining: Optional[bool] = None
    loginStarted: float = 0.0
    loginDone: float = 0.0
    retrStarted: float = 0.0
    retrDone: float = 0.0


class POP3LoadProtocol(Protocol):
    """
    One session.  C{ready} fires after STAT; the driver then calls
    L{startRetrieving}; C{done} fires when the connection is gone.
    """

    def __init__(self, session: POP3Session, password: str, ready: Deferred, done: Deferred, limit: Optional[int] = None) -> None:
        self.session = session
        self._password = password
        self._ready: Optional[Deferred] = ready
        self._done: Optional[Deferred] = done
        self._limit = limit
        self._buffer = b""
        self._scan = 0
        # Each expected response: (multi-line?, handler).
        self._expect: Deque[Tuple[bool, Callable[[bytes, bytes], None]]] = deque([(False, self._greeting)])
        self._quitting = False
        self._next = 1
        self._last = 0

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while self._expect:
            multi, handler = self._expect[0]
            buffer = self._buffer
            end = buffer.find(b"\r\n")
            if end < 0:
                return
            status = buffer[:end]
            if not multi or not status.startswith(b"+OK"):
                self._buffer = buffer[end + 2 :]
                self._scan = 0
                self._expect.popleft()
                handler(status, b"")
                continue
            # RFC 1939 §3: a multi-line response ends with CRLF "." CRLF;
            # the status line's own CRLF may begin it (an empty body).
            stop = buffer.find(b"\r\n.\r\n", max(end, self._scan))
            if stop < 0:
                self._scan = max(end, len(buffer) - 4)
                return
            body = buffer[end + 2 : stop + 2]
            self._buffer = buffer[stop + 5 :]
            self._scan = 0
            self._expect.popleft()
            handler(status, body)

    def _send(self, line: bytes, multi: bool, handler: Callable[[bytes, bytes], None]) -> None:
        self.transport.write(line + b"\r\n")
        self._expect.append((multi, handler))

    def _fail(self, problem: str) -> None:
        self.session.errors.append(problem)
        self.transport.abortConnection()

    def _greeting(self, status: bytes, body: bytes) -> None:
        if not status.startswith(b"+OK"):
            return self._fail("greeting %r" % (status,))
        self.session.loginStarted = time.perf_counter()
        self._send(b"CAPA", True, self._capa)

    def _capa(self, status: bytes, body: bytes) -> None:
        capabilities = [line.split(b" ")[0].upper() for line in body.split(b"\r\n")]
        self.session.pipelining = status.startswith(b"+OK") and b"PIPELINING" in capabilities
        self._send(b"USER " + self.session.user.encode("ascii"), False, self._user)

    def _user(self, status: bytes, body: bytes) -> None:
        if not status.startswith(b"+OK"):
            return self._fail("USER: %r" % (status,))
        self._send(b"PASS " + self._password.encode("utf-8"), False, self._pass)

    def _pass(self, status: bytes, body: bytes) -> None:
        if not status.startswith(b"+OK"):
            return self._fail("PASS: %r" % (status,))
        self._send(b"STAT", False, self._stat)

    def _stat(self, status: bytes, body: bytes) -> None:
        parts = status.split()
        if not status.startswith(b"+OK") or len(parts) < 3:
            return self._fail("STAT: %r" % (status,))
        self.session.count, self.session.octets = int(parts[1]), int(parts[2])
        self.session.loginDone = time.perf_counter()
        self._last = self.session.count if self._limit is None else min(self._limit, self.session.count)
        ready, self._ready = self._ready, None
        assert ready is not None
        ready.callback(self)

    def startRetrieving(self) -> None:
        self.session.retrStarted = time.perf_counter()
        window = WINDOW if self.session.pipelining else 1
        for _ in range(window):
            if not self._sendRetr():
                break
        if self._last == 0:
            self._finish()

    def _sendRetr(self) -> bool:
        if self._next > self._last:
            return False
        self._send(b"RETR %d" % (self._next,), True, self._retr)
        self._next += 1
        return True

    def _retr(self, status: bytes, body: bytes) -> None:
        if not status.startswith(b"+OK"):
            self.session.errors.append("RETR: %r" % (status,))
        else:
            self.session.retrieved += 1
            # Our messages have no line starting with ".", so no
            # dot-stuffing to undo: octets on the wire are octets stored.
            self.session.retrievedOctets += len(body)
            if b"\r\nX-Bench-Id: " not in body[:16384]:
                self.session.missingIds += 1
        if not self._sendRetr() and self.session.retrieved + len(self.session.errors) >= self._last:
            self._finish()

    def _finish(self) -> None:
        self.session.retrDone = time.perf_counter()
        self._quitting = True
        self._send(b"QUIT", False, lambda status, body: self.transport.loseConnection())

    def connectionLost(self, reason: Failure = None) -> None:
        if not self._quitting:
            self.session.errors.append("connection lost: %s" % (reason.getErrorMessage() if reason else "?",))
        ready, self._ready = self._ready, None
        if ready is not None:
            ready.callback(None)
        done, self._done = self._done, None
        if done is not None:
            done.callback(None)


async def runPOP3(
    reactor,
    port: int,
    users: List[str],
    password: str,
    timeout: float,
    limit: Optional[int] = None,
    onReady: Callable[[], None] = lambda: None,
) -> List[POP3Session]:
    """
    One session per user, at once: all log in, then all RETR together.

    @param limit: retrieve at most this many messages per session.
    @param onReady: called once every session has logged in, just before
        the first RETR (to start measuring).
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=30)
    sessions = [POP3Session(user) for user in users]
    readies: List[Deferred] = []
    dones: List[Deferred] = []
    protocols: List[POP3LoadProtocol] = []
    for session in sessions:
        ready: Deferred = Deferred()
        done: Deferred = Deferred()
        readies.append(ready)
        dones.append(done)

        def make(session=session, ready=ready, done=done) -> POP3LoadProtocol:
            p = POP3LoadProtocol(session, password, ready, done, limit)
            protocols.append(p)
            return p

        def failed(f: Failure, session=session, ready=ready, done=done) -> None:
            session.errors.append("connect: %s" % (f.getErrorMessage(),))
            ready.callback(None)
            done.callback(None)

        endpoint.connect(Factory.forProtocol(make)).addErrback(failed)

    def abort() -> None:
        for s in sessions:
            s.errors.append("case timed out after %gs" % (timeout,))
        for p in protocols:
            if p.transport is not None:
                p.transport.abortConnection()

    watchdog = reactor.callLater(timeout, abort)
    results = await DeferredList(readies)
    onReady()
    for _ok, p in results:
        if p is not None:
            p.startRetrieving()
    await DeferredList(dones)
    if watchdog.active():
        watchdog.cancel()
    return sessions
