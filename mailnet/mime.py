# -*- test-case-name: tests.test_mime -*-
"""
The structure of a stored message, found in one streaming pass: where each
MIME part's header and body start and end (in the stored form, LF line
endings, and in the wire form, CRLF), the fields IMAP's ENVELOPE and
BODYSTRUCTURE report, and the top-level header block.  No Twisted here.

A L{ParsedMessage} is what the folder index caches per message (see
L{mailnet.interfaces.IFolder.parsed}): FETCH ENVELOPE, BODYSTRUCTURE,
BODY[HEADER...], and SEARCH on headers need nothing else, and a FETCH of a
section or a partial range reads only the octets it sends.

Parsing is bounded (part count, nesting depth, header size); a message
beyond the bounds is described as far as the bounds go and the rest is one
opaque part, never an exception:

  - after L{MAX_PARTS} parts, boundary lines are no longer recognised: the
    rest of the message belongs to the part being read (as Dovecot does);
  - a multipart or message/rfc822 part deeper than L{MAX_DEPTH} is one
    leaf part of type C{application/octet-stream};
  - of each part's header, only the first L{MAX_HEADER} octets are kept
    and looked at.

The wire form is the stored form with each LF that does not follow a CR
turned into CRLF (the store keeps no CR at all; a file that has CRLF line
endings is read correctly too).  Boundaries follow RFC 2046 §5.1.1: the
line ending before a boundary line belongs to the boundary, a boundary line
may carry trailing white space, a missing final boundary ends the
multipart at the end of the enclosing part.  RFC 2231 parameter
continuations (C{name*0=...}) are left as they are, as Dovecot does.
"""

import marshal
import re
from typing import BinaryIO, Dict, List, Optional, Pattern, Tuple

import attr

#: Bounds of the parse.
MAX_PARTS = 1000
MAX_DEPTH = 50
#: Header octets kept per part (the top-level one is kept whole up to this).
MAX_HEADER = 256 * 1024
#: Header octets kept, in all, for the enclosed messages' L{ParsedMessage.header}
#: (beyond it they are empty: a FETCH of such a header reads the file).
MAX_ENCLOSED_HEADERS = 1024 * 1024

#: How much is read from the file at a time.
CHUNK_SIZE = 64 * 1024
# A piece of a line longer than this is handled on its own (a boundary line
# is at most 70 + 6 octets plus white space; header lines get joined).
_MAX_PIECE = 8 * 1024

Params = Tuple[Tuple[str, str], ...]


@attr.s(frozen=True, auto_attribs=True)
class Envelope:
    """
    RFC 9051 §7.5.2 ENVELOPE fields: each the raw (unfolded) header value
    as it appears in the message, or L{None} when absent.  Address lists
    are rendered by L{mailnet.imap._render}.
    """

    date: Optional[bytes] = None
    subject: Optional[bytes] = None
    from_: Optional[bytes] = None
    sender: Optional[bytes] = None
    replyTo: Optional[bytes] = None
    to: Optional[bytes] = None
    cc: Optional[bytes] = None
    bcc: Optional[bytes] = None
    inReplyTo: Optional[bytes] = None
    messageId: Optional[bytes] = None


@attr.s(frozen=True, auto_attribs=True)
class Part:
    """
    One MIME part (the whole message is the root part).

    Offsets count from the start of the message.  C{stored*} offsets are in
    the stored form (LF line endings), C{wire*} ones in the wire form
    (CRLF), so a section is read from the file as
    C{[storedBodyStart, storedEnd)} and sent, LFs turned into CRLFs, as
    exactly C{wireEnd - wireBodyStart} octets.

    @ivar type: the media type, lower case (C{"text"}).
    @ivar subtype: lower case (C{"plain"}).
    @ivar params: Content-Type parameters in order; names lower case,
        values exactly as given (case kept, quotes removed).
    @ivar lines: the body's line count (reported for text/* and
        message/rfc822).
    @ivar parts: the children of a multipart.
    @ivar message: for message/rfc822 (and message/global), the enclosed
        message's envelope and root part.
    """

    storedHeaderStart: int
    storedBodyStart: int
    storedEnd: int
    wireHeaderStart: int
    wireBodyStart: int
    wireEnd: int
    type: str = "text"
    subtype: str = "plain"
    params: Params = ()
    id: Optional[str] = None
    description: Optional[str] = None
    encoding: Optional[str] = None
    md5: Optional[str] = None
    disposition: Optional[Tuple[str, Params]] = None
    language: Optional[Tuple[str, ...]] = None
    location: Optional[str] = None
    lines: int = 0
    parts: Tuple["Part", ...] = ()
    message: Optional["ParsedMessage"] = None


