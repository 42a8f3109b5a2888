# -*- test-case-name: tests.test_judge -*-
"""
The step between the SMTP server and delivery that signs submitted mail
and judges incoming mail.

L{MessageJudge.wrap} puts a L{JudgingReceiver} in front of the delivery
agent's receiver.  It spools the message (in memory up to
L{SPOOL_IN_MEMORY}, then in a temporary file in the data dir) and, at
L{JudgingReceiver.finish}, does in a worker thread what the message needs
(a message that needs only the first step below, from a client in
C{[auth] trusted_networks} on the MTA port, is not spooled: once its
header section is in and filtered, it goes on to the delivery agent's
receiver as it comes):

  - every message: C{Authentication-Results} fields claiming our host name
    as authserv-id are removed (RFC 8601 §5);
  - from an authenticated sender: C{Date} and C{Message-ID} are added when
    missing (RFC 6409 §8.3, §8.2), then it is DKIM-signed when its From
    domain has keys (L{mailnet.dkim}), an 8-bit body converted to 7 bit
    first (RFC 6376 §5.3; L{mailnet.smtp._eightbit});
  - anything else on the MTA port, from a client outside
    C{[auth] trusted_networks}: SPF, DKIM and DMARC
    (L{mailnet.verdicts}), an C{Authentication-Results} field on top, and
    the policy's refusal, if any, as the L{SMTPReply} that C{finish}
    fails with (the server sends it as the answer to the end of data).

Only header fields change (removed, or added on top or at the end of the
header section), and, when a message is signed, an 8-bit body may become
7-bit.  So the worker reads the header section (of a message above
L{DKIM_MAX_SIZE}, at most L{MAX_HEADER_SECTION}) and hands back a new one
and where the body starts in the spool; the new header section, then the
body, read from the spool a piece at a time over many reactor turns
(L{WRITE_CHUNK} each, paced by L{copyingCooperator}), go into the inner
receiver, which finishes as usual.  Only DKIM needs the whole
message in memory (dkimpy hashes it in one piece): it is read whole only
when it is to be signed or has signatures to verify, and only up to
L{DKIM_MAX_SIZE}; a larger message is not signed (a warning in the log)
and its signatures are not verified (C{dkim=policy}, RFC 8601 §2.7.1),
so DMARC rests on SPF alignment alone.  dkimpy and pyspf block; their
DNS look-ups go through the reactor's resolver
(L{mailnet.dns.BlockingDNS}).
"""

import contextlib
import datetime
import email.utils
import functools
import ipaddress
import os
import secrets
import tempfile
import threading
from typing import IO, Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

import attr
from twisted.internet import task
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.application.service import Service
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.python.failure import Failure
from zope.interface import implementer

from mailnet import dkim, verdicts
from mailnet.dns import DNSClient
from mailnet.errors import SMTPReply
from mailnet.interfaces import IMessageReceiver
from mailnet.smtp._eightbit import CannotConvert, toSevenBit

log = Logger()

#: Messages up to this size are spooled in memory, larger ones in a file.
SPOOL_IN_MEMORY = 64 * 1024
#: The inner receiver gets the message in pieces of this size (one read
#: from the spool file each).
WRITE_CHUNK = 64 * 1024
#: Copying a body from the spool file: this many pieces per reactor turn,
#: then a pause of L{COPY_PAUSE} seconds (L{copyingCooperator}).
COPY_PIECES_PER_TURN = 16
COPY_PAUSE = 0.002
#: Messages larger than this are neither DKIM-signed nor DKIM-verified:
#: dkimpy needs the whole message in memory, and copies of it while
#: canonicalizing (see L{LARGE_DKIM}).
DKIM_MAX_SIZE = 10 * 1024 * 1024
#: Messages larger than this are read whole (to sign or verify) by at most
#: L{LARGE_DKIM_AT_ONCE} worker threads at a time: dkimpy (and the 8-bit
#: conversion before signing) hold five to eight times a message while
#: they work (50-77 MB for 10 MiB, measured), so eight threads at once
#: could take 600 MB.
LARGE_DKIM = 1024 * 1024
LARGE_DKIM_AT_ONCE = 2
#: A header section larger than this (our Received field included) is
#: refused (552 5.3.4) when the message is larger than L{DKIM_MAX_SIZE}
#: (below that the message is read whole anyway).
MAX_HEADER_SECTION = 1024 * 1024

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


