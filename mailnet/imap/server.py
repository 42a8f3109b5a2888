# -*- test-case-name: tests.test_imap_server -*-
"""
mailnet's IMAP4 server.

  - RFC 9051 (IMAP4rev2) and RFC 3501 (IMAP4rev1): a session speaks rev1
    until the client sends C{ENABLE IMAP4rev2}; then there is no
    C{\\Recent}/RECENT, SEARCH answers with ESEARCH, mailbox names are
    UTF-8 instead of modified UTF-7, and SELECT also sends a LIST line.
  - RFC 9051 §6.2.1 STARTTLS, injection-safe: input pipelined after it is
    thrown away.  LOGINDISABLED and no LOGIN/AUTHENTICATE before TLS unless
    C{allow_plaintext_auth}.
  - RFC 4959 SASL-IR with RFC 4616 AUTHENTICATE PLAIN; RFC 5530 response
    codes; RFC 2177 IDLE; RFC 4315 UIDPLUS; RFC 6851 MOVE; RFC 3691
    UNSELECT; RFC 5161 ENABLE; RFC 7888 LITERAL+; RFC 2971 ID; RFC 2342
    NAMESPACE; RFC 6154 SPECIAL-USE; RFC 5258 LIST-EXTENDED; RFC 5819
    LIST-STATUS; RFC 3348 CHILDREN; RFC 4731 ESEARCH; RFC 8438
    STATUS=SIZE; RFC 7162 CONDSTORE.

Commands are read by L{mailnet.imap._parser.CommandReader} under hard
limits and run one at a time; pipelined input waits (bounded: reading
pauses past L{MAX_PENDING_INPUT}).  APPEND's message streams into the store
as it arrives; FETCH streams message octets from the files, read in
threads, paced by the transport.  The selected folder is a view
(L{SelectedView}): the session's sequence numbers, and what it has told
the client, compared with the store's state after each command and during
IDLE.

Public surface: L{IMAPFactory}, and L{IMAPServer} for tests.
"""

import base64
import binascii
import bisect
import enum
import functools
import weakref
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Sequence, Set, Tuple

import attr

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, DeferredLock, ensureDeferred, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.mail import imap4  # noqa: F401 - registers the imap4-utf-7 codec
from twisted.python.failure import Failure

from mailnet.config import Limits
from mailnet.errors import BadFolderName, CannotDeleteFolder, FolderExists, MessageGone, NoSuchFolder
from mailnet.imap import _fetch, _quota, search
from mailnet.imap._parser import (
    Atom,
    Command,
    CommandReader,
    Continue,
    LiteralData,
    LiteralStart,
    LiteralStream,
    ParseError,
    String,
    astring,
)
from mailnet.imap._sequence import SequenceError, SequenceSet, parseSequenceSet
from mailnet.interfaces import IAuthenticator, IMailAccount
from mailnet.pop3.server import isAcceptableLoginName
from mailnet.store.records import DELIMITER, SYSTEM_FLAGS, FolderInfo, FolderState, MessageRecord

__all__ = ["IMAPFactory", "IMAPServer", "State"]

log = Logger()

#: Pipelined input kept while a command runs before we stop reading.
MAX_PENDING_INPUT = 256 * 1024

#: RFC 9051 §5.4: the autologout timer of an authenticated session is at
#: least 30 minutes.
AUTOLOGOUT = 30 * 60

#: Seconds a closing connection may take to flush before it is aborted.
CLOSE_GRACE = 30

#: Passwords longer than this are refused without asking the authenticator.
MAX_PASSWORD = 1024

#: Messages whose parsed form is asked of the store at once (SEARCH).
BATCH = 1024

#: Output gathered before it is written (FETCH of many small items).
WRITE_BATCH = 64 * 1024

#: A section up to this size is read whole, in one thread call.
SMALL_SECTION = 64 * 1024

#: Keywords a folder may gain (RFC 9051 §2.3.2 lets a server refuse more).
MAX_KEYWORD_LENGTH = 200

# Response codes (RFC 9051 §7.1, RFC 5530).
AUTHENTICATIONFAILED = "AUTHENTICATIONFAILED"
UNAVAILABLE = "UNAVAILABLE"
PRIVACYREQUIRED = "PRIVACYREQUIRED"
TRYCREATE = "TRYCREATE"
NONEXISTENT = "NONEXISTENT"
ALREADYEXISTS = "ALREADYEXISTS"
CANNOT = "CANNOT"
TOOBIG = "TOOBIG"
SERVERBUG = "SERVERBUG"
CLIENTBUG = "CLIENTBUG"
LIMIT = "LIMIT"
NOPERM = "NOPERM"

#: The mailbox-data FLAGS every folder lists (keywords are added).
_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


class State(enum.Enum):
    """
    RFC 9051 §3: the session states.
    """

    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


class IMAPError(Exception):
    """
    A command failed: the dispatcher answers C{tag NO|BAD [code] text}.
    """

    def __init__(self, status: bytes, text: str, code: Optional[str] = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.code = code


def No(text: str, code: Optional[str] = None) -> IMAPError:
    """@return: an error answered with C{NO}."""
    return IMAPError(b"NO", text, code)


def Bad(text: str, code: Optional[str] = None) -> IMAPError:
    """@return: an error answered with C{BAD} (the client's mistake)."""
    return IMAPError(b"BAD", text, code)


def quoted(value: bytes) -> bytes:
    """
    @return: C{value} as an IMAP string: quoted, or a literal if it holds
        CR, LF or NUL.
    """
    if b"\r" in value or b"\n" in value or b"\0" in value:
        return b"{%d}\r\n%s" % (len(value), value)
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _flagList(flags: Iterable[str]) -> bytes:
    return b"(" + b" ".join(f.encode("utf-8", "replace") for f in flags) + b")"


def _sortedFlags(flags: Iterable[str]) -> List[str]:
    # System flags first, in a fixed order, then keywords as stored.
    system = [f for f in _FLAGS if f in flags]
    return system + sorted(f for f in flags if f not in SYSTEM_FLAGS and f != "\\Recent")


def _isValidFlag(flag: bytes) -> bool:
    if flag.startswith(b"\\"):
        return flag[1:].lower() in {b"seen", b"answered", b"flagged", b"deleted", b"draft"}
    if not flag or len(flag) > MAX_KEYWORD_LENGTH:
        return False
    return all(0x21 <= c < 0x7F and c not in b'(){%*"\\]' for c in flag)


def _canonicalFlag(flag: bytes) -> str:
    if flag.startswith(b"\\"):
        return "\\" + flag[1:].decode("ascii").capitalize()
    return flag.decode("ascii")


_uidCache: Dict[int, Tuple[Any, Tuple[int, ...]]] = {}


def uidsOf(state: FolderState) -> Tuple[int, ...]:
    """
    @return: the UIDs of a folder state, ascending; computed once per state
        object and shared by every session that sees the same state (the
        disk store hands the same object to all of them).
    """
    key = id(state)
    entry = _uidCache.get(key)
    if entry is not None and entry[0]() is state:
        return entry[1]
    uids = tuple(m.uid for m in state.messages)

    def forget(ref: Any, key: int = key) -> None:
        if _uidCache.get(key, (None,))[0] is ref:
            del _uidCache[key]

    _uidCache[key] = (weakref.ref(state, forget), uids)
    return uids


class _Records:
    """
    A view's messages by UID: a folder state (shared with other sessions)
    plus the few records this session has reported differently since
    (its own STORE, messages kept while an EXPUNGE waits to be announced).
    A session of a large folder thus costs little memory of its own.
    """

    def __init__(self, state: FolderState) -> None:
        self.state = state
        self.uids = uidsOf(state)
        self.extra: Dict[int, MessageRecord] = {}

    def get(self, uid: int, default: Optional[MessageRecord] = None) -> Optional[MessageRecord]:
        record = self.extra.get(uid)
        if record is not None:
            return record
        i = bisect.bisect_left(self.uids, uid)
        if i < len(self.uids) and self.uids[i] == uid:
            return self.state.messages[i]
        return default

    def __getitem__(self, uid: int) -> MessageRecord:
        record = self.get(uid)
        if record is None:
            raise KeyError(uid)
        return record

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, int) and self.get(uid) is not None

    def __setitem__(self, uid: int, record: MessageRecord) -> None:
        self.extra[uid] = record


class SelectedView:
    """
    What a session has told its client about the selected folder: the
    messages by sequence number (C{uids}, ascending), their flags and
    mod-sequences as last reported (C{records}), and which are
    C{\\Recent} for it.
    """

    def __init__(self, folder: Any, state: FolderState, readOnly: bool, recent: FrozenSet[int]) -> None:
        self.folder = folder
        self.readOnly = readOnly
        self.records = _Records(state)
        self.uids: Sequence[int] = self.records.uids
        self.recent: Set[int] = set(recent)
        self.uidNext = state.uidNext
        self.uidValidity = state.uidValidity
        self.highestModSeq = state.highestModSeq
        self.keywords: Set[str] = _keywords(state)
        self.dirty = False
        self.stopWatching: Optional[Callable[[], None]] = None
        # UIDs the store no longer has, not yet announced as EXPUNGEd.
        self.gone: Set[int] = set()

    def seqOf(self, uid: int) -> int:
        """@return: the sequence number of C{uid} (1-based), or 0."""
        i = bisect.bisect_left(self.uids, uid)
        if i < len(self.uids) and self.uids[i] == uid:
            return i + 1
        return 0

    def resolve(self, seqset: SequenceSet, uid: bool) -> List[int]:
        """
        @return: the UIDs a sequence set names, ascending.
        @raise IMAPError: a message sequence number out of range.
        """
        if uid:
            # RFC 9051 §6.4.8: "*" is the largest UID in use; a range that
            # names none is not an error.
            star = self.uids[-1] if self.uids else 0
            if not self.uids:
                return []
            return seqset.select(self.uids, star)
        count = len(self.uids)
        if count == 0:
            raise Bad("No messages")
        for low, high in seqset.ranges:
            for n in (low, high):
                if n is not None and n > count:
                    raise Bad("Invalid message sequence number %d" % (n,))
        return [self.uids[n - 1] for n in seqset.iterate(count)]


