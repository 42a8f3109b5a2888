# -*- test-case-name: tests.test_imap_render -*-
"""
What FETCH says about a message's content: ENVELOPE and BODYSTRUCTURE
(RFC 9051 §7.5.2, the same as RFC 3501 §7.4.2), and where a
C{BODY[section]<partial>} is found.  Pure code, no Twisted.

Everything here works from a L{mailnet.mime.ParsedMessage} (what the index
caches); a section that is not in it is given as a L{Range} of the stored
file that the server streams, LFs turned into CRLFs.

Strings are sent as quoted strings when they can be, as literals when they
hold CR, LF, 8-bit octets, quotes or backslashes (NUL, allowed in neither,
becomes a space).  RFC 2047 encoded words in header fields
are sent as they are (the client decodes them), as every server does.
"""

import functools
import re
from typing import List, NamedTuple, Optional, Tuple, Union

import attr

from mailnet import mime

NIL = b"NIL"


# --- strings ------------------------------------------------------------------

_NEEDS_LITERAL = re.compile(rb'[\r\n\x80-\xff"\\]')


def quoteString(value: Union[bytes, str]) -> bytes:
    """
    @return: C{value} as an IMAP string: quoted, or a literal when it
        holds CR, LF, 8-bit octets, a quote or a backslash (as Dovecot
        does: some clients mishandle escapes in quoted strings).  NUL
        octets, which neither may hold (RFC 9051 §4.3), become spaces.
    """
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    if b"\x00" in value:
        value = value.replace(b"\x00", b" ")
    if _NEEDS_LITERAL.search(value) or len(value) > 4096:
        return b"{%d}\r\n%s" % (len(value), value)
    return b'"' + value + b'"'


def nstring(value: Optional[Union[bytes, str]]) -> bytes:
    """
    @return: C{NIL} for L{None}, else L{quoteString}.
    """
    if value is None:
        return NIL
    return quoteString(value)


# --- addresses ------------------------------------------------------------------

_ATOM = re.compile(rb'[^\x00-\x20()<>@,;:\\".\[\]\x7f]+')

# Token kinds.
_WORD, _QUOTED, _COMMENT, _SPECIAL, _LITERAL = range(5)


Token = Tuple[int, bytes, bool]


def _tokens(value: bytes) -> List[Token]:
    """
    The tokens of an address list: C{(kind, text, spaced)}, C{spaced}
    telling whether white space or a comment came before the token.
    """
    tokens: List[Token] = []
    i, n = 0, len(value)
    spaced = False
    while i < n and len(tokens) < 10000:
        c = value[i:i + 1]
        if c in (b" ", b"\t", b"\r", b"\n"):
            i += 1
            spaced = True
            continue
        if c == b'"':
            text, i = mime._quoted(value, i)
            tokens.append((_QUOTED, text, spaced))
        elif c == b"(":
            start = i
            i = mime._skipCFWS(value, i)
            tokens.append((_COMMENT, value[start + 1:i - 1].strip(), spaced))
            spaced = True
            continue
        elif c == b"[":
            end = value.find(b"]", i)
            end = n if end < 0 else end + 1
            tokens.append((_LITERAL, value[i:end], spaced))
            i = end
        elif c in b"<>@,;:.\\)]":
            tokens.append((_SPECIAL, c, spaced))
            i += 1
        else:
            m = _ATOM.match(value, i)
            if m is None:  # pragma: no cover (every other octet is an atom octet)
                i += 1
                continue
            tokens.append((_WORD, m.group(), spaced))
            i = m.end()
        spaced = False
    return tokens


@attr.s(auto_attribs=True)
class Address:
    """
    One element of an ENVELOPE address list: C{(name adl mailbox host)}.
    A group starts with C{(NIL NIL name NIL)} and ends with
    C{(NIL NIL NIL NIL)}.
    """

    name: Optional[bytes] = None
    adl: Optional[bytes] = None
    mailbox: Optional[bytes] = None
    host: Optional[bytes] = None


def _joinWords(words: List[Token]) -> bytes:
    # A phrase: its words, one space where there was white space.
    out = b""
    for _, text, spaced in words:
        if spaced and out:
            out += b" "
        out += text
    return out


def _localPart(words: List[Token]) -> bytes:
    return b"".join(text for _, text, _ in words)