@attr.s(frozen=True, auto_attribs=True)
class Envelope:
    """What the SMTP session knows about one message."""

    peer: str
    helo: str
    mailFrom: str
    authenticated: bool
    role: str


@functools.lru_cache(maxsize=4096)
def isTrusted(peer: str, networks: Sequence[Network]) -> bool:
    # Cached: asked twice per message, and parsing an address is not cheap (issue 14).
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    return any(address in network for network in networks)


class HeaderSectionTooLarge(Exception):
    """The header section is larger than L{MAX_HEADER_SECTION}."""


def _headerEnd(message: bytes) -> int:
    """Where the rest after the header section starts (as L{verdicts.splitMessage} splits)."""
    if message.startswith(b"\r\n"):
        return 0
    end = message.find(b"\r\n\r\n")
    return len(message) if end < 0 else end + 2


class _Spool:
    """Message bytes: in memory, then (past L{SPOOL_IN_MEMORY}) in a temporary file."""

    def __init__(self, directory: str, limit: int) -> None:
        self._directory = directory
        self._limit = limit
        self._chunks: List[bytes] = []
        self._file: Optional[IO[bytes]] = None
        self.size = 0
        self.overflow = False

    def write(self, data: bytes) -> None:
        if self.overflow:
            return
        self.size += len(data)
        if self.size > self._limit:
            # The server refuses it at the end of data (552); keep no more.
            self.overflow = True
            self.close()
            return
        if self._file is not None:
            self._file.write(data)
            return
        self._chunks.append(data)
        if self.size > SPOOL_IN_MEMORY:
            os.makedirs(self._directory, mode=0o700, exist_ok=True)
            self._file = tempfile.TemporaryFile(dir=self._directory, prefix="judge-")
            self._file.write(b"".join(self._chunks))
            self._chunks = []

    @property
    def inMemory(self) -> bool:
        return self._file is None

    def read(self, start: int = 0) -> bytes:
        """The message from C{start} on, in one piece (in the worker thread; see L{DKIM_MAX_SIZE})."""
        if self._file is None:
            return b"".join(self._chunks)[start:]
        self._file.seek(start)
        return self._file.read()

    def headerSection(self, limit: int) -> Tuple[bytes, int]:
        """
        The header section, with its last CRLF, read a piece at a time (in
        the worker thread for a file).

        @return: it, and where the rest (the blank line and the body)
            starts; for a message without a blank line, all of it.
        @raise HeaderSectionTooLarge: there are more than C{limit} octets
            before the blank line.
        """
        if self._file is None:
            whole = b"".join(self._chunks)
            self._chunks = [whole]
            end = _headerEnd(whole)
            return whole[:end], end
        self._file.seek(0)
        head = bytearray()
        while True:
            piece = self._file.read(WRITE_CHUNK)
            searched = max(0, len(head) - 3)
            head += piece
            if head.startswith(b"\r\n"):
                return b"", 0
            found = head.find(b"\r\n\r\n", searched)
            if found >= 0:
                return bytes(head[: found + 2]), found + 2
            if not piece:
                return bytes(head), len(head)
            if len(head) > limit:
                raise HeaderSectionTooLarge()

    def pieces(self, start: int) -> Iterator[bytes]:
        """The message from C{start} on, in pieces of at most L{WRITE_CHUNK}."""
        if self._file is None:
            data = b"".join(self._chunks)
            for offset in range(start, len(data), WRITE_CHUNK):
                yield data[offset : offset + WRITE_CHUNK]
            return
        self._file.seek(start)
        while True:
            # Each read after the last yield: the file is still ours.
            assert self._file is not None
            piece = self._file.read(WRITE_CHUNK)
            if not piece:
                return
            yield piece

    def close(self) -> None:
        self._chunks = []
        if self._file is not None:
            self._file.close()
            self._file = None


