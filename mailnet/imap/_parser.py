# -*- test-case-name: tests.test_imap_parser -*-
"""
IMAP commands from bytes: a tag, a verb and argument tokens, with literals,
under hard limits.  Pure code, no Twisted.

The tokens (what a command handler, and L{mailnet.imap.search.compile},
receive as arguments):

  - L{Atom}: an atom (RFC 9051 §4.1), its octets as sent, case kept:
    C{Atom(b"FLAGS")}, C{Atom(b"1:5,7")}, C{Atom(b"\\\\Seen")},
    C{Atom(b"$")}, C{Atom(b"NIL")}.  Compare names with L{Atom.upper} or
    L{Atom.isName} (IMAP names are case-insensitive).  C{NIL} is an atom
    too: the commands that accept nil check for it (there is no L{None}
    token), since an unquoted NIL may also be a mailbox name.
  - Sequence sets are atoms: C{Atom(b"1:5,7,*")}; pass C{atom.value} to
    L{mailnet.imap._sequence.parseSequenceSet}.
  - An atom containing C{[} runs to the matching C{]} (spaces, parentheses
    and quoted strings inside included) and then through an optional
    C{<origin.count>}: C{BODY.PEEK[HEADER.FIELDS (From To)]<0.100>} is
    C{Atom(b"BODY.PEEK[HEADER.FIELDS (From To)]<0.100>")}, raw as sent; the
    FETCH code splits it (L{parseFetchAttribute}).  No literal is allowed
    inside brackets.
  - L{String}: a quoted string or a literal, its contents (quotes and
    backslash escapes removed; a literal's octets as sent):
    C{String(b"hello world")}.  C{String.literal} says which form it was
    (ignored by equality).  An astring argument is an L{Atom} or a
    L{String}: L{astring} gives its octets either way.
  - A parenthesised list is a Python L{list} of tokens (nested lists for
    nested parentheses): C{(\\\\Seen \\\\Flagged)} is
    C{[Atom(b"\\\\Seen"), Atom(b"\\\\Flagged")]}; C{()} is C{[]}.
  - L{LiteralStream}: only as the message argument of APPEND: the literal
    is not held in memory but handed to the command handler in chunks as it
    arrives; the token carries its announced size.

A command is a L{Command}: C{tag} (bytes), C{verb} (bytes, upper-cased),
C{args} (a L{list} of tokens).  C{UID FETCH 1:* FLAGS} has verb C{b"UID"}
and args C{[Atom(b"FETCH"), Atom(b"1:*"), Atom(b"FLAGS")]}.
"""

import re
from typing import Any, List, Optional, Tuple, Union

import attr


@attr.s(frozen=True, slots=True)
class Atom:
    """
    An atom, its octets as sent.
    """

    value: bytes = attr.ib()

    def upper(self) -> bytes:
        """
        @return: the atom upper-cased (ASCII), for comparing names.
        """
        return self.value.upper()

    def isName(self, name: bytes) -> bool:
        """
        @return: whether this atom is C{name}, ignoring case.
        """
        return self.value.upper() == name.upper()


@attr.s(frozen=True, slots=True)
class String:
    """
    A quoted string or a literal: its contents.

    @ivar literal: whether it was sent as a literal.
    """

    value: bytes = attr.ib()
    literal: bool = attr.ib(default=False, eq=False)


@attr.s(frozen=True, slots=True)
class LiteralStream:
    """
    APPEND's message literal, streamed to the handler instead of collected.

    @ivar size: the octets announced.
    @ivar binary: whether it was a C{~{n}} literal8 (RFC 3516).
    """

    size: int = attr.ib()
    binary: bool = attr.ib(default=False)


Token = Union[Atom, String, LiteralStream, List["Token"]]


@attr.s(frozen=True, slots=True)
class Command:
    """
    One parsed command.
    """

    tag: bytes = attr.ib()
    verb: bytes = attr.ib()
    args: List[Token] = attr.ib(factory=list)


