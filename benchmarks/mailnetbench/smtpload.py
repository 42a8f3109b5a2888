# -*- test-case-name: tests.test_benchmarks -*-
"""
The SMTP load generator: many concurrent connections, each sending
messages one after another (RFC 5321 §3.3), with PIPELINING (RFC 2920)
when the server offers it, as a real MTA does.

A lean client of its own rather than L{twisted.mail.smtp.ESMTPClient}: the
load generator shares the machine with the server and must cost far less
than it.
"""

import time
from collections import deque
from typing import Callable, Deque, Dict, List, Optional, Sequence, Tuple

import attr
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from mailnetbench.messages import SENDER, header


@attr.s(auto_attribs=True)
class Workload:
    """
    Hands out message numbers until C{count} are taken or C{deadline}
    (a C{time.perf_counter} value) has passed: every run is bounded.
    """

    count: int
    deadline: float
    taken: int = 0

    def take(self) -> Optional[int]:
        if self.taken >= self.count or time.perf_counter() >= self.deadline:
            return None
        self.taken += 1
        return self.taken - 1


@attr.s(auto_attribs=True)
class SMTPRun:
    """What one SMTP case saw, client side."""

    name: str
    recipients: Sequence[str]
    body: bytes
    workload: Workload
    accepted: Dict[str, str] = attr.ib(factory=dict)  # id -> recipient
    latencies: List[float] = attr.ib(factory=list)
    refused: List[str] = attr.ib(factory=list)
    errors: List[str] = attr.ib(factory=list)
    pipelining: Optional[bool] = None
    firstSent: Optional[float] = None
    lastAccepted: Optional[float] = None

    def nextMessage(self) -> Optional[Tuple[str, str, Sequence[bytes]]]:
        """@return: C{(id, recipient, chunks to write)} or L{None} when done."""
        n = self.workload.take()
        if n is None:
            return None
        ident = "%s-%d" % (self.name, n)
        recipient = self.recipients[n % len(self.recipients)]
        return ident, recipient, (header(ident, recipient), self.body, b".\r\n")