class _AddressParser:
    def __init__(self, value: bytes) -> None:
        self.tokens = _tokens(value)
        self.i = 0
        self.comment: Optional[bytes] = None

    def peek(self) -> Tuple[int, bytes]:
        while self.i < len(self.tokens) and self.tokens[self.i][0] == _COMMENT:
            self.comment = self.tokens[self.i][1]
            self.i += 1
        if self.i < len(self.tokens):
            return self.tokens[self.i][:2]  # type: ignore[return-value]
        return (-1, b"")

    def take(self) -> Token:
        self.peek()
        self.i += 1
        return self.tokens[self.i - 1] if self.i <= len(self.tokens) else (-1, b"", False)

    def phrase(self) -> List[Token]:
        words = []
        while True:
            kind, text = self.peek()
            if kind in (_WORD, _QUOTED, _LITERAL) or (kind == _SPECIAL and text in (b".", b"\\", b")", b"]")):
                words.append(self.take())
            else:
                return words

    def domain(self) -> bytes:
        return _localPart(self.phrase())

    def mailbox(self, words: List[Token]) -> Optional[Address]:
        """After a phrase: an angle address, an addr-spec, or a bare word."""
        self.comment = None
        kind, text = self.peek()
        if kind == _SPECIAL and text == b"<":
            self.take()
            adl = []
            while self.peek() == (_SPECIAL, b"@"):
                self.take()
                adl.append(b"@" + self.domain())
                if self.peek() == (_SPECIAL, b","):
                    self.take()
                    continue
                if self.peek() == (_SPECIAL, b":"):
                    self.take()
                break
            local = _localPart(self.phrase())
            host = None
            if self.peek() == (_SPECIAL, b"@"):
                self.take()
                host = self.domain()
            while self.peek()[0] != -1 and self.peek() != (_SPECIAL, b">"):
                self.take()
            if self.peek() == (_SPECIAL, b">"):
                self.take()
            name = _joinWords(words) if words else None
            if name is None and self.comment:
                name = self.comment
            return Address(name, b",".join(adl) if adl else None, local, host or b"")
        if kind == _SPECIAL and text == b"@":
            self.take()
            host = self.domain()
            self.phrase()
            local = _localPart(words)
            return Address(self.comment or None, None, local, host)
        if not words:
            return None
        return Address(self.comment or None, None, _localPart(words), b"")

    def skipTo(self, stops: Tuple[bytes, ...]) -> None:
        while True:
            kind, text = self.peek()
            if kind == -1 or (kind == _SPECIAL and text in stops):
                return
            self.take()

    def parse(self) -> List[Address]:
        out: List[Address] = []
        while self.peek()[0] != -1 and len(out) < 2000:
            words = self.phrase()
            kind, text = self.peek()
            if kind == _SPECIAL and text == b":":
                self.take()
                out.append(Address(None, None, _joinWords(words), None))
                while True:
                    k, t = self.peek()
                    if k == -1:
                        break
                    if k == _SPECIAL and t in (b",",):
                        self.take()
                        continue
                    if k == _SPECIAL and t == b";":
                        self.take()
                        break
                    a = self.mailbox(self.phrase())
                    if a is not None:
                        out.append(a)
                    else:
                        self.take()
                    self.skipTo((b",", b";"))
                out.append(Address())
            else:
                a = self.mailbox(words)
                if a is not None:
                    out.append(a)
                elif kind != -1:
                    self.take()
                self.skipTo((b",",))
            if self.peek() == (_SPECIAL, b","):
                self.take()
        return out


def parseAddresses(value: bytes) -> List[Address]:
    """
    Parse an address list (RFC 5322 §3.4, with groups and the obsolete
    route syntax) tolerantly: what cannot be parsed is skipped.
    """
    return _AddressParser(value).parse()


def _renderAddress(a: Address) -> bytes:
    if a.host is not None or a.name is not None or a.adl is not None:
        # Not a group marker: fill in what is missing, as Dovecot does.
        if not a.mailbox:
            a = attr.evolve(a, mailbox=b"MISSING_MAILBOX")
        if not a.host:
            a = attr.evolve(a, host=b"MISSING_DOMAIN")
    return b"(%s %s %s %s)" % (nstring(a.name), nstring(a.adl), nstring(a.mailbox), nstring(a.host))


# The common forms, "Name <local@host>" and "local@host" (no quotes,
# comments, groups or routes), rendered without the full parser.
_HARD = re.compile(rb'["()\\:;\[\]\x00-\x08\x0a-\x1f\x7f-\xff]')
# (Unambiguous patterns: on long runs of white space, overlapping ones
# would take polynomial time.)
_SIMPLE_ANGLE = re.compile(rb"([^<>@,]*)<([^<>@\s,]+)@([^<>@\s,]+)>[ \t]*\Z")
_SIMPLE_BARE = re.compile(rb"\s*([^<>@\s,]+)@([^<>@\s,]+)\s*\Z")