def astring(token: object) -> Optional[bytes]:
    """
    @return: the octets of an astring argument (an L{Atom} or a L{String}),
        or L{None} if C{token} is neither.
    """
    if isinstance(token, (Atom, String)):
        return token.value
    return None


# --- the reader ---------------------------------------------------------------

#: A command line (one segment between literals) may be this long.
MAX_LINE = 64 * 1024

#: A literal collected in memory (anything but APPEND's message).
MAX_LITERAL = 64 * 1024

#: Parentheses may nest this deep.
MAX_DEPTH = 100

#: Tokens in one command.
MAX_TOKENS = 10000

#: The octets of a command held in memory (lines and collected literals).
MAX_COMMAND = 1024 * 1024

#: Atoms that may be followed by a bracketed section (RFC 9051 §6.4.5,
#: RFC 3516 BINARY).
_SECTION_ATOMS = frozenset([b"BODY", b"BODY.PEEK", b"BINARY", b"BINARY.PEEK", b"BINARY.SIZE"])

# Octets that end an atom: SP, the list and string specials, CTLs, DEL.
_ATOM_END = frozenset(b' ()"{') | frozenset(range(0x20)) | {0x7F}

_ATOM_OR_SECTION_END = _ATOM_END | {0x5B}
_LITERAL_SPEC = re.compile(rb"(~?)\{([0-9]{1,20})(\+?)\}\Z")
_TAG_END = frozenset(b' ()"{%*+') | frozenset(range(0x20)) | {0x7F}


@attr.s(frozen=True, slots=True)
class ParseError:
    """
    An event: the command could not be read; the server answers C{BAD}
    (with C{tag}, or untagged if the tag was not read).  The rest of the
    command has been (or will be) skipped.

    @ivar code: a response code (C{b"TOOBIG"}) or L{None}.
    @ivar fatal: the connection must be closed (after an untagged BYE).
    """

    tag: Optional[bytes] = attr.ib()
    text: str = attr.ib()
    code: Optional[bytes] = attr.ib(default=None)
    fatal: bool = attr.ib(default=False)


@attr.s(frozen=True, slots=True)
class Continue:
    """
    An event: a synchronising literal within the limits was announced; the
    server sends a continuation request (C{+ ...}) for it.
    """


@attr.s(frozen=True, slots=True)
class LiteralStart:
    """
    An event: APPEND's message literal was announced.  The server calls
    L{CommandReader.streamLiteral} (sending C{+} first if C{synchronising})
    to receive it as L{LiteralData} events, or L{CommandReader.refuseLiteral}.

    @ivar command: the command so far (tag, verb, the arguments before the
        literal, in order; lists complete).
    """

    command: Command = attr.ib()
    size: int = attr.ib()
    synchronising: bool = attr.ib()
    binary: bool = attr.ib()


@attr.s(frozen=True, slots=True)
class LiteralData:
    """
    An event: octets of a streamed literal.
    """

    data: bytes = attr.ib()


class _Refused(Exception):
    def __init__(self, text: str, code: Optional[bytes] = None, fatal: bool = False) -> None:
        self.text = text
        self.code = code
        self.fatal = fatal


