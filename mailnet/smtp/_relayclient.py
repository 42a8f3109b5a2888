# -*- test-case-name: tests.test_relay -*-
"""
The SMTP client that carries one message to one next hop.

One connection, one transaction: EHLO (HELO as a fallback), opportunistic
STARTTLS, optional AUTH, MAIL, a RCPT per recipient, DATA.  The dialogue is
written as straight-line code (L{RelayClient._converse}): each command
waits for its reply, with the timeouts of RFC 5321 §4.5.3.2.

The result is one L{Outcome} per recipient.  Failures before any recipient
got an answer (refused or dropped connections, a bad greeting, no TLS when
TLS is required...) are raised as L{HostFailure}: the caller may try the
next host.
"""

import base64
import io
import ipaddress
import os
import re
from typing import IO, Any, Callable, Dict, List, Optional, Sequence, Tuple

import attr
from OpenSSL import SSL
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from mailnet.escape import escape
from mailnet.smtp._eightbit import CannotConvert, toSevenBit

log = Logger()

DELIVERED = "delivered"
TEMPORARY = "temporary"
PERMANENT = "permanent"

# RFC 5321 §4.5.3.2: minimum time-outs, per command.
TIMEOUT_GREETING = 300
TIMEOUT_COMMAND = 300
TIMEOUT_DATA_INIT = 120
TIMEOUT_DATA_BLOCK = 180
TIMEOUT_DATA_END = 600
# Not from the RFC: how long a peer may take to close after QUIT.
TIMEOUT_CLOSE = 30

# RFC 5321 §4.5.3.1.5 allows 512 octets per reply line; be lenient.
MAX_REPLY_LINE = 4096
MAX_REPLY_LINES = 100
MAX_UNREAD_REPLIES = 10
# How much of a reply's text is kept (in logs, the queue and bounces).
MAX_REPLY_TEXT = 1000
CHUNK = 64 * 1024
# Messages one connection carries at most (then QUIT and a new one).
MAX_MESSAGES_PER_CONNECTION = 100


@attr.s(frozen=True, auto_attribs=True)
class Reply:
    """
    An SMTP reply.

    @ivar code: the three-digit code.
    @ivar lines: the text of each line (without the code).
    """

    code: int
    lines: Tuple[str, ...]

    def __str__(self) -> str:
        """
        The reply on one line, as it is logged, kept in the queue and put
        in bounces: control characters (ESC, BEL, a bare CR...) escaped, and
        at most L{MAX_REPLY_TEXT} characters of the remote server's text.
        """
        text = escape(" ".join(line.strip() for line in self.lines), MAX_REPLY_TEXT)
        return ("%d %s" % (self.code, text)).strip()

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def permanent(self) -> bool:
        return self.code >= 500


@attr.s(frozen=True, auto_attribs=True)
class Outcome:
    """
    The result of delivering to one recipient.

    @ivar kind: L{DELIVERED}, L{TEMPORARY} or L{PERMANENT}.
    @ivar reply: the reply that decided it, as text (C{"250 2.0.0 ok"}), or
        our own reply-shaped explanation.
    @ivar host: the host that answered, if any.
    """

    address: str
    kind: str
    reply: str
    host: Optional[str] = None
    #: C{"TLSv1.3 TLS_AES_256_GCM_SHA384"}, C{"no TLS"}, or L{None} (no session).
    tls: Optional[str] = None


class HostFailure(Exception):
    """
    The session failed before any recipient got an answer.

    @ivar reply: what happened, shaped as an SMTP reply.
    @ivar permanent: whether trying again (here or elsewhere) cannot help.
    @ivar tlsFailed: whether it failed in or right after the STARTTLS
        handshake (so a plaintext retry may work, if TLS is optional).
    @ivar sessionLost: whether the connection broke before the message got
        any answer (it was not really tried).
    """

    def __init__(self, reply: str, permanent: bool = False, tlsFailed: bool = False, sessionLost: bool = False) -> None:
        super().__init__(reply)
        self.reply = reply
        self.permanent = permanent
        self.tlsFailed = tlsFailed
        self.sessionLost = sessionLost