def _simpleAddressList(value: bytes) -> Optional[bytes]:
    if _HARD.search(value):
        return None
    out = []
    for item in value.split(b","):
        m = _SIMPLE_ANGLE.match(item)
        if m is not None:
            name = b" ".join(m.group(1).split())
            out.append(b'(%s NIL "%s" "%s")' % (b'"%s"' % name if name else NIL, m.group(2), m.group(3)))
            continue
        m = _SIMPLE_BARE.match(item)
        if m is None:
            return None
        out.append(b'(NIL NIL "%s" "%s")' % (m.group(1), m.group(2)))
    return b"(" + b"".join(out) + b")"


def addressList(value: Optional[bytes]) -> bytes:
    """
    @return: an ENVELOPE address list, or C{NIL} when the field is absent,
        empty, or holds no address.
    """
    if value is None:
        return NIL
    if len(value) <= 200:
        # A folder's messages share a few senders and recipients.
        return _shortAddressList(value)
    return _addressList(value)


@functools.lru_cache(maxsize=4096)
def _shortAddressList(value: bytes) -> bytes:
    return _addressList(value)


def _addressList(value: bytes) -> bytes:
    simple = _simpleAddressList(value)
    if simple is not None:
        return simple
    addresses = parseAddresses(value)
    if not addresses:
        return NIL
    return b"(" + b"".join(_renderAddress(a) for a in addresses) + b")"


def messageEnvelope(parsed: mime.ParsedMessage) -> bytes:
    """
    @return: L{envelope} of a parsed message, kept with it: the store keeps
        parsed messages in memory, so the next FETCH ENVELOPE of the
        message (another session, a client's next sync) renders nothing.
    """
    try:
        memo = parsed.__dict__
    except AttributeError:
        return envelope(parsed.envelope)
    rendered = memo.get("_envelope")
    if rendered is None:
        rendered = memo["_envelope"] = envelope(parsed.envelope)
    return rendered


def envelope(env: mime.Envelope) -> bytes:
    """
    @return: the parenthesised ENVELOPE list (RFC 9051 §7.5.2): Sender and
        Reply-To are From when absent or empty.
    """
    fromList = addressList(env.from_)
    sender = addressList(env.sender)
    replyTo = addressList(env.replyTo)
    if sender == NIL:
        sender = fromList
    if replyTo == NIL:
        replyTo = fromList
    return b"(%s)" % b" ".join(
        [
            nstring(env.date),
            nstring(env.subject),
            fromList,
            sender,
            replyTo,
            addressList(env.to),
            addressList(env.cc),
            addressList(env.bcc),
            nstring(env.inReplyTo),
            nstring(env.messageId),
        ]
    )


# --- BODYSTRUCTURE -------------------------------------------------------------


def _params(params: mime.Params) -> bytes:
    if not params:
        return NIL
    return b"(" + b" ".join(quoteString(n) + b" " + quoteString(v) for n, v in params) + b")"


def _extension(part: mime.Part) -> List[bytes]:
    if part.disposition is None:
        disposition = NIL
    else:
        disposition = b"(%s %s)" % (quoteString(part.disposition[0]), _params(part.disposition[1]))
    if part.language is None:
        language = NIL
    else:
        # Always a list, as Dovecot sends it.
        language = b"(" + b" ".join(quoteString(t) for t in part.language) + b")"
    return [disposition, language, nstring(part.location)]


def _emptyText(at: mime.Part) -> mime.Part:
    return mime.Part(at.storedBodyStart, at.storedBodyStart, at.storedBodyStart, at.wireBodyStart, at.wireBodyStart, at.wireBodyStart,
                     params=(("charset", "us-ascii"),))