class CommandReader:
    """
    Reads commands from a byte stream, pausing at literals.

    Feed it what arrives (L{feed}), then take events with L{next} until it
    returns L{None}: a L{Command}, a L{ParseError}, a L{Continue}, a
    L{LiteralStart} then L{LiteralData}s.  Memory is bounded by the limits
    whatever the input: an over-long line is skipped to its end, a
    synchronising literal over the limit is refused before it is sent, and
    a non-synchronising one is read and thrown away (or, past
    C{maxDiscard}, the connection is given up).

    @param maxStreamed: the largest literal L{streamLiteral} may be asked
        for; bigger ones are L{ParseError}s at once.
    @param maxDiscard: the largest over-limit non-synchronising literal
        read and thrown away; past it the error is fatal.
    """

    def __init__(
        self,
        maxLine: int = MAX_LINE,
        maxLiteral: int = MAX_LITERAL,
        maxDepth: int = MAX_DEPTH,
        maxTokens: int = MAX_TOKENS,
        maxCommand: int = MAX_COMMAND,
        maxDiscard: int = 64 * 1024 * 1024,
    ) -> None:
        self.maxLine = maxLine
        self.maxLiteral = maxLiteral
        self.maxDepth = maxDepth
        self.maxTokens = maxTokens
        self.maxCommand = maxCommand
        self.maxDiscard = maxDiscard
        self._buffer = bytearray()
        self._resetCommand()
        # "line": reading a line; "literal": collecting; "stream": passing on;
        # "discard": dropping a literal; "skipline": dropping to the end of a
        # line; "wait": a LiteralStart awaits the server's decision.
        self._mode = "line"
        self._remaining = 0
        self._skipCommand = False
        self._pending: Optional[Any] = None

    def _resetCommand(self) -> None:
        self._tag: Optional[bytes] = None
        self._verb: Optional[bytes] = None
        self._stack: List[List[Any]] = [[]]
        self._tokens = 0
        self._held = 0
        self._literalBinary = False
        self._literalChunks: List[bytes] = []

    def feed(self, data: bytes) -> None:
        """
        Take octets from the network.
        """
        self._buffer += data

    def buffered(self) -> int:
        """
        @return: the octets received and not yet read.
        """
        return len(self._buffer)

    def clear(self) -> None:
        """
        Throw away everything received and not yet read, and any command
        half read (STARTTLS: what came after it is not to be trusted).
        """
        del self._buffer[:]
        self._resetCommand()
        self._mode = "line"
        self._skipCommand = False

    def streamLiteral(self) -> None:
        """
        Receive the literal of the last L{LiteralStart} as L{LiteralData}.
        """
        assert self._mode == "wait"
        self._mode = "stream"

    def readLine(self) -> Optional[bytes]:
        """
        Read one raw line, not a command (IDLE's C{DONE}, a SASL
        response), between commands.

        @return: the line without its end, L{None} until one is there, or
            C{b"\\0"} for a line over the limit (skipped).
        """
        if self._mode != "line" or self._tag is not None:
            return None
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > self.maxLine:
                del self._buffer[:]
                self._mode = "skipline"
                return b"\0"
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        if len(line) > self.maxLine:
            return b"\0"
        return line[:-1] if line.endswith(b"\r") else line

    def refuseLiteral(self) -> None:
        """
        Do not receive the literal of the last L{LiteralStart}: if it was
        synchronising the client will not send it; otherwise it is read
        and thrown away.  The rest of the command is skipped.
        """
        assert self._mode == "wait"
        self._resetCommand()
        self._skipCommand = True
        if self._pendingSynchronising:
            self._skipCommand = False
            self._mode = "line"
        else:
            self._mode = "discard"

    _pendingSynchronising = False

    def next(self) -> Optional[Any]:
        """
        @return: the next event, or L{None} until more input arrives.
        """
        while True:
            mode = self._mode
            if mode == "wait":
                return None
            if mode in ("literal", "stream", "discard"):
                if not self._buffer and self._remaining:
                    return None
                take = min(self._remaining, len(self._buffer))
                chunk = bytes(self._buffer[:take])
                del self._buffer[:take]
                self._remaining -= take
                if self._remaining == 0:
                    self._mode = "line"
                if mode == "literal":
                    self._literalChunks.append(chunk)
                    if self._remaining == 0:
                        value = b"".join(self._literalChunks)
                        self._literalChunks = []
                        self._add(String(value, literal=True))
                    continue
                if mode == "stream":
                    if self._remaining == 0:
                        self._add(LiteralStream(self._streamSize, self._literalBinary))
                    return LiteralData(chunk)
                continue
            if mode == "skipline":
                end = self._buffer.find(b"\n")
                if end < 0:
                    del self._buffer[:]
                    return None
                del self._buffer[: end + 1]
                self._mode = "line"
                continue
            # mode == "line"
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > self.maxLine:
                    tag = self._tag if self._tag is not None else _guessTag(bytes(self._buffer[:200]))
                    skipping = self._skipCommand
                    del self._buffer[:]
                    self._resetCommand()
                    self._skipCommand = False
                    self._mode = "skipline"
                    if skipping:
                        continue
                    return ParseError(tag, "Command line too long")
                return None
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if line.endswith(b"\r"):
                line = line[:-1]
            if self._skipCommand:
                self._skipRest(line)
                continue
            if len(line) > self.maxLine:
                tag = self._tag if self._tag is not None else _guessTag(line)
                self._resetCommand()
                self._skipRest(line)
                return ParseError(tag, "Command line too long")
            if self._tag is None and not line.strip():
                continue  # an empty line between commands: ignored
            try:
                event = self._parseLine(line)
            except _Refused as e:
                tag = self._tag if self._tag is not None else _guessTag(line)
                self._resetCommand()
                if not e.fatal:
                    self._skipRest(line)
                else:
                    self._mode = "skipline"
                    del self._buffer[:]
                return ParseError(tag, e.text, e.code, e.fatal)
            if event is not None:
                return event

    def _skipRest(self, line: bytes) -> None:
        """
        After an error: skip this command's remaining input.  A line ending
        in a non-synchronising literal announces more of the command; a
        synchronising one does not (the client waits for C{+}, which it
        will not get).
        """
        match = _LITERAL_SPEC.search(line)
        if match is not None and match.group(3) == b"+":
            size = int(match.group(2))
            if size > self.maxDiscard:
                # Not worth reading: we will close.
                self._skipCommand = False
                self._mode = "skipline"
                return
            self._skipCommand = True
            self._remaining = size
            self._mode = "discard" if size else "line"
            return
        self._skipCommand = False
        self._mode = "line"

    def _add(self, token: Any) -> None:
        self._tokens += 1
        if self._tokens > self.maxTokens:
            raise _Refused("Too many arguments")
        self._stack[-1].append(token)

    def _parseLine(self, line: bytes) -> Optional[Any]:
        """
        Tokenise one line (the start of a command, or its continuation
        after a literal).  @return: an event, or L{None} if a literal is
        now being collected silently (non-synchronising).
        """
        self._held += len(line)
        if self._held > self.maxCommand:
            raise _Refused("Command too long")
        pos = 0
        n = len(line)
        if self._tag is None:
            pos = _scan(line, 0, _TAG_END)
            tag = line[:pos]
            if not tag:
                raise _Refused("Missing command tag")
            self._tag = tag
            if pos >= n or line[pos] != 0x20:
                raise _Refused("Missing command")
            pos += 1
            start = pos
            pos = _scan(line, pos, _ATOM_END)
            verb = line[start:pos]
            if not verb or not verb.isalpha():
                raise _Refused("Missing or invalid command name")
            self._verb = verb.upper()
        while True:
            # Between tokens: a space, a closing parenthesis, or the end.
            while pos < n and line[pos] == 0x20:
                pos += 1
            if pos >= n:
                break
            c = line[pos]
            if c == 0x28:  # (
                if len(self._stack) > self.maxDepth:
                    raise _Refused("Too deeply nested")
                new: List[Any] = []
                self._add(new)
                self._stack.append(new)
                pos += 1
            elif c == 0x29:  # )
                if len(self._stack) == 1:
                    raise _Refused("Unbalanced parentheses")
                self._stack.pop()
                pos += 1
            elif c == 0x22:  # "
                value, pos = _quoted(line, pos)
                self._add(String(value))
            elif c == 0x7B or (c == 0x7E and line[pos + 1 : pos + 2] == b"{"):  # { or ~{
                match = _LITERAL_SPEC.match(line, pos)
                if match is None:
                    raise _Refused("Invalid literal")
                return self._literal(int(match.group(2)), synchronising=not match.group(3), binary=bool(match.group(1)))
            elif c < 0x20 or c == 0x7F:
                raise _Refused("Invalid character in command")
            else:
                start = pos
                pos = _scan(line, pos, _ATOM_OR_SECTION_END)
                if pos < n and line[pos] == 0x5B and line[start:pos].upper() in _SECTION_ATOMS:  # [
                    pos = _section(line, pos)
                pos = _scan(line, pos, _ATOM_END)
                atom = line[start:pos]
                if not atom:
                    raise _Refused("Invalid character in command")
                self._add(Atom(atom))
        if len(self._stack) != 1:
            raise _Refused("Unbalanced parentheses")
        command = Command(self._tag, self._verb, self._stack[0])  # type: ignore[arg-type]
        self._resetCommand()
        return command

    def _literal(self, size: int, synchronising: bool, binary: bool) -> Optional[Any]:
        streamed = self._verb == b"APPEND" and len(self._stack) == 1 and len(self._stack[0]) >= 1
        if streamed:
            if size > self.maxDiscard and not synchronising:
                raise _Refused("Literal too large", b"TOOBIG", fatal=True)
            self._streamSize = size
            self._literalBinary = binary
            self._pendingSynchronising = synchronising
            self._remaining = size
            self._mode = "wait"
            command = Command(self._tag, self._verb, list(self._stack[0]))  # type: ignore[arg-type]
            return LiteralStart(command, size, synchronising, binary)
        if size > self.maxLiteral or self._held + size > self.maxCommand:
            if not synchronising and size > self.maxDiscard:
                raise _Refused("Literal too large", b"TOOBIG", fatal=True)
            raise _Refused("Literal too large", b"TOOBIG")
        self._held += size
        self._remaining = size
        self._literalChunks = []
        if size == 0:
            self._add(String(b"", literal=True))
            self._mode = "line"
        else:
            self._mode = "literal"
        return Continue() if synchronising else None


