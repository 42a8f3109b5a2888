# -*- test-case-name: tests.test_judge -*-
"""
The step between the SMTP server and delivery that signs submitted mail
and judges incoming mail.

L{MessageJudge.wrap} puts a L{JudgingReceiver} in front of the delivery
agent's receiver.  It spools the message (in memory up to
L{SPOOL_IN_MEMORY}, then in a temporary file in the data dir) and, at
L{JudgingReceiver.finish}, does in a worker thread what the message needs:

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

Then the new header fields and the message go into the inner receiver,
which finishes as usual.  dkimpy and pyspf block; their DNS look-ups go
through the reactor's resolver (L{mailnet.dns.BlockingDNS}).
"""

import datetime
import email.utils
import functools
import ipaddress
import os
import secrets
import tempfile
import threading
from typing import IO, Any, Callable, List, Optional, Sequence, Tuple, Union

import attr
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
#: The inner receiver gets the message in pieces of this size.
WRITE_CHUNK = 64 * 1024

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

    def read(self) -> bytes:
        """The whole message (in the worker thread)."""
        if self._file is None:
            return b"".join(self._chunks)
        self._file.seek(0)
        return self._file.read()

    def close(self) -> None:
        self._chunks = []
        if self._file is not None:
            self._file.close()
            self._file = None


@attr.s(frozen=True, auto_attribs=True)
class Outcome:
    """What the worker thread decided: the message to deliver, or a refusal."""

    message: bytes
    refusal: Optional[verdicts.Refusal] = None
    summary: str = ""


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

    def needsWorker(self, envelope: Envelope) -> bool:
        """Whether the message is signed or judged (blocking work), or only filtered."""
        return envelope.authenticated or (envelope.role == "mta" and not isTrusted(envelope.peer, self.trustedNetworks))

    def wrap(self, receiver: IMessageReceiver, *, peer: str, helo: str, mailFrom: str, authenticated: bool, role: str) -> IMessageReceiver:
        """Put a L{JudgingReceiver} in front of C{receiver}."""
        return JudgingReceiver(self, receiver, Envelope(peer, helo or "", mailFrom, authenticated, role))

    # --- in the worker thread ----------------------------------------------

    def process(self, message: bytes, envelope: Envelope) -> Outcome:
        headers, rest = verdicts.splitMessage(message)
        headers, removed = verdicts.removeForgedResults(headers, self.hostname)
        notes = []
        if removed:
            notes.append("removed %d forged Authentication-Results" % (removed,))
        if envelope.authenticated:
            added = self._complete(headers)
            message = headers + added + rest
            authors = verdicts.authorDomains(headers)
            keys = self.keys.signingKeys(authors[0]) if authors else []
            if keys:
                if not message.isascii():
                    # RFC 6376 §5.3: a relay's later conversion to 7 bit
                    # would break the signature; convert before signing.
                    try:
                        message = toSevenBit(message)
                    except CannotConvert:
                        pass  # 8-bit header fields (SMTPUTF8): signed as they are
                message = dkim.sign(message, keys) + message
                notes.append("signed for %s (%s)" % (authors[0], ", ".join("%s %s" % (k.type, k.selector) for k in keys)))
            return Outcome(message, None, "; ".join(notes))
        if envelope.role != "mta" or isTrusted(envelope.peer, self.trustedNetworks):
            return Outcome(headers + rest, None, "; ".join(notes))
        verdict = verdicts.judge(
            self.dns.blocking(), message, envelope.peer, envelope.helo, envelope.mailFrom, self.rejectSPFFail
        )
        notes.insert(0, verdict.summary())
        if verdict.refusal is not None:
            return Outcome(b"", verdict.refusal, "; ".join(notes))
        return Outcome(verdict.header(self.hostname) + headers + rest, None, "; ".join(notes))

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

    def write(self, data: bytes) -> None:
        self._spool.write(data)

    def abort(self) -> None:
        self._spool.close()
        self._inner.abort()

    def finish(self) -> Deferred:
        spool, envelope = self._spool, self._envelope
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
        try:
            return self._judge.process(spool.read(), envelope)
        finally:
            spool.close()

    def _deliver(self, outcome: Any) -> Any:
        envelope = self._envelope
        if isinstance(outcome, Failure):
            log.failure("SMTP {peer}: could not sign or judge a message", outcome, peer=envelope.peer)
            self._inner.abort()
            raise SMTPReply(451, "4.3.0 Local error in processing, try again later")
        if outcome.summary:
            log.info("SMTP {peer}: from <{sender}>: {summary}", peer=envelope.peer, sender=envelope.mailFrom, summary=outcome.summary)
        if outcome.refusal is not None:
            self._inner.abort()
            raise SMTPReply(outcome.refusal.code, outcome.refusal.text)
        message = outcome.message
        for start in range(0, len(message), WRITE_CHUNK):
            self._inner.write(message[start : start + WRITE_CHUNK])
        return self._inner.finish()


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
    )


__all__: Tuple[str, ...] = ("MessageJudge", "JudgingReceiver", "Envelope", "judgeFromConfig")