@attr.s(frozen=True, auto_attribs=True)
class Outcome:
    """
    What the worker thread decided: the new header section and where the
    body is (C{body} from C{bodyStart} on: the spool, or a converted copy),
    or a refusal.
    """

    header: bytes = b""
    body: Optional[_Spool] = None
    bodyStart: int = 0
    refusal: Optional[verdicts.Refusal] = None
    summary: str = ""
    #: DMARC asks for quarantine: file it into the recipients' Junk folder.
    quarantine: bool = False


def _hasField(headerSection: bytes, name: bytes) -> bool:
    return any(
        line.split(b":", 1)[0].strip().lower() == name
        for line in headerSection.split(b"\r\n")
        if line[:1] not in (b" ", b"\t") and b":" in line
    )


class MessageJudge:
    """
    Made once by the service, shared by the SMTP listeners.

    @param run: runs a blocking callable in a worker thread and returns a
        L{Deferred} (a L{mailnet.store.maildir.ThreadRunner}).
    @param now: the time, for the C{Date} field of submitted mail.
    @param cooperator: runs the copying of large messages from the spool
        into the inner receiver a piece at a time (Twisted's global one,
        on the global reactor, if not given).
    """

    def __init__(
        self,
        *,
        hostname: str,
        dns: DNSClient,
        keys: dkim.KeyStore,
        run: Callable[..., Deferred],
        spoolDir: str,
        maxMessageSize: int,
        trustedNetworks: Sequence[Network] = (),
        rejectSPFFail: bool = False,
        now: Optional[Callable[[], float]] = None,
        cooperator: Optional[task.Cooperator] = None,
    ) -> None:
        import time

        self.hostname = hostname
        self.dns = dns
        self.keys = keys
        self.run = run
        self.spoolDir = spoolDir
        self.maxMessageSize = maxMessageSize
        self.trustedNetworks = tuple(trustedNetworks)
        self.rejectSPFFail = rejectSPFFail
        self._now = now or time.time
        self.cooperate = cooperator.cooperate if cooperator is not None else task.cooperate
        self._largeDKIM = threading.BoundedSemaphore(LARGE_DKIM_AT_ONCE)

    def needsWorker(self, envelope: Envelope) -> bool:
        """Whether the message is signed or judged (blocking work), or only filtered."""
        return envelope.authenticated or (envelope.role == "mta" and not isTrusted(envelope.peer, self.trustedNetworks))

    def wrap(self, receiver: IMessageReceiver, *, peer: str, helo: str, mailFrom: str, authenticated: bool, role: str) -> IMessageReceiver:
        """Put a L{JudgingReceiver} in front of C{receiver}."""
        return JudgingReceiver(self, receiver, Envelope(peer, helo or "", mailFrom, authenticated, role))

    # --- in the worker thread ----------------------------------------------

    @contextlib.contextmanager
    def _wholeMessage(self, size: int) -> Iterator[None]:
        """Around reading a message whole: one of few, if it is large (L{LARGE_DKIM})."""
        if size <= LARGE_DKIM:
            yield
            return
        with self._largeDKIM:
            yield

    def process(self, spool: _Spool, envelope: Envelope) -> Outcome:
        """
        Decide on the message in C{spool}: read its header section, and the
        whole of it only for DKIM (up to L{DKIM_MAX_SIZE}).
        """
        small = spool.size <= DKIM_MAX_SIZE
        try:
            original, bodyStart = spool.headerSection(spool.size if small else MAX_HEADER_SECTION)
        except HeaderSectionTooLarge:
            return Outcome(
                refusal=verdicts.Refusal(552, "5.3.4 Header section too large"),
                summary="header section larger than %d octets" % (MAX_HEADER_SECTION,),
            )
        headers, removed = verdicts.removeForgedResults(original, self.hostname)
        notes = []
        if removed:
            notes.append("removed %d forged Authentication-Results" % (removed,))
        if envelope.authenticated:
            headers += self._complete(headers)
            authors = verdicts.authorDomains(headers)
            keys = self.keys.signingKeys(authors[0]) if authors else []
            if not keys:
                return Outcome(headers, spool, bodyStart, None, "; ".join(notes))
            if not small:
                log.warn(
                    "not DKIM-signed: larger than {limit} octets (message from <{sender}>, {size} octets)",
                    limit=DKIM_MAX_SIZE, sender=envelope.mailFrom, size=spool.size,
                )
                notes.append("not signed: larger than %d octets" % (DKIM_MAX_SIZE,))
                return Outcome(headers, spool, bodyStart, None, "; ".join(notes))
            with self._wholeMessage(spool.size):
                header, body, bodyStart = self._sign(spool, headers, bodyStart, keys)
            notes.append("signed for %s (%s)" % (authors[0], ", ".join("%s %s" % (k.type, k.selector) for k in keys)))
            return Outcome(header, body, bodyStart, None, "; ".join(notes))
        if envelope.role != "mta" or isTrusted(envelope.peer, self.trustedNetworks):
            return Outcome(headers, spool, bodyStart, None, "; ".join(notes))
        # Read whole only to verify signatures; the original header section:
        # any forged field is judged as it came.
        whole = small and _hasField(original, b"dkim-signature")
        with self._wholeMessage(spool.size if whole else 0):
            message = spool.read(0) if whole else original + b"\r\n"
            verdict = verdicts.judge(
                self.dns.blocking(), message, envelope.peer, envelope.helo, envelope.mailFrom, self.rejectSPFFail, tooLarge=not small
            )
            del message
        notes.insert(0, verdict.summary())
        if verdict.refusal is not None:
            return Outcome(refusal=verdict.refusal, summary="; ".join(notes))
        return Outcome(verdict.header(self.hostname) + headers, spool, bodyStart, None, "; ".join(notes), verdict.quarantine)

    def _sign(self, spool: _Spool, headers: bytes, bodyStart: int, keys: Sequence[dkim.DKIMKey]) -> Tuple[bytes, _Spool, int]:
        """
        DKIM-sign the message: C{headers}, then the spool from
        C{bodyStart} on, read whole.

        @return: the new header section (the signatures on top), and
            where its body is: the spool, or a spool of its own when an
            8-bit body was made 7-bit.
        """
        message = headers + spool.read(bodyStart)
        body: _Spool = spool
        if not message.isascii():
            # RFC 6376 §5.3: a relay's later conversion to 7 bit
            # would break the signature; convert before signing.
            try:
                message = toSevenBit(message)
            except CannotConvert:
                pass  # 8-bit header fields (SMTPUTF8): signed as they are
            else:
                # A new body: into a spool of its own (a file if large).
                bodyStart = _headerEnd(message)
                headers = message[:bodyStart]
                body = _Spool(self.spoolDir, len(message))
                body.write(message[bodyStart:])
                bodyStart = 0
        try:
            signatures = dkim.sign(message, keys)
        except BaseException:
            if body is not spool:
                body.close()
            raise
        return signatures + headers, body, bodyStart

    def _complete(self, headers: bytes) -> bytes:
        """RFC 6409 §8.2, §8.3: the Date and Message-ID a client left out."""
        added = b""
        if not _hasField(headers, b"date"):
            when = datetime.datetime.fromtimestamp(self._now(), datetime.timezone.utc)
            added += b"Date: %s\r\n" % (email.utils.format_datetime(when).encode("ascii"),)
        if not _hasField(headers, b"message-id"):
            added += b"Message-ID: <%s@%s>\r\n" % (secrets.token_hex(12).encode("ascii"), self.hostname.encode("ascii", "replace"))
        return added