class _ProtocolError(Exception):
    pass


def isLoopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _reason(e: BaseException) -> str:
    text = str(e).strip() or e.__class__.__name__
    return " ".join(text.split())[:200]


def _xtext(value: str) -> bytes:
    return value.encode("utf-8")


@attr.s(auto_attribs=True)
class Job:
    """
    What one connection is asked to do.

    @ivar heloName: our name in EHLO.
    @ivar sender: the envelope sender (C{""} for the null sender).
    @ivar recipients: the addresses, all at one destination.
    @ivar message: the message file, open for binary reading at offset 0.
    @ivar host: the next hop's name (for logs and outcomes).
    @ivar tls: a TLS context factory / connection creator for STARTTLS, or
        L{None} never to start TLS.
    @ivar requireTLS: fail unless STARTTLS succeeds.
    @ivar auth: C{(user, password)} for AUTH, or L{None}.
    @ivar eightBit: whether the message has octets above 127.
    @ivar done: for a job handed over to a running session (C{more}):
        fires with its outcomes, or fails with L{HostFailure}.
    """

    heloName: str
    sender: str
    recipients: Sequence[str]
    message: IO[bytes]
    host: str
    tls: Any = None
    requireTLS: bool = False
    auth: Optional[Tuple[str, str]] = None
    eightBit: bool = False
    done: Optional[Deferred] = None


def _tlsDescription(transport: Any) -> str:
    """The negotiated TLS version and cipher of a transport after STARTTLS."""
    try:
        connection = transport.getHandle()
        return "%s %s" % (connection.get_protocol_version_name(), connection.get_cipher_name())
    except Exception:
        return "TLS"


def _settle(d: Deferred, result: Any) -> None:
    """Fire C{d} with outcomes, or fail it with a L{HostFailure} or L{Failure}."""
    if d.called:
        return
    if isinstance(result, (Failure, BaseException)):
        d.errback(result)
    else:
        d.callback(result)


def _sevenBit(message: IO[bytes]) -> io.BytesIO:
    """The message file's 7-bit form (in a worker thread: it reads the whole file)."""
    message.seek(0)
    return io.BytesIO(toSevenBit(message.read()))


def dotStuff(data: bytes, context: bytes) -> bytes:
    """
    RFC 5321 §4.5.2: double a period that starts a line.

    @param context: the (up to two) octets sent just before C{data}
        (C{b"\\r\\n"} at the start of the message).
    """
    stuffed = (context + data).replace(b"\r\n.", b"\r\n..")
    return stuffed[len(context) :]


_LINE_END = re.compile(rb"\r\n|\r|\n")


class DataEncoder:
    """
    Turns message bytes, chunk by chunk, into the DATA stream: every line
    end CRLF (RFC 5321 §2.3.8: no bare CR or LF, which some servers would
    read as line ends -- the "SMTP smuggling" confusion), periods stuffed
    (§4.5.2), and the final C{CRLF . CRLF} (§4.1.1.4).
    """

    def __init__(self) -> None:
        self._context = b"\r\n"  # the message starts at a line start
        self._heldCR = False  # a CR ending a chunk: is it followed by LF?

    def encode(self, chunk: bytes) -> bytes:
        if self._heldCR:
            chunk = b"\r" + chunk
        self._heldCR = chunk.endswith(b"\r")
        if self._heldCR:
            chunk = chunk[:-1]
        data = _LINE_END.sub(b"\r\n", chunk)
        stuffed = dotStuff(data, self._context)
        self._context = (self._context + data)[-2:]
        return stuffed

    def finish(self) -> bytes:
        tail = self.encode(b"\r\n") if self._heldCR else b""
        self._heldCR = False
        if self._context != b"\r\n":
            tail += b"\r\n"
        return tail + b".\r\n"