def bodyStructure(part: mime.Part, extended: bool, rev2: bool = False) -> bytes:
    """
    @return: the BODY (C{extended=False}) or BODYSTRUCTURE (C{True}) of a
        part (RFC 9051 §7.5.2; sizes in wire octets).
    @param rev2: whether the client uses IMAP4rev2, whose grammar gives
        message/global parts an envelope and a body as message/rfc822 ones;
        for IMAP4rev1 clients (and Dovecot 2.3) they are basic parts.
    """
    # An explicit stack would not help: mime.MAX_DEPTH bounds the nesting.
    if part.type == "multipart":
        # A multipart in which no part was found has one empty text part,
        # as Dovecot shows it (the grammar needs one).
        children = part.parts or (_emptyText(part),)
        items = [b"".join(bodyStructure(p, extended, rev2) for p in children), quoteString(part.subtype)]
        if extended:
            items.append(_params(part.params))
            items.extend(_extension(part))
        return b"(" + b" ".join(items) + b")"
    items = [
        quoteString(part.type),
        quoteString(part.subtype),
        _params(part.params),
        nstring(part.id),
        nstring(part.description),
        quoteString(part.encoding if part.encoding is not None else "7bit"),
        b"%d" % (part.wireEnd - part.wireBodyStart,),
    ]
    if part.type == "message" and (part.subtype == "rfc822" or (part.subtype == "global" and rev2)):
        # An encoded message, or one with no body, is an empty one here, as
        # in Dovecot: the grammar needs an envelope and a body.
        message = part.message
        items.append(envelope(message.envelope if message is not None else mime.Envelope()))
        items.append(bodyStructure(message.root if message is not None else _emptyText(part), extended, rev2))
        items.append(b"%d" % (part.lines,))
    elif part.type == "text":
        items.append(b"%d" % (part.lines,))
    if extended:
        items.append(nstring(part.md5))
        items.extend(_extension(part))
    return b"(" + b" ".join(items) + b")"


# --- sections -----------------------------------------------------------------


class SectionError(ValueError):
    """
    Invalid section specification.
    """


#: C{text} values of a L{Section}.
SECTION_TEXTS = ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME")
# Bounds of a section specification from the network.
_MAX_SECTION_DEPTH = 100
_MAX_FIELDS = 1000


@attr.s(frozen=True, auto_attribs=True)
class Section:
    """
    A FETCH C{BODY[section]<partial>} (RFC 9051 §6.4.5).

    @ivar part: the part number, e.g. C{(1, 2)} for C{1.2}; C{()} for the
        whole message.
    @ivar text: L{None} (the part itself), or one of L{SECTION_TEXTS}.
    @ivar fields: for C{HEADER.FIELDS} and C{HEADER.FIELDS.NOT}: the field
        names, upper case.
    @ivar partial: C{(origin, count)} or L{None}.
    """

    part: Tuple[int, ...] = ()
    text: Optional[str] = None
    fields: Tuple[bytes, ...] = ()
    partial: Optional[Tuple[int, int]] = None

    @classmethod
    def fromSpec(cls, spec: bytes, partial: Optional[Tuple[int, int]] = None) -> "Section":
        """
        Parse what is between the brackets, e.g. C{b"1.2.HEADER.FIELDS
        (From "To")"}.

        @raise SectionError: not a valid section (the server answers BAD).
        """
        spec = spec.strip(b" ")
        fieldList = b""
        paren = spec.find(b"(")
        if paren >= 0:
            if not spec.endswith(b")"):
                raise SectionError("unterminated field list")
            fieldList = spec[paren + 1:-1]
            spec = spec[:paren].rstrip(b" ")
        numbers: List[int] = []
        rest = spec
        while rest:
            head, dot, tail = rest.partition(b".")
            if not head.isdigit():
                break
            if len(numbers) >= _MAX_SECTION_DEPTH or head.startswith(b"0") or len(head) > 9:
                raise SectionError("invalid part number")
            numbers.append(int(head))
            if not dot:
                rest = b""
                break
            rest = tail
            if not rest:
                raise SectionError("part number ends with a dot")
        text = rest.upper().decode("ascii", "replace") or None
        if text is not None and text not in SECTION_TEXTS:
            raise SectionError("unknown section text")
        if text == "MIME" and not numbers:
            raise SectionError("MIME needs a part number")
        fields: Tuple[bytes, ...] = ()
        if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            fields = _fieldNames(fieldList)
            if not fields:
                raise SectionError("empty field list")
        elif paren >= 0:
            raise SectionError("field list without HEADER.FIELDS")
        return cls(tuple(numbers), text, fields, partial)


_FIELD_NAME = re.compile(rb'"((?:[^"\\]|\\.)*)"|([^\s"()]+)')


def _fieldNames(fieldList: bytes) -> Tuple[bytes, ...]:
    names: List[bytes] = []
    position = 0
    for m in _FIELD_NAME.finditer(fieldList):
        if fieldList[position:m.start()].strip(b" "):
            raise SectionError("invalid field list")
        position = m.end()
        name = m.group(2) if m.group(2) is not None else re.sub(rb"\\(.)", rb"\1", m.group(1))
        if not name or len(names) >= _MAX_FIELDS or b":" in name or re.search(rb"[\x00-\x20\x7f-\xff]", name):
            raise SectionError("invalid field name")
        names.append(name.upper())
    if fieldList[position:].strip(b" "):
        raise SectionError("invalid field list")
    return tuple(names)


