# -*- test-case-name: tests.test_imap_search -*-
"""
SEARCH criteria (RFC 9051 §6.4.4, RFC 3501 §6.4.4) compiled once into a
test run on each message.  Pure code, no Twisted.

L{compile} takes the argument tokens of L{mailnet.imap._parser} (after
C{RETURN (...)} and C{CHARSET x}, which the server handles) and gives a
L{Criteria}: C{criteria.needs} says what the server must supply,
C{criteria.matches(ctx)} tests one message.  C{ctx} has C{seq},
C{record} (a L{mailnet.store.records.MessageRecord}), C{parsed} (a
L{mailnet.mime.ParsedMessage}, or L{None} when not needed), C{body()}
(the decoded text of the message's text parts: see L{bodyText}; called
in a thread), C{maxSeq}, C{maxUid} (what C{*} stands for) and
C{previousSearch} (the UIDs of the last C{SEARCH RETURN (SAVE)}, for
C{$}, RFC 5182).

Matching follows RFC 9051: strings match as case-insensitive substrings of
the decoded text: header fields with their RFC 2047 encoded words decoded
(8-bit header octets read as UTF-8), bodies decoded from quoted-printable
or base64 and from their charset (HTML with and without its markup);
address fields match on the whole decoded field, or on the address list
written again without comments (L{normalisedAddresses}).  Undecodable octets
become replacement characters, never errors.  SINCE, BEFORE and ON compare
the internal date's day in UTC (the time zone INTERNALDATE is shown in);
the SENT* keys compare the day of the Date: field as written (its own time
zone); a message without a valid Date: field counts as sent on 1 January
1970.  BODY searches the text/* and message/* parts; TEXT also the
top-level header and the headers of parts and enclosed messages.  All as
Dovecot does (without full-text indexes), which these rules were compared
with.

Also: C{MODSEQ} (RFC 7162 CONDSTORE), C{$} (RFC 5182 SEARCHRES).  Bounds:
L{MAX_KEYS} keys, L{MAX_DEPTH} levels of nesting, L{MAX_STRING} octets per
string.
"""

import binascii
import bisect
import codecs
import functools
import html
import quopri
import re
import time
from typing import Any, BinaryIO, Callable, Dict, FrozenSet, List, Optional, Set, Tuple

from mailnet import mime
from mailnet.imap import _render
from mailnet.imap._parser import Atom, String
from mailnet.imap._sequence import SequenceError, SequenceSet, parseSequenceSet

MAX_KEYS = 1000
MAX_DEPTH = 100
MAX_STRING = 8192

CHARSETS = ("UTF-8", "US-ASCII")


def _printable(name: bytes) -> str:
    """
    @return: up to 40 octets from the network, fit for a reply text or a
        log: printable ASCII, other octets as C{?}.
    """
    return "".join(chr(c) if 0x20 <= c < 0x7F else "?" for c in name[:40])


class SearchError(Exception):
    """
    Invalid search criteria; C{str(error)} is the text of the BAD reply
    (or, when it mentions the charset, of NO [BADCHARSET]).
    """


# --- decoding -------------------------------------------------------------------