class IMAPServer(Protocol):
    """
    One IMAP session.  Built by L{IMAPFactory}, whose settings it reads.
    """

    factory: "IMAPFactory"
    transport: Any

    def __init__(self, factory: "IMAPFactory", overloaded: bool = False) -> None:
        self.factory = factory
        self._overloaded = overloaded
        self.secure = factory.implicitTLS
        self.state = State.NOT_AUTHENTICATED
        self.peer = "?"
        self.reader = self._newReader()
        self._counted = False
        self._busy = False
        self._processing = False
        self._readPaused = False
        self._closing = False
        self._disconnected = False
        self._errors = 0
        self._idleCall: Optional[IDelayedCall] = None
        self._abortCall: Optional[IDelayedCall] = None
        self._lineWaiter: Optional[Callable[[bytes], None]] = None
        self._idling: Optional[Deferred] = None
        self._appending: Optional[Tuple[bytes, Any]] = None
        self._producer: Optional["_OutputGate"] = None
        self._refreshLock = DeferredLock()
        self._resetSession()

    def _newReader(self) -> CommandReader:
        return CommandReader(maxDiscard=self.factory.limits.max_message_size)

    def _resetSession(self) -> None:
        """
        Forget everything the client said: at the start and after STARTTLS.
        """
        self.account: Any = None
        self._logout: Optional[Callable[[], None]] = None
        self.view: Optional[SelectedView] = None
        self.rev2 = False
        self.condstore = False
        self.savedSearch: Optional[List[int]] = None

    # --- connection ----------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer = getattr(peer, "host", None) or str(peer)
        if self._overloaded:
            log.warn("IMAP connection from {peer} refused: too many connections", peer=self.peer)
            self._send(b"* BYE [UNAVAILABLE] Too many connections, try again later")
            self._close()
            return
        self.factory.connections += 1
        self.factory.sessions.add(self)
        self._counted = True
        setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            try:
                setNoDelay(True)
            except Exception:
                pass
        self._idleCall = self.factory.clock.callLater(self._timeout(), self._idleTimedOut)
        self._send(
            b"* OK [CAPABILITY "
            + self.capabilities()
            + b"] "
            + self.factory.hostname.encode("utf-8", "replace")
            + b" IMAP4 mailnet ready"
        )

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        self._disconnected = True
        self._closing = True
        if self._counted:
            self._counted = False
            self.factory.connections -= 1
            self.factory.sessions.discard(self)
        for call in (self._idleCall, self._abortCall):
            if call is not None and call.active():
                call.cancel()
        self._idleCall = self._abortCall = None
        if self._producer is not None:
            self._producer.stopProducing()
        if self._appending is not None:
            _, receiver = self._appending
            self._appending = None
            receiver.abort()
        self._closeView()
        self._releaseAccount()

    def _releaseAccount(self) -> None:
        logout, self._logout = self._logout, None
        if logout is not None:
            try:
                logout()
            except Exception:
                log.failure("IMAP logout of {address} failed", address=getattr(self.account, "address", "?"))

    def _close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self.reader.clear()
        self.transport.loseConnection()
        self._abortCall = self.factory.clock.callLater(CLOSE_GRACE, self.transport.abortConnection)

    def shutdown(self) -> None:
        """
        The server is stopping: say goodbye (RFC 9051 §7.1.5) and close.
        """
        if not self._closing:
            self._send(b"* BYE Server shutting down")
            self._close()

    def _timeout(self) -> float:
        if self.state is State.NOT_AUTHENTICATED:
            return self.factory.limits.idle_timeout
        return AUTOLOGOUT

    def _idleTimedOut(self) -> None:
        self._idleCall = None
        log.info("IMAP session from {peer} timed out", peer=self.peer)
        if self._producer is not None:
            # In the middle of a literal: a BYE would land inside it.
            self._closing = True
            self.transport.abortConnection()
            return
        self._send(b"* BYE Autologout; idle for too long")
        self._close()

    def _activity(self) -> None:
        if self._idleCall is not None and self._idleCall.active():
            self._idleCall.reset(self._timeout())

    # --- input ---------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self._activity()
        self.reader.feed(data)
        if self._busy and self.reader.buffered() > MAX_PENDING_INPUT and not self._readPaused:
            self._readPaused = True
            self.transport.pauseProducing()
        self._processInput()

    def _processInput(self) -> None:
        if self._processing:
            return
        self._processing = True
        try:
            while not self._closing:
                if self._lineWaiter is not None:
                    line = self.reader.readLine()
                    if line is None:
                        break
                    waiter, self._lineWaiter = self._lineWaiter, None
                    waiter(line)
                    continue
                if self._busy:
                    break
                event = self.reader.next()
                if event is None:
                    break
                self._event(event)
        finally:
            self._processing = False
        if self._readPaused and not self._busy and not self._disconnected:
            self._readPaused = False
            self.transport.resumeProducing()

    def _event(self, event: Any) -> None:
        if isinstance(event, Command):
            self._command(event)
        elif isinstance(event, Continue):
            self._send(b"+ Ready for literal data")
        elif isinstance(event, LiteralStart):
            self._appendStart(event)
        elif isinstance(event, LiteralData):
            if self._appending is not None:
                self._appending[1].write(event.data)
        elif isinstance(event, ParseError):
            self._parseError(event)

    def _parseError(self, error: ParseError) -> None:
        if error.fatal:
            self._send(b"* BYE [TOOBIG] " + error.text.encode("ascii"))
            self._close()
            return
        self._sendError(error.tag, Bad(error.text, error.code.decode("ascii") if error.code else None))

    def _command(self, command: Command) -> None:
        verb = command.verb
        tag = command.tag
        if verb == b"UID" and command.args and isinstance(command.args[0], Atom):
            sub = command.args[0].upper()
            entry = _UID_COMMANDS.get(sub)
            if entry is None:
                self._sendError(tag, Bad("Unknown UID command"))
                return
            states, handler = entry
            args = command.args[1:]
            name = b"UID " + sub
        else:
            entry = _COMMANDS.get(verb)
            if entry is None:
                self._sendError(tag, Bad("Unknown command"))
                return
            states, handler = entry
            args = command.args
            name = verb
        if self.state not in states:
            if self.state is State.NOT_AUTHENTICATED:
                self._sendError(tag, Bad("Log in first"))
            elif self.state is State.AUTHENTICATED and State.SELECTED in states:
                self._sendError(tag, Bad("Select a folder first"))
            else:
                self._sendError(tag, Bad("Command not valid in this state"))
            return
        self._run(tag, name, handler, args)

    def _run(self, tag: bytes, name: bytes, handler: Callable[..., Any], args: List[Any]) -> None:
        """
        Run a handler; it returns the OK text (or L{None}), or raises
        L{IMAPError}, or returns a coroutine/Deferred for either.
        """
        try:
            result = handler(self, tag, args)
        except IMAPError as e:
            self._sendError(tag, e)
            return
        except Exception:
            log.failure("IMAP {command} from {peer} failed", command=name.decode("ascii"), peer=self.peer)
            self._sendError(tag, No("Internal server error, try again later", SERVERBUG))
            return
        if hasattr(result, "send") and hasattr(result, "throw"):
            result = ensureDeferred(result)
        if isinstance(result, Deferred):
            self._busy = True
            result.addCallbacks(self._commandSucceeded, self._commandFailed, callbackArgs=(tag, name), errbackArgs=(tag, name))
            result.addBoth(self._commandDone)
            return
        refreshing = self._commandSucceeded(result, tag, name)
        if refreshing is not None and not refreshing.called:
            # The changes are being announced before the tagged OK: the next
            # pipelined command waits for it (LOGOUT would cut it off).
            self._busy = True
            refreshing.addBoth(self._commandDone)

    def _commandSucceeded(self, result: Any, tag: bytes, name: bytes) -> Optional[Deferred]:
        if self._disconnected or result is _NO_REPLY:
            return None
        text = result if isinstance(result, str) else name.decode("ascii") + " completed"
        if self.view is not None and (self.view.dirty or self.view.gone) and name not in _NO_UPDATES:
            # Tell the client what changed before the command completes
            # (RFC 9051 §7); not during FETCH, STORE and SEARCH if that
            # would renumber (§7.5.1), and only once per command.
            d = ensureDeferred(self._refresh(expunges=name not in _NO_EXPUNGES))
            d.addErrback(lambda f: log.failure("IMAP refresh for {peer} failed", f, peer=self.peer))
            d.addCallback(lambda _: None if self._closing else self._sendTagged(tag, b"OK", text))
            return d
        self._sendTagged(tag, b"OK", text)
        return None

    def _commandFailed(self, failure: Failure, tag: bytes, name: bytes) -> None:
        if self._disconnected:
            return
        if failure.check(IMAPError):
            self._sendError(tag, failure.value)
        else:
            log.failure("IMAP {command} from {peer} failed", failure, command=name.decode("ascii", "replace"), peer=self.peer)
            self._sendError(tag, No("Internal server error, try again later", SERVERBUG))

    def _commandDone(self, ignored: object) -> None:
        self._busy = False
        if not self._disconnected:
            self._processInput()

    # --- output --------------------------------------------------------------

    def _send(self, line: bytes) -> None:
        if not self._disconnected:
            self.transport.write(line + b"\r\n")

    def _write(self, data: bytes) -> None:
        if not self._disconnected:
            self.transport.write(data)

    def _sendTagged(self, tag: bytes, status: bytes, text: str, code: Optional[str] = None) -> None:
        prefix = tag + b" " + status + b" "
        if code:
            prefix += b"[" + code.encode("utf-8") + b"] "
        self._send(prefix + text.encode("utf-8", "replace"))

    def _sendError(self, tag: Optional[bytes], error: IMAPError) -> None:
        if self._closing:
            return
        if error.status == b"BAD":
            self._errors += 1
            if self._errors >= self.factory.limits.max_errors:
                log.info("IMAP session from {peer} closed after too many errors", peer=self.peer)
                self._send(b"* BYE Too many errors")
                self._close()
                return
        self._sendTagged(tag if tag is not None else b"*", error.status, error.text, error.code)

    # --- any state -------------------------------------------------------------

    def _authAllowed(self) -> bool:
        return self.secure or self.factory.allowPlaintextAuth

    def capabilities(self) -> bytes:
        """
        @return: what this session offers now (RFC 9051 §7.2.2).
        """
        caps = [b"IMAP4rev1", b"IMAP4rev2"]
        if self.state is State.NOT_AUTHENTICATED:
            if self.factory.tlsOptions is not None and not self.secure:
                caps.append(b"STARTTLS")
            if self._authAllowed():
                caps += [b"AUTH=PLAIN", b"SASL-IR"]
            else:
                caps.append(b"LOGINDISABLED")
        # BINARY (RFC 3516) is served but not announced: a binary APPEND is
        # stored with its line ends made LF like any other, so its octets
        # do not all come back (imaptest's append-binary).
        caps += [
            b"LITERAL+",
            b"ENABLE",
            b"IDLE",
            b"UIDPLUS",
            b"MOVE",
            b"UNSELECT",
            b"ID",
            b"NAMESPACE",
            b"SPECIAL-USE",
            b"LIST-EXTENDED",
            b"LIST-STATUS",
            b"CHILDREN",
            b"ESEARCH",
            b"SEARCHRES",
            b"STATUS=SIZE",
            b"CONDSTORE",
            b"APPENDLIMIT=%d" % (self.factory.limits.max_message_size,),
        ]
        caps += _quota.capabilities(self.factory.quotas)
        return b" ".join(caps)

    def do_CAPABILITY(self, tag: bytes, args: List[Any]) -> None:
        _noArguments(args)
        self._send(b"* CAPABILITY " + self.capabilities())

    def do_NOOP(self, tag: bytes, args: List[Any]) -> Any:
        _noArguments(args)
        if self.view is not None:
            self.view.dirty = True
        return None

    def do_LOGOUT(self, tag: bytes, args: List[Any]) -> Any:
        _noArguments(args)
        self._send(b"* BYE " + self.factory.hostname.encode("utf-8", "replace") + b" IMAP4 mailnet signing off")
        self._sendTagged(tag, b"OK", "LOGOUT completed")
        self.state = State.LOGOUT
        self._close()
        return _NO_REPLY

    def do_ID(self, tag: bytes, args: List[Any]) -> None:
        # RFC 2971: we say who we are; what the client says is not kept.
        if len(args) != 1 or not (isinstance(args[0], list) or (isinstance(args[0], Atom) and args[0].isName(b"NIL"))):
            raise Bad("Syntax: ID (field value ...) | NIL")
        if isinstance(args[0], list) and len(args[0]) > 60:
            raise Bad("Too many ID fields")
        self._send(b'* ID ("name" "mailnet" "vendor" "mailnet")')

    def enableCondstore(self) -> None:
        """
        RFC 7162 §3.1: CONDSTORE is on from now; with a folder selected, the
        client learns its HIGHESTMODSEQ.
        """
        if self.condstore:
            return
        self.condstore = True
        if self.view is not None:
            self._send(b"* OK [HIGHESTMODSEQ %d] Highest" % (max(self.view.highestModSeq, 1),))

    def do_ENABLE(self, tag: bytes, args: List[Any]) -> None:
        # RFC 5161; RFC 9051 §6.3.1.
        if not args:
            raise Bad("Syntax: ENABLE capability ...")
        enabled = []
        for arg in args:
            if not isinstance(arg, Atom):
                raise Bad("Syntax: ENABLE capability ...")
            name = arg.upper()
            if name == b"IMAP4REV2" and not self.rev2:
                self.rev2 = True
                enabled.append(b"IMAP4rev2")
            elif name == b"CONDSTORE" and not self.condstore:
                self.enableCondstore()
                enabled.append(b"CONDSTORE")
        self._send(b"* ENABLED" + b"".join(b" " + e for e in enabled))

    # --- not authenticated -----------------------------------------------------

    def do_STARTTLS(self, tag: bytes, args: List[Any]) -> Any:
        _noArguments(args)
        if self.factory.tlsOptions is None or self.secure:
            raise Bad("TLS is already active" if self.secure else "STARTTLS not available")
        self._sendTagged(tag, b"OK", "Begin TLS negotiation now")
        # RFC 9051 §6.2.1 / CVE-2011-0411: what the client sent after
        # STARTTLS before the handshake may be an attacker's; it is dropped.
        self.reader.clear()
        self.transport.startTLS(self.factory.tlsOptions)
        self.secure = True
        self._resetSession()
        log.debug("IMAP STARTTLS from {peer}", peer=self.peer)
        return _NO_REPLY

    def _requireAuthAllowed(self) -> None:
        if not self._authAllowed():
            raise No("Use STARTTLS first" if self.factory.tlsOptions else "Logins need TLS", PRIVACYREQUIRED)

    def do_LOGIN(self, tag: bytes, args: List[Any]) -> Any:
        self._requireAuthAllowed()
        if len(args) != 2 or astring(args[0]) is None or astring(args[1]) is None:
            raise Bad("Syntax: LOGIN user password")
        return self._login(astring(args[0]), astring(args[1]))  # type: ignore[arg-type]

    def do_AUTHENTICATE(self, tag: bytes, args: List[Any]) -> Any:
        self._requireAuthAllowed()
        if not 1 <= len(args) <= 2 or not isinstance(args[0], Atom):
            raise Bad("Syntax: AUTHENTICATE mechanism [initial-response]")
        if not args[0].isName(b"PLAIN"):
            raise No("Unsupported authentication mechanism", CANNOT)
        if len(args) == 2:
            # RFC 4959: "=" is an empty initial response.
            response = astring(args[1])
            if response is None:
                raise Bad("Syntax: AUTHENTICATE mechanism [initial-response]")
            return self._saslPlain(b"" if response == b"=" else response)
        d: Deferred = Deferred()

        def responded(line: bytes) -> None:
            if line.strip() == b"*":
                d.errback(Bad("Authentication cancelled"))
                return
            try:
                result = self._saslPlain(line.strip())
            except IMAPError as e:
                d.errback(e)
                return
            result.chainDeferred(d)

        self._lineWaiter = responded
        self._send(b"+ ")
        return d

    def _saslPlain(self, encoded: bytes) -> Deferred:
        """RFC 4616 §2: authzid NUL authcid NUL passwd."""
        try:
            message = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise Bad("Invalid base64 in SASL response")
        parts = message.split(b"\0")
        if len(parts) != 3:
            raise No("Authentication failed", AUTHENTICATIONFAILED)
        authzid, authcid, password = parts
        if authzid and authzid.lower() != authcid.lower():
            log.info("IMAP login from {peer} refused: authorization identity differs", peer=self.peer)
            raise No("Authentication failed", AUTHENTICATIONFAILED)
        return self._login(authcid, password)

    def _login(self, rawUser: bytes, password: bytes) -> Deferred:
        try:
            user = rawUser.decode("utf-8")
        except UnicodeDecodeError:
            user = ""
        if not isAcceptableLoginName(user) or not password or len(password) > MAX_PASSWORD:
            log.info("IMAP login failed for {user!r} from {peer}", user=rawUser[:100], peer=self.peer)
            raise No("Authentication failed", AUTHENTICATIONFAILED)
        credentials = UsernamePassword(user, password)  # type: ignore[arg-type]
        d: Deferred = maybeDeferred(self.factory.authenticator.login, credentials, self.peer, IMailAccount)
        d.addCallbacks(self._loggedIn, self._loginFailed, callbackArgs=(user,), errbackArgs=(user,))
        return d

    def _loginFailed(self, failure: Failure, user: str) -> None:
        if failure.check(UnauthorizedLogin):
            log.info("IMAP login failed for {user!r} from {peer}", user=user, peer=self.peer)
            raise No("Authentication failed", AUTHENTICATIONFAILED)
        if failure.check(IMAPError):
            failure.raiseException()
        log.info(
            "IMAP login for {user!r} from {peer} not possible now: {error}",
            user=user,
            peer=self.peer,
            error=failure.getErrorMessage(),
        )
        raise No("Login not possible now, try again later", UNAVAILABLE)

    def _loggedIn(self, result: Tuple[Any, Any, Callable[[], None]], user: str) -> Any:
        interface, avatar, logout = result
        if self._closing:
            logout()
            return _NO_REPLY
        self.account = avatar
        self._logout = logout
        self.state = State.AUTHENTICATED
        self._activity()
        log.info("IMAP login {address} from {peer}", address=getattr(avatar, "address", user), peer=self.peer)
        return "[CAPABILITY " + self.capabilities().decode("ascii") + "] Logged in"

    # --- folder names ----------------------------------------------------------

    def _folderName(self, token: Any) -> str:
        """
        @return: the folder a mailbox argument names (Unicode; C{"INBOX"}
            in any case is the inbox).
        """
        raw = astring(token)
        if raw is None:
            raise Bad("Mailbox name expected")
        return decodeName(raw, self.rev2)

    def _encodeName(self, name: str) -> bytes:
        return quoted(encodeName(name, self.rev2))

    # --- authenticated -----------------------------------------------------------

    async def do_SELECT(self, tag: bytes, args: List[Any], readOnly: bool = False) -> Any:
        if not args or len(args) > 2:
            raise Bad("Syntax: SELECT mailbox [(CONDSTORE)]")
        name = self._folderName(args[0])
        if len(args) == 2:
            params = args[1]
            if not isinstance(params, list) or any(not (isinstance(p, Atom) and p.isName(b"CONDSTORE")) for p in params):
                raise Bad("Unsupported SELECT parameter")
            self.condstore = True
        # RFC 9051 §6.3.2: a failed SELECT leaves no folder selected.
        if self.view is not None:
            self._closeView()
            self.state = State.AUTHENTICATED
            if self.rev2:
                self._send(b"* OK [CLOSED] Previous folder closed")
        try:
            folder = await self.account.openFolder(name)
        except NoSuchFolder:
            raise No("No such folder", NONEXISTENT)
        except BadFolderName:
            raise No("No such folder", NONEXISTENT)
        try:
            state = await folder.sync()
            if self.rev2:
                recent: FrozenSet[int] = frozenset()
            elif readOnly:
                # EXAMINE shows \Recent without taking it (RFC 3501 §6.3.2).
                count = (await self.account.status(name)).recent
                recent = frozenset(m.uid for m in state.messages[len(state.messages) - count :]) if count else frozenset()
            else:
                recent = await folder.claimRecent()
        except Exception:
            folder.close()
            raise
        if self._disconnected:
            folder.close()
            return _NO_REPLY
        view = SelectedView(folder, state, readOnly, recent)
        self.view = view
        self.state = State.SELECTED
        view.stopWatching = folder.watch(lambda: self._changed(view))
        lines = [b"* %d EXISTS" % (len(view.uids),)]
        if not self.rev2:
            lines.append(b"* %d RECENT" % (len(view.recent),))
        flags = list(_FLAGS) + sorted(view.keywords)
        lines.append(b"* FLAGS " + _flagList(flags))
        permanent = [] if readOnly else flags + ["\\*"]
        lines.append(b"* OK [PERMANENTFLAGS " + _flagList(permanent) + b"] Flags permitted")
        lines.append(b"* OK [UIDVALIDITY %d] UIDs valid" % (view.uidValidity,))
        lines.append(b"* OK [UIDNEXT %d] Predicted next UID" % (view.uidNext,))
        if not self.rev2:
            unseen = next((i + 1 for i, u in enumerate(view.uids) if "\\Seen" not in view.records[u].flags), None)
            if unseen is not None:
                lines.append(b"* OK [UNSEEN %d] First unseen" % (unseen,))
        lines.append(b"* OK [HIGHESTMODSEQ %d] Highest" % (max(view.highestModSeq, 1),))
        if self.rev2:
            lines.append(
                b'* LIST () "' + DELIMITER.encode() + b'" ' + self._encodeName(folder.name if hasattr(folder, "name") else name)
            )
        self._write(b"\r\n".join(lines) + b"\r\n")
        return "[READ-ONLY] EXAMINE completed" if readOnly else "[READ-WRITE] SELECT completed"

    def do_EXAMINE(self, tag: bytes, args: List[Any]) -> Any:
        return self.do_SELECT(tag, args, readOnly=True)

    def _changed(self, view: SelectedView) -> None:
        if view is not self.view:
            return
        view.dirty = True
        if self._idling is not None and not self._refreshing:
            self._idleRefresh()

    _refreshing = False

    def _idleRefresh(self) -> None:
        self._refreshing = True
        d = ensureDeferred(self._refresh(expunges=True))

        def done(result: object) -> object:
            self._refreshing = False
            if self._idling is not None and self.view is not None and self.view.dirty:
                self._idleRefresh()
            return result

        d.addBoth(done)
        d.addErrback(lambda f: log.failure("IMAP refresh for {peer} failed", f, peer=self.peer))

    async def _refresh(self, expunges: bool) -> None:
        """
        Bring the view up to date with the store and tell the client what
        changed: flag changes, EXPUNGEs (if allowed now), EXISTS (and
        RECENT for IMAP4rev1).  One at a time (IDLE's and a command's may
        overlap), so that nothing is announced twice.
        """
        await self._refreshLock.acquire()
        try:
            await self._refreshNow(expunges)
        finally:
            self._refreshLock.release()

    async def _refreshNow(self, expunges: bool) -> None:
        view = self.view
        if view is None:
            return
        view.dirty = False
        try:
            state = await view.folder.sync()
        except NoSuchFolder:
            self._selectedFolderDeleted(view)
            return
        if state is view.records.state and not view.records.extra and not view.gone:
            return  # the same state object: nothing changed
        recent: FrozenSet[int] = frozenset()
        last = view.uids[-1] if view.uids else 0
        new = [m for m in state.messages[bisect.bisect_right(uidsOf(state), last) :]]
        if new and not self.rev2 and not view.readOnly:
            recent = await view.folder.claimRecent()
        if self.view is not view or self._disconnected:
            return
        lines: List[bytes] = []
        keywords = _keywords(state) | view.keywords
        if keywords != view.keywords:
            view.keywords = keywords
            flags = list(_FLAGS) + sorted(keywords)
            lines.append(b"* FLAGS " + _flagList(flags))
            if not view.readOnly:
                lines.append(b"* OK [PERMANENTFLAGS " + _flagList(flags + ["\\*"]) + b"] Flags permitted")
        # Both sequences ascend by UID: one merge pass finds the changes.
        messages = state.messages
        j = 0
        count = len(messages)
        changed: Dict[int, MessageRecord] = {}
        for seq, uid in enumerate(view.uids, 1):
            while j < count and messages[j].uid < uid:
                j += 1
            if j >= count or messages[j].uid != uid:
                view.gone.add(uid)
                continue
            record = messages[j]
            old = view.records[uid]
            if record is not old and (record.flags != old.flags or record.modSeq != old.modSeq):
                changed[uid] = record
                if record.flags != old.flags or self.condstore:
                    lines.append(self._flagsResponse(seq, record, True))
        if expunges and view.gone:
            gone = view.gone
            for i in range(len(view.uids) - 1, -1, -1):
                if view.uids[i] in gone:
                    lines.append(b"* %d EXPUNGE" % (i + 1,))
            view.recent.difference_update(gone)
            view.gone = set()
        if not view.gone:
            # Everything told: the view is the state again, shared.
            view.records = _Records(state)
            view.uids = view.records.uids
            view.highestModSeq = state.highestModSeq
        else:
            # EXPUNGEs wait: keep the old numbering, note what changed.
            for uid, record in changed.items():
                view.records[uid] = record
            if new:
                view.uids = list(view.uids) + [m.uid for m in new]
                for m in new:
                    view.records[m.uid] = m
        if new:
            view.recent.update(recent)
            lines.append(b"* %d EXISTS" % (len(view.uids),))
            if not self.rev2:
                lines.append(b"* %d RECENT" % (len(view.recent),))
        view.uidNext = state.uidNext
        if lines:
            self._write(b"\r\n".join(lines) + b"\r\n")

    def _selectedFolderDeleted(self, view: SelectedView) -> None:
        """
        Another session deleted (or renamed away) the selected folder: there
        is nothing left to number, so say BYE and close, as Dovecot does
        (RFC 9051 §7.1.5); the command under way gets no tagged reply.
        """
        if self.view is not view or self._closing:
            return
        log.info("IMAP session of {peer}: the selected folder was deleted; disconnecting", peer=self.peer)
        self._send(b"* BYE Selected mailbox was deleted, have to disconnect")
        self._close()

    def yieldToOthers(self) -> Deferred:
        """
        @return: a L{Deferred} that fires on a later reactor turn, so that a
            long command (FETCH or SEARCH of a large folder) does not hold
            up other sessions.
        """
        d: Deferred = Deferred()
        self.factory.clock.callLater(0, d.callback, None)
        return d

    def keywordLines(self, records: Iterable[MessageRecord]) -> List[bytes]:
        """
        RFC 9051 §7.3.5: before a FETCH shows a keyword the client has not
        seen in the folder's FLAGS, the new FLAGS (and PERMANENTFLAGS).
        Records that the store returned (STORE, a FETCH setting \\Seen)
        may carry keywords other sessions added.

        @return: those response lines (none if nothing is new).
        """
        view = self.view
        if view is None:
            return []
        new = {f for r in records for f in r.flags if not f.startswith("\\")} - view.keywords
        if not new:
            return []
        view.keywords |= new
        flags = list(_FLAGS) + sorted(view.keywords)
        lines = [b"* FLAGS " + _flagList(flags)]
        if not view.readOnly:
            lines.append(b"* OK [PERMANENTFLAGS " + _flagList(flags + ["\\*"]) + b"] Flags permitted")
        return lines

    def flagsItem(self, record: MessageRecord) -> bytes:
        """@return: C{FLAGS (...)} for a message (C{\\Recent} if it is, for IMAP4rev1)."""
        view = self.view
        flags = _sortedFlags(record.flags)
        if view is not None and record.uid in view.recent and not self.rev2:
            flags.append("\\Recent")
        return b"FLAGS " + _flagList(flags)

    def _flagsResponse(self, seq: int, record: MessageRecord, withUid: bool) -> bytes:
        items = self.flagsItem(record)
        # RFC 7162 §3.1: with CONDSTORE, UID and MODSEQ in every such response.
        if withUid or self.condstore:
            items = b"UID %d " % (record.uid,) + items
        if self.condstore:
            items += b" MODSEQ (%d)" % (record.modSeq,)
        return b"* %d FETCH (%s)" % (seq, items)

    def _closeView(self) -> None:
        view, self.view = self.view, None
        if view is None:
            return
        if view.stopWatching is not None:
            view.stopWatching()
        try:
            view.folder.close()
        except Exception:
            log.failure("IMAP closing folder failed")

    async def do_CREATE(self, tag: bytes, args: List[Any]) -> Any:
        if len(args) not in (1, 2):
            raise Bad("Syntax: CREATE mailbox")
        name = self._folderName(args[0]).rstrip(DELIMITER)
        specialUse = None
        if len(args) == 2:
            # RFC 6154 §3: CREATE name (USE (\Sent)).
            opts = args[1]
            if not (
                isinstance(opts, list)
                and len(opts) == 2
                and isinstance(opts[0], Atom)
                and opts[0].isName(b"USE")
                and isinstance(opts[1], list)
                and len(opts[1]) <= 1
            ):
                raise Bad("Syntax: CREATE mailbox [(USE (attribute))]")
            if opts[1]:
                use = astring(opts[1][0]) or b""
                uses = {u.lower(): u for u in [b"\\Sent", b"\\Drafts", b"\\Trash", b"\\Junk", b"\\Archive"]}
                if use.lower() not in uses:
                    raise No("Unsupported special use", "USEATTR")
                specialUse = uses[use.lower()].decode("ascii")
        if name.upper() == "INBOX":
            raise No("INBOX always exists", ALREADYEXISTS)
        try:
            await self.account.createFolder(name, specialUse)
        except FolderExists:
            raise No("Folder already exists", ALREADYEXISTS)
        except BadFolderName as e:
            raise No(str(e), CANNOT)
        # RFC 9051 §6.3.4: CREATE does not subscribe; clients do that.
        await self.account.setSubscribed(name, False)
        return None

    async def do_DELETE(self, tag: bytes, args: List[Any]) -> Any:
        if len(args) != 1:
            raise Bad("Syntax: DELETE mailbox")
        name = self._folderName(args[0])
        if self.view is not None and _sameFolder(self.view.folder.name, name):
            raise No("Cannot delete the selected folder", CANNOT)
        folders = await self.account.listFolders()
        wasSubscribed = any(f.name == name and f.subscribed for f in folders)
        try:
            await self.account.deleteFolder(name)
        except NoSuchFolder:
            raise No("No such folder", NONEXISTENT)
        except CannotDeleteFolder as e:
            raise No(str(e), CANNOT)
        except BadFolderName:
            raise No("No such folder", NONEXISTENT)
        if wasSubscribed:
            # RFC 3501 §6.3.6: the subscription stays (LIST (SUBSCRIBED)
            # shows it \NonExistent) until the client unsubscribes.
            await self.account.setSubscribed(name, True)
        return None

    async def do_RENAME(self, tag: bytes, args: List[Any]) -> Any:
        if len(args) != 2:
            raise Bad("Syntax: RENAME mailbox newname")
        old = self._folderName(args[0])
        new = self._folderName(args[1]).rstrip(DELIMITER)
        if new.upper() == "INBOX":
            raise No("Folder already exists", ALREADYEXISTS)
        try:
            await self.account.renameFolder(old, new)
        except NoSuchFolder:
            raise No("No such folder", NONEXISTENT)
        except FolderExists:
            raise No("Folder already exists", ALREADYEXISTS)
        except (BadFolderName, CannotDeleteFolder) as e:
            raise No(str(e), CANNOT)
        return None

    async def do_SUBSCRIBE(self, tag: bytes, args: List[Any], subscribe: bool = True) -> Any:
        if len(args) != 1:
            raise Bad("Syntax: SUBSCRIBE mailbox")
        name = self._folderName(args[0])
        await self.account.setSubscribed(name, subscribe)
        return None

    def do_UNSUBSCRIBE(self, tag: bytes, args: List[Any]) -> Any:
        return self.do_SUBSCRIBE(tag, args, subscribe=False)

    # --- QUOTA (RFC 9208): one root, "", for the whole account ----------------------

    def _requireQuotas(self) -> Any:
        if self.factory.quotas is None:
            raise Bad("QUOTA is not offered")
        return self.factory.quotas

    def do_GETQUOTAROOT(self, tag: bytes, args: List[Any]) -> None:
        if len(args) != 1:
            raise Bad("Syntax: GETQUOTAROOT mailbox")
        quotas = self._requireQuotas()
        name = self._folderName(args[0])
        for line in _quota.quotaRootResponses(quotas, self.account.address, self._encodeName(name)):
            self._send(line)

    def do_GETQUOTA(self, tag: bytes, args: List[Any]) -> None:
        if len(args) != 1 or astring(args[0]) is None:
            raise Bad("Syntax: GETQUOTA root")
        quotas = self._requireQuotas()
        if astring(args[0]) != _quota.ROOT.encode() or not quotas.limitFor(self.account.address):
            raise No("No such quota root", NONEXISTENT)
        for line in _quota.quotaResponses(quotas, self.account.address):
            self._send(line)

    def do_SETQUOTA(self, tag: bytes, args: List[Any]) -> None:
        self._requireQuotas()
        # Quotas are the administrator's (mailnet-admin user quota).
        raise No("Quotas are set by the administrator", NOPERM)

    def do_NAMESPACE(self, tag: bytes, args: List[Any]) -> None:
        _noArguments(args)
        self._send(b'* NAMESPACE (("" "' + DELIMITER.encode() + b'")) NIL NIL')

    async def do_LIST(self, tag: bytes, args: List[Any], lsub: bool = False) -> Any:
        # RFC 9051 §6.3.9, RFC 5258 (LIST-EXTENDED), RFC 5819 (LIST-STATUS).
        args = list(args)
        selection: Set[bytes] = set()
        if args and isinstance(args[0], list) and not lsub:
            for opt in args.pop(0):
                if not isinstance(opt, Atom):
                    raise Bad("Invalid LIST selection option")
                selection.add(opt.upper())
            unknown = selection - {b"SUBSCRIBED", b"REMOTE", b"RECURSIVEMATCH", b"SPECIAL-USE"}
            if unknown:
                raise Bad("Unsupported LIST selection option")
            if b"RECURSIVEMATCH" in selection and not selection & {b"SUBSCRIBED", b"SPECIAL-USE"}:
                # RFC 5258 §3: it modifies another selection option.
                raise Bad("RECURSIVEMATCH needs another selection option")
        returns: Set[bytes] = set()
        statusItems: List[bytes] = []
        if len(args) == 4 and not lsub:
            if not (isinstance(args[2], Atom) and args[2].isName(b"RETURN") and isinstance(args[3], list)):
                raise Bad("Syntax: LIST [(options)] reference mailbox [RETURN (options)]")
            options = args[3]
            i = 0
            while i < len(options):
                opt = options[i]
                if not isinstance(opt, Atom):
                    raise Bad("Invalid LIST return option")
                name = opt.upper()
                if name == b"STATUS":
                    if i + 1 >= len(options) or not isinstance(options[i + 1], list):
                        raise Bad("STATUS return option needs a list")
                    statusItems = _statusItems(options[i + 1])
                    i += 1
                elif name not in (b"SUBSCRIBED", b"CHILDREN", b"SPECIAL-USE"):
                    raise Bad("Unsupported LIST return option")
                returns.add(name)
                i += 1
            args = args[:2]
        if len(args) != 2:
            raise Bad("Syntax: LIST reference mailbox")
        reference = astring(args[0])
        if reference is None:
            raise Bad("Syntax: LIST reference mailbox")
        patterns: List[bytes] = []
        if isinstance(args[1], list) and not lsub:
            for p in args[1]:
                value = astring(p)
                if value is None:
                    raise Bad("Invalid mailbox pattern")
                patterns.append(value)
        else:
            value = astring(args[1])
            if value is None:
                raise Bad("Invalid mailbox pattern")
            patterns.append(value)
        delimiter = DELIMITER.encode()
        if patterns == [b""] and not selection:
            # RFC 9051 §6.3.9: the delimiter and the root.
            self._send(b'* %s (\\Noselect) "%s" ""' % (b"LSUB" if lsub else b"LIST", delimiter))
            return None
        try:
            ref = decodeName(reference, self.rev2)
            decoded = [ref + decodeName(p, self.rev2) for p in patterns if p]
        except IMAPError:
            # A pattern no name could match (RFC 9051 §6.3.9: not an error).
            return None
        matchers = [_patternMatcher(p) for p in decoded]
        folders: List[FolderInfo] = await self.account.listFolders()
        subscribedOnly = lsub or b"SUBSCRIBED" in selection
        specialOnly = b"SPECIAL-USE" in selection
        recursive = b"RECURSIVEMATCH" in selection
        subscribedNames = [f.name for f in folders if f.subscribed]
        lines: List[Tuple[str, List[str], Optional[str]]] = []
        listedNames = {f.name for f in folders}
        candidates = list(folders)
        if lsub:
            # RFC 3501 §6.3.9: with %, an unsubscribed parent of subscribed
            # names is listed \Noselect.
            for subscribed in subscribedNames:
                parts = subscribed.split(DELIMITER)
                for i in range(1, len(parts)):
                    parent = DELIMITER.join(parts[:i])
                    if parent not in listedNames:
                        listedNames.add(parent)
                        candidates.append(FolderInfo(parent, selectable=False, hasChildren=True))
        for info in candidates:
            if not any(m(info.name) for m in matchers):
                continue
            childInfo = None
            attributes: List[str] = []
            nonExistent = not info.selectable and not info.hasChildren
            if nonExistent and not subscribedOnly:
                # Only a subscription: not a folder (RFC 5258 §3).
                continue
            hasSubscribedChild = any(n.startswith(info.name + DELIMITER) for n in subscribedNames)
            if subscribedOnly and not info.subscribed:
                if lsub and hasSubscribedChild:
                    lines.append((info.name, ["\\Noselect"], None))
                    continue
                # RFC 5258 §3.5: CHILDINFO for subscribed names below that
                # the patterns do not list themselves.
                if recursive and any(
                    n.startswith(info.name + DELIMITER) and not any(m(n) for m in matchers) for n in subscribedNames
                ):
                    childInfo = '"CHILDINFO" ("SUBSCRIBED")'
                else:
                    continue
            if specialOnly and not info.specialUse:
                continue
            if lsub:
                lines.append((info.name, [] if info.selectable else ["\\Noselect"], None))
                continue
            if nonExistent:
                attributes.append("\\NonExistent")
            elif not info.selectable:
                attributes.append("\\Noselect")
            if not nonExistent:
                attributes.append("\\HasChildren" if info.hasChildren else "\\HasNoChildren")
            if info.subscribed and (subscribedOnly or b"SUBSCRIBED" in returns):
                attributes.append("\\Subscribed")
            if info.specialUse and (self.rev2 or specialOnly or b"SPECIAL-USE" in returns or not selection):
                attributes.append(info.specialUse)
            lines.append((info.name, attributes, childInfo))
        lines.sort(key=lambda line: (line[0].upper() != "INBOX", line[0]))
        verb = b"LSUB" if lsub else b"LIST"
        for folderName, attributes, childInfo in lines:
            line = b'* %s %s "%s" %s' % (verb, _flagList(attributes), delimiter, self._encodeName(folderName))
            if childInfo:
                line += b" (" + childInfo.encode("ascii") + b")"
            self._send(line)
            if statusItems and "\\NonExistent" not in attributes and "\\Noselect" not in attributes:
                try:
                    status = await self.account.status(folderName)
                except NoSuchFolder:
                    continue
                self._send(self._statusLine(folderName, status, statusItems))
        return None

    def do_LSUB(self, tag: bytes, args: List[Any]) -> Any:
        return self.do_LIST(tag, args, lsub=True)

    async def do_STATUS(self, tag: bytes, args: List[Any]) -> Any:
        if len(args) != 2 or not isinstance(args[1], list):
            raise Bad("Syntax: STATUS mailbox (items)")
        name = self._folderName(args[0])
        items = _statusItems(args[1])
        try:
            status = await self.account.status(name)
        except (NoSuchFolder, BadFolderName):
            raise No("No such folder", NONEXISTENT)
        self._send(self._statusLine(name, status, items))
        return None

    def _statusLine(self, name: str, status: Any, items: List[bytes]) -> bytes:
        values = {
            b"MESSAGES": status.messages,
            b"UIDNEXT": status.uidNext,
            b"UIDVALIDITY": status.uidValidity,
            b"UNSEEN": status.unseen,
            b"DELETED": status.deleted,
            b"SIZE": status.size,
            b"RECENT": status.recent,
            b"HIGHESTMODSEQ": max(status.highestModSeq, 1),
            b"APPENDLIMIT": self.factory.limits.max_message_size,
        }
        if b"HIGHESTMODSEQ" in items:
            self.enableCondstore()
        body = b" ".join(b"%s %d" % (item, values[item]) for item in items)
        return b"* STATUS " + self._encodeName(name) + b" (" + body + b")"

    # --- APPEND --------------------------------------------------------------------

    def _appendStart(self, event: LiteralStart) -> None:
        """
        APPEND's message literal was announced: check what we can now,
        then stream it into the store as it arrives.
        """
        command = event.command
        tag = command.tag
        try:
            if self.state not in (State.AUTHENTICATED, State.SELECTED):
                raise Bad("Log in first")
            if self._appending is not None:
                raise Bad("One message per APPEND")
            name, flags, date = self._appendArguments(command.args)
            if event.size > self.factory.limits.max_message_size:
                raise No("Message too large (the limit is %d octets)" % (self.factory.limits.max_message_size,), TOOBIG)
            overQuota = _quota.refusal(self.factory.quotas, self.account.address, event.size)
            if overQuota is not None:
                # RFC 9208 §4.3: refused before the literal is read.
                raise No(overQuota.split("] ", 1)[-1], _quota.OVERQUOTA)
            receiver = self.account.append(name, flags, date)
        except IMAPError as e:
            self.reader.refuseLiteral()
            self._sendError(tag, e)
            return
        except Exception:
            log.failure("IMAP APPEND from {peer} failed", peer=self.peer)
            self.reader.refuseLiteral()
            self._sendError(tag, No("Internal server error, try again later", SERVERBUG))
            return
        self._appending = (tag, receiver)
        self.reader.streamLiteral()
        if event.synchronising:
            self._send(b"+ Ready for literal data")

    def _appendArguments(self, args: List[Any]) -> Tuple[str, FrozenSet[str], Optional[float]]:
        if not 1 <= len(args) <= 3:
            raise Bad("Syntax: APPEND mailbox [(flags)] [date-time] literal")
        name = self._folderName(args[0])
        flags: FrozenSet[str] = frozenset()
        date: Optional[float] = None
        for arg in args[1:]:
            if isinstance(arg, list) and not flags:
                flags = _parseFlags(arg)
            elif isinstance(arg, String) and date is None:
                try:
                    date = _fetch.parseInternalDate(arg.value)
                except ValueError:
                    raise Bad("Invalid date-time")
            else:
                raise Bad("Syntax: APPEND mailbox [(flags)] [date-time] literal")
        return name, frozenset(f for f in flags if f != "\\Recent"), date

    async def do_APPEND(self, tag: bytes, args: List[Any]) -> Any:
        appending, self._appending = self._appending, None
        if appending is None or not args or not isinstance(args[-1], LiteralStream):
            if appending is not None:
                appending[1].abort()
            raise Bad("Syntax: APPEND mailbox [(flags)] [date-time] literal")
        receiver = appending[1]
        if sum(isinstance(a, LiteralStream) for a in args) != 1:
            receiver.abort()
            raise Bad("One message per APPEND")
        try:
            result = await receiver.finish()
        except NoSuchFolder:
            raise No("No such folder", TRYCREATE)
        except BadFolderName:
            raise No("No such folder", TRYCREATE)
        uidValidity, uid = result
        if self.view is not None:
            self.view.dirty = True
        return "[APPENDUID %d %d] APPEND completed" % (uidValidity, uid)

    # --- selected -------------------------------------------------------------------

    def _requireView(self) -> SelectedView:
        if self.view is None:
            raise Bad("Select a folder first")
        return self.view

    def _requireWritable(self) -> SelectedView:
        view = self._requireView()
        if view.readOnly:
            raise No("The folder is read-only (EXAMINE)", CANNOT)
        return view

    def do_CHECK(self, tag: bytes, args: List[Any]) -> Any:
        _noArguments(args)
        self._requireView().dirty = True
        return None

    def do_UNSELECT(self, tag: bytes, args: List[Any]) -> Any:
        _noArguments(args)
        self._closeView()
        self.state = State.AUTHENTICATED
        return None

    async def do_CLOSE(self, tag: bytes, args: List[Any]) -> Any:
        _noArguments(args)
        view = self._requireView()
        if not view.readOnly:
            # RFC 9051 §6.4.1: expunge silently.
            try:
                await view.folder.expunge()
            except Exception:
                log.failure("IMAP CLOSE expunge failed for {peer}", peer=self.peer)
        self._closeView()
        self.state = State.AUTHENTICATED
        return None

    async def do_EXPUNGE(self, tag: bytes, args: List[Any], uid: bool = False) -> Any:
        view = self._requireWritable()
        uids = None
        if uid:
            if len(args) != 1:
                raise Bad("Syntax: UID EXPUNGE sequence-set")
            uids = view.resolve(_sequenceSet(args[0]), uid=True)
        else:
            _noArguments(args)
        removed = await view.folder.expunge(uids)
        if self.view is view:
            view.gone.update(u for u in removed if view.seqOf(u))
            await self._refresh(expunges=True)
        return None

    def do_UID_EXPUNGE(self, tag: bytes, args: List[Any]) -> Any:
        return self.do_EXPUNGE(tag, args, uid=True)

    async def do_COPY(self, tag: bytes, args: List[Any], uid: bool = False, move: bool = False) -> Any:
        view = self._requireWritable() if move else self._requireView()
        verb = "MOVE" if move else "COPY"
        if len(args) != 2:
            raise Bad("Syntax: %s sequence-set mailbox" % (verb,))
        seqset = self._sequenceArgument(args[0])
        target = self._folderName(args[1])
        uids = view.resolve(seqset, uid) if not isinstance(seqset, list) else seqset
        uids = [u for u in uids if u not in view.gone]
        if not uids:
            if uid:
                return "%s completed (nothing to do)" % (verb,)
            raise No("Messages were expunged", "EXPUNGEISSUED")
        if not move:
            await self._checkCopyQuota(view, uids)
        try:
            if move:
                uidValidity, pairs = await view.folder.move(uids, target)
            else:
                uidValidity, pairs = await view.folder.copy(uids, target)
        except (NoSuchFolder, BadFolderName):
            raise No("No such folder", TRYCREATE)
        code = ""
        if pairs:
            code = "[COPYUID %d %s %s] " % (
                uidValidity,
                _compactSet([p[0] for p in pairs]),
                _compactSet([p[1] for p in pairs]),
            )
        if move:
            # RFC 6851 §4.3: the COPYUID in an untagged OK before the EXPUNGEs.
            if code:
                self._send(b"* OK " + code.encode("ascii") + b"Moved")
            if self.view is view:
                view.gone.update(u for u, _ in pairs)
                await self._refresh(expunges=True)
            return "MOVE completed"
        return code + "COPY completed"

    async def _checkCopyQuota(self, view: SelectedView, uids: List[int]) -> None:
        """
        RFC 9208 §4.3: a COPY that would take the account past its quota
        is refused with C{OVERQUOTA}, before anything is copied.  (A MOVE
        stays within the account's one quota root: never refused.)
        """
        quotas = self.factory.quotas
        if quotas is None or not quotas.limitFor(self.account.address):
            return
        counting = quotas.count(self.account.address)
        if counting is not None:
            await counting  # a Maildir not counted yet: counted in a thread
        size = 0
        for u in uids:
            record = view.records.get(u)
            size += record.size if record is not None else 0
        overQuota = _quota.refusal(quotas, self.account.address, size, len(uids))
        if overQuota is not None:
            raise No(overQuota.split("] ", 1)[-1], _quota.OVERQUOTA)

    def do_MOVE(self, tag: bytes, args: List[Any]) -> Any:
        return self.do_COPY(tag, args, move=True)

    def do_UID_COPY(self, tag: bytes, args: List[Any]) -> Any:
        return self.do_COPY(tag, args, uid=True)

    def do_UID_MOVE(self, tag: bytes, args: List[Any]) -> Any:
        return self.do_COPY(tag, args, uid=True, move=True)

    def _sequenceArgument(self, token: Any) -> Any:
        """A sequence set, or C{$} (RFC 5182 SEARCHRES): the saved UIDs."""
        if isinstance(token, Atom) and token.value == b"$":
            return list(self.savedSearch or [])
        return _sequenceSet(token)

    async def do_STORE(self, tag: bytes, args: List[Any], uid: bool = False) -> Any:
        view = self._requireWritable()
        args = list(args)
        if len(args) < 3:
            raise Bad("Syntax: STORE sequence-set [(UNCHANGEDSINCE n)] (+|-)FLAGS[.SILENT] (flags)")
        seqset = self._sequenceArgument(args.pop(0))
        unchangedSince = None
        if isinstance(args[0], list):
            modifiers = args.pop(0)
            if len(modifiers) != 2 or not (isinstance(modifiers[0], Atom) and modifiers[0].isName(b"UNCHANGEDSINCE")):
                raise Bad("Unsupported STORE modifier")
            unchangedSince = _number(modifiers[1], allowZero=True)
            self.enableCondstore()
        if len(args) < 2 or not isinstance(args[0], Atom):
            raise Bad("Syntax: STORE sequence-set (+|-)FLAGS[.SILENT] (flags)")
        action = args[0].upper()
        mode = ""
        if action[:1] in (b"+", b"-"):
            mode = action[:1].decode("ascii")
            action = action[1:]
        silent = action.endswith(b".SILENT")
        if silent:
            action = action[: -len(b".SILENT")]
        if action != b"FLAGS":
            raise Bad("Syntax: STORE sequence-set (+|-)FLAGS[.SILENT] (flags)")
        flagArgs = args[1] if len(args) == 2 and isinstance(args[1], list) else args[1:]
        flags = _parseFlags(flagArgs)
        flags = frozenset(f for f in flags if f != "\\Recent")
        uids = view.resolve(seqset, uid) if not isinstance(seqset, list) else seqset
        uids = [u for u in uids if u not in view.gone]
        if not uids:
            return None
        changed, refused = await view.folder.setFlags(uids, flags, mode, unchangedSince)
        if self.view is not view:
            return None
        changedUids = set()
        lines = []
        lines.extend(self.keywordLines(changed))
        for record in changed:
            if record.uid in view.records:
                view.records[record.uid] = record
                changedUids.add(record.uid)
        for u in uids:
            seq = view.seqOf(u)
            if not seq:
                continue
            record = view.records[u]
            # RFC 9051 §6.4.6: FETCH FLAGS for each message unless .SILENT;
            # RFC 7162 §3.2: with UNCHANGEDSINCE, changed ones even if silent.
            if (not silent) or (unchangedSince is not None and u in changedUids):
                if u in changedUids or not silent:
                    lines.append(self._flagsResponse(seq, record, uid))
        if lines:
            self._write(b"\r\n".join(lines) + b"\r\n")
        if refused:
            refusedIds = sorted(refused) if uid else sorted(view.seqOf(u) for u in refused if view.seqOf(u))
            return "[MODIFIED %s] Conditional STORE failed for some" % (_compactSet(refusedIds),)
        return None

    def do_UID_STORE(self, tag: bytes, args: List[Any]) -> Any:
        return self.do_STORE(tag, args, uid=True)

    # --- FETCH --------------------------------------------------------------------------

    def do_FETCH(self, tag: bytes, args: List[Any], uid: bool = False) -> Any:
        view = self._requireView()
        if len(args) not in (2, 3):
            raise Bad("Syntax: FETCH sequence-set (items) [(CHANGEDSINCE n)]")
        seqset = self._sequenceArgument(args[0])
        try:
            items = _fetch.parseFetchAttributes(args[1])
        except _fetch.FetchSyntaxError as e:
            raise Bad(str(e))
        changedSince = None
        if len(args) == 3:
            modifiers = args[2]
            if not (
                isinstance(modifiers, list)
                and len(modifiers) == 2
                and isinstance(modifiers[0], Atom)
                and modifiers[0].isName(b"CHANGEDSINCE")
            ):
                raise Bad("Unsupported FETCH modifier")
            changedSince = _number(modifiers[1], allowZero=True)
            self.enableCondstore()
        names = {item.name for item in items}
        if "MODSEQ" in names:
            self.enableCondstore()
        if uid and "UID" not in names:
            items.insert(0, _fetch.FetchItem("UID"))
        if changedSince is not None and "MODSEQ" not in names:
            # RFC 7162 §3.3.1: CHANGEDSINCE implies MODSEQ.
            items.append(_fetch.FetchItem("MODSEQ"))
        uids = view.resolve(seqset, uid) if not isinstance(seqset, list) else seqset
        if changedSince is not None:
            uids = [u for u in uids if view.records[u].modSeq > changedSince]
        return ensureDeferred(self._fetch(view, uids, items))

    def do_UID_FETCH(self, tag: bytes, args: List[Any]) -> Any:
        return self.do_FETCH(tag, args, uid=True)

    async def _fetch(self, view: SelectedView, uids: List[int], items: List[_fetch.FetchItem]) -> Any:
        gate = self._producer = _OutputGate()
        self.transport.registerProducer(gate, True)
        try:
            return await _fetch.runFetch(self, view, uids, items, gate)
        except _fetch.UnknownEncoding:
            raise No("Cannot decode that part for BINARY", "UNKNOWN-CTE")
        finally:
            self._producer = None
            if not self._disconnected:
                self.transport.unregisterProducer()

    # --- SEARCH ---------------------------------------------------------------------------

    def do_SEARCH(self, tag: bytes, args: List[Any], uid: bool = False) -> Any:
        # RFC 9051 §6.4.4; RFC 4731 ESEARCH; RFC 7162 §3.4 MODSEQ.
        view = self._requireView()
        args = list(args)
        options: Optional[Set[bytes]] = None
        if args and isinstance(args[0], Atom) and args[0].isName(b"RETURN"):
            if len(args) < 2 or not isinstance(args[1], list):
                raise Bad("Syntax: SEARCH RETURN (options) criteria")
            options = set()
            for opt in args[1]:
                if not isinstance(opt, Atom) or opt.upper() not in (b"MIN", b"MAX", b"ALL", b"COUNT", b"SAVE"):
                    raise Bad("Unsupported SEARCH return option")
                options.add(opt.upper())
            if not options:
                options = {b"ALL"}
            args = args[2:]
        charset = None
        if args and isinstance(args[0], Atom) and args[0].isName(b"CHARSET"):
            if len(args) < 2 or astring(args[1]) is None:
                raise Bad("Syntax: SEARCH CHARSET name criteria")
            charset = astring(args[1]).decode("ascii", "replace")  # type: ignore[union-attr]
            if charset.upper() not in ("UTF-8", "US-ASCII"):
                raise No("Unsupported charset", "BADCHARSET (UTF-8 US-ASCII)")
            args = args[2:]
        if not args:
            raise Bad("Search criteria expected")
        try:
            criteria = search.compile(args, charset)
        except search.SearchError as e:
            if options and b"SAVE" in options:
                # RFC 5182 §2.1: a failed SEARCH ... SAVE empties $.
                self.savedSearch = []
            if "charset" in str(e).lower():
                raise No(str(e), "BADCHARSET (UTF-8 US-ASCII)")
            raise Bad(str(e))
        if options is None and self.rev2:
            options = {b"ALL"}
        return ensureDeferred(self._search(view, tag, criteria, uid, options))

    async def _search(self, view: SelectedView, tag: bytes, criteria: Any, uid: bool, options: Optional[Set[bytes]]) -> Any:
        needs = set(getattr(criteria, "needs", ()) or ())
        wantParsed = bool(needs - {"flags", "seq", "uid", "size", "date", "modseq", "internaldate"})
        wantBody = "body" in needs or "text" in needs
        folder = view.folder
        run = self.factory.run
        gone = view.gone
        numbered = [(seq, u) for seq, u in enumerate(view.uids, 1) if u not in gone]
        uids = [u for _, u in numbered]
        # The records straight from the folder state when the view shows it as is.
        shared = view.uids is view.records.uids and not view.records.extra
        messages = view.records.state.messages
        maxSeq = len(view.uids)
        maxUid = view.uids[-1] if view.uids else 0
        matched: List[int] = []
        highestModSeq = 0
        # A store that can open files in the thread that searches them (one
        # at a time, when a key asks for the body) saves a thread round trip
        # per message; otherwise fewer at once (file descriptors).
        openBlocking = getattr(folder, "openMessageBlocking", None) if wantBody else None
        # Otherwise header and body tests run in the thread pool, a batch per
        # call: large batches, few round trips.
        batchSize = 64 if wantBody and openBlocking is None else BATCH * 4 if wantParsed and not wantBody else BATCH
        for start in range(0, len(uids), batchSize):
            if self.view is not view:
                return None
            if start:
                await self.yieldToOthers()
            batch = uids[start : start + batchSize]
            batchNumbered = numbered[start : start + batchSize]
            parsedMap = await folder.parsed(batch) if wantParsed else {}
            files: Dict[int, Any] = {}
            if wantBody and openBlocking is None:
                # Opened together: one thread round trip each, not in turn.
                opened = await gatherResults(
                    [folder.openMessage(u).addErrback(lambda f: f.trap(MessageGone) and None) for u in batch]
                )
                files = {u: f for u, f in zip(batch, opened) if f is not None}
            contexts = []
            getRecord, recent = view.records.get, view.recent
            saved = self.savedSearch or []
            # \\Recent is shown in the flags only where a key may look.
            addRecent = ("flags" in needs or not needs) and not self.rev2
            sharedNow = shared and view.records.state.messages is messages and not view.records.extra
            for seq, u in batchNumbered:
                record = messages[seq - 1] if sharedNow else getRecord(u)
                if record is None:
                    continue
                if addRecent and u in recent:
                    record = attr.evolve(record, flags=record.flags | {"\\Recent"})
                parsed = parsedMap.get(u)
                if wantParsed and parsed is None:
                    continue
                if not wantBody:
                    body = _noBody
                elif openBlocking is not None:
                    body = _bodyGetter(search, None, parsed, functools.partial(openBlocking, u))
                else:
                    body = _bodyGetter(search, files.get(u), parsed)
                contexts.append(_SearchContext(seq, record, parsed, body, maxSeq, maxUid, saved))

            def matchAll(contexts: List[Any] = contexts) -> List[Any]:
                return [c for c in contexts if criteria.matches(c)]

            try:
                if wantParsed or wantBody:
                    hits = await run(matchAll)
                else:
                    hits = matchAll()
            finally:
                for f in files.values():
                    f.close()
            for c in hits:
                matched.append(c.record.uid)
                highestModSeq = max(highestModSeq, c.record.modSeq)
        if self.view is not view:
            return None
        numbers = matched if uid else [view.seqOf(u) for u in matched]
        usesModSeq = bool(getattr(criteria, "usesModSeq", False) or "modseq" in needs)
        if usesModSeq:
            self.enableCondstore()
        if options is None:
            line = b"* SEARCH" + b"".join(b" %d" % n for n in numbers)
            if usesModSeq and numbers:
                line += b" (MODSEQ %d)" % (highestModSeq,)
            self._send(line)
            return None
        if b"SAVE" in options:
            self.savedSearch = list(matched)
            if options == {b"SAVE"}:
                return None
        parts = [b'* ESEARCH (TAG "' + tag + b'")']
        if uid:
            parts.append(b"UID")
        if numbers:
            if b"MIN" in options:
                parts.append(b"MIN %d" % (min(numbers),))
            if b"MAX" in options:
                parts.append(b"MAX %d" % (max(numbers),))
            if b"ALL" in options:
                parts.append(b"ALL " + _compactSet(sorted(numbers)).encode("ascii"))
        if b"COUNT" in options:
            parts.append(b"COUNT %d" % (len(numbers),))
        if usesModSeq and numbers:
            if options & {b"MIN", b"MAX"} and not options & {b"ALL", b"COUNT"}:
                # RFC 7162 §3.4: the mod-sequence of the messages returned.
                chosen = set()
                pairs = list(zip(numbers, matched))
                if b"MIN" in options:
                    chosen.add(min(pairs)[1])
                if b"MAX" in options:
                    chosen.add(max(pairs)[1])
                highestModSeq = max(view.records[u].modSeq for u in chosen)
            parts.append(b"MODSEQ %d" % (highestModSeq,))
        self._send(b" ".join(parts))
        return None

    def do_UID_SEARCH(self, tag: bytes, args: List[Any]) -> Any:
        return self.do_SEARCH(tag, args, uid=True)

    # --- IDLE ----------------------------------------------------------------------------------

    def do_IDLE(self, tag: bytes, args: List[Any]) -> Any:
        # RFC 2177 / RFC 9051 §6.3.13.
        _noArguments(args)
        done: Deferred = Deferred()
        self._idling = done
        self._send(b"+ idling")

        def ended(line: bytes) -> None:
            self._idling = None
            if line.upper() != b"DONE":
                done.errback(Bad("Expected DONE"))
                return
            done.callback(None)

        self._lineWaiter = ended
        if self.view is not None and self.view.dirty:
            self._idleRefresh()
        return done


