# -*- test-case-name: tests.test_pop3_server -*-
"""
mailnet's POP3 server.

  - RFC 1939: USER/PASS, STAT, LIST, RETR, DELE, NOOP, RSET, QUIT, TOP,
    UIDL.  APOP is not offered (it needs the plaintext password on disk).
  - RFC 2449: CAPA, PIPELINING, RESP-CODES, 255-octet command lines.
  - RFC 2595: STLS.  RFC 5034 / RFC 4616: AUTH PLAIN.
  - RFC 3206: the AUTH, SYS/TEMP and SYS/PERM response codes; IN-USE comes
    from RFC 2449 §8.1.

Authentication goes through an L{IAuthenticator}; before TLS (unless the
administrator allowed plaintext logins) USER, PASS and AUTH are refused and
not advertised.  The mailbox is a snapshot taken at login; deletions are
only marks until QUIT, and a dropped connection changes nothing.  Messages
larger than a chunk are streamed from disk with a producer, so their size
never matters to memory; smaller ones are read and written whole (RETR,
and TOP cut in memory), which saves a producer and a reactor turn each.  The answers to the
commands found in one read from the client go out in one write.

Public surface: L{POP3Factory}, and L{POP3Server} for tests.
"""

import base64
import binascii
import enum
import hashlib
import io
import re
from typing import Any, Callable, Iterator, List, Optional, Set, cast

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailnet.config import Limits
from mailnet.errors import LoginBusy, MailboxInUse, MessageGone
from mailnet.interfaces import IAuthenticator, IMailbox
from mailnet.pop3._wire import MessageProducer, headersAndLines, stuffed, wholeMessage

__all__ = ["POP3Factory", "POP3Server", "State"]

log = Logger()

#: RFC 2449 §4: commands are at most 255 octets.  We do not count the line
#: ending, to be liberal with clients that count differently.
MAX_COMMAND_LINE = 255

#: RFC 5034 §4: a SASL response line (and AUTH with an initial response,
#: which some clients send whatever its length) may be much longer.
MAX_AUTH_LINE = 12288

#: RFC 5321 §4.5.3.1.3: an address is at most 254 octets.
MAX_LOGIN_NAME = 254

#: Passwords longer than this are refused without asking the authenticator.
MAX_PASSWORD = 1024

#: How much of a message one write carries.
CHUNK_SIZE = 64 * 1024

#: Output written for messages sent whole (no producer) before one is sent
#: through a producer again, whose end waits for the transport to drain:
#: a client that pipelines RETRs without reading cannot make us buffer
#: more than about this much.
MAX_UNDRAINED_OUTPUT = 256 * 1024

#: Pipelined input kept while a command runs before we stop reading.
MAX_PENDING_INPUT = 64 * 1024

#: Seconds a closing connection may take to flush before it is aborted.
CLOSE_GRACE = 30

# RFC 1939 §2: a UIDL is 1-70 characters in 0x21-0x7E.
_VALID_UID = re.compile(r"[\x21-\x7e]{1,70}\Z")
_NUMBER = re.compile(rb"[1-9][0-9]{0,9}\Z")
_COUNT = re.compile(rb"[0-9]{1,10}\Z")
_VERB = re.compile(rb"[A-Za-z]{1,8}\Z")


class State(enum.Enum):
    """
    RFC 1939 §3: the session states.
    """

    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"


# Reply texts (after "-ERR ").  Response codes: RFC 2449 §8 and RFC 3206.
AUTH_FAILED = "[AUTH] Authentication failed"
USE_STLS = "[AUTH] Use STLS first"
NO_PLAINTEXT_AUTH = "[AUTH] Authentication needs TLS, which this listener does not offer"
BAD_LOGIN_NAME = "[AUTH] Invalid user name"
IN_USE = "[IN-USE] Mailbox is locked by another session"
SYS_TEMP = "[SYS/TEMP] Internal server error, try again later"
MAILBOX_UNAVAILABLE = "[SYS/TEMP] Cannot open the mailbox, try again later"
NOT_REMOVED = "[SYS/TEMP] Deleted messages could not be removed; they are kept"
TOO_MANY_CONNECTIONS = "[SYS/TEMP] Too many connections, try again later"
LINE_TOO_LONG = "line too long"
TOO_MANY_ERRORS = "too many errors"
IDLE_TIMEOUT = "Idle timeout, closing connection"