class SMTPLoadProtocol(Protocol):
    """
    One client connection: greeting, EHLO, then transactions until the
    workload is exhausted, then QUIT.
    """

    def __init__(self, run: SMTPRun, done: Deferred, clock: Callable[[], float] = time.perf_counter) -> None:
        self._run = run
        self._done = done
        self._clock = clock
        self._buffer = b""
        self._lines: List[bytes] = []
        self._expect: Deque[Callable[[int, List[bytes]], None]] = deque([self._greeting])
        self._quitting = False
        self._current: Optional[Tuple[str, str, Sequence[bytes]]] = None
        self._ok = True
        self._failure: List[bytes] = []
        self._started = 0.0
        self._pipelining = False

    def dataReceived(self, data: bytes) -> None:
        buffer = self._buffer + data
        start = 0
        while True:
            end = buffer.find(b"\r\n", start)
            if end < 0:
                break
            line = buffer[start:end]
            start = end + 2
            self._lines.append(line)
            # RFC 5321 §4.2.1: "NNN-" continues a reply, "NNN " ends it.
            if line[3:4] != b"-":
                lines, self._lines = self._lines, []
                try:
                    code = int(line[:3])
                except ValueError:
                    code = 0
                if not self._expect:
                    self._protocolError("unexpected reply %r" % (line,))
                    return
                self._expect.popleft()(code, lines)
        self._buffer = buffer[start:]

    def _protocolError(self, problem: str) -> None:
        self._run.errors.append(problem)
        self.transport.abortConnection()

    def _greeting(self, code: int, lines: List[bytes]) -> None:
        if code != 220:
            return self._protocolError("greeting %r" % (lines,))
        self.transport.write(b"EHLO load.sender.test\r\n")
        self._expect.append(self._ehlo)

    def _ehlo(self, code: int, lines: List[bytes]) -> None:
        if code != 250:
            return self._protocolError("EHLO %r" % (lines,))
        self._pipelining = any(line[4:].upper().split(b" ")[0] == b"PIPELINING" for line in lines[1:])
        if self._run.pipelining is None:
            self._run.pipelining = self._pipelining
        self._nextMessage()

    def _nextMessage(self) -> None:
        self._current = self._run.nextMessage()
        if self._current is None:
            self._quitting = True
            self.transport.write(b"QUIT\r\n")
            self._expect.append(self._quit)
            return
        ident, recipient, _ = self._current
        self._ok = True
        self._failure = []
        self._started = self._clock()
        if self._run.firstSent is None:
            self._run.firstSent = self._started
        mail = b"MAIL FROM:<%s>\r\n" % (SENDER.encode("ascii"),)
        rcpt = b"RCPT TO:<%s>\r\n" % (recipient.encode("ascii"),)
        if self._pipelining:
            # RFC 2920 §3.1: MAIL, RCPT and DATA may go in one write.
            self.transport.write(mail + rcpt + b"DATA\r\n")
            self._expect.extend([self._envelopeReply, self._envelopeReply, self._dataReply])
        else:
            self.transport.write(mail)
            self._expect.append(self._mailReply)

    def _envelopeReply(self, code: int, lines: List[bytes]) -> None:
        if code != 250:
            self._ok = False
            self._failure.extend(lines)

    def _mailReply(self, code: int, lines: List[bytes]) -> None:
        if code != 250:
            return self._refuse(lines, reset=True)
        assert self._current is not None
        self.transport.write(b"RCPT TO:<%s>\r\n" % (self._current[1].encode("ascii"),))
        self._expect.append(self._rcptReply)

    def _rcptReply(self, code: int, lines: List[bytes]) -> None:
        if code != 250:
            return self._refuse(lines, reset=True)
        self.transport.write(b"DATA\r\n")
        self._expect.append(self._dataReply)

    def _dataReply(self, code: int, lines: List[bytes]) -> None:
        assert self._current is not None
        if code == 354 and self._ok:
            self.transport.writeSequence(self._current[2])
            self._expect.append(self._finalReply)
            return
        if code == 354:
            # The server said yes to DATA though it refused the envelope:
            # end the (empty) message; its reply is a refusal either way.
            self.transport.write(b".\r\n")
            self._failure.extend(lines)
            self._expect.append(lambda code, more: self._refuse(self._failure + more, reset=True))
            return
        self._refuse(self._failure + lines, reset=True)

    def _finalReply(self, code: int, lines: List[bytes]) -> None:
        assert self._current is not None
        if code != 250:
            return self._refuse(lines, reset=False)
        now = self._clock()
        self._run.latencies.append(now - self._started)
        self._run.accepted[self._current[0]] = self._current[1]
        self._run.lastAccepted = now
        self._nextMessage()

    def _refuse(self, lines: List[bytes], reset: bool) -> None:
        assert self._current is not None
        self._run.refused.append("%s: %s" % (self._current[0], b" / ".join(lines).decode("ascii", "replace")))
        if reset:
            self.transport.write(b"RSET\r\n")
            self._expect.append(lambda code, lines: self._nextMessage())
        else:
            self._nextMessage()

    def _quit(self, code: int, lines: List[bytes]) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:
        if not self._quitting:
            where = self._current[0] if self._current else "session"
            self._run.errors.append("connection lost during %s: %s" % (where, reason.getErrorMessage() if reason else "?"))
        done, self._done = self._done, None
        if done is not None:
            done.callback(None)


async def runSMTP(reactor, port: int, run: SMTPRun, connections: int, timeout: float) -> SMTPRun:
    """
    Open C{connections} connections to C{127.0.0.1:port} and send
    C{run}'s workload through them; give up (aborting every connection)
    after C{timeout} seconds.
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=30)
    protocols: List[SMTPLoadProtocol] = []
    finished: List[Deferred] = []

    def connected(p: SMTPLoadProtocol) -> None:
        protocols.append(p)

    def failed(f: Failure) -> None:
        run.errors.append("connect: %s" % (f.getErrorMessage(),))

    for _ in range(connections):
        done: Deferred = Deferred()
        finished.append(done)
        d = endpoint.connect(Factory.forProtocol(lambda done=done: SMTPLoadProtocol(run, done)))
        d.addCallbacks(connected, lambda f, done=done: (failed(f), done.callback(None)))

    def abort() -> None:
        run.errors.append("case timed out after %gs" % (timeout,))
        for p in protocols:
            if p.transport is not None:
                p.transport.abortConnection()

    watchdog = reactor.callLater(timeout, abort)
    await DeferredList(finished)
    if watchdog.active():
        watchdog.cancel()
    return run
