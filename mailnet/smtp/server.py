# -*- test-case-name: tests.test_smtp_server -*-
"""
mailnet's ESMTP server, in three roles: the MTA (port 25), message
submission (port 587, RFC 6409) and submission over implicit TLS (port 465,
RFC 8314).

Written on Twisted's protocol machinery rather than L{twisted.mail.smtp}:
it pipelines (RFC 2920), takes message data in chunks (DATA and BDAT,
RFC 3030) without holding more than a line plus the current chunk, and
checks every ESMTP parameter it is given.

Per-connection state (peer, TLS, EHLO, authenticated sender) lives in
L{SMTPServer}; per-message state (sender, recipients, the receiver) lives
in L{_Transaction}, which RSET, end of data, EHLO and STARTTLS throw away
through one call.

EHLO offers: PIPELINING (RFC 2920), SIZE (RFC 1870), 8BITMIME (RFC 6152),
ENHANCEDSTATUSCODES (RFC 2034), SMTPUTF8 (RFC 6531), CHUNKING (RFC 3030),
STARTTLS (RFC 3207; with TLS options, before TLS) and AUTH PLAIN LOGIN
(RFC 4954; over TLS, or in clear text when allowed).

Message content is refused at the end of data (never split or repaired)
when it has a bare CR or LF (SMTP smuggling), a NUL, or a line over 1000
octets: C{550 5.6.0}, since RFC 3463 X.6.0 is the "media" (content) class
and no more specific code fits.

The header section is held until it is complete (L{HeaderSection}), then
judged on every port: too large (C{552 5.3.4}), too many C{Received:}
fields or a C{Delivered-To:} for a recipient (a loop, RFC 5321 §6.3:
C{554 5.4.6}), and for authenticated clients a line that is no field
(C{550 5.6.0}) or a C{From:} they may not use (C{553 5.7.1}).  A refused
message is not stored at all; client-supplied C{Return-Path:} and C{Bcc:}
fields never are.
"""

import binascii
import datetime
import email.utils
import functools
import ipaddress
import os
import re
from typing import Any, Callable, Dict, List, Optional, Tuple, cast

import attr
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailnet import metrics
from mailnet.address import MAX_PATH, isDomain, normalizeAddress
from mailnet.config import Limits
from mailnet.errors import BadAddress, LoginBusy, SMTPReply
from mailnet.escape import escape
from mailnet.interfaces import IAuthenticator, IDeliveryAgent, IMessageReceiver, ISender
from mailnet.smtp import codes
from mailnet.message import AddressSyntaxError
from mailnet.smtp._data import DotDecoder, HeaderSection, MessageChecker
from mailnet.smtp._relayclient import _tlsDescription
from mailnet.smtp.codes import reply

log = Logger()

ROLES = ("mta", "submission", "smtps")

# RFC 4954 §4: an AUTH command or response line may be up to 12288 octets.
AUTH_LINE_LIMIT = 12288
# Commands that move no mail; past this many without a delivered message,
# each counts as an error (as Postfix's smtpd_junk_command_limit), so NOOP
# every few seconds cannot hold a connection open for ever.
JUNK_COMMAND_LIMIT = 100
# A DATA or BDAT phase must bring at least this many octets per second on
# average over each command_timeout window (a 1-byte/s trickle is cut).
MIN_DATA_RATE = 10

# RCPT commands past max_recipients answered 452 (RFC 5321 §4.5.3.1.10)
# before they count as errors, so that a client that pipelines a long list
# can still finish the transaction for those accepted (Postfix's
# smtpd_recipient_overshoot_limit).
RECIPIENT_OVERSHOOT = 1000

# Seconds a client has to close its side after our last reply (and, over
# TLS, to answer our close_notify) before the connection is aborted.
CLOSE_GRACE = 10

# Input kept while the client is not reading our replies, before we stop
# reading its input.
INPUT_HIGH_WATER = 65536

_COMMAND, _DATA, _BDAT = "command", "data", "bdat"
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_JUNK_VERBS = frozenset({"EHLO", "HELO", "NOOP", "RSET", "VRFY", "EXPN", "HELP"})


_lastDate: Tuple[int, str] = (-1, "")


def _now(clock: IReactorTime) -> str:
    """An RFC 5322 §3.3 date for the Received header (formatted once a second)."""
    global _lastDate
    second = int(clock.seconds())
    if _lastDate[0] != second:
        when = datetime.datetime.fromtimestamp(second, datetime.timezone.utc)
        _lastDate = (second, email.utils.format_datetime(when))
    return _lastDate[1]


def _isAddressLiteral(text: str) -> bool:
    """RFC 5321 §4.1.3: C{[192.0.2.1]} or C{[IPv6:2001:db8::1]}."""
    if not (text.startswith("[") and text.endswith("]")):
        return False
    inner = text[1:-1]
    if "%" in inner:
        # An IPv6 zone id means nothing to anyone else (RFC 5321 §4.1.3
        # has none), and it may hold any text.
        return False
    try:
        if inner[:5].lower() == "ipv6:":
            ipaddress.IPv6Address(inner[5:])
        else:
            ipaddress.IPv4Address(inner)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=1024)
def _tcpInfo(host: str) -> str:
    """
    The peer's address as an RFC 5321 §4.1.3 address literal for the
    C{Received:} field's TCP-info (§4.4): C{[192.0.2.7]} or
    C{[IPv6:2001:db8::1]}, without any zone id; C{[unknown]} for anything
    that is not an IP address (a UNIX socket, a test transport).
    """
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return "[unknown]"
    if address.version == 6:
        return "[IPv6:%s]" % (address,)
    return "[%s]" % (address,)


def _parseParameters(text: str) -> Dict[str, Optional[str]]:
    """
    RFC 5321 §4.1.2 C{Mail-parameters}: C{keyword[=value]} separated by
    spaces; keywords are case-insensitive.

    @raise SMTPReply: 501 for syntax errors and repeated keywords.
    """
    params: Dict[str, Optional[str]] = {}
    for word in text.split():
        keyword, eq, value = word.partition("=")
        if not keyword or not keyword.replace("-", "").isalnum() or (eq and not value):
            raise reply(codes.ARGUMENT_SYNTAX_ERROR, codes.P_INVALID_ARGUMENTS, "Bad parameter syntax: %s" % (word[:40],))
        keyword = keyword.upper()
        if keyword in params:
            raise reply(codes.ARGUMENT_SYNTAX_ERROR, codes.P_INVALID_ARGUMENTS, "Parameter %s given twice" % (keyword,))
        params[keyword] = value if eq else None
    return params


def _splitPath(argument: str, keyword: str, badSyntax: str) -> Tuple[str, str]:
    """
    Split C{FROM:<path> params} (RFC 5321 §4.1.2) into the path's address
    (without brackets or source route) and the parameter text.

    @raise SMTPReply: 501 if it does not parse or the path is too long.
    """
    head, colon, rest = argument.partition(":")
    if not colon or head.strip().upper() != keyword:
        raise reply(codes.ARGUMENT_SYNTAX_ERROR, codes.P_INVALID_ARGUMENTS, "Syntax: %s:<address>" % (keyword,))
    rest = rest.lstrip(" ")
    if not rest.startswith("<"):
        raise reply(codes.ARGUMENT_SYNTAX_ERROR, badSyntax, "Address must be in angle brackets")
    close = rest.find(">")
    if close < 0:
        raise reply(codes.ARGUMENT_SYNTAX_ERROR, badSyntax, "Missing > after the address")
    path, params = rest[: close + 1], rest[close + 1 :]
    if params and not params.startswith(" "):
        raise reply(codes.ARGUMENT_SYNTAX_ERROR, badSyntax, "Unexpected text after the address")
    # RFC 5321 §4.5.3.1.3: a path is at most 256 octets, brackets included.
    if len(path.encode("utf-8")) > MAX_PATH:
        raise reply(codes.ARGUMENT_SYNTAX_ERROR, codes.P_BAD_DESTINATION_SYNTAX, "Path longer than 256 octets")
    address = path[1:-1]
    # RFC 5321 §4.1.1.3 / Appendix C: accept and ignore a source route.
    if address.startswith("@"):
        _, colon, address = address.partition(":")
        if not colon:
            raise reply(codes.ARGUMENT_SYNTAX_ERROR, badSyntax, "Bad source route")
    return address, params.strip()