# The serialised form: a version octet, then marshal data (fast to load; the
# index that stores it is ours, and a mismatch only means parsing again).
_FORMAT = b"\x01" + bytes([marshal.version])
_ENVELOPE_FIELDS = tuple(a.name for a in attr.fields(Envelope))
_PART_FIELDS = tuple(a.name for a in attr.fields(Part))


@attr.s(frozen=True, auto_attribs=True)
class ParsedMessage:
    """
    A message's structure.

    @ivar header: the top-level header block in wire form (CRLF line
        endings, the empty line that ends it included).  If the header was
        longer than L{MAX_HEADER}, only its first octets are here: see
        L{headerComplete}.
    @ivar envelope: the top-level ENVELOPE fields.
    @ivar root: the root part.
    """

    header: bytes
    envelope: Envelope
    root: Part

    def headerComplete(self) -> bool:
        """
        @return: whether L{header} is the whole header block (and not only
            the first L{MAX_HEADER} octets of a longer one).
        """
        if 0 < len(self.header) < MAX_HEADER:
            # A cut header is MAX_HEADER octets long (an enclosed message's,
            # past the budget, empty): no need to load the root part (the
            # index loads it lazily) to know.
            return True
        return len(self.header) == self.root.wireBodyStart - self.root.wireHeaderStart

    def toBytes(self) -> bytes:
        """A compact serialisation, for the index cache."""
        return _FORMAT + marshal.dumps(_packMessage(self))

    @classmethod
    def fromBytes(cls, data: bytes) -> "ParsedMessage":
        """The inverse of L{toBytes}.  @raise ValueError: not one of ours."""
        if data[:2] != _FORMAT:
            raise ValueError("not a serialised ParsedMessage")
        try:
            return _unpackMessage(marshal.loads(data[2:]))
        except (EOFError, TypeError, IndexError, AttributeError) as e:
            raise ValueError("damaged serialised ParsedMessage: %s" % (e,))


def _packMessage(m: ParsedMessage) -> tuple:
    e = m.envelope
    # The root part goes in as marshal data of its own, loaded when first
    # asked for (see _LazyRoot): SEARCH on headers and FETCH ENVELOPE never do.
    return (m.header, (e.date, e.subject, e.from_, e.sender, e.replyTo, e.to, e.cc, e.bcc, e.inReplyTo, e.messageId), marshal.dumps(_packPart(m.root)))


def _packPart(p: Part) -> tuple:
    return (
        p.storedHeaderStart,
        p.storedBodyStart,
        p.storedEnd,
        p.wireHeaderStart,
        p.wireBodyStart,
        p.wireEnd,
        p.type,
        p.subtype,
        p.params,
        p.id,
        p.description,
        p.encoding,
        p.md5,
        p.disposition,
        p.language,
        p.location,
        p.lines,
        tuple(_packPart(c) for c in p.parts),
        None if p.message is None else _packMessage(p.message),
    )


_new = object.__new__
_setattr = object.__setattr__


def _unpackMessage(t: tuple) -> ParsedMessage:
    # Built without the attrs __init__s (which set the fields one by one):
    # the index loads one of these per message, and this is several times
    # faster.  The checks keep a damaged cache entry from passing for one.
    header, env, root = t
    if type(header) is not bytes or len(env) != 10 or type(root) is not bytes:
        raise TypeError("not a message")
    e = _new(Envelope)
    _setattr(e, "__dict__", dict(zip(_ENVELOPE_FIELDS, env)))
    m = _new(ParsedMessage)
    _setattr(m, "__dict__", {"header": header, "envelope": e, "_packedRoot": root})
    return m


