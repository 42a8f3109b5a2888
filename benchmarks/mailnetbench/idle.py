# -*- test-case-name: tests.test_benchmarks -*-
"""
Idle sessions: open many SMTP connections, take each through the greeting
and EHLO, and leave them open, so that the driver can read what they cost
the server in memory.
"""

from typing import List

import attr
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

# Connections being set up at once.  Twisted listens with a backlog of 50;
# more pending connects than that would only be retried by the kernel.
PENDING = 40


@attr.s(auto_attribs=True)
class IdleRun:
    wanted: int
    established: int = 0
    errors: List[str] = attr.ib(factory=list)
    protocols: List["IdleProtocol"] = attr.ib(factory=list)


class IdleProtocol(Protocol):
    """Greeting, EHLO, then nothing: C{ready} fires after the EHLO reply."""

    def __init__(self, run: IdleRun, ready: Deferred) -> None:
        self._run = run
        self._ready = ready
        self._buffer = b""
        self._state = 0
        self.closing = False

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\r\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\r\n", 1)
            if line[3:4] == b"-":
                continue
            if self._state == 0 and line.startswith(b"220"):
                self._state = 1
                self.transport.write(b"EHLO idle.sender.test\r\n")
            elif self._state == 1 and line.startswith(b"250"):
                self._state = 2
                self._run.established += 1
                self._fire()
            else:
                self._run.errors.append("unexpected %r" % (line,))
                self.transport.abortConnection()

    def _fire(self) -> None:
        ready, self._ready = self._ready, None
        if ready is not None:
            ready.callback(None)

    def connectionLost(self, reason: Failure = None) -> None:
        if not self.closing:
            self._run.errors.append("lost: %s" % (reason.getErrorMessage() if reason else "?",))
        self._fire()


async def openIdle(reactor, port: int, wanted: int, timeout: float) -> IdleRun:
    """
    Open up to C{wanted} sessions, C{PENDING} at a time; stop opening more
    after C{timeout} seconds.
    """
    run = IdleRun(wanted)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=30)
    semaphore = DeferredSemaphore(PENDING)
    deadline = reactor.seconds() + timeout

    async def one() -> None:
        if reactor.seconds() > deadline:
            return
        ready: Deferred = Deferred()
        try:
            p = await endpoint.connect(Factory.forProtocol(lambda: IdleProtocol(run, ready)))
        except Exception as e:
            run.errors.append("connect: %s" % (e,))
            return
        run.protocols.append(p)
        try:
            await ready.addTimeout(30, reactor)
        except Exception:
            run.errors.append("no EHLO reply within 30s")

    # Stop early once failures show the limit has been reached.
    waits = []
    for _ in range(wanted):
        if len(run.errors) > 50:
            break
        waits.append(semaphore.run(lambda: Deferred.fromCoroutine(one())))
        if len(waits) % PENDING == 0:
            await waits[-PENDING]
    for d in waits:
        await d
    return run


def closeIdle(run: IdleRun) -> None:
    for p in run.protocols:
        p.closing = True
        if p.transport is not None:
            p.transport.abortConnection()