def _scan(line: bytes, pos: int, stops: frozenset) -> int:
    n = len(line)
    while pos < n and line[pos] not in stops:
        pos += 1
    return pos


def _quoted(line: bytes, pos: int) -> Tuple[bytes, int]:
    """
    A quoted string starting at C{line[pos]} (the opening quote).
    @return: its contents and the position after the closing quote.
    """
    out = bytearray()
    pos += 1
    n = len(line)
    while pos < n:
        c = line[pos]
        if c == 0x22:
            return bytes(out), pos + 1
        if c == 0x5C:  # backslash: only \\ and \" (RFC 9051 §4.3)
            if pos + 1 < n and line[pos + 1] in (0x22, 0x5C):
                out.append(line[pos + 1])
                pos += 2
                continue
            raise _Refused("Invalid escape in quoted string")
        if c == 0 or c == 0x0D or c == 0x0A:
            raise _Refused("Invalid character in quoted string")
        out.append(c)
        pos += 1
    raise _Refused("Unterminated quoted string")


def _section(line: bytes, pos: int) -> int:
    """
    A bracketed section starting at C{line[pos]} (C{[}), with quoted
    strings inside.  @return: the position after the C{]}.
    """
    n = len(line)
    pos += 1
    while pos < n:
        c = line[pos]
        if c == 0x5D:
            return pos + 1
        if c == 0x22:
            _, pos = _quoted(line, pos)
            continue
        if c == 0x7B or c < 0x20 or c == 0x7F:
            raise _Refused("Invalid section")
        pos += 1
    raise _Refused("Unterminated section")


def _guessTag(line: bytes) -> Optional[bytes]:
    """The tag of a line that could not be parsed, if it has a usable one."""
    end = _scan(bytes(line[:200]), 0, _TAG_END)
    if 0 < end < 200 and end < len(line) and line[end] == 0x20:
        return bytes(line[:end])
    return None