class _LazyRoot:
    """
    L{ParsedMessage.root}, stored as usual when set by C{__init__}, or
    unpacked from the serialised form on first use after L{fromBytes}.
    """

    def __get__(self, obj: Optional[ParsedMessage], cls: type) -> Part:
        if obj is None:
            return self  # type: ignore[return-value]
        d = obj.__dict__
        try:
            # (attrs' __init__ writes the instance dictionary directly)
            return d["root"]
        except KeyError:
            pass
        packed = d.get("_packedRoot")
        if packed is None:
            # Another thread unpacked it meanwhile.
            return d["root"]
        try:
            root = _unpackPart(marshal.loads(packed))
        except (EOFError, TypeError, ValueError, IndexError) as e:
            raise ValueError("damaged serialised ParsedMessage: %s" % (e,))
        d["root"] = root
        d.pop("_packedRoot", None)
        return root

    def __set__(self, obj: ParsedMessage, value: Part) -> None:
        obj.__dict__["root"] = value


ParsedMessage.root = _LazyRoot()  # type: ignore[assignment]


def _unpackPart(t: tuple) -> Part:
    if len(t) != 19:
        raise TypeError("not a part")
    p = _new(Part)
    d = dict(zip(_PART_FIELDS, t))
    if t[17]:
        d["parts"] = tuple([_unpackPart(c) for c in t[17]])
    if t[18] is not None:
        d["message"] = _unpackMessage(t[18])
    _setattr(p, "__dict__", d)
    return p


# --- header fields ----------------------------------------------------------


def headerFields(header: bytes) -> List[Tuple[bytes, bytes]]:
    """
    Split a header block into its fields.

    @param header: header lines (LF or CRLF line endings).
    @return: C{(name, lines)} pairs in order: the field name as written
        (without the colon) and the field's lines as they are, continuation
        lines included.  Lines that are neither a field nor a continuation
        (obsolete or broken syntax) are kept with an empty name.
    """
    fields: List[Tuple[bytes, bytes]] = []
    for line in header.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and fields:
            name, lines = fields[-1]
            fields[-1] = (name, lines + line)
            continue
        colon = line.find(b":")
        if colon > 0:
            fields.append((line[:colon].rstrip(b" \t"), line))
        else:
            fields.append((b"", line))
    return fields


def unfold(lines: bytes) -> bytes:
    """
    @return: the value of one header field (C{lines} as from
        L{headerFields}): after the colon, line breaks removed (RFC 5322
        §2.2.3; a tab after one becomes a space, as Dovecot does), leading
        and trailing white space removed.
    """
    value = lines[lines.find(b":") + 1:]
    if b"\n" in value:
        value = _FOLD.sub(b" ", value).replace(b"\r\n", b"").replace(b"\n", b"")
    return value.strip(b" \t\r")


