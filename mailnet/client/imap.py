# -*- test-case-name: tests.test_client_imap -*-
"""
Reading and filing mail over IMAP4 (RFC 3501, RFC 9051) from Twisted.

L{IMAPSession.connect} connects, secures the connection (STARTTLS, RFC
3501 §6.2.1, or implicit TLS, RFC 8314) and returns a session whose methods
each return a Deferred: L{IMAPSession.login}, L{IMAPSession.folders},
L{IMAPSession.status}, L{IMAPSession.select}, L{IMAPSession.search},
L{IMAPSession.summaries}, L{IMAPSession.fetchMessage},
L{IMAPSession.store}, L{IMAPSession.copy}, L{IMAPSession.move},
L{IMAPSession.expunge}, L{IMAPSession.append}, L{IMAPSession.idle},
L{IMAPSession.logout}.

Our own protocol class rather than C{twisted.mail.imap4.IMAP4Client}:
that one keeps a whole response in memory whatever its size, has no
bound on literal announcements or nesting, and knows nothing of
LITERAL+, MOVE or SASL-IR.  Here every response from the server goes
through L{ResponseReader} (bounded line length, literal size, response
size, nesting depth and token count) before anything looks at it, and a
large message is fetched in partial pieces (C{BODY.PEEK[]<offset.length>},
RFC 3501 §6.4.5), each handed to the caller as it arrives, so it is never
held whole unless the caller wants it so.

Message IDs are UIDs.  Folder names are given and returned as L{str};
on the wire they are modified UTF-7 (RFC 3501 §5.1.3), unless the
server accepted C{UTF8=ACCEPT}.  Failures are
L{mailnet.errors.ClientError}s.
"""

import base64
import collections
import re
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import attr
from twisted.internet import defer
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure

from mailnet.client.tls import (
    ServerEndpoint,
    TLSMode,
    Transcript,
    VerifyingCreator,
    clientError,
    noGreeting,
    shownLine,
    wrongService,
)
from mailnet.errors import (
    AuthenticationFailed,
    ClientError,
    ConnectFailed,
    NoSuchMessage,
    PlaintextRefused,
    ServerError,
    ServerTimeout,
    TLSFailed,
    TLSUnavailable,
    WrongService,
)

# --- limits on what the server may send -----------------------------------

#: Longest line (between literals) of one response.
MAX_LINE = 8 * 1024 * 1024
#: Largest literal announced.  Messages are fetched in L{CHUNK} pieces, so
#: only a server sending what we did not ask for comes near it.
MAX_LITERAL = 64 * 1024 * 1024
#: Largest response, lines and literals together.
MAX_RESPONSE = 80 * 1024 * 1024
#: Deepest nesting of parenthesised lists (BODYSTRUCTURE is the deepest
#: thing we ask for, and we do not ask for it).
MAX_DEPTH = 64
#: Most tokens in one response (a SEARCH result of a huge folder).
MAX_TOKENS = 4_000_000
#: Partial fetch size for message bodies.
CHUNK = 1024 * 1024


class ProtocolError(ClientError):
    """{host} sent something that is not IMAP: {reason}"""


class NoIMAP(ConnectFailed):
    """{host} port {port} did not greet as an IMAP server (it said {greeting}); check --imap-port (usually 143 with --tls starttls, 993 with --tls implicit)"""


class ServerBye(ConnectFailed):
    """{host} closed the IMAP session: {reply}"""


class NoSuchFolder(ClientError):
    """{host} has no folder {name!r} ({reply})"""


class NoSuchUID(NoSuchMessage):
    """there is no message with UID {uid} in {folder}"""


class CommandFailed(ServerError):
    """{host} answered {command} with: {reply}"""


class _Unparsable(Exception):
    """Raised by the tokenizer; turned into L{ProtocolError} by the protocol."""


# --- modified UTF-7 (RFC 3501 §5.1.3) -------------------------------------