@implementer(IPushProducer)
class RelayClient(LineOnlyReceiver):
    """
    Speaks SMTP for one L{Job}; L{result} fires with the L{Outcome}s or fails
    with L{HostFailure}.

    @param run: runs blocking reads off the reactor thread.
    """

    delimiter = b"\r\n"
    MAX_LENGTH = MAX_REPLY_LINE
    transport: Any

    def __init__(self, job: Job, clock: Any, run: Callable[..., Deferred], more: Optional[Callable[[], Deferred]] = None) -> None:
        self.job = job
        self.clock = clock
        self.run = run
        self._more = more
        self._handedOver: Optional[Job] = None
        self._openTransaction = False
        self.result: Deferred = Deferred()
        #: fires when the connection is closed.
        self.closed: Deferred = Deferred()
        self.extensions: Dict[str, str] = {}
        self.secure = False
        self._lines: List[str] = []
        self._replies: List[Reply] = []
        self._waiting: Optional[Deferred] = None
        self._timer: Any = None
        self._paused: Optional[Deferred] = None
        self._lost: Optional[BaseException] = None
        self._accepted: List[str] = []
        self._inData = False
        self._dropPlaintext = False
        self.outcomes: Dict[str, Outcome] = {}
        #: The TLS version and cipher, once STARTTLS is done (for the log).
        self.tlsDescription: Optional[str] = None
        #: What DATA sends: the job's message, or its 7-bit form.
        self._message: Any = job.message

    # --- connection --------------------------------------------------------

    def connectionMade(self) -> None:
        d = self._converse()
        d.addBoth(self._done)

    def connectionLost(self, reason: Any = None) -> None:
        self._lost = reason.value if reason is not None else ierror.ConnectionDone()
        self._cancelTimer()
        if not self.closed.called:
            self.closed.callback(None)
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.errback(self._lost)
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.errback(self._lost)

    def _done(self, result: Any) -> None:
        if self.transport is not None and self._lost is None:
            self.transport.loseConnection()
            # A peer that never closes its side (or its TLS) is cut off.
            self._timer = self.clock.callLater(TIMEOUT_CLOSE, self.transport.abortConnection)
        handedOver, self._handedOver = self._handedOver, None
        if handedOver is not None and handedOver.done is not None and not handedOver.done.called:
            # Cut short by something unexpected: that message goes back.
            handedOver.done.errback(HostFailure("451 4.3.0 %s: the session ended" % (self.job.host,), sessionLost=True))
        if isinstance(result, Failure):
            _settle(self.result, result)

    # --- replies -------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        # Data from a new read: after STARTTLS it is the decrypted stream.
        self._dropPlaintext = False
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._dropPlaintext:
            return  # RFC 3207 §5: injected after "220 ready"; never trust it
        text = line.decode("utf-8", "replace")
        # RFC 5321 §4.2: "ddd-text" continues, "ddd text" (or "ddd") ends.
        if len(text) < 3 or not text[:3].isdigit() or (len(text) > 3 and text[3] not in " -"):
            self._protocolError("malformed reply line %r" % (text[:80],))
            return
        self._lines.append(text[4:])
        if len(self._lines) > MAX_REPLY_LINES:
            self._protocolError("reply too long")
            return
        if len(text) == 3 or text[3] == " ":
            reply = Reply(int(text[:3]), tuple(self._lines))
            self._lines = []
            waiting, self._waiting = self._waiting, None
            if waiting is None:
                # Unasked for (say, a 421 before a command): the next
                # command gets it.  A server that keeps talking is broken.
                self._replies.append(reply)
                if len(self._replies) > MAX_UNREAD_REPLIES:
                    self._protocolError("too many unrequested replies")
            else:
                self._cancelTimer()
                waiting.callback(reply)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._protocolError("reply line too long")

    def _protocolError(self, why: str) -> None:
        waiting, self._waiting = self._waiting, None
        self._cancelTimer()
        if waiting is not None:
            waiting.errback(_ProtocolError(why))
        if self.transport is not None:
            self.transport.abortConnection()

    def _reply(self, timeout: float) -> Deferred:
        if self._replies:
            return succeed(self._replies.pop(0))
        if self._lost is not None:
            return fail(self._lost)
        self._waiting = Deferred()
        self._timer = self.clock.callLater(timeout, self._timedOut)
        return self._waiting

    def _timedOut(self) -> None:
        self._timer = None
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.errback(ierror.TimeoutError("no reply from %s" % (self.job.host,)))
        if self.transport is not None:
            self.transport.abortConnection()

    def _stalled(self) -> None:
        self._timer = None
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.errback(ierror.TimeoutError("%s stopped reading" % (self.job.host,)))
        if self.transport is not None:
            self.transport.abortConnection()

    def _cancelTimer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _command(self, line: bytes, timeout: float = TIMEOUT_COMMAND) -> Deferred:
        self.transport.write(line + b"\r\n")
        return self._reply(timeout)

    # --- the dialogue --------------------------------------------------------

    @inlineCallbacks
    def _converse(self) -> Any:
        """
        Set the session up, deliver the job, then (with C{more}) the
        further jobs the relay hands over, one transaction each.

        The first job's result goes to L{result}; a failure of the set-up
        is raised as its L{HostFailure} (further jobs are only asked for
        once the session works).
        """
        try:
            yield self._setup()
        except HostFailure:
            self._quit()
            raise
        except Exception as e:
            raise HostFailure(self._describe(e)) from e
        job, done = self.job, self.result
        count = 0
        while True:
            result, usable = yield self._attempt(job)
            self._handedOver = None
            count += 1
            _settle(done, result)
            if not usable:
                return None
            if self._more is None or count >= MAX_MESSAGES_PER_CONNECTION:
                break
            try:
                more = yield self._more()
            except Exception:
                log.failure("Could not take more mail for {host}", host=self.job.host)
                break
            if more is None:
                break
            job, done = more, more.done
            self._handedOver = job
        self._quit()
        return None

    @inlineCallbacks
    def _setup(self) -> Any:
        """The greeting, EHLO, STARTTLS and AUTH."""
        job = self.job
        host = job.host
        greeting = yield self._reply(TIMEOUT_GREETING)
        if greeting.code != 220:
            raise HostFailure(str(greeting))
        yield self._hello()
        if "STARTTLS" in self.extensions and job.tls is not None:
            # RFC 3207 §4: after 220 the handshake starts at once; then
            # forget everything learned before it (§4.2) and EHLO again.
            reply = yield self._command(b"STARTTLS")
            if reply.code == 220:
                self._dropPlaintext = True
                self._buffer = b""
                self._replies, self._lines = [], []
                self.transport.startTLS(job.tls)
                self.secure = True
                self.extensions = {}
                try:
                    yield self._hello()
                except HostFailure:
                    raise
                except Exception as e:
                    raise HostFailure(self._describe(e), tlsFailed=True) from e
                self.tlsDescription = _tlsDescription(self.transport)
            elif job.requireTLS:
                raise HostFailure("451 4.7.10 %s refused STARTTLS: %s" % (host, reply))
        if job.requireTLS and not self.secure:
            raise HostFailure("451 4.7.10 TLS is required, but %s does not offer STARTTLS" % (host,))
        if job.auth is not None:
            yield self._authenticate()

    @inlineCallbacks
    def _attempt(self, job: Job) -> Any:
        """
        One job's transaction on the session.

        @return: C{(result, usable)}: the outcomes, or the L{HostFailure}
            for this job; and whether the session can carry another
            message.
        """
        self.job = job
        self._accepted, self.outcomes, self._message, self._inData = [], {}, job.message, False
        host = job.host
        try:
            if self._lost is not None:
                raise self._lost
            if self._openTransaction:
                # RFC 5321 §4.1.1.5: the last MAIL got no DATA; start afresh.
                reply = yield self._command(b"RSET")
                if not reply.positive:
                    raise _ProtocolError("RSET refused: %s" % (reply,))
                self._openTransaction = False
            outcomes = yield self._transaction(job)
            return outcomes, True
        except HostFailure as e:
            # A reply refused this message; the session itself goes on.
            return e, True
        except Exception as e:
            reply = self._describe(e)
            if not (self._accepted or self.outcomes):
                return HostFailure(reply, sessionLost=True), False
            # Recipients got answers: those refused keep their replies, the
            # others share what happened to the session.
            return [self.outcomes.get(r) or Outcome(r, TEMPORARY, reply, host) for r in job.recipients], False

    @inlineCallbacks
    def _transaction(self, job: Job) -> Any:
        """MAIL, RCPT..., DATA for one job: its outcomes, or L{HostFailure}."""
        host = job.host
        needUTF8 = not (job.sender.isascii() and all(r.isascii() for r in job.recipients))
        if needUTF8 and "SMTPUTF8" not in self.extensions:
            # RFC 6531 §3.2: without the extension, such addresses cannot go.
            raise HostFailure("553 5.6.7 %s does not support SMTPUTF8 addresses" % (host,), permanent=True)
        size = os.fstat(job.message.fileno()).st_size
        eightBit = job.eightBit
        if eightBit and "8BITMIME" not in self.extensions:
            # RFC 6152 §3: not as it is; quoted-printable or base64 instead.
            try:
                self._message = yield self.run(_sevenBit, job.message)
            except CannotConvert as e:
                raise HostFailure(
                    "554 5.6.3 %s does not take 8-bit mail (no 8BITMIME) and the message cannot be converted: %s" % (host, e),
                    permanent=True,
                )
            size, eightBit = len(self._message.getvalue()), False
        limit = self.extensions.get("SIZE", "").strip()
        if limit.isdigit() and int(limit) and size > int(limit):
            raise HostFailure("552 5.3.4 message too big for %s (limit %s)" % (host, limit), permanent=True)
        mail = b"MAIL FROM:<" + _xtext(job.sender) + b">"
        if "SIZE" in self.extensions:
            mail += b" SIZE=%d" % (size,)  # RFC 1870 §6
        if eightBit:
            mail += b" BODY=8BITMIME"  # RFC 6152 §3
        if needUTF8:
            mail += b" SMTPUTF8"
        rcpts = [b"RCPT TO:<" + _xtext(recipient) + b">" for recipient in job.recipients]
        pipelining = "PIPELINING" in self.extensions
        if pipelining:
            # RFC 2920 §3.1: MAIL and the RCPTs in one go, then their
            # replies in order (DATA waits for them: §3.1 allows it last
            # in the group, but then a refused MAIL would start DATA).
            self.transport.write(b"".join(line + b"\r\n" for line in [mail] + rcpts))
            reply = yield self._reply(TIMEOUT_COMMAND)
        else:
            reply = yield self._command(mail)
        if not reply.positive:
            if pipelining:
                # The pipelined RCPTs are answered (503) too: read those
                # replies, as far as the server sends them.
                try:
                    for _ in rcpts:
                        yield self._reply(TIMEOUT_DATA_INIT)
                except Exception:
                    pass
            raise HostFailure(str(reply), permanent=reply.permanent)
        self._openTransaction = True
        outcomes = self.outcomes
        for recipient, rcpt in zip(job.recipients, rcpts):
            if pipelining:
                reply = yield self._reply(TIMEOUT_COMMAND)
            else:
                reply = yield self._command(rcpt)
            if reply.positive:
                self._accepted.append(recipient)
            else:
                outcomes[recipient] = Outcome(recipient, PERMANENT if reply.permanent else TEMPORARY, str(reply), host)
        if self._accepted:
            final = yield self._data()
            self._openTransaction = False
            kind = DELIVERED if final.positive else PERMANENT if final.permanent else TEMPORARY
            for recipient in self._accepted:
                outcomes[recipient] = Outcome(recipient, kind, str(final), host)
        tls = self.tlsDescription or "no TLS"
        return [attr.evolve(outcomes[r], tls=tls) for r in job.recipients]

    def _describe(self, e: BaseException) -> str:
        host = self.job.host
        if isinstance(e, ierror.TimeoutError):
            return "451 4.4.2 timed out waiting for %s%s" % (host, " during DATA" if self._inData else "")
        if isinstance(e, (ierror.ConnectionDone, ierror.ConnectionLost)):
            return "451 4.4.2 %s closed the connection%s" % (host, " during DATA" if self._inData else "")
        if isinstance(e, SSL.Error):
            return "451 4.7.5 TLS with %s failed: %s" % (host, _reason(e))  # RFC 3463 X.7.5
        if isinstance(e, _ProtocolError):
            return "451 4.5.0 %s broke the protocol: %s" % (host, e)
        log.failure("Unexpected error talking to {host}", host=host)
        return "451 4.3.0 %s: %s" % (host, e.__class__.__name__)

    @inlineCallbacks
    def _hello(self) -> Any:
        name = self.job.heloName.encode("ascii", "replace")
        reply = yield self._command(b"EHLO " + name)
        if reply.positive:
            # RFC 5321 §4.1.1.1: the first line greets, the rest are extensions.
            self.extensions = {}
            for line in reply.lines[1:]:
                keyword, _, params = line.strip().partition(" ")
                self.extensions[keyword.upper()] = params
            return
        if not reply.permanent:
            raise HostFailure(str(reply))  # 421 and the like: not an old server
        reply = yield self._command(b"HELO " + name)
        if not reply.positive:
            raise HostFailure(str(reply))
        self.extensions = {}

    @inlineCallbacks
    def _authenticate(self) -> Any:
        job = self.job
        assert job.auth is not None
        user, password = job.auth
        if not (self.secure or isLoopback(job.host)):
            # Never send a password in the clear over the network.
            raise HostFailure("451 4.7.10 %s: no TLS, so no AUTH" % (job.host,))
        mechanisms = self.extensions.get("AUTH", "").upper().split()
        if "PLAIN" in mechanisms:
            # RFC 4616 §2: authzid NUL authcid NUL passwd.
            token = base64.b64encode(b"\0" + user.encode("utf-8") + b"\0" + password.encode("utf-8"))
            reply = yield self._command(b"AUTH PLAIN " + token)
        elif "LOGIN" in mechanisms:
            reply = yield self._command(b"AUTH LOGIN")
            if reply.code == 334:
                reply = yield self._command(base64.b64encode(user.encode("utf-8")))
            if reply.code == 334:
                reply = yield self._command(base64.b64encode(password.encode("utf-8")))
        else:
            raise HostFailure("451 4.7.0 %s offers no AUTH PLAIN or LOGIN" % (job.host,))
        if reply.code != 235:
            # Temporary: an administrator can fix the credentials.
            raise HostFailure("451 4.7.0 %s refused our credentials: %s" % (job.host, reply))

    @inlineCallbacks
    def _data(self) -> Any:
        reply = yield self._command(b"DATA", TIMEOUT_DATA_INIT)
        if reply.code != 354:
            return reply
        self._inData = True
        self.transport.registerProducer(self, True)
        try:
            encoder = DataEncoder()
            while True:
                chunk = yield self.run(self._message.read, CHUNK)
                if self._lost is not None:
                    raise self._lost
                if not chunk:
                    break
                self.transport.write(encoder.encode(chunk))
                if self._paused is not None:
                    # RFC 5321 §4.5.3.2.6: a peer that reads nothing for
                    # this long is gone.
                    self._timer = self.clock.callLater(TIMEOUT_DATA_BLOCK, self._stalled)
                    yield self._paused
                    self._cancelTimer()
            self.transport.write(encoder.finish())
        finally:
            if self._lost is None:
                self.transport.unregisterProducer()
        reply = yield self._reply(TIMEOUT_DATA_END)
        self._inData = False
        return reply

    def _quit(self) -> None:
        if self._lost is None and self.transport is not None:
            self.transport.write(b"QUIT\r\n")
            self.transport.loseConnection()

    # --- IPushProducer: the transport tells us when its buffer is full --------

    def pauseProducing(self) -> None:
        if self._paused is None:
            self._paused = Deferred()

    def resumeProducing(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self) -> None:
        pass


class RelayClientFactory(Factory):
    """
    Makes the one L{RelayClient} for a connection attempt.
    """

    protocol = RelayClient

    def __init__(self, job: Job, clock: Any, run: Callable[..., Deferred], more: Optional[Callable[[], Deferred]] = None) -> None:
        self.job = job
        self.clock = clock
        self.run = run
        self.more = more

    def buildProtocol(self, addr: Any) -> RelayClient:
        client = RelayClient(self.job, self.clock, self.run, self.more)
        client.factory = self
        return client