@implementer(IMessageReceiver)
class JudgingReceiver:
    """
    Spools a message, and at L{finish} signs or judges it (see the module
    docstring) before handing it to the inner receiver.
    """

    def __init__(self, judge: MessageJudge, inner: IMessageReceiver, envelope: Envelope) -> None:
        self._judge = judge
        self._inner = inner
        self._envelope = envelope
        # Our own Received field and some header growth come on top of the message.
        self._spool = _Spool(judge.spoolDir, judge.maxMessageSize + SPOOL_IN_MEMORY)
        # A message that needs only the header filter (nothing to look up
        # or sign) goes on to the inner receiver as it comes, once its
        # header section is in (in memory) and filtered: no spool file and
        # no second pass through the reactor for a large one (issue 14).
        self._passThrough = not judge.needsWorker(envelope)
        self._streaming = False
        self._summary = ""
        # The last octets looked at for the end of the header section.
        self._tail = b""

    def write(self, data: bytes) -> None:
        if self._streaming:
            self._inner.write(data)
            return
        spool = self._spool
        if self._passThrough and spool.inMemory and not spool.overflow:
            scan = self._tail + data
            self._tail = scan[-3:]
            if b"\r\n\r\n" in scan or (spool.size == 0 and data.startswith(b"\r\n")):
                self._filterHeader(spool.read(0) + data)
                return
        spool.write(data)

    def _filterHeader(self, message: bytes) -> None:
        """
        The header section is complete (C{message} holds it and what has
        come after it): filter it as L{MessageJudge.process} does for such
        a message, and pass it on with the rest.
        """
        self._spool.close()
        self._streaming = True
        bodyStart = _headerEnd(message)
        headers, removed = verdicts.removeForgedResults(message[:bodyStart], self._judge.hostname)
        if removed:
            self._summary = "removed %d forged Authentication-Results" % (removed,)
        self._inner.write(headers)
        if bodyStart < len(message):
            self._inner.write(message[bodyStart:])

    def abort(self) -> None:
        self._spool.close()
        self._inner.abort()

    def finish(self) -> Deferred:
        spool, envelope = self._spool, self._envelope
        if self._streaming:
            if self._summary:
                log.info("SMTP {peer}: from <{sender}>: {summary}", peer=envelope.peer, sender=envelope.mailFrom, summary=self._summary)
            return maybeDeferred(self._inner.finish)
        if spool.overflow:
            # The server's own size check normally refuses it before this.
            self.abort()
            return fail(SMTPReply(552, "5.3.4 Message too big"))
        if spool.inMemory and not self._judge.needsWorker(envelope):
            # Nothing to look up or sign: the header filter of a small
            # message costs less than the trip to a thread.
            try:
                outcome: Any = self._work(spool, envelope)
            except Exception:
                outcome = Failure()
            return maybeDeferred(self._deliver, outcome)
        d = self._judge.run(self._work, spool, envelope)
        return d.addBoth(self._deliver)

    def _work(self, spool: _Spool, envelope: Envelope) -> Outcome:
        return self._judge.process(spool, envelope)

    def _deliver(self, outcome: Any) -> Any:
        envelope = self._envelope
        if isinstance(outcome, Failure):
            self._spool.close()
            log.failure("SMTP {peer}: could not sign or judge a message", outcome, peer=envelope.peer)
            self._inner.abort()
            raise SMTPReply(451, "4.3.0 Local error in processing, try again later")
        if outcome.summary:
            log.info("SMTP {peer}: from <{sender}>: {summary}", peer=envelope.peer, sender=envelope.mailFrom, summary=outcome.summary)
        body = outcome.body
        if body is not self._spool:
            self._spool.close()  # refused, or a converted body replaces it
        if outcome.refusal is not None or body is None:
            self._inner.abort()
            refusal = outcome.refusal or verdicts.Refusal(451, "4.3.0 Local error in processing, try again later")
            raise SMTPReply(refusal.code, refusal.text)
        if outcome.quarantine:
            # RFC 7489 §6.3 "quarantine": delivered, but into Junk where the
            # recipient has one (the verdict is in Authentication-Results).
            fileInto = getattr(self._inner, "fileInto", None)
            if fileInto is not None:
                fileInto("Junk")
        try:
            if outcome.header:
                self._inner.write(outcome.header)
            if body.inMemory:
                # At most some 64 KiB: at once.
                for piece in body.pieces(outcome.bodyStart):
                    self._inner.write(piece)
        except BaseException:
            body.close()
            self._inner.abort()
            raise
        if body.inMemory:
            body.close()
            return self._inner.finish()
        # From the file a piece per iteration, other connections served in between.
        copying = self._judge.cooperate(self._copy(body.pieces(outcome.bodyStart)))

        def copied(_: object) -> Deferred:
            body.close()
            return self._inner.finish()

        def failed(failure: Failure) -> Failure:
            body.close()
            self._inner.abort()
            return failure

        return copying.whenDone().addCallbacks(copied, failed)

    def _copy(self, pieces: Iterator[bytes]) -> Iterator[None]:
        for piece in pieces:
            self._inner.write(piece)
            yield None