def encodeFolderName(name: str) -> bytes:
    """
    @return: C{name} in modified UTF-7: printable ASCII as itself (C{&} as
        C{&-}), anything else as C{&}modified BASE64 of UTF-16BE C{-}.
    """
    out: List[bytes] = []
    pending: List[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append(b"&" + base64.b64encode(raw).rstrip(b"=").replace(b"/", b",") + b"-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append(b"&-" if char == "&" else char.encode("ascii"))
        else:
            pending.append(char)
    flush()
    return b"".join(out)


_SHIFTED = re.compile(rb"&([A-Za-z0-9+,]*)-")


def decodeFolderName(raw: bytes) -> str:
    """
    @return: the name a modified UTF-7 C{raw} stands for.  A name that is
        not valid modified UTF-7 (some servers send UTF-8) is decoded as
        UTF-8, with anything undecodable replaced, never an error.
    """
    if b"&" not in raw:
        return raw.decode("utf-8", "replace")
    parts: List[str] = []
    position = 0
    for match in _SHIFTED.finditer(raw):
        plain = raw[position : match.start()]
        if b"&" in plain:
            return raw.decode("utf-8", "replace")
        parts.append(plain.decode("ascii", "replace"))
        body = match.group(1)
        if not body:
            parts.append("&")
        else:
            data = body.replace(b",", b"/")
            data += b"=" * (-len(data) % 4)
            try:
                parts.append(base64.b64decode(data, validate=True).decode("utf-16-be"))
            except (ValueError, UnicodeDecodeError):
                return raw.decode("utf-8", "replace")
        position = match.end()
    rest = raw[position:]
    if b"&" in rest:
        return raw.decode("utf-8", "replace")
    parts.append(rest.decode("ascii", "replace"))
    return "".join(parts)


# --- reading responses ------------------------------------------------------


@attr.s(auto_attribs=True)
class Response:
    """
    One server response.

    @ivar tag: C{b"*"}, C{b"+"} or the tag of a command.
    @ivar status: C{OK}, C{NO}, C{BAD}, C{BYE}, C{PREAUTH} (upper case) for
        a status response, else L{None}.
    @ivar code: the response code's tokens (C{[UIDVALIDITY 3]} is
        C{[b"UIDVALIDITY", b"3"]}), or L{None}.
    @ivar text: the human-readable text of a status or continuation.
    @ivar tokens: a data response's tokens after the tag: atoms and strings
        as L{bytes}, NIL as L{None}, lists as L{list}.
    """

    tag: bytes
    status: Optional[bytes] = None
    code: Optional[List[Any]] = None
    text: str = ""
    tokens: List[Any] = attr.ib(factory=list)

    @property
    def number(self) -> Optional[int]:
        """The leading number of C{* n EXISTS} and the like."""
        if self.tokens and isinstance(self.tokens[0], bytes) and self.tokens[0].isdigit():
            return int(self.tokens[0])
        return None

    @property
    def kind(self) -> bytes:
        """C{EXISTS}, C{FETCH}, C{LIST}, ... (upper case), or the status."""
        if self.status is not None:
            return self.status
        first = self.tokens[1] if self.number is not None and len(self.tokens) > 1 else (self.tokens[0] if self.tokens else b"")
        return first.upper() if isinstance(first, bytes) else b""

    def reply(self) -> str:
        """The response as a person may see it (escaped and cut)."""
        head = (self.status or b"").decode("ascii", "replace")
        return (head + " " + self.text).strip()


_LITERAL_AT_END = re.compile(rb"\{(\d{1,20})\+?\}\Z")


class ResponseReader:
    """
    Bytes from the server in, whole responses out: each a list of
    C{(line, literal)} segments (the literal that follows a line ending in
    C{{n}}, or L{None} for the last line).  Limits are checked as the
    bytes arrive, before anything is kept: a C{{99999999999}} is refused as
    soon as it is read.

    @ivar onLiteralBytes: called with the count of literal octets as they
        arrive (a progress bar).
    """

    def __init__(self, maxLine: int = MAX_LINE, maxLiteral: int = MAX_LITERAL, maxResponse: int = MAX_RESPONSE) -> None:
        self.maxLine = maxLine
        self.maxLiteral = maxLiteral
        self.maxResponse = maxResponse
        self._buffer = bytearray()
        self._segments: List[Tuple[bytes, Optional[bytes]]] = []
        self._line: Optional[bytes] = None
        self._need = 0
        self._size = 0
        self.onLiteralBytes: Optional[Callable[[int], None]] = None

    def buffered(self) -> int:
        """Octets received and not yet part of a whole response."""
        return len(self._buffer)

    def midResponse(self) -> bool:
        """Whether a response has begun and not ended."""
        return bool(self._segments) or self._line is not None or bool(self._buffer)

    def feed(self, data: bytes) -> List[List[Tuple[bytes, Optional[bytes]]]]:
        """
        @return: the responses completed by C{data}.
        @raise _Unparsable: a limit was passed.
        """
        self._buffer += data
        done: List[List[Tuple[bytes, Optional[bytes]]]] = []
        while True:
            if self._line is not None:
                if len(self._buffer) < self._need:
                    return done
                literal = bytes(self._buffer[: self._need])
                del self._buffer[: self._need]
                if self.onLiteralBytes is not None:
                    self.onLiteralBytes(len(literal))
                self._segments.append((self._line, literal))
                self._line = None
                continue
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > self.maxLine:
                    raise _Unparsable("a line longer than %d octets" % (self.maxLine,))
                return done
            if end > self.maxLine:
                raise _Unparsable("a line longer than %d octets" % (self.maxLine,))
            line = bytes(self._buffer[:end]).rstrip(b"\r")
            del self._buffer[: end + 1]
            self._size += len(line) + 2
            match = _LITERAL_AT_END.search(line)
            if match is not None:
                size = int(match.group(1))
                if size > self.maxLiteral:
                    raise _Unparsable("a literal of %d octets announced (at most %d accepted)" % (size, self.maxLiteral))
                self._size += size
                if self._size > self.maxResponse:
                    raise _Unparsable("a response larger than %d octets" % (self.maxResponse,))
                self._line, self._need = line, size
                continue
            if self._size > self.maxResponse:
                raise _Unparsable("a response larger than %d octets" % (self.maxResponse,))
            self._segments.append((line, None))
            done.append(self._segments)
            self._segments, self._size = [], 0


_STATUS = {b"OK", b"NO", b"BAD", b"BYE", b"PREAUTH"}
_ATOM_END = b' ()"{\r\n'


def parseResponse(segments: Sequence[Tuple[bytes, Optional[bytes]]], maxDepth: int = MAX_DEPTH, maxTokens: int = MAX_TOKENS) -> Response:
    """
    Turn one response (from L{ResponseReader}) into a L{Response}.

    @raise _Unparsable: it is not a response.
    """
    first = segments[0][0]
    tag, _, rest = first.partition(b" ")
    if not tag:
        raise _Unparsable("an empty tag")
    if tag == b"+":
        return Response(tag=tag, text=_text(rest))
    word, _, after = rest.partition(b" ")
    if word.upper() in _STATUS and len(segments) == 1:
        code = None
        if after.startswith(b"["):
            close = after.find(b"]")
            if close < 0:
                raise _Unparsable("a response code without its ']'")
            code = _Tokenizer([(after[1:close], None)], maxDepth, maxTokens).all()
            after = after[close + 1 :].lstrip(b" ")
        return Response(tag=tag, status=word.upper(), code=code, text=_text(after))
    tokens = _Tokenizer([(rest, segments[0][1])] + list(segments[1:]), maxDepth, maxTokens).all()
    return Response(tag=tag, tokens=tokens)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


class _Tokenizer:
    """Tokens of one response's segments: atoms, strings, literals, lists."""

    def __init__(self, segments: Sequence[Tuple[bytes, Optional[bytes]]], maxDepth: int, maxTokens: int) -> None:
        self._segments = list(segments)
        self._index = 0
        self._position = 0
        self._maxDepth = maxDepth
        self._budget = maxTokens

    def all(self) -> List[Any]:
        top: List[Any] = []
        stack: List[List[Any]] = [top]
        while True:
            line, literal = self._segments[self._index]
            if self._position >= len(line):
                if literal is not None:
                    raise _Unparsable("a literal where none was expected")
                if self._index + 1 < len(self._segments):
                    raise _Unparsable("a line break inside a response")
                break
            char = line[self._position : self._position + 1]
            if char == b" ":
                self._position += 1
                continue
            self._budget -= 1
            if self._budget < 0:
                raise _Unparsable("too many items in one response")
            if char == b"(":
                if len(stack) > self._maxDepth:
                    raise _Unparsable("lists nested deeper than %d" % (self._maxDepth,))
                child: List[Any] = []
                stack[-1].append(child)
                stack.append(child)
                self._position += 1
            elif char == b")":
                if len(stack) == 1:
                    raise _Unparsable("an unbalanced ')'")
                stack.pop()
                self._position += 1
            elif char == b'"':
                stack[-1].append(self._quoted(line))
            elif char == b"{":
                match = _LITERAL_AT_END.match(line, self._position)
                if match is None or literal is None:
                    raise _Unparsable("a malformed literal")
                stack[-1].append(literal)
                self._index += 1
                self._position = 0
                if self._index >= len(self._segments):
                    raise _Unparsable("a response that ends in a literal")
            else:
                stack[-1].append(self._atom(line))
        if len(stack) != 1:
            raise _Unparsable("an unterminated list")
        return top

    def _quoted(self, line: bytes) -> bytes:
        out = bytearray()
        position = self._position + 1
        while position < len(line):
            char = line[position]
            if char == 0x5C and position + 1 < len(line):  # backslash
                out.append(line[position + 1])
                position += 2
            elif char == 0x22:
                self._position = position + 1
                return bytes(out)
            else:
                out.append(char)
                position += 1
        raise _Unparsable("an unterminated quoted string")

    def _atom(self, line: bytes) -> Optional[bytes]:
        start = position = self._position
        while position < len(line):
            char = line[position : position + 1]
            if char == b"[":
                # BODY[HEADER.FIELDS (FROM TO)]: a section is part of the atom.
                close = line.find(b"]", position)
                if close < 0:
                    raise _Unparsable("a '[' without its ']'")
                position = close + 1
                continue
            if char in _ATOM_END or char == b")":
                break
            position += 1
        self._position = position
        atom = line[start:position]
        if not atom:
            raise _Unparsable("an unexpected character %s" % (shownLine(line[start : start + 1]),))
        return None if atom.upper() == b"NIL" else atom


# --- writing commands -------------------------------------------------------


class Atom(bytes):
    """An argument sent as it is (a flag, a search key, a sequence set)."""


class Literal(bytes):
    """An argument always sent as a literal (a message for APPEND)."""


_QUOTABLE = re.compile(rb"\A[\x20-\x7e]*\Z")


def _appendArgument(segments: List[bytes], value: Any) -> None:
    """
    Add one argument's wire form to C{segments}: the command split where a
    literal's data must wait for the server's continuation request (every
    segment but the last ends in C{{n}}; the next one starts with the data).
    """
    if isinstance(value, Atom):
        segments[-1] += bytes(value)
        return
    if isinstance(value, list):
        segments[-1] += b"("
        for index, item in enumerate(value):
            if index:
                segments[-1] += b" "
            _appendArgument(segments, item)
        segments[-1] += b")"
        return
    data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    if not isinstance(value, Literal) and len(data) < 1000 and _QUOTABLE.match(data):
        segments[-1] += b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        return
    segments[-1] += b"{%d}" % (len(data),)
    segments.append(data)


def commandSegments(name: str, args: Sequence[Any], literalPlus: bool = False) -> List[bytes]:
    """
    @return: the lines of a command (without tag and CRLF), one per wait
        for a continuation request; a single one with LITERAL+ (RFC 7888).
    """
    segments = [name.encode("ascii")]
    for arg in args:
        segments[-1] += b" "
        _appendArgument(segments, arg)
    if literalPlus and len(segments) > 1:
        segments = [b"\r\n".join([s[:-1] + b"+}" for s in segments[:-1]] + [segments[-1]])]
    return segments


def uidSet(uids: Iterable[int]) -> bytes:
    """C{[1, 2, 3, 7]} as C{1:3,7}."""
    ordered = sorted(set(uids))
    ranges: List[bytes] = []
    index = 0
    while index < len(ordered):
        start = end = ordered[index]
        while index + 1 < len(ordered) and ordered[index + 1] == end + 1:
            index += 1
            end = ordered[index]
        ranges.append(b"%d" % (start,) if start == end else b"%d:%d" % (start, end))
        index += 1
    return b",".join(ranges)


def parseUIDSet(raw: bytes, limit: int = 10_000_000) -> List[int]:
    """C{1:3,7} as C{[1, 2, 3, 7]} (at most C{limit} of them)."""
    out: List[int] = []
    for part in raw.split(b","):
        low, _, high = part.partition(b":")
        if not low.isdigit() or (high and not high.isdigit()):
            raise _Unparsable("a bad UID set")
        a, b = int(low), int(high or low)
        a, b = min(a, b), max(a, b)
        if len(out) + (b - a + 1) > limit:
            raise _Unparsable("a UID set too large")
        out.extend(range(a, b + 1))
    return out


# --- the protocol ------------------------------------------------------------


@attr.s(auto_attribs=True, eq=False)
class _Command:
    name: str
    pieces: List[bytes]
    deferred: defer.Deferred
    untagged: List[Response] = attr.ib(factory=list)
    tag: bytes = b""
    #: Called with each continuation request, once the pieces are sent
    #: (AUTHENTICATE without SASL-IR, IDLE).
    onContinue: Optional[Callable[[Response], None]] = None
    timed: bool = True
    masked: bool = False
    #: Whether untagged responses are kept for the result (not during IDLE,
    #: which may last for hours).
    collect: bool = True


class IMAPClientProtocol(Protocol):
    """
    One IMAP connection: tagged commands one at a time, untagged
    responses collected for the command they came during (and handed to
    L{onUntagged}, for IDLE), the reply timeout on an injected clock.
    """

    def __init__(self, endpoint: ServerEndpoint, transcript: Optional[Transcript], clock: Any) -> None:
        self.endpoint = endpoint
        self.transcript = transcript
        self.clock = clock
        self.reader = ResponseReader()
        self.greeted: defer.Deferred = defer.Deferred()
        self.closed: defer.Deferred = defer.Deferred()
        self.greeting: Optional[Response] = None
        self.firstLine: Optional[bytes] = None
        self.secure = False
        self.literalPlus = False
        self.onUntagged: Optional[Callable[[Response], None]] = None
        self._queue: Deque[_Command] = collections.deque()
        self._current: Optional[_Command] = None
        self._next = 0
        self._timer: Any = None
        self._error: Optional[BaseException] = None
        self._bye: Optional[Response] = None
        self._lost = False
        self.more = False

    # -- connection --

    def connectionMade(self) -> None:
        self._arm(self.endpoint.firstTimeout)

    def dataReceived(self, data: bytes) -> None:
        if self._error is not None:
            return
        try:
            responses = self.reader.feed(data)
            for index, segments in enumerate(responses):
                if self.greeting is None:
                    self.firstLine = segments[0][0]
                    try:
                        response = parseResponse(segments)
                    except _Unparsable:
                        self._notIMAP()
                        return
                else:
                    response = parseResponse(segments)
                self._show(segments)
                #: Whether more follows in this same read (after a STARTTLS
                #: OK: an injection attempt).
                self.more = index + 1 < len(responses) or bool(self.reader.buffered())
                self._received(response)
                if self._error is not None:
                    return
        except _Unparsable as e:
            if self.greeting is None:
                self.firstLine = bytes(self.reader._buffer[:80])
                self._notIMAP()
                return
            self._fail(ProtocolError(host=self.endpoint.host, reason=str(e)))

    def _notIMAP(self) -> None:
        line = self.firstLine or b""
        self._fail(wrongService(self.endpoint, "imap", line) or NoIMAP(host=self.endpoint.host, port=self.endpoint.port, greeting=shownLine(line)))

    def _show(self, segments: Sequence[Tuple[bytes, Optional[bytes]]]) -> None:
        if self.transcript is None:
            return
        for line, literal in segments:
            self.transcript("S", line.decode("utf-8", "replace"))
            if literal is not None:
                self.transcript("S", "(%d octets)" % (len(literal),))

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Any = None) -> None:
        self._lost = True
        self._disarm()
        error = self._error
        if error is None and self._bye is not None:
            error = ServerBye(host=self.endpoint.host, reply=self._bye.reply())
        if error is None and self.reader.midResponse() and self.greeting is not None:
            error = ProtocolError(host=self.endpoint.host, reason="the connection ended in the middle of a response")
        if error is None:
            error = clientError(reason, self.endpoint, getattr(self, "creator", None)) if reason is not None else None
        if error is None or not isinstance(error, BaseException):
            error = ConnectFailed(host=self.endpoint.host, port=self.endpoint.port, reason="the server closed the connection")
        failure = Failure(error)
        if not self.greeted.called:
            self.greeted.errback(failure)
        pending = ([self._current] if self._current is not None else []) + list(self._queue)
        self._current = None
        self._queue.clear()
        for command in pending:
            command.deferred.errback(failure)
        self.closed.callback(None)

    # -- timers --

    def _arm(self, seconds: Optional[float] = None) -> None:
        self._disarm()
        seconds = self.endpoint.timeout if seconds is None else seconds
        self._timer = self.clock.callLater(seconds, self._timedOut, seconds)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timedOut(self, seconds: float) -> None:
        self._timer = None
        if self.greeting is None and self.firstLine is None:
            self._fail(noGreeting(self.endpoint, seconds))
        else:
            self._fail(ServerTimeout(host=self.endpoint.host, port=self.endpoint.port, seconds="%g" % (seconds,)))

    # -- responses --

    def _received(self, response: Response) -> None:
        if self.greeting is None:
            self._disarm()
            self.greeting = response
            if response.tag != b"*" or response.status not in (b"OK", b"PREAUTH", b"BYE"):
                self._notIMAP()
                return
            if response.status == b"BYE":
                self._fail(ServerBye(host=self.endpoint.host, reply=response.reply()))
                return
            self.greeted.callback(response)
            return
        command = self._current
        if response.tag == b"+":
            if command is None:
                self._fail(ProtocolError(host=self.endpoint.host, reason="a continuation request with no command waiting"))
                return
            if command.pieces:
                self._sendPiece(command)
            elif command.onContinue is not None:
                if not command.timed:
                    self._disarm()
                command.onContinue(response)
            else:
                self._fail(ProtocolError(host=self.endpoint.host, reason="an unexpected continuation request"))
            return
        if response.tag == b"*":
            if response.status == b"BYE":
                self._bye = response
            if command is not None and command.collect:
                command.untagged.append(response)
                if command.timed:
                    self._arm()
            if self.onUntagged is not None:
                self.onUntagged(response)
            return
        if command is None or response.tag != command.tag:
            self._fail(ProtocolError(host=self.endpoint.host, reason="a reply to a command never sent (%s)" % (shownLine(response.tag),)))
            return
        self._disarm()
        self._current = None
        command.deferred.callback((response, command.untagged))
        self._sendNext()

    # -- commands --

    def command(
        self,
        name: str,
        *args: Any,
        onContinue: Optional[Callable[[Response], None]] = None,
        timed: bool = True,
        masked: bool = False,
    ) -> defer.Deferred:
        """
        Send C{name} with C{args} (see L{_argument}) when the commands
        before it are done.

        @return: Deferred firing with C{(tagged response, untagged
            responses)} whatever the status; failing only when the
            connection fails.
        """
        if self._lost or self._error is not None:
            return defer.fail(self._error or ConnectFailed(host=self.endpoint.host, port=self.endpoint.port, reason="the connection is closed"))
        command = _Command(
            name=name,
            pieces=commandSegments(name, args, self.literalPlus),
            deferred=defer.Deferred(),
            onContinue=onContinue,
            timed=timed,
            masked=masked,
            collect=onContinue is None or timed,
        )
        self._queue.append(command)
        if self._current is None:
            self._sendNext()
        return command.deferred

    def _sendNext(self) -> None:
        if self._current is not None or not self._queue or self._lost:
            return
        command = self._current = self._queue.popleft()
        self._next += 1
        command.tag = b"m%d" % (self._next,)
        command.pieces[0] = command.tag + b" " + command.pieces[0]
        self._sendPiece(command)

    def _sendPiece(self, command: _Command) -> None:
        piece = command.pieces.pop(0)
        if self.transcript is not None:
            shown = piece.decode("utf-8", "replace")
            if command.masked:
                # The tag, the verb and its first word (a login name or a
                # mechanism); never what follows, nor a literal's data.
                shown = " ".join(shown.split(" ")[:3]) + " ****" if shown.startswith(command.tag.decode()) else "****"
            elif len(shown) > 200:
                shown = shown[:200] + "... (%d octets)" % (len(piece),)
            self.transcript("C", shown)
        self.transport.write(piece + b"\r\n")  # type: ignore[union-attr]
        self._arm()

    def sendLine(self, line: bytes, shown: Optional[str] = None) -> None:
        """A line inside a command (C{DONE}, a SASL response)."""
        if self.transcript is not None:
            self.transcript("C", shown if shown is not None else line.decode("utf-8", "replace"))
        self.transport.write(line + b"\r\n")  # type: ignore[union-attr]
        self._arm()


class _Factory(ClientFactory):
    def __init__(self, build: Callable[[], IMAPClientProtocol]) -> None:
        self._build = build

    def buildProtocol(self, addr: Any) -> IMAPClientProtocol:
        protocol = self._build()
        protocol.factory = self  # type: ignore[attr-defined]
        return protocol


# --- results ------------------------------------------------------------------


@attr.s(frozen=True, auto_attribs=True)
class Folder:
    """One folder from LIST."""

    name: str
    delimiter: Optional[str]
    attributes: Tuple[str, ...]

    @property
    def specialUse(self) -> Optional[str]:
        """C{\\Sent}, C{\\Trash} ... (RFC 6154), or L{None}; INBOX is C{inbox}."""
        for a in self.attributes:
            if a.lower() in _SPECIAL_USES:
                return a
        return None

    @property
    def selectable(self) -> bool:
        return not any(a.lower() in ("\\noselect", "\\nonexistent") for a in self.attributes)


_SPECIAL_USES = {"\\all", "\\archive", "\\drafts", "\\flagged", "\\junk", "\\sent", "\\trash"}


@attr.s(auto_attribs=True)
class Selected:
    """What SELECT or EXAMINE said about a folder."""

    name: str
    exists: int = 0
    uidValidity: Optional[int] = None
    uidNext: Optional[int] = None
    readOnly: bool = False


@attr.s(frozen=True, auto_attribs=True)
class MessageInfo:
    """One message's UID, flags, size, arrival and header section."""

    uid: int
    flags: Tuple[str, ...]
    size: int
    internalDate: str
    headers: bytes


def _int(value: Any) -> Optional[int]:
    if isinstance(value, bytes) and value.isdigit() and len(value) <= 20:
        return int(value)
    return None


def _fetchItems(response: Response) -> Optional[Dict[bytes, Any]]:
    """The C{name value} pairs of a FETCH response, names upper-cased."""
    if response.kind != b"FETCH" or len(response.tokens) < 3 or not isinstance(response.tokens[2], list):
        return None
    items = response.tokens[2]
    out: Dict[bytes, Any] = {}
    for index in range(0, len(items) - 1, 2):
        name = items[index]
        if isinstance(name, bytes):
            out[name.upper()] = items[index + 1]
    return out


# --- the session --------------------------------------------------------------


def _deferred(f: Callable[..., Any]) -> Callable[..., defer.Deferred]:
    def wrapper(*args: Any, **kwargs: Any) -> defer.Deferred:
        return defer.ensureDeferred(f(*args, **kwargs))

    wrapper.__name__ = f.__name__
    wrapper.__doc__ = f.__doc__
    return wrapper


class IMAPSession:
    """
    One IMAP conversation.  Make it with L{IMAPSession.connect}.

    @ivar capabilities: what the server offers now (upper case).
    @ivar selected: the folder selected, or L{None}.
    """

    def __init__(self, protocol: IMAPClientProtocol, endpoint: ServerEndpoint, creator: Optional[VerifyingCreator]) -> None:
        self.protocol = protocol
        self.endpoint = endpoint
        self._creator = creator
        self.capabilities: Set[bytes] = set()
        self.selected: Optional[Selected] = None
        self.utf8 = False

    @classmethod
    @_deferred
    async def connect(cls, reactor: Any, endpoint: ServerEndpoint, transcript: Optional[Transcript] = None) -> "IMAPSession":
        """
        Connect, read the greeting and, in C{starttls} mode, switch to TLS
        with STARTTLS; a server that does not offer it is an error, never a
        reason to continue in the clear.

        @return: (a Deferred firing with) an L{IMAPSession}.
        """
        creator = endpoint.creator()

        def build() -> IMAPClientProtocol:
            protocol = IMAPClientProtocol(endpoint, transcript, reactor)
            protocol.creator = creator  # type: ignore[attr-defined]
            return protocol

        try:
            protocol: IMAPClientProtocol = await endpoint.endpoint(reactor, creator).connect(_Factory(build))  # type: ignore[assignment]
            greeting = await protocol.greeted
        except ClientError:
            raise
        except Exception as e:
            raise clientError(e, endpoint, creator)
        session = cls(protocol, endpoint, creator)
        if endpoint.tls is TLSMode.implicit:
            protocol.secure = True
        session._capabilitiesFrom(greeting.code)
        if endpoint.tls is TLSMode.starttls:
            if not session.capabilities:
                await session._refreshCapabilities()
            if b"STARTTLS" not in session.capabilities:
                session.abort()
                raise TLSUnavailable(host=endpoint.host, port=endpoint.port, command="STARTTLS")
            tagged, _ = await protocol.command("STARTTLS")
            if tagged.status != b"OK":
                session.abort()
                raise TLSFailed(host=endpoint.host, port=endpoint.port, reason="STARTTLS refused: " + tagged.reply())
            if protocol.more:
                # RFC 3501 §6.2.1 / RFC 2595 §3.1: anything after the OK in
                # the same plaintext read is an injection attempt.
                protocol._fail(TLSFailed(host=endpoint.host, port=endpoint.port,
                                         reason="the server sent unencrypted data after its STARTTLS reply (an injection attempt?)"))
                await protocol.closed
                assert protocol._error is not None
                raise protocol._error
            assert creator is not None
            protocol.transport.startTLS(creator)  # type: ignore[union-attr]
            protocol.secure = True
            session.capabilities = set()
        if not session.capabilities:
            await session._refreshCapabilities()
        protocol.literalPlus = b"LITERAL+" in session.capabilities
        return session

    def _capabilitiesFrom(self, code: Optional[List[Any]]) -> bool:
        if code and isinstance(code[0], bytes) and code[0].upper() == b"CAPABILITY":
            self.capabilities = {c.upper() for c in code[1:] if isinstance(c, bytes)}
            return True
        return False

    async def _refreshCapabilities(self) -> None:
        tagged, untagged = await self._ok("CAPABILITY")
        for response in untagged:
            if response.kind == b"CAPABILITY":
                self.capabilities = {c.upper() for c in response.tokens[1:] if isinstance(c, bytes)}
        self._capabilitiesFrom(tagged.code)

    async def _run(self, name: str, *args: Any, **kwargs: Any) -> Tuple[Response, List[Response]]:
        try:
            return await self.protocol.command(name, *args, **kwargs)
        except ClientError:
            raise
        except Exception as e:
            raise clientError(e, self.endpoint, self._creator)

    async def _ok(self, name: str, *args: Any, what: Optional[str] = None, **kwargs: Any) -> Tuple[Response, List[Response]]:
        tagged, untagged = await self._run(name, *args, **kwargs)
        if tagged.status != b"OK":
            raise CommandFailed(host=self.endpoint.host, command=what or name, reply=tagged.reply())
        return tagged, untagged

    def _name(self, folder: str) -> bytes:
        return folder.encode("utf-8") if self.utf8 else encodeFolderName(folder)

    def _decode(self, raw: Any) -> str:
        if not isinstance(raw, bytes):
            return ""
        return raw.decode("utf-8", "replace") if self.utf8 else decodeFolderName(raw)

    # -- authentication --

    @_deferred
    async def login(self, username: str, password: str) -> None:
        """
        Log in with SASL PLAIN (RFC 4616; with SASL-IR, RFC 4959, in one
        round trip) when offered, else LOGIN.  The password goes only over
        TLS unless the endpoint allows plaintext.

        @raise AuthenticationFailed: the server said NO.
        """
        if not self.protocol.secure and not self.endpoint.allowPlaintext:
            raise PlaintextRefused(host=self.endpoint.host, user=username)
        if self.protocol.greeting is not None and self.protocol.greeting.status == b"PREAUTH":
            return
        if b"LOGINDISABLED" in self.capabilities and b"AUTH=PLAIN" not in self.capabilities:
            raise AuthenticationFailed(host=self.endpoint.host, user=username, reply="the server allows no login on this connection (LOGINDISABLED)")
        if b"AUTH=PLAIN" in self.capabilities:
            token = base64.b64encode(b"\0" + username.encode("utf-8") + b"\0" + password.encode("utf-8"))
            if b"SASL-IR" in self.capabilities:
                tagged, untagged = await self._run("AUTHENTICATE", Atom(b"PLAIN"), Atom(token), masked=True)
            else:
                def respond(_: Response) -> None:
                    self.protocol.sendLine(token, "****")

                tagged, untagged = await self._run("AUTHENTICATE", Atom(b"PLAIN"), onContinue=respond)
        else:
            tagged, untagged = await self._run("LOGIN", username, password, masked=True)
        if tagged.status != b"OK":
            raise AuthenticationFailed(host=self.endpoint.host, user=username, reply=tagged.reply())
        if not self._capabilitiesFrom(tagged.code):
            await self._refreshCapabilities()
        if b"UTF8=ACCEPT" in self.capabilities:
            tagged, untagged = await self._run("ENABLE", Atom(b"UTF8=ACCEPT"))
            self.utf8 = tagged.status == b"OK" and any(
                r.kind == b"ENABLED" and b"UTF8=ACCEPT" in [t.upper() for t in r.tokens[1:] if isinstance(t, bytes)] for r in untagged
            )
        self.protocol.literalPlus = b"LITERAL+" in self.capabilities

    # -- folders --

    @_deferred
    async def folders(self) -> List[Folder]:
        """@return: every folder (LIST "" "*"), INBOX first."""
        _, untagged = await self._ok("LIST", "", "*")
        found = []
        for response in untagged:
            tokens = response.tokens
            if response.kind != b"LIST" or len(tokens) < 4 or not isinstance(tokens[1], list):
                continue
            attributes = tuple(a.decode("ascii", "replace") for a in tokens[1] if isinstance(a, bytes))
            delimiter = tokens[2].decode("ascii", "replace") if isinstance(tokens[2], bytes) else None
            name = self._decode(tokens[3])
            if name.upper() == "INBOX":
                name = "INBOX"
            found.append(Folder(name, delimiter, attributes))
        found.sort(key=lambda f: (f.name != "INBOX", f.name.lower()))
        return found

    @_deferred
    async def status(self, folder: str, items: Sequence[str] = ("MESSAGES", "UNSEEN", "UIDVALIDITY", "UIDNEXT")) -> Dict[str, int]:
        """@return: STATUS items of a folder, by upper-case name."""
        tagged, untagged = await self._run("STATUS", self._name(folder), [Atom(i.encode("ascii")) for i in items])
        if tagged.status != b"OK":
            raise NoSuchFolder(host=self.endpoint.host, name=folder, reply=tagged.reply())
        out: Dict[str, int] = {}
        for response in untagged:
            if response.kind == b"STATUS" and len(response.tokens) >= 3 and isinstance(response.tokens[-1], list):
                values = response.tokens[-1]
                for index in range(0, len(values) - 1, 2):
                    number = _int(values[index + 1])
                    if isinstance(values[index], bytes) and number is not None:
                        out[values[index].decode("ascii", "replace").upper()] = number
        return out

    @_deferred
    async def create(self, folder: str) -> None:
        await self._ok("CREATE", self._name(folder), what="CREATE %s" % (folder,))

    @_deferred
    async def rename(self, folder: str, new: str) -> None:
        await self._ok("RENAME", self._name(folder), self._name(new), what="RENAME %s" % (folder,))

    @_deferred
    async def delete(self, folder: str) -> None:
        await self._ok("DELETE", self._name(folder), what="DELETE %s" % (folder,))

    @_deferred
    async def select(self, folder: str = "INBOX", readOnly: bool = False) -> Selected:
        """SELECT (or EXAMINE) a folder.  @return: a L{Selected}."""
        tagged, untagged = await self._run("EXAMINE" if readOnly else "SELECT", self._name(folder))
        if tagged.status != b"OK":
            self.selected = None
            raise NoSuchFolder(host=self.endpoint.host, name=folder, reply=tagged.reply())
        selected = Selected(name=folder, readOnly=readOnly)
        for response in untagged + [tagged]:
            if response.kind == b"EXISTS" and response.number is not None:
                selected.exists = response.number
            code = response.code or []
            if len(code) >= 2 and isinstance(code[0], bytes):
                if code[0].upper() == b"UIDVALIDITY":
                    selected.uidValidity = _int(code[1])
                elif code[0].upper() == b"UIDNEXT":
                    selected.uidNext = _int(code[1])
            if response.tag != b"*" and code and isinstance(code[0], bytes) and code[0].upper() == b"READ-ONLY":
                selected.readOnly = True
        self.selected = selected
        return selected

    # -- messages --

    @_deferred
    async def search(self, *criteria: Any, charset: Optional[str] = None) -> List[int]:
        """
        UID SEARCH.  @param criteria: arguments (L{Atom}s for keys, L{str}
        for strings).  @return: the UIDs, ascending.
        """
        args: List[Any] = []
        if charset is not None and not self.utf8:
            args += [Atom(b"CHARSET"), Atom(charset.encode("ascii"))]
        tagged, untagged = await self._ok("UID SEARCH", *(args + list(criteria)), what="SEARCH")
        uids: Set[int] = set()
        for response in untagged:
            if response.kind == b"SEARCH":
                uids.update(n for n in map(_int, response.tokens[1:]) if n is not None)
            elif response.kind == b"ESEARCH":
                tokens = response.tokens
                for index, token in enumerate(tokens[:-1]):
                    if isinstance(token, bytes) and token.upper() == b"ALL" and isinstance(tokens[index + 1], bytes):
                        try:
                            uids.update(parseUIDSet(tokens[index + 1]))
                        except _Unparsable as e:
                            raise ProtocolError(host=self.endpoint.host, reason=str(e))
        return sorted(uids)

    @_deferred
    async def summaries(self, uids: Sequence[int]) -> List[MessageInfo]:
        """
        @return: UID, flags, size, INTERNALDATE and the main header fields
            of each message in C{uids} that still exists (in the order of
            C{uids}).
        """
        if not uids:
            return []
        fields = Atom(b"BODY.PEEK[HEADER.FIELDS (FROM TO CC SUBJECT DATE MESSAGE-ID)]")
        _, untagged = await self._ok(
            "UID FETCH", Atom(uidSet(uids)), [Atom(b"UID"), Atom(b"FLAGS"), Atom(b"RFC822.SIZE"), Atom(b"INTERNALDATE"), fields], what="FETCH"
        )
        found: Dict[int, MessageInfo] = {}
        for response in untagged:
            items = _fetchItems(response)
            if items is None or _int(items.get(b"UID")) is None:
                continue
            headers = b""
            for name, value in items.items():
                if name.startswith(b"BODY[HEADER.FIELDS") and isinstance(value, bytes):
                    headers = value
            flags = items.get(b"FLAGS")
            date = items.get(b"INTERNALDATE")
            info = MessageInfo(
                uid=_int(items[b"UID"]) or 0,
                # \Recent says only which session saw a message first (gone in IMAP4rev2).
                flags=tuple(f.decode("utf-8", "replace") for f in flags if isinstance(f, bytes) and f.upper() != b"\\RECENT")
                if isinstance(flags, list)
                else (),
                size=_int(items.get(b"RFC822.SIZE")) or 0,
                internalDate=date.decode("ascii", "replace") if isinstance(date, bytes) else "",
                headers=headers,
            )
            found[info.uid] = info
        return [found[u] for u in uids if u in found]

    @_deferred
    async def fetchMessage(
        self,
        uid: int,
        sink: Optional[Callable[[bytes], Any]] = None,
        peek: bool = True,
        progress: Optional[Callable[[int], None]] = None,
        chunk: Optional[int] = None,
    ) -> Optional[bytes]:
        """
        Fetch one whole message in pieces of C{chunk} octets (partial
        FETCH), each handed to C{sink} (which may return a Deferred: the
        next piece is asked for when it fires).  Without C{sink} the pieces
        are joined and returned.  Without C{peek} the message is marked
        C{\\Seen} (a last C{+FLAGS (\\Seen)}).

        @raise NoSuchUID: no such message in the selected folder.
        """
        chunk = chunk or CHUNK
        pieces: List[bytes] = []
        offset = 0
        folder = self.selected.name if self.selected is not None else "the folder"
        self.protocol.reader.onLiteralBytes = progress
        try:
            while True:
                item = b"BODY.PEEK[]<%d.%d>" % (offset, chunk)
                _, untagged = await self._ok("UID FETCH", Atom(b"%d" % (uid,)), [Atom(b"UID"), Atom(item)], what="FETCH")
                data: Optional[bytes] = None
                for response in untagged:
                    items = _fetchItems(response)
                    if items is None or _int(items.get(b"UID")) != uid:
                        continue
                    for name, value in items.items():
                        if name.startswith(b"BODY[]"):
                            data = value if isinstance(value, bytes) else b""
                if data is None:
                    if offset == 0:
                        raise NoSuchUID(uid=uid, folder=folder)
                    break
                if len(data) > chunk:
                    raise ProtocolError(host=self.endpoint.host, reason="a partial FETCH answered with more than was asked for")
                if sink is None:
                    pieces.append(data)
                elif data:
                    await defer.maybeDeferred(sink, data)
                offset += len(data)
                if len(data) < chunk:
                    break
        finally:
            self.protocol.reader.onLiteralBytes = None
        if not peek:
            await self.store([uid], "+", ["\\Seen"])
        return b"".join(pieces) if sink is None else None

    @_deferred
    async def store(self, uids: Sequence[int], operation: str, flags: Sequence[str]) -> None:
        """C{UID STORE uids {+,-,}FLAGS.SILENT (flags)}."""
        verb = {"+": b"+FLAGS.SILENT", "-": b"-FLAGS.SILENT", "": b"FLAGS.SILENT"}[operation]
        await self._ok("UID STORE", Atom(uidSet(uids)), Atom(verb), [Atom(f.encode("utf-8")) for f in flags], what="STORE")

    @_deferred
    async def copy(self, uids: Sequence[int], folder: str) -> None:
        await self._copy("UID COPY", uids, folder)

    async def _copy(self, verb: str, uids: Sequence[int], folder: str) -> None:
        tagged, _ = await self._run(verb, Atom(uidSet(uids)), self._name(folder))
        if tagged.status != b"OK":
            code = tagged.code[0].upper() if tagged.code and isinstance(tagged.code[0], bytes) else b""
            if code == b"TRYCREATE" or code == b"NONEXISTENT":
                raise NoSuchFolder(host=self.endpoint.host, name=folder, reply=tagged.reply())
            raise CommandFailed(host=self.endpoint.host, command=verb.split()[-1], reply=tagged.reply())

    @_deferred
    async def move(self, uids: Sequence[int], folder: str) -> None:
        """UID MOVE (RFC 6851), or COPY, STORE \\Deleted and expunge."""
        if b"MOVE" in self.capabilities:
            await self._copy("UID MOVE", uids, folder)
            return
        await self._copy("UID COPY", uids, folder)
        await self.store(uids, "+", ["\\Deleted"])
        await self.expunge(uids)

    @_deferred
    async def expunge(self, uids: Sequence[int]) -> None:
        """Remove the messages C{uids} (already C{\\Deleted}); UID EXPUNGE when the server has UIDPLUS."""
        if b"UIDPLUS" in self.capabilities:
            await self._ok("UID EXPUNGE", Atom(uidSet(uids)), what="EXPUNGE")
        else:
            await self._ok("EXPUNGE")

    @_deferred
    async def append(self, folder: str, data: bytes, flags: Sequence[str] = ()) -> None:
        """APPEND a message to a folder (with C{flags})."""
        tagged, _ = await self._run("APPEND", self._name(folder), [Atom(f.encode("utf-8")) for f in flags], Literal(data))
        if tagged.status != b"OK":
            code = tagged.code[0].upper() if tagged.code and isinstance(tagged.code[0], bytes) else b""
            if code in (b"TRYCREATE", b"NONEXISTENT"):
                raise NoSuchFolder(host=self.endpoint.host, name=folder, reply=tagged.reply())
            raise CommandFailed(host=self.endpoint.host, command="APPEND", reply=tagged.reply())

    def idle(self, onUntagged: Callable[[Response], None]) -> "Idling":
        """
        Start IDLE (RFC 2177): C{onUntagged} gets each untagged response
        (C{* n EXISTS} ...) until L{Idling.done}.

        @return: an L{Idling}; its C{started} fires when the server
            accepted IDLE.
        """
        idling = Idling(self)
        self.protocol.onUntagged = onUntagged

        def started(_: Response) -> None:
            if not idling.started.called:
                idling.started.callback(None)

        d: defer.Deferred = defer.ensureDeferred(self._run("IDLE", onContinue=started, timed=False))

        def ended(result: Tuple[Response, List[Response]]) -> None:
            self.protocol.onUntagged = None
            tagged = result[0]
            if tagged.status != b"OK":
                idling.error = CommandFailed(host=self.endpoint.host, command="IDLE", reply=tagged.reply())
            if not idling.started.called:
                idling.started.errback(idling.error or CommandFailed(host=self.endpoint.host, command="IDLE", reply=tagged.reply()))

        def failed(reason: Failure) -> None:
            self.protocol.onUntagged = None
            idling.error = reason.value
            if not idling.started.called:
                idling.started.errback(reason)

        d.addCallback(ended)
        d.addErrback(failed)
        idling.ended = d
        return idling

    @_deferred
    async def noop(self) -> List[Response]:
        _, untagged = await self._ok("NOOP")
        return untagged

    @_deferred
    async def logout(self) -> None:
        """LOGOUT, then wait for the connection to close."""
        try:
            await self._run("LOGOUT")
        except ClientError:
            pass
        self.protocol._bye = None
        if self.protocol.transport is not None:
            self.protocol.transport.loseConnection()
        await self.protocol.closed

    def abort(self) -> defer.Deferred:
        """Close at once.  @return: Deferred firing at close."""
        if self.protocol.transport is not None and not self.protocol._lost:
            self.protocol.transport.abortConnection()  # type: ignore[attr-defined]
        return self.protocol.closed


class Idling:
    """
    An IDLE in progress (L{IMAPSession.idle}).

    @ivar ended: fires (never fails) when IDLE ended; then C{error} is why
        it ended other than by L{done} (the connection was lost ...), or
        L{None}.
    """

    def __init__(self, session: IMAPSession) -> None:
        self.session = session
        self.error: Optional[BaseException] = None
        self.started: defer.Deferred = defer.Deferred()
        self.ended: defer.Deferred = defer.Deferred()
        self._done = False

    def done(self) -> defer.Deferred:
        """Send DONE.  @return: Deferred firing when the server ended IDLE."""
        if not self._done:
            self._done = True
            if not self.session.protocol._lost:
                self.session.protocol.sendLine(b"DONE")
        return self.ended


__all__ = [
    "IMAPSession",
    "ResponseReader",
    "parseResponse",
    "encodeFolderName",
    "decodeFolderName",
    "ProtocolError",
    "NoSuchFolder",
    "NoSuchUID",
    "WrongService",
]