_FOLD = re.compile(rb"\r?\n[ \t]")
# Address fields given more than once make one list, as in Dovecot.
_ADDRESS_FIELDS = frozenset([b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc"])


def _fieldDict(header: bytes) -> Dict[bytes, bytes]:
    # First occurrence of each field (all of them for address fields), name
    # lower case, value unfolded.
    result: Dict[bytes, bytes] = {}
    for name, lines in headerFields(header):
        key = name.lower()
        if not key:
            continue
        if key not in result:
            result[key] = unfold(lines)
        elif key in _ADDRESS_FIELDS:
            more = unfold(lines)
            if more:
                result[key] = result[key] + b", " + more if result[key] else more
    return result


_ENVELOPE_HEADERS = (
    (b"date", "date"),
    (b"subject", "subject"),
    (b"from", "from_"),
    (b"sender", "sender"),
    (b"reply-to", "replyTo"),
    (b"to", "to"),
    (b"cc", "cc"),
    (b"bcc", "bcc"),
    (b"in-reply-to", "inReplyTo"),
    (b"message-id", "messageId"),
)


def _envelopeFrom(fields: Dict[bytes, bytes]) -> Envelope:
    return Envelope(**{attrName: fields.get(name) for name, attrName in _ENVELOPE_HEADERS})


def _str(value: bytes) -> str:
    # Header octets as text; octets that are not UTF-8 survive the round trip.
    return value.decode("utf-8", "surrogateescape")


_TOKEN = re.compile(rb"[^\x00-\x20()<>@,;:\\\"/\[\]?=\x7f]+")


def _skipCFWS(value: bytes, i: int) -> int:
    n = len(value)
    while i < n:
        c = value[i:i + 1]
        if c in (b" ", b"\t", b"\r", b"\n"):
            i += 1
        elif c == b"(":
            depth = 0
            while i < n:
                c = value[i:i + 1]
                if c == b"\\":
                    i += 2
                    continue
                if c == b"(":
                    depth += 1
                elif c == b")":
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                i += 1
        else:
            break
    return i


def _quoted(value: bytes, i: int) -> Tuple[bytes, int]:
    # value[i] is the opening quote; returns the contents and the index after.
    out = bytearray()
    i += 1
    n = len(value)
    while i < n:
        c = value[i]
        if c == 0x5C and i + 1 < n:
            out.append(value[i + 1])
            i += 2
            continue
        if c == 0x22:
            return bytes(out), i + 1
        out.append(c)
        i += 1
    return bytes(out), i


def parseParameters(value: bytes, i: int = 0) -> Params:
    """
    Parse C{; name=value} parameters (RFC 2045 §5.1) tolerantly.

    @return: C{(name, value)} pairs: names lower case, values with their
        case, quotes and backslash escapes removed.  Broken parameters are
        skipped.
    """
    params: List[Tuple[str, str]] = []
    n = len(value)
    while i < n:
        i = _skipCFWS(value, i)
        if i >= n:
            break
        if value[i:i + 1] != b";":
            # Something unexpected: resynchronise at the next semicolon.
            nxt = value.find(b";", i)
            if nxt < 0:
                break
            i = nxt
        i = _skipCFWS(value, i + 1)
        m = _TOKEN.match(value, i)
        if not m:
            continue
        name = m.group().lower()
        i = _skipCFWS(value, m.end())
        if value[i:i + 1] != b"=":
            continue
        i = _skipCFWS(value, i + 1)
        if value[i:i + 1] == b'"':
            v, i = _quoted(value, i)
        else:
            end = value.find(b";", i)
            if end < 0:
                end = n
            v = value[i:end].strip(b" \t\r\n")
            i = end
        if len(params) < 100:
            params.append((_str(name), _str(v)))
    return tuple(params)


_CONTINUATION = re.compile(r"(.+?)\*([0-9]{1,3})(\*?)$")


def _joinContinuations(params: Params) -> Params:
    """
    RFC 2231 §3 continuations joined, where the first piece was, as Dovecot
    does: C{name*0}, C{name*1} ... into C{name}; C{name*0*}, C{name*1*}
    ... (with a charset, still percent-encoded) into C{name*}, for the
    client to decode as it would a single C{name*} parameter.
    """
    pieces: Dict[str, Dict[int, str]] = {}
    extended: Dict[str, bool] = {}
    for name, value in params:
        m = _CONTINUATION.match(name)
        if m:
            base, number = m.group(1), int(m.group(2))
            pieces.setdefault(base, {})[number] = value
            if number == 0:
                extended[base] = bool(m.group(3))
    if not pieces:
        return params
    out: List[Tuple[str, str]] = []
    done = set()
    for name, value in params:
        m = _CONTINUATION.match(name)
        if not m:
            out.append((name, value))
            continue
        base = m.group(1)
        if base in done:
            continue
        done.add(base)
        got = pieces[base]
        joined = ""
        i = 0
        while i in got:
            joined += got[i]
            i += 1
        out.append((base + "*" if extended.get(base) else base, joined))
    return tuple(out)


def _parseContentType(value: Optional[bytes]) -> Optional[Tuple[str, str, Params]]:
    if value is None:
        return None
    i = _skipCFWS(value, 0)
    m = _TOKEN.match(value, i)
    if not m:
        return None
    i = _skipCFWS(value, m.end())
    if value[i:i + 1] != b"/":
        return None
    i = _skipCFWS(value, i + 1)
    m2 = _TOKEN.match(value, i)
    if not m2:
        return None
    return (_str(m.group().lower()), _str(m2.group().lower()), _joinContinuations(parseParameters(value, m2.end())))


def _parseDisposition(value: Optional[bytes]) -> Optional[Tuple[str, Params]]:
    if value is None:
        return None
    i = _skipCFWS(value, 0)
    m = _TOKEN.match(value, i)
    if not m:
        return None
    return (_str(m.group()), _joinContinuations(parseParameters(value, m.end())))


def _parseLanguage(value: Optional[bytes]) -> Optional[Tuple[str, ...]]:
    if value is None:
        return None
    # (Not "\([^)]*\)": quadratic on a run of "(".)
    tags = [t.strip(b" \t") for t in re.sub(rb"\([^()]*\)", b"", value).split(b",")]
    tags = [t for t in tags if t]
    if not tags:
        return None
    return tuple(_str(t) for t in tags[:20])


def _optStr(value: Optional[bytes]) -> Optional[str]:
    return None if value is None else _str(value)


# --- the streaming parse ----------------------------------------------------


class _Reader:
    """
    A binary file read in chunks, as lines (a line longer than
    C{_MAX_PIECE} comes in pieces), counting stored and wire offsets and
    line feeds.
    """

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._buf = b""
        self._pos = 0
        self._base = 0
        self._eof = False
        #: LFs consumed; LFs consumed that followed a CR.
        self.lf = 0
        self._crlf = 0
        self._lastCR = False
        #: whether the next octet starts a line.
        self.atLineStart = True
        #: the length of the line ending just consumed (0, 1 for LF, 2 for CRLF).
        self.lastEOL = 0
        #: set once MAX_PARTS is reached: boundaries are no longer looked for.
        self.exhausted = False
        self.partCount = 0

    def stored(self) -> int:
        return self._base + self._pos

    def wire(self) -> int:
        return self._base + self._pos + self.lf - self._crlf

    def _fill(self) -> bool:
        if self._eof:
            return False
        if self._pos:
            self._buf = self._buf[self._pos:]
            self._base += self._pos
            self._pos = 0
        data = self._f.read(CHUNK_SIZE)
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    def _account(self, data: bytes) -> None:
        if not data:
            return
        self.lf += data.count(b"\n")
        crlf = data.count(b"\r\n")
        if self._lastCR and data[:1] == b"\n":
            crlf += 1
        self._crlf += crlf
        last = data[-1:]
        self._lastCR = last == b"\r"
        if last == b"\n":
            self.atLineStart = True
            self.lastEOL = 2 if data[-2:] == b"\r\n" or (len(data) == 1 and crlf) else 1
        else:
            self.atLineStart = False
            self.lastEOL = 0

    def readLine(self) -> Optional[bytes]:
        """
        @return: the next line with its line ending, or a piece of a long
            one, or L{None} at the end of the file.
        """
        while True:
            buf, pos = self._buf, self._pos
            i = buf.find(b"\n", pos, pos + _MAX_PIECE)
            if i >= 0:
                line = buf[pos:i + 1]
                break
            if len(buf) - pos >= _MAX_PIECE:
                line = buf[pos:pos + _MAX_PIECE]
                break
            if not self._fill():
                if self._pos >= len(self._buf):
                    return None
                line = self._buf[self._pos:]
                break
        self._pos += len(line)
        self._account(line)
        return line

    def crlfBefore(self, stored: int) -> bool:
        """
        @return: whether the line ending that ends just before stored
            offset C{stored} (still in the buffer) is a CRLF.
        """
        i = stored - self._base - 2
        return i >= 0 and self._buf[i:i + 1] == b"\r"

    def headerBlock(self, limit: int, boundaries: bool) -> Optional[bytes]:
        """
        Consume a header through the empty line that ends it, if it is
        there within C{limit} octets, does not start with an empty line,
        and (if C{boundaries}) has no line starting with C{--}.

        @return: the header block, or L{None} (nothing consumed).
        """
        if not self.atLineStart:
            return None
        while True:
            buf, pos = self._buf, self._pos
            if buf[pos:pos + 1] in (b"\n", b"\r"):
                return None
            m = _BLANK_LINE.search(buf, pos, pos + limit)
            if m is not None:
                block = buf[pos:m.end()]
                if boundaries and (block.startswith(b"--") or b"\n--" in block):
                    return None
                self._pos = m.end()
                self._account(block)
                return block
            if len(buf) - pos >= limit or not self._fill():
                return None

    def skipPlain(self, candidates: "Optional[Tuple[Pattern[bytes], Pattern[bytes]]]") -> None:
        """
        Consume, fast, whole lines that cannot be boundary lines: every
        line if C{candidates} is L{None}, else those that do not start
        like one (C{candidates}: a pattern matching the start of a possible
        boundary line at a position, and one finding C{LF} followed by such
        a start).  Stops at a line start (or in the middle of the last line
        of the file).
        """
        while True:
            if not self.atLineStart:
                return
            buf, pos = self._buf, self._pos
            if candidates is not None:
                atStart, after = candidates
                if atStart.match(buf, pos):
                    return
                m = after.search(buf, pos)
                if m is not None:
                    i = m.start()
                    self._pos = i + 1
                    self._account(buf[pos:i + 1])
                    return
            # Everything up to the last LF of the buffer (the line after it
            # is looked at again once complete).
            j = buf.rfind(b"\n", pos)
            if j >= 0:
                self._pos = j + 1
                self._account(buf[pos:j + 1])
            elif len(buf) - pos > _MAX_PIECE:
                return  # a long line: readLine takes it in pieces
            if not self._fill():
                return


_BLANK_LINE = re.compile(rb"\n\r?\n")
_WIRE_LF = re.compile(rb"(?<!\r)\n")


@attr.s(auto_attribs=True)
class _Mark:
    stored: int
    wire: int
    lf: int


def _mark(r: _Reader) -> _Mark:
    return _Mark(r.stored(), r.wire(), r.lf)


def _endBefore(r: _Reader, boundaryLine: bytes, eol: int, floor: _Mark) -> _Mark:
    # Where a part ends when a boundary line (just read) closes it: before
    # the line ending that precedes the boundary line (RFC 2046 §5.1.1),
    # unless that line ending was read before (the end of a previous
    # boundary line, or of the header): then at the boundary line.
    startStored = r.stored() - len(boundaryLine)
    startWire = r.wire() - len(boundaryLine) - (boundaryLine.count(b"\n") - boundaryLine.count(b"\r\n"))
    startLF = r.lf - boundaryLine.count(b"\n")
    if eol == 0 or startStored - eol < floor.stored:
        return _Mark(startStored, startWire, startLF)
    return _Mark(startStored - eol, startWire - 2, startLF - 1)


class _Found:
    """A boundary line was found: C{level} in the stack, C{closing} or not."""

    __slots__ = ("level", "closing", "end", "lineStart")

    def __init__(self, level: int, closing: bool) -> None:
        self.level = level
        self.closing = closing
        #: where the part the boundary closes ends
        self.end: Optional[_Mark] = None
        #: the stored offset of the boundary line
        self.lineStart = 0


def _boundaryOf(line: bytes, boundaries: List[bytes]) -> Optional[_Found]:
    if line[:2] != b"--":
        return None
    text = line.rstrip(b" \t\r\n")
    # The innermost multipart whose boundary this is.
    for level in range(len(boundaries) - 1, -1, -1):
        b = boundaries[level]
        if text.startswith(b, 2):
            rest = text[2 + len(b):]
            if rest == b"":
                return _Found(level, False)
            if rest == b"--":
                return _Found(level, True)
    return None


class _Parser:
    def __init__(self, f: BinaryIO) -> None:
        self.r = _Reader(f)
        self.boundaries: List[bytes] = []
        self.enclosedBudget = MAX_ENCLOSED_HEADERS
        self._candidates: Optional[Tuple[Pattern[bytes], Pattern[bytes]]] = None

    def setBoundaries(self, boundaries: List[bytes]) -> None:
        self.boundaries = boundaries
        if boundaries:
            alternatives = b"|".join(re.escape(b) for b in set(boundaries))
            self._candidates = (re.compile(b"--(?:" + alternatives + b")"), re.compile(b"\n--(?:" + alternatives + b")"))
        else:
            self._candidates = None

    def readLineChecked(self, floor: _Mark) -> Tuple[Optional[bytes], Optional[_Found]]:
        """
        Read a line (or a piece of one), and see whether it is a boundary
        line of an enclosing multipart.

        @param floor: where the text being read started (see L{_endBefore}).
        """
        r = self.r
        eol = r.lastEOL
        atStart = r.atLineStart
        line = r.readLine()
        if line is None:
            return None, None
        if atStart and self.boundaries and not r.exhausted:
            found = _boundaryOf(line, self.boundaries)
            if found is not None:
                found.end = _endBefore(r, line, eol, floor)
                found.lineStart = r.stored() - len(line)
            return line, found
        return line, None

    def skipBody(self) -> Optional[_Found]:
        """
        Read to the next boundary line of an enclosing multipart, or the end.

        @return: the boundary found (L{None} at the end of the file).
        """
        r = self.r
        floor = _mark(r)
        while True:
            r.skipPlain(None if r.exhausted else self._candidates)
            line, found = self.readLineChecked(floor)
            if line is None:
                return None
            if found is not None:
                return found

    def parsePart(self, depth: int, defaultType: Tuple[str, str]) -> Tuple[Part, Optional[_Found], Optional[ParsedMessage]]:
        """
        Parse one part from the current position (at a line start).

        @return: the part, the boundary that ended it (L{None} at the end of
            the file), and (for the caller of a message's root) the
            message made of this part's header.
        """
        r = self.r
        r.partCount += 1
        if r.partCount >= MAX_PARTS:
            r.exhausted = True
        head = _mark(r)
        header = bytearray()
        found: Optional[_Found] = None
        bodyStart: Optional[_Mark] = None
        block = r.headerBlock(MAX_HEADER // 2, bool(self.boundaries) and not r.exhausted)
        if block is not None:
            # The common case, in one piece.
            header += _WIRE_LF.sub(b"\r\n", block)
            bodyStart = _mark(r)
        while block is None:
            atStart = r.atLineStart
            line, found = self.readLineChecked(head)
            if line is None:
                break
            if found is not None:
                break
            if atStart and line in (b"\n", b"\r\n"):
                header += b"\r\n"[: max(0, MAX_HEADER - len(header))]
                bodyStart = _mark(r)
                break
            if len(header) < MAX_HEADER:
                if line[-1:] == b"\n" and line[-2:] != b"\r\n":
                    line = line[:-1] + b"\r\n"
                header += line[:MAX_HEADER - len(header)]
        headerBytes = bytes(header)
        fields = _fieldDict(headerBytes)

        ct = _parseContentType(fields.get(b"content-type"))
        params: Params
        if ct is None:
            if defaultType == ("message", "rfc822"):
                ctype, csub, params = "message", "rfc822", ()
            else:
                ctype, csub, params = "text", "plain", (("charset", "us-ascii"),)
        else:
            ctype, csub, params = ct
            if ctype == "text" and not any(n == "charset" for n, _ in params):
                params += (("charset", "us-ascii"),)
        encoding = fields.get(b"content-transfer-encoding")
        encodingStr = None if encoding is None else _str(encoding)
        children: List[Part] = []
        message: Optional[ParsedMessage] = None

        if found is not None or bodyStart is None:
            # The header ran into a boundary or the end: no body.
            end = found.end if found is not None and found.end is not None else _mark(r)
            bodyStart = end
            # (A multipart without parts, a message/rfc822 without a
            # message: rendered as Dovecot does, see _render.)
        else:
            boundary = dict(params).get("boundary", "") if ctype == "multipart" else ""
            isMessage = ctype == "message" and csub in ("rfc822", "global")
            if ctype == "multipart" and depth >= MAX_DEPTH:
                ctype, csub = "application", "octet-stream"
            if isMessage and (depth >= MAX_DEPTH or (encodingStr or "7bit").lower() not in ("7bit", "8bit", "binary")):
                if depth >= MAX_DEPTH:
                    ctype, csub = "application", "octet-stream"
                isMessage = False
            if ctype == "multipart" and not boundary:
                # No boundary: no parts (shown as one empty text part, as
                # Dovecot does); the body is read past.
                found = self.skipBody()
            elif ctype == "multipart":
                found, children = self.parseMultipart(boundary.encode("utf-8", "surrogateescape"), depth, csub)
            elif isMessage:
                inner, found, message = self.parsePart(depth + 1, ("text", "plain"))
                assert message is not None
                if len(message.header) > self.enclosedBudget:
                    # Over the budget for all enclosed messages' headers.
                    message = attr.evolve(message, header=b"")
                self.enclosedBudget -= len(message.header)
            else:
                found = self.skipBody()
                if found is not None and found.lineStart == bodyStart.stored and header.endswith(b"\r\n\r\n"):
                    # A boundary right after the empty line: that line's
                    # ending is the one before the boundary, which belongs
                    # to the boundary (RFC 2046 §5.1.1); the part is its
                    # header lines only (as Dovecot sees it too).
                    eol = 2 if r.crlfBefore(bodyStart.stored) else 1
                    bodyStart = _Mark(bodyStart.stored - eol, bodyStart.wire - 2, bodyStart.lf - 1)
                    found.end = bodyStart
            end = found.end if found is not None and found.end is not None else _mark(r)
        lines = end.lf - bodyStart.lf
        part = Part(
            head.stored,
            bodyStart.stored,
            end.stored,
            head.wire,
            bodyStart.wire,
            end.wire,
            ctype,
            csub,
            params,
            _optStr(fields.get(b"content-id")),
            _optStr(fields.get(b"content-description")),
            encodingStr,
            _optStr(fields.get(b"content-md5")),
            _parseDisposition(fields.get(b"content-disposition")),
            _parseLanguage(fields.get(b"content-language")),
            _optStr(fields.get(b"content-location")),
            lines,
            tuple(children),
            message,
        )
        return part, found, ParsedMessage(headerBytes, _envelopeFrom(fields), part)

    def parseMultipart(self, boundary: bytes, depth: int, subtype: str) -> Tuple[Optional[_Found], List[Part]]:
        level = len(self.boundaries)
        outer = self.boundaries
        self.setBoundaries(outer + [boundary])
        children: List[Part] = []
        default = ("message", "rfc822") if subtype == "digest" else ("text", "plain")
        try:
            # The preamble.
            found = self.skipBody()
            while found is not None and found.level == level and not found.closing:
                child, found, _ = self.parsePart(depth + 1, default)
                children.append(child)
            if found is not None and found.level == level:
                # The closing boundary: the epilogue runs to the enclosing
                # boundary or the end.
                self.setBoundaries(outer)
                found = self.skipBody()
            return found, children
        finally:
            self.setBoundaries(outer)


def parseMessage(stored: BinaryIO) -> ParsedMessage:
    """
    Parse a message in stored form (LF line endings; a CRLF is taken as
    one line ending too) from a binary file, reading it once in chunks:
    memory stays bounded whatever the message's size.
    """
    p = _Parser(stored)
    root, _, message = p.parsePart(0, ("text", "plain"))
    assert message is not None
    return message


def parseBytes(data: bytes) -> ParsedMessage:
    """
    L{parseMessage} of a message held in memory (tests, small messages).
    """
    import io

    return parseMessage(io.BytesIO(data))