class WorkerPoolService(Service):
    """
    Starts and stops the verdicts' thread pool.  Stopping waits for the
    threads in another thread, with the reactor still running: a worker
    may be waiting for a DNS answer that only the reactor can deliver, so
    joining on the reactor thread would never end.
    """

    def __init__(self, pool: ThreadPool, reactor: Any) -> None:
        self.pool = pool
        self._reactor = reactor

    def startService(self) -> None:
        Service.startService(self)
        self.pool.start()

    def stopService(self) -> Deferred:
        Service.stopService(self)
        if not hasattr(self._reactor, "callFromThread"):
            self.pool.stop()  # a fake reactor (tests): nothing can be waiting on it
            return succeed(None)
        result: Deferred = Deferred()

        def stop() -> None:
            self.pool.stop()
            self._reactor.callFromThread(result.callback, None)

        threading.Thread(target=stop, name="mailnet-verdicts-stop", daemon=True).start()
        return result


def copyingCooperator(reactor: Any) -> task.Cooperator:
    """
    The L{task.Cooperator} that copies bodies from the spool: at most
    L{COPY_PIECES_PER_TURN} pieces (1 MiB, for all copies together) per
    reactor turn, then L{COPY_PAUSE} (other connections are served
    meanwhile), so at most some 500 MB/s.  Without the pause the copy
    outruns the thread that creates the Maildir file (on a busy machine,
    by tens of megabytes, which the Maildir receiver holds in memory until
    the file exists); with it, a 50 MB message raises the peak RSS by
    well under 1 MB.
    """

    def pieces() -> Callable[[], bool]:
        done = iter(range(COPY_PIECES_PER_TURN - 1, -1, -1))
        return lambda: next(done, 0) == 0

    return task.Cooperator(scheduler=lambda work: reactor.callLater(COPY_PAUSE, work), terminationPredicateFactory=pieces)


def judgeFromConfig(config: Any, reactor: Any, dns: DNSClient, run: Callable[..., Deferred]) -> MessageJudge:
    """The service's L{MessageJudge}, from a L{mailnet.config.Config}."""
    return MessageJudge(
        hostname=config.hostname,
        dns=dns,
        keys=dkim.KeyStore(config.data_dir, config.dkim_selector),
        run=run,
        spoolDir=os.path.join(config.data_dir, "spool"),
        maxMessageSize=config.limits.max_message_size,
        trustedNetworks=config.trusted_networks,
        rejectSPFFail=config.reject_spf_fail,
        now=reactor.seconds,
        cooperator=copyingCooperator(reactor),
    )


__all__: Tuple[str, ...] = ("MessageJudge", "JudgingReceiver", "Envelope", "judgeFromConfig")