_ENCODED_WORD = re.compile(rb"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(rb"(\?=)\s+(=\?)")


# Codecs a message may not choose: punycode and IDNA decode in quadratic
# time (a 10 MB body would take hours).
_REFUSED_CODECS = frozenset(["punycode", "idna", "undefined"])


@functools.lru_cache(maxsize=256)
def _codecFor(label: str) -> str:
    """@return: the codec a charset label is decoded with."""
    charset = label.split("*", 1)[0].strip().strip('"') or "us-ascii"
    try:
        if codecs.lookup(charset).name in _REFUSED_CODECS:
            charset = "utf-8"
    except (LookupError, ValueError):
        charset = "utf-8"
    if charset.lower().replace("-", "").replace("_", "") in ("usascii", "ascii"):
        charset = "utf-8"  # 8-bit octets labelled US-ASCII are most often UTF-8
    return charset


def _charsetDecode(data: bytes, charset: str) -> str:
    charset = _codecFor(charset[:100])
    try:
        return data.decode(charset, "replace")
    except Exception:  # a codec that refuses "replace" or fails oddly
        return data.decode("utf-8", "replace")


def _decodeWord(m: "re.Match[bytes]") -> bytes:
    charset, encoding, text = m.group(1), m.group(2).upper(), m.group(3)
    try:
        if encoding == b"B":
            raw = binascii.a2b_base64(text + b"=" * (-len(text) % 4))
        else:
            raw = binascii.a2b_qp(text, header=True)
    except (binascii.Error, ValueError):
        return m.group(0)
    # Decoded text goes back as UTF-8, to be decoded with the rest.
    return _charsetDecode(raw, charset.decode("ascii", "replace")).encode("utf-8", "surrogatepass")


def decodeHeader(value: bytes) -> str:
    """
    @return: a header field value (unfolded) as text: RFC 2047 encoded
        words decoded (white space between two of them dropped), other
        octets read as UTF-8.
    """
    if b"=?" in value:
        value = _BETWEEN_WORDS.sub(rb"\1\2", value)
        value = _ENCODED_WORD.sub(_decodeWord, value)
    return value.decode("utf-8", "replace")


def _fold(text: str) -> str:
    # Case-insensitive comparison, with runs of white space as one space.
    return " ".join(text.casefold().split())


# (Not "<[^>]*>": on a long run of "<" that is quadratic.)
_TAG = re.compile(r"<[^<>]*>")


def _decodePart(data: bytes, part: mime.Part) -> str:
    encoding = (part.encoding or "7bit").strip().lower()
    try:
        if encoding == "base64":
            data = binascii.a2b_base64(re.sub(rb"[^A-Za-z0-9+/]", b"", data) + b"==")
        elif encoding == "quoted-printable":
            data = quopri.decodestring(data)
    except (binascii.Error, ValueError):
        pass
    text = _charsetDecode(data, dict(part.params).get("charset", "us-ascii"))
    if part.subtype == "html":
        # The markup (as Dovecot searches it) and the text without it.
        text += "\n" + html.unescape(_TAG.sub(" ", text))
    return text


#: Separates, in what L{bodyText} returns, the bodies from the part headers.
HEADERS_FOLLOW = "\x00"


def bodyText(stored: BinaryIO, parsed: mime.ParsedMessage, limit: int) -> str:
    """
    What BODY and TEXT search besides the top-level header, as Dovecot
    does: the text/* and message/* parts, decoded (other parts, such as
    images and archives, are not searched), then L{HEADERS_FOLLOW}, then
    the headers of the other parts and of enclosed messages (which TEXT
    searches and BODY does not).  Blocking: call it in a thread.

    @param stored: the message file as stored (LF line endings).
    @param limit: at most this many stored octets are read in all.
    """
    bodies: List[str] = []
    headers: List[str] = []
    budget = limit

    def read(start: int, end: int) -> bytes:
        nonlocal budget
        size = min(end - start, budget)
        if size <= 0:
            return b""
        stored.seek(start)
        data = stored.read(size)
        budget -= len(data)
        return data

    stack = [parsed.root]
    while stack:
        part = stack.pop()
        if part is not parsed.root:
            header = read(part.storedHeaderStart, part.storedBodyStart)
            if header:
                headers.append(decodeHeader(header))
        if part.parts:
            stack.extend(reversed(part.parts))
        elif part.message is not None:
            stack.append(part.message.root)
        elif part.type in ("text", "message"):
            data = read(part.storedBodyStart, part.storedEnd)
            if data:
                bodies.append(_decodePart(data, part))
    return "\n".join(bodies).replace(HEADERS_FOLLOW, " ") + HEADERS_FOLLOW + "\n".join(headers).replace(HEADERS_FOLLOW, " ")


# --- the message as criteria see it ----------------------------------------------


class _Message:
    """One message being tested, with what was decoded from it kept."""

    __slots__ = ("ctx", "_fields", "_raw", "_body", "_header", "_partHeaders", "_lowered")

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self._fields: Optional[Dict[bytes, List[bytes]]] = None
        self._raw: Optional[Tuple[str, str]] = None
        self._body: Optional[str] = None
        self._partHeaders: Optional[str] = None
        self._header: Optional[str] = None
        self._lowered: Optional[str] = None

    def fields(self, name: bytes) -> List[bytes]:
        """The unfolded values of the top-level header fields C{name} (lower case)."""
        if self._fields is None:
            fields: Dict[bytes, List[bytes]] = {}
            parsed = self.ctx.parsed
            if parsed is not None:
                for n, lines in mime.headerFields(parsed.header):
                    fields.setdefault(n.lower(), []).append(mime.unfold(lines))
            self._fields = fields
        return self._fields.get(name, [])

    def header(self) -> str:
        """The top-level header, decoded and folded."""
        if self._header is None:
            parsed = self.ctx.parsed
            self._header = _fold(decodeHeader(parsed.header)) if parsed is not None else ""
        return self._header

    def raw(self) -> Tuple[str, str]:
        """The decoded text parts and the part headers, not folded."""
        if self._raw is None:
            body, _, headers = self.ctx.body().partition(HEADERS_FOLLOW)
            self._raw = (body, headers)
        return self._raw

    def body(self) -> str:
        """The decoded text parts, folded."""
        if self._body is None:
            self._body = _fold(self.raw()[0])
        return self._body

    def bodyContains(self, needle: str) -> bool:
        """
        Whether the folded body text contains C{needle} (itself folded).  A
        needle without white space is in the folded text exactly when it
        is in the case-folded text (folding white space joins no word
        with another), which skips splitting and joining the whole text;
        ASCII text needs only C{lower()}.
        """
        if self._body is not None or _hasSpace(needle):
            return needle in self.body()
        if self._lowered is None:
            text = self.raw()[0]
            self._lowered = text.lower() if text.isascii() else text.casefold()
        return needle in self._lowered

    def partHeaders(self) -> str:
        """The headers of parts and enclosed messages, decoded and folded."""
        if self._partHeaders is None:
            self._partHeaders = _fold(self.raw()[1])
        return self._partHeaders


def _hasSpace(text: str) -> bool:
    return len(text.split(None, 1)) != 1 or text.strip() != text


Test = Callable[[_Message], bool]

# Address and subject fields are in the envelope (their first occurrence, as
# for ENVELOPE: no need to split the header).
_ENVELOPE_FIELD = {b"subject": "subject", b"from": "from_", b"to": "to", b"cc": "cc", b"bcc": "bcc"}
_ADDRESS_FIELDS = (b"from", b"to", b"cc", b"bcc")


def normalisedAddresses(value: bytes) -> str:
    """
    @return: an address field as Dovecot searches it besides its text:
        parsed, then written again without comments or extra white space
        (C{Name <local@host>, local@host, group: ...;}).
    """
    out = []
    for a in _render.parseAddresses(value):
        if a.host is None and a.adl is None and a.name is None:
            out.append(";" if a.mailbox is None else decodeHeader(a.mailbox) + ":")
            continue
        address = (a.mailbox or b"") + b"@" + (a.host or b"")
        name = decodeHeader(a.name) if a.name else ""
        out.append("%s <%s>" % (name, decodeHeader(address)) if name else decodeHeader(address))
    return ", ".join(out)


def _foldedField(parsed: Any, attrName: str, value: bytes) -> str:
    """
    @return: C{_fold(decodeHeader(value))} for an envelope field of
        C{parsed}, kept with it: the store keeps parsed messages in memory,
        so the next search of the folder decodes nothing.
    """
    try:
        memo = parsed.__dict__.setdefault("_searchFolded", {})
    except AttributeError:
        return _fold(decodeHeader(value))
    text = memo.get(attrName)
    if text is None:
        text = memo[attrName] = _fold(decodeHeader(value))
    return text


def _fieldContains(name: bytes, needle: str) -> Test:
    attrName = _ENVELOPE_FIELD.get(name)
    if attrName is not None:
        address = name in _ADDRESS_FIELDS

        def inEnvelope(m: _Message) -> bool:
            parsed = m.ctx.parsed
            value = None if parsed is None else getattr(parsed.envelope, attrName)
            if value is None:
                return False
            if not needle or needle in _foldedField(parsed, attrName, value):
                return True
            # Written again, only a field with comments, quotes, routes or
            # the like can match where its text did not.
            return address and _render._HARD.search(value) is not None and needle in _fold(normalisedAddresses(value))

        return inEnvelope

    def inHeader(m: _Message) -> bool:
        for value in m.fields(name):
            if not needle or needle in _fold(decodeHeader(value)):
                return True
        return False

    return inHeader


# --- dates ----------------------------------------------------------------------

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DATE = re.compile(rb"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})\Z")


def _parseDate(token: Any) -> Tuple[int, int, int]:
    value = _string(token, "date")
    m = _DATE.match(value)
    if m is None or m.group(2).decode().lower() not in _MONTHS:
        raise SearchError("Invalid date (expected e.g. 1-Feb-2026)")
    day, month, year = int(m.group(1)), _MONTHS.index(m.group(2).decode().lower()) + 1, int(m.group(3))
    if not 1 <= day <= 31:
        raise SearchError("Invalid date (expected e.g. 1-Feb-2026)")
    return (year, month, day)


def _internalDay(m: _Message) -> Tuple[int, int, int]:
    t = time.gmtime(m.ctx.record.internalDate)
    return (t.tm_year, t.tm_mon, t.tm_mday)


_DATE_FIELD = re.compile(rb"(?:[A-Za-z]{3},)?\s*([0-9]{1,2})\s+([A-Za-z]{3})[a-z]*\s+([0-9]{2,4})")


def sentDay(value: Optional[bytes]) -> Optional[Tuple[int, int, int]]:
    """
    @return: the day of a Date: field as written (RFC 5322 §3.3, two- and
        three-digit years as §4.3), or L{None} if it is not a date.
    """
    if value is None:
        return None
    # (A date is short; the pattern would take quadratic time on a long
    # run of white space.)
    m = _DATE_FIELD.search(value[:200])
    if m is None:
        return None
    month = m.group(2).decode("ascii", "replace").lower()
    if month not in _MONTHS:
        return None
    year = int(m.group(3))
    if len(m.group(3)) == 2:
        year += 2000 if year < 50 else 1900
    elif len(m.group(3)) == 3:
        year += 1900
    day = int(m.group(1))
    if not 1 <= day <= 31:
        return None
    return (year, _MONTHS.index(month) + 1, day)


def _sentDay(m: _Message) -> Tuple[int, int, int]:
    # Without a valid Date: field, 1 January 1970 (as Dovecot).
    parsed = m.ctx.parsed
    return sentDay(parsed.envelope.date if parsed is not None else None) or (1970, 1, 1)


# --- compiling --------------------------------------------------------------------


def _string(token: Any, what: str) -> bytes:
    if isinstance(token, (Atom, String)):
        if len(token.value) > MAX_STRING:
            raise SearchError("Search string too long")
        return token.value
    raise SearchError("Expected a %s" % (what,))


def _number(token: Any) -> int:
    if not isinstance(token, Atom) or not token.value.isdigit() or len(token.value) > 20:
        raise SearchError("Expected a number")
    return int(token.value)


class _SetTest:
    """Membership in a sequence set, with C{*} resolved once per value of C{*}."""

    def __init__(self, sequenceSet: SequenceSet) -> None:
        self.set = sequenceSet
        self.star = -1
        self.ranges: List[Tuple[int, int]] = []
        self.lows: List[int] = []

    def contains(self, n: int, star: int) -> bool:
        if star != self.star:
            self.ranges = self.set.resolved(star)
            self.lows = [a for a, _ in self.ranges]
            self.star = star
        i = bisect.bisect_right(self.lows, n) - 1
        return i >= 0 and self.ranges[i][0] <= n <= self.ranges[i][1]


def _sequence(value: bytes) -> _SetTest:
    try:
        return _SetTest(parseSequenceSet(value))
    except SequenceError as e:
        raise SearchError(str(e))


_SEQUENCE_CHARS = re.compile(rb"[0-9:*,]+\Z")


def _flag(name: str, present: bool) -> Tuple[Test, str]:
    if present:
        return (lambda m: name in m.ctx.record.flags), "flags"
    return (lambda m: name not in m.ctx.record.flags), "flags"


def _keyword(token: Any, present: bool) -> Tuple[Test, str]:
    if not isinstance(token, Atom):
        raise SearchError("Expected a keyword")
    word = token.value.decode("ascii", "replace").lower()

    def has(m: _Message) -> bool:
        return any(f.lower() == word for f in m.ctx.record.flags)

    if present:
        return has, "flags"
    return (lambda m: not has(m)), "flags"


_SIMPLE_FLAGS = {
    b"ANSWERED": ("\\Answered", True),
    b"DELETED": ("\\Deleted", True),
    b"DRAFT": ("\\Draft", True),
    b"FLAGGED": ("\\Flagged", True),
    b"SEEN": ("\\Seen", True),
    b"RECENT": ("\\Recent", True),
    b"OLD": ("\\Recent", False),
    b"UNANSWERED": ("\\Answered", False),
    b"UNDELETED": ("\\Deleted", False),
    b"UNDRAFT": ("\\Draft", False),
    b"UNFLAGGED": ("\\Flagged", False),
    b"UNSEEN": ("\\Seen", False),
}

_DAY_COMPARISONS: Dict[bytes, Callable[[Tuple[int, int, int], Tuple[int, int, int]], bool]] = {
    b"BEFORE": lambda day, ref: day < ref,
    b"ON": lambda day, ref: day == ref,
    b"SINCE": lambda day, ref: day >= ref,
}


class _Compiler:
    def __init__(self, charset: Optional[str]) -> None:
        self.charset = charset
        self.keys = 0
        self.needs: Set[str] = set()
        self.usesModSeq = False

    def text(self, token: Any, what: str = "string") -> str:
        return _fold(_string(token, what).decode("utf-8", "replace"))

    def keyList(self, tokens: List[Any], depth: int) -> Test:
        """All of the keys in C{tokens} (a search-key list)."""
        if depth > MAX_DEPTH:
            raise SearchError("Search criteria nested too deeply")
        tests: List[Test] = []
        position = 0
        while position < len(tokens):
            test, position = self.key(tokens, position, depth)
            tests.append(test)
        if not tests:
            raise SearchError("Empty search criteria")
        if len(tests) == 1:
            return tests[0]
        return lambda m: all(t(m) for t in tests)

    def key(self, tokens: List[Any], i: int, depth: int) -> Tuple[Test, int]:
        """One search key starting at C{tokens[i]}; returns the index after it."""
        self.keys += 1
        if self.keys > MAX_KEYS:
            raise SearchError("Too many search keys")
        if depth > MAX_DEPTH:
            raise SearchError("Search criteria nested too deeply")
        token = tokens[i]
        i += 1

        def arg() -> Any:
            nonlocal i
            if i >= len(tokens):
                raise SearchError("Missing argument to %s" % (_printable(name),))
            value = tokens[i]
            i += 1
            return value

        if isinstance(token, list):
            return self.keyList(token, depth + 1), i
        if not isinstance(token, Atom):
            raise SearchError("Expected a search key")
        name = token.upper()

        if name == b"ALL":
            return (lambda m: True), i
        if name in _SIMPLE_FLAGS:
            test, need = _flag(*_SIMPLE_FLAGS[name])
            self.needs.add(need)
            return test, i
        if name == b"NEW":
            self.needs.add("flags")
            return (lambda m: "\\Recent" in m.ctx.record.flags and "\\Seen" not in m.ctx.record.flags), i
        if name in (b"KEYWORD", b"UNKEYWORD"):
            test, need = _keyword(arg(), name == b"KEYWORD")
            self.needs.add(need)
            return test, i
        if name in (b"BCC", b"CC", b"FROM", b"SUBJECT", b"TO"):
            self.needs.add("headers")
            return _fieldContains(name.lower(), self.text(arg())), i
        if name == b"HEADER":
            field = _string(arg(), "header field name").lower()
            self.needs.add("headers")
            return _fieldContains(field, self.text(arg())), i
        if name == b"BODY":
            needle = self.text(arg())
            self.needs.add("body")
            return (lambda m: m.bodyContains(needle)), i
        if name == b"TEXT":
            needle = self.text(arg())
            self.needs.update(("headers", "body"))
            return (lambda m: needle in m.header() or m.bodyContains(needle) or needle in m.partHeaders()), i
        if name in _DAY_COMPARISONS:
            ref = _parseDate(arg())
            compare = _DAY_COMPARISONS[name]
            self.needs.add("date")
            return (lambda m: compare(_internalDay(m), ref)), i
        if name in (b"SENTBEFORE", b"SENTON", b"SENTSINCE"):
            ref = _parseDate(arg())
            compare = _DAY_COMPARISONS[name[4:]]
            self.needs.add("headers")

            return (lambda m: compare(_sentDay(m), ref)), i
        if name in (b"LARGER", b"SMALLER"):
            size = _number(arg())
            self.needs.add("size")
            if name == b"LARGER":
                return (lambda m: m.ctx.record.size > size), i
            return (lambda m: m.ctx.record.size < size), i
        if name == b"NOT":
            if i >= len(tokens):
                raise SearchError("Missing argument to NOT")
            inner, i = self.key(tokens, i, depth + 1)
            return (lambda m: not inner(m)), i
        if name == b"OR":
            if i >= len(tokens):
                raise SearchError("Missing argument to OR")
            left, i = self.key(tokens, i, depth + 1)
            if i >= len(tokens):
                raise SearchError("Missing argument to OR")
            right, i = self.key(tokens, i, depth + 1)
            return (lambda m: left(m) or right(m)), i
        if name == b"UID":
            value = arg()
            if isinstance(value, Atom) and value.value == b"$":
                return self.saved(), i
            if not isinstance(value, Atom):
                raise SearchError("Expected a UID set")
            uids = _sequence(value.value)
            self.needs.add("uid")
            return (lambda m: uids.contains(m.ctx.record.uid, m.ctx.maxUid)), i
        if name == b"MODSEQ":
            return self.modSeq(tokens, i)
        if token.value == b"$":
            return self.saved(), i
        if _SEQUENCE_CHARS.match(token.value):
            numbers = _sequence(token.value)
            self.needs.add("seq")
            return (lambda m: numbers.contains(m.ctx.seq, m.ctx.maxSeq)), i
        raise SearchError("Unknown search key %s" % (_printable(name),))

    def saved(self) -> Test:
        # RFC 5182: the saved result holds UIDs.
        self.needs.add("uid")

        def test(m: _Message) -> bool:
            return m.ctx.record.uid in (m.ctx.previousSearch or ())

        return test

    def modSeq(self, tokens: List[Any], i: int) -> Tuple[Test, int]:
        # RFC 7162 §3.1.5: MODSEQ [entry-name entry-type-req] mod-sequence-valzer
        self.usesModSeq = True
        self.needs.add("modseq")
        if i < len(tokens) and isinstance(tokens[i], String):
            if i + 1 >= len(tokens) or not isinstance(tokens[i + 1], Atom) or tokens[i + 1].upper() not in (b"PRIV", b"SHARED", b"ALL"):
                raise SearchError("Invalid MODSEQ entry type")
            i += 2
        if i >= len(tokens):
            raise SearchError("Missing argument to MODSEQ")
        value = _number(tokens[i])
        return (lambda m: m.ctx.record.modSeq >= value), i + 1


class Criteria:
    """
    Compiled search criteria.

    @ivar needs: what the server must supply: C{"flags"}, C{"seq"},
        C{"uid"}, C{"size"}, C{"date"} (the internal date), C{"modseq"}
        come with the record; C{"headers"} needs C{ctx.parsed}; C{"body"}
        needs C{ctx.body}.
    @ivar usesModSeq: whether a MODSEQ key was used (the SEARCH response
        then carries the highest mod-sequence, RFC 7162 §3.1.5).
    """

    def __init__(self, test: Test, needs: FrozenSet[str], usesModSeq: bool) -> None:
        self._test = test
        self.needs = needs
        self.usesModSeq = usesModSeq

    def matches(self, ctx: Any) -> bool:
        """
        @return: whether the message C{ctx} describes matches.
        """
        return self._test(_Message(ctx))


def compile(args: List[Any], charset: Optional[str] = None) -> Criteria:
    """
    Compile SEARCH criteria.

    @param args: the search keys, as tokens from L{mailnet.imap._parser}.
    @param charset: the C{CHARSET} argument, or L{None}.
    @raise SearchError: invalid criteria, or a charset other than UTF-8 and
        US-ASCII (the message then says "charset").
    """
    if charset is not None and charset.upper() not in CHARSETS:
        raise SearchError("Unsupported charset %s" % (_printable(charset.encode("utf-8", "replace")),))
    compiler = _Compiler(charset)
    test = compiler.keyList(list(args), 0)
    return Criteria(test, frozenset(compiler.needs), compiler.usesModSeq)