# Random octets for transaction ids, read from the system a few kilobytes
# at a time rather than with a system call per message.
_RANDOM_READ = 4096
_randomPool = b""
_randomOffset = 0


def _transactionId() -> str:
    """Twelve random hexadecimal digits (upper case), as C{secrets.token_hex(6).upper()}."""
    global _randomPool, _randomOffset
    offset = _randomOffset
    if offset + 6 > len(_randomPool):
        _randomPool, offset = os.urandom(_RANDOM_READ), 0
    _randomOffset = offset + 6
    return _randomPool[offset : offset + 6].hex().upper()


@attr.s(auto_attribs=True)
class _Transaction:
    """
    One mail transaction (RFC 5321 §3.3): from MAIL to the end of data.
    """

    returnPath: str
    smtputf8: bool = False
    declaredSize: Optional[int] = None
    recipients: List[str] = attr.ib(factory=list)
    # Accepted RCPT commands, duplicates included, for the limit.
    rcptCount: int = 0
    id: str = attr.ib(factory=lambda: _transactionId())
    receiver: Optional[IMessageReceiver] = None
    checker: Optional[MessageChecker] = None
    headers: Optional[HeaderSection] = None
    # The header section's verdict, once it is complete: None if it passed.
    headersJudged: bool = False
    headerRefusal: Optional[SMTPReply] = None
    # RCPT commands refused for exceeding max_recipients.
    overshoot: int = 0
    decoder: Optional[DotDecoder] = None
    usedBDAT: bool = False
    # Set when storing failed half-way: the reply at the end of the data.
    error: Optional[SMTPReply] = None