class POP3Error(Exception):
    """
    A command failed: the dispatcher answers C{-ERR <text>}.

    @ivar countsAsError: whether this counts towards C{limits.max_errors}
        (client mistakes do; our own troubles and IN-USE do not).
    """

    def __init__(self, text: str, countsAsError: bool = True) -> None:
        super().__init__(text)
        self.text = text
        self.countsAsError = countsAsError


def uidlFor(uid: str) -> str:
    """
    @return: C{uid} if it is a valid RFC 1939 unique-id, else a stable hash
        of it (a file named by a foreign MDA may hold anything).
    """
    if _VALID_UID.match(uid):
        return uid
    return "h" + hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def isAcceptableLoginName(name: str) -> bool:
    """
    @return: whether C{name} could be a login at all: nothing that could
        walk a path (C{/}, C{\\}, C{..}), no NUL, control characters or
        spaces, and not longer than an address may be.
    """
    if not name or len(name.encode("utf-8")) > MAX_LOGIN_NAME:
        return False
    if "/" in name or "\\" in name or ".." in name or name.startswith("."):
        return False
    return not any(ord(c) <= 0x20 or ord(c) == 0x7F for c in name)


def _parseNumber(arg: bytes) -> int:
    """@return: a message number (1-based); @raise POP3Error: not one."""
    if not _NUMBER.match(arg):
        raise POP3Error("Invalid message number")
    return int(arg)