_NO_REPLY = object()


@attr.s(slots=True)
class _SearchContext:
    """What L{mailnet.imap.search} criteria test one message with."""

    seq: int = attr.ib()
    record: MessageRecord = attr.ib()
    parsed: Any = attr.ib()
    body: Callable[[], str] = attr.ib()
    maxSeq: int = attr.ib()
    maxUid: int = attr.ib()
    previousSearch: List[int] = attr.ib()


#: Decoded body text searched per message (BODY, TEXT).
MAX_SEARCH_TEXT = 10 * 1024 * 1024


def _noBody() -> str:
    return ""


def _bodyGetter(search: Any, f: Any, parsed: Any, opener: Optional[Callable[[], Any]] = None) -> Callable[[], str]:
    """
    @return: C{ctx.body} for one message: its decoded text, read once (called
        in a thread) from C{f}, or from the file C{opener} opens (blocking)
        and closes again at once; a message gone meanwhile has no text.
    """
    cache: List[str] = []

    def body() -> str:
        if parsed is None or (f is None and opener is None):
            return ""
        if not cache:
            if f is not None:
                f.seek(0)
                cache.append(search.bodyText(f, parsed, MAX_SEARCH_TEXT))
            else:
                try:
                    opened = opener()  # type: ignore[misc]
                except MessageGone:
                    opened = None
                if opened is None:
                    cache.append("")
                else:
                    with opened:
                        cache.append(search.bodyText(opened, parsed, MAX_SEARCH_TEXT))
        return cache[0]

    return body