@implementer(IPushProducer)
class SMTPServer(Protocol):
    """
    One ESMTP connection.

    Input is taken from a buffer one command (or one data chunk) at a
    time; a command whose answer is asynchronous (end of data, AUTH) stops
    that until the answer is written, so pipelined replies keep their order
    (RFC 2920 §3.1).  The server is also the transport's producer: a client
    that sends commands without reading the replies is not read from until
    it catches up, so replies cannot pile up in memory.

    @ivar factory: the L{SMTPFactory}, for settings and the connection
        count.
    """

    factory: "SMTPFactory"
    # Always connected while in use; typed loosely for startTLS and the
    # producer methods, which ITransport does not declare.
    transport: Any

    def __init__(self) -> None:
        # Input not yet handled: self._buffer[self._offset:].  Lines are taken
        # by moving the offset, so a packet of many pipelined commands is not
        # copied once per command.
        self._buffer = b""
        self._offset = 0
        self._mode = _COMMAND
        self._discarding = False
        self._waiting = False
        self._processing = False
        self._outputPaused = False
        self._readingPaused = False
        self._closed = False
        self._counted = False
        self._registered = False
        self._errors = 0
        self._junk = 0
        self._helo: Optional[str] = None
        self._esmtp = False
        self._tls = False
        self._sender: Optional[ISender] = None
        self._logout: Optional[Callable[[], None]] = None
        self._auth: Optional[Callable[[str], object]] = None
        self._transaction: Optional[_Transaction] = None
        self._chunk: Optional["_Chunk"] = None
        self._peer = "unknown"
        self._idleCall: Optional[IDelayedCall] = None
        self._deadlineCall: Optional[IDelayedCall] = None
        # The deadline's call is kept while disarmed and reset when armed
        # again: cheaper than a new call for every message (issue 14).
        self._deadlineArmed = False
        self._abortCall: Optional[IDelayedCall] = None
        self._dataWindowBytes = 0
        self._handlers: Dict[str, Callable[[str], object]] = {
            "EHLO": self.do_EHLO,
            "HELO": self.do_HELO,
            "MAIL": self.do_MAIL,
            "RCPT": self.do_RCPT,
            "DATA": self.do_DATA,
            "BDAT": self.do_BDAT,
            "RSET": self.do_RSET,
            "NOOP": self.do_NOOP,
            "QUIT": self.do_QUIT,
            "VRFY": self.do_VRFY,
            "EXPN": self.do_EXPN,
            "HELP": self.do_HELP,
            "STARTTLS": self.do_STARTTLS,
            "AUTH": self.do_AUTH,
        }

    # --- settings, from the factory ---------------------------------------

    @property
    def limits(self) -> Limits:
        return self.factory.limits

    @property
    def hostname(self) -> str:
        return self.factory.hostname

    @property
    def clock(self) -> IReactorTime:
        return self.factory.clock

    def _authAllowed(self) -> bool:
        """RFC 4954 §4 / RFC 8314: AUTH only over TLS unless configured otherwise."""
        return self._tls or self.factory.allowPlaintextAuth

    def _startTLSOffered(self) -> bool:
        return self.factory.tlsOptions is not None and not self._tls

    # --- connection -------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self._peer = getattr(peer, "host", None) or str(peer)
        self._tls = self.factory.role == "smtps" or ISSLTransport.providedBy(self.transport)
        noDelay = getattr(self.transport, "setTcpNoDelay", None)
        if noDelay is not None:
            try:
                noDelay(True)
            except Exception:  # not a TCP socket (UNIX, tests): nothing to tune
                pass
        if self.factory.connections >= self.limits.max_connections:
            log.warn("SMTP connection from {peer} refused: {n} connections open", peer=self._peer, n=self.factory.connections)
            self._close(reply(codes.SERVICE_UNAVAILABLE, codes.T_POLICY, "%s too many connections, try again later" % (self.hostname,)))
            return
        self.factory.connections += 1
        self._counted = True
        log.debug("SMTP connection from {peer} ({role})", peer=self._peer, role=self.factory.role)
        self.transport.registerProducer(self, True)
        self._registered = True
        # RFC 5321 §4.2: the greeting carries no enhanced status code.
        self._write(codes.SERVICE_READY, "%s ESMTP mailnet" % (self.hostname,))
        self._restartIdleTimer()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._closed = True
        self._cancelTimers()
        if self._counted:
            self.factory.connections -= 1
            self._counted = False
        self._abortTransaction("connection lost")
        self._forgetLogin()
        self._discardInput()

    def _forgetLogin(self) -> None:
        logout, self._logout, self._sender = self._logout, None, None
        self._auth = None
        if logout is not None:
            try:
                logout()
            except Exception:
                log.failure("SMTP logout failed")

    def _close(self, final: SMTPReply) -> None:
        """Send a last reply and hang up; anything else the client sends is ignored."""
        if self._closed:
            return
        self._writeReply(final)
        self._closed = True
        self._discardInput()
        self._cancelTimers()
        self._hangUp()

    def _hangUp(self) -> None:
        """
        Close the connection once the replies are written.  The producer is
        unregistered first: Twisted's TLS layer does not send its
        close_notify (nor close the socket) while a producer is registered,
        so a TLS session would stay open after C{221} until the idle
        timeout.
        """
        if self._registered:
            self._registered = False
            self.transport.unregisterProducer()
        self.transport.loseConnection()
        # A peer that does not close its side (nor answer TLS's
        # close_notify) is cut off.
        self._abortCall = self.clock.callLater(CLOSE_GRACE, self.transport.abortConnection)

    # --- timers -----------------------------------------------------------

    def _cancelTimers(self) -> None:
        for name in ("_idleCall", "_deadlineCall", "_abortCall"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)
        self._deadlineArmed = False

    def _restartIdleTimer(self) -> None:
        if self._closed:
            return
        if self._idleCall is not None and self._idleCall.active():
            self._idleCall.reset(self.limits.idle_timeout)
        else:
            self._idleCall = self.clock.callLater(self.limits.idle_timeout, self._idleReached)

    def _idleReached(self) -> None:
        # While a reply is awaited the idle timer is not cancelled (a new
        # call per awaited reply costs more) but does nothing: it starts
        # again in full once the reply is written (L{_resume}).
        self._idleCall = None
        if self._waiting:
            return
        self._timedOut("idle timeout")

    def _updateDeadline(self) -> None:
        """
        Run the command deadline while a command line is incomplete, and the
        data-rate check while message data is being read; stop it otherwise.
        """
        if self._closed:
            return
        inData = self._mode in (_DATA, _BDAT) and not self._waiting
        partial = self._mode == _COMMAND and (self._pending() or self._discarding) and not self._waiting
        if inData or partial:
            if not self._deadlineArmed:
                self._armDeadline()
        else:
            self._deadlineArmed = False

    def _armDeadline(self) -> None:
        """Start the command deadline, resetting the kept call if there is one."""
        self._dataWindowBytes = 0
        self._deadlineArmed = True
        call = self._deadlineCall
        if call is not None and call.active():
            call.reset(self.limits.command_timeout)
        else:
            self._deadlineCall = self.clock.callLater(self.limits.command_timeout, self._deadlineReached)

    def _deadlineReached(self) -> None:
        self._deadlineCall = None
        if not self._deadlineArmed:
            return
        self._deadlineArmed = False
        if self._mode in (_DATA, _BDAT):
            # A slow client may take long over a big message, as long as
            # the data keeps coming at a usable rate.
            if self._dataWindowBytes >= MIN_DATA_RATE * self.limits.command_timeout:
                self._armDeadline()
                return
            self._timedOut("data too slow")
        else:
            self._timedOut("command not completed in time")

    def _timedOut(self, why: str) -> None:
        # The idle timer, if this is the deadline, is cancelled by _close:
        # it must not time the closed connection out a second time.
        log.info("SMTP {peer}: {why}, closing", peer=self._peer, why=why)
        self._abortTransaction(why)
        self._close(reply(codes.SERVICE_UNAVAILABLE, codes.T_IDLE_TIMEOUT, "%s idle timeout" % (self.hostname,)))

    # --- input ------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        if not self._waiting:
            self._restartIdleTimer()
        self._dataWindowBytes += len(data)
        self._compact()
        self._buffer += data
        if self._waiting or self._outputPaused:
            self._updateReading()
        self._processBuffer()

    def _processBuffer(self) -> None:
        """Handle buffered input until it runs out or a reply must be awaited."""
        if self._processing:
            return
        self._processing = True
        try:
            while self._pending() and not (self._waiting or self._outputPaused or self._closed):
                if self._mode == _DATA:
                    self._feedData()
                elif self._mode == _BDAT:
                    self._feedChunk()
                else:
                    line = self._takeLine()
                    if line is None:
                        break
                    self._lineReceived(line)
        finally:
            self._processing = False
        self._compact()
        self._updateDeadline()

    def _pending(self) -> int:
        """How many octets of input are waiting."""
        return len(self._buffer) - self._offset

    def _compact(self) -> None:
        """Drop the input already handled."""
        if self._offset:
            self._buffer = self._buffer[self._offset :]
            self._offset = 0

    def _discardInput(self) -> None:
        self._buffer = b""
        self._offset = 0

    def _lineLimit(self) -> int:
        # RFC 4954 §4: AUTH lines, the command and the responses, may be longer.
        if self._auth is not None or self._buffer[self._offset : self._offset + 5].upper() == b"AUTH ":
            return max(AUTH_LINE_LIMIT, self.limits.max_command_line)
        return self.limits.max_command_line

    def _takeLine(self) -> Optional[bytes]:
        """
        @return: the next complete command line without its line ending, or
            L{None} if there is none yet.  An over-long line is answered
            once and its remainder discarded up to the next line ending.
        """
        while True:
            if self._discarding:
                end = self._buffer.find(b"\n", self._offset)
                if end < 0:
                    self._discardInput()
                    return None
                self._offset = end + 1
                self._discarding = False
            limit = self._lineLimit()
            # RFC 5321 §4.5.3.1.4: the limit counts the CRLF.
            end = self._buffer.find(b"\n", self._offset, self._offset + limit)
            if end < 0:
                if self._pending() < limit:
                    return None
                self._discarding = True
                authLine = limit > self.limits.max_command_line
                too = codes.P_AUTH_LINE_TOO_LONG if authLine else codes.P_SYNTAX_ERROR
                self._auth = None
                self._reply(reply(codes.SYNTAX_ERROR, too, "line too long"))
                if self._closed:
                    return None
                continue
            line = self._buffer[self._offset : end]
            self._offset = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            return line

    def _lineReceived(self, line: bytes) -> None:
        # A complete line: the command deadline starts again with the next.
        self._deadlineArmed = False
        if self._auth is not None:
            step, self._auth = self._auth, None
            self._dispatch(lambda: step(line.decode("ascii", "replace").strip()))
        else:
            self._dispatch(lambda: self._command(line))

    def _command(self, line: bytes) -> object:
        # RFC 5321 §2.4: commands are ASCII; RFC 6531 §3.3 lets UTF-8 into
        # MAIL and RCPT addresses only.
        if _CONTROL.search(line) is not None:
            raise reply(codes.SYNTAX_ERROR, codes.P_SYNTAX_ERROR, "Control characters or NUL in command")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise reply(codes.SYNTAX_ERROR, codes.P_SYNTAX_ERROR, "Command is not ASCII or UTF-8")
        verb, _, argument = text.partition(" ")
        verb = verb.upper()
        handler = self._handlers.get(verb) if verb.isascii() else None
        if handler is None:
            raise reply(codes.SYNTAX_ERROR, codes.P_INVALID_COMMAND, "Command unrecognized")
        if not text.isascii() and verb not in ("MAIL", "RCPT"):
            raise reply(codes.SYNTAX_ERROR, codes.P_SYNTAX_ERROR, "Non-ASCII characters in command")
        result = handler(argument.strip(" "))
        if verb in _JUNK_VERBS:
            self._junk += 1
            if self._junk > JUNK_COMMAND_LIMIT and isinstance(result, SMTPReply):
                self._reply(result)
                self._countError()
                return None
        return result

    def _dispatch(self, handle: Callable[[], object]) -> None:
        """
        Run a handler and write its reply: one it returns, one it raises,
        or one a returned Deferred fires with.  Input waits meanwhile.
        """
        try:
            result = handle()
        except SMTPReply as r:
            self._reply(r)
            return
        except Exception:
            self._unexpected(Failure())
            return
        if isinstance(result, Deferred):
            self._await(result)
        elif isinstance(result, SMTPReply):
            self._reply(result)

    def _await(self, d: Deferred) -> None:
        """
        Answer with what C{d} gives; if it has not fired yet, stop reading
        input until it does (RFC 2920 §3.1: replies in order).
        """
        pending = [True]
        fired: List[object] = []

        def settled(outcome: object) -> None:
            if pending[0]:
                fired.append(outcome)
                return
            self._settle(outcome)
            self._resume()

        d.addBoth(settled)
        pending[0] = False
        if fired:
            self._settle(fired[0])
            return
        self._waiting = True  # the idle timer does nothing meanwhile (_idleReached)
        self._updateReading()

    def _settle(self, outcome: object) -> None:
        if self._closed:
            return
        if isinstance(outcome, Failure):
            if outcome.check(SMTPReply):
                self._reply(outcome.value)
            else:
                self._unexpected(outcome)
        elif isinstance(outcome, SMTPReply):
            self._reply(outcome)

    def _resume(self) -> None:
        self._waiting = False
        if self._closed:
            return
        self._updateReading()
        self._restartIdleTimer()
        self._processBuffer()

    def _updateReading(self) -> None:
        """
        Stop reading from the client once it has sent a lot that cannot be
        handled yet: while a reply is awaited (RFC 2920 §3.1: replies in
        order), or while it does not read its replies.  Below that bound the
        input just waits in the buffer: pausing and resuming the transport
        for every awaited reply would cost two system calls per command.
        (A paused output alone does not stop reading: TLS pauses its
        producer during the handshake, which needs the reading to go on.)
        """
        pause = (self._waiting or self._outputPaused) and self._pending() > INPUT_HIGH_WATER
        if pause != self._readingPaused and not self._closed:
            self._readingPaused = pause
            if pause:
                self.transport.pauseProducing()
            else:
                self.transport.resumeProducing()

    # --- IPushProducer: the transport's write buffer is full or drained ----

    def pauseProducing(self) -> None:
        self._outputPaused = True
        self._updateReading()

    def resumeProducing(self) -> None:
        self._outputPaused = False
        self._updateReading()
        if not self._closed:
            self._processBuffer()

    def stopProducing(self) -> None:
        self._outputPaused = True

    def _unexpected(self, failure: Failure) -> None:
        log.failure("SMTP {peer}: unexpected error", failure, peer=self._peer)
        self._reply(reply(codes.LOCAL_ERROR, codes.T_LOCAL_ERROR, "Local error in processing, try again later"))

    # --- output -----------------------------------------------------------

    def _write(self, code: int, text: str) -> None:
        lines = text.split("\n")
        out = [b"%d-%s\r\n" % (code, line.encode("utf-8")) for line in lines[:-1]]
        out.append(b"%d %s\r\n" % (code, lines[-1].encode("utf-8")))
        self.transport.writeSequence(out)

    def _writeReply(self, r: SMTPReply) -> None:
        # A reply's text may come from elsewhere (the delivery agent):
        # never let CR or LF in it split the reply.
        text = str(r.text)
        if "\r" in text:
            text = text.replace("\r", " ")
        if "\n" not in text:
            # The usual one-line reply: one write.
            self.transport.write(b"%d %s\r\n" % (r.code, text.encode("utf-8")))
            return
        self._write(r.code, text)

    def _reply(self, r: SMTPReply, countError: bool = True) -> None:
        """The one place replies are written, counted and logged."""
        if self._closed:
            return
        self._writeReply(r)
        if r.code >= 400:
            metrics.refusal(r.code, r.text)
        if r.code >= 400 and countError:
            log.info("SMTP {peer}: {code} {text}", peer=self._peer, code=r.code, text=escape(r.text.split("\n")[0]))
            if r.code != codes.SERVICE_UNAVAILABLE:
                self._countError()

    def _countError(self) -> None:
        """After limits.max_errors mistakes, the client is cut off."""
        self._errors += 1
        if self._errors >= self.limits.max_errors and not self._closed:
            log.warn("SMTP {peer}: too many errors, closing", peer=self._peer)
            self._abortTransaction("too many errors")
            self._close(reply(codes.SERVICE_UNAVAILABLE, codes.T_POLICY, "too many errors"))

    # --- transactions -----------------------------------------------------

    def _resetTransaction(self) -> None:
        """RSET, EHLO, STARTTLS and the end of a message all come here."""
        self._abortTransaction(None)
        self._mode = _COMMAND

    def _abortTransaction(self, why: Optional[str]) -> None:
        transaction, self._transaction = self._transaction, None
        if transaction is not None and transaction.receiver is not None:
            receiver, transaction.receiver = transaction.receiver, None
            receiver.abort()
            if why:
                log.info(
                    "SMTP {peer}: message {id} from <{sender}> abandoned: {why}",
                    peer=self._peer,
                    id=transaction.id,
                    sender=escape(transaction.returnPath),
                    why=why,
                )

    def _needHelo(self) -> None:
        if self._helo is None:
            raise reply(codes.BAD_SEQUENCE, codes.P_INVALID_COMMAND, "Send EHLO or HELO first")

    def _protocolName(self, transaction: _Transaction) -> str:
        """RFC 3848 / RFC 6531 §3.7.3 names for the Received header's "with"."""
        if not self._esmtp:
            return "SMTP"
        name = "UTF8SMTP" if transaction.smtputf8 else "ESMTP"
        return name + ("S" if self._tls else "") + ("A" if self._sender is not None else "")

    def _receivedHeader(self, transaction: _Transaction) -> bytes:
        """RFC 5321 §4.4: the trace header this server adds."""
        # The HELO name is a checked domain or address literal (no ";",
        # parentheses or zone ids can break the field's structure), and the
        # peer's address is written as a literal of our own making.
        lines = ["Received: from %s (%s)" % (self._helo, _tcpInfo(self._peer))]
        lines.append("\tby %s with %s id %s" % (self.hostname, self._protocolName(transaction), transaction.id))
        stamp = _now(self.clock)
        if len(transaction.recipients) == 1:
            lines.append("\tfor <%s>; %s" % (transaction.recipients[0], stamp))
        else:
            lines[-1] += ";"
            lines.append("\t%s" % (stamp,))
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")

    def _startMessage(self) -> _Transaction:
        """Open the receiver as the data begins, so the message streams to disk."""
        transaction = self._transaction
        assert transaction is not None
        transaction.checker = MessageChecker(self.limits.max_message_size)
        transaction.headers = HeaderSection()
        try:
            transaction.receiver = self.factory.delivery.receive(transaction.returnPath, list(transaction.recipients))
            if self.factory.judge is not None:
                transaction.receiver = self.factory.judge.wrap(
                    transaction.receiver, peer=self._peer, helo=self._helo or "", mailFrom=transaction.returnPath,
                    authenticated=self._sender is not None, role=self.factory.role,
                )
            transaction.receiver.write(self._receivedHeader(transaction))
        except SMTPReply:
            self._resetTransaction()
            raise
        except Exception:
            log.failure("SMTP {peer}: could not start message {id}", peer=self._peer, id=transaction.id)
            self._resetTransaction()
            raise reply(codes.LOCAL_ERROR, codes.T_LOCAL_ERROR, "Local error in processing, try again later")
        return transaction

    def _take(self, transaction: _Transaction, data: bytes) -> None:
        """Check and store some message bytes."""
        if not data:
            return
        checker, headers = transaction.checker, transaction.headers
        assert checker is not None and headers is not None
        checker.feed(data)
        if transaction.receiver is None:
            return
        if checker.tooBig:
            self._dropReceiver(transaction)
            return
        try:
            data = headers.feed(data)
        except Exception:
            log.failure("SMTP {peer}: could not read the header of message {id}", peer=self._peer, id=transaction.id)
            transaction.headersJudged = True
            transaction.headerRefusal = reply(codes.LOCAL_ERROR, codes.T_LOCAL_ERROR, "Local error in processing, try again later")
            self._dropReceiver(transaction)
            return
        self._store(transaction, data)

    def _store(self, transaction: _Transaction, data: bytes) -> None:
        """
        Write what the header section lets through; once it is complete,
        judge it, and store nothing more if it is refused.
        """
        headers = transaction.headers
        assert headers is not None
        if (headers.complete or headers.tooLarge) and not transaction.headersJudged:
            transaction.headersJudged = True
            refusal = self._judgeHeaders(transaction, headers)
            if refusal is not None:
                transaction.headerRefusal = refusal
                self._dropReceiver(transaction)
        if not data or transaction.receiver is None:
            return
        try:
            transaction.receiver.write(data)
        except Exception:
            # Keep reading to the end of the data, then answer 451.
            log.failure("SMTP {peer}: could not write message {id}", peer=self._peer, id=transaction.id)
            receiver, transaction.receiver = transaction.receiver, None
            transaction.error = reply(codes.LOCAL_ERROR, codes.T_LOCAL_ERROR, "Could not store the message, try again later")
            try:
                receiver.abort()
            except Exception:
                log.failure("SMTP {peer}: could not abort message {id}", peer=self._peer, id=transaction.id)

    def _dropReceiver(self, transaction: _Transaction) -> None:
        """Nothing of this message is stored: drop what was written."""
        receiver, transaction.receiver = transaction.receiver, None
        if receiver is not None:
            try:
                receiver.abort()
            except Exception:
                log.failure("SMTP {peer}: could not abort message {id}", peer=self._peer, id=transaction.id)

    def _endMessage(self, transaction: _Transaction) -> Deferred:
        """
        All data is in: refuse it, or make it durable and answer 250 only
        when that is done.

        @raise SMTPReply: the message is refused.
        """
        checker, headers = transaction.checker, transaction.headers
        assert checker is not None and headers is not None
        started = metrics.now()
        try:
            checker.finish()
            if transaction.receiver is not None and not checker.tooBig:
                self._store(transaction, headers.finish())
            refusal = self._judge(transaction, checker)
        except Exception:
            # Whatever went wrong, the transaction ends here, cleanly.
            log.failure("SMTP {peer}: could not check message {id}", peer=self._peer, id=transaction.id)
            refusal = reply(codes.LOCAL_ERROR, codes.T_LOCAL_ERROR, "Local error in processing, try again later")
            self._dropReceiver(transaction)
        if refusal is not None:
            self._resetTransaction()
            log.info(
                "SMTP {peer}: message {id} from <{sender}> refused: {reason}",
                peer=self._peer,
                id=transaction.id,
                sender=escape(transaction.returnPath),
                reason=escape(refusal.text),
            )
            raise refusal
        receiver = transaction.receiver
        assert receiver is not None
        # From here the receiver is finishing: connection loss must not abort it.
        transaction.receiver = None
        self._transaction = None
        self._mode = _COMMAND
        d = maybeDeferred(receiver.finish)

        def stored(messageId: object) -> SMTPReply:
            # As Postfix: the error and junk counts are per delivered message.
            self._errors = self._junk = 0
            log.info(
                "SMTP accepted message {id} ({localId}) from <{sender}> to {recipients}, {size} octets, peer {peer} ({helo}), {tls}",
                id=messageId,
                localId=transaction.id,
                sender=escape(transaction.returnPath),
                recipients=escape(",".join(transaction.recipients)),
                size=checker.size,
                peer=self._peer,
                helo=escape(self._helo or ""),
                tls=_tlsDescription(self.transport) if self._tls else "no TLS",
            )
            metrics.messageReceived(self.factory.role, started)
            return reply(codes.OK, codes.S_OK, "Ok: queued as %s" % (messageId,))

        def notStored(failure: Failure) -> SMTPReply:
            if failure.check(SMTPReply):
                # A policy refusal at the end of data (DMARC, SPF): sent as it is.
                log.info("SMTP {peer}: message {id} from <{sender}> refused: {reason}", peer=self._peer,
                         id=transaction.id, sender=transaction.returnPath, reason=failure.value.text)
                return failure.value
            log.failure("SMTP {peer}: message {id} could not be stored", failure, peer=self._peer, id=transaction.id)
            return reply(codes.LOCAL_ERROR, codes.T_LOCAL_ERROR, "Could not store the message, try again later")

        return d.addCallbacks(stored, notStored)

    def _judge(self, transaction: _Transaction, checker: MessageChecker) -> Optional[SMTPReply]:
        if transaction.error is not None:
            return transaction.error
        if checker.tooBig:
            # RFC 1870 §6.2.
            return reply(codes.EXCEEDED_STORAGE, codes.P_MESSAGE_TOO_BIG, "Message exceeds %d octets" % (checker.maxSize,))
        if checker.bareLineEnding:
            # RFC 5321 §2.3.8: lines end in CRLF only; bare CR or LF is
            # refused outright, the defence against SMTP smuggling.
            return reply(codes.MAILBOX_UNAVAILABLE, codes.P_MEDIA_ERROR, "Message contains a bare CR or LF")
        if checker.nul:
            return reply(codes.MAILBOX_UNAVAILABLE, codes.P_MEDIA_ERROR, "Message contains a NUL octet")
        if checker.lineTooLong:
            # RFC 5321 §4.5.3.1.6: refuse rather than split a line.
            return reply(codes.MAILBOX_UNAVAILABLE, codes.P_MEDIA_ERROR, "Message has a line longer than 1000 octets")
        if transaction.headerRefusal is not None:
            return transaction.headerRefusal
        if transaction.receiver is None:
            # Dropped without a reason recorded: never acknowledge it.
            return reply(codes.LOCAL_ERROR, codes.T_LOCAL_ERROR, "Local error in processing, try again later")
        return None

    def _judgeHeaders(self, transaction: _Transaction, headers: HeaderSection) -> Optional[SMTPReply]:
        """
        The checks on the header section, on every port: its size, the hop
        count and forwarding loops (RFC 5321 §6.3), and for authenticated
        clients its syntax and the From: addresses.  Any error in them
        refuses the message (451) rather than leaving it half-judged.
        """
        try:
            return self._headerRefusal(transaction, headers)
        except Exception:
            log.failure("SMTP {peer}: could not check the header of message {id}", peer=self._peer, id=transaction.id)
            return reply(codes.LOCAL_ERROR, codes.T_LOCAL_ERROR, "Local error in processing, try again later")

    def _headerRefusal(self, transaction: _Transaction, headers: HeaderSection) -> Optional[SMTPReply]:
        if headers.tooLarge:
            return reply(codes.EXCEEDED_STORAGE, codes.P_MESSAGE_TOO_BIG, "Header section too large")
        if headers.received >= self.limits.max_hops:
            # RFC 5321 §6.3: a message with too many Received: fields is
            # in a loop; it is refused, never stored or relayed.
            return reply(
                codes.TRANSACTION_FAILED,
                codes.P_ROUTING_LOOP,
                "Too many hops (%d Received: header fields): mail loop?" % (headers.received,),
            )
        for recipient in transaction.recipients:
            if recipient.lower() in headers.deliveredTo:
                # Already delivered to this address once: an alias loop.
                return reply(
                    codes.TRANSACTION_FAILED,
                    codes.P_ROUTING_LOOP,
                    "Mail forwarding loop for <%s>" % (recipient,),
                )
        if self._sender is None:
            return None
        if headers.malformed:
            # RFC 5322 §2.2: what downstream software would make of such a
            # line is anyone's guess; a submitting client must not send it.
            return reply(
                codes.MAILBOX_UNAVAILABLE,
                codes.P_MEDIA_ERROR,
                "Header section has a line that is neither a header field nor a continuation",
            )
        try:
            addresses = headers.fromAddresses()
        except AddressSyntaxError as e:
            return reply(codes.MAILBOX_UNAVAILABLE, codes.P_MEDIA_ERROR, "From: cannot be read: %s" % (e,))
        for address in addresses:
            if not self._sender.maySendAs(address):
                return reply(
                    codes.MAILBOX_NAME_NOT_ALLOWED,
                    codes.P_NOT_AUTHORIZED,
                    "From: <%s> is not yours to send as" % (escape(address, 256),),
                )
        return None

    # --- message data -----------------------------------------------------

    def _feedData(self) -> None:
        """DATA: take the whole buffer as message data, up to <CRLF>.<CRLF>."""
        transaction = self._transaction
        assert transaction is not None and transaction.decoder is not None
        self._compact()
        data, self._buffer = self._buffer, b""
        content, rest = transaction.decoder.feed(data)
        self._take(transaction, content)
        if rest is None:
            return
        # RFC 5321 §4.1.1.4: the message ends here; what follows is commands.
        self._buffer = rest
        self._mode = _COMMAND
        self._dispatch(lambda: self._endMessage(transaction))

    def _feedChunk(self) -> None:
        """BDAT: take exactly the announced number of octets (RFC 3030 §2)."""
        chunk = self._chunk
        assert chunk is not None
        self._compact()
        take = min(chunk.left, len(self._buffer))
        data, self._buffer = self._buffer[:take], self._buffer[take:]
        chunk.left -= take
        if chunk.transaction is not None:
            self._take(chunk.transaction, data)
        if chunk.left == 0:
            self._mode = _COMMAND
            self._dispatch(self._endChunk)

    def _endChunk(self) -> object:
        chunk, self._chunk = self._chunk, None
        self._mode = _COMMAND
        assert chunk is not None
        if chunk.failure is not None:
            raise chunk.failure
        transaction = chunk.transaction
        assert transaction is not None and transaction.checker is not None
        if chunk.last:
            return self._endMessage(transaction)
        if transaction.checker.tooBig:
            # RFC 3030 §2: after a failed chunk the transaction is over.
            self._resetTransaction()
            return self._judge(transaction, transaction.checker)
        return reply(codes.OK, codes.S_OK, "%d octets received" % (transaction.checker.size,))

    # --- commands: session ------------------------------------------------

    def _checkHelo(self, argument: str) -> str:
        name = argument.split(" ")[0] if argument else ""
        if not name or not (isDomain(name) or _isAddressLiteral(name)):
            raise reply(codes.ARGUMENT_SYNTAX_ERROR, codes.P_INVALID_ARGUMENTS, "Syntax: EHLO <domain or address literal>")
        return name

    def do_EHLO(self, argument: str) -> SMTPReply:
        """RFC 5321 §4.1.1.1 (the extensions are listed in the module docstring)."""
        name = self._checkHelo(argument)
        self._resetTransaction()
        self._helo, self._esmtp = name, True
        lines = ["%s Hello %s [%s]" % (self.hostname, name, self._peer)]
        lines += [
            "PIPELINING",  # RFC 2920
            "SIZE %d" % (self.limits.max_message_size,),  # RFC 1870
            "8BITMIME",  # RFC 6152
            "ENHANCEDSTATUSCODES",  # RFC 2034
            "SMTPUTF8",  # RFC 6531
            "CHUNKING",  # RFC 3030
        ]
        if self._startTLSOffered():
            lines.append("STARTTLS")  # RFC 3207
        if self._authAllowed():
            lines.append("AUTH PLAIN LOGIN")  # RFC 4954, RFC 4616
        return SMTPReply(codes.OK, "\n".join(lines))

    def do_HELO(self, argument: str) -> SMTPReply:
        """RFC 5321 §4.1.1.1: plain SMTP, no extensions."""
        name = self._checkHelo(argument)
        self._resetTransaction()
        self._helo, self._esmtp = name, False
        return SMTPReply(codes.OK, "%s Hello %s [%s]" % (self.hostname, name, self._peer))

    def do_RSET(self, argument: str) -> SMTPReply:
        """RFC 5321 §4.1.1.5."""
        if argument:
            raise reply(codes.ARGUMENT_SYNTAX_ERROR, codes.P_INVALID_ARGUMENTS, "RSET takes no arguments")
        self._resetTransaction()
        return reply(codes.OK, codes.S_OK, "Ok")

    def do_NOOP(self, argument: str) -> SMTPReply:
        """RFC 5321 §4.1.1.9: any argument is ignored."""
        return reply(codes.OK, codes.S_OK, "Ok")

    def do_QUIT(self, argument: str) -> None:
        """RFC 5321 §4.1.1.10."""
        self._resetTransaction()
        self._close(reply(codes.SERVICE_CLOSING, codes.S_OK, "%s closing connection" % (self.hostname,)))

    def do_VRFY(self, argument: str) -> SMTPReply:
        """RFC 5321 §3.5.3: we do not reveal who exists."""
        if not argument:
            raise reply(codes.ARGUMENT_SYNTAX_ERROR, codes.P_INVALID_ARGUMENTS, "Syntax: VRFY <address>")
        return reply(codes.CANNOT_VRFY, codes.S_CANNOT_VRFY, "Cannot VRFY user, but will accept message and attempt delivery")

    def do_EXPN(self, argument: str) -> SMTPReply:
        """RFC 5321 §3.5.3: mailing lists are not disclosed."""
        raise reply(codes.NOT_IMPLEMENTED, codes.P_INVALID_COMMAND, "EXPN not available")

    def do_HELP(self, argument: str) -> SMTPReply:
        """RFC 5321 §4.1.1.8."""
        return reply(
            codes.HELP,
            codes.S_OK,
            "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH\n"
            "See RFC 5321 (SMTP) and RFC 6409 (submission)",
        )

    def do_STARTTLS(self, argument: str) -> None:
        """RFC 3207 §4."""
        if self._tls:
            raise reply(codes.BAD_SEQUENCE, codes.P_INVALID_COMMAND, "TLS already active")
        if self.factory.tlsOptions is None:
            raise reply(codes.NOT_IMPLEMENTED, codes.P_INVALID_COMMAND, "STARTTLS not available")
        if argument:
            raise reply(codes.ARGUMENT_SYNTAX_ERROR, codes.P_INVALID_ARGUMENTS, "STARTTLS takes no arguments")
        self._needHelo()
        self._reply(reply(codes.SERVICE_READY, codes.S_OK, "Ready to start TLS"))
        # RFC 3207 §4.2 and CVE-2011-0411: forget everything learnt before
        # TLS, and do not act on anything the client sent along with it.
        self._discardInput()
        self._discarding = False
        self._resetTransaction()
        self._forgetLogin()
        self._helo, self._esmtp = None, False
        try:
            self.transport.startTLS(self.factory.tlsOptions)
        except Exception:
            # The client already has its 220: it cannot go on in clear text.
            log.failure("SMTP {peer}: could not start TLS", peer=self._peer)
            self._closed = True
            self._cancelTimers()
            self._hangUp()
            return
        self._tls = True
        log.debug("SMTP {peer}: TLS started", peer=self._peer)

    # --- commands: AUTH (RFC 4954) ----------------------------------------

    def do_AUTH(self, argument: str) -> object:
        self._needHelo()
        if self._sender is not None:
            raise reply(codes.BAD_SEQUENCE, codes.P_INVALID_COMMAND, "Already authenticated")
        if self._transaction is not None:
            # RFC 4954 §4: not during a mail transaction.
            raise reply(codes.BAD_SEQUENCE, codes.P_INVALID_COMMAND, "AUTH not allowed during a mail transaction")
        if not self._authAllowed():
            raise reply(codes.ENCRYPTION_REQUIRED, codes.P_ENCRYPTION_REQUIRED, "Encryption required for requested authentication mechanism")
        words = argument.split(" ")
        mechanism = words[0].upper()
        if len(words) > 2 or not mechanism:
            raise reply(codes.ARGUMENT_SYNTAX_ERROR, codes.P_INVALID_ARGUMENTS, "Syntax: AUTH mechanism [initial-response]")
        initial = words[1] if len(words) == 2 else None
        if mechanism == "PLAIN":
            if initial is None:
                return self._challenge("", self._plainResponse)
            return self._plainResponse(initial)
        if mechanism == "LOGIN":
            if initial is None:
                return self._challenge("Username:", self._loginUsername)
            return self._loginUsername(initial)
        raise reply(codes.PARAMETER_NOT_IMPLEMENTED, codes.P_INVALID_ARGUMENTS, "Unrecognized authentication mechanism")

    def _challenge(self, text: str, then: Callable[[str], object]) -> SMTPReply:
        """RFC 4954 §4: a 334 with a base64 challenge; the next line answers it."""
        self._auth = then
        return SMTPReply(codes.AUTH_CHALLENGE, binascii.b2a_base64(text.encode("ascii"), newline=False).decode("ascii"))

    @staticmethod
    def _decode(response: str) -> bytes:
        if response == "*":
            raise reply(codes.ARGUMENT_SYNTAX_ERROR, codes.P_OTHER, "Authentication cancelled")
        if response == "=":
            return b""  # RFC 4954 §4: an empty initial response
        try:
            return binascii.a2b_base64(response.encode("ascii"), strict_mode=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise reply(codes.ARGUMENT_SYNTAX_ERROR, codes.P_SYNTAX_ERROR, "Invalid base64 data")

    def _plainResponse(self, response: str) -> Deferred:
        # RFC 4616 §2: [authzid] NUL authcid NUL passwd
        message = self._decode(response)
        parts = message.split(b"\0")
        if len(parts) != 3:
            raise reply(codes.ARGUMENT_SYNTAX_ERROR, codes.P_SYNTAX_ERROR, "Invalid PLAIN response")
        authzid, authcid, password = parts
        if authzid and authzid != authcid:
            # Acting for someone else is not supported: a plain failure.
            return self._login(b"", b"")
        return self._login(authcid, password)

    def _loginUsername(self, response: str) -> SMTPReply:
        username = self._decode(response)
        return self._challenge("Password:", lambda answer: self._login(username, self._decode(answer)))

    def _login(self, username: bytes, password: bytes) -> Deferred:
        # Twisted's convention (and POP3's): both as bytes.
        user = username.decode("utf-8", "replace")
        login = cast(Callable[..., Deferred], self.factory.authenticator.login)
        d = maybeDeferred(login, UsernamePassword(username, password), self._peer, ISender)

        def loggedIn(result: Tuple[object, ISender, Callable[[], None]]) -> SMTPReply:
            _, avatar, logout = result
            if self._closed:
                logout()
                return reply(codes.AUTH_SUCCEEDED, codes.S_AUTH_OK, "Authentication successful")
            self._sender, self._logout = avatar, logout
            log.info("SMTP {peer}: authenticated as {user}", peer=self._peer, user=avatar.address)
            return reply(codes.AUTH_SUCCEEDED, codes.S_AUTH_OK, "Authentication successful")

        def failed(failure: Failure) -> Optional[SMTPReply]:
            if failure.check(UnauthorizedLogin):
                log.info("SMTP {peer}: authentication failed for {user!r}", peer=self._peer, user=user[:100])
                return reply(codes.AUTH_INVALID, codes.P_AUTH_INVALID, "Authentication credentials invalid")
            if failure.check(LoginBusy):
                # Issue 11: too many logins in progress.  Not the client's
                # mistake: written here so that it does not count towards
                # max_errors, and the session goes on (it may retry).
                log.info("SMTP {peer}: authentication refused, too many logins in progress", peer=self._peer)
                if not self._closed:
                    self._writeReply(reply(codes.TEMPORARY_AUTH_FAILURE, codes.T_POLICY, str(failure.value)))
                return None
            log.failure("SMTP {peer}: authentication error", failure, peer=self._peer)
            return reply(codes.TEMPORARY_AUTH_FAILURE, codes.T_POLICY, "Temporary authentication failure")

        return d.addCallbacks(loggedIn, failed)

    # --- commands: the mail transaction -----------------------------------

    def do_MAIL(self, argument: str) -> SMTPReply:
        """RFC 5321 §4.1.1.2."""
        self._needHelo()
        if self._transaction is not None:
            raise reply(codes.BAD_SEQUENCE, codes.P_INVALID_COMMAND, "Sender already given")
        if self.factory.role != "mta" and self._sender is None:
            # RFC 6409 §4.3 / RFC 4954 §6.
            raise reply(codes.AUTH_REQUIRED, codes.P_POLICY, "Authentication required")
        address, paramText = _splitPath(argument, "FROM", codes.P_BAD_SENDER_SYNTAX)
        params = _parseParameters(paramText)
        smtputf8 = False
        size: Optional[int] = None
        for keyword, value in params.items():
            if keyword == "SIZE" and self._esmtp:
                # RFC 1870 §6: SIZE=<octets>
                if value is None or not value.isdigit() or len(value) > 20:
                    raise reply(codes.ARGUMENT_SYNTAX_ERROR, codes.P_INVALID_ARGUMENTS, "Syntax: SIZE=<octets>")
                size = int(value)
                if size > self.limits.max_message_size:
                    raise reply(
                        codes.EXCEEDED_STORAGE,
                        codes.P_MESSAGE_TOO_BIG,
                        "Message size exceeds fixed maximum message size of %d octets" % (self.limits.max_message_size,),
                    )
            elif keyword == "BODY" and self._esmtp:
                # RFC 6152 §2.
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    raise reply(codes.ARGUMENT_SYNTAX_ERROR, codes.P_INVALID_ARGUMENTS, "BODY must be 7BIT or 8BITMIME")
            elif keyword == "SMTPUTF8" and self._esmtp:
                # RFC 6531 §3.4: no value.
                if value is not None:
                    raise reply(codes.ARGUMENT_SYNTAX_ERROR, codes.P_INVALID_ARGUMENTS, "SMTPUTF8 takes no value")
                smtputf8 = True
            elif keyword == "AUTH" and self._esmtp:
                pass  # RFC 4954 §5: accepted; we trust only our own AUTH.
            else:
                raise reply(codes.PARAMETERS_NOT_RECOGNIZED, codes.P_INVALID_ARGUMENTS, "Unsupported parameter %s" % (keyword[:40],))
        returnPath = ""
        if address:
            returnPath = self._checkAddress(address, smtputf8, codes.P_BAD_SENDER_SYNTAX)
        if self._sender is not None and returnPath and not self._sender.maySendAs(returnPath):
            raise reply(
                codes.MAILBOX_NAME_NOT_ALLOWED,
                codes.P_NOT_AUTHORIZED,
                "<%s> is not yours to send as (authenticated as %s)" % (returnPath, self._sender.address),
            )
        if self.factory.storage is not None:
            self.factory.storage.checkMail(size)  # 452 4.3.1 on a full disk
        self._transaction = _Transaction(returnPath=returnPath, smtputf8=smtputf8, declaredSize=size)
        return reply(codes.OK, codes.S_SENDER_OK, "Sender <%s> ok" % (returnPath,))

    def _checkAddress(self, address: str, smtputf8: bool, badSyntax: str) -> str:
        if not address.isascii() and not smtputf8:
            # RFC 6531 §3.5: non-ASCII only with MAIL's SMTPUTF8.
            raise reply(codes.MAILBOX_NAME_NOT_ALLOWED, codes.P_NON_ASCII_ADDRESS, "Non-ASCII address needs SMTPUTF8")
        try:
            return normalizeAddress(address, allowUTF8=smtputf8)
        except BadAddress as e:
            raise reply(codes.ARGUMENT_SYNTAX_ERROR, badSyntax, "Bad address syntax: %s" % (e.details.get("reason"),))

    def do_RCPT(self, argument: str) -> object:
        """RFC 5321 §4.1.1.3."""
        self._needHelo()
        transaction = self._transaction
        if transaction is None:
            raise reply(codes.BAD_SEQUENCE, codes.P_INVALID_COMMAND, "Need MAIL before RCPT")
        if transaction.receiver is not None or transaction.usedBDAT:
            raise reply(codes.BAD_SEQUENCE, codes.P_INVALID_COMMAND, "Message data already started")
        address, paramText = _splitPath(argument, "TO", codes.P_BAD_DESTINATION_SYNTAX)
        params = _parseParameters(paramText)
        if params:
            raise reply(codes.PARAMETERS_NOT_RECOGNIZED, codes.P_INVALID_ARGUMENTS, "Unsupported parameter %s" % (next(iter(params))[:40],))
        if address.lower() == "postmaster":
            # RFC 5321 §4.5.1: <Postmaster> without a domain must work, on
            # every port; it is the primary local domain's postmaster.
            address = self.factory.delivery.postmaster()
        recipient = self._checkAddress(address, transaction.smtputf8, codes.P_BAD_DESTINATION_SYNTAX)
        if transaction.rcptCount >= self.limits.max_recipients:
            # RFC 5321 §4.5.3.1.10: a temporary refusal the client is meant
            # to act on (send the rest later), so it is not a client error
            # until far past the limit.
            transaction.overshoot += 1
            if transaction.overshoot == 1:
                log.info("SMTP {peer}: more than {n} recipients; the rest get 452", peer=self._peer, n=self.limits.max_recipients)
            self._reply(
                reply(codes.INSUFFICIENT_STORAGE, codes.T_TOO_MANY_RECIPIENTS, "Too many recipients"),
                countError=transaction.overshoot > RECIPIENT_OVERSHOOT,
            )
            return None
        storage = self.factory.storage  # full disk, full mailbox
        checked = storage.checkRecipient(recipient, transaction.declaredSize) if storage is not None else None

        def accepted(_: object = None) -> SMTPReply:
            transaction.rcptCount += 1
            if recipient not in transaction.recipients:
                transaction.recipients.append(recipient)
            return reply(codes.OK, codes.S_RECIPIENT_OK, "Recipient <%s> ok" % (recipient,))

        def deliverable(_: object = None) -> object:
            answer = self.factory.delivery.checkRecipient(recipient, self._sender)
            if isinstance(answer, Deferred):
                return answer.addCallback(accepted)
            return accepted()

        # Both checks usually answer at once: then no Deferred is made.
        if isinstance(checked, Deferred):
            # The quota check counts a Maildir first.
            return checked.addCallback(deliverable)
        return deliverable()

    def do_DATA(self, argument: str) -> SMTPReply:
        """RFC 5321 §4.1.1.4."""
        self._needHelo()
        transaction = self._transaction
        if argument:
            raise reply(codes.ARGUMENT_SYNTAX_ERROR, codes.P_INVALID_ARGUMENTS, "DATA takes no arguments")
        if transaction is None:
            raise reply(codes.BAD_SEQUENCE, codes.P_INVALID_COMMAND, "Need MAIL before DATA")
        if not transaction.recipients:
            raise reply(codes.BAD_SEQUENCE, codes.P_INVALID_COMMAND, "Need RCPT before DATA")
        if transaction.usedBDAT:
            # RFC 3030 §2: DATA and BDAT do not mix.
            raise reply(codes.BAD_SEQUENCE, codes.P_INVALID_COMMAND, "BDAT already in progress")
        self._startMessage()
        transaction.decoder = DotDecoder()
        self._mode = _DATA
        return SMTPReply(codes.START_MAIL_INPUT, "End data with <CR><LF>.<CR><LF>")

    def do_BDAT(self, argument: str) -> object:
        """RFC 3030 §2: BDAT <size> [LAST]."""
        words = argument.split(" ")
        if (
            not 1 <= len(words) <= 2
            or not words[0].isdigit()
            or len(words[0]) > 20
            or (len(words) == 2 and words[1].upper() != "LAST")
        ):
            raise reply(codes.ARGUMENT_SYNTAX_ERROR, codes.P_INVALID_ARGUMENTS, "Syntax: BDAT <size> [LAST]")
        transaction = self._transaction
        failure = None
        if self._helo is None or transaction is None:
            failure = reply(codes.BAD_SEQUENCE, codes.P_INVALID_COMMAND, "Need MAIL before BDAT")
        elif not transaction.recipients:
            failure = reply(codes.BAD_SEQUENCE, codes.P_INVALID_COMMAND, "Need RCPT before BDAT")
        elif transaction.receiver is None and not transaction.usedBDAT:
            transaction.usedBDAT = True
            try:
                self._startMessage()
            except SMTPReply as e:
                # The chunk that follows must still be read, not run.
                failure = e
        self._chunk = _Chunk(
            left=int(words[0]), last=len(words) == 2, transaction=None if failure else transaction, failure=failure
        )
        if self._chunk.left == 0:
            return self._endChunk()
        self._mode = _BDAT
        return None


@attr.s(auto_attribs=True)
class _Chunk:
    """
    A BDAT chunk being read (RFC 3030 §2); with a C{failure} it is read
    and thrown away, then the failure is the reply.
    """

    left: int
    last: bool
    transaction: Optional[_Transaction]
    failure: Optional[SMTPReply]


class SMTPFactory(Factory):
    """
    Makes L{SMTPServer}s for one listener.

    @ivar connections: how many of its connections are open.  Its own
        C{max_connections} check is a safety net for a factory used alone:
        the daemon wraps every listener in L{mailnet.limits.LimitingFactory},
        which applies the budget shared by all listeners first.
    """

    protocol = SMTPServer  # type: ignore[assignment]
    #: A L{mailnet.storage.StorageGuard} (free disk space, quotas), or L{None}.
    storage: Any = None

    def __init__(
        self,
        *,
        hostname: str,
        role: str,
        delivery: IDeliveryAgent,
        authenticator: IAuthenticator,
        limits: Limits,
        tlsOptions: object = None,
        allowPlaintextAuth: bool = False,
        clock: Optional[IReactorTime] = None,
        judge: Any = None,
    ) -> None:
        if role not in ROLES:
            raise ValueError("role must be one of %s, not %r" % (", ".join(ROLES), role))
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self.hostname = hostname
        self.role = role
        self.delivery = delivery
        self.authenticator = authenticator
        self.limits = limits
        self.tlsOptions = tlsOptions
        self.allowPlaintextAuth = allowPlaintextAuth
        self.clock: IReactorTime = clock
        self.connections = 0
        # A mailnet.smtp._judge.MessageJudge: DKIM signing, SPF/DKIM/DMARC verdicts.
        self.judge = judge

    def refusalLine(self, perClient: bool) -> bytes:
        """
        The reply to a connection that the connection limits refuse (see
        L{mailnet.limits.LimitingFactory}): from a client with too many
        connections open (C{perClient}), or while the server is full.
        """
        if perClient:
            text = "%s Too many connections from your address" % (self.hostname,)
        else:
            text = "%s too many connections, try again later" % (self.hostname,)
        # RFC 5321 §3.8: a server that must refuse service answers 421.
        return b"%d %s %s\r\n" % (codes.SERVICE_UNAVAILABLE, codes.T_POLICY.encode("ascii"), text.encode("utf-8"))