class POP3Server(Protocol):
    """
    One POP3 session.  Built by L{POP3Factory}, whose settings it reads.

    Input is split into lines here (not by LineReceiver) because the line
    limit depends on the state, over-long lines must be skipped rather than
    drop the connection, pipelined commands must wait while a message
    streams, and bytes after STLS must be thrown away.
    """

    factory: "POP3Factory"
    # Any transport will do (TCP, TLS-wrapped, StringTransport in tests);
    # what we use beyond ITransport is looked up with care.
    transport: Any
    mailbox: Any

    def __init__(self, factory: "POP3Factory", overloaded: bool = False) -> None:
        self.factory = factory
        self._overloaded = overloaded
        self.secure = factory.implicitTLS
        self.state = State.AUTHORIZATION
        self.peer = "?"
        self._counted = False
        self._buffer = b""
        self._pos = 0
        self._discarding = False
        self._busy = False
        self._processing = False
        self._readPaused = False
        self._closing = False
        self._disconnected = False
        self._errors = 0
        self._idleCall: Optional[IDelayedCall] = None
        self._abortCall: Optional[IDelayedCall] = None
        self._producer: Optional[MessageProducer] = None
        # Replies of the commands run in one pass over the input, written
        # together at its end (L{None}: outside such a pass, write at once).
        self._pending: Optional[List[bytes]] = None
        # Octets written by RETRs sent whole since the transport last drained.
        self._undrained = 0
        self._resetSession()

    def _resetSession(self) -> None:
        """
        Forget everything a client said: at the start and after STLS
        (RFC 2595 §4: the client must discard what it knew, and so do we).
        """
        self._user: Optional[str] = None
        self._saslMechanism: Optional[str] = None
        self.mailbox = None
        self._logout: Optional[Callable[[], None]] = None
        self._messages: List = []
        self._deleted: Set[int] = set()
        self._retrieved: Set[int] = set()

    # --- connection ------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer = getattr(peer, "host", None) or str(peer)
        if self._overloaded:
            log.warn("POP3 connection from {peer} refused: too many connections", peer=self.peer)
            self._sendLine(b"-ERR " + TOO_MANY_CONNECTIONS.encode("ascii"))
            self._close()
            return
        self.factory.connections += 1
        self._counted = True
        # Short command/response exchanges: do not let Nagle delay them.
        setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            try:
                setNoDelay(True)
            except Exception:
                pass
        self._idleCall = self.factory.clock.callLater(self.factory.limits.pop3_idle_timeout, self._idleTimedOut)
        self._sendOK("%s POP3 mailnet ready" % (self.factory.hostname,))

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        self._disconnected = True
        self._closing = True
        if self._counted:
            self._counted = False
            self.factory.connections -= 1
        for call in (self._idleCall, self._abortCall):
            if call is not None and call.active():
                call.cancel()
        self._idleCall = self._abortCall = None
        if self._producer is not None:
            self._producer.stopProducing()
        # RFC 1939 §6: without QUIT there is no UPDATE state: nothing is
        # removed.  During UPDATE the removal finishes, then the mailbox is
        # released.
        if self.state is not State.UPDATE:
            self._releaseMailbox()

    def _releaseMailbox(self) -> None:
        logout, self._logout = self._logout, None
        if logout is not None:
            try:
                logout()
            except Exception:
                log.failure("POP3 logout of {address} failed", address=getattr(self.mailbox, "address", "?"))

    def _close(self) -> None:
        """
        Close after what was written; abort if the client will not read it.
        """
        if self._closing:
            return
        self._closing = True
        self._dropInput()
        self._flush()
        self.transport.loseConnection()
        self._abortCall = self.factory.clock.callLater(CLOSE_GRACE, self.transport.abortConnection)

    def _idleTimedOut(self) -> None:
        self._idleCall = None
        log.info("POP3 session from {peer} timed out", peer=self.peer)
        if self._producer is not None:
            # The client stopped reading in the middle of a message: a
            # -ERR line would land inside it, and nobody would read it.
            self._closing = True
            self._stopStreaming()
            self.transport.abortConnection()
            return
        self._sendLine(b"-ERR " + IDLE_TIMEOUT.encode("ascii"))
        self._close()

    def _activity(self) -> None:
        if self._idleCall is not None and self._idleCall.active():
            self._idleCall.reset(self.factory.limits.pop3_idle_timeout)

    def _stopStreaming(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.stopProducing()
            self.transport.unregisterProducer()

    # --- input -------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self._activity()
        if self._discarding:
            # The rest of an over-long line: skip to its end.
            end = data.find(b"\n")
            if end < 0:
                return
            self._discarding = False
            data = data[end + 1 :]
        self._buffer = self._buffer[self._pos :] + data
        self._pos = 0
        if self._busy and len(self._buffer) > MAX_PENDING_INPUT and not self._readPaused:
            # RFC 2449 §6.6: the client may pipeline, but not without bound.
            self._readPaused = True
            self.transport.pauseProducing()
        self._processBuffer()

    def _dropInput(self) -> None:
        self._buffer = b""
        self._pos = 0

    def _lineLimit(self, start: bytes) -> int:
        if self._saslMechanism is not None or start[:5].upper() == b"AUTH ":
            return MAX_AUTH_LINE
        return MAX_COMMAND_LINE

    def _processBuffer(self) -> None:
        # Commands that finish at once call back here: the flag keeps that
        # from nesting, so any number of pipelined commands runs in this
        # one loop.
        if self._processing:
            return
        self._processing = True
        self._pending = []
        try:
            while not self._busy and not self._closing:
                # Lines are taken by offset, not by slicing the buffer
                # each time: a packet of tiny commands costs linear time.
                start = self._pos
                end = self._buffer.find(b"\n", start)
                if end < 0:
                    if len(self._buffer) - start > self._lineLimit(self._buffer[start : start + 5]) + 1:
                        self._dropInput()
                        self._discarding = True
                        self._lineTooLong()
                    break
                line = self._buffer[start:end]
                self._pos = end + 1
                if line.endswith(b"\r"):
                    line = line[:-1]
                # Most lines are short: the limit that depends on them is
                # worked out only for the others.
                if len(line) > MAX_COMMAND_LINE and len(line) > self._lineLimit(line):
                    self._lineTooLong()
                    continue
                self._lineReceived(line)
        finally:
            self._processing = False
            self._buffer = self._buffer[self._pos :]
            self._pos = 0
            pending, self._pending = self._pending, None
            if pending and not self._disconnected:
                self.transport.write(b"".join(pending))
        if self._readPaused and not self._busy and not self._disconnected:
            self._readPaused = False
            self.transport.resumeProducing()

    def _lineTooLong(self) -> None:
        # RFC 2449 §4: over-long lines are refused; a SASL exchange in
        # progress is over.
        self._saslMechanism = None
        self._sendError(POP3Error(LINE_TOO_LONG))

    def _lineReceived(self, line: bytes) -> None:
        if self._saslMechanism is not None:
            self._run(self._saslResponse, line)
            return
        verb, _, args = line.partition(b" ")
        # The usual spellings are looked up as they come; others (mixed
        # case, junk) are checked and folded first.
        entry = _VERBS.get(verb)
        if entry is None and _VERB.match(verb):
            entry = _COMMANDS.get(verb.decode("ascii").upper())
        if entry is None:
            log.debug("POP3 unknown command from {peer}", peer=self.peer)
            self._sendError(POP3Error("Unknown command"))
            return
        states, handler = entry
        if self.state not in states:
            if self.state is State.AUTHORIZATION:
                self._sendError(POP3Error("Not logged in"))
            else:
                self._sendError(POP3Error("Command not valid in this state"))
            return
        self._run(handler, self, args)

    def _run(self, handler: Callable[..., Optional[Deferred]], *args: object) -> None:
        """
        Run a command handler; it answers itself, or raises L{POP3Error}, or
        returns a L{Deferred} during which later commands wait.
        """
        try:
            result = handler(*args)
        except POP3Error as e:
            self._sendError(e)
            return
        except Exception:
            log.failure("POP3 command from {peer} failed", peer=self.peer)
            self._sendError(POP3Error(SYS_TEMP, countsAsError=False))
            return
        # Most commands answer at once (None): no isinstance for them.
        if result is not None and isinstance(result, Deferred):
            self._busy = True
            result.addErrback(self._commandFailed)
            result.addBoth(self._commandDone)

    def _commandFailed(self, failure: Failure) -> None:
        if self._disconnected:
            return
        if failure.check(POP3Error):
            self._sendError(failure.value)
        else:
            log.failure("POP3 command from {peer} failed", failure, peer=self.peer)
            self._sendError(POP3Error(SYS_TEMP, countsAsError=False))

    def _commandDone(self, ignored: object) -> None:
        self._busy = False
        if not self._disconnected:
            self._processBuffer()

    # --- output ------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self._pending is not None:
            self._pending.append(data)
        elif not self._disconnected:
            self.transport.write(data)

    def _flush(self) -> None:
        """
        Write the replies gathered so far: before anything else reaches
        the transport (a producer, TLS, the end of the connection).
        """
        pending = self._pending
        if pending:
            self._pending = []
            if not self._disconnected:
                self.transport.write(b"".join(pending))

    def _sendLine(self, line: bytes) -> None:
        self._write(line + b"\r\n")

    def _sendOK(self, text: str = "") -> None:
        self._sendLine(("+OK " + text if text else "+OK").encode("utf-8"))

    def _sendMultiline(self, first: str, lines: List[str]) -> None:
        """RFC 1939 §3: a multi-line response, dot-stuffed, ending in C{.}."""
        out = [("+OK " + first if first else "+OK").encode("utf-8")]
        for line in lines:
            data = line.encode("utf-8")
            out.append(b"." + data if data.startswith(b".") else data)
        out.append(b".")
        self._write(b"\r\n".join(out) + b"\r\n")

    def _sendError(self, error: POP3Error) -> None:
        if self._closing:
            return
        if error.countsAsError:
            self._errors += 1
            if self._errors >= self.factory.limits.max_errors:
                log.info("POP3 session from {peer} closed after too many errors", peer=self.peer)
                self._sendLine(b"-ERR " + TOO_MANY_ERRORS.encode("ascii"))
                self._close()
                return
        self._sendLine(("-ERR " + error.text).encode("utf-8"))

    # --- AUTHORIZATION state -----------------------------------------------

    def _authAllowed(self) -> bool:
        return self.secure or self.factory.allowPlaintextAuth

    def _requireAuthAllowed(self) -> None:
        if not self._authAllowed():
            # RFC 2595 §6 / RFC 3206 §4: no credentials in the clear.
            if self.factory.tlsOptions is None:
                raise POP3Error(NO_PLAINTEXT_AUTH)
            raise POP3Error(USE_STLS)

    def capabilities(self) -> List[str]:
        """RFC 2449 §6: what this session offers now."""
        caps = ["TOP", "UIDL", "PIPELINING", "RESP-CODES", "AUTH-RESP-CODE"]
        if self._authAllowed():
            caps += ["USER", "SASL PLAIN"]
        if self.state is State.AUTHORIZATION and self.factory.tlsOptions is not None and not self.secure:
            caps.append("STLS")
        caps += ["EXPIRE NEVER", "LOGIN-DELAY 0", "IMPLEMENTATION mailnet"]
        return caps

    def do_CAPA(self, args: bytes) -> None:
        if args.strip():
            raise POP3Error("CAPA takes no arguments")
        self._sendMultiline("Capability list follows", self.capabilities())

    def do_STLS(self, args: bytes) -> None:
        # RFC 2595 §4: only in AUTHORIZATION state (the state table), once.
        if self.factory.tlsOptions is None or self.secure:
            raise POP3Error("STLS not available" if not self.secure else "Already using TLS")
        if args.strip():
            raise POP3Error("STLS takes no arguments")
        self._sendOK("Begin TLS negotiation")
        # RFC 2595 §4 / CVE-2011-0411: anything the client sent after STLS
        # before the handshake is plaintext an attacker may have injected;
        # it is thrown away, never executed.
        self._dropInput()
        self._discarding = False
        self._flush()
        self.transport.startTLS(self.factory.tlsOptions)
        self.secure = True
        self._resetSession()
        log.debug("POP3 STLS from {peer}", peer=self.peer)

    def do_USER(self, args: bytes) -> None:
        self._requireAuthAllowed()
        self._user = None
        self._user = self._loginName(args)
        self._sendOK("Send your password")

    def _loginName(self, raw: bytes) -> str:
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise POP3Error(BAD_LOGIN_NAME)
        if not isAcceptableLoginName(name):
            raise POP3Error(BAD_LOGIN_NAME)
        return name

    def do_PASS(self, args: bytes) -> Deferred:
        self._requireAuthAllowed()
        user, self._user = self._user, None
        if user is None:
            raise POP3Error("Send USER first")
        # RFC 1939 §7: the argument may contain spaces; it is the whole rest.
        return self._login(user, args)

    def do_AUTH(self, args: bytes) -> Optional[Deferred]:
        self._requireAuthAllowed()
        self._user = None
        parts = args.split()
        if not parts:
            # Not in RFC 5034, but many clients ask for the list this way.
            self._sendMultiline("Supported mechanisms follow", ["PLAIN"])
            return None
        if len(parts) > 2:
            raise POP3Error("Syntax: AUTH mechanism [initial-response]")
        mechanism = parts[0].decode("ascii", "replace").upper()
        if mechanism != "PLAIN":
            raise POP3Error("Unsupported authentication mechanism")
        if len(parts) == 1:
            # RFC 5034 §4: continue with an empty challenge.
            self._saslMechanism = mechanism
            self._sendLine(b"+ ")
            return None
        # RFC 5034 §4: "=" is an empty initial response.
        return self._saslPlain(b"" if parts[1] == b"=" else parts[1])

    def _saslResponse(self, line: bytes) -> Optional[Deferred]:
        self._saslMechanism = None
        if line.strip() == b"*":
            # RFC 5034 §4: the client cancelled.
            raise POP3Error("Authentication cancelled")
        return self._saslPlain(line.strip())

    def _saslPlain(self, encoded: bytes) -> Deferred:
        """RFC 4616 §2: authzid NUL authcid NUL passwd."""
        try:
            message = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise POP3Error("Invalid base64 in SASL response")
        parts = message.split(b"\0")
        if len(parts) != 3:
            raise POP3Error(AUTH_FAILED)
        authzid, authcid, password = parts
        user = self._loginName(authcid)
        if authzid and authzid.decode("utf-8", "replace").lower() != user.lower():
            # No proxy logins: one may only act as oneself.
            log.info(
                "POP3 login for {user} from {peer} refused: authorization identity differs", user=user, peer=self.peer
            )
            raise POP3Error(AUTH_FAILED)
        return self._login(user, password)

    def _login(self, user: str, password: bytes) -> Deferred:
        if not password or len(password) > MAX_PASSWORD:
            log.info("POP3 login failed for {user} from {peer}", user=user, peer=self.peer)
            raise POP3Error(AUTH_FAILED)
        # The user name is text (the FakeAuthenticator and mailnet.cred take
        # both), the password the octets the client sent.
        credentials = UsernamePassword(cast(bytes, user), password)
        d: Deferred = maybeDeferred(self.factory.authenticator.login, credentials, self.peer, IMailbox)
        d.addCallbacks(self._loggedIn, self._loginFailed, callbackArgs=(user,), errbackArgs=(user,))
        return d

    def _loginFailed(self, failure: Failure, user: str) -> None:
        if failure.check(UnauthorizedLogin):
            log.info("POP3 login failed for {user} from {peer}", user=user, peer=self.peer)
            raise POP3Error(AUTH_FAILED)
        if failure.check(MailboxInUse):
            log.info("POP3 login for {user} from {peer}: mailbox in use", user=user, peer=self.peer)
            raise POP3Error(IN_USE, countsAsError=False)
        if failure.check(LoginBusy):
            # Issue 11: too many logins in progress; the client may retry.
            log.info("POP3 login for {user} from {peer}: too many logins in progress", user=user, peer=self.peer)
            raise POP3Error("[SYS/TEMP] %s" % (failure.value,), countsAsError=False)
        log.failure("POP3 login for {user} from {peer} failed", failure, user=user, peer=self.peer)
        raise POP3Error(SYS_TEMP, countsAsError=False)

    def _loggedIn(self, result: tuple, user: str) -> Optional[Deferred]:
        interface, avatar, logout = result
        if self._closing:
            # The client left (or timed out) while we were deciding.
            logout()
            return None
        self.mailbox = avatar
        self._logout = logout
        d = maybeDeferred(avatar.maildir.snapshot)
        d.addCallbacks(self._opened, self._openFailed)
        return d

    def _openFailed(self, failure: Failure) -> None:
        log.failure("POP3 cannot list the mailbox of {address}", failure, address=self.mailbox.address)
        self._releaseMailbox()
        self.mailbox = None
        raise POP3Error(MAILBOX_UNAVAILABLE, countsAsError=False)

    def _opened(self, messages: list) -> None:
        if self._closing:
            self._releaseMailbox()
            return
        self._messages = list(messages)
        self.state = State.TRANSACTION
        log.info(
            "POP3 login {address} from {peer}: {count} messages",
            address=self.mailbox.address,
            peer=self.peer,
            count=len(messages),
        )
        count, octets = self._totals()
        self._sendOK("Logged in, %d messages (%d octets)" % (count, octets))

    def do_QUIT(self, args: bytes) -> Optional[Deferred]:
        if self.state is State.AUTHORIZATION:
            self._sendOK("%s POP3 mailnet signing off" % (self.factory.hostname,))
            self._close()
            return None
        return self._update()

    # --- TRANSACTION state -------------------------------------------------

    def _totals(self) -> tuple:
        live = [m for i, m in enumerate(self._messages) if i not in self._deleted]
        return len(live), sum(m.size for m in live)

    def _message(self, arg: bytes) -> int:
        """@return: the 0-based index of a message that is there."""
        number = _parseNumber(arg)
        if number > len(self._messages):
            raise POP3Error("No such message")
        if number - 1 in self._deleted:
            raise POP3Error("Message %d is deleted" % (number,))
        return number - 1

    def _arguments(self, args: bytes, least: int, most: int, syntax: str) -> List[bytes]:
        parts = args.split()
        if not least <= len(parts) <= most:
            raise POP3Error("Syntax: " + syntax)
        return parts

    def do_STAT(self, args: bytes) -> None:
        self._arguments(args, 0, 0, "STAT")
        self._sendOK("%d %d" % self._totals())

    def do_LIST(self, args: bytes) -> None:
        parts = self._arguments(args, 0, 1, "LIST [message]")
        if parts:
            index = self._message(parts[0])
            self._sendOK("%d %d" % (index + 1, self._messages[index].size))
            return
        count, octets = self._totals()
        lines = ["%d %d" % (i + 1, m.size) for i, m in enumerate(self._messages) if i not in self._deleted]
        self._sendMultiline("%d messages (%d octets)" % (count, octets), lines)

    def do_UIDL(self, args: bytes) -> None:
        parts = self._arguments(args, 0, 1, "UIDL [message]")
        if parts:
            index = self._message(parts[0])
            self._sendOK("%d %s" % (index + 1, uidlFor(self._messages[index].uid)))
            return
        lines = ["%d %s" % (i + 1, uidlFor(m.uid)) for i, m in enumerate(self._messages) if i not in self._deleted]
        self._sendMultiline("Unique-ID listing follows", lines)

    def do_DELE(self, args: bytes) -> None:
        [arg] = self._arguments(args, 1, 1, "DELE message")
        index = self._message(arg)
        self._deleted.add(index)
        self._sendOK("Message %d deleted" % (index + 1,))

    def do_RSET(self, args: bytes) -> None:
        self._arguments(args, 0, 0, "RSET")
        self._deleted.clear()
        self._sendOK("%d messages (%d octets)" % self._totals())

    def do_NOOP(self, args: bytes) -> None:
        self._arguments(args, 0, 0, "NOOP")
        self._sendOK()

    def do_RETR(self, args: bytes) -> Optional[Deferred]:
        # The usual "RETR n" of a message that is there is checked in one
        # match and two tests; anything else goes the long way, which
        # answers its errors.
        if _NUMBER.match(args) is not None:
            index = int(args) - 1
            if index >= len(self._messages) or index in self._deleted:
                index = self._message(args)
        else:
            [arg] = self._arguments(args, 1, 1, "RETR message")
            index = self._message(arg)
        d = self._stream(index, b"%d octets" % (self._messages[index].size,), None)
        if d is None:
            self._retrieved.add(index)
            return None
        d.addCallback(lambda _: self._retrieved.add(index))
        return d

    def do_TOP(self, args: bytes) -> Optional[Deferred]:
        number, count = self._arguments(args, 2, 2, "TOP message lines")
        index = self._message(number)
        if not _COUNT.match(count):
            raise POP3Error("Invalid line count")
        return self._stream(index, b"Top of message follows", int(count))

    def _stream(self, index: int, first: bytes, bodyLines: Optional[int]) -> Optional[Deferred]:
        """
        Send a message (RETR) or its top (TOP) as a multi-line response.

        @return: L{None} if it was sent whole at once, else a L{Deferred}
            that fires when it has been streamed.
        """
        info = self._messages[index]
        maildir = self.mailbox.maildir
        size = self.factory.chunkSize
        data = None
        try:
            if info.size <= size:
                # Small: read it whole, if it is (one octet more is asked).
                data = maildir.readWhole(info, size)
            if data is None:
                f = maildir.open(info)
        except MessageGone:
            # Removed behind our back (another program): it will not come back.
            raise POP3Error("[SYS/PERM] Message %d is no longer available" % (index + 1,))
        except OSError:
            log.failure("POP3 cannot open message {uid} of {address}", uid=info.uid, address=self.mailbox.address)
            raise POP3Error("[SYS/TEMP] Cannot read message %d, try again later" % (index + 1,), countsAsError=False)
        if data is not None:
            if bodyLines is not None:
                # TOP: cut it here, by the same rules as when streaming;
                # what is left is sent whole.
                data = b"".join(headersAndLines(io.BytesIO(data), bodyLines, size))
                bodyLines = None
            if self._undrained + len(data) <= MAX_UNDRAINED_OUTPUT:
                self._sendWhole(first, data)
                return None
            f = io.BytesIO(data)
        # Larger than a chunk (or than listed), or we have written enough
        # without knowing that the client reads: stream it.
        chunks: Iterator[bytes]
        if bodyLines is not None:
            chunks = headersAndLines(f, bodyLines, size)
        else:
            chunks = wholeMessage(f, size)
        self._sendLine(b"+OK " + first)
        self._flush()
        producer = self._producer = MessageProducer(self.transport, f, chunks, size, self._activity)
        d = producer.start()
        d.addBoth(self._streamed)
        return d

    def _sendWhole(self, first: bytes, data: bytes) -> None:
        """
        Send a small message (or its top) at once: the status line, the dot-stuffed
        message and its end in one write, with no producer (RFC 1939 §3).
        Pipelined commands then run in the same pass over the input.
        """
        out = b"".join([b"+OK ", first, b"\r\n", stuffed(data)])
        self._undrained += len(out)
        self._write(out)

    def _streamed(self, result: object) -> object:
        self._producer = None
        if not isinstance(result, Failure):
            # The producer ends when the transport has drained.
            self._undrained = 0
        if isinstance(result, Failure):
            if self._disconnected or self._closing:
                return None
            # Half a message is on the wire: the only honest end is to close.
            log.failure("POP3 sending a message to {peer} failed", result, peer=self.peer)
            self._closing = True
            self.transport.abortConnection()
            return None
        return result

    # --- UPDATE state ------------------------------------------------------

    def _update(self) -> Deferred:
        """
        RFC 1939 §6: remove the messages marked deleted; only then say +OK.
        Retrieved messages move to cur/ (seen), keeping their uid.
        """
        self.state = State.UPDATE
        maildir = self.mailbox.maildir
        deleted = [self._messages[i] for i in sorted(self._deleted)]
        seen = [self._messages[i] for i in sorted(self._retrieved - self._deleted)]
        left = len(self._messages) - len(deleted)
        d: Deferred = maybeDeferred(maildir.remove, deleted) if deleted else succeed(None)

        def removed(_: object) -> Deferred:
            marked: Deferred = maybeDeferred(maildir.markSeen, seen) if seen else succeed(None)
            marked.addErrback(
                lambda f: log.failure("POP3 cannot mark messages of {address} seen", f, address=self.mailbox.address)
            )
            marked.addCallback(lambda _: True)
            return marked

        def notRemoved(failure: Failure) -> bool:
            log.failure("POP3 cannot remove messages of {address}", failure, address=self.mailbox.address)
            return False

        def done(ok: bool) -> None:
            log.info(
                "POP3 logout {address} from {peer}: {deleted} deleted",
                address=self.mailbox.address,
                peer=self.peer,
                deleted=len(deleted) if ok else 0,
            )
            self._releaseMailbox()
            if ok:
                self._sendOK("%s POP3 mailnet signing off (%d messages left)" % (self.factory.hostname, left))
            else:
                self._sendLine(b"-ERR " + NOT_REMOVED.encode("ascii"))
            if not self._disconnected:
                self._close()

        d.addCallbacks(removed, notRemoved)
        d.addCallback(done)
        return d


# Which commands are valid in which state (RFC 1939 §§4-6, RFC 2449 §5,
# RFC 2595 §4, RFC 5034 §4).  Nothing else is dispatched.
# Tuples: an enum's hash is computed in Python, an identity test is not.
_AUTHORIZATION = (State.AUTHORIZATION,)
_TRANSACTION = (State.TRANSACTION,)
_BOTH = _AUTHORIZATION + _TRANSACTION
_COMMANDS = {
    "CAPA": (_BOTH, POP3Server.do_CAPA),
    "QUIT": (_BOTH, POP3Server.do_QUIT),
    "STLS": (_AUTHORIZATION, POP3Server.do_STLS),
    "USER": (_AUTHORIZATION, POP3Server.do_USER),
    "PASS": (_AUTHORIZATION, POP3Server.do_PASS),
    "AUTH": (_AUTHORIZATION, POP3Server.do_AUTH),
    "STAT": (_TRANSACTION, POP3Server.do_STAT),
    "LIST": (_TRANSACTION, POP3Server.do_LIST),
    "UIDL": (_TRANSACTION, POP3Server.do_UIDL),
    "RETR": (_TRANSACTION, POP3Server.do_RETR),
    "TOP": (_TRANSACTION, POP3Server.do_TOP),
    "DELE": (_TRANSACTION, POP3Server.do_DELE),
    "RSET": (_TRANSACTION, POP3Server.do_RSET),
    "NOOP": (_TRANSACTION, POP3Server.do_NOOP),
}


# The spellings clients use, looked up without folding case.
_VERBS = {spelling: entry for name, entry in _COMMANDS.items() for spelling in (name.encode(), name.lower().encode())}


class POP3Factory(Factory):
    """
    Builds L{POP3Server}s for one listener.

    @param hostname: the name in the greeting.
    @param authenticator: logs users in (L{IMailbox} avatars).
    @param limits: idle timeout (C{pop3_idle_timeout}), C{max_connections}
        (for this factory alone: the daemon wraps every listener in
        L{mailnet.limits.LimitingFactory}, which applies the budget shared
        by all listeners first) and C{max_errors}.
    @param tlsOptions: context factory for STLS; L{None}: STLS not offered.
    @param implicitTLS: the listener is wrapped in TLS (port 995): the
        session is encrypted from the first byte.
    @param allowPlaintextAuth: allow USER/PASS/AUTH without TLS.
    @param clock: an L{IReactorTime}; the global reactor if L{None}.

    @ivar connections: sessions open now.
    @ivar chunkSize: octets of a message per write.
    """

    protocol = POP3Server  # type: ignore[assignment]

    def __init__(
        self,
        *,
        hostname: str,
        authenticator: IAuthenticator,
        limits: Limits,
        tlsOptions=None,
        implicitTLS: bool = False,
        allowPlaintextAuth: bool = False,
        clock=None,
    ) -> None:
        if clock is None:
            # Entry-point default only; tap.py passes its reactor.
            from twisted.internet import reactor as clock
        self.hostname = hostname
        self.authenticator = authenticator
        self.limits = limits
        self.tlsOptions = tlsOptions
        self.implicitTLS = implicitTLS
        self.allowPlaintextAuth = allowPlaintextAuth
        self.clock = clock
        self.connections = 0
        self.chunkSize = CHUNK_SIZE

    def refusalLine(self, perClient: bool) -> bytes:
        """
        The answer to a connection that the connection limits refuse (see
        L{mailnet.limits.LimitingFactory}); RFC 2449 §8.1.2 C{[SYS/TEMP]}.
        """
        if perClient:
            return b"-ERR [SYS/TEMP] too many connections from your address\r\n"
        return b"-ERR " + TOO_MANY_CONNECTIONS.encode("ascii") + b"\r\n"

    def buildProtocol(self, addr) -> POP3Server:  # type: ignore[override]
        return self.protocol(self, overloaded=self.connections >= self.limits.max_connections)