def _keywords(state: FolderState) -> Set[str]:
    """@return: the keywords (not system flags) the messages of a state have."""
    keywords: Set[str] = set()
    for m in state.messages:
        for f in m.flags:
            if not f.startswith("\\"):
                keywords.add(f)
    return keywords


def _noArguments(args: List[Any]) -> None:
    if args:
        raise Bad("No arguments expected")


def _number(token: Any, allowZero: bool = False) -> int:
    if not isinstance(token, Atom) or not token.value.isdigit() or len(token.value) > 20:
        raise Bad("Number expected")
    value = int(token.value)
    if value == 0 and not allowZero:
        raise Bad("Number expected")
    return value


def _sequenceSet(token: Any) -> SequenceSet:
    if not isinstance(token, Atom):
        raise Bad("Sequence set expected")
    try:
        return parseSequenceSet(token.value)
    except SequenceError as e:
        raise Bad(str(e))


def _parseFlags(tokens: Any) -> FrozenSet[str]:
    if not isinstance(tokens, list):
        tokens = [tokens]
    flags = set()
    for token in tokens:
        if not isinstance(token, Atom) or not (_isValidFlag(token.value) or token.value.lower() == b"\\recent"):
            raise Bad("Invalid flag")
        flags.add("\\Recent" if token.value.lower() == b"\\recent" else _canonicalFlag(token.value))
    if len(flags) > 100:
        raise Bad("Too many flags")
    return frozenset(flags)