def sectionLabel(section: Section) -> bytes:
    """
    @return: how a FETCH response names the section, e.g.
        C{b"BODY[1.2.HEADER.FIELDS (FROM TO)]<0>"} (for BODY.PEEK too).
    """
    spec = b".".join(b"%d" % n for n in section.part)
    if section.text is not None:
        spec += (b"." if spec else b"") + section.text.encode("ascii")
    if section.fields:
        spec += b" (" + b" ".join(section.fields) + b")"
    label = b"BODY[" + spec + b"]"
    if section.partial is not None:
        label += b"<%d>" % (section.partial[0],)
    return label


class Range(NamedTuple):
    """
    A section to be read from the stored message: octets
    C{[storedStart, storedEnd)}, sent with LFs turned into CRLFs, which
    makes exactly C{wireLength} octets.
    """

    storedStart: int
    storedEnd: int
    wireLength: int


SectionData = Union[bytes, Range]


def applyPartial(wireLength: int, partial: Optional[Tuple[int, int]]) -> Tuple[int, int]:
    """
    @return: C{(skip, count)}: the octets of a section of C{wireLength}
        wire octets that a C{<origin.count>} partial sends (an origin
        beyond the end sends nothing).
    """
    if partial is None:
        return 0, wireLength
    origin, count = partial
    skip = min(max(origin, 0), wireLength)
    return skip, max(0, min(count, wireLength - skip))


def _headerRange(part: mime.Part) -> Range:
    return Range(part.storedHeaderStart, part.storedBodyStart, part.wireBodyStart - part.wireHeaderStart)


def _bodyRange(part: mime.Part) -> Range:
    return Range(part.storedBodyStart, part.storedEnd, part.wireEnd - part.wireBodyStart)


def _child(message: mime.ParsedMessage, numbers: Tuple[int, ...]) -> Optional[mime.Part]:
    """
    The part that part numbers name (RFC 9051 §6.4.5): inside a message,
    the parts of its multipart, or 1 for its only part; inside a
    message/rfc822 part, those of the message it holds.  As in Dovecot, a
    part of a multipart that is not one itself has a part 1, itself; the
    only part of a message has none.
    """
    part: Optional[mime.Part] = None
    inside: Optional[mime.ParsedMessage] = message
    onlyPart = False
    for n in numbers:
        if inside is not None:
            root = inside.root
            if root.type == "multipart":
                part, onlyPart = (root.parts[n - 1] if 0 < n <= len(root.parts) else None), False
            else:
                part, onlyPart = (root if n == 1 else None), True
        elif part is not None and part.parts:
            part = part.parts[n - 1] if 0 < n <= len(part.parts) else None
        elif part is not None and not onlyPart and part.type != "multipart":
            part = part if n == 1 else None
        else:
            part = None
        if part is None:
            return None
        inside = part.message
    return part


def filterHeader(header: bytes, fields: Tuple[bytes, ...], exclude: bool) -> bytes:
    """
    @return: the lines of the header fields named in C{fields} (upper
        case), or, if C{exclude}, of all others, as they are (CRLF line
        endings), followed by the empty line.
    """
    wanted = set(fields)
    # (Lines that are not fields are kept by .NOT, as Dovecot does.)
    kept = [lines for name, lines in mime.headerFields(header) if (name.upper() in wanted) != exclude]
    return b"".join(kept) + b"\r\n"


def _headerOf(message: mime.ParsedMessage, section: Section) -> SectionData:
    if section.text == "HEADER":
        if message.headerComplete():
            return message.header
        return _headerRange(message.root)
    if section.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        # (From the first mime.MAX_HEADER octets of a longer header.)
        return filterHeader(message.header, section.fields, section.text == "HEADER.FIELDS.NOT")
    return _bodyRange(message.root)  # TEXT


def resolveSection(parsed: mime.ParsedMessage, section: Section) -> SectionData:
    """
    Find a section: as bytes when they are in C{parsed} (header blocks,
    HEADER.FIELDS), else as a L{Range} of the stored message.  A part that
    does not exist is empty (as Dovecot answers).  The partial is not
    applied here (see L{applyPartial}).

    @raise SectionError: C{MIME} without a part number.
    """
    if not section.part:
        if section.text is None:
            return Range(0, parsed.root.storedEnd, parsed.root.wireEnd - parsed.root.wireHeaderStart)
        if section.text == "MIME":
            raise SectionError("MIME needs a part number")
        return _headerOf(parsed, section)
    part = _child(parsed, section.part)
    if part is None:
        return b""
    if section.text is None:
        return _bodyRange(part)
    if section.text == "MIME":
        return _headerRange(part)
    if part.message is None:
        return b""
    return _headerOf(part.message, section)