_STATUS_ITEMS = frozenset(
    [b"MESSAGES", b"UIDNEXT", b"UIDVALIDITY", b"UNSEEN", b"DELETED", b"SIZE", b"RECENT", b"HIGHESTMODSEQ", b"APPENDLIMIT"]
)


def _statusItems(tokens: List[Any]) -> List[bytes]:
    items = []
    for token in tokens:
        if not isinstance(token, Atom) or token.upper() not in _STATUS_ITEMS:
            raise Bad("Invalid STATUS item")
        if token.upper() not in items:
            items.append(token.upper())
    if not items:
        raise Bad("Empty STATUS item list")
    return items


def _compactSet(numbers: List[int]) -> str:
    """@return: C{1:3,7} for C{[1, 2, 3, 7]} (order kept)."""
    out: List[str] = []
    runs: List[List[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    for start, end in runs:
        out.append("%d" % start if start == end else "%d:%d" % (start, end))
    return ",".join(out)


def _sameFolder(a: str, b: str) -> bool:
    if a.upper() == "INBOX" and b.upper() == "INBOX":
        return True
    return a == b


def decodeName(raw: bytes, utf8: bool) -> str:
    """
    A mailbox name from the wire: UTF-8 (IMAP4rev2), else modified UTF-7
    (RFC 3501 §5.1.3; 8-bit names are taken as UTF-8).  C{INBOX} in any
    case is the inbox.

    @raise IMAPError: BAD for a name that is neither.
    """
    try:
        if utf8 or any(c >= 0x80 for c in raw):
            name = raw.decode("utf-8")
        else:
            name = raw.decode("imap4-utf-7")
    except (UnicodeDecodeError, ValueError):
        raise No("Invalid mailbox name encoding", CANNOT)
    if name.upper() == "INBOX":
        return "INBOX"
    if name.upper().startswith("INBOX" + DELIMITER):
        return "INBOX" + name[5:]
    return name


def encodeName(name: str, utf8: bool) -> bytes:
    """The inverse of L{decodeName}."""
    if utf8:
        return name.encode("utf-8")
    return name.encode("imap4-utf-7")


#: Longest LIST pattern (reference and mailbox together).
MAX_PATTERN = 1024


def _patternMatcher(pattern: str) -> Callable[[str], bool]:
    """
    RFC 9051 §6.3.9: C{*} matches anything, C{%} anything but the
    delimiter; C{INBOX} matches in any case.  Matching is by sets of
    positions, not a regular expression, so that no pattern can make it
    take more than (pattern length) x (name length) steps.

    @raise IMAPError: the pattern is too long.
    """
    if len(pattern) > MAX_PATTERN:
        raise Bad("Mailbox pattern too long")
    # Runs of wildcards mean what their widest member means.
    collapsed: List[str] = []
    for c in pattern:
        if c in "*%" and collapsed and collapsed[-1] in "*%":
            if c == "*":
                collapsed[-1] = "*"
            continue
        collapsed.append(c)
    patterns = ["".join(collapsed)]
    if patterns[0][:5].upper() == "INBOX":
        patterns.append("INBOX" + patterns[0][5:])

    def matchOne(pat: str, name: str) -> bool:
        end = len(name)
        positions = {0}
        for c in pat:
            if c == "*":
                positions = set(range(min(positions), end + 1))
            elif c == "%":
                grown = set()
                for p in positions:
                    grown.add(p)
                    while p < end and name[p] != DELIMITER:
                        p += 1
                        grown.add(p)
                positions = grown
            else:
                positions = {p + 1 for p in positions if p < end and name[p] == c}
            if not positions:
                return False
        return end in positions

    def match(name: str) -> bool:
        return any(matchOne(pat, name) for pat in patterns)

    return match


# Which commands are valid in which state (RFC 9051 §6).
_ANY = frozenset([State.NOT_AUTHENTICATED, State.AUTHENTICATED, State.SELECTED])
_NOT_AUTH = frozenset([State.NOT_AUTHENTICATED])
_AUTH = frozenset([State.AUTHENTICATED, State.SELECTED])
_SELECTED = frozenset([State.SELECTED])

_COMMANDS: Dict[bytes, Tuple[FrozenSet[State], Callable[..., Any]]] = {
    b"CAPABILITY": (_ANY, IMAPServer.do_CAPABILITY),
    b"NOOP": (_ANY, IMAPServer.do_NOOP),
    b"LOGOUT": (_ANY, IMAPServer.do_LOGOUT),
    b"ID": (_ANY, IMAPServer.do_ID),
    b"STARTTLS": (_NOT_AUTH, IMAPServer.do_STARTTLS),
    b"LOGIN": (_NOT_AUTH, IMAPServer.do_LOGIN),
    b"AUTHENTICATE": (_NOT_AUTH, IMAPServer.do_AUTHENTICATE),
    b"ENABLE": (_AUTH, IMAPServer.do_ENABLE),
    b"SELECT": (_AUTH, IMAPServer.do_SELECT),
    b"EXAMINE": (_AUTH, IMAPServer.do_EXAMINE),
    b"CREATE": (_AUTH, IMAPServer.do_CREATE),
    b"DELETE": (_AUTH, IMAPServer.do_DELETE),
    b"RENAME": (_AUTH, IMAPServer.do_RENAME),
    b"SUBSCRIBE": (_AUTH, IMAPServer.do_SUBSCRIBE),
    b"UNSUBSCRIBE": (_AUTH, IMAPServer.do_UNSUBSCRIBE),
    b"LIST": (_AUTH, IMAPServer.do_LIST),
    b"LSUB": (_AUTH, IMAPServer.do_LSUB),
    b"NAMESPACE": (_AUTH, IMAPServer.do_NAMESPACE),
    b"GETQUOTAROOT": (_AUTH, IMAPServer.do_GETQUOTAROOT),
    b"GETQUOTA": (_AUTH, IMAPServer.do_GETQUOTA),
    b"SETQUOTA": (_AUTH, IMAPServer.do_SETQUOTA),
    b"STATUS": (_AUTH, IMAPServer.do_STATUS),
    b"APPEND": (_AUTH, IMAPServer.do_APPEND),
    b"IDLE": (_AUTH, IMAPServer.do_IDLE),
    b"CHECK": (_SELECTED, IMAPServer.do_CHECK),
    b"CLOSE": (_SELECTED, IMAPServer.do_CLOSE),
    b"UNSELECT": (_SELECTED, IMAPServer.do_UNSELECT),
    b"EXPUNGE": (_SELECTED, IMAPServer.do_EXPUNGE),
    b"SEARCH": (_SELECTED, IMAPServer.do_SEARCH),
    b"FETCH": (_SELECTED, IMAPServer.do_FETCH),
    b"STORE": (_SELECTED, IMAPServer.do_STORE),
    b"COPY": (_SELECTED, IMAPServer.do_COPY),
    b"MOVE": (_SELECTED, IMAPServer.do_MOVE),
}

_UID_COMMANDS: Dict[bytes, Tuple[FrozenSet[State], Callable[..., Any]]] = {
    b"FETCH": (_SELECTED, IMAPServer.do_UID_FETCH),
    b"STORE": (_SELECTED, IMAPServer.do_UID_STORE),
    b"SEARCH": (_SELECTED, IMAPServer.do_UID_SEARCH),
    b"COPY": (_SELECTED, IMAPServer.do_UID_COPY),
    b"MOVE": (_SELECTED, IMAPServer.do_UID_MOVE),
    b"EXPUNGE": (_SELECTED, IMAPServer.do_UID_EXPUNGE),
}

# RFC 9051 §7.5.1: no EXPUNGE during FETCH, STORE or SEARCH (their UID
# forms may have them).
_NO_EXPUNGES = frozenset([b"FETCH", b"STORE", b"SEARCH"])
# Commands after which nothing is announced (the session is gone or the
# folder closed).
_NO_UPDATES = frozenset([b"LOGOUT", b"CLOSE", b"UNSELECT", b"STARTTLS", b"SELECT", b"EXAMINE"])


class IMAPFactory(Factory):
    """
    Builds L{IMAPServer}s for one listener.

    @param hostname: the name in the greeting.
    @param authenticator: logs users in (L{IMailAccount} avatars).
    @param limits: C{idle_timeout} (before login), C{max_connections}
        (for this factory), C{max_errors}, C{max_message_size} (APPEND).
    @param tlsOptions: context factory for STARTTLS; L{None}: not offered.
    @param implicitTLS: the listener is wrapped in TLS (port 993).
    @param allowPlaintextAuth: allow LOGIN/AUTHENTICATE without TLS.
    @param clock: an L{IReactorTime}; the global reactor if L{None}.
    @param run: runs a blocking callable off the reactor thread, returning
        a L{Deferred} (reading message files); at once if L{None}.
    @param quotas: the L{mailnet.quota.Quotas}: QUOTA is offered and
        APPEND and COPY refused with C{OVERQUOTA} past a user's quota;
        L{None}: not.

    @ivar connections: sessions open now.
    @ivar sessions: the open L{IMAPServer}s (for L{shutdown}).
    """

    protocol = IMAPServer  # type: ignore[assignment]

    def __init__(
        self,
        *,
        hostname: str,
        authenticator: IAuthenticator,
        limits: Limits,
        tlsOptions: Any = None,
        implicitTLS: bool = False,
        allowPlaintextAuth: bool = False,
        clock: Any = None,
        run: Optional[Callable[..., Deferred]] = None,
        quotas: Any = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.hostname = hostname
        self.authenticator = authenticator
        self.limits = limits
        self.tlsOptions = tlsOptions
        self.implicitTLS = implicitTLS
        self.allowPlaintextAuth = allowPlaintextAuth
        self.clock = clock
        self.run = run if run is not None else (lambda f, *a, **kw: maybeDeferred(f, *a, **kw))
        self.connections = 0
        self.sessions: Set[IMAPServer] = set()
        # mailnet.quota.Quotas: QUOTA (RFC 9208), APPEND's and COPY's OVERQUOTA; None: not offered.
        self.quotas = quotas

    def refusalLine(self, perClient: bool) -> bytes:
        """
        The answer to a connection that the connection limits refuse (see
        L{mailnet.limits.LimitingFactory}): an untagged BYE instead of the
        greeting (RFC 9051 §7.1.5), C{[UNAVAILABLE]} (RFC 5530).
        """
        if perClient:
            return b"* BYE [UNAVAILABLE] Too many connections from your address\r\n"
        return b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n"

    def buildProtocol(self, addr: Any) -> IMAPServer:  # type: ignore[override]
        return self.protocol(self, overloaded=self.connections >= self.limits.max_connections)

    def shutdown(self) -> None:
        """
        Say BYE to every session (the server is stopping).
        """
        for session in list(self.sessions):
            session.shutdown()


class _OutputGate:
    """
    A streaming producer registered with the transport while a command
    writes much (FETCH): the transport pauses it when its buffer is full,
    and the command waits for L{wait} before writing more.
    """

    def __init__(self) -> None:
        self.paused = False
        self.stopped = False
        self._waiters: List[Deferred] = []

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def stopProducing(self) -> None:
        self.stopped = True
        self.paused = False
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def wait(self) -> Deferred:
        if not self.paused or self.stopped:
            return succeed(None)
        d: Deferred = Deferred()
        self._waiters.append(d)
        return d
